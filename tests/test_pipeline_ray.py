"""The whole preprocessing job on real clips with a real local Ray (num_cpus=2, fractional actor
CPUs): Kinetics layout, bad inputs, images, a diffusers VAE, rerun/resume, and SIGKILL mid-run."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from media_helpers import write_raw_h264
from pipeline_helpers import (
    KINETICS_ROWS,
    MISSING_ROW,
    ROOT,
    cut_clip,
    make_bad_inputs,
    make_folder_clips,
    make_kinetics,
    save_tiny_vae,
    source_videos,
    tiny_config,
)
from proc_helpers import kill_group, run_group, start_group

import data_pipeline.preprocess as P
from data_pipeline.decode import DecodeParams, decode_clip
from data_pipeline.encode import frames_to_video
from dfm_video.autoencoders import load_autoencoder
from dfm_video.data import schema as S
from dfm_video.dfm.pyramid import decompose
from dfm_video.dfm.standardize import LevelMoments


def _cli(module: bool, clips: Path, out: Path) -> list[str]:
    entry = ["-m", "data_pipeline.preprocess"] if module else [str(ROOT / "data_pipeline" / "preprocess.py")]
    sets = [
        f"preprocess.input_dir={clips}",
        f"preprocess.output_dir={out}",
        "preprocess.samples_per_shard=1",
        "preprocess.batch_size=1",
        "preprocess.progress=false",
    ]
    return [
        sys.executable,
        *entry,
        "--config",
        "configs/preprocess/tiny.yaml",
        *[a for s in sets for a in ("--set", s)],
    ]


def _kill_after(proc: subprocess.Popen, out: Path, shards_before: int, extra_delay: float) -> None:
    """SIGKILL the job's process group once a new shard lands (plus `extra_delay` s)."""
    deadline = time.time() + 240
    try:
        while len(S.list_shards(out)) <= shards_before:
            assert proc.poll() is None, "the job ended before writing a new shard"
            assert time.time() < deadline, "no new shard after 240 s"
            time.sleep(0.02)
        time.sleep(extra_delay)
    finally:
        kill_group(proc)  # the process group this test started: driver, raylet, workers, decoders
        proc.wait()


def test_sigkill_at_random_moments_then_rerun(tmp_path) -> None:
    """Kill the whole job (driver + its embedded Ray + decoder processes) at three random moments,
    each in a rerun of the previous, then let a last rerun (the script form of the entry point)
    finish: every clip exactly once, only complete shards ever visible, no temporary leftovers.
    First in the module, so the in-process Ray of the other tests does not compete with it."""
    import random

    rng = random.Random(11)
    clips, out = tmp_path / "clips", tmp_path / "out"
    make_folder_clips(clips, 30)
    seen = 0
    for kill in range(3):
        proc = start_group(_cli(True, clips, out), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _kill_after(proc, out, seen, rng.uniform(0.0, 0.3))
        time.sleep(0.5)
        assert not (out / S.MANIFEST_FILE).exists(), (
            f"kill {kill}: the run finished before the kill: nothing was tested"
        )
        visible = S.list_shards(out)
        assert seen < len(visible) <= 30
        for shard in visible:  # every visible shard is complete and readable
            assert len(S.read_shard(shard)) == 1
        seen = len(visible)

    done = run_group(_cli(False, clips, out), 300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{30 - seen} ok, 0 rejected, {seen} skipped" in done.stdout
    keys = [s.key for s in _all_samples(out)]
    assert len(keys) == len(set(keys)) == 30
    assert not [p for p in (out / S.SHARD_DIR).iterdir() if p.name.startswith(S.TMP_PREFIX)]
    assert S.DatasetInfo.load(out).num_samples == 30


def _all_samples(root: Path) -> list[S.Sample]:
    return [s for shard in S.list_shards(root) for s in S.read_shard(shard)]


def _rejects(root: Path) -> dict[str, tuple[str, str]]:
    return {r["key"]: (r["stage"], r["reason"]) for r in S.read_rejects(root).to_pylist()}


def _check_stats_exact(root: Path, info: S.DatasetInfo) -> None:
    direct = LevelMoments(len(info.level_shapes), info.level_shapes[0][0])
    for smp in _all_samples(root):
        direct.update(smp.levels)
    assert torch.allclose(info.moments.mean, direct.mean, atol=1e-12)
    assert torch.allclose(info.moments.m2, direct.m2, rtol=1e-10)


def test_kinetics_end_to_end_rerun_and_resume(ray_local, tmp_path, monkeypatch, capsys) -> None:
    ann, root, labels_file = make_kinetics(tmp_path)
    out = tmp_path / "shards"
    cfg = tiny_config(
        out,
        root,
        "preprocess.input_type=kinetics",
        f"preprocess.annotations={ann}",
        f"preprocess.labels_file={labels_file}",
        "preprocess.split=validate",
        "preprocess.samples_per_shard=2",
        "preprocess.batch_size=2",
    )
    summary = P.run(cfg)
    assert (summary.ok, summary.rejected, summary.skipped, summary.input_rejects) == (6, 1, 0, 1)

    info = S.DatasetInfo.load(out)
    names = labels_file.read_text().splitlines()
    assert info.labels == names and info.num_samples == 6
    # at most samples_per_shard clips per shard (Ray may hand the writer a short batch)
    assert 3 <= len(info.shards) <= 6 and all(s["num_samples"] <= 2 for s in info.manifest["shards"])
    assert info.level_shapes == [[48, 9, 4, 4], [48, 9, 8, 8]] and info.factors == [[1, 2, 2]]
    samples = {s.key: s for s in _all_samples(out)}
    expected = {f"{y}_{a:06d}_{b:06d}": label for label, y, a, b in KINETICS_ROWS}
    assert {k: s.label for k, s in samples.items()} == expected  # both segments of each shared youtube id
    assert all(names[s.label_id] == s.label and s.fps == 8.0 and s.source_fps == 25.0 for s in samples.values())
    missing_key = "{1}_{2:06d}_{3:06d}".format(*MISSING_ROW)
    dup_key = "{1}_{2:06d}_{3:06d}".format(*KINETICS_ROWS[0])
    assert _rejects(out) == {missing_key: ("decode", "missing file"), dup_key: ("source", "duplicate")}
    assert S.read_rejects(out).num_rows == 2 and (out / S.REJECTS_FILE).is_file() and (out / S.CONFIG_FILE).is_file()
    _check_stats_exact(out, info)

    # the stored pyramid is exactly decode -> pixel codec -> decompose of the file
    smp = samples[dup_key]
    clip = decode_clip(smp.source_path, False, DecodeParams(9, 8.0, (32, 32), "decord"))
    ref = decompose(
        load_autoencoder("pixel", pixel_patch=(1, 4, 4)).encode(frames_to_video(clip.frames[None])), [(1, 2, 2)]
    )
    assert all(torch.equal(a, b[0]) for a, b in zip(smp.levels, ref)) and smp.frame_indices == clip.indices

    # a rerun over a complete output decodes nothing (no Ray Data job is even built)
    before = {p.name: p.stat().st_mtime_ns for p in S.list_shards(out)}
    monkeypatch.setattr(P, "build_dataset", lambda *a, **k: pytest.fail("rerun of a complete output started work"))
    again = P.run(cfg)
    assert (again.ok, again.rejected, again.skipped) == (0, 0, 7)
    assert {p.name: p.stat().st_mtime_ns for p in S.list_shards(out)} == before
    monkeypatch.undo()

    # --strict: the dataset has rejects -> exit 1, with the final summary line still printed
    args = ["--config", "configs/preprocess/tiny.yaml", "--strict"] + [
        a
        for kv in (
            f"preprocess.input_dir={root}",
            f"preprocess.output_dir={out}",
            "preprocess.input_type=kinetics",
            f"preprocess.annotations={ann}",
            f"preprocess.labels_file={labels_file}",
            "preprocess.split=validate",
            "preprocess.progress=false",
            "preprocess.samples_per_shard=2",
        )
        for a in ("--set", kv)
    ]
    assert P.main(args) == 1
    captured = capsys.readouterr()
    assert "preprocess: 0 ok, 0 rejected, 7 skipped" in captured.out and "--strict: 2 clip(s) rejected" in captured.err

    # resume: lose one shard (as if its run died before writing it) and supply the missing file;
    # with retry_rejects the rerun redoes exactly those clips, nothing twice, stats still exact
    lost = S.list_shards(out)[0]
    lost_keys = set(S.read_keys(lost))
    lost.unlink()
    cut_clip(
        source_videos()["bikes"],
        Path(samples[dup_key].source_path).parents[1] / MISSING_ROW[0] / f"{missing_key}.mp4",
        0.5,
        1.2,
    )
    resumed = P.run(
        tiny_config(
            out,
            root,
            "preprocess.input_type=kinetics",
            f"preprocess.annotations={ann}",
            f"preprocess.labels_file={labels_file}",
            "preprocess.split=validate",
            "preprocess.samples_per_shard=2",
            "preprocess.retry_rejects=true",
        )
    )
    assert (resumed.ok, resumed.rejected, resumed.skipped) == (len(lost_keys) + 1, 0, 6 - len(lost_keys))
    keys = [s.key for s in _all_samples(out)]
    assert len(keys) == len(set(keys)) == 7 and set(keys) == set(expected) | {missing_key}
    assert _rejects(out) == {dup_key: ("source", "duplicate")}
    info = S.DatasetInfo.load(out)
    assert info.num_samples == 7 and len(info.manifest["runs"]) == 4
    _check_stats_exact(out, info)


def test_bad_inputs_are_recorded_not_fatal(ray_local, tmp_path) -> None:
    folder = tmp_path / "videos"
    expected = make_bad_inputs(folder / "bad")
    make_folder_clips(folder, 2)
    write_raw_h264(folder / "a" / "raw_stream.mp4")  # decord cannot read it: PyAV fallback
    summary = P.run(tiny_config(tmp_path / "out", folder))
    assert (summary.ok, summary.rejected, summary.pyav_fallbacks) == (3, len(expected), 1)
    assert _rejects(tmp_path / "out") == {f"bad/{name}": ("decode", reason) for name, reason in expected.items()}
    details = {r["key"]: r["detail"] for r in S.read_rejects(tmp_path / "out").to_pylist()}
    assert all(str(folder / key) in detail for key, detail in details.items())  # the message names the file
    assert {s.key for s in _all_samples(tmp_path / "out")} == {"a/seed0.mp4", "b/seed1.mp4", "a/raw_stream.mp4"}
    assert "1 decoded by the PyAV fallback" in summary.line()


def test_images_become_single_frame_clips(ray_local, tmp_path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("n01440764", "n01443537"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(
                tmp_path / "imgs" / label / f"{i}.JPEG"
            )
    (tmp_path / "imgs" / "n01443537" / "broken.png").write_bytes(b"\x89PNG truncated")
    summary = P.run(tiny_config(tmp_path / "out", tmp_path / "imgs", "preprocess.input_type=images"))
    assert (summary.ok, summary.rejected) == (4, 1)
    info = S.DatasetInfo.load(tmp_path / "out")
    assert info.level_shapes == [[48, 1, 4, 4], [48, 1, 8, 8]] and info.labels == ["n01440764", "n01443537"]
    smp = _all_samples(tmp_path / "out")[0]
    assert smp.frame_indices == [0] and smp.fps == 0.0
    assert _rejects(tmp_path / "out") == {"n01443537/broken.png": ("decode", "unreadable")}


def test_diffusers_vae_and_temporal_pyramid(ray_local, tmp_path) -> None:
    vae = save_tiny_vae("cogvideox", tmp_path / "vae")
    make_folder_clips(tmp_path / "videos", 3)
    cfg = tiny_config(
        tmp_path / "out",
        tmp_path / "videos",
        "preprocess.autoencoder=cogvideox",
        f"preprocess.autoencoder_path={vae}",
        "dfm.factors=[[2,2,2]]",
        "dfm.temporal_mode=causal",
    )
    summary = P.run(cfg)
    assert (summary.ok, summary.rejected) == (3, 0)
    info = S.DatasetInfo.load(tmp_path / "out")
    ae = load_autoencoder("cogvideox", vae)
    assert info.level_shapes == [[4, 2, 4, 4], [4, 3, 8, 8]] and info.autoencoder["id"] == ae.id
    assert info.autoencoder["scaling"]["multiplier"] == [0.7] * 4 and info.temporal_mode == "causal"
    smp = next(s for s in _all_samples(tmp_path / "out") if s.key == "a/seed0.mp4")
    clip = decode_clip(smp.source_path, False, DecodeParams(9, 8.0, (32, 32), "decord"))
    ref = decompose(ae.encode(frames_to_video(clip.frames[None])), [(2, 2, 2)], "causal")
    assert all(torch.allclose(a, b[0], atol=1e-5) for a, b in zip(smp.levels, ref))
