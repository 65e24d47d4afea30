"""The sampling loop of one rank: plan -> skip what exists -> generate batch by batch -> write.

Every rank runs the same code on its own share of the global batches (plan.py); rank 0 also
checks at the end that every index has its file and writes the report and contact sheet.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from PIL import Image

from dfm_video.data.mixture import bucket_meta
from dfm_video.dfm import count_nfe, sampling_schedule
from dfm_video.media import contact_sheet, to_uint8, write_png
from dfm_video.sampling import plan, writer
from dfm_video.sampling.generator import Generator, decode_latents, generate, load_generator, resolve_labels
from dfm_video.sampling.launch import Launch

#: Progress lines and notes; `python -m dfm_video.sample` shows INFO on stderr.
log = logging.getLogger("dfm_video.sample")


def _floats(text: str, n: int, flag: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected {n} comma-separated numbers") from None
    if len(vals) != n:
        raise ValueError(f"{flag} {text!r}: expected {n} comma-separated numbers")
    return vals


def _labels(gen: Generator, args: argparse.Namespace, num: int) -> tuple[list[int], dict[str, Any]]:
    """Per-index class ids and how they were chosen (part of the folder's record)."""
    if args.labels_file:
        if args.label is not None or args.class_id is not None:
            raise ValueError("give --labels-file or --label / --class-id, not both")
        y = plan.labels_from_file(args.labels_file, gen.labels, gen.model.null_class, num)
        digest = hashlib.sha256(Path(args.labels_file).read_bytes()).hexdigest()
        return y, {"mode": "file", "sha256": digest}
    if args.label is not None or args.class_id is not None or not gen.labels:
        y = resolve_labels(gen, args.label, args.class_id, num)
        return y, {"mode": "fixed", "class": y[0]}
    return plan.balanced_labels(num, len(gen.labels)), {"mode": "balanced", "classes": len(gen.labels)}


def _eta(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _read_back(path: Path) -> np.ndarray:
    """A written sample as (T, H, W, 3) uint8 (for the contact sheet)."""
    if path.suffix == ".png":
        return np.asarray(Image.open(path).convert("RGB"))[None]
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Sample this rank's share of `--num-samples` into `--out`; the report (complete on rank 0).

    `args` holds the options of `python -m dfm_video.sample` (its `parse_args`)."""
    launch = Launch.from_env(args.local_rank)
    device = launch.device(args.device)
    if args.dtype == "bf16" and device.type != "cuda":
        log.warning("--dtype bf16 on CPU is slow; it is meant for GPUs")
    gen = load_generator(
        args.checkpoint,
        device,
        torch.bfloat16 if args.dtype == "bf16" else torch.float32,
        autoencoder_path=args.autoencoder_path,
    )
    if args.bucket is not None:  # a model trained on data.mix: which dataset's shape
        gen = dataclasses.replace(gen, meta=bucket_meta(gen.meta, args.bucket))
    sc = gen.cfg.sample
    steps = [int(v) for v in args.steps.split(",")] if args.steps else list(sc.steps)
    if len(steps) != gen.cfg.dfm.num_stages:
        raise ValueError(f"--steps needs one count per stage ({gen.cfg.dfm.num_stages}), got {steps}")
    tau = args.tau if args.tau is not None else sc.tau
    cfg_scale = args.cfg if args.cfg is not None else sc.cfg_scale
    interval = _floats(args.cfg_interval, 2, "--cfg-interval") if args.cfg_interval else sc.cfg_interval
    num = plan.check_count(args.num_samples if args.num_samples is not None else sc.num_samples)
    batch_size = args.batch_size if args.batch_size is not None else min(num, 8)
    seed = args.seed if args.seed is not None else sc.seed
    y, label_mode = _labels(gen, args, num)
    image = int(gen.meta["latent_shape"][1]) == 1 and int(gen.meta["autoencoder"].get("temporal", 1)) == 1
    fps = float(gen.meta.get("fps") or 8.0)
    out = Path(args.out)
    record = {
        "format": 1,
        "checkpoint": str(gen.source),
        "weights_sha256": gen.weights_sha256,
        "latent_shape": list(gen.meta["latent_shape"]),
        "autoencoder": gen.meta["autoencoder"].get("id"),
        "steps": steps,
        "tau": tau,
        "cfg_scale": cfg_scale,
        "cfg_interval": list(interval) if interval else None,
        "seed": seed,
        "noise": "per sample, from sha256(seed, index)",
        "labels": label_mode,
        "dtype": args.dtype,
        "batch_size": batch_size,
        "fps": fps,
    }
    batches = plan.global_batches(num, batch_size)  # checks --batch-size before any rank talks
    paths = [writer.sample_path(out, i, gen.labels, y[i], image) for i in range(num)]
    launch.start()  # every argument is checked: from here on the ranks talk
    try:
        if args.overwrite:
            if launch.rank == 0:
                writer.clear_folder(out)
            launch.all_gather(None)  # nobody reads the folder before rank 0 has emptied it
        resumed = writer.claim_folder(out, record)
        # Ranks scan before any of them writes (the gather is the barrier); the union of what each
        # saw missing is split round-robin, so a resumed run is as balanced as a fresh one.
        seen = launch.all_gather(sorted(k for k, b in enumerate(batches) if not all(paths[i].is_file() for i in b)))
        pending = sorted(set().union(*map(set, seen)))
        mine = pending[launch.rank :: launch.world]
        todo_total = sum(len(batches[k]) for k in mine)
        written, t0 = 0, time.time()
        for k in mine:
            idx = batches[k]
            latents, previews = generate(
                gen,
                [y[i] for i in idx],
                steps=steps,
                tau=tau,
                cfg_scale=cfg_scale,
                cfg_interval=interval,
                seed=seed,
                previews=args.previews,
                indices=idx,
            )
            video = decode_latents(gen, latents)
            preview_video = {s: decode_latents(gen, lat) for s, lat in previews.items()}
            for j, i in enumerate(idx):
                if paths[i].is_file():
                    continue  # written before a kill in the middle of this batch: never twice
                for s, pv in sorted(preview_video.items()):
                    stem = writer.sample_path(out / "previews", i, gen.labels, y[i], image).name
                    writer.write_sample(out / "previews" / f"stage{s + 1}_{stem}", to_uint8(pv[j]), fps)
                writer.write_sample(paths[i], to_uint8(video[j]), fps)
                written += 1
            if not args.no_progress:
                done = sum(len(batches[m]) for m in mine[: mine.index(k) + 1])
                rate = done / max(time.time() - t0, 1e-9)
                log.info(
                    "[rank %d/%d] %d/%d samples, %.3g/s, ETA %s",
                    launch.rank,
                    launch.world,
                    done,
                    todo_total,
                    rate,
                    _eta((todo_total - done) / rate),
                )
        total_written, total_batches = launch.sum([written, len(mine)])
    finally:
        launch.stop()
    report: dict[str, Any] = {"checkpoint": str(gen.source), "step": gen.step, "rank": launch.rank, "written": written}
    if launch.rank != 0:
        return report
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise ValueError(
            f"{len(missing)} of {num} samples missing after the run "
            f"({missing[0]}, ...): rerun the same command to finish"
        )
    first = [_read_back(p) for p in paths[:8]]
    sheet = write_png(out / "contact_sheet.png", contact_sheet(first, scale=max(1, 128 // first[0].shape[1])))
    wanted = {p.name for p in paths}
    preview_files = (
        sorted(p for p in (out / "previews").glob("stage*") if p.name.split("_", 1)[1] in wanted)
        if args.previews
        else []
    )
    report.update(
        {
            "samples": [str(p) for p in paths],
            "contact_sheet": str(sheet),
            "previews": [str(p) for p in preview_files],
            "labels": [gen.labels[i] if i < len(gen.labels) else None for i in y],
            "num_samples": num,
            "written": total_written,
            "skipped": num - total_written,
            "resumed": resumed,
            "world_size": launch.world,
            "batch_size": batch_size,
            "batches_run": total_batches,
            "frames": int(first[0].shape[0]),
            "size": [int(first[0].shape[1]), int(first[0].shape[2])],
            "fps": fps,
            "steps": steps,
            "tau": tau,
            "cfg_scale": cfg_scale,
            "cfg_interval": list(interval) if interval else None,
            "seed": seed,
            "nfe": count_nfe(sampling_schedule(steps, tau), cfg_scale, interval),  # guidance interval counted
        }
    )
    (out / writer.REPORT).write_text(json.dumps(report, indent=2))
    return report
