"""Bytes a random training read pulls from a shard: row groups of 16 clips vs 1 clip.

    python benchmarks/shard_read_bytes.py [--clips 32] [--dtype float32]

Writes the same clips twice with the real shard writer (`dfm_video.data.schema`), once with the
old row-group size, once with the current one, then reads random samples the way the trainer's
`ShardDataset` does (open, footer, one row group's label + level columns) through a file object
that counts the bytes it hands to Parquet. Level shapes are the k700 config's:
(16, 13, 32, 32) and (16, 13, 64, 64).
"""

from __future__ import annotations

import argparse
import io
import random
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import torch

from dfm_video.data import schema as S

SHAPES = [[16, 13, 32, 32], [16, 13, 64, 64]]


class CountingFile(io.RawIOBase):
    def __init__(self, path: Path) -> None:
        self.fh = open(path, "rb")
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.fh.seek(offset, whence)

    def tell(self) -> int:
        return self.fh.tell()

    def readinto(self, b) -> int:
        n = self.fh.readinto(b)
        self.read_bytes += n or 0
        return n

    def close(self) -> None:
        self.fh.close()
        super().close()


def write(path: Path, clips: int, dtype: str, row_group: int) -> None:
    torch.manual_seed(0)
    samples = [
        S.Sample(
            f"k{i}",
            "a",
            0,
            "train",
            f"/x/{i}.mp4",
            8.0,
            25.0,
            list(range(49)),
            [torch.randn(*s) for s in SHAPES],
            360,
            640,
        )
        for i in range(clips)
    ]
    meta = S.ShardMeta(clips, [[1, 2, 2]], "causal", SHAPES, {"id": "bench"}, {}, latent_dtype=dtype)
    table = S.samples_to_table(samples, meta)
    S.write_table_atomic(
        table, path, uncompressed=[S.level_column(s) for s in range(len(SHAPES))], row_group_size=row_group
    )


def bytes_per_sample(path: Path, reads: int) -> float:
    cols = ["label_id"] + [c for s in range(len(SHAPES)) for c in (S.level_column(s), S.level_shape_column(s))]
    rng = random.Random(0)
    total = 0
    for _ in range(reads):
        f = CountingFile(path)
        pf = pq.ParquetFile(f)
        clip = rng.randrange(pf.metadata.num_rows)
        per_group = pf.metadata.row_group(0).num_rows
        pf.read_row_group(clip // per_group, columns=cols)
        total += f.read_bytes
        f.close()
    return total / reads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--reads", type=int, default=8)
    ap.add_argument("--dtype", default="float32", choices=sorted(S.STORAGE))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for label, group in (("16 clips per row group (before)", 16), ("1 clip per row group (now)", 1)):
            path = Path(tmp) / f"g{group}.parquet"
            write(path, args.clips, args.dtype, group)
            rows.append((label, path.stat().st_size, bytes_per_sample(path, args.reads)))
    itemsize = 4 if args.dtype == "float32" else 2
    one_clip = sum(itemsize * int(torch.tensor(s).prod()) for s in SHAPES)
    print(
        f"shard of {args.clips} clips, levels {SHAPES}, {args.dtype}; one clip's latents = {one_clip / 2**20:.2f} MiB"
    )
    print("| layout | shard MiB | MiB read per random sample | x one clip |\n|---|---|---|---|")
    for label, size, per in rows:
        print(f"| {label} | {size / 2**20:.1f} | {per / 2**20:.2f} | {per / one_clip:.2f} |")


if __name__ == "__main__":
    main()
