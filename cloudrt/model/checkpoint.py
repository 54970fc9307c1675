"""Safe checkpoints: safetensors weights + a JSON sidecar (config, normalization, provenance, scores).

Never unpickles: weights load with ``safetensors``; training state (``*.state.pt``) loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save

from cloudrt import paths
from cloudrt._version import __version__
from cloudrt.contract import NORMALIZATION
from cloudrt.errors import ModelError
from cloudrt.fileutil import atomic_write_bytes, file_sha256
from cloudrt.model.carf import CARF, from_config


def _stem(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".safetensors", ".json") else p


def weights_sha256(path: str | os.PathLike) -> str:
    """sha256 of a checkpoint's .safetensors file."""
    return file_sha256(_stem(path).with_suffix(".safetensors"))


def save_checkpoint(model: Any, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write ``PATH.safetensors`` and ``PATH.json`` atomically; returns the .safetensors path."""
    stem = _stem(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}
    st_path = stem.with_suffix(".safetensors")
    atomic_write_bytes(st_path, save(sd, metadata={"cloudrt_version": __version__}))
    info = {
        "format": "cloudrt-checkpoint/1",
        "cloudrt_version": __version__,
        "config": _unwrap(model).config,
        "normalization": NORMALIZATION,
        "band_order": NORMALIZATION["optical"]["bands"] + NORMALIZATION["sar"]["bands"],
        **(meta or {}),
        "weights_sha256": weights_sha256(st_path),
    }
    atomic_write_bytes(stem.with_suffix(".json"), (json.dumps(info, indent=2) + "\n").encode())
    return st_path


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON sidecar of a checkpoint."""
    j = _stem(path).with_suffix(".json")
    if not j.exists():
        raise ModelError(f"checkpoint config {j} is missing; a checkpoint is NAME.safetensors + NAME.json.")
    try:
        return json.loads(j.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"checkpoint config {j} is not valid JSON ({e}); re-save the checkpoint.") from e


def load_checkpoint(path: str | os.PathLike, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Load ``PATH.safetensors`` + ``PATH.json`` -> (model in eval mode, meta)."""
    stem = _stem(path)
    st = stem.with_suffix(".safetensors")
    if not st.exists():
        raise ModelError(f"weights file {st} not found; pass an existing .safetensors checkpoint.")
    meta = read_meta(stem)
    model = from_config(meta["config"])
    try:
        sd = load_file(str(st), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"weights file {st} is not a readable safetensors file ({e}).") from e
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError:  # shape mismatch
        missing, unexpected = ["<shape mismatch>"], []
    if missing or unexpected:
        raise ModelError(
            f"weights {st} do not match config preset {meta['config'].get('preset')!r} "
            f"(missing {len(missing)}, unexpected {len(unexpected)} tensors); use the matching .json."
        )
    return model.to(device).eval(), meta


def load_default(device: str = "cpu") -> CARF:
    """The shipped default model (``weights/carf-demo.safetensors``) in eval mode."""
    model, _ = load_checkpoint(paths.DEFAULT_WEIGHTS, device=device)
    return model.eval()


def _unwrap(model: Any) -> Any:
    return getattr(model, "module", model)
