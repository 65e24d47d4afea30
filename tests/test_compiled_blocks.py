"""Compiled blocks (`model.compile`): when `auto` compiles, compiled = eager (CPU inductor) in
training and sampling, and no recompilation across DFM stages or between training steps and the
in-training samples (checked with Dynamo's recompile log); CUDA-graph replay of the sampler."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from dfm_video.config import load_config
from dfm_video.dfm import decompose
from dfm_video.models import build_model
from dfm_video.sampling import Generator, generate
from dfm_video.sampling.cuda_graph import GraphedForward

CUDA = torch.cuda.is_available()
C = 4
TINY = [
    "model.depth=2",
    "model.hidden_size=64",
    "model.num_heads=2",
    f"model.in_channels={C}",
    "model.num_classes=5",
    "model.attention=sdpa",
    "model.kernels=torch",
]
LATENT = (C, 5, 8, 8)


def tiny(compile_flag: str):
    return load_config(None, TINY + [f"model.compile={compile_flag}"])


def randomized_state(cfg) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.dfm)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))  # the zero-initialised heads would hide everything
    return model.state_dict()


def test_auto_compiles_on_cuda_only_and_not_around_a_replaced_attention_core() -> None:
    cfg = tiny("auto")
    model = build_model(cfg.model, cfg.dfm)
    assert model.compiles_on(torch.device("cpu")) is False
    assert model.compiles_on(torch.device("cuda", 0)) is True  # the decision only; nothing runs there
    assert all(b._compiled_call_impl is None for b in model.blocks)  # compiled at the first CUDA forward
    swapped = build_model(cfg.model, cfg.dfm)
    swapped.blocks[0].attn.core_attention = lambda q, k, v, backend: q  # what sequence parallelism does
    assert swapped.compiles_on(torch.device("cuda", 0)) is False
    off = build_model(tiny("false").model, cfg.dfm)
    assert off.compiles_on(torch.device("cuda", 0)) is False
    on = build_model(tiny("true").model, cfg.dfm)
    assert on.compiles_on(torch.device("cpu")) is True
    assert all(b._compiled_call_impl is not None for b in on.blocks)


def test_cuda_graphs_need_cuda() -> None:
    with pytest.raises(ValueError, match="sample.cuda_graphs=true needs the model on a CUDA device, got cpu"):
        GraphedForward(lambda *a: [], torch.device("cpu"))


class RecompileLog(logging.Handler):
    """Dynamo's recompile log (`TORCH_LOGS=recompiles`), collected."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def train_step(model, shape, B: int = 2) -> list[torch.Tensor]:
    """Forward + backward at both DFM stages (sample 0 trains stage 1, sample 1 stage 2)."""
    g = torch.Generator().manual_seed(0)
    levels = decompose(torch.randn(B, C, *shape, generator=g), model.dfm_cfg.factors, model.dfm_cfg.temporal_mode)
    t = torch.rand(B, 2, generator=g)
    active = torch.ones(B, 2, dtype=torch.bool)
    active[0, 1] = False
    model.train()
    model.zero_grad()
    out = model(levels, t, active, torch.tensor([1, 5][:B]))
    sum(o.pow(2).sum() for o in out).backward()
    return [p.grad.clone() for p in model.parameters()]


def in_training_sample(cfg, state) -> torch.Tensor:
    """As dfm_video/train/in_training_samples.py: a fresh model from the EMA weights, eval, generate."""
    model = build_model(cfg.model, cfg.dfm)
    model.load_state_dict(state)
    model.eval()
    meta = {"labels": [], "latent_shape": list(LATENT), "stats": None, "autoencoder": {"kind": "pixel"}}
    gen = Generator(model=model, cfg=cfg, meta=meta, source=Path("random"))
    latents, _ = generate(gen, [0, 1, 2], steps=[2, 2], tau=0.9, cfg_scale=2.0)  # batched CFG: 6 rows
    return latents


@pytest.mark.slow
def test_compiled_equals_eager_and_nothing_recompiles_after_warmup() -> None:
    # The real inductor path on CPU: ~1 min on 2 idle cores (fwd, bwd and the no-grad graph).
    torch._dynamo.reset()
    eager_cfg, comp_cfg = tiny("false"), tiny("true")
    state = randomized_state(eager_cfg)
    eager = build_model(eager_cfg.model, eager_cfg.dfm)
    eager.load_state_dict(state)
    comp = build_model(comp_cfg.model, comp_cfg.dfm)
    comp.load_state_dict(state)
    shape = LATENT[1:]

    log = RecompileLog()
    logger = logging.getLogger("torch._dynamo.guards.__recompiles")
    torch._logging.set_logs(recompiles=True)
    logger.addHandler(log)
    try:
        rounds = []
        for _ in range(2):
            before = len(log.lines)
            grads = train_step(comp, shape)
            sample = in_training_sample(comp_cfg, state)
            rounds.append(log.lines[before:])
        ref_grads = train_step(eager, shape)
        ref_sample = in_training_sample(eager_cfg, state)
    finally:
        logger.removeHandler(log)
        torch._logging.set_logs()
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)  # inductor reorders float32 reductions
    torch.testing.assert_close(sample, ref_sample, rtol=1e-3, atol=1e-4)
    assert rounds[0], "the recompile log is not live: the first round's grad-mode and batch changes must show"
    assert rounds[1] == [], "recompiled after the first training step + in-training sample:\n" + "\n".join(rounds[1])


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_graph_sampling_equals_eager() -> None:
    cfg = tiny("false")
    state = randomized_state(cfg)
    model = build_model(cfg.model, cfg.dfm)
    model.load_state_dict(state)
    model.cuda().eval()
    meta = {"labels": [], "latent_shape": list(LATENT), "stats": None, "autoencoder": {"kind": "pixel"}}
    gen = Generator(model=model, cfg=cfg, meta=meta, source=Path("random"))
    kw = dict(steps=[3, 2], tau=0.9, cfg_scale=2.0, cfg_interval=(0.2, 0.8))  # 2B and B rows: two captures
    ref, _ = generate(gen, [0, 1], cuda_graphs=False, **kw)
    out, _ = generate(gen, [0, 1], cuda_graphs=True, **kw)
    again, _ = generate(gen, [0, 1], cuda_graphs=True, **kw)  # replays, no new capture
    assert len(gen.graphed.graphs) == 2
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again, ref, rtol=1e-4, atol=1e-4)
