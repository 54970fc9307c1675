"""One S2/S1 pair of ``cloudrt infer``, the same in single, serial-batch and Ray mode.

:func:`process_pair` opens and checks the pair, runs the runtime, writes the output (and mask) atomically,
as a Cloud-Optimized GeoTIFF with ``cog``, and a STAC Item beside it with ``stac``. It is a module-level
function of picklable arguments so Ray workers run exactly the code the serial batch runs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from cloudrt.distributed import Job


@dataclass(frozen=True)
class PairSettings:
    """How to read and write every pair of a run (everything but the model)."""

    align: bool = False
    sar_units: str = "auto"
    optical_scale: str = "dn"
    composite: bool = True
    overwrite: bool = False
    cog: bool = False
    stac: bool = False
    compress: str = "deflate"  # output codec (cloudrt.scene.io.COMPRESSIONS) and level (None: its default)
    compress_level: int | None = None


@functools.lru_cache(maxsize=4)
def _sha256(path: str) -> str:
    from cloudrt.scene.stac import sha256_file

    return sha256_file(path)


def _acquired(ods: Any) -> dt.datetime | None:
    """Sensing time of a SAFE input (for the STAC Item's datetime), else None (processing time is used)."""
    t = ods.tags().get("S2_PRODUCT_START_TIME") if hasattr(ods, "tags") else None
    try:
        return dt.datetime.fromisoformat(t.replace("Z", "+00:00")) if t else None
    except ValueError:
        return None


def is_done(settings: PairSettings, job: Job) -> bool:
    """Whether a resumed batch may skip ``job``: its output exists and, with ``stac``, its STAC Item too.

    The Item is written last (after the output and the mask), atomically, so an interruption or a failure
    between the output and its Item leaves an output without Item: that pair is redone, not skipped.
    """
    output = Path(job.output)
    if not output.exists():
        return False
    if settings.stac:
        from cloudrt.scene.stac import stac_path_for

        return stac_path_for(output).exists()
    return True


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.gtiff.tif")


def process_pair(settings: PairSettings, get_runtime: Callable[[], Any], job: Job,
                 say: Callable[[str], None] | None = None,
                 progress_for: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """Process ``job`` (args ``optical``, ``sar``, optional ``mask``); return the runtime's stats.

    ``get_runtime()`` is called only once the inputs passed their checks (the model loads after them);
    ``progress_for(rows)`` may return a context manager yielding a ``callback(done, total)``. A job with
    ``args["redo"]`` replaces its existing output (one :func:`is_done` found without its STAC Item).
    """
    if job.args.get("redo") and not settings.overwrite:
        settings = replace(settings, overwrite=True)
    from cloudrt.scene.sources import open_scene

    output = Path(job.output)
    mask_out = Path(job.args["mask"]) if job.args.get("mask") else None
    conf_out = Path(job.args["confidence"]) if job.args.get("confidence") else None
    with open_scene(job.args["optical"], job.args["sar"], align=settings.align, sar_units=settings.sar_units,
                    optical_scale=settings.optical_scale) as src:
        acquired = _acquired(src.ods)
        notes = list(src.notes)
        rt = get_runtime()
        if say is not None:  # after the model loaded: a failing load stays a single error line
            for note in notes:
                if not note.startswith("optical scale: DN"):  # the expected convention needs no line
                    say(f"cloudrt: {note}")
        with progress_for(src.height) if progress_for is not None else contextlib.nullcontext() as cb:
            if not settings.cog:
                stats = rt.predict_source(src, output, mask_out=mask_out, composite=settings.composite,
                                          overwrite=settings.overwrite, progress=cb, compress=settings.compress,
                                          compress_level=settings.compress_level, confidence_out=conf_out)
            else:
                stats = _predict_cog(rt, src, output, mask_out, settings, cb, conf_out)
        stats.update(width=src.width, height=src.height)
    if settings.stac:
        _write_stac(rt, job, output, mask_out, settings, notes, acquired, conf_out)
    return stats


def ray_process(settings: PairSettings, rt: Any, job: Job) -> dict[str, Any]:
    """:func:`process_pair` with a runtime Ray's worker already holds (see :mod:`cloudrt.distributed`)."""
    stats = process_pair(settings, lambda: rt, job)
    return {k: v for k, v in stats.items() if isinstance(v, int | float | str)}


def _predict_cog(rt: Any, src: Any, output: Path, mask_out: Path | None, settings: PairSettings,
                 progress: Any, conf_out: Path | None = None) -> dict[str, Any]:
    """Stream into temporary tiled GeoTIFFs, then copy each as a COG into place (atomically)."""
    from cloudrt.scene.cog import to_cog

    tmp, mtmp = _tmp(output), (_tmp(mask_out) if mask_out is not None else None)
    ctmp = _tmp(conf_out) if conf_out is not None else None
    try:
        stats = rt.predict_source(src, tmp, mask_out=mtmp, composite=settings.composite, overwrite=True,
                                  progress=progress, compress=settings.compress,
                                  compress_level=settings.compress_level, confidence_out=ctmp)
        codec = settings.compress.upper()  # the COG copy keeps the codec at the driver's default level
        if mtmp is not None:  # the mask first: the output's presence is what marks a pair as done
            to_cog(mtmp, mask_out, resampling="nearest", compress=codec)  # class values must not be averaged
        if ctmp is not None:
            to_cog(ctmp, conf_out, resampling="average", compress=codec)
        to_cog(tmp, output, resampling="average", compress=codec)
    finally:
        for p in (tmp, mtmp, ctmp):
            if p is not None:
                p.unlink(missing_ok=True)
    return stats


def _write_stac(rt: Any, job: Job, output: Path, mask_out: Path | None, settings: PairSettings,
                notes: list[str], acquired: dt.datetime | None, conf_out: Path | None = None) -> None:
    from cloudrt._version import __version__
    from cloudrt.scene.stac import make_item, stac_path_for, validate_item, write_item

    model = getattr(rt.backend, "path", None)
    options = {"tile": rt.tile, "overlap": rt.overlap, "batch": rt.batch, "mask_method": rt.mask_method,
               **asdict(settings), "decisions": notes}
    inputs = {k: job.args[k] for k in ("optical", "sar") if job.args.get(k) is not None}
    item = make_item(output, inputs=inputs,
                     model=str(model) if model else "in-memory module",
                     model_sha256=_sha256(str(model)) if model and Path(model).is_file() else "",
                     backend=rt.backend_name, options=options, version=__version__, mask=mask_out,
                     confidence=conf_out,
                     cog=settings.cog, datetime=acquired)
    validate_item(item)
    write_item(item, stac_path_for(output))
