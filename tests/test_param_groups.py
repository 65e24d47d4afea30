"""AdamW weight decay: only matmul weights decay; biases, norms, embeddings and QK-norm gains do not."""

import torch

from dfm_video.config import load_config
from dfm_video.models import build_model
from dfm_video.train.param_groups import decay_split, param_groups


def _model():
    cfg = load_config(
        None,
        ["model.depth=1", "model.hidden_size=32", "model.num_heads=2", "model.in_channels=3", "model.num_classes=2"],
    )
    return build_model(cfg.model, cfg.dfm)


def test_which_parameters_decay():
    model = _model()
    decay, no_decay = decay_split(model)
    assert decay == [
        "patch_embed.0.weight",
        "patch_embed.1.weight",
        "t_embedders.0.mlp.0.weight",
        "t_embedders.0.mlp.2.weight",
        "t_embedders.1.mlp.0.weight",
        "t_embedders.1.mlp.2.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.proj.weight",
        "blocks.0.fc1.weight",
        "blocks.0.fc2.weight",
        "blocks.0.adaLN_modulation.1.weight",
        "final_layers.0.adaLN_modulation.1.weight",
        "final_layers.0.linear.weight",
        "final_layers.1.adaLN_modulation.1.weight",
        "final_layers.1.linear.weight",
    ]
    assert {"y_embedder.weight", "stage_embedder.weight", "blocks.0.attn.q_norm", "blocks.0.attn.k_norm"} <= set(
        no_decay
    )
    assert all(
        n.endswith(".bias")
        for n in no_decay
        if n not in {"y_embedder.weight", "stage_embedder.weight", "blocks.0.attn.q_norm", "blocks.0.attn.k_norm"}
    )
    assert len(decay) + len(no_decay) == len(list(model.parameters()))


def test_adamw_with_the_groups_shrinks_only_decayed_parameters():
    model = _model()
    for p in model.parameters():
        torch.nn.init.normal_(p)  # no zero-initialised tensors: decay must be visible everywhere
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=0.5, weight_decay=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # Adam's update is 0: only decay moves weights
    opt.step()
    decay, no_decay = decay_split(model)
    params = dict(model.named_parameters())
    for n in decay:
        assert torch.allclose(params[n], before[n] * (1 - 0.5 * 0.1)), n
    for n in no_decay:
        assert torch.equal(params[n], before[n]), n
