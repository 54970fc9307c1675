"""``cloudrt infer``: remove clouds from S2 GeoTIFFs (one pair, or a folder of pairs)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import typer

from cloudrt._deps import has_module
from cloudrt.cli.common import progress, require_extra, terminate_as_interrupt
from cloudrt.cli.infer_jobs import PairSettings, process_pair
from cloudrt.devices import parse_device
from cloudrt.distributed import Job
from cloudrt.errors import CloudrtError, InputError
from cloudrt.export import get_or_build_engine
from cloudrt.runtime import Runtime
from cloudrt.runtime.backends import ENGINE_SUFFIXES, default_model
from cloudrt.scene.io import check_compression, check_output_path

OPTICAL_DIRS = ("s2_cloudy", "S2_cloudy", "s2", "S2", "optical")
SAR_DIRS = ("s1", "S1", "sar", "SAR")
RASTER_SUFFIXES = (".tif", ".tiff", ".TIF", ".TIFF")
_TOKEN = re.compile(r"(?i)(?:(?<=^)|(?<=[_\-.]))(s2_?cloudy|s2|s1)(?=$|[_\-.])")


def register(app: typer.Typer) -> None:
    """Add the ``infer`` command to ``app``."""

    @app.command("infer")
    def infer_cmd(
        optical: Path | None = typer.Option(None, "--optical", help="Sentinel-2 L1C: GeoTIFF of 13 bands (DN), a "
                                            ".SAFE folder, its .zip or MTD_MSIL1C.xml, or a STAC Item (.json).",
                                            show_default=False),
        sar: Path | None = typer.Option(None, "--sar", help="Sentinel-1 GeoTIFF, 2 bands VV, VH (sigma0; dB or "
                                        "linear, see --sar-units).", show_default=False),
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
        mask_out: Path | None = typer.Option(None, "--mask-out", help="Also write the cloud mask (uint8: 0 clear, "
                                             "1 cloud, 255 nodata); a folder in batch mode.", show_default=False),
        mask_method: str = typer.Option("paper", "--mask-method", help="Cloud mask: paper or sen12mscr."),
        no_composite: bool = typer.Option(False, "--no-composite", help="Return the raw model output everywhere "
                                          "(default: keep clear pixels, feathered at cloud borders)."),
        align: bool = typer.Option(False, "--align", help="Reproject S1 onto the S2 grid when they differ."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
        input_dir: Path | None = typer.Option(None, "--input-dir", help="Batch mode: folder with s2_cloudy/ (or "
                                              "s2/) and s1/ subfolders, or NAME_S2.tif + NAME_S1.tif files.",
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
        elif optical is None or sar is None or output is None:
            missing = [n for n, v in (("--optical", optical), ("--sar", sar), ("-o", output)) if v is None]
            raise InputError(f"missing {', '.join(missing)}; pass --optical S2.tif --sar S1.tif -o OUT.tif "
                             "(or --input-dir DIR --output-dir DIR).")
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
                _run_ray(input_dir, output_dir, mask_out, opts, settings, ray_address, gpus_per_task, quiet)
            elif batch_mode:
                _run_batch(input_dir, output_dir, mask_out, opts, settings, quiet)
            else:
                _run_one(optical, sar, output, mask_out, opts, settings, quiet)


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
             quiet: bool) -> None:
    for p in (output, mask_out):
        if p is not None:
            check_output_path(p, settings.overwrite, inputs=(optical, sar), create_parent=True)
    if mask_out is not None and Path(mask_out).resolve() == Path(output).resolve():
        raise InputError("--mask-out is the same file as -o; choose another mask path.")
    job = Job(Path(output).name, Path(output), {"optical": optical, "sar": sar, "mask": mask_out})
    stats = process_pair(settings, _LazyRuntime(opts, quiet), job, say=lambda m: _say(m, quiet),
                         progress_for=lambda rows: progress(quiet or not sys.stderr.isatty(), "rows", rows))
    _say(f"wrote {output} ({stats['width']}x{stats['height']}, cloud {100 * stats['cloud_fraction']:.1f} %, "
         f"{stats['tiles']} tiles, {stats['seconds']:.1f} s)", quiet)


def find_pairs(input_dir: Path) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Pair S2 and S1 rasters in ``input_dir`` by name -> ([(name, optical, sar)], [unpaired names]).

    Either subfolders (``s2_cloudy/`` or ``s2/`` with ``s1/``, same file names), or one flat folder with
    names that differ only in an ``S2``/``S2_cloudy`` vs ``S1`` token (``T31_S2.tif`` + ``T31_S1.tif``).
    """
    if not input_dir.is_dir():
        raise InputError(f"input folder {input_dir} does not exist; pass an existing --input-dir.")

    def rasters(d: Path) -> list[Path]:
        return sorted(p for p in d.iterdir() if p.is_file() and p.suffix in RASTER_SUFFIXES
                      and not p.name.startswith("."))

    odir = next((input_dir / n for n in OPTICAL_DIRS if (input_dir / n).is_dir()), None)
    sdir = next((input_dir / n for n in SAR_DIRS if (input_dir / n).is_dir()), None)
    pairs: list[tuple[str, Path, Path]] = []
    unpaired: list[str] = []
    if odir is not None and sdir is not None:
        sars = {p.name: p for p in rasters(sdir)}
        for o in rasters(odir):
            if o.name in sars:
                pairs.append((o.name, o, sars.pop(o.name)))
            else:
                unpaired.append(f"{o} (no {sdir / o.name})")
        unpaired += [f"{s} (no optical {odir / n})" for n, s in sars.items()]
        return pairs, unpaired
    opticals: dict[str, Path] = {}
    sars2: dict[str, Path] = {}
    for p in rasters(input_dir):
        m = _TOKEN.search(p.stem)
        if not m:
            continue
        key = (p.stem[: m.start()] + p.stem[m.end():]).lower()
        (sars2 if m.group(1).lower() == "s1" else opticals)[key] = p
    for key, o in sorted(opticals.items()):
        if key in sars2:
            pairs.append((o.name, o, sars2.pop(key)))
        else:
            unpaired.append(f"{o} (no matching S1 file)")
    unpaired += [f"{s} (no matching S2 file)" for s in sars2.values()]
    return pairs, unpaired


def _batch_jobs(input_dir: Path, output_dir: Path, mask_dir: Path | None, overwrite: bool,
                quiet: bool) -> tuple[list[Job], int]:
    """Pair the inputs, create the output folders, report unpaired files and finished outputs; return the
    jobs still to do (absolute paths, so Ray workers in other folders or machines see the same files) and the
    number of pairs."""
    pairs, unpaired = find_pairs(input_dir)
    if not pairs:
        raise InputError(f"no S2/S1 pairs found in {input_dir}; use s2_cloudy/ (or s2/) and s1/ subfolders with "
                         "the same file names, or NAME_S2.tif + NAME_S1.tif.")
    for d in (output_dir, mask_dir):
        if d is not None:
            if d.exists() and not d.is_dir():
                raise InputError(f"{d} exists and is not a folder; pass a folder for batch outputs.")
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise InputError(f"cannot create output folder {d} ({e.strerror}); choose a writable one.") from e
    jobs = [Job(n, (output_dir / n).resolve(), {"optical": o.resolve(), "sar": s.resolve(),
                                                 "mask": (mask_dir / n).resolve() if mask_dir is not None else None})
            for n, o, s in pairs]
    todo = [j for j in jobs if overwrite or not j.output.exists()]
    for u in unpaired:
        _say(f"warning: unpaired {u}; skipped", quiet)
    if len(todo) < len(jobs):
        _say(f"cloudrt: {len(jobs) - len(todo)} of {len(jobs)} outputs already exist; skipping them (--overwrite "
             "redoes them)", quiet)
    return todo, len(pairs)


def _finish_batch(done: int, failures: int, total: int, output_dir: Path, quiet: bool) -> None:
    """The summary line; exit code 2 with the count when any pair failed."""
    _say(f"cloudrt: wrote {done}, skipped {total - done - failures}, failed {failures} of {total} pairs into "
         f"{output_dir}", quiet)
    if failures:
        raise CloudrtError(f"{failures} of {total} pairs failed (see the lines above); fix or remove "
                           "them and rerun: finished outputs are skipped.")


def _run_batch(input_dir: Path, output_dir: Path, mask_dir: Path | None, opts: dict, settings: PairSettings,
               quiet: bool) -> None:
    todo, total = _batch_jobs(input_dir, output_dir, mask_dir, settings.overwrite, quiet)
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
             address: str | None, gpus_per_task: float, quiet: bool) -> None:
    """The batch as Ray tasks (:mod:`cloudrt.distributed`): same pairs, same per-pair code, same summary."""
    import functools

    from cloudrt.cli.infer_jobs import ray_process
    from cloudrt.distributed import import_ray, run_jobs

    import_ray()  # the missing extra before any work
    todo, total = _batch_jobs(input_dir, output_dir, mask_dir, settings.overwrite, quiet)
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
