"""The paper's cloud mask (eqs. 13-16) on torch tensors, identical to ``cloudrt.preprocess.mask.cloud_mask``.

For the training loss (eqs. 17-18): it runs on the tensor's device, in int64 for integer input and float64
for float input, with the same exact integer-form inequalities as :mod:`cloudrt.preprocess.mask` (shared code), so
the masks match the NumPy ones pixel for pixel.
"""

from __future__ import annotations

import torch

from cloudrt.contract import S2_BANDS
from cloudrt.errors import InputError
from cloudrt.preprocess.mask import PAPER_BANDS, paper_mask_from_bands


def cloud_mask_torch(dn: torch.Tensor, method: str = "paper", scale: float | None = None) -> torch.Tensor:
    """Boolean cloud mask M' (eqs. 13-16) of (N, 13, H, W) or (13, H, W) L1C data -> (N, H, W) or (H, W).

    ``dn``: digital numbers (any integer or float dtype). With ``scale`` (e.g. ``scale=10000`` for the
    normalized optical ``DN / 1e4`` the model and loss see) the input is first mapped back to DN as
    ``round(x * scale)`` in float64. That recovers the DN exactly for values that came from integer DN
    (float32 DN / 1e4 is off by at most half a float32 ulp, i.e. < 0.01 DN for DN < 65536). Note that
    :func:`cloudrt.preprocess.normalize.normalize_optical` clips DN at 10000: the cloud terms are unaffected (their
    thresholds are below 10000) but NDSI can change where B3 or B11 exceed 10000 (bright snow/cloud), so a
    mask computed from normalized input can differ from the raw-DN mask on such pixels. Pixels with
    NaN/inf in a used band are False. Only ``method="paper"`` is available here; MPS (no float64) is
    evaluated on the CPU and moved back.
    """
    if method != "paper":
        raise InputError(
            f"cloud_mask_torch supports method 'paper' only, got {method!r}; use cloudrt.preprocess.mask.cloud_mask "
            "for 'sen12mscr'."
        )
    if not isinstance(dn, torch.Tensor):
        raise InputError(
            f"cloud_mask_torch expects a torch.Tensor, got {type(dn).__name__}; wrap it with torch.as_tensor."
        )
    squeeze = dn.dim() == 3
    x = dn.unsqueeze(0) if squeeze else dn
    if x.dim() != 4 or x.shape[1] != len(S2_BANDS):
        raise InputError(
            f"optical input has shape {tuple(dn.shape)}; expected (N, 13, H, W) or (13, H, W) with the 13 "
            f"Sentinel-2 L1C bands {','.join(S2_BANDS)}. Pass a 13-band L1C stack."
        )
    if x.dtype == torch.bool or x.is_complex():
        raise InputError(f"optical input has dtype {x.dtype}; pass L1C digital numbers or reflectance.")
    device = dn.device
    if device.type == "mps":
        x = x.cpu()
    x = x[:, list(PAPER_BANDS)]
    if scale is not None:
        x = torch.round(x.to(torch.float64) * float(scale))
    if x.is_floating_point():
        x = x.to(torch.float64)
        bands = {b: x[:, k] for k, b in enumerate(PAPER_BANDS)}
        out = paper_mask_from_bands(bands) & torch.isfinite(x).all(dim=1)
    else:
        x = x.to(torch.int64)
        out = paper_mask_from_bands({b: x[:, k] for k, b in enumerate(PAPER_BANDS)})
    out = out.to(device)
    return out[0] if squeeze else out
