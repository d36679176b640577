"""PNG sample grids: channels and captions."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from service.imaging import drawable_caption, sample_grid_png


def test_four_channels_render_as_rgb_without_alpha() -> None:
    x = np.zeros((1, 4, 2, 2), dtype=np.int64)
    x[0, 0] = 3  # red full, alpha channel full too
    x[0, 3] = 3
    img = Image.open(io.BytesIO(sample_grid_png(x, levels=4, cell=2, pad=0)))
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 0, 0)


def test_grey_and_rgb_grids_hold_every_sample() -> None:
    for channels, mode in ((1, "L"), (3, "RGB"), (2, "L")):
        x = np.ones((5, channels, 6, 10), dtype=np.int64)
        img = Image.open(io.BytesIO(sample_grid_png(x, levels=2, captions=["a"] * 5)))
        assert img.mode == mode
        assert img.width > 3 * 10 and img.height > 2 * 6


def test_captions_the_builtin_font_cannot_draw_become_the_index() -> None:
    names = ["red fox", "café", "猫", "7"]
    assert [drawable_caption(names, i) for i in range(4)] == ["red fox", "#1", "#2", "7"]
