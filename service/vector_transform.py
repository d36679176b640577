"""Raw units <-> a vector model's standard space, with the log-determinant of the map.

Per feature: a bounded support [a, b] is mapped to the real line by u = logit((x - a) / (b - a)),
a half-bounded one by u = log(x - a) or u = log(b - x), an unbounded one left alone; then
s = W (u - shift) / scale, with W an optional lower-triangular whitening matrix (identity
when absent). The graphs model s; a density in raw units is
log p(x) = log p(s) + log |ds/dx|, summed over features. Sampling runs the map backwards,
so a sample can never leave the support: samples are clipped into the open interval, where
the density is finite, not onto its ends, where the logit is infinite.

All of it in float64 NumPy: the map is cheap, and a float32 sample near a bound could
round onto it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.linalg import solve_triangular

from .vector_spec import Interval, Scaling

Float = NDArray[np.float64]


@dataclass(frozen=True)
class FeatureMap:
    """The support bijection and standardisation of one set of features, vectorised."""

    low: Float  # [D], -inf where unbounded below
    high: Float  # [D], +inf where unbounded above
    shift: Float  # [D]
    scale: Float  # [D]
    whitening: Float | None = None  # [D, D] lower-triangular, or None for the identity

    @classmethod
    def of(cls, support: list[Interval] | None, scaling: Scaling) -> FeatureMap:
        """From the manifest's records (`support` None: every feature is real)."""
        D = len(scaling.shift)
        support = support or [Interval() for _ in range(D)]
        low = np.array([-np.inf if s.low is None else s.low for s in support], dtype=np.float64)
        high = np.array([np.inf if s.high is None else s.high for s in support], dtype=np.float64)
        white = None if scaling.whitening is None else np.asarray(scaling.whitening, np.float64)
        return cls(
            low, high, np.asarray(scaling.shift, np.float64), np.asarray(scaling.scale, np.float64), white
        )

    @property
    def _kinds(self) -> tuple[NDArray[np.bool_], NDArray[np.bool_], NDArray[np.bool_]]:
        lo, hi = np.isfinite(self.low), np.isfinite(self.high)
        return lo & hi, lo & ~hi, ~lo & hi  # both ends, low end only, high end only

    def inside(self, x: Float) -> NDArray[np.bool_]:
        """[N, D] -> [N, D]: strictly inside the support (the density is 0 on its ends)."""
        return (x > self.low) & (x < self.high)

    def unconstrain(self, x: Float) -> tuple[Float, Float]:
        """x [N, D] inside the support -> (u [N, D] on the real line, log |du/dx| [N])."""
        both, lo_only, hi_only = self._kinds
        u = x.copy()
        ld = np.zeros_like(x)
        if both.any():
            # logit((x - a) / w) from the two distances to the ends: each is exact and
            # positive strictly inside, where (x - a) / w can round to 0 or 1 near an end.
            width = self.high[both] - self.low[both]
            below, above = x[:, both] - self.low[both], self.high[both] - x[:, both]
            u[:, both] = np.log(below) - np.log(above)
            ld[:, both] = np.log(width) - np.log(below) - np.log(above)
        if lo_only.any():
            d = x[:, lo_only] - self.low[lo_only]
            u[:, lo_only] = np.log(d)
            ld[:, lo_only] = -np.log(d)
        if hi_only.any():
            d = self.high[hi_only] - x[:, hi_only]
            u[:, hi_only] = np.log(d)
            ld[:, hi_only] = -np.log(d)
        return u, ld.sum(axis=1)

    def constrain(self, u: Float) -> Float:
        """u [N, D] on the real line -> x [N, D] strictly inside the support."""
        both, lo_only, hi_only = self._kinds
        x = u.copy()
        if both.any():
            width = self.high[both] - self.low[both]
            x[:, both] = self.low[both] + width / (1.0 + np.exp(-u[:, both]))
        if lo_only.any():
            x[:, lo_only] = self.low[lo_only] + np.exp(u[:, lo_only])
        if hi_only.any():
            x[:, hi_only] = self.high[hi_only] - np.exp(u[:, hi_only])
        # Far in a tail the maps above round onto an end (or past it): keep every sample
        # where the density is defined.
        return np.clip(x, np.nextafter(self.low, np.inf), np.nextafter(self.high, -np.inf))

    def to_standard(self, x: Float) -> tuple[Float, Float]:
        """Raw x [N, D] inside the support -> (standard s [N, D], log |ds/dx| [N])."""
        u, ld = self.unconstrain(x)
        z = (u - self.shift) / self.scale
        ld = ld - np.log(self.scale).sum()
        if self.whitening is None:
            return z, ld
        return z @ self.whitening.T, ld + np.log(np.diag(self.whitening)).sum()

    def from_standard(self, s: Float) -> Float:
        """Standard s [N, D] -> raw x [N, D] inside the support."""
        if self.whitening is not None:
            # z = W^-1 s: a triangular solve, exact and cheap.
            s = solve_triangular(self.whitening, s.T, lower=True).T
        return self.constrain(s * self.scale + self.shift)


__all__ = ["FeatureMap"]
