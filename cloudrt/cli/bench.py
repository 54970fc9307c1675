"""``cloudrt bench``: eager PyTorch vs ONNX Runtime / TensorRT / torch.compile, in one run."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cloudrt.bench import fmt, format_table, run_bench, table_columns, to_json
from cloudrt.scene.io import atomic_output


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench_cmd(
        model: str = typer.Option(None, "--model", "-m",
                                  help="Preset (carf-tiny, carf-small, carf-base; random init), a .safetensors "
                                       "checkpoint, or an .onnx file (ONNX Runtime rows only). Default: the "
                                       "shipped weights, else an untrained carf-small."),
        device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
        tile: int = typer.Option(256, help="Tile size T (inputs are (B, 13, T, T) and (B, 2, T, T))."),
        batch: str = typer.Option("1,4,8", help="Batch sizes, comma-separated."),
        backends: list[str] = typer.Option(
            [], "--backends",
            help="Paths to run (comma-separated or repeated): torch, onnxruntime, tensorrt, fp32, fp16, or a "
                 "backend such as onnxruntime-cpu, torch-compile, onnxruntime-cuda:fp16. Default: all available. "
                 "Eager FP32 always runs (the reference)."),
        rounds: int = typer.Option(5, help="Timed rounds, interleaved across paths; the median is reported."),
        warmup: int = typer.Option(None, help="Untimed calls per path and batch (default 1 on CPU, 3 on GPU)."),
        threads: int = typer.Option(None, help="CPU threads for torch and ONNX Runtime alike (default: torch's)."),
        seed: int = typer.Option(0, help="Seed of the inputs (and of a preset's random init)."),
        as_json: bool = typer.Option(False, "--json", help='Print {"system": ..., "rows": [...]} as JSON.'),
        out: Path = typer.Option(None, "--out", "-o", help="Also write the JSON result to this file."),
    ) -> None:
        """Measure speed and accuracy of every available path against eager PyTorch FP32 on the same inputs."""
        log = (lambda msg: typer.echo(msg, err=True))
        result = run_bench(model, device=device, tile=tile, batches=batch, backends=backends or None,
                           warmup=warmup, rounds=rounds, threads=threads, seed=seed, log=log)
        text = to_json(result)
        if out is not None:
            with atomic_output(out, overwrite=True) as tmp:
                Path(tmp).write_text(text + "\n")
        if as_json:
            typer.echo(text)
        else:
            _print_table(result)


_LABELS = {"ms_per_batch": "ms/batch", "tiles_per_s": "tiles/s", "mpix_per_s": "MPix/s", "gflops": "GFLOP/s",
           "peak_share": "of peak"}


def _print_table(result: dict) -> None:
    """A rich table on a wide enough terminal, the Markdown table otherwise (pipes, files, narrow)."""
    con = Console()
    if not sys.stdout.isatty() or con.width < 100:
        typer.echo(format_table(result))
        _print_summary(result)
        return
    sysinfo = result["system"]
    gpu = f", {sysinfo['gpu']}" if sysinfo.get("gpu") else ""
    table = Table(title=f"cloudrt bench: {sysinfo['device']}{gpu}, tile {sysinfo['tile']}, {sysinfo['threads']} "
                        f"threads, median of {sysinfo['rounds']} rounds")
    cols = [c for c in table_columns(result) if c not in ("device", "tile")]
    for c in cols:
        table.add_column(_LABELS.get(c, c), justify="left" if c in ("backend", "precision") else "right",
                         no_wrap=True)
    for r in result["rows"]:
        table.add_row(*[fmt(r.get(c), c) for c in cols])
    con.print(table)
    for s in sysinfo.get("skipped") or []:
        b = f" batch {s['batch']}" if "batch" in s else ""
        con.print(f"[dim]skipped {s['backend']} {s['precision']}{b}: {escape(s['reason'])}[/dim]", highlight=False)
    _print_summary(result)


def _print_summary(result: dict) -> None:
    s = result["system"]
    fl = s.get("flops_per_tile")
    parts = [f"model: {s['model'].get('source')}"]
    if fl:
        parts.append(f"{fl / 1e9:.2f} GFLOP per {s['tile']}x{s['tile']} tile")
    parts.append(f"elapsed {s.get('elapsed_s')} s")
    typer.echo("; ".join(parts))
