"""CARF model: shapes, presets, identity at init, equation-level building blocks, export-relevant structure."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cloudrt.model import build, from_config, list_models  # noqa: E402
from cloudrt.model.swin import (  # noqa: E402
    SwinBlock,
    relative_position_index,
    shift_attention_mask,
    window_merge,
    window_partition,
)


def test_registry_has_presets():
    assert {"carf-tiny", "carf-small", "carf-base"} <= set(list_models())


@pytest.mark.parametrize("name", ["carf-tiny", "carf-small", "carf-base"])
def test_forward_shapes(name):
    torch.manual_seed(0)
    m = build(name).eval()
    d = m.size_divisor
    x, s = torch.rand(2, 13, 2 * d, 2 * d), torch.rand(2, 2, 2 * d, 2 * d)
    with torch.no_grad():
        y = m(x, s)
    assert y.shape == x.shape and y.dtype == torch.float32


def test_untrained_model_is_identity_through_global_residual():
    """IRN's last conv starts at zero, so prediction == cloudy input (eq. 12) before training."""
    m = build("carf-tiny").eval()
    x, s = torch.rand(1, 13, 64, 64), torch.rand(1, 2, 64, 64)
    with torch.no_grad():
        assert torch.equal(m(x, s), x)


def test_sar_changes_output_once_trained_weights_are_nonzero():
    torch.manual_seed(1)
    m = build("carf-tiny").eval()
    torch.nn.init.normal_(m.irn.conv2.weight, std=0.05)
    x = torch.rand(1, 13, 64, 64)
    with torch.no_grad():
        a = m(x, torch.zeros(1, 2, 64, 64))
        b = m(x, torch.ones(1, 2, 64, 64))
    assert (a - b).abs().max() > 1e-4  # SAR is really fused into the optical stream


def test_overrides_and_config_roundtrip():
    m = build("carf-tiny", channels=16, heads=2)
    assert m.config["channels"] == 16 and m.config["preset"] == "carf-tiny"
    m2 = from_config(m.config)
    assert sum(p.numel() for p in m2.parameters()) == sum(p.numel() for p in m.parameters())
    with pytest.raises(ValueError):
        build("carf-tiny", nonsense=3)


def test_pixel_unshuffle_reconfiguration_is_lossless():
    """Eqs. 1-2: the reconfiguration is a pure rearrangement that pixel-shuffle inverts."""
    m = build("carf-tiny")
    x = torch.rand(1, 13, 64, 64)
    r = m.reconf(x)
    assert r.shape == (1, 13 * 16, 16, 16)
    assert torch.equal(torch.nn.functional.pixel_shuffle(r, 4), x)
    # channel c*s^2 + i*s + j of the output holds x[c, i::s, j::s]
    assert torch.equal(r[0, 5 * 16 + 1 * 4 + 2], x[0, 5, 1::4, 2::4])


def test_window_partition_merge_roundtrip():
    x = torch.rand(2, 16, 24, 5)
    w = window_partition(x, 8)
    assert w.shape == (2 * 2 * 3, 64, 5)
    assert torch.equal(w[0].reshape(8, 8, 5), x[0, :8, :8])
    assert torch.equal(window_merge(w, 8, 16, 24), x)


def test_relative_position_index_matches_definition():
    ws = 3
    idx = relative_position_index(ws)
    for a in range(ws * ws):
        for b in range(ws * ws):
            (ya, xa), (yb, xb) = divmod(a, ws), divmod(b, ws)
            assert idx[a, b] == (ya - yb + ws - 1) * (2 * ws - 1) + (xa - xb + ws - 1)


def test_shift_mask_blocks_only_wrapped_pairs():
    """Float64 reference: after rolling by -shift, tokens attend only to tokens from the same region."""
    h = w = 16
    ws, sh = 8, 4
    m = shift_attention_mask(h, w, ws, sh)
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    # original coordinate of each rolled position, and which region of the unrolled image it came from
    oy, ox = (ys + sh) % h, (xs + sh) % w
    region = (oy >= h - sh).astype(int) * 2 + (ox >= w - sh).astype(int)  # wrapped-in rows/cols
    # windows of the rolled grid
    r = region.reshape(h // ws, ws, w // ws, ws).transpose(0, 2, 1, 3).reshape(-1, ws * ws)
    ref = np.where(r[:, :, None] != r[:, None, :], -100.0, 0.0)
    # Swin's 3x3 labelling is finer than the 2x2 wrap labelling only across the interior split, which
    # lies on window borders; within any window both agree.
    np.testing.assert_array_equal(m, ref)


def test_swin_block_equivariant_to_window_aligned_shift():
    """Window attention commutes with a translation by whole windows (no data-dependent shapes)."""
    torch.manual_seed(0)
    blk = SwinBlock(16, 2, 8, shift=0).eval()
    x = torch.rand(1, 16, 32, 32)
    with torch.no_grad():
        a = blk(x)
        b = blk(torch.roll(x, shifts=(8, 16), dims=(2, 3)))
    torch.testing.assert_close(torch.roll(a, shifts=(8, 16), dims=(2, 3)), b, atol=1e-6, rtol=1e-5)


def test_swin_attention_equals_reference_softmax_attention():
    """Plain MatMul-Softmax-MatMul equals torch's SDPA with the same additive bias (independent reference)."""
    torch.manual_seed(0)
    blk = SwinBlock(16, 2, 8, shift=0).eval()
    att = blk.attn
    x = torch.rand(3, 64, 16)
    with torch.no_grad():
        ours = att(x, None)
        qkv = att.qkv(x).reshape(3, 64, 3, 2, 8).permute(2, 0, 3, 1, 4)
        bias = att.bias_table[att.bias_index.reshape(-1)].reshape(64, 64, 2).permute(2, 0, 1)
        ref = torch.nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=bias)
        ref = att.proj(ref.transpose(1, 2).reshape(3, 64, 16))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
