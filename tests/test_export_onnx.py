"""ONNX export: parity with the eager model (ONNX Runtime), graph contract, metadata, TensorRT op set, FP16.

Models are carf-tiny with a non-zero last IRN conv (an untrained CARF is the identity through the global
residual, which would make parity trivial), exported at tile 64; one test runs real samples at 256.
Tolerances are the issue's: FP32 max abs <= 1e-4; FP16 relative L2 <= 1e-2 and PSNR within 0.1 dB.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from cloudrt.contract import NORMALIZATION, S1_BANDS, S2_BANDS  # noqa: E402
from cloudrt.errors import InputError, ModelError  # noqa: E402
from cloudrt.export import export_onnx  # noqa: E402
from cloudrt.export.trt_ops import op_histogram, supported_ops, trt_problems  # noqa: E402
from cloudrt.model import build  # noqa: E402

TILE = 64
FP32_TOL = 1e-4
FP16_REL_L2 = 1e-2


def _trained_like(name: str = "carf-tiny", seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = build(name, **overrides).eval()
    torch.nn.init.normal_(m.irn.conv2.weight, std=0.02)
    torch.nn.init.normal_(m.irn.conv2.bias, std=0.01)
    return m


def _inputs(batch: int, tile: int = TILE, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.random((batch, 13, tile, tile), dtype=np.float32),
            rng.random((batch, 2, tile, tile), dtype=np.float32))


def _eager(model: torch.nn.Module, o: np.ndarray, s: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(o), torch.from_numpy(s)).numpy()


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(sess: ort.InferenceSession, o: np.ndarray, s: np.ndarray) -> np.ndarray:
    return sess.run(["optical_clear"], {"optical": o, "sar": s})[0]


def _rel_l2(a: np.ndarray, ref: np.ndarray) -> float:
    a64, r64 = a.astype(np.float64), ref.astype(np.float64)
    return float(np.linalg.norm(a64 - r64) / np.linalg.norm(r64))


@pytest.fixture(scope="module")
def models():
    # carf-tiny (J=2: plain windows only) and carf-tiny with J=3, whose second Swin block is shifted
    return {"tiny": _trained_like(), "tiny-shift": _trained_like(num_rdb=3, seed=2)}


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    return {
        "tiny": export_onnx(models["tiny"], d / "tiny.onnx", tile=TILE, verbose=False, verify=False),
        "tiny-shift": export_onnx(models["tiny-shift"], d / "shift.onnx", tile=TILE, verbose=False,
                                  verify=False),
        "tiny-fp16": export_onnx(models["tiny"], d / "tiny16.onnx", tile=TILE, half=True, verbose=False,
                                 verify=False),
    }


@pytest.mark.parametrize("which", ["tiny", "tiny-shift"])
def test_fp32_parity_random_batch_1_and_3(models, exported, which):
    sess = _session(exported[which])
    for batch in (1, 3):
        o, s = _inputs(batch, seed=batch)
        ref = _eager(models[which], o, s)
        out = _run(sess, o, s)
        assert out.shape == ref.shape == (batch, 13, TILE, TILE)
        assert np.abs(ref - o).max() > 1e-3  # the model really changes its input (not the identity)
        err = float(np.abs(out - ref).max())
        assert err <= FP32_TOL, f"{which} batch {batch}: max abs {err:.2e}"


def test_graph_contract_static_tile_dynamic_batch(exported):
    m = onnx.load(str(exported["tiny"]))
    onnx.checker.check_model(m, full_check=True)

    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    ins = {i.name: i for i in m.graph.input}
    assert list(ins) == ["optical", "sar"]
    assert [o.name for o in m.graph.output] == ["optical_clear"]
    assert dims(ins["optical"]) == ["N", 13, TILE, TILE] and dims(ins["sar"]) == ["N", 2, TILE, TILE]
    assert dims(m.graph.output[0]) == ["N", 13, TILE, TILE]
    for vi in [*m.graph.input, *m.graph.output]:
        assert vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("which", ["tiny", "tiny-shift", "tiny-fp16"])
def test_op_set_within_tensorrt_support_list(exported, which):
    m = onnx.load(str(exported[which]))
    hist = op_histogram(m)
    assert set(hist) <= supported_ops("10.0"), set(hist) - supported_ops("10.0")
    assert trt_problems(m) == []
    # window attention as plain MatMul -> Softmax -> MatMul, no control flow or data-dependent shapes
    assert hist["MatMul"] >= 2 * hist["Softmax"] > 0
    assert not {"Loop", "If", "Scan", "NonZero", "Attention", "Einsum"} & set(hist)
    if which == "tiny-shift":
        assert hist["Slice"] > 0  # the cyclic shift became Slice + Concat on static shapes


def test_trt_problems_flags_unsupported_graphs():
    """The op-set check can fail: unsupported and too-new ops, non-constant Slice axes, opset range."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    ax = helper.make_tensor_value_info("ax", TensorProto.INT64, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Unique", ["x"], ["u"], name="uniq"),
        helper.make_node("Slice", ["u", "st", "en", "ax"], ["y"], name="sl"),
    ]
    inits = [helper.make_tensor("st", TensorProto.INT64, [1], [0]),
             helper.make_tensor("en", TensorProto.INT64, [1], [2])]
    g = helper.make_graph(nodes, "g", [x, ax], [y], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    probs = " | ".join(trt_problems(m))
    assert "Unique" in probs and "input 3 must be a constant" in probs and "opset 21" in probs
    att = helper.make_graph([helper.make_node("Attention", ["x", "x", "x"], ["y"])], "a", [x], [y])
    m2 = helper.make_model(att, opset_imports=[helper.make_opsetid("", 23)])
    assert any("added in TensorRT 10.14" in p for p in trt_problems(m2, "10.0"))
    assert not any("Attention" in p for p in trt_problems(m2, "10.15"))


def test_metadata_props_and_weights_hash_from_checkpoint(models, tmp_path):
    from cloudrt.model.checkpoint import save_checkpoint

    st = save_checkpoint(models["tiny"], tmp_path / "ck", {"note": "test"})
    out = export_onnx(st, tmp_path / "ck.onnx", tile=TILE, batch="1:4:8", verbose=False)
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["batch"] == "dynamic" and props["batch_profile"] == "1:4:8"  # a range stays dynamic
    file_sha = hashlib.sha256(st.read_bytes()).hexdigest()
    assert props["weights_sha256"] == file_sha
    assert props["preset"] == "carf-tiny" and json.loads(props["config"]) == models["tiny"].config
    assert props["tile"] == str(TILE) and props["precision"] == "fp32" and props["batch"] == "dynamic"
    assert props["cloudrt_version"] == __import__("cloudrt").__version__
    assert json.loads(props["band_order"]) == {"optical": list(S2_BANDS), "sar": list(S1_BANDS)}
    assert json.loads(props["normalization"]) == json.loads(json.dumps(NORMALIZATION))
    assert int(props["size_divisor"]) == models["tiny"].size_divisor
    # the checkpoint path round trip exports the same function
    o, s = _inputs(2, seed=5)
    assert np.abs(_run(_session(out), o, s) - _eager(models["tiny"], o, s)).max() <= FP32_TOL


def test_in_memory_module_hash_is_its_state_dict(models, exported):
    from safetensors.torch import save

    props = {p.key: p.value for p in onnx.load(str(exported["tiny"])).metadata_props}
    sd = {k: v.detach().contiguous() for k, v in models["tiny"].state_dict().items()}
    assert props["weights_sha256"] == hashlib.sha256(save(sd)).hexdigest()


def test_fp16_graph_accuracy_and_precision_layout(models, exported):
    from cloudrt.export.fp16 import fp32_islands

    path16 = exported["tiny-fp16"]
    m16 = onnx.load(str(path16))
    props = {p.key: p.value for p in m16.metadata_props}
    assert props["precision"] == "fp16"
    # FP32 inputs and outputs: clients do not change
    for vi in [*m16.graph.input, *m16.graph.output]:
        assert vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT, vi.name
    # the global residual add (eq. 12) reads the FP32 input directly and writes the FP32 output
    add = [n for n in m16.graph.node if n.output[0] == "optical_clear"]
    assert len(add) == 1 and add[0].op_type == "Add" and "optical" in add[0].input
    islands = fp32_islands(m16)
    assert islands["fp32"].get("LayerNormalization", 0) == op_histogram(m16)["LayerNormalization"]
    assert islands["fp32"].get("Softmax", 0) == op_histogram(m16)["Softmax"]
    assert islands["fp16"].get("Conv", 0) == op_histogram(m16)["Conv"]
    assert islands["fp16"].get("MatMul", 0) == op_histogram(m16)["MatMul"]
    # weights stored in FP16: the file is about half the FP32 one
    assert path16.stat().st_size < 0.6 * exported["tiny"].stat().st_size
    sess = _session(path16)
    for batch in (1, 3):
        o, s = _inputs(batch, seed=10 + batch)
        ref = _eager(models["tiny"], o, s)
        out = _run(sess, o, s)
        assert out.dtype == np.float32
        rel = _rel_l2(out, ref)
        assert rel <= FP16_REL_L2, rel
        # tighter: the FP16 error is small even relative to the learned correction alone
        assert _rel_l2(out - o, ref - o) <= 5e-2


@pytest.mark.filterwarnings("ignore:the float32 number")
def test_restore_fp32_outputs_fixes_converter_output_typing(exported):
    """Without the fix-up, onnxconverter-common types the output FP16 when a blocked node writes it."""
    from onnxconverter_common import float16

    from cloudrt.export.fp16 import GLOBAL_RESIDUAL_NODE, convert_fp16

    m32 = onnx.load(str(exported["tiny"]))
    raw = float16.convert_float_to_float16(
        m32, keep_io_types=True, op_block_list=["LayerNormalization", "Softmax"],
        node_block_list=[GLOBAL_RESIDUAL_NODE])
    assert raw.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16  # the converter's bug
    fixed = convert_fp16(onnx.load(str(exported["tiny"])))
    assert fixed.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_tile_and_input_errors(models, tmp_path):
    with pytest.raises(InputError, match="multiple of 32"):
        export_onnx(models["tiny"], tmp_path / "x.onnx", tile=48, verbose=False)
    with pytest.raises(InputError, match="already ONNX"):
        export_onnx(tmp_path / "model.onnx", tmp_path / "x.onnx", verbose=False)
    with pytest.raises(ModelError, match="not found"):
        export_onnx(tmp_path / "missing.safetensors", tmp_path / "x.onnx", verbose=False)
    with pytest.raises(InputError, match="--batch"):
        export_onnx(models["tiny"], tmp_path / "x.onnx", tile=TILE, batch="4:2:1", verbose=False)
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*tmp*"))


def test_export_verbose_report_and_verification(models, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CLOUDRT_CACHE", str(tmp_path / "cache"))
    out = export_onnx(models["tiny"], None, tile=TILE, batch=2, verbose=True, verify=True)
    assert out.parent == tmp_path / "cache" / "onnx" and out.name.startswith("carf-tiny-")  # default path
    assert out.name.endswith(f"-t{TILE}-fp32-b2.onnx")
    text = capsys.readouterr().out
    assert "ops: " in text and "Conv " in text and "MatMul " in text
    assert f"{out.stat().st_size:,} bytes" in text
    assert "parity (ONNX Runtime CPU vs eager" in text and "TensorRT check" in text
    m = onnx.load(str(out))
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2  # static batch N
    assert {p.key: p.value for p in m.metadata_props}["batch"] == "2"


def test_real_samples_at_256_fp32_and_fp16(samples_dir, tmp_path):
    """Real SEN12MS-CR triplets at the paper's 256 tile: FP32 parity, FP16 rel-L2 and PSNR within 0.1 dB."""
    from skimage.metrics import peak_signal_noise_ratio

    from cloudrt.export.fp16 import convert_fp16
    from cloudrt.preprocess import normalize_optical, normalize_sar
    from cloudrt.train.discovery import find_samples, load_sample

    trip = [s for s in find_samples(samples_dir) if s.is_triplet][:6]
    data = [load_sample(s) for s in trip]
    o = np.stack([normalize_optical(d["s2_cloudy"]) for d in data])
    s = np.stack([normalize_sar(d["s1"]) for d in data])
    target = np.stack([normalize_optical(d["s2"]) for d in data])
    model = _trained_like(seed=3)
    p32 = export_onnx(model, tmp_path / "r.onnx", tile=256, verbose=False, verify=False)
    p16 = tmp_path / "r16.onnx"
    p16.write_bytes(convert_fp16(onnx.load(str(p32))).SerializeToString())
    ref = _eager(model, o, s)
    s32, s16 = _session(p32), _session(p16)
    out32 = np.concatenate([_run(s32, o[:1], s[:1]), _run(s32, o[1:4], s[1:4]), _run(s32, o[4:], s[4:])])
    assert float(np.abs(out32 - ref).max()) <= FP32_TOL
    out16 = _run(s16, o, s)
    assert _rel_l2(out16, ref) <= FP16_REL_L2

    def mean_psnr(pred):
        return float(np.mean([peak_signal_noise_ratio(t.astype(np.float64), np.clip(p, 0, 1).astype(np.float64),
                                                      data_range=1.0) for p, t in zip(pred, target, strict=True)]))

    assert abs(mean_psnr(out16) - mean_psnr(ref)) <= 0.1
    assert abs(mean_psnr(out32) - mean_psnr(ref)) <= 1e-3
