"""PyTorch eager backend of the runtime: a ``torch.nn.Module`` or a cloudrt checkpoint, and the one NumPy ->
torch -> NumPy forward pass (:func:`forward_numpy`) that evaluation and the export recipe share.

Lives with the model (it needs torch); the runtime loads it by name only for ``--backend torch``.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch

from cloudrt.devices import parse_device
from cloudrt.errors import BackendUnavailableError, InputError, ModelError
from cloudrt.model.resolve import resolve_model
from cloudrt.runtime.base import Backend


def torch_device(device: str | int | None = "auto") -> torch.device:
    """``auto`` -> CUDA when visible, else CPU; ``cuda``/``cuda:N`` must be visible (one-line error)."""
    d = parse_device(device)
    if d == "auto":
        d = "cuda:0" if torch.cuda.is_available() else "cpu"
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailableError(f"--device {device} asked for a GPU but torch sees no CUDA GPU; "
                                      "pass --device cpu.")
    return torch.device(d)


def forward_numpy(model: Any, optical: np.ndarray, sar: np.ndarray, device: torch.device | None = None,
                  pad_to: int = 1) -> np.ndarray:
    """``model(optical, sar)`` on NumPy batches (N, 13, H, W), (N, 2, H, W) in model units -> float32 NumPy.

    ``pad_to``: reflect-pad H and W up to a multiple of it (the model's size divisor) and crop back.
    Runs under ``torch.inference_mode`` on ``device`` (default: the model's).
    """
    dev = device or next(model.parameters()).device
    h, w = optical.shape[-2:]
    ph, pw = (-h) % pad_to, (-w) % pad_to
    o = torch.from_numpy(np.ascontiguousarray(optical, dtype=np.float32)).to(dev)
    s = torch.from_numpy(np.ascontiguousarray(sar, dtype=np.float32)).to(dev)
    if ph or pw:
        if ph >= h or pw >= w:  # reflect needs pad < size
            raise InputError(f"patch {h}x{w} is too small for the model (multiple of {pad_to} needed).")
        o = torch.nn.functional.pad(o, (0, pw, 0, ph), mode="reflect")
        s = torch.nn.functional.pad(s, (0, pw, 0, ph), mode="reflect")
    with torch.inference_mode():
        out = model(o, s)
    return out[..., :h, :w].float().cpu().numpy()


class TorchBackend(Backend):
    """Run a CARF module eagerly (float32, ``torch.inference_mode``), on ``device`` ("cpu", "cuda:0")."""

    name = "torch"

    def __init__(self, model: Any, device: str | None = None) -> None:
        super().__init__()
        self.device = torch_device(device)
        if not isinstance(model, torch.nn.Module) and not isinstance(model, (str, bytes)) and \
                not hasattr(model, "__fspath__"):
            raise ModelError(f"cannot run a {type(model).__name__} as a model; pass a path or a torch module.")
        model, info = resolve_model(model, device=str(self.device))
        self.metadata = {k: str(v) for k, v in info.items() if v is not None}
        self.model = model.to(self.device).eval()
        self.size_divisor = int(getattr(model, "size_divisor", 1))
        self.default_tile = max(self.size_divisor, 256 - 256 % self.size_divisor)
        cfg = getattr(model, "config", None) or {}
        self.metadata.setdefault("preset", str(cfg.get("preset", type(model).__name__)))
        self.provider = str(self.device)
        self.default_batch = 8 if self.device.type == "cuda" else 2
        self._lock = threading.Lock()

    def _run(self, optical: np.ndarray, sar: np.ndarray) -> np.ndarray:
        with self._lock:
            return forward_numpy(self.model, optical, sar, self.device)
