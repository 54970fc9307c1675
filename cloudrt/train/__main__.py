"""``python -m cloudrt.train`` (for torchrun): the same options as ``cloudrt train``."""

from __future__ import annotations

import sys

from cloudrt.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
