"""Run under torchrun (gloo, CPU): a sequence-parallel tiny DiT3D against the unsplit model.

Every rank also builds the unsplit model from the same seed and computes the reference locally, so
the check is exact per rank. Checks, for each N in argv[1:] (each must divide the world):
forward outputs, the DFM loss, every parameter gradient after summing over the sequence group
(what DeepSpeed's sequence-data-parallel reduction does), state_dict keys, and Euler sampling of
every stage. Different sequence groups get different batches (data parallel). Prints one
`SP-OK N=...` line per N on rank 0; any mismatch raises (non-zero exit).
"""

from __future__ import annotations

import copy
import sys

import torch
import torch.distributed as dist

from dfm_video.config import load_config
from dfm_video.dfm import TimestepParams, dfm_objective, level_shapes
from dfm_video.models import build_model
from dfm_video.parallel.apply import apply_sequence_parallel
from dfm_video.parallel.groups import build_sequence_parallel_groups
from dfm_video.sampling import Generator, generate

TOL = 1e-5


def tiny_cfg():
    # 4 heads, 2 stages with a temporal AND spatial step (causal): grid 5 x 4 x 4 = 80 tokens;
    # activation checkpointing on: the recomputed forward repeats the all-to-alls in backward
    return load_config(
        "tiny.yaml",
        [
            "model.in_channels=4",
            "model.num_heads=4",
            "model.patch_size=[2,2,2]",
            "dfm.factors=[[2,2,2]]",
            "model.activation_checkpointing=true",
            "train.seed=0",
        ],
    )


def close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    err = (a - b).abs().max().item()
    if not err <= TOL:
        raise AssertionError(f"rank {dist.get_rank()}: {what} differs by {err:.3g} (> {TOL})")


def check(n: int) -> None:
    cfg = tiny_cfg()
    torch.manual_seed(0)
    ref = build_model(cfg.model, cfg.dfm).float()
    # non-zero heads/adaLN so every parameter gets a gradient (DiT zero-inits them)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in ref.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    sp_model = copy.deepcopy(ref)
    groups = build_sequence_parallel_groups(n)
    handle = apply_sequence_parallel(sp_model, groups.group) if n > 1 else None
    assert sp_model.state_dict().keys() == ref.state_dict().keys()

    shapes = level_shapes((9, 8, 8), cfg.dfm.factors, cfg.dfm.temporal_mode)
    gen = torch.Generator().manual_seed(100 + groups.dp_rank)  # one batch per sequence group
    levels = [torch.randn(2, 4, *s, generator=gen) for s in shapes]
    y = torch.tensor([1, 3])
    params = TimestepParams.from_config(cfg.dfm)
    outs = []
    for model in (ref, sp_model):
        model.zero_grad()
        g = torch.Generator().manual_seed(7 + groups.dp_rank)
        preds = []

        def velocity(x, t, a, yy, model=model):
            out = model(x, t, a, yy)
            preds.append(out)
            return out

        loss = dfm_objective(
            velocity, levels, y, params, class_dropout=0.0, null_class=model.null_class, generator=g
        ).loss
        loss.backward()
        outs.append((preds[0], loss))
    for s, (a, b) in enumerate(zip(outs[0][0], outs[1][0])):
        close(a.detach(), b.detach(), f"N={n} forward output of stage {s + 1}")
    close(outs[0][1].detach(), outs[1][1].detach(), f"N={n} loss")
    missing = []
    for (name, p), q in zip(ref.named_parameters(), sp_model.parameters()):
        if p.grad is None or q.grad is None:
            missing.append(name)
            continue
        grad = q.grad.clone()
        if n > 1:
            dist.all_reduce(grad, group=groups.group)  # sum over the sequence group
        close(p.grad, grad, f"N={n} gradient of {name}")
    if missing:
        raise AssertionError(f"parameters without gradients: {missing}")

    meta = {"latent_shape": [4, 9, 8, 8], "stats": None, "labels": ["a", "b"]}
    videos = []
    for model in (ref, sp_model):
        model.eval()
        lat, _ = generate(
            Generator(model, cfg, meta, source=None), [0, 1], steps=[3, 2], tau=0.9, cfg_scale=1.5, seed=5
        )
        videos.append(lat)
    close(videos[0], videos[1], f"N={n} sampled latents")
    if handle is not None:
        handle.remove()
    if dist.get_rank() == 0:
        print(f"SP-OK N={n} world={dist.get_world_size()} grads={sum(1 for _ in ref.parameters())}", flush=True)


def main() -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    for n in (int(v) for v in sys.argv[1:]):
        check(n)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
