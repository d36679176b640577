"""PNG sample grids: channels and captions."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from service.imaging import MISSING_RGB, drawable_caption, reconstruction_grid_png, sample_grid_png


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


def test_reconstruction_grid_pairs_inputs_with_outputs_and_marks_missing_pixels() -> None:
    inputs = np.zeros((3, 1, 2, 2), dtype=np.int64)
    outputs = np.full((3, 1, 2, 2), 3, dtype=np.int64)
    mask = np.ones_like(inputs)
    mask[:, :, 0, 0] = 0  # the top-left pixel to fill in
    png = reconstruction_grid_png(inputs, outputs, levels=4, mask=mask, captions=["7"] * 3, cell=2, pad=0)
    img = Image.open(io.BytesIO(png))
    assert img.mode == "RGB"
    # Two pairs per line (ceil(sqrt(3))): 4 tiles of 2 px across, 2 lines of 12 px caption + 2 px.
    assert img.size == (8, 28)
    assert img.getpixel((0, 12)) == MISSING_RGB  # the input's missing pixel
    assert img.getpixel((1, 12)) == (0, 0, 0)  # a known input pixel
    assert img.getpixel((2, 12)) == (255, 255, 255)  # the output beside it
    plain = Image.open(io.BytesIO(reconstruction_grid_png(inputs, outputs, levels=4, cell=2, pad=0)))
    assert plain.mode == "L" and plain.size == (8, 28)  # no mask: grey; "in" and "out" captions
