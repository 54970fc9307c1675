"""TensorRT engine path without TensorRT: cache keys, sidecar, refusal, build modes, missing TensorRT/GPU.

The builder flow runs against a small fake ``tensorrt`` module that records the calls, so the logic
(strong typing vs FP16 flag per version, profile, workspace, timing cache, sidecar) is checked here; the
real-TensorRT tests at the bottom are marked ``tensorrt`` and skip where TensorRT or a GPU is missing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from cloudrt.devices import device_index
from cloudrt.errors import BackendUnavailableError, EngineMismatchError, InputError, ModelError
from cloudrt.export import tensorrt as trtmod
from cloudrt.runtime import trt_meta as ec

SHA_A = "a" * 64
SHA_B = "b" * 64


# ----------------------------------------------------------------------------- batch, versions, keys


@pytest.mark.parametrize("spec, expected", [
    (None, (1, 4, 8)), ("4", (4, 4, 4)), (4, (4, 4, 4)), ("1:4:8", (1, 4, 8)), (" 2:2:16 ", (2, 2, 16)),
])
def test_parse_batch_valid(spec, expected):
    assert ec.parse_batch(spec) == expected


@pytest.mark.parametrize("spec", ["0", "8:4:1", "1:2", "a", "1:x:3", "-1", "1:0:3"])
def test_parse_batch_invalid_is_one_line_input_error(spec):
    with pytest.raises(InputError) as e:
        ec.parse_batch(spec)
    assert "\n" not in str(e.value) and "MIN:OPT:MAX" in str(e.value)


def test_version_and_compute_capability_normalization():
    assert ec.normalize_trt_version("10.3.0.30") == "10.3.0"
    assert ec.normalize_trt_version("10.12.0.post1") == "10.12.0"
    assert ec.normalize_trt_version("11.0") == "11.0.0"
    assert ec.normalize_compute_capability((8, 7)) == "8.7"
    assert ec.normalize_compute_capability("sm_90") == "9.0"
    assert ec.normalize_compute_capability("12.0") == "12.0"
    assert ec.normalize_compute_capability("120") == "12.0"


def test_engine_cache_key_separates_every_field():
    base = dict(onnx_sha256=SHA_A, trt_version="10.3.0", compute_capability="8.7", precision="fp16",
                batch="1:4:8")
    k = ec.engine_cache_key(**base)
    assert k == ec.engine_cache_key(**{**base, "trt_version": "10.3.0.30"})  # same release
    variants = [
        {"onnx_sha256": SHA_B}, {"trt_version": "10.4.0"}, {"compute_capability": "8.6"},
        {"precision": "fp32"}, {"batch": "1:4:16"},
    ]
    keys = {ec.engine_cache_key(**{**base, **v}) for v in variants}
    assert k not in keys and len(keys) == len(variants)
    assert k == "aaaaaaaaaaaaaaaa/trt10.3.0-sm87-fp16-b1-4-8"
    with pytest.raises(InputError):
        ec.engine_cache_key(**{**base, "precision": "int8"})


def test_engine_cache_path_under_user_cache(tmp_path, monkeypatch):
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"not really onnx")
    monkeypatch.setenv("CLOUDRT_CACHE", str(tmp_path / "cache"))
    p = ec.engine_cache_path(onnx_file, "fp16", trt_version="10.12.0", compute_capability="9.0")
    sha = ec.file_sha256(onnx_file)
    assert p == tmp_path / "cache" / "engines" / sha[:16] / "trt10.12.0-sm90-fp16-b1-4-8.engine"
    onnx_file.write_bytes(b"changed graph")  # another ONNX file -> another engine
    assert ec.engine_cache_path(onnx_file, "fp16", trt_version="10.12.0", compute_capability="9.0") != p
    with pytest.raises(ModelError, match="not found"):
        ec.engine_cache_path(tmp_path / "none.onnx", "fp16", trt_version="10.12.0", compute_capability="9.0")


def test_engine_cache_path_without_tensorrt_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(BackendUnavailableError, match="TensorRT"):
        ec.engine_cache_path(tmp_path / "m.onnx", "fp16", cache_root=tmp_path)


# ----------------------------------------------------------------------------- sidecar and refusal


def _sidecar(tmp_path: Path, trt="10.3.0.30", cc="8.7") -> tuple[Path, dict]:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    sc = ec.make_sidecar(
        engine_path=engine, engine_bytes=b"plan", onnx_path=tmp_path / "m.onnx", onnx_sha256=SHA_A,
        trt_version=trt, gpu_name="Orin", compute_capability=cc, precision="fp16", batch=(1, 4, 8),
        input_shapes={"optical": [-1, 13, 256, 256], "sar": [-1, 2, 256, 256]}, strongly_typed=False,
        workspace_gb=4, onnx_metadata={"tile": "256", "preset": "carf-small", "weights_sha256": SHA_B},
    )
    ec.write_sidecar(engine, sc)
    return engine, sc


def test_sidecar_roundtrip_has_required_fields(tmp_path):
    engine, sc = _sidecar(tmp_path)
    assert ec.sidecar_path(engine) == tmp_path / "m.engine.json"
    back = ec.read_sidecar(engine)
    assert back == json.loads((tmp_path / "m.engine.json").read_text()) == sc
    assert back["trt_version"] == "10.3.0" and back["compute_capability"] == "8.7"
    assert back["gpu_name"] == "Orin" and back["precision"] == "fp16" and back["onnx_sha256"] == SHA_A
    assert back["cloudrt_version"] == __import__("cloudrt").__version__
    assert back["batch"] == {"min": 1, "opt": 4, "max": 8}
    assert back["profile"]["optical"] == {"min": [1, 13, 256, 256], "opt": [4, 13, 256, 256],
                                          "max": [8, 13, 256, 256]}
    assert back["tile"] == 256 and back["weights_sha256"] == SHA_B
    assert back["rebuild_command"].startswith("cloudrt export ") and "--half --batch 1:4:8" in back[
        "rebuild_command"]
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left nothing behind


@pytest.mark.parametrize("content", [None, "{not json", json.dumps({"hello": 1}), "[1, 2]"])
def test_read_sidecar_rejects_missing_or_foreign(tmp_path, content):
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"plan")
    if content is not None:
        (tmp_path / "x.engine.json").write_text(content)
    with pytest.raises(ModelError) as e:
        ec.read_sidecar(engine)
    assert "\n" not in str(e.value) and "rebuild" in str(e.value)


def test_refusal_of_engines_from_another_tensorrt_or_gpu(tmp_path):
    _, sc = _sidecar(tmp_path, trt="10.3.0.30", cc="8.7")
    ec.check_engine_compat(sc, "10.3.0", "8.7")  # same release and SM: accepted
    for trt_v, cc, word in [("10.7.0", "8.7", "TensorRT"), ("10.3.0", "8.6", "compute capability"),
                            ("11.0.0", "9.0", "TensorRT")]:
        with pytest.raises(EngineMismatchError) as e:
            ec.check_engine_compat(sc, trt_v, cc)
        msg = str(e.value)
        assert "\n" not in msg and word in msg and sc["rebuild_command"] in msg  # the exact rebuild command


@pytest.mark.parametrize("version, half, strong, expected", [
    ("10.3.0", True, None, (False, True, False)),     # Jetson: FP16 builder flag on the FP32 graph
    ("10.11.0", True, None, (False, True, False)),
    ("10.12.0", True, None, (True, False, True)),     # strongly typed from the mixed-precision graph
    ("10.15.1", True, None, (True, False, True)),
    ("11.0.0", True, None, (True, False, True)),      # TensorRT 11: strong typing only
    ("10.3.0", True, True, (True, False, True)),      # explicit override on older 10.x
    ("10.12.0", True, False, (False, True, False)),
    ("10.3.0", False, None, (False, False, False)),
    ("11.2.0", False, None, (True, False, False)),
])
def test_trt_build_mode(version, half, strong, expected):
    m = trtmod.trt_build_mode(version, half, strong)
    assert (m.strongly_typed, m.fp16_flag, m.needs_fp16_graph) == expected


def test_trt_build_mode_rejects_weak_typing_on_11_and_old_versions():
    with pytest.raises(InputError):
        trtmod.trt_build_mode("11.0.0", True, strongly_typed=False)
    with pytest.raises(BackendUnavailableError):
        trtmod.trt_build_mode("8.6.1", True)


# ----------------------------------------------------------------------------- missing TensorRT / GPU


def test_require_tensorrt_missing_and_too_old(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailableError) as e:
        ec.require_tensorrt()
    assert "\n" not in str(e.value) and "--format onnx" in str(e.value)
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    with pytest.raises(BackendUnavailableError, match="8.6.1"):
        ec.require_tensorrt()


def test_gpu_info_without_driver_and_device_parsing(monkeypatch):
    monkeypatch.setattr(ec, "_libcuda", lambda: None)
    with pytest.raises(BackendUnavailableError) as e:
        ec.gpu_info(0)
    assert "GPU" in str(e.value) and "\n" not in str(e.value)
    assert device_index("cuda:1") == 1 and device_index(None) == 0
    assert device_index("2") == 2 and device_index("cuda") == 0
    with pytest.raises(InputError):
        device_index("tpu")


def test_cli_engine_without_tensorrt_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    from cloudrt.cli import main

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    out = tmp_path / "m.engine"
    rc = main(["export", "--format", "engine", "--half", "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err and "TensorRT" in err
    assert not out.exists()


def test_cli_engine_without_gpu_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    from cloudrt.cli import main

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.12.0"))
    monkeypatch.setattr(ec, "_libcuda", lambda: None)
    out = tmp_path / "m.engine"
    rc = main(["export", "--format", "engine", "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err and "GPU" in err
    assert not out.exists()


def test_cli_engine_without_tensorrt_in_a_fresh_process(tmp_path):
    """The real entry point, as a user runs it: one line on stderr, exit status 2."""
    code = ("import sys; sys.modules['tensorrt'] = None; from cloudrt.cli import main; "
            f"sys.exit(main(['export', '--format', 'engine', '-o', {str(tmp_path / 'e.engine')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "TensorRT" in lines[0]


def test_export_package_imports_no_torch_onnx_or_tensorrt():
    code = ("import sys; import cloudrt.export, cloudrt.runtime.trt_meta, cloudrt.export.tensorrt, "
            "cloudrt.export.trt_ops, cloudrt.cli.export; "
            "bad = [m for m in ('torch', 'onnx', 'tensorrt', 'onnxruntime') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


# ----------------------------------------------------------------------------- builder flow (fake TRT)


def _tiny_onnx(path: Path, batch: int | str = "N", precision: str = "fp32") -> Path:
    """optical_clear = Conv1x1(sar) + optical, the residual Add named like the model's."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper, save

    o = helper.make_tensor_value_info("optical", TensorProto.FLOAT, [batch, 13, 32, 32])
    s = helper.make_tensor_value_info("sar", TensorProto.FLOAT, [batch, 2, 32, 32])
    y = helper.make_tensor_value_info("optical_clear", TensorProto.FLOAT, [batch, 13, 32, 32])
    w = numpy_helper.from_array(np.full((13, 2, 1, 1), 0.01, np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("Conv", ["sar", "w"], ["c"], name="/irn/conv2/Conv"),
         helper.make_node("Add", ["c", "optical"], ["optical_clear"], name="/global_residual/Add")],
        "tiny", [o, s], [y], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(m, {"precision": precision, "tile": "32", "preset": "fake"})
    save(m, str(path))
    return path


class _FakeTRT(types.ModuleType):
    """Just enough of the TensorRT 10/11 Python API for build_engine, recording what it is asked."""

    def __init__(self, version: str) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.calls: dict = {"flags": [], "builds": 0, "timing_blobs": []}
        rec = self.calls

        class Logger:
            WARNING = 2

            def __init__(self, severity):
                pass

        class NetworkDefinitionCreationFlag:
            STRONGLY_TYPED = 0

        class MemoryPoolType:
            WORKSPACE = "WORKSPACE"

        class BuilderFlag:
            FP16 = "FP16"

        class Tensor:
            def __init__(self, name, shape):
                self.name, self.shape = name, shape

        class Network:
            def __init__(self):
                self.inputs = []

            @property
            def num_inputs(self):
                return len(self.inputs)

            def get_input(self, i):
                return self.inputs[i]

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                self.network = network

            def parse_from_file(self, path):
                import onnx

                m = onnx.load(path)
                rec["parsed"] = path
                rec["parsed_precision"] = {p.key: p.value for p in m.metadata_props}.get("precision")
                for vi in m.graph.input:
                    dims = [d.dim_value if d.dim_value else -1 for d in vi.type.tensor_type.shape.dim]
                    self.network.inputs.append(Tensor(vi.name, dims))
                return True

        class TimingCache:
            def __init__(self, blob):
                self.blob = bytes(blob)

            def serialize(self):
                return self.blob + b"+timing"

        class Config:
            def __init__(self):
                self.flags, self.profiles, self.cache = [], [], None

            def set_memory_pool_limit(self, pool, size):
                rec["workspace"] = (pool, size)

            def set_flag(self, flag):
                self.flags.append(flag)
                rec["builder_flags"] = list(self.flags)

            def add_optimization_profile(self, p):
                rec["profile"] = dict(p.shapes)

            def create_timing_cache(self, blob):
                rec["timing_blobs"].append(bytes(blob))
                return TimingCache(blob)

            def set_timing_cache(self, cache, ignore_mismatch):
                self.cache = cache
                return True

            def get_timing_cache(self):
                return self.cache

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, mn, opt, mx):
                self.shapes[name] = (tuple(mn), tuple(opt), tuple(mx))

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags=0):
                rec["flags"].append(flags)
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                rec["builds"] += 1
                return b"ENGINE:" + json.dumps(config.flags).encode()

        for k, v in dict(Logger=Logger, NetworkDefinitionCreationFlag=NetworkDefinitionCreationFlag,
                         MemoryPoolType=MemoryPoolType, BuilderFlag=BuilderFlag, OnnxParser=OnnxParser,
                         Builder=Builder).items():
            setattr(self, k, v)


@pytest.fixture
def fake_trt(monkeypatch):
    def install(version: str) -> _FakeTRT:
        fake = _FakeTRT(version)
        monkeypatch.setitem(sys.modules, "tensorrt", fake)
        monkeypatch.setattr(ec, "_driver_gpu_info", lambda i: ec.GpuInfo(i, "Fake Orin", "8.7"))
        monkeypatch.setattr(ec, "activate_device", lambda i: None)
        return fake

    return install


def test_build_engine_strongly_typed_from_fp16_graph(tmp_path, fake_trt):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxconverter_common")
    fake = fake_trt("10.12.0.36")
    src = _tiny_onnx(tmp_path / "m.onnx")
    engine = trtmod.build_engine(src, tmp_path / "m.engine", half=True, batch="1:4:8", workspace_gb=2,
                                 cache_root=tmp_path / "cache", verbose=False)
    c = fake.calls
    assert c["flags"] == [1 << 0]  # STRONGLY_TYPED
    assert "builder_flags" not in c  # no BuilderFlag.FP16 in strong typing
    assert c["parsed_precision"] == "fp16" and c["parsed"] != str(src)  # the mixed-precision graph
    assert c["workspace"] == ("WORKSPACE", 2 << 30)
    assert c["profile"] == {"optical": ((1, 13, 32, 32), (4, 13, 32, 32), (8, 13, 32, 32)),
                            "sar": ((1, 2, 32, 32), (4, 2, 32, 32), (8, 2, 32, 32))}
    assert engine.read_bytes().startswith(b"ENGINE:")
    sc = ec.read_sidecar(engine)
    assert sc["trt_version"] == "10.12.0" and sc["compute_capability"] == "8.7" and sc["gpu_name"] == "Fake Orin"
    assert sc["precision"] == "fp16" and sc["strongly_typed"] is True
    assert sc["onnx_sha256"] == ec.file_sha256(src) != sc["built_from_sha256"]
    assert sc["engine_sha256"] == __import__("hashlib").sha256(engine.read_bytes()).hexdigest()
    # persistent timing cache: written after the build, loaded by the next one
    tc = ec.timing_cache_path("10.12.0", "8.7", tmp_path / "cache")
    assert tc.read_bytes() == b"+timing"
    trtmod.build_engine(src, tmp_path / "m2.engine", half=True, cache_root=tmp_path / "cache", verbose=False)
    assert c["timing_blobs"] == [b"", b"+timing"]


def test_build_engine_fp16_flag_on_older_tensorrt_10(tmp_path, fake_trt):
    pytest.importorskip("onnx")
    fake = fake_trt("10.3.0.30")
    src = _tiny_onnx(tmp_path / "m.onnx")
    engine = trtmod.build_engine(src, None, half=True, batch=2, cache_root=tmp_path / "cache", verbose=False)
    c = fake.calls
    assert c["flags"] == [0] and c["builder_flags"] == ["FP16"]
    assert c["parsed"] == str(src)  # the FP32 graph, reduced by the builder
    assert c["profile"]["optical"] == ((2, 13, 32, 32),) * 3
    assert engine == ec.engine_cache_path(src, "fp16", batch=2, trt_version="10.3.0", compute_capability="8.7",
                                          cache_root=tmp_path / "cache")
    assert ec.read_sidecar(engine)["strongly_typed"] is False


def test_build_engine_fp32_on_tensorrt_11_and_input_checks(tmp_path, fake_trt):
    pytest.importorskip("onnx")
    fake = fake_trt("11.0.0")
    src = _tiny_onnx(tmp_path / "m.onnx")
    trtmod.build_engine(src, tmp_path / "a.engine", half=False, cache_root=tmp_path / "c", verbose=False)
    assert fake.calls["flags"] == [1] and "builder_flags" not in fake.calls
    assert fake.calls["parsed_precision"] == "fp32"
    static = _tiny_onnx(tmp_path / "s.onnx", batch=2)
    with pytest.raises(InputError, match="static batch of 2"):
        trtmod.build_engine(static, tmp_path / "s.engine", batch="1:4:8", cache_root=tmp_path / "c",
                            verbose=False)
    half_graph = _tiny_onnx(tmp_path / "h.onnx", precision="fp16")
    with pytest.raises(InputError, match="--half"):
        trtmod.build_engine(half_graph, tmp_path / "h.engine", half=False, cache_root=tmp_path / "c",
                            verbose=False)
    with pytest.raises(InputError, match="--workspace"):
        trtmod.build_engine(src, tmp_path / "w.engine", workspace_gb=0, cache_root=tmp_path / "c",
                            verbose=False)
    assert not (tmp_path / "s.engine").exists() and not (tmp_path / "h.engine").exists()


def test_get_or_build_engine_builds_once_and_rebuilds_foreign_engines(tmp_path, fake_trt):
    pytest.importorskip("onnx")
    fake = fake_trt("10.3.0")
    src = _tiny_onnx(tmp_path / "m.onnx")
    p1 = trtmod.get_or_build_engine(src, half=False, cache_root=tmp_path / "c")
    p2 = trtmod.get_or_build_engine(src, half=False, cache_root=tmp_path / "c")
    assert p1 == p2 and fake.calls["builds"] == 1
    sc = ec.read_sidecar(p1)
    sc["trt_version"] = "10.1.0"  # as if another TensorRT had written it
    ec.write_sidecar(p1, sc)
    with pytest.raises(EngineMismatchError):
        ec.check_engine(p1)
    assert trtmod.get_or_build_engine(src, half=False, cache_root=tmp_path / "c") == p1
    assert fake.calls["builds"] == 2 and ec.read_sidecar(p1)["trt_version"] == "10.3.0"


# ----------------------------------------------------------------------------- real TensorRT (GPU)


@pytest.mark.tensorrt
def test_real_tensorrt_engine_matches_onnxruntime(tmp_path):
    """On a GPU with TensorRT: FP32 and FP16 engines of carf-tiny vs the eager model; cache reuse."""
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    from cloudrt.export import export_onnx
    from cloudrt.model import build
    from cloudrt.runtime.tensorrt_backend import TensorRTBackend

    torch.manual_seed(0)
    model = build("carf-tiny", num_rdb=3).eval()
    torch.nn.init.normal_(model.irn.conv2.weight, std=0.02)
    onnx_path = export_onnx(model, tmp_path / "t.onnx", tile=64, verbose=False)
    rng = np.random.default_rng(0)
    o = rng.random((3, 13, 64, 64), dtype=np.float32)
    s = rng.random((3, 2, 64, 64), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(o), torch.from_numpy(s)).numpy()
    for half, tol in ((False, 1e-3), (True, 1e-2)):
        eng = trtmod.build_engine(onnx_path, None, half=half, batch="1:2:4", cache_root=tmp_path / "c",
                                  verbose=False)
        out = TensorRTBackend(eng).run(o, s)
        rel = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
        assert rel <= tol, (half, rel)
        again = trtmod.get_or_build_engine(onnx_path, half=half, batch="1:2:4", cache_root=tmp_path / "c")
        assert again == eng
