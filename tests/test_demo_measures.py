"""The demo's measures on analytic inputs: high-frequency energy, PSNR to the nearest clip, fine-level
std, and the printed table against the summary numbers."""

from __future__ import annotations

import math
import re

import pytest
import torch

from dfm_video.demo.measures import fine_level_std, hf_energy, psnr_to_nearest, quality_summary
from dfm_video.demo.report import format_summary
from dfm_video.dfm import LevelStats


def _checkerboard(b: int, f: int, h: int, w: int, a: float) -> torch.Tensor:
    ij = torch.arange(h)[:, None] + torch.arange(w)[None, :]
    board = torch.where(ij % 2 == 0, a, -a).double()
    return board.expand(b, 3, f, h, w).clone()


def test_hf_energy_is_zero_for_flat_clips_and_a_squared_for_a_pixel_checkerboard():
    flat = torch.full((2, 3, 3, 8, 8), 0.3)
    assert torch.equal(hf_energy(flat), torch.zeros(2, dtype=torch.float64))
    # a +-a checkerboard averages to 0 in every 2x2 block, so x - up(down(x)) = x and the energy is a^2
    for a in (0.5, 0.25):
        torch.testing.assert_close(
            hf_energy(_checkerboard(2, 3, 8, 8, a)), torch.full((2,), a * a, dtype=torch.float64)
        )
    with pytest.raises(ValueError, match="even"):
        hf_energy(torch.zeros(1, 3, 1, 7, 8))


def test_psnr_to_nearest_gives_the_known_db_and_the_closest_clip():
    g = torch.Generator().manual_seed(0)
    refs = (
        torch.rand(3, 3, 2, 8, 8, generator=g, dtype=torch.float64) * 1.2 - 0.6
    )  # stays in [-1, 1] after +-0.4 offsets
    # an offset of 0.2 in [-1, 1] units is 25.5 on the 8-bit scale: PSNR = 20 log10(255 / 25.5) = 20 dB
    samples = torch.stack([refs[2] + 0.2, refs[0] - 0.4 * 0.5, refs[1]])
    psnr, idx = psnr_to_nearest(samples, refs)
    assert idx.tolist() == [2, 0, 1]
    torch.testing.assert_close(psnr[:2], torch.tensor([20.0, 20.0], dtype=torch.float64), rtol=0, atol=1e-9)
    assert psnr[2].item() > 100  # identical clip: MSE 0, clamped, not inf
    # an offset of 0.04 (5.1 on 8 bits) gives 20 log10(50) = 33.98 dB
    p2, _ = psnr_to_nearest(refs[:1] + 0.04, refs)
    assert abs(p2.item() - 20 * math.log10(50)) < 1e-9
    with pytest.raises(ValueError, match="differ in shape"):
        psnr_to_nearest(samples[:, :, :1], refs)


def test_fine_level_std_reads_the_finest_level_in_standardised_units():
    # a constant plus a +-a pixel checkerboard: the coarse level is the constant, the finest level is
    # exactly the checkerboard, whose (unbiased) std is a * sqrt(n / (n - 1))
    factors, mode = [[1, 2, 2]], "causal"
    a = 3.0
    latents = 0.7 + _checkerboard(2, 3, 8, 8, a).float()
    n = latents.numel()
    want = a * math.sqrt(n / (n - 1))
    assert abs(fine_level_std(latents, factors, mode, None) - want) < 1e-4
    stats = LevelStats(mean=torch.zeros(2, 3), std=torch.stack([torch.full((3,), 4.0), torch.full((3,), 1.5)]))
    assert abs(fine_level_std(latents, factors, mode, stats) - want / 1.5) < 1e-4
    # the coarse level does not count
    assert abs(fine_level_std(latents * 0 + 5.0, factors, mode, None)) < 1e-6


def test_summary_numbers_and_the_printed_table_agree():
    g = torch.Generator().manual_seed(2)
    real = torch.rand(4, 3, 2, 8, 8, generator=g, dtype=torch.float64) * 1.6 - 0.8
    near = real + 0.1 * _checkerboard(4, 2, 8, 8, 1.0)  # close to the data, extra detail
    far = real.mean(dim=0, keepdim=True).expand_as(real) * 0.5  # smooth, far from every clip
    s = {"methods": {"DFM": quality_summary(near, real), "FM": quality_summary(far, real)}}
    d, f = s["methods"]["DFM"], s["methods"]["FM"]
    torch.testing.assert_close(d["hf_ratio"], d["hf_energy"] / d["hf_energy_real"])
    # near = real + 0.1 checkerboard: 8-bit offset 12.75 everywhere -> 20 log10(20) dB to its own clip
    assert abs(d["nearest_psnr_db"] - 20 * math.log10(20)) < 1e-9
    assert d["nearest_psnr_db"] > f["nearest_psnr_db"]
    d["fine_level_std"] = 0.87
    table = format_summary(s)
    hf = re.search(r"high-freq\. energy / training clips\s+([\d.]+)x\s+([\d.]+)x", table)
    ps = re.search(r"PSNR to nearest training clip\s+([\d.]+) dB\s+([\d.]+) dB", table)
    assert hf and ps, table
    assert [float(v) for v in hf.groups()] == [round(d["hf_ratio"], 2), round(f["hf_ratio"], 2)]
    assert [float(v) for v in ps.groups()] == [round(d["nearest_psnr_db"], 1), round(f["nearest_psnr_db"], 1)]
    assert re.search(r"DFM finest level std \(data 1\.0\)\s+0\.87$", table, re.M), table
    hf_ok = 0.75 <= d["hf_ratio"] <= 1.33
    assert ("detail level matches" in table) == hf_ok and "DFM samples are closer to the training clips" in table
