"""One DiT3D-XL layer vs sequence length: what Ulysses sequence parallelism leaves each GPU to do.

    python benchmarks/bench_layer_scaling.py            (CUDA, bf16; ~30 s on an H100; timing bounded by --budget-s 40)
    python benchmarks/bench_layer_scaling.py --quick    (CPU smoke test, tiny widths; < 1 min)

One GPU cannot time the all-to-all itself (docs/performance.md models it in the section on sequence parallelism); this
measures the compute around it. The layer is the model's own `dfm_video.models.dit.DiTBlock`
(width 1152, 16 heads, MLP 4x, QK-norm, 3D RoPE, fused Triton ops with `kernels: auto`), batch 1,
bf16 weights and activations, at 13,312 (k700: 13 x 32 x 32), 31,744 (121 frames at 512 px:
31 x 32 x 32) and 65,536 (64 x 32 x 32) tokens. Every row is fwd + bwd (median ms, CUDA events,
L2 flushed), the achieved TFLOP/s (analytic matmul FLOPs, 3x forward) and the peak memory above
the inputs:
    block       the whole DiTBlock (adaLN, attention sub-layer, MLP sub-layer)
    attn        the attention sub-layer: qkv, QK-norm, RoPE, attention, out-proj (SelfAttention)
    mlp         the MLP sub-layer: fc1, GELU, fc2
    core/hN     the attention core alone (q, k, v -> out) with 16/N heads over ALL tokens: what
                one rank runs between the two all-to-alls under N-way Ulysses (N = 1, 2, 4, 8)
The token-parallel parts (everything but the core) run on L/N tokens per rank under Ulysses:
their time at L/N is the `block - attn-core` share scaled by 1/N (linear in tokens).
Needs only torch (+ triton for the fused ops); no deepspeed, ray or diffusers.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `dfm_video` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kernels  # noqa: E402
from benchmarks.common import bench, env_line, print_table  # noqa: E402
from dfm_video.models.attention import attention, resolve_attention_backend  # noqa: E402
from dfm_video.models.dit import DiTBlock  # noqa: E402
from dfm_video.models.ops import modulated_norm, rope_tables  # noqa: E402

XL = dict(dim=1152, heads=16, mlp_ratio=4.0)
GPU_GRIDS = [(13, 32, 32), (31, 32, 32), (64, 32, 32)]  # 13,312 / 31,744 / 65,536 tokens
QUICK = dict(dim=64, heads=8, mlp_ratio=4.0)
QUICK_GRIDS = [(2, 8, 8), (4, 8, 8), (8, 8, 8)]  # 128 / 256 / 512 tokens
SP_SIZES = (1, 2, 4, 8)


def _peak_gib(fn, device: torch.device) -> float:
    """Peak memory of one fwd+bwd above what was allocated before it (CUDA only; nan on CPU)."""
    if device.type != "cuda":
        return float("nan")
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**30


def fwd_bwd_flops(part: str, L: int, D: int, heads: int, mlp_ratio: float) -> float:
    """Analytic matmul FLOPs of one fwd+bwd (3x forward; 2 per multiply-add) of a row's part."""
    hidden = int(D * mlp_ratio)
    attn_lin, mlp_lin, core = 8 * L * D * D, 4 * L * D * hidden, 4 * L * L * (D // heads)
    if part == "block":
        return 3.0 * (attn_lin + mlp_lin + core * heads)
    if part == "attn":
        return 3.0 * (attn_lin + core * heads)
    if part == "mlp":
        return 3.0 * mlp_lin
    k = int(part.split("/h")[1].split()[0])  # "core/h8 (N=2)": 8 heads
    return 3.0 * core * k


def measure(grid, spec: dict, device: torch.device, dtype: torch.dtype, backend: str, kb: str, reps: int) -> list[list]:
    """Rows (part, tokens, ms, peak GiB) for one sequence length."""
    D, H = spec["dim"], spec["heads"]
    Dh = D // H
    L = math.prod(grid)
    torch.manual_seed(0)
    block = DiTBlock(D, H, spec["mlp_ratio"], qk_norm=True).to(device=device, dtype=dtype)
    with torch.no_grad():  # adaLN is zero-initialised: give it values so every path does work
        block.adaLN_modulation[-1].weight.normal_(0, 0.02)
    x = torch.randn(1, L, D, device=device, dtype=dtype, requires_grad=True)
    c = torch.randn(1, D, device=device, dtype=dtype)
    cos, sin = rope_tables(grid, Dh, 10000.0, device)
    shift, scale = (torch.randn(1, D, device=device, dtype=dtype) * 0.1 for _ in range(2))
    a = modulated_norm(x.detach(), shift, scale, kb).requires_grad_(True)
    g_out = torch.randn(1, L, D, device=device, dtype=dtype)

    def zero() -> None:
        for p in block.parameters():
            p.grad = None
        for t in (x, a):
            t.grad = None

    def run_block() -> None:
        zero()
        block(x, c, cos, sin, backend, kb).backward(g_out)

    def run_attn() -> None:
        zero()
        block.attn(a, cos, sin, backend, kb).backward(g_out)

    def run_mlp() -> None:
        zero()
        block.fc2(F.gelu(block.fc1(a), approximate="tanh")).backward(g_out)

    rows = []
    for name, fn in (("block", run_block), ("attn", run_attn), ("mlp", run_mlp)):
        ms = bench(fn, device, reps, warmup=2)
        rows.append([name, L, ms, _peak_gib(fn, device)])
    block = None  # free the device memory before the attention-core runs
    for n in SP_SIZES:
        if H % n:
            continue
        q, k, v = (torch.randn(1, H // n, L, Dh, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        go = torch.randn(1, H // n, L, Dh, device=device, dtype=dtype)

        def run_core() -> None:
            for t in (q, k, v):
                t.grad = None
            attention(q, k, v, backend).backward(go)

        ms = bench(run_core, device, reps, warmup=2)
        rows.append([f"core/h{H // n} (N={n})", L, ms, _peak_gib(run_core, device)])
        q = k = v = go = None
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CPU smoke test with a tiny layer")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda unless --quick)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per row (default 5 GPU, 2 quick)")
    p.add_argument(
        "--budget-s", type=float, default=40.0, help="skip a length that would end past this many s of timing"
    )
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.quick or not torch.cuda.is_available() else "cuda"))
    if device.type == "cuda" and not args.quick:
        spec, grids, dtype = XL, GPU_GRIDS, torch.bfloat16
    else:
        spec, grids, dtype = QUICK, QUICK_GRIDS, torch.float32
    reps = args.reps or (5 if device.type == "cuda" else 2)
    backend = resolve_attention_backend("auto", device)
    kb = kernels.resolve_backend("auto", device)
    print(env_line(device))
    print(
        f"DiTBlock width {spec['dim']}, {spec['heads']} heads, mlp {spec['mlp_ratio']}x, {dtype}, batch 1, "
        f"attention {backend}, kernels {kb}, {reps} reps (median), fwd+bwd"
    )
    # Untimed warm-up on a tiny grid: compiles the Triton kernels and probes the attention
    # backend, so neither lands in the first length's time or in the budget estimate below.
    t0 = time.perf_counter()
    measure((1, 8, 8), spec, device, dtype, backend, kb, 1)
    print(f"warm-up (kernel compilation) {time.perf_counter() - t0:.1f} s")
    start = time.perf_counter()
    rows, last, prev_len = [], 0.0, 0
    for grid in grids:
        elapsed = time.perf_counter() - start
        # attention grows ~L^2: the next length costs about (L_next / L_prev)^2 the previous one
        if rows and elapsed + last * (math.prod(grid) / prev_len) ** 2 > args.budget_s:
            rows.append(["skipped (budget)", math.prod(grid), float("nan"), float("nan")])
            continue
        t0 = time.perf_counter()
        try:
            new = measure(grid, spec, device, dtype, backend, kb, reps)
        except torch.OutOfMemoryError as exc:  # report and go on: the table says where memory ends
            print(f"  L={math.prod(grid)}: out of memory ({str(exc).splitlines()[0]})", flush=True)
            new = [["OOM", math.prod(grid), float("nan"), float("nan")]]
            torch.cuda.empty_cache()
        last, prev_len = time.perf_counter() - t0, math.prod(grid)
        for r in new:
            print(f"  {r[0]:<18} L={r[1]:>6}  {r[2]:9.2f} ms  peak {r[3]:.2f} GiB", flush=True)
        rows += new
        if device.type == "cuda":
            torch.cuda.empty_cache()
    table = []
    by_len: dict[int, dict[str, float]] = {}
    for name, L, ms, _gib in rows:
        by_len.setdefault(L, {})[name] = ms
    for name, L, ms, gib in rows:
        ref = by_len[L].get("block", float("nan"))
        measured = ms == ms and name not in ("OOM",) and not name.startswith("skipped")
        tflops = (
            fwd_bwd_flops(name, L, spec["dim"], spec["heads"], spec["mlp_ratio"]) / (ms * 1e-3) / 1e12
            if measured
            else float("nan")
        )
        table.append([name, L, ms, tflops, gib, ms / ref if measured and ref == ref else float("nan")])
    print_table(
        "DiT3D layer fwd+bwd vs tokens (core/hK: attention core with K heads over all tokens)",
        ["part", "tokens", "ms", "TFLOP/s", "peak GiB", "x block"],
        table,
    )
    print(f"\ntotal {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
