"""The bench's result as a Markdown table or JSON."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from cloudrt.bench.probe import ROW_KEYS


def fmt(v: Any, key: str) -> str:
    if v is None:
        return "-"
    if key == "max_err":
        return f"{v:.1e}"
    if key == "speedup":
        return f"{v:.2f}x"
    if key in ("ms_per_batch", "tiles_per_s", "gflops"):
        return f"{v:.1f}" if v >= 10 else f"{v:.2f}"
    if key == "mpix_per_s":
        return f"{v:.3f}"
    if key == "peak_share":
        return f"{100 * v:.1f}%"
    return str(v)


def table_columns(result: dict[str, Any]) -> list[str]:
    """Columns of the terminal table: the row keys, plus GFLOP/s and peak share when known."""
    cols = list(ROW_KEYS)
    if any("gflops" in r for r in result["rows"]):
        cols.append("gflops")
    if any(r.get("peak_share") is not None for r in result["rows"]):
        cols.append("peak_share")
    return cols


def format_table(result: dict[str, Any]) -> str:
    """Plain-text (Markdown) table of ``result``, skipped paths listed below it."""
    cols = table_columns(result)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in result["rows"]:
        lines.append("| " + " | ".join(fmt(r.get(c), c) for c in cols) + " |")
    sk = result["system"].get("skipped") or []
    if sk:
        lines.append("")
        lines.append("skipped:")
        for s in sk:
            b = f" batch {s['batch']}" if "batch" in s else ""
            lines.append(f"- {s['backend']} {s['precision']}{b}: {s['reason']}")
    return "\n".join(lines)


def to_json(result: dict[str, Any]) -> str:
    """``result`` as JSON text (NaN/inf become null)."""
    def clean(x: Any) -> Any:
        if isinstance(x, float) and not np.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, np.generic):
            return clean(x.item())
        return x

    return json.dumps(clean(result), indent=2)
