"""The Ray stages of the two layouts; both write their own shards (no writer actor, no latents to the driver).

- `split` (`decode_batch` CPU tasks -> `EncodeWriteStage` actors): decoding scales with the CPUs of the
  cluster, independently of the number of autoencoder actors (one per GPU). Good when the cluster
  has many CPU-only nodes or the decode cost per clip is high.
- `fused` (`FusedStage`, one actor per GPU): the actor decodes its batch with `decode_workers`
  isolated child processes, sends uint8 frames to its GPU, converts, encodes, builds the pyramid
  and writes the shard. No frames cross the object store; good for GPU nodes with plenty of cores.

Each call handles one batch of `samples_per_shard` clips and writes one shard plus one rejects
part (content-keyed names: a call Ray retries rewrites the same files). It returns one summary
row per clip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from data_pipeline.decode import ClipRejected, DecodeParams
from data_pipeline.encode import EncodeSpec, EncodeStage
from data_pipeline.isolate import IsolationSettings, shared_pool
from data_pipeline.writer import WriterSpec, write_batch


def decode_batch(
    batch: dict[str, np.ndarray], params: DecodeParams, isolation: IsolationSettings, workers: int = 1
) -> dict[str, np.ndarray]:
    """Decode stage: clip items -> items + frames (N, F, H, W, 3) uint8 + sampling + reject info.

    Every clip is decoded in a child process (`workers` at once) that a hang or a crash cannot take
    down. Rejected rows keep zero frames and carry stage/reason/detail; they flow on to the workers
    that write the shards, which record them (one stream keeps every clip accounted for).
    """
    n = len(batch["key"])
    fcount, (h, w) = params.num_frames, params.resolution
    frames = np.zeros((n, fcount, h, w, 3), dtype=np.uint8)
    indices = np.full((n, fcount), -1, dtype=np.int32)
    out: dict[str, Any] = {k: batch[k] for k in ("key", "path", "label", "label_id", "split", "is_image")}
    fps = np.zeros(n, dtype=np.float32)
    src_h, src_w = np.zeros(n, dtype=np.int32), np.zeros(n, dtype=np.int32)
    decoder, stage, reason, detail = [""] * n, [""] * n, [""] * n, [""] * n
    items = [(str(batch["path"][i]), bool(batch["is_image"][i])) for i in range(n)]
    results = shared_pool(isolation, workers, params.threads).decode_many(items, params)
    for i, clip in enumerate(results):
        if isinstance(clip, ClipRejected):
            stage[i], reason[i], detail[i] = "decode", clip.reason, clip.detail
            continue
        frames[i], indices[i], fps[i], decoder[i] = clip.frames, clip.indices, clip.source_fps, clip.decoder
        src_h[i], src_w[i] = clip.source_hw
    out.update(
        frames=frames,
        frame_indices=indices,
        source_fps=fps,
        source_height=src_h,
        source_width=src_w,
        decoder=np.array(decoder, dtype=object),
        stage=np.array(stage, dtype=object),
        reason=np.array(reason, dtype=object),
        detail=np.array(detail, dtype=object),
    )
    return out


@dataclass(frozen=True)
class StageSpec:
    encode: EncodeSpec
    writer: WriterSpec
    decode: Optional[DecodeParams] = None  # fused layout only
    isolation: IsolationSettings = field(default_factory=IsolationSettings)
    decode_workers: int = 1


class EncodeWriteStage:
    """Split layout: decoded frames in, summary rows out; the latents go only into this actor's shards."""

    def __init__(self, spec: StageSpec) -> None:
        self.spec = spec
        self.encoder = EncodeStage(spec.encode)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return write_batch(self.spec.writer, self.encoder(batch))


class FusedStage(EncodeWriteStage):
    """Fused layout: clip items in, summary rows out (decode, encode and write in one GPU actor)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.spec.decode is None:
            raise ValueError("FusedStage needs StageSpec.decode (the decode parameters of the fused layout)")
        decoded = decode_batch(batch, self.spec.decode, self.spec.isolation, self.spec.decode_workers)
        return super().__call__(decoded)
