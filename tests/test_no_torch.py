"""The runtime is torch-free: importing it never imports torch, and it runs with torch made unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from runtime_helpers import make_onnx

HERE = Path(__file__).resolve().parent


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, cwd=HERE)


def test_imports_do_not_import_torch() -> None:
    r = _run("""
        import sys
        import cloudrt, cloudrt.runtime, cloudrt.io, cloudrt.tiling, cloudrt.mask, cloudrt.cli
        from cloudrt.runtime import Runtime, check_engine_compat
        import cloudrt.commands.infer, cloudrt.commands.mask
        heavy = sorted(m for m in ("torch", "tensorrt", "onnx", "kornia", "safetensors") if m in sys.modules)
        print(",".join(heavy))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""


def test_runtime_and_cli_work_with_torch_blocked(tmp_path: Path) -> None:
    """With ``import torch`` (and ``onnx``) raising ImportError, the runtime predicts and the CLI writes."""
    model = make_onnx(tmp_path / "m.onnx", tile=32, kernel=3)
    o, s, out = tmp_path / "o.tif", tmp_path / "s.tif", tmp_path / "out.tif"
    r = _run(f"""
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "onnx"):
                    raise ImportError("blocked: " + name)

        sys.meta_path.insert(0, Block())
        import numpy as np
        from runtime_helpers import synthetic_scene, write_tif
        from cloudrt.runtime import Runtime
        from cloudrt.cli import main

        rt = Runtime({str(model)!r})
        opt, sar = synthetic_scene(50, 70)
        out = rt.predict(opt, sar)
        assert out.shape == (13, 50, 70) and np.isfinite(out).all()
        write_tif({str(o)!r}, opt)
        write_tif({str(s)!r}, sar)
        rc = main(["infer", "-q", "--model", {str(model)!r}, "--optical", {str(o)!r}, "--sar", {str(s)!r},
                   "-o", {str(out)!r}])
        assert rc == 0, rc
        assert "torch" not in sys.modules
        print("ok")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("ok")
    assert out.exists()
