"""Clips that hang, crash or exhaust the decoder, an autoencoder that raises for one clip,
headers that lie, variable frame rates, odd sizes, rotation, folders of assorted containers, and
one-clip row groups. Real files (PyAV-written), real child processes, real Ray (one job)."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from media_helpers import frame_index_of, inflate_mp4_durations, write_synthetic
from pipeline_helpers import make_folder_clips, tiny_config

import data_pipeline.preprocess as P
from data_pipeline.decode import ClipRejected, DecodeParams, decode_clip
from data_pipeline.isolate import DecoderProcess, IsolationSettings, decode_faults
from dfm_video import faults
from dfm_video.data import schema as S
from dfm_video.media import resize_crop

TB = Fraction(1, 1000)  # millisecond timestamps


def nearest_by_brute_force(pts_s: list[float], num_frames: int, fps: float) -> list[int]:
    """Reference: for each target k / fps, the frame with the nearest time (ties: the later one)."""
    out = []
    for k in range(num_frames):
        t = k / fps
        best = min(range(len(pts_s)), key=lambda i: (abs(pts_s[i] - t), -i))
        out.append(best)
    return out


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_variable_frame_rate_is_sampled_by_timestamp(tmp_path, decoder: str) -> None:
    # 30 frames: bursts 20 ms apart, then gaps of 110 ms (average ~ 15 fps, nothing like uniform)
    pts, t = [], 0
    for i in range(30):
        pts.append(t)
        t += 20 if i % 3 else 110
    path = write_synthetic(tmp_path / "vfr.mkv", pts, TB, fmt="matroska")
    clip = decode_clip(str(path), False, DecodeParams(9, 8.0, (32, 32), decoder))
    expected = nearest_by_brute_force([p / 1000 for p in pts], 9, 8.0)
    assert clip.indices == expected
    assert clip.indices != [
        int(k * clip.source_fps / 8.0 + 0.5) for k in range(9)
    ]  # index x average fps would be wrong
    assert [frame_index_of(f) for f in clip.frames] == expected  # the pixels are those frames'


def test_header_that_lies_about_its_length(tmp_path) -> None:
    """Durations in the header x 50: sampling follows the frames that exist, never the header."""
    honest = write_synthetic(tmp_path / "honest.mp4", list(range(0, 40 * 40, 40)), TB)  # 40 frames at 25 fps
    liar = tmp_path / "liar.mp4"
    liar.write_bytes(honest.read_bytes())
    inflate_mp4_durations(liar, 50)
    params = DecodeParams(9, 8.0, (32, 32), "decord")
    a, b = decode_clip(str(honest), False, params), decode_clip(str(liar), False, params)
    assert a.indices == b.indices == [0, 3, 6, 9, 13, 16, 19, 22, 25] and np.array_equal(a.frames, b.frames)
    short = tmp_path / "short_liar.mp4"  # 12 real frames, a header claiming 24 s
    write_synthetic(short, list(range(0, 12 * 40, 40)), TB)
    inflate_mp4_durations(short, 50)
    for decoder in ("decord", "pyav"):
        with pytest.raises(ClipRejected) as err:
            decode_clip(str(short), False, DecodeParams(9, 8.0, (32, 32), decoder))
        assert err.value.reason == "too short" and "12 frames decoded" in err.value.detail


def test_odd_frame_sizes(tmp_path) -> None:
    path = write_synthetic(
        tmp_path / "odd.mp4", list(range(0, 30 * 40, 40)), TB, size=(61, 97), pix_fmt="yuv444p", marker=True
    )
    for res in ((33, 31), (32, 32)):
        clip = decode_clip(str(path), False, DecodeParams(9, 8.0, res, "decord"))
        assert clip.frames.shape == (9, *res, 3) and clip.source_hw == (61, 97)
        ref = decode_clip(str(path), False, DecodeParams(9, 8.0, (61, 97), "pyav"))  # full size, no resize
        assert np.array_equal(clip.frames, resize_crop(ref.frames, res))


def test_rotation_metadata_is_honoured(tmp_path) -> None:
    """A 64x48 (w x h) stream with a 90-degree display rotation is shown 48 wide, 64 high; the white
    block painted top-left of the stored frames ends bottom-left (90 degrees counter-clockwise,
    FFmpeg's display-matrix convention)."""
    path = write_synthetic(
        tmp_path / "rot.mp4", list(range(0, 30 * 40, 40)), TB, size=(48, 64), marker=True, rotation=90
    )
    for decoder in ("decord", "pyav"):
        clip = decode_clip(str(path), False, DecodeParams(9, 8.0, (64, 48), decoder))
        assert clip.source_hw == (64, 48), decoder
        white = clip.frames[0, ..., 0] > 200
        rows, cols = np.nonzero(white)
        # stored rows 0..11 become displayed columns 0..11; stored columns 0..15 become rows 48..63
        assert rows.min() >= 48 - 2 and rows.max() == 63 and cols.min() == 0 and cols.max() <= 11 + 2, (
            decoder,
            rows,
            cols,
        )


def test_isolated_decoder_survives_hang_crash_memory_and_io_errors(tmp_path, monkeypatch) -> None:
    path = write_synthetic(tmp_path / "ok.mp4", list(range(0, 30 * 40, 40)), TB)
    for name in ("hang", "segv", "oom", "eio"):
        (tmp_path / f"{name}.mp4").write_bytes(path.read_bytes())
    for k, v in faults.env(decode__fault={f"{n}.mp4": n for n in ("hang", "segv", "oom", "eio")}).items():
        monkeypatch.setenv(k, v)
    params = DecodeParams(9, 8.0, (32, 32), "decord")
    settings = IsolationSettings(timeout_s=5.0, memory_mb=3072, io_retries=2, retry_backoff_s=0.05)
    proc = DecoderProcess(dataclasses.replace(settings, faults=decode_faults()), threads=1)
    try:
        got = {
            n: proc.decode(str(tmp_path / f"{n}.mp4"), False, params)
            for n in ("ok", "hang", "segv", "oom", "eio", "ok")
        }
    finally:
        proc.stop()
    assert not isinstance(got["ok"], ClipRejected) and got["ok"].frames.shape == (9, 32, 32, 3)
    assert got["hang"].reason == "decode timeout after 5 s"
    assert got["segv"].reason == "decoder crashed: SIGSEGV"
    assert got["oom"].reason == "decoder out of memory"
    assert got["eio"].reason == "I/O error" and "after 2 retries" in got["eio"].detail
    assert np.array_equal(
        got["ok"].frames, decode_clip(str(path), False, DecodeParams(9, 8.0, (32, 32), "decord")).frames
    )


@pytest.mark.parametrize("k", [1, 2, 3])
def test_transient_io_errors_are_retried_io_retries_times(tmp_path, monkeypatch, k: int) -> None:
    """The first k attempts fail with EIO (counted in a file, outside the decoder processes): k <= io_retries
    decodes the clip after k retries, k = io_retries + 1 rejects it after exactly io_retries + 1 attempts."""
    path = write_synthetic(tmp_path / "flaky.mp4", list(range(0, 30 * 40, 40)), TB)
    counter = tmp_path / "attempts.txt"
    fault = {"flaky.mp4": {"eio_first": k, "count_file": str(counter)}}
    monkeypatch.setenv(*faults.env(decode__fault=fault).popitem())
    params = DecodeParams(9, 8.0, (32, 32), "decord")
    settings = IsolationSettings(timeout_s=30.0, io_retries=2, retry_backoff_s=0.01, faults=decode_faults())
    proc = DecoderProcess(settings, threads=1)
    try:
        got = proc.decode(str(path), False, params)
    finally:
        proc.stop()
    attempts = len(counter.read_text().splitlines())
    if k <= settings.io_retries:
        assert not isinstance(got, ClipRejected), got
        assert attempts == k + 1
        assert np.array_equal(got.frames, decode_clip(str(path), False, params).frames)
    else:
        assert isinstance(got, ClipRejected) and got.reason == "I/O error"
        assert attempts == settings.io_retries + 1
        assert "attempt 3 of 3 failing" in got.detail and "after 2 retries" in got.detail


def test_decoder_process_is_recycled_after_recycle_after_clips(tmp_path) -> None:
    path = write_synthetic(tmp_path / "ok.mp4", list(range(0, 30 * 40, 40)), TB)
    params = DecodeParams(9, 8.0, (32, 32), "decord")
    proc = DecoderProcess(IsolationSettings(timeout_s=30.0, recycle_after=2), threads=1)
    pids, frames = [], []
    try:
        for _ in range(5):
            got = proc.decode(str(path), False, params)
            assert not isinstance(got, ClipRejected), got
            pids.append(proc.proc.pid)
            frames.append(got.frames)
    finally:
        proc.stop()
    # a fresh child every 2 clips: a a b b c, the old one gone
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4] and len(set(pids)) == 3
    assert all(np.array_equal(f, frames[0]) for f in frames)


@pytest.mark.parametrize("layout", ["split", "fused"])
def test_faulty_clips_become_rejects_and_the_job_goes_on(ray_local, tmp_path, monkeypatch, layout: str) -> None:
    """Real Ray: a decoder that hangs, one that kills itself, an autoencoder that raises for one clip
    (in a batch of several), assorted FFmpeg containers and a non-media file in the input folder."""
    clips = tmp_path / "clips"
    make_folder_clips(clips, 3)
    seed = clips / "a" / "seed0.mp4"
    for name in ("hang.mp4", "segv.mp4", "encfail.mp4"):
        (clips / "a" / name).write_bytes(seed.read_bytes())
    pts = list(range(0, 30 * 40, 40))
    write_synthetic(clips / "b" / "mpeg2.mpg", list(range(30)), Fraction(1, 25), codec="mpeg2video", fmt="mpeg")
    write_synthetic(clips / "b" / "flash.flv", pts, TB, codec="flv", fmt="flv")
    write_synthetic(clips / "b" / "windows.wmv", pts, TB, codec="wmv2", fmt="asf")
    (clips / "b" / "README.txt").write_text("notes, not a video\n")
    fault_env = faults.env(decode__fault={"hang.mp4": "hang", "segv.mp4": "segv"}, encode__oom=["encfail.mp4"])
    for k, v in fault_env.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "out"
    cfg = tiny_config(
        out,
        clips,
        f"preprocess.layout={layout}",
        "preprocess.decode_timeout_s=8",
        "preprocess.batch_size=4",
        "preprocess.samples_per_shard=4",
        "preprocess.clips_per_task=2",
        "preprocess.latent_dtype=bfloat16",
    )
    summary = P.run(cfg)
    rejects = {r["key"]: r for r in S.read_rejects(out).to_pylist()}
    assert {k: (r["stage"], r["reason"]) for k, r in rejects.items()} == {
        "a/hang.mp4": ("decode", "decode timeout after 8 s"),
        "a/segv.mp4": ("decode", "decoder crashed: SIGSEGV"),
        "a/encfail.mp4": ("encode", "autoencoder error"),
    }
    assert {r["run_id"] for r in rejects.values()} == {summary.run_id} and summary.run_id
    assert (summary.ok, summary.rejected) == (6, 3) and summary.ignored == {".txt": 1}
    assert "1 non-media files ignored (1 .txt)" in summary.line()
    info = S.DatasetInfo.load(out)
    assert info.manifest["ignored_files"] == {".txt": 1} and info.manifest["runs"][-1]["run_id"] == summary.run_id
    samples = {s.key: s for shard in info.shards for s in S.read_shard(shard)}
    assert set(samples) == {
        "a/seed0.mp4",
        "b/seed1.mp4",
        "a/clip002.mp4",
        "b/mpeg2.mpg",
        "b/flash.flv",
        "b/windows.wmv",
    }
    assert samples["b/mpeg2.mpg"].source_height == 48 and samples["b/mpeg2.mpg"].source_width == 64
    assert samples["a/seed0.mp4"].source_fps == 25.0 and samples["a/seed0.mp4"].source_width > 0
    for shard in info.shards:  # one clip per row group; latents stored as bfloat16, read back as float32
        assert pq.ParquetFile(shard).metadata.num_row_groups == S.read_shard_meta(shard).num_samples
        assert S.read_shard_meta(shard).latent_dtype == "bfloat16"
    x = samples["a/seed0.mp4"].levels[1]
    assert x.dtype == torch.float32 and torch.equal(x, x.to(torch.bfloat16).float())
    # statistics are float64 moments of the stored (bfloat16-rounded) values
    from dfm_video.dfm.standardize import LevelMoments

    direct = LevelMoments(2, 48)
    for smp in samples.values():
        direct.update(smp.levels)
    assert info.moments.mean.dtype == torch.float64 and torch.allclose(info.moments.mean, direct.mean, atol=1e-12)


def test_old_shards_and_rejects_parts_still_read(tmp_path) -> None:
    """Shards of the older format (16-clip row groups, no source size columns) and rejects parts
    without run_id read as before; new bfloat16 shards read through the trainer's ShardDataset."""
    import pyarrow as pa

    from dfm_video.data.loader import ShardDataset
    from dfm_video.data.store import DatasetStore, Reject, ShardLayout, write_clips

    torch.manual_seed(0)
    shapes = [[4, 3, 2, 2], [4, 3, 4, 4]]
    layout = ShardLayout([[1, 2, 2]], "causal", shapes, {"id": "pixel"}, "bfloat16")
    samples = [
        S.Sample(
            f"k{i}", "a", 0, "train", f"/p/{i}.mp4", 8.0, 25.0, [0, 3], [torch.randn(*s) for s in shapes], 360, 640
        )
        for i in range(3)
    ]
    ref = [[x.clone() for x in s.levels] for s in samples]
    DatasetStore(tmp_path).close()  # creates shards/ and rejects/
    name = write_clips(tmp_path, samples, [Reject("bad", "/p/bad.mp4", "decode", "too short", "x", "run-9")], layout)
    path = tmp_path / S.SHARD_DIR / name
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    ds = ShardDataset([(path, g, 0) for g in range(3)], 2, dtypes={path: "bfloat16"})
    for g in range(3):
        levels, label = ds[g]
        assert label == 0 and all(torch.equal(a, b.to(torch.bfloat16).float()) for a, b in zip(levels, ref[g]))
    assert S.read_rejects(tmp_path).to_pylist()[0]["run_id"] == "run-9"

    # the same clips as an old-format shard: float32, 16-clip row groups, no source size columns
    old = S.samples_to_table(samples, S.ShardMeta(3, [[1, 2, 2]], "causal", shapes, {"id": "pixel"}, {}))
    old = old.drop_columns(["source_height", "source_width"])
    old_path = tmp_path / "old.parquet"
    S.write_table_atomic(old, old_path, row_group_size=16)
    back = S.read_shard(old_path)
    assert [s.source_height for s in back] == [0, 0, 0] and torch.equal(back[1].levels[0], samples[1].levels[0])
    assert torch.equal(ShardDataset([(old_path, 0, 2)], 2)[0][0][1], samples[2].levels[1])
    old_rejects = pa.table({"key": ["o"], "path": ["/o"], "stage": ["decode"], "reason": ["r"], "detail": ["d"]})
    S.write_table_atomic(old_rejects, tmp_path / S.REJECTS_DIR / "part-old.parquet")
    assert {r["key"]: r["run_id"] for r in S.read_rejects(tmp_path).to_pylist()} == {"bad": "run-9", "o": ""}


def test_resource_wait_and_preflight_name_what_is_missing(ray_local, tmp_path) -> None:
    """On the live (local) cluster: a GPU request waits resource_wait_s and then says what is
    missing; the per-node preflight names the node and the path it cannot see."""
    import time as _time

    from data_pipeline.resources import preflight, wait_for_resources

    p = tiny_config(tmp_path / "o", tmp_path, "preprocess.encode_gpus=1", "preprocess.resource_wait_s=1.5").preprocess
    t0 = _time.time()
    with pytest.raises(
        ValueError, match=r"waited preprocess.resource_wait_s=1.5 s: .*1 GPUs but the Ray cluster has 0"
    ):
        wait_for_resources(p, poll_s=0.5)
    assert _time.time() - t0 >= 1.5
    wait_for_resources(tiny_config(tmp_path / "o", tmp_path).preprocess)  # fits: returns at once
    (tmp_path / "o").mkdir()
    preflight(tiny_config(tmp_path / "o", tmp_path).preprocess)
    missing = tiny_config(
        tmp_path / "o",
        tmp_path,
        "preprocess.autoencoder=cogvideox",
        f"preprocess.autoencoder_path={tmp_path / 'no-vae'}",
    ).preprocess
    with pytest.raises(ValueError, match=r"preflight: .*node \S+ \(.+\) lacks preprocess.autoencoder_path=.*no-vae"):
        preflight(missing)


def test_decode_fault_with_an_unknown_action_names_the_setting(monkeypatch) -> None:
    monkeypatch.setenv(*faults.env(decode__fault={"x.mp4": "explode"}).popitem())
    with pytest.raises(ValueError, match=r"DFM_FAULTS decode.fault must map file base names to one of"):
        decode_faults()
