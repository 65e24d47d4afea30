"""Loss curves from metrics.jsonl as a PNG, drawn with Pillow (a core dependency; no matplotlib).

`plot_losses({"DFM": run_a/metrics.jsonl, "FM": run_b/metrics.jsonl}, "loss.png")` draws every
`loss/*` series of every run against the step; the trainer writes one per run directory at the
end of training and the demo one for both runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Sequence

from PIL import Image, ImageDraw

_COLOURS = [
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (255, 127, 14),
    (148, 103, 189),
    (140, 86, 75),
    (23, 190, 207),
]


def read_series(jsonl: str | Path, prefix: str = "loss/") -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value), ...]} for every key starting with `prefix` (a resumed run's later
    rows replace earlier rows of the same step)."""
    rows: dict[int, dict] = {}
    for line in Path(jsonl).read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows[int(r["step"])] = r
    series: dict[str, list[tuple[int, float]]] = {}
    for step in sorted(rows):
        for k, v in rows[step].items():
            if k.startswith(prefix) and isinstance(v, (int, float)) and math.isfinite(v):
                series.setdefault(k, []).append((step, float(v)))
    return series


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo if hi > lo else 1.0
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), default=mag * 10)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def plot_losses(
    runs: Mapping[str, str | Path],
    out: str | Path,
    keys: Sequence[str] | None = None,
    size: tuple[int, int] = (720, 420),
    title: str = "training loss",
) -> Path:
    """Write a PNG of the loss series of every run; `keys` limits which metrics (default: all loss/*)."""
    curves = []
    for run, path in runs.items():
        series = read_series(path)
        for key, pts in series.items():
            if key.startswith("loss/stage") and pts == series.get("loss/total"):
                continue  # a one-stage run's only stage loss is its total: draw it once
            if pts and (keys is None or key in keys):
                curves.append((f"{run} {key.split('/', 1)[1]}", pts))
    if not curves:
        raise ValueError(f"no loss/* values to plot in {', '.join(str(p) for p in runs.values())}")
    W, H = size
    left, right, top, bottom = 60, 170, 30, 40
    xs = [s for _, pts in curves for s, _ in pts]
    ys = [v for _, pts in curves for _, v in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(0.0, min(ys)), max(ys) * 1.05 if max(ys) > 0 else 1.0
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)

    def px(x: float, y: float) -> tuple[float, float]:
        return left + (x - x0) / (x1 - x0) * (W - left - right), H - bottom - (y - y0) / (y1 - y0) * (H - top - bottom)

    d.rectangle([left, top, W - right, H - bottom], outline="black")
    for t in _ticks(y0, y1):
        _, y = px(x0, t)
        d.line([left - 4, y, W - right, y], fill=(225, 225, 225))
        d.text((4, y - 6), f"{t:.3g}", fill="black")
    for t in _ticks(x0, x1):
        x, _ = px(t, y0)
        d.line([x, H - bottom, x, H - bottom + 4], fill="black")
        d.text((x - 12, H - bottom + 8), f"{t:g}", fill="black")
    d.text((left, 8), title, fill="black")
    d.text(((W - right + left) // 2 - 10, H - 16), "step", fill="black")
    for i, (label, pts) in enumerate(curves):
        colour = _COLOURS[i % len(_COLOURS)]
        line = [px(s, v) for s, v in pts]
        if len(line) > 1:
            d.line(line, fill=colour, width=2)
        for x, y in line if len(line) < 30 else []:
            d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        ly = top + 4 + 16 * i
        d.line([W - right + 10, ly + 6, W - right + 30, ly + 6], fill=colour, width=3)
        d.text((W - right + 36, ly), label, fill="black")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out
