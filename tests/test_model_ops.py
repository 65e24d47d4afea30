"""The DiT's ops (thin wrappers over `kernels`' references) and 3D RoPE, against float64."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import kernels
from dfm_video.models.ops import apply_rope, gated_residual, modulated_norm, rms_norm, rope_tables


def rope_sections(head_dim: int) -> tuple[int, ...]:
    """Head-dim channels rotated by the (t, h, w) axes (split-pair layout: a count, not a slice)."""
    return tuple(2 * p for p in kernels.rope_axis_pairs(head_dim))


def _rope_reference(x: torch.Tensor, pos: tuple[int, int, int], theta: float) -> torch.Tensor:
    """Rotate one head vector x (Dh,) at grid position pos, written from the convention with
    explicit complex multiplications per split pair (x[i], x[i + Dh/2]), in float64: the t axis
    owns the first pairs, then h, then w; an axis with n pairs rotates its pair j by
    pos * theta^(-j/n)."""
    half = x.shape[0] // 2
    pairs = [d // 2 for d in rope_sections(x.shape[0])]
    ang = torch.tensor([p * theta ** (-j / n) for p, n in zip(pos, pairs) for j in range(n)], dtype=torch.float64)
    z = torch.complex(x[:half], x[half:]) * torch.polar(torch.ones_like(ang), ang)
    return torch.cat([z.real, z.imag])


def _grid_positions(grid):
    return list(itertools.product(*(range(n) for n in grid)))


def test_rope_sections() -> None:
    assert rope_sections(72) == (24, 24, 24)  # DiT3D-XL head dim
    assert rope_sections(64) == (24, 20, 20)  # DiT3D-S/B/L
    assert rope_sections(12) == (4, 4, 4)
    for d in (6, 8, 16, 64, 72, 128):
        s = rope_sections(d)
        assert sum(s) == d and all(v % 2 == 0 and v > 0 for v in s)
    with pytest.raises(ValueError, match="even head_dim"):
        rope_sections(9)


@pytest.mark.parametrize("head_dim", [12, 16])
def test_rope_matches_float64_reference(head_dim: int) -> None:
    grid, theta = (3, 4, 5), 100.0
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, math.prod(grid), head_dim, generator=g, dtype=torch.float64)
    cos, sin = rope_tables(grid, head_dim, theta, dtype=torch.float64)
    out, _ = apply_rope(x, x, cos, sin)
    positions = _grid_positions(grid)
    ref = torch.stack(
        [torch.stack([_rope_reference(x[0, h, n], pos, theta) for n, pos in enumerate(positions)]) for h in range(2)]
    )
    torch.testing.assert_close(out[0], ref, rtol=1e-12, atol=1e-12)
    # the float32 path (what the model runs) agrees to float32 precision
    cos32, sin32 = rope_tables(grid, head_dim, theta)
    torch.testing.assert_close(apply_rope(x.float(), x.float(), cos32, sin32)[0].double(), out, rtol=1e-5, atol=1e-5)


def test_rope_relative_position_property() -> None:
    """<R(p) q, R(p') k> depends only on p - p' (and does depend on it)."""
    grid, head_dim = (3, 4, 5), 12
    g = torch.Generator().manual_seed(0)
    q = torch.randn(head_dim, generator=g, dtype=torch.float64)
    k = torch.randn(head_dim, generator=g, dtype=torch.float64)
    N = math.prod(grid)
    cos, sin = rope_tables(grid, head_dim, 10000.0, dtype=torch.float64)
    rq, rk = apply_rope(q.expand(1, 1, N, head_dim), k.expand(1, 1, N, head_dim), cos, sin)
    rq, rk = rq[0, 0], rk[0, 0]  # (N, Dh): q and k at every position
    scores = rq @ rk.T  # (N, N)
    pos = _grid_positions(grid)
    by_offset: dict[tuple[int, int, int], list[float]] = {}
    for i, pi in enumerate(pos):
        for j, pj in enumerate(pos):
            by_offset.setdefault(tuple(a - b for a, b in zip(pi, pj)), []).append(float(scores[i, j]))
    for offset, vals in by_offset.items():
        assert max(vals) - min(vals) < 1e-10, offset
    # zero offset gives the unrotated dot product; different offsets give different scores
    assert abs(by_offset[(0, 0, 0)][0] - float(q @ k)) < 1e-10
    firsts = {o: v[0] for o, v in by_offset.items()}
    for axis_offset in [(1, 0, 0), (0, 1, 0), (0, 0, 1)]:
        assert abs(firsts[axis_offset] - firsts[(0, 0, 0)]) > 1e-6


def test_rope_identity_for_single_frame_time_section() -> None:
    # T = 1 (images): every token has t = 0, so the time axis' pairs (the first columns) are left untouched
    cos, sin = rope_tables((1, 4, 4), 12)
    p_t = rope_sections(12)[0] // 2
    assert cos.shape == (16, 6)
    assert torch.equal(cos[:, :p_t], torch.ones(16, p_t)) and torch.equal(sin[:, :p_t], torch.zeros(16, p_t))
    assert not torch.equal(cos[:, p_t:], torch.ones(16, 6 - p_t))  # h and w do rotate


def test_rope_tables_cached_and_inference_safe() -> None:
    with torch.inference_mode():
        cos, sin = rope_tables((2, 3, 3), 12, 10000.0)
    assert rope_tables((2, 3, 3), 12, 10000.0)[0] is cos  # cached
    assert not cos.is_inference()  # a table first built while sampling can be saved for backward
    x = torch.randn(1, 1, 18, 12, requires_grad=True)
    apply_rope(x, x, cos, sin)[0].sum().backward()
    assert x.grad is not None


def test_apply_rope_keeps_dtype() -> None:
    cos, sin = rope_tables((1, 2, 2), 12)
    x = torch.randn(1, 2, 4, 12).bfloat16()
    out, _ = apply_rope(x, x, cos, sin)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), apply_rope(x.float(), x.float(), cos, sin)[0], rtol=1e-2, atol=1e-2)


def test_elementwise_ops_vs_float64_reference() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 8, generator=g, dtype=torch.float64)
    shift, scale, gate = (torch.randn(2, 8, generator=g, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(gated_residual(x, gate, 2 * x), x + gate[:, None] * 2 * x)
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    normed = (x - mu) / torch.sqrt(var + 1e-6)
    torch.testing.assert_close(modulated_norm(x, shift, scale), normed * (1 + scale[:, None]) + shift[:, None])
    w = torch.randn(8, generator=g, dtype=torch.float64)
    torch.testing.assert_close(rms_norm(x, w), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w)
    # half precision computes in float32 internally
    xb = x.bfloat16()
    assert rms_norm(xb, w.float()).dtype == torch.bfloat16
    torch.testing.assert_close(rms_norm(xb, w.float()).double(), rms_norm(xb.double(), w), rtol=1e-2, atol=1e-2)
