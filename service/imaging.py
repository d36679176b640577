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


# Missing pixels of a completion's input: a dim red, distinct from every grey level.
MISSING_RGB = (110, 20, 20)


def _tiles(images: np.ndarray, levels: int, scale: int) -> np.ndarray:
    """[N, C, H, W] integer levels -> uint8 RGB tiles [N, H·scale, W·scale, 3].

    One channel renders grey, three as RGB, four as RGB without the alpha channel (other
    channel counts show the first one)."""
    img = (images.astype(np.float64) * (255.0 / max(1, levels - 1))).round().astype(np.uint8)
    rgb = img[:, :3] if img.shape[1] in (3, 4) else np.repeat(img[:, :1], 3, axis=1)
    rgb = rgb.repeat(scale, axis=2).repeat(scale, axis=3)  # nearest-neighbour upscale
    return np.ascontiguousarray(rgb.transpose(0, 2, 3, 1))


def _grid_png(tiles: np.ndarray, captions: list[str] | None, columns: int, pad: int, grey: bool) -> bytes:
    """RGB tiles [N, h, w, 3] -> PNG bytes of a grid with `columns` tiles per line."""
    n, th, tw, _ = tiles.shape
    rows = math.ceil(n / columns)
    caption_h = 12 if captions else 0
    ch, cw = th + caption_h, tw
    canvas = Image.new("RGB", (columns * (cw + pad) + pad, rows * (ch + pad) + pad), color=(40, 40, 40))
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        r, k = divmod(i, columns)
        x0, y0 = pad + k * (cw + pad), pad + r * (ch + pad)
        canvas.paste(Image.fromarray(tiles[i], mode="RGB"), (x0, y0 + caption_h))
        if captions:
            draw.text((x0 + 1, y0), captions[i][:12], fill=(255, 255, 255))
    out = io.BytesIO()
    # A grid with nothing but grey in it is saved as one channel: a third of the size.
    (canvas.convert("L") if grey else canvas).save(out, format="PNG", optimize=True)
    return out.getvalue()


def sample_grid_png(
    samples: np.ndarray, levels: int, captions: list[str] | None = None, cell: int = 64, pad: int = 4
) -> bytes:
    """[N, C, H, W] integer levels -> PNG bytes of a grid, each image upscaled to ~`cell` px.

    Captions (e.g. the requested label) are written above each image, cut to 12
    characters; Pillow's built-in font covers ASCII only, so callers pass something else
    for names outside it.
    """
    n, c, h, w = samples.shape
    tiles = _tiles(samples, levels, max(1, cell // max(h, w)))
    return _grid_png(tiles, captions, math.ceil(math.sqrt(n)), pad, grey=c not in (3, 4))


def reconstruction_grid_png(
    inputs: np.ndarray,
    outputs: np.ndarray,
    levels: int,
    mask: np.ndarray | None = None,
    captions: list[str] | None = None,
    cell: int = 64,
    pad: int = 4,
) -> bytes:
    """Inputs beside their reconstructions or completions ([N, C, H, W] each) as a PNG grid
    of pairs; the pixels an input left to fill in (`mask` 0) are drawn dim red.

    `captions` holds one caption per pair (e.g. the label); each pair's tiles are captioned
    "<caption> in" and "<caption> out".
    """
    n, c, h, w = inputs.shape
    scale = max(1, cell // max(h, w))
    shown_in = _tiles(inputs, levels, scale)
    if mask is not None:
        missing = ~mask.astype(bool).any(axis=1)  # [N, H, W]: a pixel with any channel to fill
        missing = missing.repeat(scale, axis=1).repeat(scale, axis=2)
        shown_in[missing] = MISSING_RGB
    tiles = np.stack([shown_in, _tiles(outputs, levels, scale)], axis=1).reshape(2 * n, *shown_in.shape[1:])
    names = [f"{p} " if p else "" for p in (captions or [""] * n)]
    labels = [f"{name}{side}" for name in names for side in ("in", "out")]
    pairs_per_line = math.ceil(math.sqrt(n))
    grey = c not in (3, 4) and mask is None
    return _grid_png(tiles, labels, 2 * pairs_per_line, pad, grey)
