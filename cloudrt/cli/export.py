"""``cloudrt export``: checkpoint -> ONNX (FP32 / mixed-precision FP16) -> TensorRT engine, through
:func:`cloudrt.export.export` (the same options and default outputs as the Python API)."""

from __future__ import annotations

from pathlib import Path

import typer

from cloudrt.cli.common import require_extra
from cloudrt.export import FORMATS, export


def register(app: typer.Typer) -> None:
    """Add the ``export`` command to ``app``."""

    @app.command("export")
    def export_cmd(
        weights: Path | None = typer.Argument(
            None, help="Checkpoint NAME.safetensors (with NAME.json); for --format engine also an .onnx file. "
                       "Default: the shipped model (weights/carf-demo).", show_default=False),
        fmt: str = typer.Option("onnx", "--format", "-f", help=f"{' | '.join(FORMATS)} (engine: TensorRT; needs "
                                                               "a GPU)."),
        half: bool = typer.Option(False, "--half", help="FP16: mixed-precision graph (FP32 I/O) / FP16 engine."),
        batch: str | None = typer.Option(
            None, "--batch", help="N (static) or MIN:OPT:MAX. ONNX default: dynamic batch; engine "
                                  "default: 1:4:8.", show_default=False),
        tile: int = typer.Option(256, "--tile", help="Static tile size T (a multiple of the model's divisor)."),
        opset: int = typer.Option(17, "--opset", help="ONNX opset (TensorRT 10.0 parses 9-20)."),
        workspace: float = typer.Option(4.0, "--workspace", help="TensorRT builder workspace limit, GiB."),
        device: str | None = typer.Option(
            None, "--device", help="Where the export runs: cpu or cuda:N (ONNX default cpu; engines: cuda:0).",
            show_default=False),
        output: Path | None = typer.Option(
            None, "-o", "--output", help="Output file. ONNX default: ./NAME[-fp16].onnx; engine default: "
                                         "the per-device engine cache.", show_default=False),
        timing_cache: Path | None = typer.Option(
            None, "--timing-cache", help="TensorRT timing cache file (default: in the user cache).",
            show_default=False),
        no_simplify: bool = typer.Option(False, "--no-simplify", help="Skip onnxslim simplification."),
    ) -> None:
        """Export the model to ONNX or a TensorRT engine; metadata travels inside every artifact."""
        from_onnx = weights is not None and weights.suffix.lower() == ".onnx"
        if not (fmt.lower() == "engine" and from_onnx):  # the missing extra first, before any other check
            require_extra("torch", "cloudrt export (from a checkpoint)", "export")
        export(weights, fmt, output=output, tile=tile, batch=batch, opset=opset, half=half, workspace=workspace,
               device=device, timing_cache=timing_cache, simplify=not no_simplify, verbose=True)
