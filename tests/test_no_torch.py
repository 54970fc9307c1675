"""The runtime is torch-free and onnx-free: importing it never imports torch, and the whole runtime, scene and
preprocess tree imports and runs with torch and onnx made unimportable."""

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
        import cloudrt, cloudrt.runtime, cloudrt.scene.io, cloudrt.scene.tiling, cloudrt.preprocess.mask, cloudrt.cli
        from cloudrt.runtime import Runtime, check_engine_compat
        import cloudrt.cli.infer, cloudrt.cli.mask
        heavy = sorted(m for m in ("torch", "tensorrt", "onnx", "kornia", "safetensors") if m in sys.modules)
        print(",".join(heavy))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""


def test_whole_runtime_scene_preprocess_tree_imports_with_torch_and_onnx_blocked() -> None:
    """Every module under cloudrt.runtime, cloudrt.scene and cloudrt.preprocess (and the contract and leaf
    utilities) imports with ``import torch`` and ``import onnx`` raising ImportError."""
    r = _run("""
        import importlib, pkgutil, sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "onnx"):
                    raise ImportError("blocked: " + name)

        sys.meta_path.insert(0, Block())
        import cloudrt
        names = ["cloudrt", "cloudrt.contract", "cloudrt.errors", "cloudrt.paths", "cloudrt.fileutil",
                 "cloudrt.devices", "cloudrt._deps", "cloudrt.cli"]
        for pkg in ("runtime", "scene", "preprocess"):
            mod = importlib.import_module(f"cloudrt.{pkg}")
            names.append(mod.__name__)
            names += [i.name for i in pkgutil.walk_packages(mod.__path__, prefix=f"cloudrt.{pkg}.")]
        for n in names:
            importlib.import_module(n)
        assert len(names) > 15, names
        assert not [m for m in ("torch", "onnx") if m in sys.modules]
        print("ok", len(names))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("ok")


def test_runtime_and_cli_work_with_torch_blocked(tmp_path: Path) -> None:
    """With ``import torch`` (and ``onnx``) raising ImportError, the runtime predicts and the CLI writes."""
    model = make_onnx(tmp_path / "m.onnx", tile=32, kernel=3)
    o, s, out, mask = tmp_path / "o.tif", tmp_path / "s.tif", tmp_path / "out.tif", tmp_path / "mask.tif"
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
        rc = main(["mask", "-q", "--shadow", "--optical", {str(o)!r}, "-o", {str(mask)!r}])
        assert rc == 0, rc
        from cloudrt.scene.driver import run_scene
        from cloudrt.scene.sinks import ArraySink
        from cloudrt.scene.sources import ArraySource
        src = ArraySource(opt, sar)
        sink = ArraySink(13, 50, 70, None, want_mask=True)
        run_scene(src, rt.backend.run, sink, tile=32, overlap=8, batch=2, want_mask=True)
        assert np.isfinite(sink.out).all() and set(np.unique(sink.mask)) <= {{0, 1}}
        assert "torch" not in sys.modules
        print("ok")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("ok")
    assert out.exists() and mask.exists()
