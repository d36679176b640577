"""Reference posteriors without a closed form: tempered sequential Monte Carlo.

For SLCP the likelihood is exact but the posterior has several modes. The sampler:

1. folds the symmetry: the likelihood depends on θ3 and θ4 only through their squares and
   the prior is symmetric, so p(θ | x) is the same under either sign flip. Sampling the
   folded posterior (θ3, θ4 > 0) and flipping each sign with probability ½ is exact and
   leaves one mode where there were four;
2. moves N particles from the prior to the posterior through tempered targets
   p(θ) p(x | θ)^β, each step choosing β so that the effective sample size halves, then
   resampling and moving every particle by random-walk Metropolis steps (proposal
   covariance: 2.38²/d times the particles' covariance) that leave the tempered target
   invariant;
3. at β = 1 runs extra Metropolis sweeps so particles that resampling duplicated drift apart.

Its own check (`genserve evaluate`'s reference check, docs/results.md): two runs with
different seeds agree (their C2ST is near 0.5), and the Metropolis acceptance at β = 1
stays in a healthy range.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from .sbi_tasks import SLCP

Float = NDArray[np.float64]
PARTICLES = 20_000
MOVES_PER_STEP = 8
FINAL_SWEEPS = 200


def _log_target(task: SLCP, theta: Float, x: Float, beta: float) -> tuple[Float, Float]:
    """(log prior + β log-likelihood, log-likelihood), on the folded box."""
    inside = (theta >= task.prior.low).all(1) & (theta < task.prior.high).all(1)
    inside &= (theta[:, 2] > 0) & (theta[:, 3] > 0)
    ll = np.full(len(theta), -np.inf)
    if inside.any():
        ll[inside] = task.log_likelihood(theta[inside], x)
    return np.where(inside, beta * ll, -np.inf), ll


def _metropolis(
    task: SLCP, theta: Float, ll: Float, x: Float, beta: float, sweeps: int, rng: np.random.Generator
) -> tuple[Float, Float, float]:
    """Random-walk Metropolis on every particle; returns (θ, log-likelihoods, acceptance)."""
    d = theta.shape[1]
    cov = np.cov(theta, rowvar=False) * (2.38**2 / d) + 1e-10 * np.eye(d)
    chol = np.linalg.cholesky(cov)
    accepted = 0
    current = np.where(np.isfinite(ll), beta * ll, -np.inf)
    for _ in range(sweeps):
        proposal = theta + rng.standard_normal(theta.shape) @ chol.T
        target, ll_new = _log_target(task, proposal, x, beta)
        accept = np.log(rng.random(len(theta))) < target - current
        theta = np.where(accept[:, None], proposal, theta)
        ll = np.where(accept, ll_new, ll)
        current = np.where(accept, target, current)
        accepted += int(accept.sum())
    return theta, ll, accepted / (sweeps * len(theta))


def _systematic(weights: Float, rng: np.random.Generator) -> NDArray[np.int64]:
    n = len(weights)
    positions = (rng.random() + np.arange(n)) / n
    return np.minimum(np.searchsorted(np.cumsum(weights), positions), n - 1).astype(np.int64)


def tempered_smc(task: SLCP, x: Float, n: int, seed: int) -> tuple[Float, dict[str, float]]:
    """n draws from the folded posterior, and the run's diagnostics."""
    rng = np.random.default_rng([seed, 4])
    N = max(PARTICLES, n)
    theta = task.sample_prior(N, rng)
    theta[:, 2:4] = np.abs(theta[:, 2:4])
    _, ll = _log_target(task, theta, x, 0.0)
    beta, steps = 0.0, 0
    while beta < 1.0:
        steps += 1

        def ess(b: float, start: float = beta, ll: Float = ll) -> float:
            w = (b - start) * ll
            w = np.exp(w - w.max())
            return float(w.sum() ** 2 / (w**2).sum())

        lo, hi = beta, 1.0
        if ess(1.0) >= N / 2:
            nxt = 1.0
        else:
            for _ in range(50):  # bisection for ESS = N/2
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if ess(mid) >= N / 2 else (lo, mid)
            nxt = lo if lo > beta else hi
        logw = (nxt - beta) * ll
        w = np.exp(logw - logw.max())
        idx = _systematic(w / w.sum(), rng)
        theta, ll = theta[idx], ll[idx]
        beta = nxt
        theta, ll, accept = _metropolis(task, theta, ll, x, beta, MOVES_PER_STEP, rng)
    theta, ll, accept = _metropolis(task, theta, ll, x, 1.0, FINAL_SWEEPS, rng)
    unique = len(np.unique(theta[:, 0]))
    pick = rng.choice(N, size=n, replace=False)
    return theta[pick], {"steps": steps, "acceptance": accept, "unique_fraction": unique / N}


def slcp_reference(task: SLCP, x: Float, n: int, seed: int) -> Float:
    """n draws [n, 5] from SLCP's posterior p(θ | x)."""
    theta, _ = tempered_smc(task, x, n, seed)
    rng = np.random.default_rng([seed, 5])
    flips = np.where(rng.random((n, 2)) < 0.5, -1.0, 1.0)
    theta[:, 2:4] *= flips
    return theta


__all__ = ["slcp_reference", "tempered_smc"]
