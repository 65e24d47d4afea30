"""Kernel section of the GPU check: correctness first, then Triton vs eager torch vs torch.compile.

    python -m benchmarks.bench_kernels [--quick] [--no-compile] [--device cuda|cpu]
    python benchmarks/bench_kernels.py --quick          (same, as a script)

Correctness: each Triton op against its reference (fp32 vs the float64 reference, bf16 vs the
bf16 reference), output and every input gradient, at DiT-XL width (B=2, 16k tokens x 1152,
16 heads x 72; 4k tokens with --quick). Timing (bf16): eager = the torch reference (what
`kernels: torch` runs), compile = torch.compile of that reference, triton = the fused op.
GB/s counts the minimal HBM traffic of each op (see make_cases), the same bytes for all three.
Goal: triton >= 1.3x eager and >= 1.0x compile. Exit status 1 when a check fails.
On a machine without CUDA it runs tiny shapes in the Triton interpreter as a smoke test.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `kernels` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import bench, env_line, print_table  # noqa: E402

Fn = Callable[..., object]
Shape = tuple[int, tuple[int, int, int], int, int, int]  # (B, (T, H, W) token grid, D, heads, head_dim)


@dataclass
class Case:
    """One op at one shape: inputs, the three implementations, and its minimal traffic."""

    name: str
    inputs: Callable[[torch.dtype], list[torch.Tensor]]
    eager: Fn  # the pure-torch reference
    triton: Fn  # the kernels op with backend="triton"
    elems_fwd: int  # minimal HBM traffic, in elements
    elems_bwd: int


def make_cases(B: int, grid: tuple[int, int, int], D: int, heads: int, hd: int, device: torch.device) -> list[Case]:
    import kernels as K

    N = grid[0] * grid[1] * grid[2]

    def rand(*shape, dtype, scale=1.0):
        return (torch.randn(*shape, device=device, dtype=torch.float32) * scale).to(dtype)

    def norm_inputs(dtype):
        return [rand(B, N, D, dtype=dtype), rand(B, D, dtype=dtype), rand(B, D, dtype=dtype, scale=0.5)]

    def fused_inputs(dtype):
        return [
            rand(B, N, D, dtype=dtype),
            rand(B, D, dtype=dtype),
            rand(B, N, D, dtype=dtype),
            rand(B, D, dtype=dtype),
            rand(B, D, dtype=dtype, scale=0.5),
        ]

    cos, sin = K.build_rope_3d_tables(grid, hd, device=device)

    def rope_inputs(dtype):
        return [rand(B, heads, N, hd, dtype=dtype), rand(B, heads, N, hd, dtype=dtype)]

    act = B * N * D
    cases = []
    for norm in ("layer", "rms"):
        cases.append(
            Case(
                f"modulated_norm[{norm}]",
                norm_inputs,
                lambda x, s, c, norm=norm: K.modulated_norm_reference(x, s, c, norm),
                lambda x, s, c, norm=norm: K.modulated_norm(x, s, c, norm, backend="triton"),
                elems_fwd=2 * act,
                elems_bwd=3 * act,
            )
        )  # fwd: x -> out; bwd: dout, x -> dx
    cases.append(
        Case(
            "gated_residual",
            lambda dt: [rand(B, N, D, dtype=dt), rand(B, D, dtype=dt), rand(B, N, D, dtype=dt)],
            K.gated_residual_reference,
            lambda x, g, y: K.gated_residual(x, g, y, backend="triton"),
            elems_fwd=3 * act,
            elems_bwd=3 * act,
        )
    )  # fwd: x, y -> h; bwd: dh, y -> dy (dx = dh)
    cases.append(
        Case(
            "gated_residual+norm[layer]",
            fused_inputs,
            lambda x, g, y, s, c: K.gated_residual_modulated_norm_reference(x, g, y, s, c, "layer"),
            lambda x, g, y, s, c: K.gated_residual_modulated_norm(x, g, y, s, c, "layer", backend="triton"),
            elems_fwd=4 * act,
            elems_bwd=6 * act,
        )
    )  # fwd: x, y -> h, out; bwd: dout, dh, h, y -> dx, dy
    qk = B * heads * N * hd
    cases.append(
        Case(
            f"rope_3d[hd={hd}]",
            rope_inputs,
            lambda q, k: K.apply_rope_reference(q, k, cos, sin),
            lambda q, k: K.apply_rope(q, k, cos, sin, backend="triton"),
            elems_fwd=4 * qk,
            elems_bwd=4 * qk,
        )
    )  # q, k -> q', k' (tables are L2-resident)
    return cases


def _as_tuple(out: object) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def _fwd_bwd(fn: Fn, inputs: Sequence[torch.Tensor]) -> Callable[[], object]:
    leaves = [t.detach().requires_grad_(True) for t in inputs]
    grads = [torch.randn_like(o) for o in _as_tuple(fn(*leaves))]

    def run():
        outs = _as_tuple(fn(*leaves))
        return torch.autograd.grad(outs, leaves, grads, allow_unused=True)

    return run


# (reference dtype, rtol, atol, atol relative to the tensor's largest entry): the same rule as
# the gpu tests in tests/test_kernels.py (see there why the last term exists).
TOLERANCES = {
    torch.float32: (torch.float64, 1.3e-6, 1e-5, 1e-6),
    torch.bfloat16: (torch.bfloat16, 1.6e-2, 1.6e-2, 1e-2),
}


def check(case: Case, dtype: torch.dtype) -> tuple[float, bool]:
    """Worst |triton - reference| / tolerance over the outputs and every input gradient."""
    ref_dtype, rtol, atol, scale_atol = TOLERANCES[dtype]
    torch.manual_seed(0)
    inputs = case.inputs(dtype)
    results = []
    for fn, dt in ((case.triton, dtype), (case.eager, ref_dtype)):
        leaves = [t.detach().to(dt).requires_grad_(True) for t in inputs]
        outs = _as_tuple(fn(*leaves))
        torch.manual_seed(1)
        grads = [torch.randn(o.shape, device=o.device).to(dt) for o in outs]
        results.append(list(outs) + list(torch.autograd.grad(outs, leaves, grads, allow_unused=True)))
    worst = 0.0
    for got, want in zip(*results):
        if want is None:
            continue
        want = want.double()
        tol = atol + scale_atol * want.abs().max() + rtol * want.abs()
        worst = max(worst, ((got.double() - want).abs() / tol).max().item())
    return worst, worst <= 1.0


def correctness(shape: Shape, device: torch.device) -> bool:
    dtypes = (torch.bfloat16, torch.float32) if device.type == "cuda" else (torch.float32,)
    rows, ok = [], True
    for case in make_cases(*shape, device):
        for dtype in dtypes:
            err, passed = check(case, dtype)
            ok &= passed
            rows.append([case.name, str(dtype).removeprefix("torch."), f"{err:.2f}", "PASS" if passed else "FAIL"])
    B, grid, D, heads, hd = shape
    print_table(
        f"correctness (B={B} grid={grid} D={D} heads={heads} hd={hd}): max error / tolerance "
        "over the output and every input gradient",
        ["op", "dtype", "err/tol", ""],
        rows,
    )
    return ok


def timings(shape: Shape, device: torch.device, reps: int, use_compile: bool) -> None:
    on_gpu = device.type == "cuda"
    dtype = torch.bfloat16 if on_gpu else torch.float32
    esize = torch.empty((), dtype=dtype).element_size()
    rows = []
    for case in make_cases(*shape, device):
        torch._dynamo.reset()  # a fresh compile cache per case: no recompile-limit fallbacks to eager
        inputs = case.inputs(dtype)
        impls = {"eager": case.eager, "triton": case.triton}
        if use_compile:
            impls["compile"] = torch.compile(case.eager, dynamic=False)
        for mode in ("fwd", "fwd+bwd"):
            nbytes = esize * (case.elems_fwd + (case.elems_bwd if mode == "fwd+bwd" else 0))
            ms = {}
            for name, fn in impls.items():
                leaves = [t.detach().requires_grad_(True) for t in inputs]
                run = (lambda fn=fn, leaves=leaves: fn(*leaves)) if mode == "fwd" else _fwd_bwd(fn, leaves)
                ms[name] = bench(run, device, reps)
            vs_eager = ms["eager"] / ms["triton"]
            vs_comp = ms["compile"] / ms["triton"] if "compile" in ms else float("nan")
            goal = "ok" if vs_eager >= 1.3 and (vs_comp >= 1.0 or not use_compile) else "MISS"
            rows.append(
                [
                    case.name,
                    mode,
                    ms["eager"],
                    ms.get("compile", float("nan")),
                    ms["triton"],
                    nbytes / ms["triton"] / 1e6,
                    vs_eager,
                    vs_comp,
                    goal if on_gpu else "-",
                ]
            )
    B, grid, D, heads, hd = shape
    print_table(
        f"timings {str(dtype).removeprefix('torch.')}, B={B} grid={grid} D={D} heads={heads} hd={hd} "
        f"(ms, median of {reps}; GB/s of the triton op; goal: >=1.3x eager, >=1x compile)",
        ["op", "mode", "eager", "compile", "triton", "GB/s", "x eager", "x compile", "goal"],
        rows,
    )


def resample_timings(device: torch.device, reps: int, use_compile: bool, quick: bool) -> None:
    """The DFM pyramid resampling has no Triton kernel (docs/kernels.md says why); these numbers
    are there to revisit that: it runs on (B, 16, T, H, W) latents, once per training step."""
    try:
        from dfm_video.dfm.pyramid import downsample, upsample
    except ImportError as e:  # the GPU image may lack what dfm_video needs one day
        print(f"\n## pyramid resampling: skipped ({e})")
        return
    on_gpu = device.type == "cuda"
    dtype = torch.bfloat16 if on_gpu else torch.float32
    shape = (2, 16, 17, 64, 64) if on_gpu else (1, 2, 3, 4, 6)  # a 512px causal-VAE latent
    rows = []
    for factor in ((1, 2, 2), (2, 2, 2)):
        fine = torch.randn(shape, device=device, dtype=dtype)
        coarse = downsample(fine, factor)
        for name, fn, x in (("down", downsample, fine), ("up", upsample, coarse)):
            torch._dynamo.reset()
            op = lambda x, fn=fn, factor=factor: fn(x, factor)  # noqa: E731
            eager = bench(lambda: op(x), device, reps)
            comp = bench(lambda c=torch.compile(op, dynamic=False): c(x), device, reps) if use_compile else float("nan")
            nbytes = (fine.numel() + coarse.numel()) * fine.element_size()
            rows.append([f"{name} {factor}", tuple(x.shape), eager, comp, nbytes / eager / 1e6])
        if quick:
            break
    print_table(
        f"pyramid resampling (dfm_video.dfm.pyramid, torch only, {str(dtype).removeprefix('torch.')}, "
        f"ms, median of {reps})",
        ["op", "input", "eager", "compile", "eager GB/s"],
        rows,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="4k instead of 16k tokens, fewer repetitions")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (always skipped on CPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    if not on_gpu:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before any Triton kernel is imported
    from kernels import triton_unavailable_reason

    print(f"# kernels benchmark: {env_line(device)}")
    reason = triton_unavailable_reason(device)
    if reason is not None:
        print(f"cannot run the Triton kernels: {reason}")
        return 1
    # (B, token grid (T, H, W), D, heads, head_dim): DiT-XL width at 16k tokens (4k with --quick).
    if on_gpu:
        shape: Shape = (2, (16, 16, 16) if args.quick else (16, 32, 32), 1152, 16, 72)
    else:
        shape = (2, (1, 5, 7), 40, 2, 12)
    reps = (20 if args.quick else 50) if on_gpu else 2
    use_compile = on_gpu and not args.no_compile

    ok = correctness(shape, device)
    timings(shape, device, reps, use_compile)
    resample_timings(device, reps, use_compile, args.quick)
    if not ok:
        print("\nCORRECTNESS FAILED: see the table above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
