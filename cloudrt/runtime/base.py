"""The backend interface of the runtime (the model contract it consumes is :mod:`cloudrt.contract`)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from cloudrt.errors import InputError


class Backend:
    """One way of running the model on a batch of normalized tiles.

    ``run(optical (B, 13, T, T) float32, sar (B, 2, T, T) float32) -> (B, 13, T, T) float32`` in model
    units ([0, 1]). Subclasses set ``name`` (``"onnxruntime"``, ``"tensorrt"``, ``"torch"``), ``provider``
    (execution provider or device), ``tile`` (static tile size, or None when any multiple of
    ``size_divisor`` works), ``max_batch`` (None: unbounded), ``fixed_batch`` (a static batch size that
    every call must use, or None) and ``metadata`` (the model's metadata_props). ``run`` is thread-safe.
    """

    name: str = "base"
    provider: str = ""
    tile: int | None = None
    size_divisor: int = 1
    max_batch: int | None = None
    fixed_batch: int | None = None
    default_batch: int = 4
    default_tile: int = 256
    metadata: dict[str, str]

    def __init__(self) -> None:
        self.metadata = {}
        self._lock = threading.Lock()

    def _run(self, optical: np.ndarray, sar: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def run(self, optical: np.ndarray, sar: np.ndarray) -> np.ndarray:
        """Run a batch, padding it to ``fixed_batch`` and splitting it at ``max_batch`` as needed."""
        n = optical.shape[0]
        cap = self.fixed_batch or self.max_batch or n
        outs = []
        for b0 in range(0, n, cap):
            o, s = optical[b0 : b0 + cap], sar[b0 : b0 + cap]
            k = o.shape[0]
            if self.fixed_batch and k < self.fixed_batch:
                pad = self.fixed_batch - k
                o = np.concatenate([o, np.zeros((pad, *o.shape[1:]), o.dtype)])
                s = np.concatenate([s, np.zeros((pad, *s.shape[1:]), s.dtype)])
            outs.append(np.asarray(self._run(np.ascontiguousarray(o), np.ascontiguousarray(s)))[:k])
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def resolve_tile(self, tile: int | None) -> int:
        """The tile size to use: the model's static one (``tile`` must match it), or ``tile`` / default."""
        if self.tile is not None:
            if tile is not None and tile != self.tile:
                raise InputError(
                    f"the model takes {self.tile}x{self.tile} tiles, not {tile}; omit --tile or re-export the "
                    f"model with --tile {tile}."
                )
            return self.tile
        t = int(tile or self.default_tile)
        if t < 1 or t % self.size_divisor:
            raise InputError(
                f"tile {t} is not a positive multiple of the model's size divisor {self.size_divisor}; "
                f"pass --tile {max(self.size_divisor, t - t % self.size_divisor)}."
            )
        return t

    def describe(self) -> str:
        return f"{self.name} ({self.provider})" if self.provider else self.name

    def close(self) -> None:
        """Release device resources (optional)."""
        return None


def metadata_int(meta: dict[str, Any], key: str) -> int | None:
    try:
        return int(meta[key])
    except (KeyError, TypeError, ValueError):
        return None
