"""The Ray actors of the two layouts; both write their own shards (no writer actor, no latents to the driver).

- `split` (CPU decode tasks -> `EncodeWriteStage` actors): decoding scales with the CPUs of the
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

from dataclasses import dataclass
from typing import Optional

import numpy as np

from data_pipeline.decode import DecodeParams, decode_batch
from data_pipeline.encode import EncodeSpec, EncodeStage
from data_pipeline.isolate import IsolationSettings
from data_pipeline.writer import WriterSpec, write_batch


@dataclass(frozen=True)
class StageSpec:
    encode: EncodeSpec
    writer: WriterSpec
    decode: Optional[DecodeParams] = None  # fused layout only
    isolation: Optional[IsolationSettings] = None
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
        decoded = decode_batch(batch, self.spec.decode, self.spec.isolation, self.spec.decode_workers)
        return super().__call__(decoded)
