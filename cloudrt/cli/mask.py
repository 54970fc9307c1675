"""``cloudrt mask``: the cloud (and shadow) mask of a Sentinel-2 GeoTIFF, streamed by windows."""

from __future__ import annotations

from pathlib import Path

import typer

from cloudrt.cli.common import terminate_as_interrupt
from cloudrt.scene.masking import mask_file


def register(app: typer.Typer) -> None:
    """Add the ``mask`` command to ``app``."""

    @app.command("mask")
    def mask_cmd(
        optical: Path = typer.Option(..., "--optical", help="Sentinel-2 L1C GeoTIFF, 13 bands (DN)."),
        output: Path = typer.Option(..., "-o", "--output", help="Mask GeoTIFF (uint8)."),
        method: str = typer.Option("paper", "--method", help="paper (eqs. 13-16, docs/method.md) or sen12mscr "
                                   "(the dataset tool: closing + mean filter)."),
        shadow: bool = typer.Option(False, "--shadow", help="Also mark cloud shadow (value 2)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No summary line."),
    ) -> None:
        """Write a uint8 mask: 0 clear, 1 cloud, 2 shadow (with --shadow), 255 nodata."""
        with terminate_as_interrupt():
            stats = mask_file(optical, output, method=method, shadow=shadow, overwrite=overwrite)
        if not quiet:
            frac = stats["cloud"] / max(1, stats["valid"])
            extra = f", shadow {100 * stats['shadow'] / max(1, stats['valid']):.1f} %" if shadow else ""
            typer.echo(f"wrote {output} (cloud {100 * frac:.1f} %{extra})", err=True)
