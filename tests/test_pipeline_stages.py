"""Each preprocessing stage on hand-built inputs, without Ray: sources, decode, encode, writer, and
the checks that must fail before any work."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from media_helpers import write_raw_h264
from pipeline_helpers import (
    KINETICS_ROWS,
    MISSING_ROW,
    make_bad_inputs,
    make_folder_clips,
    make_kinetics,
    save_tiny_vae,
    tiny_config,
)

from data_pipeline import sources
from data_pipeline.decode import ClipRejected, DecodeParams, decode_clip
from data_pipeline.encode import EncodeSpec, EncodeStage, encode_levels, frames_to_video
from data_pipeline.isolate import IsolationSettings
from data_pipeline.preprocess import main, plan_levels, run
from data_pipeline.resources import check_resources
from data_pipeline.stages import decode_batch
from data_pipeline.writer import OutputDir, WriterSpec, write_batch
from dfm_video.autoencoders import load_autoencoder
from dfm_video.data import schema as S
from dfm_video.dfm.pyramid import decompose
from dfm_video.dfm.standardize import LevelMoments
from dfm_video.media import resize_crop, sample_indices

PARAMS = DecodeParams(num_frames=9, fps=8.0, resolution=(32, 32), decoder="decord")


@pytest.fixture(scope="module")
def kinetics(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_kinetics(tmp_path_factory.mktemp("kin"))


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("bad")
    return folder, make_bad_inputs(folder)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    make_folder_clips(folder, 4)
    return folder


# ----------------------------------------------------------------------------- sources


def test_kinetics_keys_labels_and_duplicates(kinetics, tmp_path) -> None:
    ann, root, labels_file = kinetics
    cfg = tiny_config(
        tmp_path / "out",
        root,
        "preprocess.input_type=kinetics",
        f"preprocess.annotations={ann}",
        f"preprocess.labels_file={labels_file}",
        "preprocess.split=validate",
    ).preprocess
    src = sources.build_sources(cfg)
    keys = [it.key for it in src.items]
    # a youtube id with two segments is two clips
    assert keys == [f"{y}_{a:06d}_{b:06d}" for _, y, a, b in [*KINETICS_ROWS, MISSING_ROW]]
    assert "6sYu45RK454_000022_000032" in keys and "6sYu45RK454_000045_000055" in keys
    names = labels_file.read_text().splitlines()
    assert src.labels == names
    for it, (label, yid, a, b) in zip(src.items, [*KINETICS_ROWS, MISSING_ROW]):
        assert it.label == label and names[it.label_id] == label
        assert it.path == str(root / "validate" / label / f"{yid}_{a:06d}_{b:06d}.mp4")
    assert [(r.key, r.stage, r.reason) for r in src.rejects] == [("6sYu45RK454_000022_000032", "source", "duplicate")]
    assert "row 9 repeats" in src.rejects[0].detail


def test_kinetics_without_labels_file_and_unlabelled_rows(tmp_path) -> None:
    ann = tmp_path / "test.csv"
    ann.write_text("label,youtube_id,time_start,time_end,split\n,abc,0,10,test\nx,def,1,11,test\n,ghi,zz,10,test\n")
    cfg = tiny_config(
        tmp_path / "out",
        tmp_path,
        "preprocess.input_type=kinetics",
        f"preprocess.annotations={ann}",
        "preprocess.split=test",
    ).preprocess
    src = sources.build_sources(cfg)
    assert src.labels == ["x"]
    assert [(it.key, it.label, it.label_id, it.path) for it in src.items] == [
        ("abc_000000_000010", "", -1, str(tmp_path / "test" / "abc_000000_000010.mp4")),
        ("def_000001_000011", "x", 0, str(tmp_path / "test" / "x" / "def_000001_000011.mp4")),
    ]
    assert [(r.stage, r.reason) for r in src.rejects] == [("source", "malformed row")]


def test_csv_without_expected_columns_fails_naming_them(tmp_path) -> None:
    ann = tmp_path / "bad.csv"
    ann.write_text("label,youtube_id,start,end\nx,abc,0,10\n")
    cfg = tiny_config(
        tmp_path / "out", tmp_path, "preprocess.input_type=kinetics", f"preprocess.annotations={ann}"
    ).preprocess
    with pytest.raises(
        ValueError, match=r"bad.csv: annotation CSV lacks column\(s\) \['time_start', 'time_end', 'split'\]"
    ):
        sources.build_sources(cfg)


def test_labels_file_must_cover_the_input(kinetics, tmp_path) -> None:
    ann, root, _ = kinetics
    small = tmp_path / "labels.txt"
    small.write_text("playing piano\n")
    cfg = tiny_config(
        tmp_path / "out",
        root,
        "preprocess.input_type=kinetics",
        f"preprocess.annotations={ann}",
        f"preprocess.labels_file={small}",
        "preprocess.split=validate",
    ).preprocess
    with pytest.raises(ValueError, match="lacks 4 label"):
        sources.build_sources(cfg)
    small.write_text("a\n\nb\n")
    with pytest.raises(ValueError, match="line 2 is blank"):
        sources.load_labels(small)


def test_folder_and_image_sources(clips, tmp_path) -> None:
    (clips / "root_level.mp4").write_bytes((clips / "a" / "seed0.mp4").read_bytes())
    try:
        src = sources.build_sources(tiny_config(tmp_path / "o", clips).preprocess)
    finally:
        (clips / "root_level.mp4").unlink()
    assert src.labels == ["a", "b"]
    by_key = {it.key: it for it in src.items}
    assert by_key["a/seed0.mp4"].label_id == 0 and by_key["b/seed1.mp4"].label_id == 1
    assert by_key["root_level.mp4"].label == "" and by_key["root_level.mp4"].label_id == -1
    imgs = tmp_path / "imgs"
    (imgs / "n01").mkdir(parents=True)
    (imgs / "n01" / "x.JPEG").write_bytes(b"")
    (imgs / "n01" / "notes.txt").write_text("ignored")
    src = sources.build_sources(tiny_config(tmp_path / "o", imgs, "preprocess.input_type=images").preprocess)
    assert [(it.key, it.label, it.is_image) for it in src.items] == [("n01/x.JPEG", "n01", True)]


# ----------------------------------------------------------------------------- decode


def test_sample_indices_nearest_frame() -> None:
    assert sample_indices(25.0, 9, 8.0) == [0, 3, 6, 9, 13, 16, 19, 22, 25]
    assert sample_indices(8.0, 4, 8.0) == [0, 1, 2, 3]
    assert sample_indices(29.97, 3, 8.0) == [0, 4, 7]


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_bad_inputs_are_rejected_with_a_reason(bad_dir, decoder: str) -> None:
    folder, expected = bad_dir
    for name, reason in expected.items():
        with pytest.raises(ClipRejected) as err:
            decode_clip(str(folder / name), False, DecodeParams(9, 8.0, (32, 32), decoder))
        assert err.value.reason == reason, (name, err.value.detail)
        assert name in err.value.detail  # the message names the file
    with pytest.raises(ClipRejected, match="file listed but missing") as err:
        decode_clip(str(folder / "never_written.mp4"), False, PARAMS)
    assert err.value.reason == "missing file"


def test_fps_below_target_is_rejected(clips) -> None:
    with pytest.raises(ClipRejected, match="below the target 30.0 fps"):
        decode_clip(str(clips / "a" / "seed0.mp4"), False, DecodeParams(9, 30.0, (32, 32), "decord"))


def test_decord_and_pyav_agree_bit_for_bit(clips) -> None:
    a = decode_clip(str(clips / "a" / "seed0.mp4"), False, PARAMS)
    b = decode_clip(str(clips / "a" / "seed0.mp4"), False, DecodeParams(9, 8.0, (32, 32), "pyav"))
    assert a.decoder == "decord" and b.decoder == "pyav"
    assert a.indices == b.indices == [0, 3, 6, 9, 13, 16, 19, 22, 25] and a.source_fps == b.source_fps == 25.0
    assert a.frames.shape == (9, 32, 32, 3) and a.frames.dtype == np.uint8
    assert np.array_equal(a.frames, b.frames)


def test_pyav_fallback_when_decord_cannot_read(tmp_path, caplog) -> None:
    path = write_raw_h264(tmp_path / "raw.mp4")
    with caplog.at_level("WARNING"):
        clip = decode_clip(str(path), False, PARAMS)
    assert clip.decoder == "pyav-fallback" and clip.frames.shape == (9, 32, 32, 3)
    assert np.array_equal(clip.frames, decode_clip(str(path), False, DecodeParams(9, 8.0, (32, 32), "pyav")).frames)


def test_resize_shorter_side_then_centre_crop() -> None:
    # 1 frame, 40 x 80 (h x w); a column index ramp shows which columns survive the crop
    frames = np.broadcast_to(np.arange(80, dtype=np.uint8)[None, None, :, None], (1, 40, 80, 3)).copy()
    out = resize_crop(frames, (20, 20))  # scale 0.5 -> 20 x 40, crop columns 10..29 -> source 20..59
    assert out.shape == (1, 20, 20, 3) and out.dtype == np.uint8
    assert 19 <= out[0, 0, 0, 0] <= 22 and 57 <= out[0, 0, -1, 0] <= 60
    assert resize_crop(frames, (40, 80)) is not frames and np.array_equal(resize_crop(frames, (40, 80)), frames)
    assert resize_crop(frames, (64, 32)).shape == (1, 64, 32, 3)  # upscale to cover, then crop


def _items(paths: list[Path], **extra) -> dict[str, np.ndarray]:
    items = [asdict(sources.ClipItem(str(p.name), str(p), "a", 0, "train", False)) for p in paths]
    return {k: np.array([it[k] for it in items], dtype=object) for k in items[0]}


def test_decode_batch_on_a_hand_built_batch(clips, bad_dir) -> None:
    folder, _ = bad_dir
    out = decode_batch(_items([clips / "a" / "seed0.mp4", folder / "zero.mp4"]), PARAMS, IsolationSettings(), 2)
    assert out["frames"].shape == (2, 9, 32, 32, 3) and out["frame_indices"][0].tolist()[:3] == [0, 3, 6]
    assert list(out["reason"]) == ["", "empty file"] and list(out["stage"]) == ["", "decode"]
    assert not out["frames"][1].any() and out["source_fps"][0] == 25.0


def test_images_decode_to_one_frame(tmp_path) -> None:
    from PIL import Image

    Image.fromarray(np.full((30, 50, 3), 200, np.uint8)).save(tmp_path / "x.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    clip = decode_clip(str(tmp_path / "x.png"), True, DecodeParams(1, 8.0, (16, 16), "decord"))
    assert clip.frames.shape == (1, 16, 16, 3) and clip.indices == [0] and (clip.frames == 200).all()
    with pytest.raises(ClipRejected, match="not a readable image"):
        decode_clip(str(tmp_path / "broken.jpg"), True, DecodeParams(1, 8.0, (16, 16), "decord"))


# ----------------------------------------------------------------------------- encode


def _decoded_batch(n: int, bad: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    batch = {
        "key": np.array([f"k{i}" for i in range(n)], dtype=object),
        "path": np.array([f"/p/{i}.mp4" for i in range(n)], dtype=object),
        "label": np.array(["a"] * n, dtype=object),
        "label_id": np.zeros(n, np.int64),
        "split": np.array(["train"] * n, dtype=object),
        "is_image": np.zeros(n, bool),
        "frames": rng.integers(0, 256, (n, 9, 32, 32, 3), dtype=np.uint8),
        "frame_indices": np.tile(np.arange(9, dtype=np.int32), (n, 1)),
        "source_fps": np.full(n, 25.0, np.float32),
        "decoder": np.array(["decord"] * n, dtype=object),
        "stage": np.array(["decode" if i in bad else "" for i in range(n)], dtype=object),
        "reason": np.array(["too short" if i in bad else "" for i in range(n)], dtype=object),
        "detail": np.array(["x" if i in bad else "" for i in range(n)], dtype=object),
    }
    return batch


def _spec(**kw) -> EncodeSpec:
    base = dict(
        kind="pixel",
        path="",
        pixel_patch=(1, 4, 4),
        dtype="float32",
        use_gpu=False,
        factors=((1, 2, 2),),
        temporal_mode="causal",
        level_shapes=((48, 9, 4, 4), (48, 9, 8, 8)),
    )
    return EncodeSpec(**{**base, **kw})


def test_encode_stage_on_a_hand_built_batch() -> None:
    batch = _decoded_batch(3, bad=(1,))
    out = EncodeStage(_spec())(batch)
    assert "frames" not in out and out["level_0"].shape == (3, 48, 9, 4, 4) and out["level_1"].shape == (3, 48, 9, 8, 8)
    ref = decompose(
        load_autoencoder("pixel", pixel_patch=(1, 4, 4)).encode(frames_to_video(batch["frames"][[0, 2]])), [(1, 2, 2)]
    )
    assert torch.equal(torch.from_numpy(out["level_0"][[0, 2]]), ref[0])
    assert torch.equal(torch.from_numpy(out["level_1"][[0, 2]]), ref[1])
    assert not out["level_0"][1].any() and list(out["reason"]) == ["", "too short", ""]


def test_frames_map_exactly_to_minus_one_one() -> None:
    v = frames_to_video(np.array([0, 255, 128], np.uint8).reshape(1, 1, 1, 1, 3))
    assert v.dtype == torch.float32 and v.flatten().tolist() == [-1.0, 1.0, pytest.approx(128 / 127.5 - 1, abs=1e-7)]


def test_non_finite_latents_are_rejected() -> None:
    stage = EncodeStage(_spec())
    real = stage.ae.encode
    stage.ae.encode = lambda x: torch.where(torch.arange(x.shape[0]).view(-1, 1, 1, 1, 1) == 1, torch.nan, real(x))
    out = stage(_decoded_batch(3))
    assert list(out["reason"]) == ["", "non-finite latents", ""] and list(out["stage"]) == ["", "encode", ""]


def test_encode_levels_with_a_causal_vae_and_temporal_factor(tmp_path) -> None:
    ae = load_autoencoder("cogvideox", save_tiny_vae("cogvideox", tmp_path / "vae"))
    levels = encode_levels(ae, _decoded_batch(2)["frames"], [(2, 2, 2)], "causal")
    assert [tuple(x.shape) for x in levels] == [(2, 4, 2, 4, 4), (2, 4, 3, 8, 8)]


# ----------------------------------------------------------------------------- writer


def _writer_spec(root: Path) -> WriterSpec:
    codec = load_autoencoder("pixel", pixel_patch=(1, 4, 4)).describe()
    return WriterSpec(str(root), [[1, 2, 2]], "causal", [[48, 9, 4, 4], [48, 9, 8, 8]], codec, 8.0, run_id="run-1")


def test_write_batch_writes_a_shard_and_a_rejects_part(tmp_path) -> None:
    OutputDir(tmp_path).close()
    encoded = EncodeStage(_spec())(_decoded_batch(4, bad=(2,)))
    summary = write_batch(_writer_spec(tmp_path), encoded)
    assert list(summary["status"]) == ["ok", "ok", "rejected", "ok"]
    shards = S.list_shards(tmp_path)
    assert len(shards) == 1 and set(summary["shard"]) == {shards[0].name, ""}
    samples = S.read_shard(shards[0])
    assert (
        [s.key for s in samples] == ["k0", "k1", "k3"]
        and samples[0].fps == 8.0
        and samples[0].frame_indices == list(range(9))
    )
    assert torch.equal(samples[2].levels[1], torch.from_numpy(encoded["level_1"][3]))
    direct = LevelMoments(2, 48)
    for smp in samples:
        direct.update(smp.levels)
    assert torch.allclose(S.read_shard_meta(shards[0]).level_moments().m2, direct.m2)
    rejects = S.read_rejects(tmp_path).to_pylist()
    assert rejects == [
        {"key": "k2", "path": "/p/2.mp4", "stage": "decode", "reason": "too short", "detail": "x", "run_id": "run-1"}
    ]
    # Ray may retry a batch: the same keys give the same file names, so a retry overwrites, never adds
    write_batch(_writer_spec(tmp_path), encoded)
    assert S.list_shards(tmp_path) == shards and S.read_rejects(tmp_path).num_rows == 1


def test_output_dir_checks(tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="preprocess.output_dir '.*file/out' is not writable"):
        OutputDir(tmp_path / "file" / "out")
    out = OutputDir(tmp_path / "ds")
    with pytest.raises(ValueError, match="in use by another preprocess run"):
        OutputDir(tmp_path / "ds")
    out.close()
    (tmp_path / "ds" / "shards" / ".tmp-shard-x.parquet.abcd").write_bytes(b"partial")
    OutputDir(tmp_path / "ds").close()  # a killed run's leftovers are removed
    assert list((tmp_path / "ds" / "shards").iterdir()) == []


def test_failures_before_any_work(kinetics, tmp_path, capsys) -> None:
    ann, root, _ = kinetics
    vae = save_tiny_vae("cogvideox", tmp_path / "vae")
    cfg = tiny_config(
        tmp_path / "o",
        root,
        "preprocess.autoencoder=cogvideox",
        f"preprocess.autoencoder_path={vae}",
        "preprocess.num_frames=8",
    )
    with pytest.raises(ValueError, match=r"preprocess.num_frames=8 .* 1 \+ 4k frames \(e.g. 5 or 9\)"):
        plan_levels(cfg)
    cfg = tiny_config(tmp_path / "o", root, "dfm.factors=[[2,2,2]]", "dfm.temporal_mode=uniform")
    with pytest.raises(
        ValueError, match=r"dfm.factors=\[\[2, 2, 2\]\] with dfm.temporal_mode='uniform' cannot decompose"
    ):
        plan_levels(cfg)
    cfg = tiny_config(tmp_path / "o", root, "preprocess.autoencoder=wan", "preprocess.autoencoder_path=Wan-AI/Wan2.1")
    with pytest.raises(ValueError, match="preprocess.autoencoder_path: .*hub ids are not accepted"):
        run(cfg)
    with pytest.raises(ValueError, match="encode_gpus=1.0 x encode_actors=1 = 1 GPUs but the Ray cluster has 0"):
        check_resources(tiny_config(tmp_path / "o", root, "preprocess.encode_gpus=1"), {"CPU": 2.0})
    # every stage counts: 2 actors x 1 GPU on a 1-GPU cluster; 4 decode tasks x 0.5 CPU + 1 actor x 0.5 CPU on 2 CPUs
    with pytest.raises(ValueError, match="= 2 GPUs but the Ray cluster has 1"):
        check_resources(
            tiny_config(tmp_path / "o", root, "preprocess.encode_gpus=1", "preprocess.encode_actors=2"),
            {"CPU": 8.0, "GPU": 1.0},
        )
    with pytest.raises(
        ValueError, match=r"2.5 CPUs but the Ray cluster has 2 .*decode_concurrency x decode_cpus = 4 x 0.5"
    ):
        check_resources(tiny_config(tmp_path / "o", root, "preprocess.decode_concurrency=4"), {"CPU": 2.0})
    with pytest.raises(ValueError, match="exceeds the cluster's 2.0 CPUs"):
        check_resources(tiny_config(tmp_path / "o", root, "preprocess.encode_actors=4"), {"CPU": 2.0})
    with pytest.raises(ValueError, match="largest node has 1"):  # one actor's GPUs must fit on one node
        check_resources(
            tiny_config(tmp_path / "o", root, "preprocess.encode_gpus=2"), {"CPU": 8.0, "GPU": 2.0}, [1.0, 1.0]
        )
    check_resources(
        tiny_config(tmp_path / "o", root, "preprocess.layout=fused", "preprocess.encode_actors=4"), {"CPU": 2.0}
    )
    with pytest.raises(ValueError, match=r"preprocess.output_dir='s3://bucket/x': object-store URLs are not supported"):
        run(tiny_config("s3://bucket/x", root))
    # CLI: a bad CSV or an unwritable output directory -> exit 2 with the problem named, nothing written
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("label,youtube_id\n")
    args = [
        "--config",
        "configs/preprocess/tiny.yaml",
        "--set",
        f"preprocess.input_dir={root}",
        "--set",
        "preprocess.input_type=kinetics",
    ]
    assert (
        main([*args, "--set", f"preprocess.annotations={bad_csv}", "--set", f"preprocess.output_dir={tmp_path / 'o1'}"])
        == 2
    )
    assert "bad.csv: annotation CSV lacks column(s)" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists()
    (tmp_path / "f").write_text("")
    assert (
        main(
            [
                *args,
                "--set",
                f"preprocess.annotations={ann}",
                "--set",
                "preprocess.split=validate",
                "--set",
                f"preprocess.output_dir={tmp_path / 'f' / 'o'}",
            ]
        )
        == 2
    )
    assert "is not writable" in capsys.readouterr().err


def test_rerun_refuses_different_content_settings(clips, tmp_path) -> None:
    cfg = tiny_config(tmp_path / "o", clips)
    out = OutputDir(tmp_path / "o")
    codec, _ = plan_levels(cfg)
    out.check_compatible(cfg, ["a", "b"], codec)
    out.write_run_files(cfg, ["a", "b"], [])
    with pytest.raises(ValueError, match=r"made with preprocess.num_frames=9, this run has preprocess.num_frames=17"):
        out.check_compatible(tiny_config(tmp_path / "o", clips, "preprocess.num_frames=17"), ["a", "b"], codec)
    with pytest.raises(ValueError, match="label ids would change"):
        out.check_compatible(cfg, ["a", "b", "c"], codec)
    out.check_compatible(
        tiny_config(tmp_path / "o", clips, "preprocess.encode_actors=2"), ["a", "b"], codec
    )  # resources may change
    out.close()


def test_done_keys_ignore_source_rejects(tmp_path) -> None:
    out = OutputDir(tmp_path)
    out.write_run_files(tiny_config(tmp_path, tmp_path), [], [sources.Reject("k0", "/p", "source", "duplicate", "")])
    write_batch(_writer_spec(tmp_path), EncodeStage(_spec())(_decoded_batch(3, bad=(1,))))
    assert out.done_keys(retry_rejects=False) == {"k0", "k1", "k2"}  # k0: in a shard; its duplicate row does not count
    assert out.done_keys(retry_rejects=True) == {"k0", "k2"}
    out.drop_rejects({"k1"})
    assert [r["stage"] for r in S.read_rejects(tmp_path).to_pylist()] == ["source"]
    out.close()
