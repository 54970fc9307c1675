"""``cloudrt export``: checkpoint -> ONNX (FP32 / mixed-precision FP16) -> TensorRT engine."""

from __future__ import annotations

from pathlib import Path

import typer

from cloudrt.errors import InputError

FORMATS = ("onnx", "engine")


def register(app: typer.Typer) -> None:
    """Add the ``export`` command to ``app``."""

    @app.command("export")
    def export_cmd(
        weights: Path | None = typer.Argument(
            None, help="Checkpoint NAME.safetensors (with NAME.json); for --format engine also an .onnx file. "
                       "Default: the shipped model (weights/carf-demo).", show_default=False),
        fmt: str = typer.Option("onnx", "--format", "-f", help="onnx | engine (TensorRT; needs a GPU)."),
        half: bool = typer.Option(False, "--half", help="FP16: mixed-precision graph (FP32 I/O) / FP16 engine."),
        batch: str | None = typer.Option(
            None, "--batch", help="N (static) or MIN:OPT:MAX. ONNX default: dynamic batch; engine "
                                  "default: 1:4:8.", show_default=False),
        tile: int = typer.Option(256, "--tile", help="Static tile size T (a multiple of the model's divisor)."),
        opset: int = typer.Option(17, "--opset", help="ONNX opset (TensorRT 10.0 parses 9-20)."),
        workspace: float = typer.Option(4.0, "--workspace", help="TensorRT builder workspace limit, GiB."),
        device: str | None = typer.Option(
            None, "--device", help="Engine: GPU index (0, cuda:1). ONNX: torch device to trace on (cpu).",
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
        fmt_l = fmt.lower()
        if fmt_l not in FORMATS:
            raise InputError(f"--format {fmt!r} is not supported; use --format onnx or --format engine.")
        if fmt_l == "engine":
            _export_engine(weights, half, batch, tile, opset, workspace, device, output, timing_cache,
                           not no_simplify)
        else:
            _export_onnx(weights, half, batch, tile, opset, device, output, not no_simplify)


def _default_name(weights: Path | None) -> str:
    if weights is None:
        from cloudrt.paths import DEFAULT_NAME

        return DEFAULT_NAME
    return Path(weights).with_suffix("").name


def _export_onnx(weights: Path | None, half: bool, batch: str | None, tile: int, opset: int,
                 device: str | None, output: Path | None, simplify: bool) -> None:
    from cloudrt.export.engine_cache import parse_batch

    if batch is not None:
        parse_batch(batch)  # fail fast, before loading torch
    if weights is not None and Path(weights).suffix == ".onnx":
        raise InputError(f"{weights} is already ONNX; pass a .safetensors checkpoint, or use --format engine "
                         "to build a TensorRT engine from it.")
    if output is None:
        output = Path(f"{_default_name(weights)}{'-fp16' if half else ''}.onnx")
    from cloudrt.export.onnx_export import export_onnx

    export_onnx(weights, output, tile=tile, batch=batch, opset=opset, half=half, simplify=simplify,
                device=device, verbose=True)


def _export_engine(weights: Path | None, half: bool, batch: str | None, tile: int, opset: int,
                   workspace: float, device: str | None, output: Path | None, timing_cache: Path | None,
                   simplify: bool) -> None:
    from cloudrt.export.engine_cache import DEFAULT_ENGINE_BATCH, parse_batch
    from cloudrt.export.tensorrt import build_engine, gpu_info, parse_device, require_tensorrt

    lo, opt, hi = parse_batch(batch, default=DEFAULT_ENGINE_BATCH)
    index = parse_device(device)
    require_tensorrt()  # one line + exit 2 when TensorRT is missing ...
    gpu_info(index)  # ... or when there is no GPU; before any export work
    if weights is not None and Path(weights).suffix == ".onnx":
        onnx_path = Path(weights)
    else:
        from cloudrt.export.onnx_export import export_onnx

        onnx_path = export_onnx(weights, None, tile=tile, opset=opset, half=half, simplify=simplify,
                                batch=f"{lo}:{opt}:{hi}", verbose=True)
    build_engine(onnx_path, output, half=half, batch=f"{lo}:{opt}:{hi}", workspace_gb=workspace,
                 device=index, timing_cache=timing_cache, verbose=True)
