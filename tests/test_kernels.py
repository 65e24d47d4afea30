"""Tests of `kernels/`: each Triton op against its pure-torch reference, forward and every gradient.

On CPU the Triton kernels run in the interpreter (TRITON_INTERPRET=1, set by tests/triton_helpers.py
before any Triton kernel is decorated) in float32 on odd and prime shapes; the interpreter's bf16 arithmetic is wrong,
so bf16 and DiT widths are covered by the `gpu` tests, which skip when there is no CUDA device.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import torch
from triton_helpers import DEV, needs_triton

import kernels as K
from kernels import _triton

ROOT = pathlib.Path(__file__).resolve().parents[1]

# float32 against a float64 reference: torch's own float32 tolerances. bf16 (GPU only) is
# compared with the reference run in bf16 (same rounding points, fp32 math): 1-2 bf16 ulps.
TOL = {torch.float32: dict(rtol=1.3e-6, atol=1e-5), torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2)}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _leaves(tensors, dtype):
    return [t.detach().to(dtype).requires_grad_(True) for t in tensors]


def _check(fn, ref, inputs, out_grads, names, dtype=torch.float32, ref_dtype=torch.float64, scale_atol=0.0):
    """fn(*inputs) vs ref(*inputs): outputs, and the gradient of every input for `out_grads`.

    `out_grads` gives one upstream gradient per output, or None for an output left unused.
    `scale_atol` adds scale_atol * max|expected| to atol, per tensor (see the GPU tests).
    """
    tol = TOL[dtype]
    got_in, ref_in = _leaves(inputs, dtype), _leaves(inputs, ref_dtype)
    got, want = fn(*got_in), ref(*ref_in)
    got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))

    def close(g, w, what):
        atol = tol["atol"] + scale_atol * w.abs().max().item()
        torch.testing.assert_close(g, w.to(dtype), rtol=tol["rtol"], atol=atol, msg=lambda m: f"{what}: {m}")

    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == dtype and g.shape == w.shape
        close(g, w, f"output {i}")
    used = [i for i, og in enumerate(out_grads) if og is not None]
    torch.autograd.backward([got[i] for i in used], [out_grads[i].to(dtype) for i in used])
    torch.autograd.backward([want[i] for i in used], [out_grads[i].to(ref_dtype) for i in used])
    for name, g, w in zip(names, got_in, ref_in):
        # An input that does not reach a used output has no grad in the reference: zero.
        g_grad = g.grad if g.grad is not None else torch.zeros_like(g)
        w_grad = w.grad if w.grad is not None else torch.zeros_like(w)
        close(g_grad, w_grad, f"d{name}")


def _randn(*shape, device=DEV):
    return torch.randn(*shape, device=device, dtype=torch.float64)


# ---------------------------------------------------------------- modulated norm (+ gated residual)


def _modnorm_case(B, N, D, norm, device=DEV):
    x = _randn(B, N, D, device=device) * 2 + 0.5  # a non-zero mean, so LayerNorm != RMSNorm
    shift, scale = _randn(B, D, device=device), _randn(B, D, device=device) * 0.5
    return [x, shift, scale], [_randn(B, N, D, device=device)]


@needs_triton
@pytest.mark.parametrize("norm", ["layer", "rms"])
@pytest.mark.parametrize("N,D", [(1, 24), (7, 37), (13, 40), (37, 24), (37, 37), (5, 1152)])
def test_modulated_norm_matches_reference(N, D, norm):
    inputs, grads = _modnorm_case(2, N, D, norm)
    _check(
        lambda *a: K.modulated_norm(*a, norm=norm, backend="triton"),
        lambda *a: K.modulated_norm_reference(*a, norm=norm),
        inputs,
        grads,
        ["x", "shift", "scale"],
    )


@needs_triton
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_modulated_norm_eps_is_honoured(norm):
    """A row variance of the order of eps: a kernel ignoring eps, or adding it outside the
    square root, fails here."""
    inputs, grads = _modnorm_case(2, 7, 37, norm)
    inputs[0] = inputs[0] * 0.05  # variance ~1e-2
    _check(
        lambda *a: K.modulated_norm(*a, norm=norm, eps=1e-2, backend="triton"),
        lambda *a: K.modulated_norm_reference(*a, norm=norm, eps=1e-2),
        inputs,
        grads,
        ["x", "shift", "scale"],
    )


def _fused_case(B, N, D, device=DEV):
    (x, shift, scale), _ = _modnorm_case(B, N, D, "layer", device)
    gate, y = _randn(B, D, device=device), _randn(B, N, D, device=device)
    return [x, gate, y, shift, scale]


@needs_triton
@pytest.mark.parametrize("norm", ["layer", "rms"])
@pytest.mark.parametrize("N,D", [(1, 24), (7, 37), (13, 40), (37, 24), (5, 1152)])
@pytest.mark.parametrize("used", ["both", "out_only", "h_only"])
def test_gated_residual_modulated_norm_matches_reference(N, D, norm, used):
    inputs = _fused_case(2, N, D)
    dh = None if used == "out_only" else _randn(2, N, D)
    dout = None if used == "h_only" else _randn(2, N, D)
    _check(
        lambda *a: K.gated_residual_modulated_norm(*a, norm=norm, backend="triton"),
        lambda *a: K.gated_residual_modulated_norm_reference(*a, norm=norm),
        inputs,
        [dh, dout],
        ["x", "gate", "y", "shift", "scale"],
    )


def test_modulated_norm_reference_is_the_formula():
    (x, shift, scale), _ = _modnorm_case(2, 5, 9, "layer", "cpu")
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    want = (x - mu) / torch.sqrt(var + 1e-6) * (1 + scale[:, None]) + shift[:, None]
    torch.testing.assert_close(K.modulated_norm_reference(x, shift, scale, "layer"), want)
    want = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + scale[:, None]) + shift[:, None]
    torch.testing.assert_close(K.modulated_norm_reference(x, shift, scale, "rms"), want)


def test_fused_reference_rounds_h_before_the_norm():
    x, gate, y, shift, scale = (t.to(torch.bfloat16) for t in _fused_case(2, 3, 16, "cpu"))
    h, out = K.gated_residual_modulated_norm_reference(x, gate, y, shift, scale)
    assert h.dtype == out.dtype == torch.bfloat16
    torch.testing.assert_close(out, K.modulated_norm_reference(h, shift, scale), rtol=0, atol=0)


# ---------------------------------------------------------------- gated residual


@needs_triton
@pytest.mark.parametrize("N,D", [(1, 24), (7, 37), (13, 40), (37, 200), (97, 24), (3, 1152)])
def test_gated_residual_matches_reference(N, D):
    x, gate, y = _randn(2, N, D), _randn(2, D), _randn(2, N, D)
    _check(
        lambda *a: K.gated_residual(*a, backend="triton"),
        K.gated_residual_reference,
        [x, gate, y],
        [_randn(2, N, D)],
        ["x", "gate", "y"],
    )


# ---------------------------------------------------------------- RoPE


def _rope_case(B, Hq, Hk, grid, hd, device=DEV):
    N = grid[0] * grid[1] * grid[2]
    cos, sin = K.build_rope_3d_tables(grid, hd, device=device)
    return _randn(B, Hq, N, hd, device=device), _randn(B, Hk, N, hd, device=device), cos, sin


@needs_triton
@pytest.mark.parametrize("Hq,Hk", [(3, 3), (3, 1), (2, 5)])
@pytest.mark.parametrize(
    "grid,hd", [((1, 1, 1), 6), ((1, 1, 7), 12), ((2, 3, 2), 18), ((1, 13, 1), 72), ((3, 3, 4), 64)]
)
def test_rope_matches_reference(grid, hd, Hq, Hk):
    q, k, cos, sin = _rope_case(2, Hq, Hk, grid, hd)
    _check(
        lambda q, k: K.apply_rope(q, k, cos, sin, backend="triton"),
        lambda q, k: K.apply_rope_reference(q, k, cos, sin),
        [q, k],
        [_randn(*q.shape), _randn(*k.shape)],
        ["q", "k"],
    )


@needs_triton
@pytest.mark.parametrize("used", ["q_only", "k_only"])
def test_rope_strided_qkv_and_missing_grad(used):
    """q, k as strided views of a fused qkv projection; one of them left out of the loss."""
    B, N, H, hd = 2, 13, 3, 12
    qkv = _randn(B, N, 3, H, hd).float().requires_grad_(True)
    cos, sin = K.build_rope_3d_tables((1, 1, N), hd, device=DEV)

    def run(backend):
        q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, hd), strided
        qo, ko = K.apply_rope(q, k, cos, sin, backend=backend)
        out = qo if used == "q_only" else ko
        (grad,) = torch.autograd.grad(out, qkv, torch.ones_like(out) * torch.arange(hd, device=DEV))
        return out, grad

    (o1, g1), (o2, g2) = run("triton"), run("torch")
    torch.testing.assert_close(o1, o2, **TOL[torch.float32])
    torch.testing.assert_close(g1, g2, **TOL[torch.float32])
    assert g1.abs().sum() > 0


def test_rope_axis_split_and_tables():
    assert K.rope_axis_pairs(72) == (12, 12, 12)
    assert K.rope_axis_pairs(64) == (12, 10, 10)
    assert sum(K.rope_axis_pairs(128)) == 64
    with pytest.raises(ValueError, match="head_dim"):
        K.rope_axis_pairs(7)
    T, H, W, hd, theta = 3, 4, 5, 12, 100.0
    cos, sin = K.build_rope_3d_tables((T, H, W), hd, theta=theta, dtype=torch.float64)
    assert cos.shape == sin.shape == (T * H * W, hd // 2)
    pt, ph, pw = K.rope_axis_pairs(hd)  # (2, 2, 2)
    t, h, w = 2, 1, 3
    row = (t * H + h) * W + w  # t-major flattening
    expect = torch.cat(
        [p * theta ** (-torch.arange(n, dtype=torch.float64) / n) for p, n in ((t, pt), (h, ph), (w, pw))]
    )
    torch.testing.assert_close(cos[row], expect.cos())
    torch.testing.assert_close(sin[row], expect.sin())


def test_rope_reference_is_relative_in_position():
    """<rope(q)_m, rope(k)_n> depends on m - n only: shift every position by the same offset."""
    hd = 18
    pos = torch.tensor([[0, 1, 2], [3, 0, 5], [1, 4, 4]])
    q, k = _randn(1, 1, 3, hd, device="cpu"), _randn(1, 1, 3, hd, device="cpu")

    def scores(offset):
        cos, sin = K.rope_tables_from_positions(pos + offset, hd, dtype=torch.float64)
        qr, kr = K.apply_rope_reference(q, k, cos, sin)
        return qr @ kr.transpose(-1, -2)

    torch.testing.assert_close(scores(torch.tensor([7, -2, 11])), scores(torch.zeros(3, dtype=torch.long)))
    assert not torch.allclose(scores(0), q @ k.transpose(-1, -2))  # the rotation does something


# ---------------------------------------------------------------- dispatch switch


def test_backend_switch_resolution(monkeypatch):
    assert K.resolve_backend("torch", "cpu") == "torch"
    assert K.resolve_backend("auto", "cpu") == "torch"  # even under the interpreter
    with pytest.raises(ValueError, match="auto\\|triton\\|torch"):
        K.resolve_backend("cuda", "cpu")
    # The messages are under test, not this machine's install: pretend triton is there, then not.
    monkeypatch.setattr(_triton, "_triton_importable", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="CUDA device"):
        K.resolve_backend("triton", "cpu")
    monkeypatch.setattr(_triton, "_triton_importable", lambda: False)
    with pytest.raises(RuntimeError, match="'triton' package"):
        K.resolve_backend("triton", "cpu")
    with pytest.raises(RuntimeError, match="'triton' package"):
        K.modulated_norm(torch.zeros(1, 2, 3), torch.zeros(1, 3), torch.zeros(1, 3), backend="triton")
    if torch.cuda.is_available():
        assert K.resolve_backend("auto", "cuda") == "torch"  # triton "missing": falls back


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_backend_switch_without_cuda(caplog, monkeypatch):
    monkeypatch.setattr(_triton, "_triton_importable", lambda: True)  # the device is what is missing
    _triton._warn_fallback_once.cache_clear()
    with caplog.at_level("WARNING", logger="kernels._triton"):
        assert K.resolve_backend("auto", "cuda") == "torch"
        assert K.resolve_backend("auto", "cuda") == "torch"
    assert len([r for r in caplog.records if "falls back" in r.message]) == 1  # once, not per call
    with pytest.raises(RuntimeError, match="no CUDA device"):
        K.resolve_backend("triton", "cuda")


def test_shape_errors_name_the_argument():
    x = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="scale"):
        K.modulated_norm(x, torch.zeros(2, 4), torch.zeros(2, 5), backend="torch")
    with pytest.raises(ValueError, match="norm"):
        K.modulated_norm(x, torch.zeros(2, 4), torch.zeros(2, 4), norm="batch", backend="torch")
    with pytest.raises(ValueError, match="cos"):
        K.apply_rope(torch.zeros(1, 1, 3, 6), torch.zeros(1, 1, 3, 6), torch.zeros(3, 6), torch.zeros(3, 3))


def test_importing_kernels_does_not_import_triton():
    # (kernels -> dfm_video import direction is checked in tests/test_import_boundaries.py)
    code = "import sys, kernels; assert 'triton' not in sys.modules, 'kernels imported triton eagerly'"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)


# ---------------------------------------------------------------- GPU: bf16 / fp32 at DiT widths


def gpu_test(fn):
    fn = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(fn)
    return pytest.mark.gpu(fn)


# fp32 is checked against float64, bf16 against the reference run in bf16 (the same rounding
# points). At DiT sizes the shift/scale/gate gradients sum ~4k tokens: entries reach |300| while
# some cancel to ~0.1, so their rounding error (fp32: ~5e-5, as large for torch's own fp32
# reference, measured; bf16: the reference rounds intermediate gradients that the kernels keep in
# fp32) exceeds any elementwise tolerance. It is bounded relative to the tensor's largest entry
# instead: fp32 1e-6 (~8 ulps of it), bf16 1e-2 (~2.5 ulps of it).
GPU_DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]


def _gpu_tol(dtype):
    if dtype == torch.float32:
        return dict(dtype=dtype, ref_dtype=torch.float64, scale_atol=1e-6)
    return dict(dtype=dtype, ref_dtype=dtype, scale_atol=1e-2)


@gpu_test
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("norm", ["layer", "rms"])
@pytest.mark.parametrize("N,D", [(4099, 1152), (1031, 2048)])
def test_gpu_modulated_norm(N, D, norm, dtype):
    inputs, grads = _modnorm_case(2, N, D, norm, "cuda")
    _check(
        lambda *a: K.modulated_norm(*a, norm=norm, backend="triton"),
        lambda *a: K.modulated_norm_reference(*a, norm=norm),
        inputs,
        grads,
        ["x", "shift", "scale"],
        **_gpu_tol(dtype),
    )


@gpu_test
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("norm", ["layer", "rms"])
@pytest.mark.parametrize("N,D", [(4099, 1152), (1031, 2048)])
def test_gpu_gated_residual_modulated_norm(N, D, norm, dtype):
    inputs = _fused_case(2, N, D, "cuda")
    _check(
        lambda *a: K.gated_residual_modulated_norm(*a, norm=norm, backend="triton"),
        lambda *a: K.gated_residual_modulated_norm_reference(*a, norm=norm),
        inputs,
        [_randn(2, N, D, device="cuda"), _randn(2, N, D, device="cuda")],
        ["x", "gate", "y", "shift", "scale"],
        **_gpu_tol(dtype),
    )


@gpu_test
@pytest.mark.parametrize("dtype", GPU_DTYPES)
def test_gpu_gated_residual(dtype):
    N, D = 4099, 1152
    inputs = [_randn(2, N, D, device="cuda"), _randn(2, D, device="cuda"), _randn(2, N, D, device="cuda")]
    _check(
        lambda *a: K.gated_residual(*a, backend="triton"),
        K.gated_residual_reference,
        inputs,
        [_randn(2, N, D, device="cuda")],
        ["x", "gate", "y"],
        **_gpu_tol(dtype),
    )


@gpu_test
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("grid,heads,hd", [((5, 29, 29), 16, 72), ((3, 16, 24), 16, 128)])
def test_gpu_rope(grid, heads, hd, dtype):
    q, k, cos, sin = _rope_case(2, heads, heads, grid, hd, "cuda")
    _check(
        lambda q, k: K.apply_rope(q, k, cos, sin, backend="triton"),
        lambda q, k: K.apply_rope_reference(q, k, cos, sin),
        [q, k],
        [_randn(*q.shape, device="cuda"), _randn(*k.shape, device="cuda")],
        ["q", "k"],
        **_gpu_tol(dtype),
    )


@gpu_test
def test_gpu_auto_backend_uses_triton():
    assert K.resolve_backend("auto", "cuda") == "triton"
