"""The ``cloudrt`` command line (typer). Each verb lives in ``cloudrt/commands/<verb>.py``.

User errors (:class:`cloudrt.errors.CloudrtError`) print one line and exit with code 2; pass
``--debug`` for the traceback.
"""

from __future__ import annotations

import importlib
import sys

import typer

from cloudrt._version import __version__
from cloudrt.errors import CloudrtError

app = typer.Typer(
    name="cloudrt",
    help="Cloud removal for Sentinel-2 with Sentinel-1 SAR: train, evaluate, export, infer, benchmark.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_COMMAND_MODULES = ("train", "evaluate", "export", "infer", "mask", "bench")
_DEBUG = {"on": False}


def _version_cb(value: bool) -> None:
    if value:
        typer.echo(f"cloudrt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version_cb, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    _DEBUG["on"] = debug


for _name in _COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"cloudrt.commands.{_name}")
    except ModuleNotFoundError as _e:  # a command module not written yet
        if _e.name != f"cloudrt.commands.{_name}":
            raise
        continue
    _mod.register(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turn CloudrtError into one line on stderr and exit 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    _DEBUG["on"] = "--debug" in args
    try:
        rv = app(args=args, standalone_mode=False)
    except CloudrtError as e:
        if _DEBUG["on"]:
            raise
        typer.echo(f"error: {e}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except typer.Exit as e:
        return int(e.exit_code or 0)
    except SystemExit as e:
        return int(e.code or 0)
    except Exception as e:  # click usage errors and friends
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return 2
        if isinstance(e, click.exceptions.Abort):
            typer.echo("aborted", err=True)
            return 1
        raise
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
