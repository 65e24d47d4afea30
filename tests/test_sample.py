"""The sampler: loading exports and DeepSpeed checkpoints (ZeRO-3 too), stage-wise generation with
a known-answer stub, determinism, mp4/PNG/preview outputs, clear errors, and `make demo` end to end."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch
from media_helpers import read_frames
from torch import nn
from train_helpers import cpu_env, deepspeed_cmd, run

from dfm_video.config import load_config
from dfm_video.dfm import level_shapes, recompose
from dfm_video.models import build_model
from dfm_video.sample import main
from dfm_video.sampling import Generator, decode_latents, generate, load_generator, resolve_labels, write_outputs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tiny_shards, tmp_path_factory):
    """A short ZeRO-3 DFM run and a short FM (S = 1) run of the tiny config."""
    runs = {}
    for name, extra in {
        "dfm": ["distributed.zero_stage=3"],
        "fm": ["dfm=single_stage", "sample.steps=[6]"],
    }.items():
        out = tmp_path_factory.mktemp(name)
        r = run(
            deepspeed_cmd(
                [f"data.shards={tiny_shards}", f"train.output_dir={out}", "train.steps=4", "train.ckpt_every=4", *extra]
            )
        )
        assert r.returncode == 0, r.stderr[-3000:]
        runs[name] = out
    return runs


def test_samples_previews_and_sheet_are_written_and_decodable(trained, tmp_path):
    out = tmp_path / "s"
    assert (
        main(
            [
                "--checkpoint",
                str(trained["dfm"]),
                "--out",
                str(out),
                "--num-samples",
                "2",
                "--steps",
                "4,2",
                "--cfg",
                "2.0",
                "--previews",
                "--no-progress",
            ]
        )
        == 0
    )
    report = json.loads((out / "samples.json").read_text())
    assert len(report["samples"]) == 2 and report["nfe"] == 12
    for p in report["samples"]:
        frames = read_frames(Path(p))
        assert len(frames) == 9 and frames[0].shape == (32, 32, 3)  # tiny config: 9 frames of 32x32
    assert len(report["previews"]) == 2
    assert read_frames(Path(report["previews"][0]))[0].shape == (16, 16, 3)  # stage 1 = half resolution
    assert Path(report["contact_sheet"]).is_file()


def test_same_seed_same_output_and_export_equals_zero3_checkpoint(trained):
    export = load_generator(trained["dfm"] / "export")
    ckpt = load_generator(trained["dfm"] / "checkpoints" / "step_00000004")
    for k, v in export.model.state_dict().items():
        assert torch.equal(v, ckpt.model.state_dict()[k]), k
    kw = dict(steps=[3, 2], tau=0.9, cfg_scale=1.5)
    a, _ = generate(export, [0, 1], seed=7, **kw)
    b, _ = generate(ckpt, [0, 1], seed=7, **kw)
    c, _ = generate(export, [0, 1], seed=8, **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_flow_matching_baseline_samples_through_the_same_command(trained, tmp_path):
    assert (
        main(["--checkpoint", str(trained["fm"]), "--out", str(tmp_path), "--num-samples", "1", "--no-progress"]) == 0
    )
    report = json.loads((tmp_path / "samples.json").read_text())
    assert report["steps"] == [6] and len(read_frames(Path(report["samples"][0]))) == 9


class _ConstantVelocity(nn.Module):
    """Stub model with a known answer: velocity c_s + (1 + y) e_s for stage s and label y < null,
    c_s for the null label, so guidance at scale w gives c_s + w (1 + y) e_s."""

    def __init__(self, values: list[float], label_terms: list[float]) -> None:
        super().__init__()
        self.values = values
        self.label_terms = label_terms
        self.null_class = 3
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the sampler a device and dtype

    def forward(self, levels, t, active, y):
        cond = torch.where(y == self.null_class, 0.0, 1.0 + y.float())  # (B,)
        out = []
        for x, c, e in zip(levels, self.values, self.label_terms):
            v = c + cond * e
            out.append(v.view(-1, *([1] * (x.dim() - 1))).expand_as(x).to(x.dtype).clone())
        return out


def test_generation_wiring_against_a_known_answer():
    cfg = load_config(None, ["dfm.factors=[[2,2,2]]", "sample.steps=[5,3]"])
    shapes = level_shapes((5, 8, 8), cfg.dfm.factors, cfg.dfm.temporal_mode)
    stats = {"mean": [[0.5] * 2, [0.0] * 2], "std": [[2.0] * 2, [0.25] * 2]}
    meta = {
        "labels": ["a", "b", "c"],
        "latent_shape": [2, 5, 8, 8],
        "stats": stats,
        "autoencoder": {"kind": "pixel", "temporal": 1, "spatial": [1, 1]},
    }
    c, e = [1.0, -2.0], [0.5, 0.25]
    gen = Generator(model=_ConstantVelocity(c, e), cfg=cfg, meta=meta, source=Path("stub"))
    y = [0, 2]
    latents, previews = generate(gen, y, steps=[5, 3], tau=0.8, cfg_scale=3.0, seed=1, previews=True)
    g = torch.Generator().manual_seed(1)
    noise = [torch.randn(2, 2, *s, generator=g) for s in shapes]
    # guided velocity, constant in t: v_null + 3 (v_y - v_null) = c_s + 3 (1 + y) e_s, per sample
    guided = [torch.tensor([c[s] + 3.0 * (1 + yb) * e[s] for yb in y]).view(2, 1, 1, 1, 1) for s in range(2)]
    # every stage integrates t from 0 to 1: x = noise + v; then destandardise and recompose
    want = [(noise[0] + guided[0]) * 2.0 + 0.5, (noise[1] + guided[1]) * 0.25]
    assert torch.allclose(latents, recompose(want, cfg.dfm.factors, "causal"), atol=1e-5)
    # the preview is stage 1's clean estimate at t = tau = 0.8 (x + (1 - tau) v), destandardised
    assert torch.allclose(previews[0], (noise[0] + 0.8 * guided[0] + 0.2 * guided[0]) * 2.0 + 0.5, atol=1e-5)
    # the label and the scale matter: another label or scale 1 (no guidance) gives another sample
    other, _ = generate(gen, [1, 2], steps=[5, 3], tau=0.8, cfg_scale=3.0, seed=1)
    plain, _ = generate(gen, y, steps=[5, 3], tau=0.8, cfg_scale=1.0, seed=1)
    assert not torch.allclose(other[0], latents[0]) and torch.allclose(other[1], latents[1], atol=1e-6)
    assert not torch.allclose(plain, latents)


def test_image_models_write_png(tmp_path):
    cfg = load_config(
        None,
        ["model.depth=1", "model.hidden_size=32", "model.num_heads=2", "model.in_channels=3", "model.num_classes=2"],
    )
    meta = {
        "labels": ["x", "y"],
        "latent_shape": [3, 1, 8, 8],
        "stats": None,
        "fps": 8,
        "autoencoder": {"kind": "pixel", "temporal": 1, "spatial": [1, 1]},
    }
    gen = Generator(model=build_model(cfg.model, cfg.dfm), cfg=cfg, meta=meta, source=Path("random"))
    latents, _ = generate(gen, [0, 1], steps=[2, 2], tau=0.9)
    assert latents.shape == (2, 3, 1, 8, 8)
    files = write_outputs(gen, decode_latents(gen, latents), [0, 1], tmp_path)
    assert [f.suffix for f in files] == [".png", ".png"] and files[1].name == "sample_001_y.png"


def test_bad_checkpoints_and_labels_give_clear_errors(trained, tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("config.yaml", "dataset.json"):
        (bad / name).write_bytes((trained["dfm"] / "export" / name).read_bytes())
    (bad / "model.safetensors").write_bytes((trained["dfm"] / "export" / "model.safetensors").read_bytes()[:1000])
    assert main(["--checkpoint", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err
    partial = tmp_path / "step_00000009"
    partial.mkdir()
    assert main(["--checkpoint", str(partial), "--out", str(tmp_path / "o")]) == 2
    assert "not an export folder" in capsys.readouterr().err
    gen = load_generator(trained["dfm"] / "export")
    with pytest.raises(ValueError, match=r"'bikez' is not a label.*closest: 'bikes'"):
        resolve_labels(gen, "bikez", None, 1)
    with pytest.raises(ValueError, match="out of range"):
        resolve_labels(gen, None, 99, 1)


def test_make_demo_end_to_end_at_a_smaller_size(tmp_path):
    env = cpu_env()
    env.update(
        DEMO_DIR=str(tmp_path / "demo"),
        DEMO_STEPS="20",
        DEMO_CLIPS_PER_SOURCE="3",
        DEMO_SAMPLES="2",
        DEMO_MASTER_PORT=str(29000 + os.getpid() % 1000),
        DEMO_REPORT_SAMPLES="3",
        DEMO_FVD="0",
    )
    env["PYTHON"] = sys.executable
    cmd = ["bash", "scripts/demo.sh"]
    r = run(cmd, timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    demo = tmp_path / "demo"
    assert "demo finished" in r.stdout
    assert (
        len(list((demo / "samples").glob("*.mp4"))) == 2
        and len(list((demo / "samples" / "previews").glob("*.mp4"))) == 2
    )
    assert (demo / "train" / "export" / "model.safetensors").is_file()
    # the flow-matching baseline, the evidence sheet, loss curves and the summary numbers
    assert (demo / "train_fm" / "export" / "model.safetensors").is_file() and len(
        list((demo / "samples_fm").glob("*.mp4"))
    ) == 2
    for png in (
        demo / "comparison.png",
        demo / "loss_curves.png",
        demo / "train" / "loss.png",
        demo / "train_fm" / "loss.png",
    ):
        assert png.is_file() and png.stat().st_size > 1000, png
    summary = json.loads((demo / "summary.json").read_text())
    # the printed table shows summary.json's numbers (the measures themselves: tests/test_demo_measures.py)
    d, f = summary["methods"]["DFM"], summary["methods"]["FM"]
    for m in (d, f):
        assert 0 < m["hf_ratio"] < 1e3 and 0 < m["nearest_psnr_db"] < 100, m
        assert abs(m["hf_ratio"] - m["hf_energy"] / m["hf_energy_real"]) < 1e-9 * m["hf_ratio"]
    hf = re.search(r"high-freq\. energy / training clips\s+([\d.]+)x\s+([\d.]+)x", r.stdout)
    ps = re.search(r"PSNR to nearest training clip\s+([\d.]+) dB\s+([\d.]+) dB", r.stdout)
    assert hf and ps, r.stdout[-3000:]
    assert [float(v) for v in hf.groups()] == [round(d["hf_ratio"], 2), round(f["hf_ratio"], 2)]
    assert [float(v) for v in ps.groups()] == [round(d["nearest_psnr_db"], 1), round(f["nearest_psnr_db"], 1)]
    # quiet by default: no DeepSpeed INFO lines, no library FutureWarnings, no Ray log lines
    console = r.stdout + r.stderr
    assert "[INFO]" not in console and "FutureWarning" not in console and "core_worker" not in console, console[-3000:]
    # a second run reuses everything: nothing is decoded again and training resumes at its last step
    r2 = run(cmd, timeout=900, env=env)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "reusing" in r2.stdout and "resumed from" in r2.stdout and "preprocess: 0 ok" in r2.stdout
