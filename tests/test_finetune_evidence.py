"""benchmarks/finetune_evidence.py, its pieces (the full run needs minutes of training): the demo's
flow-matching model initialises both fine-tunes strictly, and DFM's starts equal to it on the coarse stage."""

from __future__ import annotations

import pytest
import torch

from benchmarks.finetune_evidence import demo_config
from dfm_video.models import build_model
from dfm_video.models.patch import downsample_mean, upsample_nearest
from dfm_video.train.init_map import map_state

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


def test_demo_fine_tunes_load_the_demo_flow_matching_model_strictly(tmp_path) -> None:
    torch.manual_seed(0)
    fm_cfg = demo_config(tmp_path, "fm", 0, [])
    fm = build_model(fm_cfg.model, fm_cfg.dfm).double().eval()
    with torch.no_grad():
        for p in fm.parameters():
            p.add_(0.05 * torch.randn_like(p))
    dfm_cfg = demo_config(tmp_path, "dfm", 1, ["optim.lr=1e-4"])
    assert dfm_cfg.optim.lr == 1e-4 and dfm_cfg.dfm.num_stages == 2 and fm_cfg.dfm.num_stages == 1
    dfm = build_model(dfm_cfg.model, dfm_cfg.dfm).double().eval()
    state, summary = map_state(dfm.state_dict(), fm.state_dict(), "demo FM")  # strict
    dfm.load_state_dict(state)
    assert not summary.ignored and dfm.embed_patches[0] == fm.patches[0] == (1, 8, 8)
    ft = build_model(fm_cfg.model, fm_cfg.dfm)
    _, ft_summary = map_state(ft.state_dict(), fm.state_dict(), "demo FM")
    assert len(ft_summary.copied) == len(fm.state_dict()) and not ft_summary.zeroed
    # demo latents (3, 9, 32, 32): coarse (3, 9, 16, 16)
    coarse, fine = torch.randn(2, 3, 9, 16, 16, dtype=torch.float64), torch.randn(2, 3, 9, 32, 32, dtype=torch.float64)
    t, y = torch.rand(2, 2, dtype=torch.float64), torch.tensor([0, 2])
    with torch.no_grad():
        v = dfm([coarse, fine], t, torch.tensor([[True, False]] * 2), y)[0]
        ref = fm([upsample_nearest(coarse, (1, 2, 2))], t[:, :1], torch.ones(2, 1, dtype=torch.bool), y)[0]
    assert torch.equal(v, downsample_mean(ref, (1, 2, 2)))
