"""The ``cloudrt`` typer app and its one error path. Each verb lives in ``cloudrt/cli/<verb>.py``.

Every way a command can fail ends here (:func:`main`): a :class:`cloudrt.errors.CloudrtError` (bad input,
missing model, missing extra) and every usage mistake (unknown verb or option, bad value, missing argument)
print one line on stderr and exit with code 2; pass ``--debug`` for the traceback of a CloudrtError.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from cloudrt._deps import EXTRAS, missing_extra_message
from cloudrt._version import __version__
from cloudrt.cli import bench, bench_scene, evaluate, export, infer, mask, preview, train
from cloudrt.errors import CloudrtError

app = typer.Typer(
    name="cloudrt",
    help="Cloud removal for Sentinel-2 with Sentinel-1 SAR: train, evaluate, export, infer, benchmark.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
USAGE_EXIT = 2


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
    """Options before the verb apply to every command."""


for _verb in (train, evaluate, export, infer, mask, preview, bench, bench_scene):
    _verb.register(app)


def _usage_line(e: Any) -> str:
    """One line for a click/typer usage error (either click, or typer's bundled copy): message + help hint."""
    msg = " ".join(str(e.format_message()).split())
    ctx = getattr(e, "ctx", None)
    path = getattr(ctx, "command_path", None) or "cloudrt"
    return f"error: {msg} (see `{path} --help`)"


def _is_usage_error(e: BaseException) -> bool:
    """Duck-typed: click's and typer's (``typer._click``) ClickException family, whatever version is installed."""
    return hasattr(e, "exit_code") and hasattr(e, "format_message") and hasattr(e, "show")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app; every error is one line on stderr and exit code 2 (130 when interrupted)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        rv = app(args=args, standalone_mode=False)
    except CloudrtError as e:
        if debug:
            raise
        typer.echo(f"error: {e}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else USAGE_EXIT)
    except ModuleNotFoundError as e:  # an optional dependency that a code path needed after all
        root = (e.name or "").split(".")[0]
        if debug or root not in EXTRAS:
            raise
        typer.echo(f"error: {missing_extra_message(root, 'this command')}", err=True)
        return USAGE_EXIT
    except Exception as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `cloudrt` or a verb without arguments: the help
            typer.echo(e.format_message())  # type: ignore[attr-defined]
            return 0
        if _is_usage_error(e):
            typer.echo(_usage_line(e), err=True)
            return USAGE_EXIT
        if type(e).__name__ == "Abort":
            typer.echo("aborted", err=True)
            return 1
        if hasattr(e, "exit_code") and isinstance(e.exit_code, int):  # typer.Exit / click.exceptions.Exit
            return e.exit_code
        raise
    return rv if isinstance(rv, int) else 0
