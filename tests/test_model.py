"""DiT3D: shapes, initialisation, input masking, conditioning, determinism, checkpointing, compile."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dfm_video.config.schema import DFMConfig, ModelConfig
from dfm_video.dfm import decompose
from dfm_video.models import DiT3D, build_model, stage_patch_sizes
from dfm_video.models.checkpointing import SAVE_OPS
from dfm_video.models.patch import patchify, unpatchify

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


C = 4
NUM_CLASSES = 10


def tiny_cfg(**kw) -> ModelConfig:
    base = dict(depth=2, hidden_size=48, num_heads=4, in_channels=C, num_classes=NUM_CLASSES, attention="sdpa")
    base.update(kw)
    return ModelConfig(**base)


SPATIAL = DFMConfig(num_stages=2, factors=[(1, 2, 2)], stage_probs=[0.5, 0.5])
SPATIO_TEMPORAL = DFMConfig(num_stages=2, factors=[(2, 2, 2)], stage_probs=[0.5, 0.5], temporal_mode="causal")


def randomize(model: torch.nn.Module, seed: int = 1, std: float = 0.1) -> None:
    """Perturb every parameter: the zero-initialised heads would otherwise hide any dependence."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))


def make_inputs(dfm_cfg: DFMConfig, shape: tuple[int, int, int], B: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, *shape, generator=g)
    levels = decompose(x, dfm_cfg.factors, dfm_cfg.temporal_mode)
    t = torch.rand(B, dfm_cfg.num_stages, generator=g)
    active = torch.ones(B, dfm_cfg.num_stages, dtype=torch.bool)
    active[0, 1:] = False  # sample 0 trains stage 1, sample 1 the last stage
    y = torch.tensor([3, NUM_CLASSES][:B] + [0] * max(0, B - 2))
    return levels, t, active, y


# -- patch sizes -------------------------------------------------------------------------------


def test_stage_patch_sizes_examples() -> None:
    assert stage_patch_sizes((1, 2, 2), [(1, 2, 2)]) == [(1, 1, 1), (1, 2, 2)]
    assert stage_patch_sizes((2, 2, 2), [(2, 2, 2)]) == [(1, 1, 1), (2, 2, 2)]
    assert stage_patch_sizes((1, 4, 4), [(1, 2, 2), (1, 2, 2)]) == [(1, 1, 1), (1, 2, 2), (1, 4, 4)]
    assert stage_patch_sizes((1, 2, 2), []) == [(1, 2, 2)]


def test_stage_patch_sizes_error_names_stage_axis_patch_factor() -> None:
    with pytest.raises(ValueError, match=r"stage 1 of 2.*axis T.*patch 1.*factor 2"):
        stage_patch_sizes((1, 2, 2), [(2, 2, 2)])
    with pytest.raises(ValueError, match=r"stage 1 of 3.*axis H"):
        stage_patch_sizes((1, 2, 2), [(1, 2, 2), (1, 2, 2)])
    with pytest.raises(ValueError, match="stage 1 of 2"):
        DiT3D(tiny_cfg(patch_size=(1, 2, 2)), SPATIO_TEMPORAL)


@pytest.mark.parametrize("T", [1, 5, 13])
def test_causal_patchify_roundtrip_and_frame_alignment(T: int) -> None:
    # Frame index as the value: tokens must group frames exactly as the causal pyramid pools them.
    x = torch.arange(T, dtype=torch.float64).view(1, 1, T, 1, 1).expand(1, 1, T, 2, 2).contiguous()
    tok = patchify(x, (2, 2, 2), "causal")  # (1, Tg, 8)
    Tg = (T + 1) // 2
    assert tok.shape == (1, Tg, 8)
    frames = tok.view(Tg, 1, 2, 2, 2)[:, 0, :, 0, 0]  # (Tg, pt): frame ids in each temporal token
    expected = torch.tensor([[0, 0]] + [[2 * j - 1, 2 * j] for j in range(1, Tg)], dtype=torch.float64)
    assert torch.equal(frames, expected)
    assert torch.equal(unpatchify(tok, (Tg, 1, 1), (2, 2, 2), 1, "causal"), x)


def test_uniform_patchify_needs_divisible_T() -> None:
    x = torch.randn(1, 2, 4, 4, 4)
    tok = patchify(x, (2, 2, 2), "uniform")
    assert torch.equal(unpatchify(tok, (2, 2, 2), (2, 2, 2), 2, "uniform"), x)
    with pytest.raises(ValueError, match="T=5 is not divisible"):
        patchify(torch.randn(1, 2, 5, 4, 4), (2, 2, 2), "uniform")


# -- shapes and initialisation --------------------------------------------------------------------


@pytest.mark.parametrize(
    "dfm_cfg,patch,shape",
    [
        (SPATIAL, (1, 2, 2), (1, 8, 8)),  # image
        (SPATIAL, (1, 2, 2), (5, 8, 8)),
        (SPATIO_TEMPORAL, (2, 2, 2), (13, 8, 8)),  # causal: fine T=13, coarse T=7
        (SPATIO_TEMPORAL, (2, 2, 2), (1, 8, 8)),  # image in a spatio-temporal pyramid
        (dataclasses.replace(SPATIO_TEMPORAL, temporal_mode="uniform"), (2, 2, 2), (4, 8, 8)),
        (DFMConfig(num_stages=3, factors=[(1, 2, 2), (2, 2, 2)], stage_probs=[0.4, 0.3, 0.3]), (2, 4, 4), (5, 8, 8)),
        (DFMConfig(num_stages=1, factors=[], stage_probs=[1.0]), (1, 2, 2), (5, 8, 8)),  # plain FM
    ],
)
def test_output_shapes_and_zero_init(dfm_cfg: DFMConfig, patch, shape) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_cfg(patch_size=patch), dfm_cfg)
    levels, t, active, y = make_inputs(dfm_cfg, shape)
    if dfm_cfg.num_stages == 1:
        active[:] = True
    out = model(levels, t, active, y)
    assert [o.shape for o in out] == [lv.shape for lv in levels]
    for o in out:  # zero-initialised heads: the initial velocity is exactly 0
        assert torch.equal(o, torch.zeros_like(o))
    # ... but the heads receive gradient, so training can start
    sum(o.sum() for o in out).backward()
    assert all(h.linear.weight.grad.abs().sum() > 0 for h in model.final_layers)


def test_spatio_temporal_levels_shapes() -> None:
    levels, *_ = make_inputs(SPATIO_TEMPORAL, (13, 8, 8))
    assert [tuple(lv.shape[2:]) for lv in levels] == [(7, 4, 4), (13, 8, 8)]


def test_mismatched_token_grids_raise() -> None:
    model = build_model(tiny_cfg(), SPATIAL)
    levels, t, active, y = make_inputs(SPATIAL, (5, 8, 8))
    levels[0] = torch.randn(2, C, 5, 8, 8)  # coarse stage at full size: grid (5, 8, 8) vs (5, 4, 4)
    with pytest.raises(ValueError, match=r"different token grids.*stage 1: shape \(5, 8, 8\).*grid \(5, 8, 8\)"):
        model(levels, t, active, y)
    with pytest.raises(ValueError, match="expected 2 levels"):
        model(levels[:1], t, active, y)


def test_images_are_videos_with_T1_same_model() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_cfg(patch_size=(2, 2, 2)), SPATIO_TEMPORAL)
    randomize(model)
    for T in (13, 1):
        levels, t, active, y = make_inputs(SPATIO_TEMPORAL, (T, 8, 8))
        out = model(levels, t, active, y)
        assert [o.shape for o in out] == [lv.shape for lv in levels]
        assert all(torch.isfinite(o).all() and o.abs().sum() > 0 for o in out)
    # An image (T=1) input: the model's answer for one frame does not depend on batching or T-specific
    # branches; a 2-stage spatial model on T=1 matches its own T=1 slice of a batched call.
    model2 = build_model(tiny_cfg(), SPATIAL)
    randomize(model2)
    levels, t, active, y = make_inputs(SPATIAL, (1, 8, 8))
    full = model2(levels, t, active, y)
    single = model2([lv[1:] for lv in levels], t[1:], active[1:], y[1:])
    for a, b in zip(full, single):
        torch.testing.assert_close(a[1:], b, rtol=1e-5, atol=1e-6)


# -- masking and conditioning ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "dfm_cfg,patch,shape", [(SPATIAL, (1, 2, 2), (5, 8, 8)), (SPATIO_TEMPORAL, (2, 2, 2), (13, 8, 8))]
)
def test_masked_stage_input_and_time_are_ignored(dfm_cfg: DFMConfig, patch, shape) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_cfg(patch_size=patch), dfm_cfg).eval()
    randomize(model)
    levels, t, active, y = make_inputs(dfm_cfg, shape)  # sample 0: stage 2 inactive
    ref = model(levels, t, active, y)

    perturbed = [lv.clone() for lv in levels]
    perturbed[1][0] += 10 * torch.randn_like(perturbed[1][0])
    t2 = t.clone()
    t2[0, 1] = 0.77  # an inactive stage's t is ignored too (its embedder sees 0)
    out = model(perturbed, t2, active, y)
    for a, b in zip(ref, out):
        assert torch.equal(a[0], b[0])

    # control: the same perturbation on an ACTIVE stage changes the output
    perturbed = [lv.clone() for lv in levels]
    perturbed[1][1] += 10 * torch.randn_like(perturbed[1][1])
    out = model(perturbed, t, active, y)
    assert not torch.allclose(ref[0][1], out[0][1])


def test_stage_embedding_uses_last_active_stage_and_null_class() -> None:
    dfm_cfg = DFMConfig(num_stages=3, factors=[(1, 2, 2), (1, 2, 2)], stage_probs=[0.4, 0.3, 0.3])
    model = build_model(tiny_cfg(patch_size=(1, 4, 4)), dfm_cfg)
    assert model.null_class == NUM_CLASSES and model.y_embedder.num_embeddings == NUM_CLASSES + 1
    seen = []
    model.stage_embedder.register_forward_hook(lambda m, inp, out: seen.append(inp[0].clone()))
    x = torch.randn(3, C, 1, 8, 8)
    levels = decompose(x, dfm_cfg.factors)
    active = torch.tensor([[True, False, False], [True, True, False], [True, True, True]])
    model(levels, torch.rand(3, 3), active, torch.tensor([0, 5, NUM_CLASSES]))
    assert seen[0].tolist() == [0, 1, 2]
    assert build_model(tiny_cfg(stage_embedding=False), SPATIAL).stage_embedder is None


def test_class_label_changes_output() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_cfg(), SPATIAL)
    randomize(model)
    levels, t, active, y = make_inputs(SPATIAL, (1, 8, 8))
    a = model(levels, t, active, y)
    b = model(levels, t, active, torch.full_like(y, model.null_class))
    assert not torch.allclose(a[0], b[0])


# -- determinism, checkpointing, compile ----------------------------------------------------------


def _train_steps(seed: int, steps: int = 3) -> tuple[list[float], dict]:
    torch.manual_seed(seed)
    model = build_model(tiny_cfg(), SPATIAL)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x = torch.randn(2, C, 5, 8, 8, generator=g)
        levels = decompose(x, SPATIAL.factors)
        out = model(levels, torch.rand(2, 2, generator=g), torch.ones(2, 2, dtype=torch.bool), torch.tensor([1, 2]))
        loss = sum((o - lv).pow(2).mean() for o, lv in zip(out, levels))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, {k: v.clone() for k, v in model.state_dict().items()}


def test_determinism_under_seed() -> None:
    l1, s1 = _train_steps(0)
    l2, s2 = _train_steps(0)
    l3, s3 = _train_steps(1)
    assert l1 == l2
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)  # the seed matters


def test_activation_checkpointing_recomputes_and_matches() -> None:
    torch.manual_seed(0)
    plain = build_model(tiny_cfg(), SPATIAL)
    randomize(plain)
    ckpt = build_model(tiny_cfg(activation_checkpointing=True), SPATIAL)
    ckpt.load_state_dict(plain.state_dict())
    calls = []
    for block in ckpt.blocks:
        block.register_forward_pre_hook(lambda *a: calls.append(1))  # pre: recompute may stop early
    levels, t, active, y = make_inputs(SPATIAL, (5, 8, 8))
    grads = []
    for model in (plain, ckpt):
        out = model(levels, t, active, y)
        sum(o.pow(2).sum() for o in out).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert len(calls) == 2 * len(ckpt.blocks)  # forward + recomputation in backward
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-7)
    # no recomputation in eval / no-grad
    calls.clear()
    with torch.no_grad():
        ckpt(levels, t, active, y)
    assert len(calls) == len(ckpt.blocks)


def test_compile_flag_wraps_blocks_and_keeps_state_dict_keys() -> None:
    model = build_model(tiny_cfg(compile=True), SPATIAL)
    plain = build_model(tiny_cfg(), SPATIAL)
    assert all(b._compiled_call_impl is not None for b in model.blocks)
    assert all(b._compiled_call_impl is None for b in plain.blocks)
    assert list(model.state_dict()) == list(plain.state_dict())  # checkpoints interchange


def test_blocks_trace_as_one_graph_with_checkpointing() -> None:
    # fullgraph=True fails on any graph break (attention dispatch, RoPE, adaLN); aot_eager skips
    # inductor's slow C++ codegen but runs dynamo + AOTAutograd exactly as the real compile does.
    torch.manual_seed(0)
    eager = build_model(tiny_cfg(), SPATIAL)
    randomize(eager)
    compiled = build_model(tiny_cfg(activation_checkpointing=True), SPATIAL)
    compiled.load_state_dict(eager.state_dict())
    for block in compiled.blocks:
        block.compile(backend="aot_eager", fullgraph=True)
    levels, t, active, y = make_inputs(SPATIAL, (5, 8, 8))
    for model in (eager, compiled):
        out = model(levels, t, active, y)
        sum(o.pow(2).sum() for o in out).backward()
    for a, b in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compiled_model_matches_eager_on_cpu() -> None:
    # The real `model.compile: true` path (inductor): ~25 s on 2 idle CPU cores, more when they are busy.
    torch.manual_seed(0)
    eager = build_model(tiny_cfg(), SPATIAL)
    randomize(eager)
    compiled = build_model(tiny_cfg(compile=True, activation_checkpointing=True), SPATIAL)
    compiled.load_state_dict(eager.state_dict())
    levels, t, active, y = make_inputs(SPATIAL, (5, 8, 8))
    grads = []
    for model in (eager, compiled):
        out = model(levels, t, active, y)
        sum(o.pow(2).sum() for o in out).backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)  # inductor reorders float32 reductions


def test_unavailable_attention_backend_raises_on_forward() -> None:
    model = build_model(tiny_cfg(attention="flash"), SPATIAL)
    levels, t, active, y = make_inputs(SPATIAL, (1, 8, 8))
    with pytest.raises(ValueError, match="flash-attn"):
        model(levels, t, active, y)


def test_bad_config_errors() -> None:
    with pytest.raises(ValueError, match="num_stages=2 needs 1"):
        DiT3D(tiny_cfg(), dataclasses.replace(SPATIAL, factors=[]))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        DiT3D(tiny_cfg(hidden_size=50), SPATIAL)
    with pytest.raises(ValueError, match="unknown size"):
        DiT3D(tiny_cfg(name="DiT3D-XXL"), SPATIAL)


def test_model_package_imports_no_distributed_code() -> None:
    import ast
    import pathlib

    import dfm_video.models as models

    for path in pathlib.Path(models.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                for name in filter(None, names):
                    assert not name.startswith(("deepspeed", "torch.distributed")), (path.name, name)


def test_qk_norm_is_optional() -> None:
    torch.manual_seed(0)
    normed = build_model(tiny_cfg(qk_norm=True), SPATIAL)
    randomize(normed)
    plain = build_model(tiny_cfg(qk_norm=False), SPATIAL)
    assert all(b.attn.q_norm is None for b in plain.blocks)
    missing = plain.load_state_dict(normed.state_dict(), strict=False)
    assert all("_norm" in k for k in missing.unexpected_keys) and not missing.missing_keys
    levels, t, active, y = make_inputs(SPATIAL, (5, 8, 8))
    a, b = normed(levels, t, active, y), plain(levels, t, active, y)
    assert a[1].shape == b[1].shape and not torch.allclose(a[1], b[1])


class _CountMatmuls(TorchDispatchMode):
    """Counts the matmul and attention kernels that run (forward, backward and any recomputation)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func in SAVE_OPS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _checkpoint_run(policy: str, state: dict) -> tuple[dict, int]:
    model = build_model(tiny_cfg(activation_checkpointing=policy), SPATIAL)
    model.load_state_dict(state)
    levels, t, active, y = make_inputs(SPATIAL, (5, 8, 8))
    out = model(levels, t, active, y)
    loss = sum(o.pow(2).sum() for o in out)
    with _CountMatmuls() as counter:  # the backward pass only (recomputation happens there)
        loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}, counter.count


def test_activation_checkpointing_policies_give_equal_gradients() -> None:
    # On CPU every op is deterministic, so recomputing a block (full) or only its elementwise ops
    # (selective) reproduces the saved values bit for bit: the gradients must be identical, not close.
    torch.manual_seed(0)
    plain = build_model(tiny_cfg(), SPATIAL)
    randomize(plain)
    state = plain.state_dict()
    ref, mm_none = _checkpoint_run("none", state)
    _, mm_full = _checkpoint_run("full", state)
    sel, mm_sel = _checkpoint_run("selective", state)
    full, _ = _checkpoint_run(True, state)  # `true` in an old config means full
    for n in ref:
        assert torch.equal(ref[n], sel[n]), n
        assert torch.equal(ref[n], full[n]), n
    # full reruns every matmul and attention kernel of the forward; selective reruns none of them
    assert mm_full > mm_none
    assert mm_sel == mm_none


def test_activation_checkpointing_auto_must_be_resolved_before_the_model() -> None:
    model = build_model(tiny_cfg(activation_checkpointing="auto"), SPATIAL)
    levels, t, active, y = make_inputs(SPATIAL, (5, 8, 8))
    with pytest.raises(ValueError, match="auto.*memory planner"):
        model(levels, t, active, y)
    model.eval()
    with torch.no_grad():  # inference (the sampler) never checkpoints, whatever the config says
        model(levels, t, active, y)
