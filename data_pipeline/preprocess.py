"""Preprocess clips into pyramid-latent shards with Ray Data.

    python -m data_pipeline.preprocess --config configs/preprocess/k700.yaml [--set key=value ...] [--strict]
    python data_pipeline/preprocess.py ...        (the same; what `ray submit` runs)

Two layouts (`preprocess.layout`, see data_pipeline/stages.py):
- split: sources (driver) -> decode + sample + resize/crop (tasks of `clips_per_task` clips, each
  clip in an isolated child process) -> autoencoder + pyramid + shard writing (actor pool, GPUs
  when configured) -> summary rows (driver);
- fused: sources (driver) -> one actor per GPU that decodes (child processes), encodes and writes.
The workers that hold the latents write the shards; the driver sees one small row per clip and,
at the end, merges the shards' moments (dfm_video.data.store). Without `preprocess.ray_address`
an embedded local Ray is started; with one (e.g. `auto`) the job connects to that cluster, and a
preflight on every node checks that `input_dir`, `output_dir` and `autoencoder_path` are visible
there. Everything that can be checked is checked before Ray starts (inputs, CSV columns, output
directory, frame counts against the codec and the pyramid, resource arithmetic).
Object-store URLs (s3://, gs://, ...) are refused with a message: mount the bucket or copy.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import logging
import math
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script (e.g. by `ray submit`, as ~/preprocess.py)
    # Python put this file's folder first on sys.path, where decode.py, writer.py, ... would
    # shadow same-named modules: drop it, and fall back to the checkout only if not installed.
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)
    if importlib.util.find_spec("data_pipeline") is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipeline.decode import DecodeParams, with_available_decoder
from data_pipeline.encode import EncodeSpec
from data_pipeline.isolate import IsolationSettings
from data_pipeline.library_logs import library_output_to
from data_pipeline.resources import check_config, preflight, wait_for_resources
from data_pipeline.sources import build_sources
from data_pipeline.stages import EncodeWriteStage, FusedStage, StageSpec, decode_batch
from data_pipeline.writer import WriterSpec
from dfm_video.autoencoders import autoencoder_info, geometry_of
from dfm_video.config.loader import load_config, require
from dfm_video.config.schema import Config
from dfm_video.data.store import DatasetStore
from dfm_video.dfm.pyramid import level_shapes as pyramid_shapes

log = logging.getLogger("data_pipeline.preprocess")


@dataclass
class Summary:
    ok: int  # clips written this run
    rejected: int  # clips a stage rejected this run
    skipped: int  # clips already done by an earlier run
    input_rejects: int  # duplicates / malformed rows of the listing
    pyav_fallbacks: int
    elapsed_s: float
    num_samples: int  # clips in the whole dataset
    num_rejected: int  # rejects in the whole dataset (what --strict checks)
    output_dir: str
    ignored: dict = None  # files under a folder input that are not media: count per extension
    run_id: str = ""

    @property
    def clips_per_s(self) -> float:
        return (self.ok + self.rejected) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def line(self) -> str:
        extra = f", {self.input_rejects} input rows rejected" if self.input_rejects else ""
        extra += f", {self.pyav_fallbacks} decoded by the PyAV fallback" if self.pyav_fallbacks else ""
        if self.ignored:
            listing = ", ".join(f"{n} {ext}" for ext, n in sorted(self.ignored.items()))
            extra += f", {sum(self.ignored.values())} non-media files ignored ({listing})"
        return (
            f"preprocess: {self.ok} ok, {self.rejected} rejected, {self.skipped} skipped{extra} in "
            f"{self.elapsed_s:.1f} s ({self.clips_per_s:.2f} clips/s); dataset {self.num_samples} clips, "
            f"{self.num_rejected} rejects -> {self.output_dir}"
        )


def plan_levels(cfg: Config) -> tuple[dict, list[list[int]]]:
    """Codec record and (C, T, h, w) of every pyramid level; `ValueError` before any work when they do not fit."""
    p = cfg.preprocess
    try:
        info = autoencoder_info(p.autoencoder, p.autoencoder_path, p.pixel_patch)
    except ValueError as exc:
        raise ValueError(f"preprocess.autoencoder / preprocess.autoencoder_path: {exc}") from exc
    info["path"] = p.autoencoder_path
    frames = 1 if p.input_type == "images" else p.num_frames
    try:
        c, t, h, w = geometry_of(info).latent_shape(frames, *p.resolution, codec=f"autoencoder '{p.autoencoder}'")
    except ValueError as exc:
        raise ValueError(f"preprocess.num_frames={frames} / preprocess.resolution={list(p.resolution)}: {exc}") from exc
    try:
        shapes = pyramid_shapes((t, h, w), cfg.dfm.factors, cfg.dfm.temporal_mode)
    except ValueError as exc:
        raise ValueError(
            f"preprocess.num_frames={frames} / preprocess.resolution={list(p.resolution)} give latents of (T, h, w) = "
            f"{(t, h, w)}, which dfm.factors={[list(f) for f in cfg.dfm.factors]} with dfm.temporal_mode="
            f"'{cfg.dfm.temporal_mode}' cannot decompose: {exc}"
        ) from exc
    return info, [[c, *s] for s in shapes]


def new_run_id() -> str:
    """Names the run in every reject it makes and in the manifest's run history."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def build_dataset(items: list[dict], cfg: Config, levels: list[list[int]], codec: dict, run_id: str = ""):
    """The Ray Data chain; yields one summary row per clip (key, status, stage, reason, decoder, shard)."""
    import ray.data

    p = cfg.preprocess
    isolation = IsolationSettings.from_config(p)
    writer = WriterSpec(
        p.output_dir,
        [list(f) for f in cfg.dfm.factors],
        cfg.dfm.temporal_mode,
        levels,
        codec,
        p.fps,
        p.latent_dtype,
        run_id,
    )
    decode = DecodeParams.from_config(p)
    spec = StageSpec(EncodeSpec.from_config(cfg, levels), writer, decode, isolation, p.decode_workers)
    # Blocks of clips_per_task items: a decode task (and so a retry) covers at most that many clips.
    ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / p.clips_per_task)))
    actor_args = dict(
        batch_size=p.samples_per_shard,
        compute=ray.data.ActorPoolStrategy(size=p.encode_actors),
        num_cpus=p.encode_cpus,
        num_gpus=p.encode_gpus or None,
        batch_format="numpy",
        fn_constructor_kwargs={"spec": spec},
    )
    if p.layout == "fused":
        return ds.map_batches(FusedStage, **actor_args)
    ds = ds.map_batches(
        decode_batch,
        fn_kwargs={"params": decode, "isolation": isolation, "workers": 1},
        batch_size=p.clips_per_task,
        compute=ray.data.TaskPoolStrategy(size=p.decode_concurrency),
        num_cpus=p.decode_cpus,
        # a task-only option: keeps Ray Data from fusing decoding into the encoder
        # actors (which would cap decode parallelism at encode_actors)
        max_calls=1000,
        batch_format="numpy",
    )
    return ds.map_batches(EncodeWriteStage, **actor_args)


def _start_ray(cfg: Config) -> bool:
    """Connect to / start Ray unless already initialised; returns whether this call started it."""
    import ray
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # one tqdm bar on the driver instead of one per operator
    ctx.print_on_execution_start = False
    if ray.is_initialized():
        return False
    address = cfg.preprocess.ray_address or None
    ray.init(
        address=address,
        num_cpus=None if address else cfg.preprocess.num_cpus,
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,  # workers' output stays in Ray's session logs (data_pipeline.library_logs)
    )
    return True


def run(cfg: Config) -> Summary:
    """Run (or resume) the preprocessing job described by `cfg`; returns the summary."""
    start = time.time()
    cfg = with_available_decoder(cfg)
    p = cfg.preprocess
    require(cfg, "preprocess.input_dir", "preprocess.output_dir", source="preprocess")
    check_config(p)
    codec, levels = plan_levels(cfg)
    sources = build_sources(p)
    run_id = new_run_id()
    out = DatasetStore(p.output_dir)
    try:
        out.check_compatible(cfg, sources.labels, codec)
        out.write_run_files(cfg, sources.labels, [type(r)(**{**r.__dict__, "run_id": run_id}) for r in sources.rejects])
        done = out.done_keys(p.retry_rejects)
        pending = [asdict(it) for it in sources.items if it.key not in done]
        if p.retry_rejects:
            out.drop_rejects({it["key"] for it in pending})
        status: Counter = Counter()
        if pending:
            status = _process(cfg, pending, levels, codec, run_id)
        run_record = {
            "run_id": run_id,
            "ok": status["ok"],
            "rejected": status["rejected"],
            "skipped": len(sources.items) - len(pending),
            "ignored_files": sources.ignored,
            "seconds": round(time.time() - start, 2),
        }
        manifest = out.finalize(
            run_record, levels, [list(f) for f in cfg.dfm.factors], cfg.dfm.temporal_mode, codec, sources.ignored
        )
    finally:
        out.close()
    return Summary(
        status["ok"],
        status["rejected"],
        len(sources.items) - len(pending),
        len(sources.rejects),
        status["pyav-fallback"],
        time.time() - start,
        manifest["num_samples"],
        manifest["num_rejected"],
        str(p.output_dir),
        dict(sources.ignored),
        run_id,
    )


def _process(cfg: Config, pending: list[dict], levels: list[list[int]], codec: dict, run_id: str) -> Counter:
    import ray
    from tqdm import tqdm

    p = cfg.preprocess
    logs = Path(p.output_dir) / "logs" / f"preprocess-{run_id}.log"
    log.info("library logs (Ray): %s", logs)
    with library_output_to(logs) as console:
        started = _start_ray(cfg)
        try:
            wait_for_resources(cfg.preprocess)
            if cfg.preprocess.ray_address:
                preflight(cfg.preprocess)
            counts: Counter = Counter()
            bar = tqdm(total=len(pending), unit="clip", desc="preprocess", disable=not p.progress, file=console)
            with bar:
                for batch in build_dataset(pending, cfg, levels, codec, run_id).iter_batches(
                    batch_size=None, batch_format="numpy"
                ):
                    counts.update(str(s) for s in batch["status"])
                    counts.update(str(d) for d in batch["decoder"] if d == "pyav-fallback")
                    bar.update(len(batch["status"]))
                    bar.set_postfix(ok=counts["ok"], rejected=counts["rejected"])
            return counts
        finally:
            if started:
                ray.shutdown()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="data_pipeline.preprocess", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="YAML config (a path, or a name under configs/)")
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set preprocess.limit=100 (repeatable)",
    )
    ap.add_argument("--strict", action="store_true", help="exit 1 when the dataset has any rejected clip")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """CLI: 0 = done, 1 = done but rejects exist under --strict, 2 = configuration or input error."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.strict:
            cfg.preprocess.strict = True
        summary = run(cfg)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.line(), flush=True)
    if cfg.preprocess.strict and summary.num_rejected:
        print(
            f"error: --strict: {summary.num_rejected} clip(s) rejected, "
            f"see {Path(cfg.preprocess.output_dir) / 'rejects.parquet'}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
