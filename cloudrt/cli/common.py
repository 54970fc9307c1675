"""Helpers shared by the verbs: a progress bar on stderr, Ctrl-C/SIGTERM as one clean line, extras checks."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cloudrt._deps import require
from cloudrt.errors import CloudrtError


class Interrupted(CloudrtError):
    """Ctrl-C / SIGTERM during a run: temporary outputs were removed (exit code 130)."""

    exit_code = 130


def require_extra(module: str, what: str, extra: str | None = None) -> None:
    """Fail with one line naming the extra to install, before a command does any work, unless ``module``
    imports."""
    require(module, what, extra)


@contextlib.contextmanager
def progress(disabled: bool, unit: str, total: int) -> Iterator:
    """A rich progress bar on stderr; yields ``callback(done, total)`` (or None when disabled)."""
    if disabled or total <= 0:
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as prog:
        task = prog.add_task(unit, total=total)
        yield lambda done, _total: prog.update(task, completed=done)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
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
