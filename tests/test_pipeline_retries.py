"""Retried writer calls: a retry that accepts another set of clips leaves a second shard with the
common keys; `finalize` keeps one copy per key, counts what it dropped, and a rerun always finishes.
A Ray actor killed right after writing is restarted (its constructor arguments still reachable) and
its call retried; the console of a run carries no library chatter (it goes to the run's log file).
Real shard files, real Ray, the real CLI in a child process; the actor death through dfm_video.faults."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import torch
from pipeline_helpers import ROOT, TINY_CONFIG, make_folder_clips

from dfm_video import faults
from dfm_video.data import schema as S
from dfm_video.data.store import DatasetStore, Reject, ShardLayout, write_clips
from dfm_video.dfm.pyramid import decompose
from dfm_video.dfm.standardize import LevelMoments

FACTORS, MODE = [[1, 2, 2]], "causal"
SHAPES = [[4, 3, 4, 4], [4, 3, 8, 8]]
LAYOUT = ShardLayout(FACTORS, MODE, SHAPES, {"id": "pixel-test", "kind": "pixel"})


def sample(key: str) -> S.Sample:
    g = torch.Generator().manual_seed(sum(map(ord, key)))
    levels = [x[0] for x in decompose(torch.randn(1, 4, 3, 8, 8, generator=g), FACTORS, MODE)]
    return S.Sample(key, "a", 0, "train", f"/clips/{key}.mp4", 8.0, 25.0, [0, 3, 6], levels)


def finalize(root) -> dict:
    store = DatasetStore(root)
    try:
        return store.finalize({"run_id": "t"}, SHAPES, FACTORS, MODE, LAYOUT.autoencoder)
    finally:
        store.close()


def test_retry_duplicates_get_one_owner_and_a_rerun_finishes(tmp_path) -> None:
    root = tmp_path / "ds"
    DatasetStore(root).close()  # the driver makes the folders before the workers write
    S.write_json_atomic(root / S.LABELS_FILE, {"schema_version": S.SCHEMA_VERSION, "labels": ["a"]})
    # batch 1: the first attempt rejected c (out of memory) and its actor died; the retry accepted it
    write_clips(
        root, [sample("a"), sample("b")], [Reject("c", "/clips/c.mp4", "encode", "autoencoder error", "")], LAYOUT
    )
    write_clips(root, [sample("a"), sample("b"), sample("c")], [], LAYOUT)
    # batch 2: two attempts of equal size that accepted different clips (d timed out, then f did)
    write_clips(root, [sample("d"), sample("e")], [Reject("f", "/clips/f.mp4", "decode", "decode timeout", "")], LAYOUT)
    write_clips(root, [sample("e"), sample("f")], [Reject("d", "/clips/d.mp4", "decode", "decode timeout", "")], LAYOUT)
    write_clips(root, [sample("g")], [], LAYOUT)  # an untouched batch
    shards_before = {p.name: S.read_keys(p) for p in S.list_shards(root)}

    manifest = finalize(root)

    assert manifest["num_samples"] == 7 and manifest["num_rejected"] == 0, manifest
    # {a,b} loses to the larger {a,b,c} and goes; of {d,e} and {e,f} the smaller name keeps e
    names = sorted(n for n, k in shards_before.items() if sorted(k) in (["d", "e"], ["e", "f"]))
    owner_of_e = names[0]
    assert manifest["retry_duplicates"] == {
        "rows_dropped": 3,
        "shards_deleted": 1,
        "shards_rewritten": 1,
        "rejects_dropped": 3,
    }, manifest["retry_duplicates"]
    info = S.DatasetInfo.load(root)
    keys = [k for p in info.shards for k in S.read_keys(p)]
    assert sorted(keys) == list("abcdefg")
    assert owner_of_e in {p.name for p in info.shards} and "e" in S.read_keys(root / S.SHARD_DIR / owner_of_e)
    # statistics are those of exactly one copy of each clip
    direct = LevelMoments(2, 4)
    for p in info.shards:
        for smp in S.read_shard(p):
            direct.update(smp.levels)
    assert torch.allclose(info.moments.mean, direct.mean, atol=1e-12) and torch.equal(info.moments.count, direct.count)
    # a rerun finishes and finds nothing more to resolve; the totals stay
    again = finalize(root)
    assert again["runs"][-1]["retry_duplicates"] == dict.fromkeys(manifest["retry_duplicates"], 0)
    assert again["retry_duplicates"] == manifest["retry_duplicates"] and again["num_samples"] == 7


def test_a_crash_inside_the_resolution_resolves_the_same_way(tmp_path) -> None:
    """A kill between writing the trimmed shard and deleting the old one leaves both: still one owner."""
    root = tmp_path / "ds"
    DatasetStore(root).close()
    write_clips(root, [sample("a"), sample("b"), sample("c")], [], LAYOUT)
    write_clips(root, [sample("c"), sample("d")], [], LAYOUT)  # keeps d, loses c
    write_clips(root, [sample("d")], [], LAYOUT)  # what the interrupted rewrite had already written
    manifest = finalize(root)
    assert manifest["num_samples"] == 4 and manifest["num_shards"] == 2
    assert sorted(k for p in S.list_shards(root) for k in S.read_keys(p)) == list("abcd")


def console_errors(text: str) -> list[str]:
    """Lines a user would read as an error or as library noise: Ray's C++ "E" lines, Python ERROR
    records, tracebacks, the token-authentication notice, Ray Data's own log lines."""
    pattern = re.compile(
        r"^\[[^\]]* E \d+ \d+\]|\bERROR\b|Traceback|Token authentication|core_worker|streaming_executor|"
        r"Progress bars disabled"
    )
    return [line for line in text.splitlines() if pattern.search(line)]


def test_writer_actor_killed_after_a_write_is_restarted_and_the_run_finishes(tmp_path) -> None:
    clips = tmp_path / "clips"
    make_folder_clips(clips, 5)
    out, marker = tmp_path / "out", tmp_path / "died"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        **faults.env(writer__die_after_write={"name": "seed1.mp4", "marker": str(marker)}),
    }
    cmd = [
        sys.executable,
        "-m",
        "data_pipeline.preprocess",
        "--config",
        str(TINY_CONFIG),
        "--set",
        f"preprocess.input_dir={clips}",
        "--set",
        f"preprocess.output_dir={out}",
        "--set",
        "preprocess.samples_per_shard=8",  # one batch: the retry rewrites it with another key set
    ]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    console = res.stdout + res.stderr
    assert res.returncode == 0, console
    assert marker.is_file(), "the fault never fired: the actor was not killed"
    info = S.DatasetInfo.load(out)
    assert info.num_samples == 5 and S.read_rejects(out).num_rows == 0
    retry = info.manifest["retry_duplicates"]  # the killed attempt's shard (all but seed1) is gone
    assert retry["shards_deleted"] == 1 and retry["rows_dropped"] >= 1 and retry["rejects_dropped"] == 1, retry
    assert console_errors(console) == [], console
    assert "preprocess: 5 ok" in res.stdout
    logs = list((out / "logs").glob("preprocess-*.log"))
    # Ray's chatter lands in the run's log file, not on the console. (Its token notice appears only
    # when this machine's Ray token is first created, so it is not required to be in the log.)
    assert len(logs) == 1 and "core_worker" in logs[0].read_text(), logs
    assert "Token authentication" not in console and "core_worker" not in console, console
