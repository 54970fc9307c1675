"""PyTorch eager backend: a ``torch.nn.Module`` or a cloudrt checkpoint (``.safetensors`` + ``.json``).

Only usable when torch is installed; torch is imported when this backend is created, never on import.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from cloudrt.errors import BackendUnavailableError, ModelError
from cloudrt.runtime.base import Backend


def torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def import_torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise BackendUnavailableError(
            "PyTorch is not installed, so checkpoints cannot run eagerly; pip install 'cloudrt[train]' or pass "
            "an exported .onnx model."
        ) from e
    return torch


class TorchBackend(Backend):
    """Run a CARF module eagerly (float32, ``torch.inference_mode``), on ``device`` ("cpu", "cuda:0")."""

    name = "torch"

    def __init__(self, model: Any, device: str | None = None) -> None:
        super().__init__()
        torch = import_torch()
        self.torch = torch
        if device in (None, "auto"):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError("no CUDA GPU is visible to torch; pass --device cpu.")
        self.device = torch.device(device)
        if isinstance(model, (str, os.PathLike)):
            from cloudrt.checkpoint import load_checkpoint

            p = Path(model)
            if not p.with_suffix(".safetensors").exists():
                raise ModelError(f"checkpoint {p} does not exist; pass NAME.safetensors (with NAME.json).")
            model, meta = load_checkpoint(p, device=str(self.device))
            self.metadata = {k: str(v) for k, v in meta.items() if isinstance(v, (str, int, float))}
        elif not isinstance(model, torch.nn.Module):
            raise ModelError(f"cannot run a {type(model).__name__} as a model; pass a path or a torch module.")
        self.model = model.to(self.device).eval()
        self.size_divisor = int(getattr(model, "size_divisor", 1))
        self.default_tile = max(self.size_divisor, 256 - 256 % self.size_divisor)
        cfg = getattr(model, "config", None) or {}
        self.metadata.setdefault("preset", str(cfg.get("preset", type(model).__name__)))
        self.provider = str(self.device)
        self.default_batch = 8 if self.device.type == "cuda" else 2
        self._lock = threading.Lock()

    def _run(self, optical: np.ndarray, sar: np.ndarray) -> np.ndarray:
        torch = self.torch
        with self._lock, torch.inference_mode():
            o = torch.from_numpy(np.ascontiguousarray(optical, dtype=np.float32)).to(self.device)
            s = torch.from_numpy(np.ascontiguousarray(sar, dtype=np.float32)).to(self.device)
            return self.model(o, s).float().cpu().numpy()
