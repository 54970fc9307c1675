"""Make a trained checkpoint the shipped demo model: weights/carf-demo.{safetensors,json} with provenance and
held-out scores (raw and composited, beside identity and the peer reference), then rebuild export/.

    python scripts/release_demo.py RUN/final --data path/to/sen12mscr-samples --hardware "2-core CPU" \
        [--init-note "..."] && bash export/build.sh
    python scripts/release_demo.py --rescore --data path/to/sen12mscr-samples   # after a compositing change:
        re-measure the shipped model's scores in place (weights and provenance unchanged)
"""

from __future__ import annotations

import argparse
import json

from cloudrt.model.checkpoint import load_checkpoint, save_checkpoint, weights_sha256
from cloudrt.paths import DEFAULT_WEIGHTS
from cloudrt.train.evaluate import evaluate, json_safe


def _scores(res: dict, patches: list[str], data: str) -> dict:
    out = {"patches": patches, "data": f"{data} (real SEN12MS-CR, 256x256)", "model": res["mean"],
           "composited": res["composited"]["mean"], "identity": res["identity"]["mean"],
           "per_patch": {r["name"]: {k: r[k] for k in ("model", "composited", "identity", "reference")
                                     if k in r} for r in res["per_patch"]}}
    if "reference" in res:
        out["reference"] = res["reference"]["mean"]
    return json_safe(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?")
    ap.add_argument("--data", required=True, help="the sen12mscr-samples folder (triplets)")
    ap.add_argument("--hardware")
    ap.add_argument("--init-note", default="")
    ap.add_argument("--rescore", action="store_true", help="re-measure the shipped model's scores in place")
    a = ap.parse_args(argv)
    if a.rescore:
        model, info = load_checkpoint(DEFAULT_WEIGHTS)
        info = {k: v for k, v in info.items() if k not in ("config", "weights_sha256")}
        return _publish(model, info, info["scores"]["held_out"]["patches"], a.data)
    if not a.checkpoint or not a.hardware:
        raise SystemExit("pass CHECKPOINT and --hardware (or --rescore)")
    model, meta = load_checkpoint(a.checkpoint)
    train = meta.get("train", {})
    held = list(train.get("holdout", []))
    if len(held) < 3:
        raise SystemExit("the run names fewer than 3 held-out patches; refusing to publish scores")
    info = {"name": "carf-demo", "hardware": a.hardware, "train": train, "steps": meta.get("steps"),
            "wall_minutes": meta.get("wall_minutes"), "history": meta.get("history", [])[-20:]}
    if a.init_note:
        info["init"] = a.init_note
    return _publish(model, info, held, a.data)


def _publish(model, info: dict, held: list[str], data: str) -> int:
    """Save ``model`` as the shipped weights, measure its scores on them, save again with the scores."""
    save_checkpoint(model, DEFAULT_WEIGHTS, info)  # scores follow: they are measured on the saved weights
    held_res = evaluate(data, weights=DEFAULT_WEIGHTS, samples=held)
    all_res = evaluate(data, weights=DEFAULT_WEIGHTS)
    info["scores"] = {"held_out": _scores(held_res, held, data),
                      "all_triplets": _scores(all_res, [r["name"] for r in all_res["per_patch"]], data)}
    save_checkpoint(model, DEFAULT_WEIGHTS, info)
    print(json.dumps({"sha256": weights_sha256(DEFAULT_WEIGHTS), "held_out": info["scores"]["held_out"]},
                     indent=1)[:3000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
