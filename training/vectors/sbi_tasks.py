"""Simulation-based-inference tasks, defined as the sbibm benchmark defines them.

Lueckmann et al. 2021, "Benchmarking Simulation-Based Inference" (github.com/sbi-benchmark/
sbibm, tasks/*/task.py): the same priors, simulators and constants, re-implemented in
NumPy (sbibm itself pins old libraries and needs Julia for some tasks). Each task also has
its exact log-likelihood where one exists (used to check reference posteriors) and a
reference-posterior sampler (closed forms where they exist; see reference.py for SLCP).

Observations are drawn as sbibm draws them, θ_o from the prior and x_o from the simulator,
with this project's seeds: sbibm's own observation files are not shipped here.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from service.vector_spec import Interval

Float = NDArray[np.float64]
REFERENCE = "sbibm (Lueckmann et al. 2021), re-implemented"
MAX_REJECTION_ROUNDS = 2000


@dataclass(frozen=True)
class Observation:
    """One benchmark observation: the parameters that made it, and the data."""

    index: int
    theta: Float  # [P]
    x: Float  # [X]


class SBITask(ABC):
    """A prior p(θ), a simulator p(x | θ), and what is known about the posterior."""

    name: str
    parameters: list[str]
    observations: list[str]
    prior_text: str

    @property
    def support(self) -> list[Interval]:
        """The prior's support per parameter."""
        return [Interval() for _ in self.parameters]

    @abstractmethod
    def sample_prior(self, n: int, rng: np.random.Generator) -> Float:
        """θ ~ p(θ): [n, P]."""

    @abstractmethod
    def log_prior(self, theta: Float) -> Float:
        """log p(θ) [n] (-inf outside the support)."""

    @abstractmethod
    def simulate(self, theta: Float, rng: np.random.Generator) -> Float:
        """x ~ p(x | θ) for each row: [n, X]."""

    def log_likelihood(self, theta: Float, x: Float) -> Float:
        """log p(x | θ) per row of θ [n], for one observation x [X]; -inf where impossible."""
        raise NotImplementedError(f"{self.name} has no closed-form likelihood here")

    def simulations(self, n: int, seed: int) -> tuple[Float, Float]:
        """(θ [n, P], x [n, X]): a training set of n simulations, reproducible from `seed`."""
        rng = np.random.default_rng([seed, 1])
        theta = self.sample_prior(n, rng)
        return theta, self.simulate(theta, rng)

    def observation(self, index: int) -> Observation:
        """Benchmark observation `index` (1..10): θ_o from the prior, x_o from the simulator."""
        rng = np.random.default_rng([1_000_000 + index, 2])
        theta = self.sample_prior(1, rng)
        return Observation(index, theta[0], self.simulate(theta, rng)[0])

    def reference_posterior(self, x: Float, n: int, seed: int) -> Float:
        """n draws [n, P] from p(θ | x), exact (closed form or rejection) or a checked MCMC."""
        raise NotImplementedError


class BoxPrior:
    """sbibm's uniform prior on a box [low, high]^P."""

    def __init__(self, low: float, high: float, dims: int) -> None:
        self.low, self.high, self.dims = low, high, dims

    def sample(self, n: int, rng: np.random.Generator) -> Float:
        return rng.uniform(self.low, self.high, size=(n, self.dims))

    def log_prob(self, theta: Float) -> Float:
        inside = ((theta >= self.low) & (theta < self.high)).all(axis=1)
        return np.where(inside, -self.dims * math.log(self.high - self.low), -np.inf)

    def support(self) -> list[Interval]:
        return [Interval(low=self.low, high=self.high) for _ in range(self.dims)]

    def text(self) -> str:
        return f"uniform on [{self.low:g}, {self.high:g}]^{self.dims}"


class BoxPriorTask(SBITask):
    """A task whose prior is a uniform box (`prior`, set by the subclass)."""

    prior: BoxPrior

    @property
    def support(self) -> list[Interval]:
        return self.prior.support()

    def sample_prior(self, n: int, rng: np.random.Generator) -> Float:
        return self.prior.sample(n, rng)

    def log_prior(self, theta: Float) -> Float:
        return self.prior.log_prob(theta)


def _names(stem: str, n: int) -> list[str]:
    return [f"{stem}_{i + 1}" for i in range(n)]


def _rejection(
    draw: Callable[[int, np.random.Generator], Float],
    accept: Callable[[Float], NDArray[np.bool_]],
    n: int,
    seed: int,
) -> Float:
    """n accepted rows of `draw`, in order: exact sampling from `draw` restricted by `accept`."""
    rng = np.random.default_rng([seed, 3])
    out: list[Float] = []
    have = 0
    for _ in range(MAX_REJECTION_ROUNDS):
        if have >= n:
            break
        batch = draw(max(1024, 2 * (n - have)), rng)
        batch = batch[accept(batch)]
        out.append(batch)
        have += len(batch)
    else:
        if have < n:
            raise ValueError(
                f"rejection sampling accepted {have} of {n} draws in {MAX_REJECTION_ROUNDS} rounds: "
                "an observation the simulator (almost) cannot produce"
            )
    return np.concatenate(out)[:n]


class TwoMoons(BoxPriorTask):
    """Two moons: a crescent-shaped, bimodal posterior in 2-D (sbibm `two_moons`)."""

    name = "two_moons"
    parameters = _names("theta", 2)
    observations = _names("x", 2)
    A_LOW, A_HIGH, BASE_OFFSET, R_LOC, R_SCALE = -math.pi / 2, math.pi / 2, 0.25, 0.1, 0.01

    def __init__(self) -> None:
        self.prior = BoxPrior(-1.0, 1.0, 2)
        self.prior_text = self.prior.text()

    def _noise(self, n: int, rng: np.random.Generator) -> Float:
        """p = (r cos a + 0.25, r sin a): the simulator's noise, [n, 2]."""
        a = rng.uniform(self.A_LOW, self.A_HIGH, size=n)
        r = rng.normal(self.R_LOC, self.R_SCALE, size=n)
        return np.stack([np.cos(a) * r + self.BASE_OFFSET, np.sin(a) * r], axis=1)

    @staticmethod
    def _shift(theta: Float) -> Float:
        # sbibm's _map_fun: rotate θ by -π/4, fold the first coordinate.
        z0 = (theta[:, 0] + theta[:, 1]) / math.sqrt(2.0)
        z1 = (-theta[:, 0] + theta[:, 1]) / math.sqrt(2.0)
        return np.stack([-np.abs(z0), z1], axis=1)

    def simulate(self, theta: Float, rng: np.random.Generator) -> Float:
        return self._noise(len(theta), rng) + self._shift(theta)

    def noise_log_density(self, p: Float) -> Float:
        """log density of the simulator's noise p [n, 2]: polar coordinates around (0.25, 0),
        a uniform angle on (-π/2, π/2) and a normal radius (Jacobian 1/r). sbibm's own
        `_likelihood` drops the 1/r and 1/π; this is the normalised density."""
        u, v = p[:, 0] - self.BASE_OFFSET, p[:, 1]
        r = np.hypot(u, v)
        with np.errstate(divide="ignore"):
            lr = -0.5 * ((r - self.R_LOC) / self.R_SCALE) ** 2 - 0.5 * math.log(2 * math.pi * self.R_SCALE**2)
            out = lr - math.log(math.pi) - np.log(r)
        return np.where(u > 0.0, out, -np.inf)

    def log_likelihood(self, theta: Float, x: Float) -> Float:
        """log p(x | θ) = log p_noise(x - shift(θ)) (the shift moves p, no Jacobian)."""
        return self.noise_log_density(x[None, :] - self._shift(theta))

    def reference_posterior(self, x: Float, n: int, seed: int) -> Float:
        """Exact: sbibm's closed form. Draw the simulator's noise p, solve x = p + shift(θ)
        for θ (two solutions, from the fold; each with probability 1/2), keep θ inside the
        prior. The map from p to θ is linear on each branch, so the draws follow
        p(θ | x) ∝ p_noise(x - shift(θ)) on the box."""

        def draw(m: int, rng: np.random.Generator) -> Float:
            p = self._noise(m, rng)
            q0 = p[:, 0] - x[0]  # = |z0| ≥ 0 when the draw can explain x
            q1 = x[1] - p[:, 1]  # = z1
            q0 = np.where(rng.random(m) < 0.5, -q0, q0)  # z0 = ±|z0|
            # θ = R(π/4) (z0, z1)
            c = s = 1.0 / math.sqrt(2.0)
            theta = np.stack([c * q0 - s * q1, s * q0 + c * q1], axis=1)
            keep = p[:, 0] - x[0] >= 0.0
            return theta[keep]

        return _rejection(draw, lambda t: np.isfinite(self.prior.log_prob(t)), n, seed)


class GaussianLinear(SBITask):
    """Gaussian linear in 10-D: prior N(0, 0.1 I), x ~ N(θ, 0.1 I) (sbibm `gaussian_linear`;
    its `prior_scale` and `simulator_scale` enter as covariances)."""

    name = "gaussian_linear"
    DIMS, PRIOR_VAR, NOISE_VAR = 10, 0.1, 0.1

    def __init__(self) -> None:
        self.parameters = _names("theta", self.DIMS)
        self.observations = _names("x", self.DIMS)
        self.prior_text = f"normal N(0, {self.PRIOR_VAR:g} I) in {self.DIMS} dimensions"

    def sample_prior(self, n: int, rng: np.random.Generator) -> Float:
        return rng.normal(0.0, math.sqrt(self.PRIOR_VAR), size=(n, self.DIMS))

    def log_prior(self, theta: Float) -> Float:
        return -0.5 * (theta**2).sum(1) / self.PRIOR_VAR - 0.5 * self.DIMS * math.log(
            2 * math.pi * self.PRIOR_VAR
        )

    def simulate(self, theta: Float, rng: np.random.Generator) -> Float:
        return theta + rng.normal(0.0, math.sqrt(self.NOISE_VAR), size=theta.shape)

    def log_likelihood(self, theta: Float, x: Float) -> Float:
        d = x[None, :] - theta
        return -0.5 * (d**2).sum(1) / self.NOISE_VAR - 0.5 * self.DIMS * math.log(
            2 * math.pi * self.NOISE_VAR
        )

    def posterior_moments(self, x: Float) -> tuple[Float, float]:
        """Mean and (isotropic) variance of the Gaussian posterior."""
        var = 1.0 / (1.0 / self.PRIOR_VAR + 1.0 / self.NOISE_VAR)
        return var * x / self.NOISE_VAR, var

    def reference_posterior(self, x: Float, n: int, seed: int) -> Float:
        """Exact: the conjugate Gaussian posterior."""
        mean, var = self.posterior_moments(x)
        rng = np.random.default_rng([seed, 3])
        return mean + math.sqrt(var) * rng.standard_normal((n, self.DIMS))


class GaussianMixture(BoxPriorTask):
    """Gaussian mixture in 2-D: x ~ ½ N(θ, I) + ½ N(θ, 0.01 I), θ uniform on [-10, 10]^2
    (sbibm `gaussian_mixture`): a broad and a sharp component around the same mean."""

    name = "gaussian_mixture"
    parameters = _names("theta", 2)
    observations = _names("x", 2)
    SCALES = (1.0, 0.1)

    def __init__(self) -> None:
        self.prior = BoxPrior(-10.0, 10.0, 2)
        self.prior_text = self.prior.text()

    def simulate(self, theta: Float, rng: np.random.Generator) -> Float:
        scale = np.asarray(self.SCALES)[rng.integers(0, 2, size=len(theta))]
        return theta + scale[:, None] * rng.standard_normal(theta.shape)

    def log_likelihood(self, theta: Float, x: Float) -> Float:
        d2 = ((x[None, :] - theta) ** 2).sum(1)
        parts = [
            math.log(0.5) - 0.5 * d2 / s**2 - 2 * math.log(s) - math.log(2 * math.pi) for s in self.SCALES
        ]
        return np.logaddexp(*parts)

    def reference_posterior(self, x: Float, n: int, seed: int) -> Float:
        """Exact: under a flat prior the posterior is the same two-component mixture
        centred on x, truncated to the box; drawn by rejection (sbibm's closed form)."""

        def draw(m: int, rng: np.random.Generator) -> Float:
            scale = np.asarray(self.SCALES)[rng.integers(0, 2, size=m)]
            return x[None, :] + scale[:, None] * rng.standard_normal((m, 2))

        return _rejection(draw, lambda t: np.isfinite(self.prior.log_prob(t)), n, seed)


class SLCP(BoxPriorTask):
    """Simple likelihood, complex posterior (sbibm `slcp`): 4 draws from a 2-D Gaussian whose
    mean, scales and correlation are functions of 5 parameters; θ uniform on [-3, 3]^5.
    The scales are θ3² and θ4², so the posterior has up to four symmetric modes."""

    name = "slcp"
    parameters = _names("theta", 5)
    DRAWS, EPS = 4, 1e-6

    def __init__(self) -> None:
        self.prior = BoxPrior(-3.0, 3.0, 5)
        self.prior_text = self.prior.text()
        self.observations = [f"x_{d + 1}_{k}" for d in range(self.DRAWS) for k in ("a", "b")]

    def _gaussian(self, theta: Float) -> tuple[Float, Float]:
        """Means [n, 2] and covariances [n, 2, 2] (sbibm adds 1e-6 to the diagonal)."""
        s1, s2, rho = theta[:, 2] ** 2, theta[:, 3] ** 2, np.tanh(theta[:, 4])
        cov = np.empty((len(theta), 2, 2))
        cov[:, 0, 0] = s1**2 + self.EPS
        cov[:, 1, 1] = s2**2 + self.EPS
        cov[:, 0, 1] = cov[:, 1, 0] = rho * s1 * s2
        return theta[:, :2], cov

    def simulate(self, theta: Float, rng: np.random.Generator) -> Float:
        mean, cov = self._gaussian(theta)
        chol = np.linalg.cholesky(cov)  # [n, 2, 2]
        eps = rng.standard_normal((len(theta), self.DRAWS, 2))
        draws = mean[:, None, :] + np.einsum("nij,nkj->nki", chol, eps)
        return draws.reshape(len(theta), 2 * self.DRAWS)

    def log_likelihood(self, theta: Float, x: Float) -> Float:
        mean, cov = self._gaussian(theta)
        det = cov[:, 0, 0] * cov[:, 1, 1] - cov[:, 0, 1] ** 2
        inv00, inv11, inv01 = cov[:, 1, 1] / det, cov[:, 0, 0] / det, -cov[:, 0, 1] / det
        d = x.reshape(self.DRAWS, 2)[None, :, :] - mean[:, None, :]  # [n, 4, 2]
        quad = (
            inv00[:, None] * d[..., 0] ** 2
            + inv11[:, None] * d[..., 1] ** 2
            + 2 * inv01[:, None] * d[..., 0] * d[..., 1]
        )
        return (-0.5 * quad - 0.5 * np.log(det)[:, None] - math.log(2 * math.pi)).sum(1)

    def reference_posterior(self, x: Float, n: int, seed: int) -> Float:
        from .reference import slcp_reference

        return slcp_reference(self, x, n, seed)


TASKS: dict[str, Callable[[], SBITask]] = {
    "two_moons": TwoMoons,
    "slcp": SLCP,
    "gaussian_linear": GaussianLinear,
    "gaussian_mixture": GaussianMixture,
}


class UnknownTaskError(ValueError):
    """A task name genserve does not simulate."""


def get_task(name: str) -> SBITask:
    """The task called `name` (dashes and underscores alike)."""
    key = name.replace("-", "_")
    if key not in TASKS:
        raise UnknownTaskError(f"unknown SBI task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[key]()


__all__ = ["REFERENCE", "TASKS", "Observation", "SBITask", "UnknownTaskError", "get_task"]
