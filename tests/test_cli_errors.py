"""One error path for the command line: every usage mistake, and every verb whose extra is missing, prints one
line on stderr and exits 2; never a traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cloudrt.cli import main

HERE = Path(__file__).resolve().parent

USAGE_MISTAKES = [
    (["infer", "--tile", "abc"], "--tile"),
    (["infer", "--align", "true"], "true"),
    (["infer", "--tile-size", "256"], "--tile-size"),
    (["frobnicate"], "frobnicate"),
    (["mask", "-o", "x.tif"], "--optical"),
    (["export", "--opset"], "--opset"),
    (["bench", "--rounds", "many"], "--rounds"),
    (["--no-such-flag"], "--no-such-flag"),
]


@pytest.mark.parametrize("args, word", USAGE_MISTAKES)
def test_usage_mistakes_are_one_line_exit_2(args: list[str], word: str, capsys: pytest.CaptureFixture) -> None:
    rc = main(args)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("error: ") and "\n" not in err and word in err and "--help" in err


def test_usage_mistake_through_the_installed_entry_point() -> None:
    """The real process, as a user runs it: exit status 2, one line, no traceback."""
    r = subprocess.run([sys.executable, "-m", "cloudrt.cli", "infer", "--tile", "abc"], capture_output=True,
                       text=True, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr


def test_bare_command_prints_help() -> None:
    r = subprocess.run([sys.executable, "-m", "cloudrt.cli"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "infer" in r.stdout and "Traceback" not in r.stderr


BLOCK = """
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "onnx"):
            raise ImportError("blocked: " + name)

sys.meta_path.insert(0, Block())
from cloudrt.cli import main
sys.exit(main({args!r}))
"""


@pytest.mark.parametrize("args, extra", [
    (["export", "-o", "x.onnx"], "cloudrt[export]"),
    (["export", "--format", "engine"], "cloudrt[export]"),
    (["train", "--data", ".", "-o", "run"], "cloudrt[train]"),
    (["eval", "--data", "."], "cloudrt[train]"),
    (["infer", "--backend", "torch"], "cloudrt[train]"),  # torch first, before asking for a checkpoint
])
def test_missing_extra_is_one_line_exit_2(args: list[str], extra: str, tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(BLOCK.format(args=args))], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "torch" in lines[0] and extra in lines[0], r.stderr
    assert not list(tmp_path.iterdir())  # nothing written
