"""Stage 0 (driver): the list of clips to process, their labels, and the rejects found before decoding.

Three inputs (`preprocess.input_type`):
- `kinetics`: annotation CSV `label,youtube_id,time_start,time_end,split` + a clip root laid out
  `{split}/{label}/{youtube_id}_{start:06d}_{end:06d}.mp4` (unlabelled rows, e.g. the test split:
  `{split}/{youtube_id}_...mp4`). A clip's key is `{youtube_id}_{start:06d}_{end:06d}`: K700 has
  youtube ids with several segments, so the id alone is not unique.
- `folder`: every file under `input_dir` is a clip (key = relative path; label = parent folder
  name; files directly in `input_dir` are unlabelled), whatever its extension: any container
  FFmpeg reads is decoded (.mp4 .mkv .webm .avi .mov .mpg .mpeg .ogv .ts .flv .wmv .3gp .m4v ...)
  and anything else becomes a reject with its reason. Only files that are clearly not video
  (`dfm_video.media.media_kind`: text, metadata, images, archives; hidden files) are left out, and they
  are COUNTED per extension in the summary and the manifest: nothing is skipped silently.
- `images`: ImageNet layout `input_dir/{label}/{name}.JPEG`; each image becomes a T = 1 clip.

Label ids: line i of `labels_file` has id i (stable across runs and subsets: use the official class
list). Without a labels file the ids are the sorted distinct labels of this input, which is only
stable for the same input. Unlabelled clips get label "" and id -1.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dfm_video.config.schema import PreprocessConfig
from dfm_video.data.store import Reject
from dfm_video.media import media_kind

KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")


# Which files are media is one rule for the whole project (dfm_video.media.media_kind), shared
# with evaluation's --real / --fake folders.
@dataclass(frozen=True)
class ClipItem:
    """One clip to process; the dict form (`asdict`) is what flows through Ray Data."""

    key: str
    path: str
    label: str
    label_id: int
    split: str
    is_image: bool


@dataclass
class SourceList:
    items: list[ClipItem]
    labels: list[str]
    rejects: list[Reject] = field(default_factory=list)  # duplicates and malformed rows
    ignored: dict[str, int] = field(default_factory=dict)  # folder input: non-media files per extension


def kinetics_key(youtube_id: str, start: int, end: int) -> str:
    return f"{youtube_id}_{start:06d}_{end:06d}"


def load_labels(path: str | Path) -> list[str]:
    """Label names, one per line (line i = id i); blank lines are an error (they would shift ids)."""
    lines = Path(path).read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    for i, line in enumerate(lines):
        if not line.strip():
            raise ValueError(f"{path}: line {i + 1} is blank; every line must name one label (line i = id i)")
    names = [line.strip() for line in lines]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{path}: labels listed twice: {dupes[:5]}")
    return names


def read_kinetics_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a Kinetics annotation CSV; `ValueError` naming the file when columns are missing."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in KINETICS_COLUMNS if c not in header]
        if missing:
            raise ValueError(
                f"{path}: annotation CSV lacks column(s) {missing}; expected header "
                f"{','.join(KINETICS_COLUMNS)}, found {','.join(header) or '<empty file>'}"
            )
        return list(reader)


def kinetics_items(cfg: PreprocessConfig) -> tuple[list[tuple[ClipItem, int]], list[Reject]]:
    """(item, csv line) for the rows of `cfg.split`, plus rejects for malformed rows."""
    root = Path(cfg.input_dir)
    out, rejects = [], []
    for line, row in enumerate(read_kinetics_csv(cfg.annotations), start=2):
        if row["split"] != cfg.split:
            continue
        label, yid = (row["label"] or "").strip(), (row["youtube_id"] or "").strip()
        try:
            start, end = int(row["time_start"]), int(row["time_end"])
        except (TypeError, ValueError):
            rejects.append(
                Reject(
                    f"{cfg.annotations}:{line}",
                    "",
                    "source",
                    "malformed row",
                    f"line {line}: time_start/time_end must be integers, got {row['time_start']!r}/{row['time_end']!r}",
                )
            )
            continue
        if not yid:
            rejects.append(
                Reject(f"{cfg.annotations}:{line}", "", "source", "malformed row", f"line {line}: empty youtube_id")
            )
            continue
        key = kinetics_key(yid, start, end)
        folder = root / row["split"] / label if label else root / row["split"]
        out.append((ClipItem(key, str(folder / f"{key}.mp4"), label, -1, row["split"], False), line))
    return out, rejects


def _walk(cfg: PreprocessConfig, is_image: bool) -> tuple[list[tuple[ClipItem, int]], dict[str, int]]:
    """(items, ignored count per extension). Images: files with an image extension; videos: every
    file that is not clearly non-media (see the module docstring)."""
    root = Path(cfg.input_dir)
    ignored: dict[str, int] = {}
    paths = []
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        kind, why = media_kind(p, root)
        if kind != ("image" if is_image else "video"):
            key = "(hidden)" if why == "hidden file" else p.suffix.lower() or "(none)"
            ignored[key] = ignored.get(key, 0) + 1
            continue
        paths.append(p)
    out = []
    for i, p in enumerate(paths):
        rel = p.relative_to(root)
        label = rel.parent.name if len(rel.parts) > 1 else ""
        out.append((ClipItem(rel.as_posix(), str(p), label, -1, cfg.split, is_image), i))
    return out, ignored


def build_sources(cfg: PreprocessConfig) -> SourceList:
    """All clips of the configured input with label ids; duplicates and malformed rows as rejects.

    Raises `ValueError` before any work for a missing input, a CSV without the expected columns, or
    labels absent from `labels_file`.
    """
    if cfg.input_type == "kinetics":
        if not cfg.annotations or not Path(cfg.annotations).is_file():
            raise ValueError(f"preprocess.annotations: annotation CSV '{cfg.annotations}' does not exist")
    if not cfg.input_dir or not Path(cfg.input_dir).is_dir():
        raise ValueError(f"preprocess.input_dir: '{cfg.input_dir}' is not an existing directory")
    ignored: dict[str, int] = {}
    if cfg.input_type == "kinetics":
        found, rejects = kinetics_items(cfg)
    else:
        (found, ignored), rejects = _walk(cfg, cfg.input_type == "images"), []

    seen: dict[str, int] = {}
    unique: list[ClipItem] = []
    for item, where in found:
        if item.key in seen:
            rejects.append(
                Reject(
                    item.key,
                    item.path,
                    "source",
                    "duplicate",
                    f"row {where} repeats clip '{item.key}' first listed at row {seen[item.key]}; processed once",
                )
            )
            continue
        seen[item.key] = where
        unique.append(item)

    present = sorted({it.label for it in unique if it.label})
    if cfg.labels_file:
        labels = load_labels(cfg.labels_file)
        unknown = sorted(set(present) - set(labels))
        if unknown:
            raise ValueError(
                f"preprocess.labels_file '{cfg.labels_file}' lacks "
                f"{len(unknown)} label(s) of the input, e.g. {unknown[:5]}"
            )
    else:
        labels = present
    ids = {name: i for i, name in enumerate(labels)}
    items = [ClipItem(**{**asdict(it), "label_id": ids.get(it.label, -1)}) for it in unique]
    if cfg.limit is not None:
        items = items[: cfg.limit]
    return SourceList(items, labels, rejects, ignored)
