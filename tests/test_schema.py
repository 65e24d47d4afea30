"""The shard format shared by the writer and the trainer's reader: round trips, metadata, versions,
atomic writes and the dataset-level reader."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dfm_video.data import schema as S
from dfm_video.dfm.standardize import LevelMoments

SHAPES = [[4, 3, 2, 2], [4, 3, 4, 4]]


def _samples(n: int, seed: int = 0) -> list[S.Sample]:
    g = torch.Generator().manual_seed(seed)
    return [
        S.Sample(
            key=f"clip_{seed}_{i}",
            label="playing piano" if i % 2 else "",
            label_id=3 if i % 2 else -1,
            split="validate",
            source_path=f"/data/{i}.mp4",
            fps=8.0,
            source_fps=25.0,
            frame_indices=[0, 3, 6],
            levels=[torch.randn(*s, generator=g) for s in SHAPES],
        )
        for i in range(n)
    ]


def _meta(samples: list[S.Sample]) -> S.ShardMeta:
    m = LevelMoments(len(SHAPES), SHAPES[0][0])
    for smp in samples:
        m.update(smp.levels)
    codec = {
        "id": "pixel:1x2x2",
        "kind": "pixel",
        "path": "",
        "latent_channels": 4,
        "temporal": 1,
        "spatial": [2, 2],
        "causal": False,
        "scaling": {"offset": [0.0] * 4, "multiplier": [1.0] * 4},
    }
    return S.ShardMeta(len(samples), [[1, 2, 2]], "causal", SHAPES, codec, m.to_dict())


def test_shard_roundtrip_is_exact(tmp_path) -> None:
    samples = _samples(37)  # > 2 row groups of 16
    path = S.write_shard(tmp_path / "shard-a.parquet", samples, _meta(samples))
    back = S.read_shard(path)
    assert [s.key for s in back] == [s.key for s in samples]
    for a, b in zip(samples, back):
        assert (a.label, a.label_id, a.split, a.source_path, a.frame_indices) == (
            b.label,
            b.label_id,
            b.split,
            b.source_path,
            b.frame_indices,
        )
        assert b.fps == 8.0 and b.source_fps == 25.0
        assert all(torch.equal(x, y) and y.dtype == torch.float32 for x, y in zip(a.levels, b.levels))
    assert pq.ParquetFile(path).num_row_groups == len(samples)  # one clip per row group (random reads pull one clip)
    assert S.read_keys(path) == [s.key for s in samples]
    assert pq.read_schema(path).remove_metadata() == S.shard_schema(2)


def test_shard_meta_and_moments(tmp_path) -> None:
    samples = _samples(5)
    meta = _meta(samples)
    path = S.write_shard(tmp_path / "shard-a.parquet", samples, meta)
    got = S.read_shard_meta(path)
    assert got == meta and got.num_levels == 2
    direct = LevelMoments(2, 4)
    for smp in S.iter_samples(path):
        direct.update(smp.levels)
    assert torch.allclose(got.level_moments().stats().std, direct.stats().std)


def test_level_bytes_are_little_endian_float32(tmp_path) -> None:
    samples = _samples(1)
    path = S.write_shard(tmp_path / "shard-a.parquet", samples, _meta(samples))
    raw = pq.read_table(path, columns=["level_0"]).column("level_0")[0].as_py()
    assert raw == samples[0].levels[0].numpy().astype("<f4").tobytes()


def test_version_and_foreign_files_are_refused(tmp_path) -> None:
    samples = _samples(2)
    meta = _meta(samples)
    meta.schema_version = 99
    path = S.write_shard(tmp_path / "shard-old.parquet", samples, meta)
    with pytest.raises(ValueError, match="schema_version 99, this code reads version 1"):
        S.read_shard(path)
    pq.write_table(pa.table({"key": ["x"]}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="not a dfm-video shard"):
        S.read_shard_meta(tmp_path / "other.parquet")


def test_write_shard_checks_shapes(tmp_path) -> None:
    samples = _samples(2)
    samples[1].levels[1] = torch.zeros(4, 3, 2, 2)
    with pytest.raises(ValueError, match="sample 'clip_0_1' level 1 has shape"):
        S.write_shard(tmp_path / "shard-a.parquet", samples, _meta(samples[:1]))
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch) -> None:
    samples = _samples(3)

    def boom(table, where, **kw):  # dies after starting the file, like a crash mid-write
        open(where, "wb").write(b"PAR1 partial")
        raise KeyboardInterrupt

    (tmp_path / S.SHARD_DIR).mkdir()
    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(KeyboardInterrupt):
        S.write_shard(tmp_path / S.SHARD_DIR / "shard-a.parquet", samples, _meta(samples))
    assert list((tmp_path / S.SHARD_DIR).iterdir()) == []


def test_list_shards_never_lists_temporary_files(tmp_path) -> None:
    (tmp_path / S.SHARD_DIR).mkdir()
    samples = _samples(2)
    S.write_shard(tmp_path / S.SHARD_DIR / "shard-b.parquet", samples, _meta(samples))
    (tmp_path / S.SHARD_DIR / ".tmp-shard-c.parquet.1234").write_bytes(b"partial")
    assert [p.name for p in S.list_shards(tmp_path)] == ["shard-b.parquet"]


def _dataset(tmp_path) -> None:
    (tmp_path / S.SHARD_DIR).mkdir()
    samples = _samples(3)
    meta = _meta(samples)
    S.write_shard(tmp_path / S.SHARD_DIR / "shard-a.parquet", samples, meta)
    S.write_json_atomic(tmp_path / S.LABELS_FILE, {"schema_version": 1, "labels": ["a", "b"]})
    S.write_json_atomic(
        tmp_path / S.STATS_FILE, {"schema_version": 1, "num_samples": 3, "moments": meta.moments, "stats": None}
    )
    S.write_json_atomic(
        tmp_path / S.MANIFEST_FILE,
        {
            "schema_version": 1,
            "num_samples": 3,
            "shards": [{"name": "shard-a.parquet", "num_samples": 3}],
            "level_shapes": SHAPES,
            "factors": [[1, 2, 2]],
            "temporal_mode": "causal",
            "autoencoder": meta.autoencoder,
        },
    )


def test_dataset_info(tmp_path) -> None:
    _dataset(tmp_path)
    info = S.DatasetInfo.load(tmp_path)
    assert info.labels == ["a", "b"] and info.num_samples == 3 and info.level_shapes == SHAPES
    assert info.autoencoder["id"] == "pixel:1x2x2" and info.factors == [[1, 2, 2]] and info.temporal_mode == "causal"
    assert info.stats().mean.shape == (2, 4)
    assert [p.name for p in info.shards] == ["shard-a.parquet"]


def test_dataset_info_refuses_unfinished_or_old_output(tmp_path) -> None:
    _dataset(tmp_path)
    samples = _samples(1, seed=1)
    S.write_shard(tmp_path / S.SHARD_DIR / "shard-z.parquet", samples, _meta(samples))  # a run added it, no finalize
    with pytest.raises(ValueError, match="differ from manifest.json"):
        S.DatasetInfo.load(tmp_path)
    (tmp_path / S.SHARD_DIR / "shard-z.parquet").unlink()
    stats = (tmp_path / S.STATS_FILE).read_text()
    (tmp_path / S.STATS_FILE).unlink()
    with pytest.raises(ValueError, match="stats.json is missing"):
        S.DatasetInfo.load(tmp_path)
    (tmp_path / S.STATS_FILE).write_text(stats)
    data = json.loads((tmp_path / S.LABELS_FILE).read_text())
    data["schema_version"] = 0
    (tmp_path / S.LABELS_FILE).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="labels.json: schema_version 0"):
        S.DatasetInfo.load(tmp_path)


@pytest.mark.slow
def test_whole_latent_statistics_match_the_recomposed_clips(tiny_shards):
    """stats.json also holds the moments of the whole latent, for flow-matching baselines (S = 1)."""
    import torch

    from dfm_video.data.schema import DatasetInfo, iter_samples
    from dfm_video.dfm import LevelMoments, recompose

    info = DatasetInfo.load(tiny_shards)
    assert info.latent_moments is not None
    ref = LevelMoments(1, info.level_shapes[0][0])
    for shard in info.shards:
        for smp in iter_samples(shard):
            ref.update([recompose([x[None].double() for x in smp.levels], info.factors, info.temporal_mode)])
    got, want = info.latent_moments.stats(), ref.stats()
    assert torch.allclose(got.mean, want.mean, atol=1e-6) and torch.allclose(got.std, want.std, rtol=1e-6)
    assert float(info.latent_moments.count[0]) == float(ref.count[0])
