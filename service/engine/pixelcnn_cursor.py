"""Where a PixelCNN's sampling loops get their log-probabilities: one interface, two ways.

The loops (sampling, completion, the particle filter) visit positions in raster order,
draw or weigh, and write x. A cursor answers "the log-probabilities at (r, j) given x as
it is now", under one rule: every position before (r, j) in raster order is final.

- `FullPassCursor` runs the whole `logits` graph again whenever x has changed since its
  last call: one network pass per drawn pixel, any store.
- `StepCursor` runs the incremental `row_step` / `pixel_step` graphs (see the training
  side's pixelcnn_steps): one row's vertical stack per row, one pixel's horizontal stack
  per position, with each layer's reach cached, so a whole image costs about one pass.
  The numbers equal the full pass's up to float rounding (so the draws are the same but
  for ties); stores exported before these graphs existed use the full pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from .base import GraphCaller

Feeds = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class Cursor(Protocol):
    """Log-probabilities at raster positions of N images that are being filled in."""

    async def at(self, r: int, j: int) -> np.ndarray:
        """log p(x[:, :, r, j] | what comes before) [N, C, K]: channel c is valid once
        channels < c of (r, j) are written."""
        ...

    def wrote(self, c: int) -> None:
        """Channel c of x was written (at the last position asked for)."""
        ...

    def reorder(self, src: np.ndarray, dest: np.ndarray) -> None:
        """Rows `dest` became copies of rows `src` (x already copied by the caller)."""
        ...


class FullPassCursor:
    """The whole `logits` graph, rerun only when x changed since the last answer."""

    def __init__(self, x: np.ndarray, call: GraphCaller, feeds: Feeds) -> None:
        self.x, self.call, self.feeds = x, call, feeds
        self.logits: np.ndarray | None = None  # [N, C, H, W, K] for x as it was

    async def at(self, r: int, j: int) -> np.ndarray:
        if self.logits is None:
            out = await self.call("logits", self.feeds({"x": self.x.astype(np.float32)}))
            self.logits = out["logits"]
        return self.logits[:, :, r, j]

    def wrote(self, c: int) -> None:
        self.logits = None

    def reorder(self, src: np.ndarray, dest: np.ndarray) -> None:
        if self.logits is not None:
            self.logits[dest] = self.logits[src]


class StepCursor:
    """The incremental graphs: a cache of each layer's inputs over its reach.

    Shapes come from the manifest's graph specs: x_above [N, C, A, W], v_cache
    [N, L, ch, R, W], h_cache [N, L, ch, R], vh [N, L, 2ch, W] (L layers in all members).
    """

    def __init__(
        self,
        x: np.ndarray,
        call: GraphCaller,
        feeds: Feeds,
        v_cache: tuple[int, ...],
        x_above: tuple[int, ...],
    ) -> None:
        self.x, self.call, self.feeds = x, call, feeds
        N = len(x)
        self.A = x_above[1]
        self.v_cache = np.zeros((N, *v_cache), dtype=np.float32)  # zeros: the top padding
        L, ch, R, _ = v_cache
        self.h_empty = np.zeros((N, L, ch, R), dtype=np.float32)
        self.h_cache = self.h_empty
        self.vh: np.ndarray | None = None  # [W, N, L, 2ch] of row `self.row`
        self.row = -1  # rows whose vertical state is in v_cache: 0..row
        self.col = 0  # columns of `row` whose horizontal inputs are in h_cache: 0..col-1
        self.last: tuple[int, np.ndarray, np.ndarray] | None = None  # (j, logp, h_col) of the last call
        self.stale = False  # x written since the last call
        self.state_stale = False  # ... and in a channel the column's state depends on

    async def at(self, r: int, j: int) -> np.ndarray:
        while self.row < r:
            await self._next_row()
        if self.last is not None and self.last[0] == j:
            if self.stale:  # a channel of (r, j) was written: the later ones see it
                await self._pixel(j)
            return self.last[1]
        if self.last is not None:
            await self._finish()
        while self.col < j:
            await self._pixel(self.col)
            await self._finish()
        await self._pixel(j)
        assert self.last is not None
        return self.last[1]

    def wrote(self, c: int) -> None:
        self.stale = True
        # Only the pixel's last channel leaves the column's horizontal state as it was.
        self.state_stale = self.state_stale or c < self.x.shape[1] - 1

    def reorder(self, src: np.ndarray, dest: np.ndarray) -> None:
        self.v_cache[dest] = self.v_cache[src]
        self.h_cache = self.h_cache.copy()
        self.h_cache[dest] = self.h_cache[src]
        if self.vh is not None:
            self.vh[:, dest] = self.vh[:, src]
        if self.last is not None:
            j, logp, h_col = self.last
            logp, h_col = logp.copy(), h_col.copy()
            logp[dest], h_col[dest] = logp[src], h_col[src]
            self.last = (j, logp, h_col)

    # --- steps -------------------------------------------------------------------------
    async def _next_row(self) -> None:
        r = self.row + 1
        N, C, _, W = self.x.shape
        above = np.zeros((N, C, self.A, W), dtype=np.float32)  # rows r-A..r-1; < 0 masked
        lo = max(r - self.A, 0)
        if r > lo:
            above[:, :, self.A - (r - lo) :] = self.x[:, :, lo:r]
        feeds: dict[str, np.ndarray] = {
            "x_above": above,
            "v_cache": self.v_cache,
            "row": np.full(N, r, dtype=np.int64),
        }
        out = await self.call("row_step", self.feeds(feeds))
        self.v_cache = np.concatenate([self.v_cache[:, :, :, 1:], out["v_rows"][:, :, :, None]], axis=3)
        # Column-major once per row, so each pixel's slice is contiguous: [W, N, L, 2ch].
        self.vh = np.ascontiguousarray(np.moveaxis(out["vh"], -1, 0))
        # A new row: the last column's horizontal state is not needed any more.
        self.row, self.col, self.last, self.stale, self.state_stale = r, 0, None, False, False
        self.h_cache = self.h_empty

    async def _pixel(self, j: int) -> None:
        assert self.vh is not None
        N, C = self.x.shape[:2]
        left = np.zeros((N, C, 1, self.A + 1), dtype=np.float32)  # columns j-A..j; < 0 masked
        lo = max(j - self.A, 0)
        left[:, :, 0, self.A + 1 - (j + 1 - lo) :] = self.x[:, :, self.row, lo : j + 1]
        feeds = {
            "x_left": left,
            "h_cache": self.h_cache,
            "vh": self.vh[j],
            "pos": np.tile(np.array([self.row, j], dtype=np.int64), (N, 1)),
        }
        out = await self.call("pixel_step", self.feeds(feeds))
        self.last, self.stale, self.state_stale = (j, out["logp"], out["h_col"]), False, False

    async def _finish(self) -> None:
        """The last column asked for is final: its horizontal inputs join the cache.

        Channel group g of a column's state depends on that pixel's channels < g only, so
        the state from a call made before the last channel was written is final; with more
        channels, one made before an earlier channel was written is not, and is redone.
        """
        assert self.last is not None
        if self.state_stale:
            await self._pixel(self.last[0])
        j, _, h_col = self.last
        assert j == self.col, "positions are asked for in raster order"
        self.h_cache = np.concatenate([self.h_cache[..., 1:], h_col[..., None]], axis=-1)
        self.col, self.last, self.stale, self.state_stale = j + 1, None, False, False
