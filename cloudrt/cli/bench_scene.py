"""``cloudrt bench-scene``: the whole-scene pipeline against its floors (I/O, the model alone), one run."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cloudrt.scene.io import atomic_output, check_compression


def register(app: typer.Typer) -> None:
    @app.command("bench-scene")
    def bench_scene_cmd(
        model: Path = typer.Option(None, "--model", "-m", show_default=False,
                                   help="ONNX model for the real-model part (default: the shipped one)."),
        size: int = typer.Option(4096, help="Scene side for the pipeline-vs-floor and scaling parts."),
        model_size: int = typer.Option(2048, help="Scene side for the real-model part."),
        compress: str = typer.Option("deflate", help="Output codec for every run (and the floor)."),
        rounds: int = typer.Option(2, help="Interleaved rounds (medians)."),
        threads: int = typer.Option(None, show_default=False,
                                    help="ONNX Runtime intra-op threads (default: the usable CPUs)."),
        parts: str = typer.Option("pipeline,model,scaling", help="Which parts to run, comma-separated."),
        out: Path = typer.Option(None, "--out", "-o", show_default=False, help="Also write the JSON here."),
    ) -> None:
        """Pipeline / I/O floor (identity model), real model / model alone, pipeline scaling 1 -> 2 CPUs."""
        from cloudrt.bench.scene import format_report, run_scene_bench
        from cloudrt.cli.common import require_extra
        from cloudrt.errors import InputError

        compress, _ = check_compression(compress)
        chosen = tuple(p.strip() for p in parts.split(",") if p.strip())
        bad = set(chosen) - {"pipeline", "model", "scaling"}
        if bad or not chosen:
            raise InputError(f"unknown part(s) {', '.join(sorted(bad)) or '(none)'}; use pipeline, model, scaling.")
        if size < 256 or model_size < 256 or rounds < 1:
            raise InputError("--size and --model-size must be >= 256 and --rounds >= 1.")
        require_extra("onnx", "the identity model of cloudrt bench-scene")
        res = run_scene_bench(model, size=size, model_size=model_size, compress=compress, rounds=rounds,
                              threads=threads, parts=chosen, log=lambda m: typer.echo(m, err=True))
        if out is not None:
            with atomic_output(out, overwrite=True) as tmp:
                Path(tmp).write_text(json.dumps(res, indent=2, default=str) + "\n")
        typer.echo(format_report(res))
