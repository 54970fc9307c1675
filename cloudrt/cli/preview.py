"""``cloudrt preview``: a PNG quicklook of input, output, compositing weight and confidence."""

from __future__ import annotations

from pathlib import Path

import typer

from cloudrt.scene.preview import make_preview, write_png


def register(app: typer.Typer) -> None:
    """Add the ``preview`` command to ``app``."""

    @app.command("preview")
    def preview_cmd(
        optical: Path = typer.Option(..., "--optical", help="The Sentinel-2 input (GeoTIFF or product)."),
        png: Path = typer.Option(..., "-o", "--png", help="PNG to write."),
        output: Path | None = typer.Option(None, "--output", help="The cloudrt infer output for this input.",
                                           show_default=False),
        mask: Path | None = typer.Option(None, "--mask", help="The --mask-out file of that run (its weight band); "
                                         "default: the weight computed from the input.", show_default=False),
        reference: Path | None = typer.Option(None, "--reference", help="A clear image of the same ground "
                                              "(e.g. a SEN12MS-CR target), shown after the output.",
                                              show_default=False),
        confidence: Path | None = typer.Option(None, "--confidence", help="The --confidence-out file of that run.",
                                               show_default=False),
        size: int = typer.Option(512, "--size", help="Long side of each panel in pixels."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing PNG."),
    ) -> None:
        """RGB (B4, B3, B2) quicklook: input | output | [reference] (one stretch) | weight | confidence."""
        img = make_preview(optical, output=output, mask=mask, size=size, reference=reference,
                           confidence=confidence)
        write_png(img, png, overwrite=overwrite)
        typer.echo(f"wrote {png} ({img.shape[2]}x{img.shape[1]})", err=True)
