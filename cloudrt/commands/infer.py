"""``cloudrt infer``: remove clouds from S2 GeoTIFFs (one pair, or a folder of pairs)."""

from __future__ import annotations

import contextlib
import re
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import typer

from cloudrt.errors import CloudrtError, InputError

OPTICAL_DIRS = ("s2_cloudy", "S2_cloudy", "s2", "S2", "optical")
SAR_DIRS = ("s1", "S1", "sar", "SAR")
RASTER_SUFFIXES = (".tif", ".tiff", ".TIF", ".TIFF")
_TOKEN = re.compile(r"(?i)(?:(?<=^)|(?<=[_\-.]))(s2_?cloudy|s2|s1)(?=$|[_\-.])")


class Interrupted(CloudrtError):
    """Ctrl-C / SIGTERM during a run: temporary outputs were removed (exit code 130)."""

    exit_code = 130


def register(app: typer.Typer) -> None:
    """Add the ``infer`` command to ``app``."""

    @app.command("infer")
    def infer_cmd(
        optical: Path | None = typer.Option(None, "--optical", help="Sentinel-2 L1C GeoTIFF, 13 bands (DN).",
                                            show_default=False),
        sar: Path | None = typer.Option(None, "--sar", help="Sentinel-1 GeoTIFF, 2 bands VV, VH (dB).",
                                        show_default=False),
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
    ) -> None:
        """Remove clouds from Sentinel-2 with Sentinel-1: tiled, streamed, georeferenced output."""
        batch_mode = input_dir is not None or output_dir is not None
        if batch_mode:
            if input_dir is None or output_dir is None or optical or sar or output:
                raise InputError("batch mode takes --input-dir and --output-dir (and not --optical/--sar/-o); "
                                 "pass both folders.")
        elif optical is None or sar is None or output is None:
            missing = [n for n, v in (("--optical", optical), ("--sar", sar), ("-o", output)) if v is None]
            raise InputError(f"missing {', '.join(missing)}; pass --optical S2.tif --sar S1.tif -o OUT.tif "
                             "(or --input-dir DIR --output-dir DIR).")
        opts = dict(model=model, backend=backend, device=device, tile=tile, overlap=overlap, batch=batch,
                    mask_method=mask_method)
        with _terminate_as_interrupt():
            if batch_mode:
                _run_batch(input_dir, output_dir, mask_out, opts, not no_composite, align, overwrite, quiet)
            else:
                _run_one(optical, sar, output, mask_out, opts, not no_composite, align, overwrite, quiet)


def _make_runtime(opts: dict):
    from cloudrt.runtime import Runtime

    return Runtime(**opts)


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        typer.echo(msg, err=True)


def _run_one(optical: Path, sar: Path, output: Path, mask_out: Path | None, opts: dict, composite: bool,
             align: bool, overwrite: bool, quiet: bool) -> None:
    from cloudrt.io import check_output_path
    from cloudrt.runtime import open_scene

    for p in (output, mask_out):
        if p is not None:
            check_output_path(p, overwrite, inputs=(optical, sar), create_parent=True)
    if mask_out is not None and Path(mask_out).resolve() == Path(output).resolve():
        raise InputError("--mask-out is the same file as -o; choose another mask path.")
    with open_scene(optical, sar, align=align) as src:  # all input checks before the model loads
        rt = _make_runtime(opts)
        _say(f"cloudrt: {rt.describe()}", quiet)
        with _progress(quiet or not sys.stderr.isatty(), "rows", src.height) as cb:
            stats = rt.predict_source(src, output, mask_out=mask_out, composite=composite,
                                      overwrite=overwrite, progress=cb)
    _say(f"wrote {output} ({src.width}x{src.height}, cloud {100 * stats['cloud_fraction']:.1f} %, "
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


def _run_batch(input_dir: Path, output_dir: Path, mask_dir: Path | None, opts: dict, composite: bool,
               align: bool, overwrite: bool, quiet: bool) -> None:
    from cloudrt.runtime import open_scene

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
    todo = [(n, o, s) for n, o, s in pairs if overwrite or not (output_dir / n).exists()]
    skipped = len(pairs) - len(todo)
    for u in unpaired:
        _say(f"warning: unpaired {u}; skipped", quiet)
    if skipped:
        _say(f"cloudrt: {skipped} of {len(pairs)} outputs already exist; skipping them (--overwrite redoes them)",
             quiet)
    failures: list[str] = []
    rt = None
    with _progress(quiet or not sys.stderr.isatty(), "scenes", len(todo)) as cb:
        for i, (name, o, s) in enumerate(todo):
            out = output_dir / name
            mask_out = mask_dir / name if mask_dir is not None else None
            try:
                with open_scene(o, s, align=align) as src:
                    if rt is None:
                        rt = _make_runtime(opts)
                        _say(f"cloudrt: {rt.describe()}", quiet)
                    rt.predict_source(src, out, mask_out=mask_out, composite=composite, overwrite=overwrite)
            except InputError as e:  # a bad pair: report it and go on; model errors stop the batch
                failures.append(name)
                typer.echo(f"error: {name}: {e}", err=True)
            if cb is not None:
                cb(i + 1, len(todo))
    done = len(todo) - len(failures)
    _say(f"cloudrt: wrote {done}, skipped {skipped}, failed {len(failures)} of {len(pairs)} pairs into {output_dir}",
         quiet)
    if failures:
        raise CloudrtError(f"{len(failures)} of {len(pairs)} pairs failed (see the lines above); fix or remove "
                           "them and rerun: finished outputs are skipped.")


@contextlib.contextmanager
def _progress(disabled: bool, unit: str, total: int) -> Iterator:
    """A rich progress bar on stderr; yields ``callback(done, total)`` (or None when disabled)."""
    if disabled or total <= 0:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as prog:
        task = prog.add_task(unit, total=total)
        yield lambda done, _total: prog.update(task, completed=done)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """While the command runs, turn SIGTERM into KeyboardInterrupt (so temporary outputs are removed on the
    way out) and report an interruption as :class:`Interrupted` (one line, exit code 130)."""
    previous = None
    if threading.current_thread() is threading.main_thread():

        def handler(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        try:
            previous = signal.signal(signal.SIGTERM, handler)
        except (ValueError, OSError):  # not allowed here (embedded interpreter)
            previous = None
    try:
        yield
    except KeyboardInterrupt as e:
        raise Interrupted("interrupted; the unfinished output was removed (finished ones are kept). Rerun "
                          "the same command to continue.") from e
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
