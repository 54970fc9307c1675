"""One whole-scene run in a fresh process (so its peak RSS is its own): read, mask, tile, infer, blend, write.

Usage: ``python benchmarks/_scene_worker.py '{"optical": ..., "sar": ..., "model": ..., "out": ...,
"backend": "onnxruntime", "device": "cpu", "tile": 256, "batch": null}'``. Prints one JSON line:
wall seconds of ``Runtime.predict_file`` (``total_s``), seconds inside the backend's ``run``
(``model_s``), tiles, megapixels per second, the share of time outside the model, and the peak RSS.
"""

from __future__ import annotations

import json
import sys
import time


def peak_rss_mib() -> float | None:
    """This process's peak resident set (``VmHWM``, Linux), counted from its own ``exec``.

    Not ``getrusage``: on Linux ``ru_maxrss`` keeps the high-water mark of the memory image replaced by
    ``exec``, i.e. of the parent that forked this process (a pytest process holding torch reads ~1.8 GiB
    for every child, whatever the child does).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main() -> None:
    args = json.loads(sys.argv[1])
    t_import = time.perf_counter()
    from cloudrt.runtime import Runtime

    rt = Runtime(args["model"], backend=args["backend"], device=args["device"], tile=args["tile"],
                 batch=args["batch"])
    inner = rt.backend.run
    spent = {"s": 0.0, "calls": 0}

    def timed_run(o, s):  # noqa: ANN001, ANN202 - the backend's own signature
        t0 = time.perf_counter()
        try:
            return inner(o, s)
        finally:
            spent["s"] += time.perf_counter() - t0
            spent["calls"] += 1

    rt.backend.run = timed_run  # run_scene calls rt.backend.run for every batch
    setup_s = time.perf_counter() - t_import
    t0 = time.perf_counter()
    stats = rt.predict_file(args["optical"], args["sar"], args["out"], overwrite=True)
    total = time.perf_counter() - t0
    mpix = stats["pixels"] / 1e6
    print(json.dumps({
        "backend": rt.backend_name, "tile": rt.tile, "overlap": rt.overlap, "batch": rt.batch,
        "pixels": stats["pixels"], "tiles": stats["tiles"], "calls": spent["calls"],
        "cloud_fraction": round(stats.get("cloud_fraction", float("nan")), 4),
        "setup_s": round(setup_s, 3), "total_s": round(total, 3), "model_s": round(spent["s"], 3),
        "outside_s": round(total - spent["s"], 3), "outside_share": round((total - spent["s"]) / total, 4),
        "mpix_per_s": round(mpix / total, 4), "peak_rss_mib": peak_rss_mib(),
    }))


if __name__ == "__main__":
    main()
