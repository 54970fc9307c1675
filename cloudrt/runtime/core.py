"""The :class:`Runtime`: load a model once, predict arrays or whole GeoTIFF scenes, thread-safe."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import numpy as np

from cloudrt._version import __version__
from cloudrt.contract import NO_SAR_DB, S2_BANDS
from cloudrt.errors import InputError
from cloudrt.preprocess.mask import METHODS, cloud_mask
from cloudrt.preprocess.normalize import check_optical, check_sar
from cloudrt.runtime.backends import load_backend
from cloudrt.runtime.base import Backend
from cloudrt.scene.driver import PANEL, Progress, run_scene
from cloudrt.scene.io import (
    DEFAULT_COMPRESS,
    atomic_output,
    band_descriptions,
    check_compression,
    check_output_path,
    gdal_env,
    open_writer,
    output_profile,
)
from cloudrt.scene.sinks import ArraySink, RasterSink
from cloudrt.scene.sources import ArraySource, RasterSource, check_has_valid, open_scene

log = logging.getLogger("cloudrt.runtime")


def default_overlap(tile: int, size_divisor: int = 1) -> int:
    """Default tile overlap: about an eighth of the tile (32 px for 256), at most half a tile, rounded up to
    a multiple of the model's size divisor when one fits.

    A multiple keeps every tile origin on the same phase of the model's internal grid (CARF's pixel-unshuffle
    and Swin windows repeat every ``size_divisor`` pixels), so overlapping tiles see the content identically
    aligned and blend without phase artefacts.
    """
    base = max(8, tile // 8)
    d = max(1, int(size_divisor))
    aligned = min(-(-base // d) * d, (tile // 2) // d * d)
    return int(aligned if aligned > 0 else min(tile // 2, base))


class Runtime:
    """Cloud removal on whole scenes with a deployed model (no torch needed).

    ``model``: an ONNX file, a TensorRT engine (``.engine``/``.plan``), a ``.safetensors`` checkpoint or a
    torch module (torch backend), or None for the shipped default (:data:`cloudrt.paths.DEFAULT_ONNX`).
    ``backend``: ``auto`` (fastest available; see :attr:`backend_name`), ``tensorrt``, ``onnxruntime``,
    ``cuda``, ``cpu`` or ``torch``. ``tile`` (default: the model's), ``overlap`` (default
    :func:`default_overlap`), ``batch`` (tiles per backend call). ``mask_method``: ``paper`` or
    ``sen12mscr`` (:func:`cloudrt.preprocess.mask.cloud_mask`), the binary mask reported beside the soft
    compositing weight (:mod:`cloudrt.preprocess.composite`).
``panel``: core columns per vertical panel of wide scenes (default :data:`cloudrt.scene.driver.PANEL`;
results are identical for any value, memory grows with it). File scenes run with GDAL's block cache capped
(:func:`cloudrt.scene.io.gdal_env`) unless ``GDAL_CACHEMAX`` is set. ``threaded``: composite, cast and write
(compress) behind the model in a second thread; ``read_ahead``: read the next rows in a third one
(:func:`cloudrt.scene.driver.run_scene`); bit-identical results either way.

    One instance may be shared by several threads: :meth:`predict` keeps no state between calls.
    """

    def __init__(self, model: Any = None, backend: str = "auto", device: str | None = None,
                 tile: int | None = None, overlap: int | None = None, batch: int | None = None,
                 mask_method: str = "paper", panel: int | None = None,
                 threaded: bool = True, read_ahead: bool = False) -> None:
        if mask_method not in METHODS:
            raise InputError(f"unknown cloud-mask method {mask_method!r}; use one of {', '.join(METHODS)}.")
        if tile is not None and tile < 1:
            raise InputError(f"tile must be a positive number of pixels, got {tile}; pass e.g. --tile 256.")
        if batch is not None and batch < 1:
            raise InputError(f"batch must be >= 1, got {batch}; pass e.g. --batch 4.")
        if panel is not None and panel < 1:
            raise InputError(f"panel must be >= 1 column, got {panel}; pass e.g. panel=2048.")
        self.panel = PANEL if panel is None else int(panel)
        self.threaded, self.read_ahead = bool(threaded), bool(read_ahead)
        self.backend: Backend = load_backend(model, backend, device, batch)
        self.requested_backend = backend
        self.tile = self.backend.resolve_tile(tile)
        div = self.backend.size_divisor
        self.overlap = default_overlap(self.tile, div) if overlap is None else int(overlap)
        if not 0 <= self.overlap <= self.tile // 2:
            raise InputError(
                f"overlap {self.overlap} is outside [0, {self.tile // 2}] for tile {self.tile}; "
                f"pass --overlap {default_overlap(self.tile, div)}."
            )
        if self.overlap % div:
            log.warning("overlap %d is not a multiple of the model's size divisor %d; tiles will see the scene "
                        "at different phases (default: %d)", self.overlap, div, default_overlap(self.tile, div))
        cap = self.backend.fixed_batch or self.backend.max_batch
        self.batch = int(batch or self.backend.default_batch)
        if cap:
            self.batch = min(self.batch, cap)
        self.mask_method = mask_method
        log.info("cloudrt runtime: %s", self.describe())

    # -- introspection -------------------------------------------------------------------------------
    @property
    def backend_name(self) -> str:
        """``name (provider)`` of the backend in use, e.g. ``onnxruntime (CPUExecutionProvider)``."""
        return self.backend.describe()

    def describe(self) -> str:
        path = getattr(self.backend, "path", None)
        model = f"{path}" if path is not None else self.backend.metadata.get("preset", "module")
        how = "auto-selected" if self.requested_backend == "auto" else "requested"
        return (f"backend {self.backend_name} ({how}), model {model}, tile {self.tile}, overlap {self.overlap}, "
                f"batch {self.batch}")

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- arrays --------------------------------------------------------------------------------------
    def cloud_mask(self, optical_dn: np.ndarray, method: str | None = None) -> np.ndarray:
        """Cloud mask (H, W) bool of a (13, H, W) DN scene (:func:`cloudrt.preprocess.mask.cloud_mask`)."""
        return cloud_mask(np.asarray(optical_dn), method=method or self.mask_method)

    def predict(self, optical_dn: np.ndarray, sar_db: np.ndarray | None, *, mask: np.ndarray | None = None,
                composite: bool = True, nodata: float | None = None, sar_nodata: float | None = None,
                progress: Progress | None = None, return_confidence: bool = False) -> Any:
        """Cloud-free (13, H, W) float32 DN from optical (13, H, W) DN and SAR (2, H, W) dB, any H and W.
        ``sar_db=None``: no SAR (the model was trained with SAR dropout; expect less under thick cloud).

        The output is ``w * model + (1 - w) * input`` with the soft weight ``w`` of
        :mod:`cloudrt.preprocess.composite` (0 where the ground shows clearly: those pixels come back
        unchanged), after each tile's ``model`` output has its invented detail smoothed where no ground
        shows (:func:`cloudrt.preprocess.composite.smooth_invented`). ``mask``: your own (H, W) cloud mask
        to composite with instead; ``composite=False`` returns the raw (blended) model output everywhere.
        ``return_confidence``: also return the confidence band, (H, W) uint8 0-100 (100 observed, 0
        reconstructed with no optical evidence left). Pixels that are NaN/inf or ``nodata`` in the optical
        input come back as ``nodata`` (NaN when ``nodata`` is None).
        """
        optical_dn = np.asarray(optical_dn)
        if sar_db is None:  # no SAR, as in training with SAR dropout
            sar_db = np.broadcast_to(NO_SAR_DB, (len(NO_SAR_DB), *optical_dn.shape[-2:]))
        sar_db = np.asarray(sar_db)
        check_optical(optical_dn)
        check_sar(sar_db)
        if optical_dn.shape[1:] != sar_db.shape[1:]:
            raise InputError(
                f"optical {optical_dn.shape[1:]} and SAR {sar_db.shape[1:]} differ in size; pass co-registered "
                "arrays on one grid."
            )
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != optical_dn.shape[1:]:
                raise InputError(f"mask has shape {mask.shape}; expected {optical_dn.shape[1:]} (H, W).")
        src = ArraySource(optical_dn, sar_db, nodata, sar_nodata, mask)
        check_has_valid(src)
        sink = ArraySink(len(S2_BANDS), src.height, src.width, nodata, want_mask=return_confidence)
        self._run(src, sink, composite=composite, want_mask=return_confidence, progress=progress)
        return (sink.out, sink.confidence) if return_confidence else sink.out

    # -- files ---------------------------------------------------------------------------------------
    def predict_file(self, optical: str | os.PathLike, sar: str | os.PathLike, output: str | os.PathLike, *,
                     mask_out: str | os.PathLike | None = None, composite: bool = True, align: bool = False,
                     overwrite: bool = False, progress: Progress | None = None, compress: str = DEFAULT_COMPRESS,
                     compress_level: int | None = None,
                     confidence_out: str | os.PathLike | None = None) -> dict[str, Any]:
        """Stream an S2/S1 GeoTIFF pair into ``output``, compressed with ``compress`` at ``compress_level``
        (:func:`cloudrt.scene.io.output_profile`). ``mask_out``: band 1 the cloud mask (0 clear, 1 cloud,
        255 nodata), band 2 the compositing weight in percent (what was replaced); ``confidence_out``: the
        confidence band, uint8 0-100 (:func:`cloudrt.preprocess.composite.confidence`)."""
        check_compression(compress, compress_level)
        for p in (output, mask_out, confidence_out):
            if p is not None:
                check_output_path(p, overwrite, inputs=(optical, sar))
        with gdal_env(), open_scene(optical, sar, align=align) as src:
            return self.predict_source(src, output, mask_out=mask_out, composite=composite,
                                       overwrite=overwrite, progress=progress, compress=compress,
                                       compress_level=compress_level, confidence_out=confidence_out)

    def predict_source(self, src: RasterSource, output: str | os.PathLike | None, *,
                       mask_out: str | os.PathLike | None = None, composite: bool = True,
                       overwrite: bool = False, progress: Progress | None = None, compress: str = DEFAULT_COMPRESS,
                       compress_level: int | None = None,
                       confidence_out: str | os.PathLike | None = None) -> dict[str, Any]:
        """Like :meth:`predict_file` for an already opened and validated :class:`RasterSource`."""
        codec = dict(zip(("compress", "level"), check_compression(compress, compress_level), strict=True))
        ods = src.ods
        dtype = np.dtype(ods.dtypes[0])
        nodata = ods.nodata
        with contextlib.ExitStack() as stack:
            # entered first, left last: bounds the cache for reads and writes (plus one JPEG 2000 tile row of a SAFE)
            stack.enter_context(gdal_env(getattr(src.ods, "cache_bytes", 0)))
            # temporary names first, writers second: the writers are closed (flushed) before either file is
            # renamed into place, and any failure removes both
            tmp = stack.enter_context(atomic_output(output, overwrite)) if output is not None else None
            mtmp = stack.enter_context(atomic_output(mask_out, overwrite)) if mask_out is not None else None
            ctmp = (stack.enter_context(atomic_output(confidence_out, overwrite))
                    if confidence_out is not None else None)
            dst = mdst = cdst = None
            if tmp is not None:
                dst = stack.enter_context(open_writer(tmp, output_profile(ods, len(S2_BANDS), dtype.name, nodata,
                                                                        **codec)))
                for i, d in enumerate(band_descriptions(ods, S2_BANDS), 1):
                    dst.set_band_description(i, d)
                tags = dict(ods.tags())
                tags.update(cloudrt_version=__version__, cloudrt_backend=self.backend_name,
                            cloudrt_model=str(getattr(self.backend, "path", "module")),
                            cloudrt_composite=str(composite), cloudrt_mask_method=self.mask_method)
                dst.update_tags(**tags)
            if mtmp is not None:
                mdst = stack.enter_context(open_writer(mtmp, output_profile(ods, 2, "uint8", 255, **codec)))
                mdst.set_band_description(1, f"cloud mask ({self.mask_method}): 0 clear, 1 cloud, 255 nodata")
                mdst.set_band_description(2, "compositing weight, percent of the output taken from the model "
                                             "(0 = input kept), 255 nodata")
            if ctmp is not None:
                cdst = stack.enter_context(open_writer(ctmp, output_profile(ods, 1, "uint8", 255, **codec)))
                cdst.set_band_description(1, "confidence 0-100: 100 observed, 0 reconstructed with no optical "
                                             "evidence left, 255 nodata")
            sink = RasterSink(dst, mdst, dtype, nodata, conf_dst=cdst)
            stats = self._run(src, sink, composite=composite, want_mask=mdst is not None or cdst is not None,
                              progress=progress)
            # leaving the stack closes the writers, then renames the temporary files into place
        return stats

    # -- core ----------------------------------------------------------------------------------------
    def _run(self, src: Any, sink: Any, *, composite: bool, want_mask: bool,
             progress: Progress | None) -> dict[str, Any]:
        return run_scene(src, self.backend.run, sink, tile=self.tile, overlap=self.overlap, batch=self.batch,
                         composite=composite, mask_method=self.mask_method,
                         want_mask=want_mask, panel=self.panel, progress=progress, threaded=self.threaded,
                         read_ahead=self.read_ahead)
