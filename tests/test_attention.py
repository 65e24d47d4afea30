"""Attention dispatch: every available backend vs a float64 softmax reference; resolution rules."""

from __future__ import annotations

import math

import pytest
import torch

from dfm_video.models.attention import attention, available_attention_backends, resolve_attention_backend

CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(Dh)) v in float64; q, k, v (B, Hd, N, Dh)."""
    q, k, v = q.double(), k.double(), v.double()
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return w @ v


def _qkv(device: str, dtype: torch.dtype, shape=(2, 3, 77, 64), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(device=device, dtype=dtype).requires_grad_() for _ in range(3)]


def _cases():
    for device in DEVICES:
        for backend in available_attention_backends(device):
            dtypes = [torch.float32] if device == "cpu" else [torch.bfloat16, torch.float16]
            if device == "cuda" and backend == "sdpa":
                dtypes.append(torch.float32)
            for dtype in dtypes:
                marks = [pytest.mark.gpu] if device == "cuda" else []
                name = f"{device}-{backend}-{str(dtype).removeprefix('torch.')}"
                yield pytest.param(device, backend, dtype, marks=marks, id=name)


TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


@pytest.mark.parametrize("device,backend,dtype", list(_cases()))
def test_backend_matches_float64_reference(device: str, backend: str, dtype: torch.dtype) -> None:
    assert resolve_attention_backend(backend, device) == backend
    q, k, v = _qkv(device, dtype)
    out = attention(q, k, v, backend)
    assert out.shape == q.shape and out.dtype == dtype
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = reference_attention(q64, k64, v64)
    tol = TOL[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    # gradients too: training runs the backward of the same kernel
    g = torch.Generator().manual_seed(1)
    dout = torch.randn(q.shape, generator=g).to(device=device)
    grads = torch.autograd.grad(out, (q, k, v), dout.to(out.dtype))
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), dout.to(out.dtype).double())
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a.double(), b, rtol=5 * tol, atol=5 * tol)


def test_cpu_has_only_sdpa_and_auto_picks_it() -> None:
    assert available_attention_backends("cpu") == ["sdpa"]
    assert resolve_attention_backend("auto", "cpu") == "sdpa"


@pytest.mark.parametrize("backend,package", [("flash", "flash-attn"), ("xformers", "xformers")])
def test_explicit_unavailable_backend_names_the_package(backend: str, package: str) -> None:
    with pytest.raises(RuntimeError, match=package):
        resolve_attention_backend(backend, "cpu")


def test_unknown_backend_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown backend 'flex'"):
        resolve_attention_backend("flex", "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_auto_on_cuda_prefers_flash_when_available() -> None:
    avail = available_attention_backends("cuda")
    assert "sdpa" in avail
    assert resolve_attention_backend("auto", "cuda") == ("flash" if "flash" in avail else "sdpa")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_half_only_backends_fall_back_for_float32() -> None:
    for backend in available_attention_backends("cuda"):
        q, k, v = _qkv("cuda", torch.float32)
        out = attention(q, k, v, backend)
        torch.testing.assert_close(out.double(), reference_attention(q, k, v), rtol=1e-3, atol=1e-3)
