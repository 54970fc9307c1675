"""The ``cloudrt`` command line: the typer app and its one error path in :mod:`.main`, one module per verb."""

from __future__ import annotations

from cloudrt.cli.main import app, main

__all__ = ["app", "main"]
