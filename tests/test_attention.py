"""Attention dispatch: every backend that runs here vs a float64 softmax reference (forward and
gradients); the `auto` rule and its measured table; clear errors for backends that cannot run."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
import torch.nn.functional as F

from dfm_video.models.attention import (
    BACKENDS,
    attention,
    available_attention_backends,
    padded_head_dim,
    pick_auto,
    resolve_attention_backend,
)
from dfm_video.models.attention_table import TABLE_PATH, load_table, pick_measured, write_row

CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])
HEAD_DIMS = (64, 72)


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
        for head_dim in HEAD_DIMS:
            for backend in available_attention_backends(device, head_dim):
                dtypes = [torch.float32] if device == "cpu" else [torch.bfloat16, torch.float16]
                for dtype in dtypes:
                    marks = [pytest.mark.gpu] if device == "cuda" else []
                    name = f"{device}-{backend}-d{head_dim}-{str(dtype).removeprefix('torch.')}"
                    yield pytest.param(device, backend, head_dim, dtype, marks=marks, id=name)


TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def check_against_reference(fn, device: str, head_dim: int, dtype: torch.dtype) -> None:
    q, k, v = _qkv(device, dtype, shape=(2, 3, 77, head_dim))
    out = fn(q, k, v)
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


@pytest.mark.parametrize("device,backend,head_dim,dtype", list(_cases()))
def test_backend_matches_float64_reference(device: str, backend: str, head_dim: int, dtype: torch.dtype) -> None:
    assert resolve_attention_backend(backend, device, head_dim) == backend
    check_against_reference(lambda q, k, v: attention(q, k, v, backend), device, head_dim, dtype)


def test_cpu_runs_sdpa_and_its_flash_and_math_kernels() -> None:
    assert available_attention_backends("cpu", 72) == ["sdpa", "sdpa_flash", "sdpa_math"]


def test_padding_the_head_dim_keeps_the_result() -> None:
    # FlashAttention-4's fallback for head dims it refuses; checked here around SDPA's math kernel.
    def kernel(q, k, v, softmax_scale):
        assert q.shape[-1] == 80  # 72 padded to a multiple of 16
        return F.scaled_dot_product_attention(q, k, v, scale=softmax_scale)

    check_against_reference(padded_head_dim(kernel, 16), "cpu", 72, torch.float32)


def test_auto_without_a_measurement_is_sdpa_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dfm_video.models.attention")
    assert resolve_attention_backend("auto", "cpu", 40) == "sdpa"
    assert resolve_attention_backend("auto", "cpu", 40) == "sdpa"
    lines = [r.getMessage() for r in caplog.records if "model.attention=auto" in r.getMessage()]
    assert len(lines) == 1 and "no measurement for 'cpu' at head dim 40" in lines[0], lines


def test_auto_picks_the_fastest_measured_backend_that_runs(tmp_path) -> None:
    table = tmp_path / "t.json"
    write_row("cpu", 72, {"sdpa": 1.0, "sdpa_math": 3.0, "sdpa_flash": 2.0, "flash4": 9.0}, 512, 4, "fp32", table)
    best, why = pick_auto("cpu", 72, table)
    assert best == "sdpa_math"
    assert "flash4 (9)" in why  # faster, but not runnable here: said, never silently
    assert pick_auto("cpu", 64, table)[0] == "sdpa"  # no row for this head dim: the rule
    assert pick_measured("NVIDIA H200", 72, ["sdpa"], table) is None


def test_committed_table_is_valid() -> None:
    for dev, rows in load_table(TABLE_PATH).items():
        for dh, row in rows.items():
            assert set(row["tflops"]) <= set(BACKENDS), (dev, dh, row)
    json.loads(TABLE_PATH.read_text())


@pytest.mark.parametrize(
    "backend,needs",
    [
        ("flash4", "flash-attn-4"),
        ("flash2", "flash-attn 2"),
        ("flash", "flash-attn-4"),
        ("xformers", "xformers"),
        ("sdpa_cudnn", "cuDNN"),
        ("sdpa_efficient", "memory-efficient"),
    ],
)
def test_explicit_backend_that_cannot_run_names_what_it_needs(backend: str, needs: str) -> None:
    with pytest.raises(ValueError, match=f"model.attention='{backend}' cannot run on cpu.*{needs}.*reason: "):
        resolve_attention_backend(backend, "cpu", 72)


def test_unknown_backend_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown backend 'flex'"):
        resolve_attention_backend("flex", "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_auto_on_cuda_is_the_table_pick_or_sdpa() -> None:
    for head_dim in HEAD_DIMS:
        best, _ = pick_auto("cuda", head_dim)
        assert resolve_attention_backend("auto", "cuda", head_dim) == best
        assert best in available_attention_backends("cuda", head_dim)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_half_only_backends_fall_back_for_float32() -> None:
    for backend in available_attention_backends("cuda", 64):
        q, k, v = _qkv("cuda", torch.float32)
        out = attention(q, k, v, backend)
        torch.testing.assert_close(out.double(), reference_attention(q, k, v), rtol=1e-3, atol=1e-3)
