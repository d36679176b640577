"""PNG grids of samples, scaled up and labelled for viewing."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw


def drawable_caption(names: list[str], index: int) -> str:
    """A label as the built-in font can draw it: the name if printable ASCII, else #index."""
    name = names[index]
    return name if name.isascii() and name.isprintable() else f"#{index}"


def sample_grid_png(
    samples: np.ndarray, levels: int, captions: list[str] | None = None, cell: int = 64, pad: int = 4
) -> bytes:
    """[N, C, H, W] integer levels -> PNG bytes of a grid, each image upscaled to ~`cell` px.

    One channel renders grey, three as RGB, four as RGB without the alpha channel (other
    channel counts show the first one). Captions (e.g. the requested label) are written
    above each image, cut to 12 characters; Pillow's built-in font covers ASCII only, so
    callers pass something else for names outside it.
    """
    n, c, h, w = samples.shape
    scale = max(1, cell // max(h, w))
    img = (samples.astype(np.float64) * (255.0 / max(1, levels - 1))).round().astype(np.uint8)
    img = img.repeat(scale, axis=2).repeat(scale, axis=3)  # nearest-neighbour upscale
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    caption_h = 12 if captions else 0
    ch, cw = h * scale + caption_h, w * scale
    mode = "RGB" if c in (3, 4) else "L"
    canvas = Image.new(
        mode, (cols * (cw + pad) + pad, rows * (ch + pad) + pad), color=40 if mode == "L" else (40, 40, 40)
    )
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        r, k = divmod(i, cols)
        x0, y0 = pad + k * (cw + pad), pad + r * (ch + pad)
        tile = np.ascontiguousarray(img[i, :3].transpose(1, 2, 0)) if mode == "RGB" else img[i, 0]
        canvas.paste(Image.fromarray(tile, mode=mode), (x0, y0 + caption_h))
        if captions:
            draw.text((x0 + 1, y0), captions[i][:12], fill=255 if mode == "L" else (255, 255, 255))
    out = io.BytesIO()
    canvas.save(out, format="PNG", optimize=True)
    return out.getvalue()
