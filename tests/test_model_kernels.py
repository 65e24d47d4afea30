"""DiT3D through the `kernels: auto|triton|torch` switch: the Triton path equals the torch one.

On CPU the Triton kernels run in the interpreter (TRITON_INTERPRET=1, set by tests/triton_helpers.py,
which conftest.py and this module import before anything imports triton) in float32 on a tiny 2-stage
model; the interpreter's bf16 arithmetic is wrong, so bf16 is covered by the `gpu` tests, which
skip without CUDA. The Triton-path tests skip when triton is not importable.

The interpreter must be requested before `triton` is first imported: triton's own standard
library (`tl.sum`, ...) is jitted at import, for GPUs unless TRITON_INTERPRET=1. A test module
collected earlier can import it (`torch.utils.flop_counter` does, e.g. in
tests/test_model_flops_params.py); then the in-process Triton tests skip and
`test_triton_path_in_a_fresh_process` runs them again in a fresh interpreter.
"""

from __future__ import annotations

import os
import pathlib
import re
import sys

import pytest
import torch
from proc_helpers import run_group
from triton_helpers import DEV, TRITON_UNAVAILABLE, needs_triton

from dfm_video.dfm import decompose
from dfm_video.models import build_model
from kernels import _triton

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _stale_triton_import() -> str | None:
    """Why the interpreter cannot run kernels in this process, or None (see the module docstring)."""
    tl = sys.modules.get("triton.language")
    if DEV == "cuda" or TRITON_UNAVAILABLE is not None or tl is None or type(tl.sum).__name__ == "InterpretedFunction":
        return None
    return "triton was imported before TRITON_INTERPRET=1 was set, so the interpreter cannot call tl.sum"


_STALE = _stale_triton_import()
# The tests that run Triton kernels in this process (their names contain "triton_model").
in_process_triton = pytest.mark.skipif(
    _STALE is not None, reason=f"{_STALE}; test_triton_path_in_a_fresh_process runs this test instead"
)


from dfm_video.config.schema import DFMConfig, ModelConfig  # noqa: E402

C = 4
SPATIAL = DFMConfig(num_stages=2, factors=[(1, 2, 2)], stage_probs=[0.5, 0.5])
SPATIO_TEMPORAL = DFMConfig(num_stages=2, factors=[(2, 2, 2)], stage_probs=[0.5, 0.5], temporal_mode="causal")


def tiny_cfg(**kw) -> ModelConfig:
    # eager blocks unless a test asks (model.compile=auto would compile on CUDA and pick the references)
    base = dict(depth=2, hidden_size=48, num_heads=4, in_channels=C, num_classes=10, attention="sdpa", compile=False)
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread. Defined here, not taken from conftest.py, because
    benchmarks/gpu_check.sh and the fresh-process test below run this file with --noconftest."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _twin_models(dfm_cfg, device: str = DEV, dtype: torch.dtype = torch.float32, **kw):
    """(torch model, triton model) with identical, perturbed weights (the zero-initialised adaLN
    gates and heads would otherwise hide every op behind a zero)."""
    torch.manual_seed(0)
    ref = build_model(tiny_cfg(kernels="torch", **kw), dfm_cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    tri = build_model(tiny_cfg(kernels="triton", **kw), dfm_cfg)
    tri.load_state_dict(ref.state_dict())
    return ref.to(device=device, dtype=dtype), tri.to(device=device, dtype=dtype)


def _inputs(dfm_cfg, shape, device: str = DEV, dtype: torch.dtype = torch.float32, B: int = 2):
    g = torch.Generator().manual_seed(0)
    levels = decompose(torch.randn(B, C, *shape, generator=g), dfm_cfg.factors, dfm_cfg.temporal_mode)
    t = torch.rand(B, dfm_cfg.num_stages, generator=g)
    active = torch.ones(B, dfm_cfg.num_stages, dtype=torch.bool)
    active[0, 1:] = False  # sample 0 trains stage 1: masking goes through the same ops
    y = torch.tensor([3, 10][:B])
    return [lv.to(device, dtype) for lv in levels], t.to(device), active.to(device), y.to(device)


def _run(model, levels, t, active, y):
    """Outputs, and the gradients of every parameter and input level for a fixed random loss."""
    leaves = [lv.detach().clone().requires_grad_(True) for lv in levels]
    out = model(leaves, t, active, y)
    g = torch.Generator().manual_seed(2)
    weights = [torch.randn(o.shape, generator=g).to(o) for o in out]
    loss = sum((o.float() * w.float()).sum() for o, w in zip(out, weights))
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    grads.update({f"level{s}": lv.grad for s, lv in enumerate(leaves)})
    return out, grads


def _spy_triton(monkeypatch) -> dict[str, int]:
    """Count the Triton launches (forward and backward of every op) so a test can tell that the
    triton path really ran, not a silent fallback to the references."""
    from kernels import _gated_residual_triton, _modulated_norm_triton, _rope_triton

    calls: dict[str, int] = {}
    for mod, names in (
        (_modulated_norm_triton, ("forward", "backward")),
        (_gated_residual_triton, ("forward", "backward")),
        (_rope_triton, ("rotate",)),
    ):
        for name in names:
            fn, key = getattr(mod, name), f"{mod.__name__.rsplit('.', 1)[-1].strip('_')}.{name}"

            def spy(*a, _fn=fn, _key=key, **k):
                calls[_key] = calls.get(_key, 0) + 1
                return _fn(*a, **k)

            monkeypatch.setattr(mod, name, spy)
    return calls


# fp32 vs fp32: both paths compute every op in float32 and differ only in reduction order
# (LayerNorm statistics, the token sums of the shift/scale/gate gradients). Parameter gradients
# sum over tokens: entries reach |20| while others cancel to ~1e-3, so their rounding error is
# bounded relative to the tensor's largest entry (measured worst: 1.5e-6 of it, ~12 ulps), as in
# tests/test_kernels.py's GPU tests, on top of torch's elementwise float32 tolerance.
FP32_RTOL, FP32_ATOL, FP32_MAX_REL = 1.3e-6, 1e-5, 4e-6


def _assert_close_fp32(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    atol = FP32_ATOL + FP32_MAX_REL * want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=FP32_RTOL, atol=atol, msg=lambda m: f"{what}: {m}")


@needs_triton
@in_process_triton
@pytest.mark.parametrize(
    "dfm_cfg,patch,shape,kw",
    [
        pytest.param(SPATIAL, (1, 2, 2), (3, 8, 8), {}, id="spatial-qknorm"),
        # without QK-norm, q and k reach the RoPE kernel as strided views of the qkv projection
        pytest.param(
            SPATIO_TEMPORAL, (2, 2, 2), (5, 8, 8), dict(qk_norm=False, hidden_size=64), id="causal-strided-qk"
        ),
    ],
)
def test_triton_model_matches_torch_forward_and_grads(monkeypatch, dfm_cfg, patch, shape, kw) -> None:
    ref, tri = _twin_models(dfm_cfg, patch_size=patch, **kw)
    assert ref.kernels_backend(torch.device(DEV)) == "torch"
    assert tri.kernels_backend(torch.device(DEV)) == "triton"
    levels, t, active, y = _inputs(dfm_cfg, shape)
    want_out, want_grads = _run(ref, levels, t, active, y)
    calls = _spy_triton(monkeypatch)
    got_out, got_grads = _run(tri, levels, t, active, y)

    depth, stages = tri.model_cfg.depth, tri.num_stages
    # per block: modulated norm + fused residual/norm, RoPE, gated residual; plus one norm per head
    assert calls["modulated_norm_triton.forward"] == 2 * depth + stages
    assert calls["modulated_norm_triton.backward"] == 2 * depth + stages
    assert calls["gated_residual_triton.forward"] == calls["gated_residual_triton.backward"] == depth
    assert calls["rope_triton.rotate"] == 2 * depth  # forward + backward
    for s, (g, w) in enumerate(zip(got_out, want_out)):
        assert w.abs().max() > 0  # the comparison is not between zeros
        _assert_close_fp32(g, w, f"stage {s} output")
    assert got_grads.keys() == want_grads.keys()
    for name, w in want_grads.items():
        g = got_grads[name]
        assert g is not None and w is not None, name
        _assert_close_fp32(g, w, f"d{name}")


@needs_triton
@in_process_triton
def test_triton_model_with_checkpointing_matches_without(monkeypatch) -> None:
    """Activation checkpointing recomputes the Triton forward in backward: same gradients."""
    _, plain = _twin_models(SPATIAL)
    _, ckpt = _twin_models(SPATIAL, activation_checkpointing=True)
    levels, t, active, y = _inputs(SPATIAL, (3, 8, 8))
    _, want = _run(plain, levels, t, active, y)
    calls = _spy_triton(monkeypatch)
    _, got = _run(ckpt, levels, t, active, y)
    depth = ckpt.model_cfg.depth
    assert calls["rope_triton.rotate"] == 3 * depth  # forward, recomputed forward, backward
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-7, msg=lambda m, n=name: f"d{n}: {m}")


@needs_triton
@pytest.mark.skipif(_STALE is None, reason="the Triton-path tests ran in this process")
def test_triton_path_in_a_fresh_process() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = run_group(
        [
            sys.executable,
            "-m",
            "pytest",
            __file__,
            "-q",
            "-p",
            "no:cacheprovider",
            "--noconftest",
            "-k",
            "triton_model",
        ],
        600,
        cwd=ROOT,
        env=env,
    )
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert proc.returncode == 0 and passed and int(passed.group(1)) >= 3, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_auto_picks_torch_on_cpu() -> None:
    # Even with TRITON_INTERPRET=1: the interpreter is for tests, never chosen for speed.
    torch.manual_seed(0)
    auto = build_model(tiny_cfg(kernels="auto"), SPATIAL)
    ref = build_model(tiny_cfg(kernels="torch"), SPATIAL)
    ref.load_state_dict(auto.state_dict())
    assert auto.kernels_backend(torch.device("cpu")) == "torch"
    levels, t, active, y = _inputs(SPATIAL, (3, 8, 8), device="cpu")
    for a, b in zip(auto(levels, t, active, y), ref(levels, t, active, y)):
        assert torch.equal(a, b)


def test_auto_with_compile_uses_the_references(monkeypatch) -> None:
    # Pretend Triton can run on CUDA: `auto` then picks it, unless the blocks are compiled.
    monkeypatch.setattr(_triton, "triton_unavailable_reason", lambda device: None)
    cuda = torch.device("cuda", 0)
    assert build_model(tiny_cfg(kernels="auto"), SPATIAL).kernels_backend(cuda) == "triton"
    assert build_model(tiny_cfg(kernels="auto", compile=True), SPATIAL).kernels_backend(cuda) == "torch"
    assert build_model(tiny_cfg(kernels="triton", compile=True), SPATIAL).kernels_backend(cuda) == "triton"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_explicit_triton_without_cuda_raises(monkeypatch) -> None:
    levels, t, active, y = _inputs(SPATIAL, (1, 8, 8), device="cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # no interpreter either
    monkeypatch.setattr(_triton, "_triton_importable", lambda: True)  # the device is what is missing
    with pytest.raises(RuntimeError, match=r"model\.kernels='triton' on cpu: .*need a CUDA device"):
        build_model(tiny_cfg(kernels="triton"), SPATIAL)(levels, t, active, y)
    monkeypatch.setattr(_triton, "_triton_importable", lambda: False)
    with pytest.raises(RuntimeError, match=r"model\.kernels='triton' on cpu: .*'triton' package is not importable"):
        build_model(tiny_cfg(kernels="triton"), SPATIAL)(levels, t, active, y)


# A finder that makes the packages the GPU image lacks unimportable, then imports the model
# package and the config schema and runs a forward + backward. The config loader may load: it
# imports yaml only when a file or override is read.
_BLOCKED = ("yaml", "einops", "tqdm", "deepspeed", "ray", "av", "diffusers", "decord", "triton")
_IMPORT_CHECK = f"""
import importlib.abc, importlib.util, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {_BLOCKED!r}:
            raise ImportError(f"blocked for this test: {{name}}")
        return None

sys.meta_path.insert(0, Block())
import torch
import dfm_video.models as models
import dfm_video.config.schema as schema
cfg = schema.ModelConfig(depth=1, hidden_size=48, num_heads=4, in_channels=2, num_classes=3, attention="auto")
model = models.build_model(cfg, schema.DFMConfig(num_stages=1, factors=[], stage_probs=[1.0]))
out = model([torch.randn(1, 2, 1, 4, 4)], torch.rand(1, 1), torch.ones(1, 1, dtype=torch.bool), torch.tensor([0]))
out[0].sum().backward()
leaked = sorted(m for m in sys.modules if m.split(".")[0] in {_BLOCKED!r})
assert not leaked, leaked
print("ok")
"""


def test_model_imports_and_runs_with_only_torch() -> None:
    """The GPU image has torch (+ triton) but no yaml/einops/tqdm/deepspeed/ray/av/diffusers."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)
    proc = run_group([sys.executable, "-c", _IMPORT_CHECK], 120, cwd=ROOT, env=env)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="a CPU smoke test; on a GPU benchmarks/gpu_check.sh runs bench_step itself"
)
def test_bench_step_quick_runs_on_cpu() -> None:
    """The GPU check's training-step section runs end to end (tiny model; Triton rows when possible)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = run_group(
        [sys.executable, "-m", "benchmarks.bench_step", "--quick", "--device", "cpu"], 300, cwd=ROOT, env=env
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {
        line.split()[0]: line.split()
        for line in proc.stdout.splitlines()
        if line.split() and line.split()[0] in ("baseline", "kernels-off", "FM")
    }
    assert float(rows["baseline"][5]) > 0 and rows["FM"][3] == "1"  # ms/step; FM has 1 stage
    if _triton._triton_importable():  # the interpreter runs the Triton rows on CPU
        assert rows["baseline"][2] == "triton" and rows["kernels-off"][2] == "torch"


# ---------------------------------------------------------------- GPU: the real kernels, bf16 too


def gpu_test(fn):
    fn = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(fn)
    return pytest.mark.gpu(fn)


@gpu_test
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gpu_triton_model_matches_torch(dtype: torch.dtype) -> None:
    # A wider model (D = 384, Dh = 64) over 5 x 16 x 16 = 1280 tokens: several programs per sample.
    # Judged against a float64 run of the torch path: the Triton path must be as accurate as the
    # torch path at the same dtype. (Comparing the two low-precision paths directly fails on
    # tensors whose entries are sums over ~8k tokens that cancel, e.g. the QK-norm gains: measured
    # on an H200, 0.20 relative difference in bf16 between two paths that are both that far from
    # float64.)
    kw = dict(hidden_size=384, num_heads=6, depth=2, patch_size=(1, 2, 2))
    ref, tri = _twin_models(SPATIAL, device="cuda", dtype=dtype, **kw)
    ref64, _ = _twin_models(SPATIAL, device="cuda", dtype=torch.float64, **kw)
    levels, t, active, y = _inputs(SPATIAL, (5, 32, 32), device="cuda", dtype=dtype)
    exact_out, exact_grads = _run(ref64, [lv.double() for lv in levels], t, active, y)
    want_out, want_grads = _run(ref, levels, t, active, y)
    got_out, got_grads = _run(tri, levels, t, active, y)
    rows = [(f"output {s}", got_out[s], want_out[s], exact_out[s]) for s in range(len(exact_out))]
    rows += [(f"d{n}", got_grads[n], want_grads[n], x) for n, x in exact_grads.items()]
    # fp32: both paths differ from float64 only by reduction order; bf16: by where they round
    floor = 1e-5 if dtype == torch.float32 else 1e-2
    for what, got, want, exact in rows:
        scale = exact.norm().clamp_min(1e-30)
        err_triton = ((got.double() - exact).norm() / scale).item()
        err_torch = ((want.double() - exact).norm() / scale).item()
        assert err_triton <= 1.5 * err_torch + floor, (what, err_triton, err_torch)
