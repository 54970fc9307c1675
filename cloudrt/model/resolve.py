"""Resolve a model argument, in one place for export, bench, evaluation and the torch backend.

``None`` (the shipped default weights), a preset name (``carf-tiny``; random init), a checkpoint path
(``NAME.safetensors`` or ``NAME.json``, with its sidecar) or a ``torch.nn.Module`` -> the module and its
provenance (where it came from, preset, sha256 of the weights).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from cloudrt import paths
from cloudrt.errors import InputError, ModelError
from cloudrt.model.carf import build
from cloudrt.model.checkpoint import load_checkpoint, weights_sha256
from cloudrt.model.registry import PRESETS


def state_dict_sha256(model: Any) -> str:
    """sha256 of a module's state_dict serialized as safetensors (the weights' identity)."""
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return hashlib.sha256(save(sd)).hexdigest()


def perturb_untrained(model: Any, seed: int = 0, std: float = 0.01) -> Any:
    """Give a randomly initialized CARF a non-zero last IRN convolution (it starts at zero, which makes the
    model the identity through the global residual, eq. 12, and every comparison trivially exact)."""
    gen = torch.Generator().manual_seed(seed)
    conv = model.irn.conv2
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * std)
    return model


def is_preset_name(arg: Any) -> bool:
    """True when ``arg`` looks like a preset name (``carf-...``, no suffix) and is not an existing file."""
    return isinstance(arg, str) and arg.startswith("carf-") and not Path(arg).suffix and not Path(arg).exists()


def resolve_model(arg: Any = None, *, device: str = "cpu", seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """-> (module in eval mode, provenance ``{source, preset, weights_sha256}``); see the module docstring.

    A preset gets a seeded random init with :func:`perturb_untrained` (so it is not the identity).
    """
    if isinstance(arg, torch.nn.Module):
        cfg = dict(getattr(arg, "config", {}) or {})
        return arg, {"source": "in-memory module (sha256 of its state_dict as safetensors)",
                     "preset": cfg.get("preset"), "weights_sha256": state_dict_sha256(arg)}
    if is_preset_name(arg):
        torch.manual_seed(seed)
        m = perturb_untrained(build(arg), seed).to(device).eval()
        return m, {"source": f"preset {arg}, random init (seed {seed}), last IRN conv ~N(0, 0.01) so the output "
                             "is not the identity", "preset": arg, "weights_sha256": state_dict_sha256(m)}
    path = Path(paths.DEFAULT_WEIGHTS if arg is None else arg)
    if path.suffix.lower() == ".onnx":
        raise InputError(f"{path} is already ONNX; pass a .safetensors checkpoint (or --format engine to build "
                         "a TensorRT engine from this ONNX file).")
    st = path.with_suffix(".safetensors") if path.suffix in ("", ".json", ".safetensors") else path
    if not st.is_file():
        what = "the shipped default model" if arg is None else "checkpoint"
        raise ModelError(f"{what} {st} not found; pass NAME.safetensors (with NAME.json) or a preset "
                         f"({', '.join(sorted(PRESETS))}).")
    model, meta = load_checkpoint(st, device=device)
    cfg = meta.get("config", {}) if isinstance(meta, dict) else {}
    return model, {"source": os.fspath(st), "preset": cfg.get("preset"), "weights_sha256": weights_sha256(st)}
