"""The SBI tasks: sbibm's definitions, normalised likelihoods, exact reference posteriors."""

from __future__ import annotations

import numpy as np
import pytest

from training.vectors.reference import tempered_smc
from training.vectors.sbi_tasks import SLCP, TASKS, TwoMoons, UnknownTaskError, get_task

SHAPES = {"two_moons": (2, 2), "slcp": (5, 8), "gaussian_linear": (10, 10), "gaussian_mixture": (2, 2)}


@pytest.mark.parametrize("name", list(TASKS))
def test_simulations_have_sbibm_shapes_stay_in_the_prior_and_repeat_by_seed(name: str) -> None:
    task = get_task(name)
    theta, x = task.simulations(500, seed=3)
    assert (theta.shape[1], x.shape[1]) == SHAPES[name]
    assert len(task.parameters) == theta.shape[1] and len(task.observations) == x.shape[1]
    assert np.isfinite(task.log_prior(theta)).all() and np.isfinite(x).all()
    again, x2 = task.simulations(500, seed=3)
    assert np.array_equal(theta, again) and np.array_equal(x, x2)
    assert not np.array_equal(task.simulations(500, seed=4)[0], theta)
    o = task.observation(1)
    assert np.array_equal(o.x, task.observation(1).x) and not np.array_equal(o.x, task.observation(2).x)


def test_unknown_task_lists_the_known_ones() -> None:
    with pytest.raises(UnknownTaskError, match="two_moons"):
        get_task("three_moons")
    assert get_task("two-moons").name == "two_moons"


def _grid_posterior(name: str, x: np.ndarray, lo: float, hi: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and standard deviation by quadrature on an n x n grid."""
    task = get_task(name)
    axis = np.linspace(lo, hi, n)
    grid = np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    logp = task.log_likelihood(grid, x) + task.log_prior(grid)
    w = np.exp(logp - logp[np.isfinite(logp)].max())
    w /= w.sum()
    mean = (w[:, None] * grid).sum(0)
    return mean, np.sqrt((w[:, None] * (grid - mean) ** 2).sum(0))


@pytest.mark.parametrize(("name", "lo", "hi"), [("two_moons", -1.0, 1.0), ("gaussian_mixture", -10.0, 10.0)])
def test_2d_reference_posteriors_match_quadrature_of_the_likelihood(name: str, lo: float, hi: float) -> None:
    task = get_task(name)
    for index in (1, 2):
        x = task.observation(index).x
        draws = task.reference_posterior(x, 40_000, seed=index)
        assert np.isfinite(task.log_prior(draws)).all()
        mean, std = _grid_posterior(name, x, lo, hi, 1201)
        np.testing.assert_allclose(draws.mean(0), mean, atol=0.03 * (hi - lo) / 2)
        np.testing.assert_allclose(draws.std(0), std, rtol=0.05, atol=0.005)


def test_two_moons_likelihood_is_normalised() -> None:
    # p(x | θ) is the noise density moved by shift(θ): its integral is the noise density's.
    task = get_task("two_moons")
    assert isinstance(task, TwoMoons)
    axis = np.linspace(-0.5, 0.5, 2001)
    p = np.stack(np.meshgrid(axis + 0.25, axis, indexing="ij"), -1).reshape(-1, 2)
    total = np.exp(task.noise_log_density(p)).sum() * (axis[1] - axis[0]) ** 2
    assert abs(total - 1.0) < 3e-3  # a Riemann sum across the cut at u = 0: O(cell) error
    theta = np.array([[0.3, -0.2]])
    x = task.simulate(theta, np.random.default_rng(0))[0]
    assert np.isfinite(task.log_likelihood(theta, x)).all()


def test_gaussian_linear_reference_is_the_conjugate_posterior() -> None:
    task = get_task("gaussian_linear")
    x = task.observation(3).x
    draws = task.reference_posterior(x, 50_000, seed=0)
    np.testing.assert_allclose(draws.mean(0), x / 2, atol=0.01)
    np.testing.assert_allclose(draws.var(0), 0.05, rtol=0.05)


def test_slcp_reference_is_symmetric_and_two_runs_agree() -> None:
    task = get_task("slcp")
    assert isinstance(task, SLCP)
    x = task.observation(1).x
    a = task.reference_posterior(x, 20_000, seed=1)
    b = task.reference_posterior(x, 20_000, seed=2)
    assert np.isfinite(task.log_prior(a)).all()
    # sign flips of θ3 and θ4 leave the likelihood unchanged: the draws are symmetric
    for d in (2, 3):
        assert abs((a[:, d] > 0).mean() - 0.5) < 0.02
    folded = lambda t: np.column_stack([t[:, :2], np.abs(t[:, 2:4]), t[:, 4]])  # noqa: E731
    np.testing.assert_allclose(folded(a).mean(0), folded(b).mean(0), atol=0.05 * folded(a).std(0).max())
    np.testing.assert_allclose(folded(a).std(0), folded(b).std(0), rtol=0.1, atol=0.02)
    _, diagnostics = tempered_smc(task, x, 20_000, seed=1)
    assert 0.05 < diagnostics["acceptance"] < 0.9 and diagnostics["unique_fraction"] > 0.5
