"""The array path of the runtime needs no rasterio: a host with NumPy, ONNX Runtime (or torch) and no GDAL (the
lent GPU machine) imports ``cloudrt.runtime`` and the scene modules and runs :meth:`Runtime.predict` on arrays,
with the same bytes as where rasterio is installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from runtime_helpers import make_onnx, synthetic_scene

from cloudrt.runtime import Runtime

HERE = Path(__file__).resolve().parent


def _scene() -> tuple[np.ndarray, np.ndarray]:
    opt, sar = synthetic_scene(90, 150, seed=7)
    opt[:, 30:50, 60:90] = 0  # a nodata hole: skipped tiles and nodata pixels
    return opt, sar


def test_runtime_predicts_arrays_with_rasterio_blocked(tmp_path: Path) -> None:
    model = make_onnx(tmp_path / "m.onnx", tile=32, kernel=3)
    got = tmp_path / "got.npz"
    code = textwrap.dedent(f"""
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("rasterio", "affine"):
                    raise ImportError("blocked: " + name)

        sys.meta_path.insert(0, Block())
        import numpy as np
        import cloudrt.scene.driver, cloudrt.scene.io, cloudrt.scene.pipeline, cloudrt.scene.sinks
        import cloudrt.scene.sources, cloudrt.scene.tiling, cloudrt.preprocess.composite, cloudrt.preprocess.mask
        from cloudrt.runtime import Runtime
        from test_no_rasterio import _scene

        opt, sar = _scene()
        res = {{}}
        for threaded in (True, False):
            out, conf = Runtime({str(model)!r}, batch=3, panel=64, threaded=threaded).predict(
                opt, sar, nodata=0, return_confidence=True)
            res[f"out{{int(threaded)}}"], res[f"conf{{int(threaded)}}"] = out, conf
        np.savez({str(got)!r}, **res)
        assert not [m for m in ("rasterio", "affine") if m in sys.modules]
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=HERE)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().endswith("ok")
    opt, sar = _scene()
    want, want_conf = Runtime(model, batch=3, panel=64, threaded=False).predict(opt, sar, nodata=0,
                                                                               return_confidence=True)
    with np.load(got) as d:
        for t in (0, 1):  # byte-identical to the run with rasterio installed, threaded or not
            assert d[f"out{t}"].tobytes() == want.tobytes()
            assert d[f"conf{t}"].tobytes() == want_conf.tobytes()
    assert (want == 0).any() and (want != 0).any()  # the hole came back as nodata, the rest was predicted
