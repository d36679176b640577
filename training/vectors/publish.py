"""Export, evaluate, calibrate and publish a trained vector flow as a store version.

Everything measured here goes through the exported ONNX graphs and the service's own
engine (raw units in, raw units out): what is measured is what is served.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from rich.console import Console

from service.engine import Engine, build_engine, inline_caller
from service.engine.vector_flow import VectorFlowEngine
from service.manifest import SCHEMA_VERSION, CalibrationRecord, ContextCheck, Manifest
from service.outliers import Evidence, available_methods, calibration_scores, method_stats, score
from service.runtime import open_backend
from service.store import ModelStore, ModelVersion

from ..build import _up_to_date, _versions, check_same_kind, export_fingerprint, training_fields
from ..build_jobs import BuildOutcome
from ..checkpoint import run_key
from ..export import export_graphs
from ..runtime import configure_threads
from . import baselines
from .outlier_eval import outlier_report
from .pipeline import CONTEXT_FLOW, VectorRecipe, VectorTrainResult, standardise, train_vectors, training_key

Float = NDArray[np.float64]
NOISE_SEED = 0  # densities are exact: the seed is recorded for the contract, never used


@dataclass
class Rows:
    """Raw vectors with their labels and context."""

    x: Float
    y: NDArray[np.int64] | None
    c: Float | None

    def __len__(self) -> int:
        return len(self.x)


def _rows(result: VectorTrainResult, idx: NDArray[np.int64]) -> Rows:
    d = result.data
    return Rows(d.x[idx], None if d.y is None else d.y[idx], None if d.context is None else d.context[idx])


def held_out(result: VectorTrainResult, recipe: VectorRecipe, seed: int) -> tuple[Rows, Rows]:
    """(test, calibration): fresh simulations for SBI, else the split's held-out parts."""
    fresh = recipe.held_out(seed)
    if fresh is not None:
        test, cal = fresh
        return Rows(test.x, None, test.context), Rows(cal.x, None, cal.context)
    return _rows(result, result.splits.test), _rows(result, result.splits.calibration)


async def _ll(engine: Engine, rows: Rows, labels: bool) -> Any:
    return await engine.log_likelihood(rows.x, rows.y if labels else None, 1, NOISE_SEED, rows.c)


async def vector_calibration(engine: Engine, val: Rows, cal: Rows) -> CalibrationRecord:
    """Conformal reference scores on the calibration rows (with their context); statistics
    from validation rows. The default is the negative log-density: vectors have no synthetic
    outlier sets to choose another on (docs/outliers.md)."""
    spec = engine.spec
    methods = available_methods(None, engine.conditional, images=False)
    val_ll = await _ll(engine, val, False)
    stats = {m: method_stats(m, Evidence.of(val_ll, val.x), spec) for m in methods}
    cal_ll = await _ll(engine, cal, False)
    given = given_stats = None
    if engine.conditional and val.y is not None and cal.y is not None:
        val_y = await _ll(engine, val, True)
        given_stats = {m: method_stats(m, Evidence.of(val_y, val.x), spec) for m in methods}
        cal_y = await _ll(engine, cal, True)
        given = calibration_scores(Evidence.of(cal_y, cal.x), spec, given_stats, None, True)
    return CalibrationRecord(
        size=len(cal),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        estimator=cal_ll.estimator + (" (marginal over labels)" if cal_ll.marginal else ""),
        samples=1,
        seed=NOISE_SEED,
        default_method="nll",
        log_likelihood=cal_ll.log_likelihood.tolist(),
        scores=calibration_scores(Evidence.of(cal_ll, cal.x), spec, stats, None, engine.conditional),
        scores_given_labels=given,
        stats=stats,
        stats_given_labels=given_stats,
    )


async def evaluate_vectors(
    engine: Engine, result: VectorTrainResult, test: Rows, val: Rows, calibration: CalibrationRecord
) -> dict[str, Any]:
    """Test log-likelihood (nats per example, raw units) beside the classical baselines; for a
    model of one class of a table, outlier detection against the other classes."""
    ll = (await _ll(engine, test, engine.conditional)).log_likelihood
    train = _rows(result, result.splits.train)
    out: dict[str, Any] = {
        "test_rows": len(test),
        "test_log_likelihood": float(ll.mean()),
        "test_log_likelihood_se": float(ll.std(ddof=1) / np.sqrt(len(ll))),
        "density": result.spec.density,
        "units": "nats per example, raw units",
    }
    base: dict[str, float] = {}
    if train.c is not None and test.c is not None:
        base["linear_gaussian"] = float(baselines.linear_gaussian(train.x, train.c, test.x, test.c).mean())
    else:
        base["gaussian"] = float(baselines.gaussian(train.x, test.x).mean())
        gm, k = baselines.mixture(train.x, val.x, test.x)
        base[f"gaussian_mixture_{k}"] = float(gm.mean())
        kd, bandwidth = baselines.kde(train.x, val.x, test.x)
        base["kde"] = float(kd.mean())
        out["kde_bandwidth"] = bandwidth
    out["baselines"] = base
    outliers = result.data.outliers
    if outliers is not None and test.c is None:
        flow_scores: dict[str, tuple[Float, Float]] = {}
        ll_in = (await _ll(engine, test, False)).log_likelihood  # scored as requests come: unlabelled
        ll_out = (await engine.log_likelihood(outliers, None, 1, NOISE_SEED)).log_likelihood
        for method in ("nll", "typicality"):
            stats = calibration.stats.get(method, {})
            inl = score(method, Evidence(ll_in, test.x), result.spec, stats)
            outl = score(method, Evidence(ll_out, outliers), result.spec, stats)
            flow_scores[method] = (inl, outl)
        out["outlier_detection"] = outlier_report(flow_scores, calibration, train.x, test.x, outliers)
    if result.spec.simulation is not None:
        out["held_out"] = "fresh simulations outside the training budget (seed + 10000)"
    return out


def publish_vectors(
    store: ModelStore,
    name: str,
    result: VectorTrainResult,
    recipe: VectorRecipe,
    seed: int,
    build_key: str,
    step: Callable[[str], None] = lambda _s: None,
) -> ModelVersion:
    """Export with parity checks, evaluate and calibrate through the served engine, publish."""
    test, cal = held_out(result, recipe, seed)
    val = _rows(result, result.splits.validation)
    model, spec = result.model, result.spec
    s_test, c_test = standardise(spec, test.x, test.c)
    y_test = None if (test.y is None or not model.conditional) else torch.as_tensor(test.y)
    rec = result.record
    with store.staging(name) as stage:
        step("exporting graphs (ONNX + TorchScript) and checking parity")
        graphs, gaps = export_graphs(model, stage.path, s_test, y_test, c_test)
        if result.context_model is not None:
            assert c_test is not None
            more, more_gaps = export_graphs(result.context_model, stage.path, c_test, None, c_test)
            graphs, gaps = [*graphs, *more], {**gaps, **more_gaps}
        fields: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "family": model.family,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "description": (
                f"{'class-conditional ' if model.conditional else ''}{result.config.transform} flow: "
                f"{spec.density}, {spec.name}"
            ),
            "dataset": spec.model_dump(),
            "conditioning": {"conditional": model.conditional, "class_prior": result.class_prior},
            "family_info": {
                **model.export_info(),
                "estimator": "exact",
                "default_samples": 0,
                "parity": gaps,
                "opset": 18,
            },
            "graphs": [g.model_dump() for g in graphs],
            "evaluation": {},
            "split": {
                "dataset": recipe.data,
                "seed": seed,
                "fractions": {"validation": 0.1}
                if recipe.is_sbi
                else {"validation": 0.1, "calibration": 0.15, "test": 0.15},
                "validation": result.splits.validation.tolist(),
                "calibration": result.splits.calibration.tolist(),
                "test": result.splits.test.tolist(),
            },
            "training": training_fields(
                result.config.model_dump(mode="json"),
                result.train.model_dump(mode="json"),
                seed,
                rec,
                result.key,
                bool(rec.get("cut_short", False)),
            ),
            "versions": _versions(),
            "build_key": build_key,
        }
        # The context check's scores are computed through the exported graph: a placeholder
        # until then (the manifest wants the graph and its record together).
        placeholder = {"description": "", "scores": [0.0], "training_epochs": 0}
        provisional = Manifest.model_validate(
            {
                **fields,
                "name": name,
                "version": 1,
                "calibration": None,
                "files": [e.model_dump() for e in stage.file_entries()],
                "context_check": placeholder if result.context_model is not None else None,
            }
        )
        backend = open_backend(provisional.graphs, stage.path, "onnxruntime", "cpu", torch.get_num_threads())
        engine = build_engine(provisional, inline_caller(backend))
        step("calibrating outlier scores")
        calibration = asyncio.run(vector_calibration(engine, val, cal))
        fields["calibration"] = calibration.model_dump()
        step("evaluating on held-out data (log-likelihood, baselines, outliers)")
        fields["evaluation"] = asyncio.run(evaluate_vectors(engine, result, test, val, calibration))
        if result.context_model is not None:
            assert isinstance(engine, VectorFlowEngine)
            assert cal.c is not None
            where = (
                "fresh simulations outside the training budget" if recipe.is_sbi else "the calibration split"
            )
            fields["context_check"] = ContextCheck(
                description=f"contexts of {len(cal)} held-out rows ({where}), scored by a "
                f"{CONTEXT_FLOW.transform} flow trained on the training contexts",
                scores=asyncio.run(engine.context_nll(cal.c)).tolist(),
                training_epochs=int((result.context_record or {}).get("epochs", 0)),
            ).model_dump()
        backend.close()
        return stage.commit(fields)


def vector_build_key(result_key: str) -> str:
    """A version's build key: the training run's key and the exporting code."""
    return run_key({"train": result_key, "export": export_fingerprint(), "schema": SCHEMA_VERSION})


def build_vector_model(
    store_root: Path,
    recipe: VectorRecipe,
    seed: int = 0,
    console: Console | None = None,
    progress: bool = True,
    force: bool = False,
    conditional: bool = True,
    name: str | None = None,
) -> BuildOutcome:
    """Train and publish one vector model, unless its latest version is up to date."""
    console = console or Console()
    configure_threads()
    start = time.monotonic()
    name = name or recipe.model_name()
    store = ModelStore(store_root)
    # The key needs the trained run's inputs, not its weights: a dry load of the data is
    # cheap next to training, so the up-to-date check trains nothing.
    probe = training_key(recipe, conditional, seed)
    build_key = vector_build_key(probe)
    with store.lock(name, on_wait=lambda: console.print(f"waiting for another publisher of {name}")):
        current = _up_to_date(store, name, build_key)
        if current is not None:
            console.print(f"[green]up to date[/] {name} v{current.version}")
            return BuildOutcome(name, "up to date", current.version, time.monotonic() - start, False)
    result = train_vectors(recipe, conditional, seed, progress=progress, say=console.print)
    assert result.key == probe, "the up-to-date key must be the trained run's key"
    if not force:
        check_same_kind(store, name, "flow", result.model.conditional, result.spec)
    rec = result.record
    console.print(
        f"  {name}: trained: {rec['epochs']} epochs ({rec['stopped']}, best at {rec['best_epoch']}), "
        f"{rec['duration_s']:.0f} s"
    )
    version = publish_vectors(
        store, name, result, recipe, seed, build_key, step=lambda s: console.print(f"  {name}: {s}")
    )
    elapsed = time.monotonic() - start
    console.print(f"[green]published[/] {name} v{version.version} in {elapsed:.0f}s")
    return BuildOutcome(
        name, "published", version.version, elapsed, True, version.manifest.training.cut_short
    )


__all__ = ["build_vector_model", "held_out", "publish_vectors", "vector_calibration"]
