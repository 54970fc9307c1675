"""Swin Transformer block with (shifted) window attention, written to export cleanly.

Export-friendly by construction (ONNX / TensorRT):
- fixed window size; the feature size is static for a given tile, so every reshape is fixed;
- the cyclic shift is ``torch.roll`` on static shapes (ONNX: Slice + Concat);
- the relative position index and the shift mask are NumPy-built constants per feature size,
  so they fold into the graph; attention is plain MatMul -> Softmax -> MatMul.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def relative_position_index(ws: int) -> np.ndarray:
    """(ws*ws, ws*ws) int64 index into a ((2ws-1)^2, heads) bias table (standard Swin)."""
    coords = np.stack(np.meshgrid(np.arange(ws), np.arange(ws), indexing="ij")).reshape(2, -1)
    rel = coords[:, :, None] - coords[:, None, :] + (ws - 1)  # (2, N, N)
    return (rel[0] * (2 * ws - 1) + rel[1]).astype(np.int64)


def shift_attention_mask(h: int, w: int, ws: int, shift: int) -> np.ndarray:
    """(nW, ws*ws, ws*ws) float32 mask: 0 within a region, -100 across regions of the shifted grid."""
    img = np.zeros((h, w), dtype=np.int64)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[hs, wsl] = cnt
            cnt += 1
    win = img.reshape(h // ws, ws, w // ws, ws).transpose(0, 2, 1, 3).reshape(-1, ws * ws)
    diff = win[:, None, :] != win[:, :, None]
    return np.where(diff, np.float32(-100.0), np.float32(0.0)).astype(np.float32)


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B*nW, ws*ws, C) with fixed reshapes/transposes."""
    _, h, w, c = x.shape
    x = x.reshape(-1, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_merge(x: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """(B*nW, ws*ws, C) -> (B, H, W, C), the inverse of :func:`window_partition`."""
    c = x.shape[-1]
    x = x.reshape(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping windows with a relative position bias."""

    def __init__(self, dim: int, heads: int, ws: int) -> None:
        super().__init__()
        self.heads, self.ws = heads, ws
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        self.register_buffer(
            "bias_index", torch.from_numpy(relative_position_index(ws)), persistent=False
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # x: (B*nW, n, C), n = ws*ws; mask: (nW, n, n) or None
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (B*nW, heads, n, d)
        attn = torch.matmul(q * self.scale, k.transpose(-2, -1))  # (B*nW, heads, n, n)
        bias = self.bias_table[self.bias_index.reshape(-1)].reshape(n, n, self.heads).permute(2, 0, 1)
        attn = attn + bias.unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.reshape(-1, nw, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.reshape(-1, self.heads, n, n)
        attn = torch.softmax(attn, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(bw, n, c)  # (B*nW, n, C)
        return self.proj(out)


class SwinBlock(nn.Module):
    """Swin block on a feature map: y = x + W-MSA(LN(x)); out = y + MLP(LN(y)) (GELU MLP).

    ``shift`` > 0 makes it the shifted-window variant (cyclic roll by ``shift``, masked attention).
    Input and output are (N, C, h, w) so it interleaves with the convolutional RDBs.
    """

    def __init__(self, dim: int, heads: int, ws: int, shift: int = 0, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.ws, self.shift = ws, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, ws)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self._masks: dict[tuple[int, int], torch.Tensor] = {}

    def _mask(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        key = (h, w)
        m = self._masks.get(key)
        if m is None or m.device != device:
            m = torch.from_numpy(shift_attention_mask(h, w, self.ws, self.shift)).to(device)
            self._masks[key] = m
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        h, w = int(h), int(w)
        shift = self.shift if min(h, w) > self.ws else 0  # one window: nothing to shift
        x = x.permute(0, 2, 3, 1)  # (N, h, w, C)
        y = self.norm1(x)
        if shift:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        win = window_partition(y, self.ws)  # (N*nW, ws*ws, C)
        win = self.attn(win, self._mask(h, w, x.device) if shift else None)
        y = window_merge(win, self.ws, h, w)  # (N, h, w, C)
        if shift:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        x = x + y
        x = x + self.mlp(self.norm2(x))
        return x.permute(0, 3, 1, 2)  # (N, C, h, w)
