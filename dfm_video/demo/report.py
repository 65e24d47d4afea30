"""The demo's evidence: DFM vs flow matching trained the same way, side by side.

    python -m dfm_video.demo.report --dfm RUN_DIR --fm RUN_DIR --out DIR [--num-samples 12] [--no-fvd]

Both runs are sampled with their own saved `sample.*` settings and the same noise seed (what
`python -m dfm_video.sample` writes), the training clips are decoded from the shards the DFM run
trained on, and the report writes
  comparison.png   one block per class: a training clip, DFM, FM, and DFM's coarse-stage preview
                   (the clean estimate when stage 1 reaches tau), 8 frames each
  loss_curves.png  loss/* of both runs from their metrics.jsonl
  summary.json     every number below
and prints: high-frequency energy of the samples over the training clips' (goal 0.75-1.33x),
mean PSNR to the nearest training clip (higher = closer to the data), the generated finest level's
std in standardised units (data: 1.0), and FVD (I3D) against the training clips. Tiny sets make
FVD biased and noisy: compare the two methods, not the values with papers.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from dfm_video.config import config_from_dict, config_to_dict
from dfm_video.console import configure_output
from dfm_video.data.mixture import open_data
from dfm_video.demo.measures import fine_level_std, quality_summary
from dfm_video.dfm import LevelStats, recompose
from dfm_video.eval.frechet import feature_statistics, frechet_distance
from dfm_video.evaluate import build_fvd
from dfm_video.media import to_uint8
from dfm_video.sampling import Generator, decode_latents, generate, load_generator
from dfm_video.train.plots import plot_losses


def training_clips(gen: Generator) -> tuple[Tensor, list[int]]:
    """The clips the run trained on, decoded from its shards: (N, 3, F, H, W) in [-1, 1], labels."""
    d = config_to_dict(gen.cfg)
    d["data"] = {**d["data"], "shards": gen.meta["source"], "num_workers": 0}
    data = open_data(config_from_dict(d, "demo report"), "demo report").buckets[0]
    lat, labels = [], []
    for i in range(len(data.dataset)):
        levels, y = data.dataset[i]
        lat.append(recompose([x[None] for x in levels], data.info.factors, data.info.temporal_mode))
        labels.append(y)
    return decode_latents(gen, torch.cat(lat)), labels


def _frames(video: Tensor, n: int, scale: int) -> list[np.ndarray]:
    v = to_uint8(video)  # (T, H, W, 3)
    idx = np.linspace(0, v.shape[0] - 1, num=min(n, v.shape[0])).round().astype(int)
    return [v[i].repeat(scale, axis=0).repeat(scale, axis=1) for i in idx]


def comparison_sheet(
    rows: Sequence[tuple[str, Tensor]], out: Path, frames: int = 8, scale: int = 3, label_w: int = 150
) -> Path:
    """One labelled row of `frames` evenly spaced frames per (label, video (3, F, H, W))."""
    imgs = [(label, _frames(v, frames, scale)) for label, v in rows]
    h, w = imgs[0][1][0].shape[:2]
    gap = 3
    cols = max(len(f) for _, f in imgs)
    sheet = Image.new("RGB", (label_w + cols * (w + gap), len(imgs) * (h + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, fr) in enumerate(imgs):
        y0 = r * (h + gap)
        draw.text((4, y0 + h // 2 - 6), label, fill="black")
        for c, f in enumerate(fr):
            sheet.paste(Image.fromarray(f), (label_w + c * (w + gap), y0))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def _upsample_to(video: Tensor, like: Tensor) -> Tensor:
    return torch.nn.functional.interpolate(video.float(), size=like.shape[-3:], mode="nearest")


def run(dfm_dir: str, fm_dir: str, out: str, num_samples: int = 12, fvd: bool = True) -> dict:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    gens = {"DFM": load_generator(dfm_dir), "FM": load_generator(fm_dir)}
    if gens["DFM"].labels != gens["FM"].labels:
        raise ValueError(f"{dfm_dir} and {fm_dir} were trained on different label sets")
    real, real_y = training_clips(gens["DFM"])
    labels = gens["DFM"].labels
    y = [i % max(len(labels), 1) for i in range(num_samples)]
    videos, previews, summary = {}, None, {"num_samples": num_samples, "num_training_clips": len(real), "methods": {}}
    for name, gen in gens.items():
        sc = gen.cfg.sample
        lat, prev = generate(
            gen,
            y,
            steps=list(sc.steps),
            tau=sc.tau,
            cfg_scale=sc.cfg_scale,
            cfg_interval=sc.cfg_interval,
            seed=sc.seed,
            previews=name == "DFM",
        )
        videos[name] = decode_latents(gen, lat)
        row = quality_summary(videos[name], real)
        row.update(steps=list(sc.steps), cfg_scale=sc.cfg_scale, train_steps=gen.cfg.train.steps)
        if gen.cfg.dfm.num_stages > 1:
            stats = LevelStats.from_dict(gen.meta["stats"]) if gen.meta.get("stats") else None
            row["fine_level_std"] = fine_level_std(lat, gen.cfg.dfm.factors, gen.cfg.dfm.temporal_mode, stats)
        if prev:
            previews = decode_latents(gen, prev[0])
        summary["methods"][name] = row
    if fvd:
        ext = build_fvd(None, torch.device("cpu"), real.shape[2])

        def stats(v: Tensor, what: str):
            return feature_statistics(ext.fn([torch.from_numpy(to_uint8(c)) for c in v]).numpy(), what)

        ref = stats(real, "training clips")
        for name, v in videos.items():
            summary["methods"][name]["fvd"] = float(frechet_distance(*ref, *stats(v, name), method="eigh"))
    rows = []
    for c, label in enumerate(labels or ["uncond"]):
        picks = [i for i, yy in enumerate(y) if yy == c][:1]
        data_i = [i for i, yy in enumerate(real_y) if yy == c][:1]
        if not picks:
            continue
        i = picks[0]
        if data_i:
            rows.append((f"{label}: data", real[data_i[0]]))
        rows.append((f"{label}: DFM", videos["DFM"][i]))
        rows.append((f"{label}: FM", videos["FM"][i]))
        if previews is not None:
            rows.append((f"{label}: DFM preview", _upsample_to(previews[i : i + 1], real[:1])[0]))
    sheet = comparison_sheet(rows, out_dir / "comparison.png")
    curves = plot_losses(
        {"DFM": Path(dfm_dir) / "metrics.jsonl", "FM": Path(fm_dir) / "metrics.jsonl"},
        out_dir / "loss_curves.png",
        keys=["loss/total", "loss/stage1", "loss/stage2"],
        title="training loss: DFM vs flow matching (FM)",
    )
    summary.update(comparison_sheet=str(sheet), loss_curves=str(curves))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def format_summary(s: dict) -> str:
    m = s["methods"]
    d, f = m["DFM"], m["FM"]
    lines = [
        f"{'':34}{'DFM':>10}{'FM':>10}",
        f"{'high-freq. energy / training clips':34}{d['hf_ratio']:>9.2f}x{f['hf_ratio']:>9.2f}x   (goal 0.75-1.33x)",
        f"{'PSNR to nearest training clip':34}{d['nearest_psnr_db']:>7.1f} "
        f"dB{f['nearest_psnr_db']:>7.1f} dB   (higher = closer to the data)",
    ]
    if "fvd" in d:
        lines.append(
            f"{'FVD vs the training clips':34}{d['fvd']:>10.0f}{f['fvd']:>10.0f} "
            "  (lower is better; tiny sets: compare, don't quote)"
        )
    if "fine_level_std" in d:
        lines.append(f"{'DFM finest level std (data 1.0)':34}{d['fine_level_std']:>10.2f}")
    hf_ok = 0.75 <= d["hf_ratio"] <= 1.33
    closer = d["nearest_psnr_db"] > f["nearest_psnr_db"]
    lines.append(
        f"DFM detail level {'matches' if hf_ok else 'does NOT match'} the data's (goal 0.75-1.33x); "
        f"DFM samples are {'closer to' if closer else 'NOT closer to'} the training clips than FM's at equal compute"
    )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dfm_video.demo.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dfm", required=True, help="DFM run directory (or export)")
    ap.add_argument("--fm", required=True, help="flow-matching run directory (or export)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--num-samples", type=int, default=12)
    ap.add_argument("--no-fvd", action="store_true", help="skip FVD (I3D on CPU takes a while)")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    if not configure_output(args.verbose):
        logging.getLogger("dfm_video.evaluate").setLevel(logging.ERROR)  # "9-frame FVD" note: the summary says so
    try:
        s = run(args.dfm, args.fm, args.out, args.num_samples, fvd=not args.no_fvd)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(s))
    print(
        f"comparison sheet {s['comparison_sheet']}, loss curves "
        f"{s['loss_curves']}, numbers {Path(args.out) / 'summary.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
