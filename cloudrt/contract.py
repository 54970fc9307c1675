"""The data contract shared by every layer: bands, normalization constants, ONNX I/O names, dtypes.

One source: preprocessing, the model, the exporter and the runtime all read these names and numbers
from here (NumPy only).

- S2 L1C digital numbers: clip to [0, 10000], divide by 10000.
- S1 sigma0 in dB: clip VV to [-25, 0] and VH to [-32.5, 0], rescale each to [0, 1].
- The exported model: inputs ``optical`` (N, 13, T, T) and ``sar`` (N, 2, T, T) float32 in those units,
  output ``optical_clear`` (N, 13, T, T) float32 in optical units.
"""

from __future__ import annotations

import numpy as np

S2_BANDS: tuple[str, ...] = (
    "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12",
)
S1_BANDS: tuple[str, ...] = ("VV", "VH")
S2_SCALE = 10000.0
S2_CLIP = (0.0, 10000.0)
S1_CLIP = {"VV": (-25.0, 0.0), "VH": (-32.5, 0.0)}

#: No SAR: the lower clip of each band (dB), which normalizes to 0, the value SAR dropout trains with.
NO_SAR_DB = np.array([S1_CLIP[b][0] for b in S1_BANDS], dtype=np.float32)[:, None, None]

NORMALIZATION = {
    "optical": {"bands": list(S2_BANDS), "clip": list(S2_CLIP), "scale": S2_SCALE},
    "sar": {"bands": list(S1_BANDS), "clip": {k: list(v) for k, v in S1_CLIP.items()}},
}

#: Raster / array dtypes the runtime accepts for S2 DN and S1 dB.
SUPPORTED_DTYPES = (
    np.uint8, np.uint16, np.int16, np.uint32, np.int32, np.float32, np.float64,
)

# ONNX / TensorRT model I/O (export produces it, the runtime consumes it).
OPTICAL_INPUT = "optical"
SAR_INPUT = "sar"
OUTPUT = "optical_clear"
INPUT_NAMES: tuple[str, str] = (OPTICAL_INPUT, SAR_INPUT)
OPTICAL_BANDS = len(S2_BANDS)
SAR_BANDS = len(S1_BANDS)
CONTRACT = (
    f"inputs {OPTICAL_INPUT} (N,{OPTICAL_BANDS},T,T) float32 and {SAR_INPUT} (N,{SAR_BANDS},T,T) float32, "
    f"output {OUTPUT} (N,{OPTICAL_BANDS},T,T)"
)
