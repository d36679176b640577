"""Vector datasets: SBI arrangements, scikit-learn tables, user files, and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.data import DataError
from training.vectors.data import file_dataset, fit_scaling, sbi_dataset, tabular_dataset
from training.vectors.pipeline import VectorRecipe, is_vector_data, vector_splits


def test_npe_models_theta_given_x_and_nle_x_given_theta() -> None:
    npe = sbi_dataset("two_moons", "npe", 100)
    nle = sbi_dataset("two_moons", "nle", 100)
    assert npe.features == ["theta_1", "theta_2"] and npe.context_names == ["x_1", "x_2"]
    assert nle.features == ["x_1", "x_2"] and nle.context_names == ["theta_1", "theta_2"]
    assert np.array_equal(npe.x, nle.context) and np.array_equal(npe.context, nle.x)
    assert npe.support[0].low == -1.0 and not nle.support[0].bounded
    with pytest.raises(DataError, match="npe, nle"):
        sbi_dataset("two_moons", "abc", 100)


def test_sbi_splits_use_the_whole_budget_for_training_and_validation() -> None:
    recipe = VectorRecipe("sbi:gaussian_mixture", simulations=1000)
    data = recipe.load(0)
    splits = vector_splits(data, recipe, 0)
    assert len(splits.train) == 900 and len(splits.validation) == 100
    assert len(splits.test) == len(splits.calibration) == 0
    fresh = recipe.held_out(0)
    assert fresh is not None and not np.array_equal(fresh[0].x[:5], data.x[:5])


def test_scaling_is_fitted_after_the_support_map() -> None:
    data = sbi_dataset("two_moons", "npe", 2000)
    spec = data.spec(np.arange(1500))
    u = np.log((data.x[:1500] + 1) / 2) - np.log1p(-(data.x[:1500] + 1) / 2)
    np.testing.assert_allclose(spec.scaling.shift, u.mean(0))
    assert spec.context_scaling is not None
    np.testing.assert_allclose(spec.context_scaling.scale, data.context[:1500].std(0))
    constant = fit_scaling(np.ones((10, 2)), None)
    assert min(constant.scale) > 0


def test_tabular_inliers_keep_one_class() -> None:
    full = tabular_dataset("breast_cancer")
    benign = tabular_dataset("breast_cancer", "benign")
    assert full.label_names == ["malignant", "benign"] and benign.y is None
    assert len(benign) == int((full.y == 1).sum()) == 357
    with pytest.raises(DataError, match="no class"):
        tabular_dataset("breast_cancer", "healthy")


def test_user_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "v.npz",
        x=rng.normal(size=(20, 3)),
        y=rng.integers(0, 2, 20),
        context=rng.normal(size=(20, 1)),
    )
    d = file_dataset(tmp_path / "v.npz")
    assert d.features == ["x_1", "x_2", "x_3"] and d.context_names == ["c_1"] and d.label_names == ["0", "1"]
    assert is_vector_data(str(tmp_path / "v.npz"))
    csv = tmp_path / "t.csv"
    csv.write_text("a,b,kind,c\n1,2,u,0.5\n3,4,v,0.1\n5,6,u,0.3\n")
    d = file_dataset(csv, context=["c"], label="kind")
    assert d.features == ["a", "b"] and d.context_names == ["c"] and d.label_names == ["u", "v"]
    assert d.x.shape == (3, 2) and list(d.y) == [0, 1, 0]
    with pytest.raises(DataError, match="no column"):
        file_dataset(csv, features=["z"])
    (tmp_path / "bad.csv").write_text("a,b\n1,x\n2,3\n")
    with pytest.raises(DataError, match="numbers"):
        file_dataset(tmp_path / "bad.csv")
    np.savez(tmp_path / "nan.npz", x=np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(DataError, match="NaN"):
        file_dataset(tmp_path / "nan.npz")


def test_whitening_decorrelates_and_a_constant_feature_does_not_break_it() -> None:
    from service.vector_transform import FeatureMap

    rng = np.random.default_rng(0)
    base = rng.normal(size=(500, 3))
    x = base @ np.array([[1.0, 0.8, 0.0], [0.0, 0.6, 0.5], [0.0, 0.0, 1.0]])
    scaling = fit_scaling(x, None, whiten=True)
    assert scaling.whitening is not None
    s, _ = FeatureMap.of(None, scaling).to_standard(x)
    np.testing.assert_allclose(np.cov(s, rowvar=False, ddof=0), np.eye(3), atol=1e-3)
    constant = np.column_stack([x, np.ones(500)])
    assert fit_scaling(constant, None, whiten=True).whitening is None
