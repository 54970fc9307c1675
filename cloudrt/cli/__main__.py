"""``python -m cloudrt.cli``: the ``cloudrt`` command."""

from __future__ import annotations

import sys

from cloudrt.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
