"""``cloudrt export`` on the command line: ONNX from a checkpoint, options, one-line errors with exit 2."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from cloudrt.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from cloudrt.model import build
    from cloudrt.model.checkpoint import save_checkpoint

    torch.manual_seed(4)
    m = build("carf-tiny").eval()
    torch.nn.init.normal_(m.irn.conv2.weight, std=0.02)
    return save_checkpoint(m, tmp_path_factory.mktemp("ck") / "demo", {}), m


def test_cli_exports_onnx_from_checkpoint(checkpoint, tmp_path, capsys):
    st, model = checkpoint
    out = tmp_path / "demo.onnx"
    rc = main(["export", str(st), "--format", "onnx", "--tile", "64", "--batch", "2", "--opset", "17",
               "-o", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and out.is_file()
    assert "ops: " in text and "MiB" in text and "max abs error" in text
    m = onnx.load(str(out))
    props = {p.key: p.value for p in m.metadata_props}
    assert props["batch"] == "2" and props["tile"] == "64" and props["opset"] == "17"
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    rng = np.random.default_rng(0)
    o = rng.random((2, 13, 64, 64), dtype=np.float32)
    s = rng.random((2, 2, 64, 64), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(o), torch.from_numpy(s)).numpy()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"optical": o, "sar": s})[0]
    assert np.abs(got - ref).max() <= 1e-4


@pytest.mark.parametrize("args, words", [
    (["export", "{tmp}/model.onnx", "-o", "{tmp}/x.onnx"], ["already ONNX"]),
    (["export", "{tmp}/missing.safetensors", "-o", "{tmp}/x.onnx"], ["not found"]),
    (["export", "--format", "tflite", "-o", "{tmp}/x.onnx"], ["--format", "onnx"]),
    (["export", "--batch", "8:4:1", "-o", "{tmp}/x.onnx"], ["--batch"]),
])
def test_cli_errors_are_one_line_exit_2(tmp_path, capsys, args, words):
    rc = main([a.format(tmp=tmp_path) for a in args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err
    for w in words:
        assert w in err
    assert not (tmp_path / "x.onnx").exists()


def test_cli_tile_not_multiple_of_divisor(checkpoint, tmp_path, capsys):
    st, _ = checkpoint
    rc = main(["export", str(st), "--tile", "100", "-o", str(tmp_path / "x.onnx")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--tile 128" in err and "\n" not in err
    assert not (tmp_path / "x.onnx").exists()


def test_cli_without_weights_uses_default_and_says_when_missing(tmp_path, monkeypatch, capsys):
    import cloudrt.paths

    monkeypatch.setattr(cloudrt.paths, "DEFAULT_WEIGHTS", tmp_path / "carf-demo.safetensors")
    rc = main(["export", "-o", str(tmp_path / "x.onnx")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "shipped default model" in err and "\n" not in err
