"""The support map and standardisation: exact inverses, log-determinants, samples inside."""

from __future__ import annotations

import numpy as np
import pytest

from service.vector_spec import Interval, Scaling
from service.vector_transform import FeatureMap

SUPPORT = [Interval(low=-1.0, high=2.0), Interval(low=0.5), Interval(high=3.0), Interval()]
SCALING = Scaling(shift=[0.1, -0.2, 0.3, 1.0], scale=[1.5, 0.7, 2.0, 0.5])


def inside_points(n: int = 50, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack(
        [
            rng.uniform(-1, 2, n),
            0.5 + rng.exponential(1.0, n),
            3.0 - rng.exponential(1.0, n),
            rng.normal(0, 3, n),
        ],
        axis=1,
    )


def test_round_trip_and_inside() -> None:
    fm = FeatureMap.of(SUPPORT, SCALING)
    x = inside_points()
    s, _ = fm.to_standard(x)
    np.testing.assert_allclose(fm.from_standard(s), x, rtol=1e-9, atol=1e-9)
    assert fm.inside(x).all()


def test_log_det_matches_finite_differences() -> None:
    fm = FeatureMap.of(SUPPORT, SCALING)
    x = inside_points(10, seed=1)
    _, ld = fm.to_standard(x)
    h = 1e-6
    numeric = np.zeros(len(x))
    for d in range(x.shape[1]):  # the map is per feature: the Jacobian is diagonal
        up, down = x.copy(), x.copy()
        up[:, d] += h
        down[:, d] -= h
        slope = (fm.to_standard(up)[0][:, d] - fm.to_standard(down)[0][:, d]) / (2 * h)
        numeric += np.log(np.abs(slope))
    np.testing.assert_allclose(ld, numeric, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("far", [40.0, 1e3, 1e300])
def test_samples_far_in_the_tails_stay_strictly_inside(far: float) -> None:
    fm = FeatureMap.of(SUPPORT, SCALING)
    s = np.array([[far, -far, far, 0.0], [-far, far, -far, 0.0]])
    with np.errstate(over="ignore"):
        x = fm.from_standard(s)
    assert fm.inside(x).all() and np.isfinite(x).all()  # an overflow is clipped to the largest float
    assert (x[:, 0] > -1.0).all() and (x[:, 0] < 2.0).all()


def test_density_integrates_to_one_over_a_bounded_support() -> None:
    # A standard normal in the standard space, pushed to [-1, 2]: the raw density integrates to 1.
    fm = FeatureMap.of([Interval(low=-1.0, high=2.0)], Scaling(shift=[0.2], scale=[1.3]))
    grid = np.linspace(-1.0, 2.0, 200_001)[1:-1, None]
    s, ld = fm.to_standard(grid)
    density = np.exp(-0.5 * s[:, 0] ** 2 - 0.5 * np.log(2 * np.pi) + ld)
    assert abs(np.trapezoid(density, grid[:, 0]) - 1.0) < 1e-4


def test_whitening_round_trips_and_its_log_det_is_the_full_jacobians() -> None:
    rng = np.random.default_rng(3)
    a = np.tril(rng.normal(size=(4, 4)), -1) + np.diag([1.5, 0.7, 2.0, 1.1])
    white = Scaling(shift=SCALING.shift, scale=SCALING.scale, whitening=a.tolist())
    fm = FeatureMap.of(SUPPORT, white)
    x = inside_points(6, seed=2)
    s, ld = fm.to_standard(x)
    np.testing.assert_allclose(fm.from_standard(s), x, rtol=1e-9, atol=1e-9)
    h = 1e-6
    for i in range(len(x)):
        jac = np.empty((4, 4))
        for d in range(4):
            up, down = x[i : i + 1].copy(), x[i : i + 1].copy()
            up[0, d] += h
            down[0, d] -= h
            jac[:, d] = (fm.to_standard(up)[0][0] - fm.to_standard(down)[0][0]) / (2 * h)
        assert abs(np.linalg.slogdet(jac)[1] - ld[i]) < 1e-5


def test_scaling_refuses_a_whitening_that_is_not_lower_triangular_and_positive() -> None:
    with pytest.raises(ValueError, match="lower-triangular"):
        Scaling(shift=[0.0, 0.0], scale=[1.0, 1.0], whitening=[[1.0, 0.5], [0.0, 1.0]])
    with pytest.raises(ValueError, match="positive diagonal"):
        Scaling(shift=[0.0, 0.0], scale=[1.0, 1.0], whitening=[[1.0, 0.0], [0.3, -1.0]])
