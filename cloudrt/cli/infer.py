"""``cloudrt infer``: remove clouds from S2 GeoTIFFs (one pair, or a folder of pairs)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from cloudrt._deps import has_module
from cloudrt.cli.common import progress, require_extra, terminate_as_interrupt
from cloudrt.cli.infer_jobs import PairSettings, is_done, process_pair
from cloudrt.cli.infer_pairs import PRODUCT_RULE, find_pairs
from cloudrt.devices import parse_device
from cloudrt.distributed import Job
from cloudrt.errors import CloudrtError, InputError
from cloudrt.export import get_or_build_engine
from cloudrt.runtime import Runtime
from cloudrt.runtime.backends import ENGINE_SUFFIXES, default_model
from cloudrt.scene.io import check_compression, check_output_path


def register(app: typer.Typer) -> None:
    """Add the ``infer`` command to ``app``."""

    @app.command("infer")
    def infer_cmd(
        optical: Path | None = typer.Option(None, "--optical", help="Sentinel-2 L1C: GeoTIFF of 13 bands (DN), a "
                                            ".SAFE folder, its .zip or MTD_MSIL1C.xml, or a STAC Item (.json).",
                                            show_default=False),
        sar: Path | None = typer.Option(None, "--sar", help="Sentinel-1 GeoTIFF, 2 bands VV, VH (sigma0; dB or "
                                        "linear, see --sar-units).", show_default=False),
        no_sar: bool = typer.Option(False, "--no-sar", help="No Sentinel-1 for this scene: reconstruct from the "
                                    "optical evidence alone (the model was trained with SAR dropout; weaker under "
                                    "thick cloud)."),
        output: Path | None = typer.Option(None, "-o", "--output", help="Output GeoTIFF (13 bands, like the input).",
                                           show_default=False),
        model: Path | None = typer.Option(None, "--model", help="ONNX model, TensorRT engine or .safetensors "
                                          "checkpoint. Default: the shipped export/carf-demo.onnx.",
                                          show_default=False),
        backend: str = typer.Option("auto", "--backend", help="auto, tensorrt, onnxruntime, cuda, cpu, torch."),
        device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:N.", show_default=False),
        tile: int | None = typer.Option(None, "--tile", help="Tile size (default: the model's).",
                                        show_default=False),
        overlap: int | None = typer.Option(None, "--overlap", show_default=False,
                                           help="Tile overlap in pixels (default: about tile/8, a multiple of "
                                                "the model's size divisor: 32 for tile 256)."),
        batch: int | None = typer.Option(None, "--batch", help="Tiles per backend call (default: backend's).",
                                         show_default=False),
        mask_out: Path | None = typer.Option(None, "--mask-out", help="Also write the cloud mask (band 1, uint8: 0 "
                                             "clear, 1 cloud, 255 nodata) and the compositing weight (band 2, "
                                             "percent of the output taken from the model); a folder in batch mode.",
                                             show_default=False),
        confidence_out: Path | None = typer.Option(None, "--confidence-out", help="Also write the confidence band "
                                                   "(uint8 0-100: 100 observed, 0 reconstructed with no optical "
                                                   "evidence left; docs/method.md); a folder in batch mode.",
                                                   show_default=False),
        mask_method: str = typer.Option("paper", "--mask-method", help="Cloud mask: paper or sen12mscr."),
        no_composite: bool = typer.Option(False, "--no-composite", help="Return the raw model output everywhere "
                                          "(default: invented texture under thick cloud smoothed, soft "
                                          "compositing, clear pixels kept exactly)."),
        align: bool = typer.Option(False, "--align", help="Reproject S1 onto the S2 grid when they differ."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
        input_dir: Path | None = typer.Option(None, "--input-dir", help="Batch mode: folder with s2_cloudy/ (or "
                                              "s2/) and s1/ subfolders, or NAME_S2.tif + NAME_S1.tif files. "
                                              + PRODUCT_RULE,
                                              show_default=False),
        output_dir: Path | None = typer.Option(None, "--output-dir", help="Batch mode: output folder.",
                                               show_default=False),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or summary."),
        sar_units: str = typer.Option("auto", "--sar-units", help="auto, db or linear (power; converted with "
                                      "10*log10). auto decides from the values and says so."),
        optical_scale: str = typer.Option("dn", "--optical-scale", help="dn (reflectance x 10000, the model's "
                                          "convention) or reflectance (0..1, multiplied by 10000)."),
        cog: bool = typer.Option(False, "--cog", help="Write Cloud-Optimized GeoTIFFs (tiles, overviews)."),
        compress: str = typer.Option("deflate", "--compress", help="Output codec: deflate (every reader), zstd "
                                     "(~1.5x faster writes, GDAL >= 2.3 with zstd), lzw or none."),
        compress_level: int | None = typer.Option(None, "--compress-level", show_default=False,
                                                  help="deflate 1-9 or zstd 1-22 (default 1: fastest; higher "
                                                       "levels cost 3-5x the time for 2-6 % smaller files)."),
        stac: bool = typer.Option(False, "--stac", help="Write a STAC Item beside each output (OUT.json)."),
        ray: bool = typer.Option(False, "--ray", help="Batch mode: one Ray task per pair (pip install "
                                 "'cloudrt[ray]')."),
        ray_address: str | None = typer.Option(None, "--ray-address", help="Ray cluster to join (e.g. "
                                               "ray://head:10001 or auto); default: a local Ray instance.",
                                               show_default=False),
        gpus_per_task: float = typer.Option(0.0, "--gpus-per-task", help="With --ray: GPUs (or a fraction) "
                                            "reserved per task; 0 runs on CPUs."),
    ) -> None:
        """Remove clouds from Sentinel-2 with Sentinel-1: tiled, streamed, georeferenced output."""
        if backend.lower() == "torch":  # the missing extra first, before asking for a checkpoint
            require_extra("torch", "--backend torch")
        batch_mode = input_dir is not None or output_dir is not None
        if batch_mode:
            if input_dir is None or output_dir is None or optical or sar or output:
                raise InputError("batch mode takes --input-dir and --output-dir (and not --optical/--sar/-o); "
                                 "pass both folders.")
        if no_sar and (sar is not None or batch_mode):
            raise InputError("--no-sar is for a single scene without --sar; drop --sar (or --no-sar).")
        if not batch_mode and (optical is None or (sar is None and not no_sar) or output is None):
            missing = [n for n, v in (("--optical", optical), ("--sar", sar or no_sar), ("-o", output)) if not v]
            raise InputError(f"missing {', '.join(missing)}; pass --optical S2.tif --sar S1.tif -o OUT.tif "
                             "(--no-sar instead of --sar for a scene without Sentinel-1; or --input-dir DIR "
                             "--output-dir DIR).")
        if (ray or ray_address or gpus_per_task) and not batch_mode:
            raise InputError("--ray, --ray-address and --gpus-per-task run a batch; pass --input-dir and "
                             "--output-dir.")
        if stac:
            require_extra("pystac", "--stac")
            require_extra("jsonschema", "--stac (validating the Item)")
        opts = dict(model=model, backend=backend, device=device, tile=tile, overlap=overlap, batch=batch,
                    mask_method=mask_method)
        compress, compress_level = check_compression(compress, compress_level)
        settings = PairSettings(align=align, sar_units=sar_units, optical_scale=optical_scale,
                                composite=not no_composite, overwrite=overwrite, cog=cog, stac=stac,
                                compress=compress, compress_level=compress_level)
        with terminate_as_interrupt():
            if batch_mode and (ray or ray_address):
                _run_ray(input_dir, output_dir, mask_out, opts, settings, ray_address, gpus_per_task, quiet,
                         conf_dir=confidence_out)
            elif batch_mode:
                _run_batch(input_dir, output_dir, mask_out, opts, settings, quiet, conf_dir=confidence_out)
            else:
                _run_one(optical, sar, output, mask_out, opts, settings, quiet, confidence_out=confidence_out)


def _make_runtime(opts: dict) -> Runtime:
    """The runtime for ``opts``; ``--backend tensorrt`` on an ONNX model first builds (once, cached) or finds
    its TensorRT engine through the exporter (the runtime itself only loads engines)."""
    if opts["backend"].lower() in ("tensorrt", "trt") and has_module("tensorrt") and \
            parse_device(opts["device"]) != "cpu":
        model = opts["model"] if opts["model"] is not None else default_model()
        if model.suffix.lower() not in ENGINE_SUFFIXES:
            require_extra("onnx", "building a TensorRT engine for --backend tensorrt")
            opts = {**opts, "model": get_or_build_engine(model, half=True, device=opts["device"])}
    return Runtime(**opts)


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        typer.echo(msg, err=True)


class _LazyRuntime:
    """The runtime, built on first use (after the first pair's inputs passed their checks), then kept."""

    def __init__(self, opts: dict, quiet: bool) -> None:
        self.opts, self.quiet, self.rt = opts, quiet, None

    def __call__(self) -> Runtime:
        if self.rt is None:
            self.rt = _make_runtime(self.opts)
            _say(f"cloudrt: {self.rt.describe()}", self.quiet)
        return self.rt


def _run_one(optical: Path, sar: Path, output: Path, mask_out: Path | None, opts: dict, settings: PairSettings,
             quiet: bool, confidence_out: Path | None = None) -> None:
    for p in (output, mask_out, confidence_out):
        if p is not None:
            check_output_path(p, settings.overwrite, inputs=tuple(i for i in (optical, sar) if i is not None),
                              create_parent=True)
    if mask_out is not None and Path(mask_out).resolve() == Path(output).resolve():
        raise InputError("--mask-out is the same file as -o; choose another mask path.")
    outs = [Path(p).resolve() for p in (output, mask_out, confidence_out) if p is not None]
    if len(set(outs)) < len(outs):
        raise InputError("-o, --mask-out and --confidence-out must be different files.")
    job = Job(Path(output).name, Path(output), {"optical": optical, "sar": sar, "mask": mask_out,
                                                 "confidence": confidence_out})
    stats = process_pair(settings, _LazyRuntime(opts, quiet), job, say=lambda m: _say(m, quiet),
                         progress_for=lambda rows: progress(quiet or not sys.stderr.isatty(), "rows", rows))
    _say(f"wrote {output} ({stats['width']}x{stats['height']}, cloud {100 * stats['cloud_fraction']:.1f} %, "
         f"{stats['tiles']} tiles, {stats['seconds']:.1f} s)", quiet)


def _batch_jobs(input_dir: Path, output_dir: Path, mask_dir: Path | None, settings: PairSettings,
                quiet: bool, conf_dir: Path | None = None) -> tuple[list[Job], int]:
    """Pair the inputs, create the output folders, report unpaired files and finished outputs; return the
    jobs still to do (absolute paths, so Ray workers in other folders or machines see the same files) and the
    number of pairs. With ``--stac`` an output without its Item is redone (:func:`is_done`)."""
    pairs, unpaired = find_pairs(input_dir)
    if not pairs:
        raise InputError(f"no S2/S1 pairs found in {input_dir}; use s2_cloudy/ (or s2/) and s1/ subfolders with "
                         "the same file names, or NAME_S2.tif + NAME_S1.tif; " + PRODUCT_RULE)
    for d in (output_dir, mask_dir, conf_dir):
        if d is not None:
            if d.exists() and not d.is_dir():
                raise InputError(f"{d} exists and is not a folder; pass a folder for batch outputs.")
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise InputError(f"cannot create output folder {d} ({e.strerror}); choose a writable one.") from e
    jobs = [Job(n, (output_dir / n).resolve(), {"optical": o.resolve(), "sar": s.resolve(),
                                                 "mask": (mask_dir / n).resolve() if mask_dir is not None else None,
                                                 "confidence": (conf_dir / n).resolve() if conf_dir else None})
            for n, o, s in pairs]
    todo = [j for j in jobs if settings.overwrite or not is_done(settings, j)]
    redo = [j for j in todo if not settings.overwrite and j.output.exists()]  # with --stac: no Item yet
    todo = [Job(j.name, j.output, {**j.args, "redo": True}) if j in redo else j for j in todo]
    for u in unpaired:
        _say(f"warning: unpaired {u}; skipped", quiet)
    if len(todo) < len(jobs):
        _say(f"cloudrt: {len(jobs) - len(todo)} of {len(jobs)} outputs already exist; skipping them (--overwrite "
             "redoes them)", quiet)
    if redo:
        _say(f"cloudrt: {len(redo)} outputs have no STAC Item (an interrupted run); redoing them", quiet)
    return todo, len(pairs)


def _finish_batch(done: int, failures: int, total: int, output_dir: Path, quiet: bool) -> None:
    """The summary line; exit code 2 with the count when any pair failed."""
    _say(f"cloudrt: wrote {done}, skipped {total - done - failures}, failed {failures} of {total} pairs into "
         f"{output_dir}", quiet)
    if failures:
        raise CloudrtError(f"{failures} of {total} pairs failed (see the lines above); fix or remove "
                           "them and rerun: finished outputs are skipped.")


def _run_batch(input_dir: Path, output_dir: Path, mask_dir: Path | None, opts: dict, settings: PairSettings,
               quiet: bool, conf_dir: Path | None = None) -> None:
    todo, total = _batch_jobs(input_dir, output_dir, mask_dir, settings, quiet, conf_dir)
    failures = 0
    get_runtime = _LazyRuntime(opts, quiet)
    with progress(quiet or not sys.stderr.isatty(), "scenes", len(todo)) as cb:
        for i, job in enumerate(todo):
            try:
                process_pair(settings, get_runtime, job)
            except InputError as e:  # a bad pair (also a truncated file): report it and go on
                failures += 1
                typer.echo(f"error: {job.name}: {e}", err=True)
            if cb is not None:
                cb(i + 1, len(todo))
    _finish_batch(len(todo) - failures, failures, total, output_dir, quiet)


def _run_ray(input_dir: Path, output_dir: Path, mask_dir: Path | None, opts: dict, settings: PairSettings,
             address: str | None, gpus_per_task: float, quiet: bool, conf_dir: Path | None = None) -> None:
    """The batch as Ray tasks (:mod:`cloudrt.distributed`): same pairs, same per-pair code, same summary."""
    import functools

    from cloudrt.cli.infer_jobs import ray_process
    from cloudrt.distributed import import_ray, run_jobs

    import_ray()  # the missing extra before any work
    todo, total = _batch_jobs(input_dir, output_dir, mask_dir, settings, quiet, conf_dir)
    if opts["model"] is not None:
        opts = {**opts, "model": Path(opts["model"]).resolve()}
    where = f"Ray cluster {address}" if address else "a local Ray instance"
    _say(f"cloudrt: {len(todo)} pairs as Ray tasks on {where} ({gpus_per_task:g} GPU per task)", quiet)

    def report(res) -> None:
        if not res.ok:
            typer.echo(f"error: {res.name}: {res.message}", err=True)

    rep = run_jobs(todo, functools.partial(ray_process, settings), functools.partial(_make_runtime, opts),
                   overwrite=True, address=address, gpus_per_task=gpus_per_task, on_result=report)
    _finish_batch(len(rep.done), len(rep.failed), total, output_dir, quiet)
