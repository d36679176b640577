"""Pictures of vector samples: a grid of pairwise marginals (a posterior's corner plot).

Diagonal panels hold each feature's histogram; the panel in row i, column j < i holds the
2-D histogram of features j (across) and i (up), shaded by count. Drawn with Pillow from
NumPy histograms, so the service needs no plotting library.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

PANEL = 120  # pixels per panel side
MAX_FEATURES = 8  # features drawn; a wider vector shows its first ones (said in the picture)
_BG, _FG, _INK, _MARK = (255, 255, 255), (30, 60, 140), (60, 60, 60), (200, 30, 30)


def _ranges(values: np.ndarray) -> np.ndarray:
    """[N, D] -> [D, 2]: a range per feature holding all but the outer 0.5 % on each side."""
    lo, hi = np.percentile(values, [0.5, 99.5], axis=0)
    # Halves first: (hi - lo) of two huge values of opposite sign would overflow.
    pad = np.maximum((hi / 2 - lo / 2) * 0.1, 1e-9 * np.maximum(1.0, np.abs(hi)))
    out = np.stack([lo - pad, hi + pad], axis=1)
    return np.where(np.isfinite(out), out, np.stack([lo, hi], axis=1))


def _heat(counts: np.ndarray) -> np.ndarray:
    """[bins, bins] counts -> uint8 RGB [bins, bins, 3], white (none) to blue (most)."""
    level = np.sqrt(counts / max(1.0, counts.max()))[..., None]  # sqrt: the tails stay visible
    white, blue = np.array(_BG, np.float64), np.array(_FG, np.float64)
    return (white + (blue - white) * level).round().astype(np.uint8)


def pairs_png(samples: np.ndarray, names: list[str], reference: np.ndarray | None = None) -> bytes:
    """[N, D] samples -> PNG bytes of their pairwise marginals; `reference` rows [M, D] (e.g.
    the inputs a reconstruction started from) are marked in red."""
    D = min(samples.shape[1], MAX_FEATURES)
    data = samples[:, :D].astype(np.float64)
    data = data[np.isfinite(data).all(axis=1)]
    marks = None if reference is None else reference[:, :D].astype(np.float64)
    if marks is not None:
        marks = marks[np.isfinite(marks).all(axis=1)]
    if len(data) == 0:
        data = np.zeros((1, D))
    ranges = _ranges(data if marks is None else np.concatenate([data, marks]))
    bins = PANEL // 2
    top = 14
    canvas = Image.new("RGB", (D * PANEL, D * PANEL + top), _BG)
    draw = ImageDraw.Draw(canvas)
    note = f"{len(data)} samples" + (
        f"; first {D} of {samples.shape[1]} features" if samples.shape[1] > D else ""
    )
    draw.text((2, 1), note, fill=_INK)
    for i in range(D):
        for j in range(i + 1):
            x0, y0 = j * PANEL, top + i * PANEL
            if i == j:
                counts, _ = np.histogram(data[:, i], bins=bins, range=tuple(ranges[i]))
                heights = (counts / max(1, counts.max()) * (PANEL - 30)).astype(int)
                for b, h in enumerate(heights):
                    bx = x0 + 4 + b * (PANEL - 8) // bins
                    draw.rectangle([bx, y0 + PANEL - 14 - h, bx + 1, y0 + PANEL - 14], fill=_FG)
                draw.text((x0 + 3, y0 + 2), names[i][:18], fill=_INK)
                lo, hi = ranges[i]
                draw.text((x0 + 3, y0 + PANEL - 12), f"{lo:.3g} .. {hi:.3g}", fill=_INK)
            else:
                counts, _, _ = np.histogram2d(
                    data[:, j], data[:, i], bins=bins, range=[tuple(ranges[j]), tuple(ranges[i])]
                )
                tile = _heat(counts.T[::-1])  # rows from the top: feature i grows upwards
                img = Image.fromarray(np.ascontiguousarray(tile), mode="RGB").resize((PANEL - 4, PANEL - 4))
                canvas.paste(img, (x0 + 2, y0 + 2))
                if marks is not None:
                    for m in marks:
                        px = x0 + 2 + (m[j] - ranges[j, 0]) / (ranges[j, 1] - ranges[j, 0]) * (PANEL - 4)
                        py = (
                            y0 + 2 + (1 - (m[i] - ranges[i, 0]) / (ranges[i, 1] - ranges[i, 0])) * (PANEL - 4)
                        )
                        draw.ellipse([px - 2, py - 2, px + 2, py + 2], outline=_MARK)
            draw.rectangle([x0, y0, x0 + PANEL - 1, y0 + PANEL - 1], outline=(200, 200, 200))
    out = io.BytesIO()
    canvas.save(out, format="PNG", optimize=True)
    return out.getvalue()


__all__ = ["pairs_png"]
