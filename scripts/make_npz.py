"""Pack the demo training mix into one compact .npz for a machine without rasterio (a lent GPU host).

    python scripts/make_npz.py --data DIR [--data DIR ...] --holdout NAME ... -o runs/mix.npz [--max-mb 56]

Records are added in order of value (SAR triplets, then real cloudy pairs, then clear images) until the
compressed size would pass ``--max-mb`` (the device machine receives at most 64 MiB of working tree); what was
left out is printed.

The held-out triplets for scripts/gpu_train.py's evaluation (cloudy input, SAR and target of each):

    python scripts/make_npz.py --data DIR --only oriolac_6553 --only oriolac_4287 --only oriolac_4065 \
        -o runs/heldout.npz
"""

from __future__ import annotations

import argparse
import io
import sys

import numpy as np

from cloudrt.train.mix import Record, records_from_folders, save_npz


def _size_mb(rec: Record) -> float:
    buf = io.BytesIO()
    arrays = {"t": rec.target.astype(np.uint16)}
    if rec.cloudy is not None:
        arrays["c"] = rec.cloudy.astype(np.uint16)
    if rec.sar is not None:
        arrays["s"] = rec.sar.astype(np.float16)
    np.savez_compressed(buf, **arrays)
    return buf.tell() / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", action="append", required=True, help="sample folder (repeatable)")
    ap.add_argument("--holdout", action="append", default=[], help="sample name never packed (repeatable)")
    ap.add_argument("--only", action="append", default=[],
                    help="pack only this sample name (repeatable), e.g. the held-out triplets for evaluation")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--max-mb", type=float, default=56.0)
    a = ap.parse_args(argv)
    recs = records_from_folders(a.data, set(a.holdout))
    if a.only:
        recs = [r for r in recs if r.name in set(a.only)]
        missing = sorted(set(a.only) - {r.name for r in recs})
        if missing:
            print(f"error: --only {', '.join(missing)} not found under {a.data}; check the names and --data.",
                  file=sys.stderr)
            return 2

    def rank(r: Record) -> int:
        return 0 if r.sar is not None else 1 if (r.cloudy is not None and not r.clear_input) else 2

    keep, left, total = [], [], 0.0
    for r in sorted(recs, key=rank):
        mb = _size_mb(r)
        if total + mb <= a.max_mb:
            keep.append(r)
            total += mb
        else:
            left.append(r.name)
    save_npz(keep, a.out)
    print(f"wrote {a.out}: {len(keep)} records, about {total:.1f} MB; left out {len(left)}: {', '.join(left)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
