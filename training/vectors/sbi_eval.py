"""`genserve sbi-eval`: how close served posteriors are to the reference, as sbibm measures it.

For each NPE model in the store and each of the task's benchmark observations: 10,000
posterior draws through the served graphs and the service's engine, 10,000 reference
draws (exact, or the checked SMC sampler for SLCP), their C2ST. On 2-D tasks, also the
integral of the served density over the prior's support (quadrature on a grid), which must
be 1 for a normalised posterior.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.engine import build_engine, inline_caller, noise_rng
from service.runtime import open_backend
from service.store import ModelStore, ModelVersion
from service.vector_spec import VectorSpec

from ..runtime import configure_threads
from .c2st import c2st
from .sbi_tasks import get_task

DRAWS = 10_000
CHECKED = 500  # observations per set in the misspecification check
ALPHA = 0.05


def perturbations(x: np.ndarray, spread: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Observations a misspecified simulator would make, from the simulator's own `x` [N, X]
    (`spread`: the per-coordinate standard deviation of simulated x):

    - added noise: every coordinate gets N(0, spread²) more noise than the simulator adds;
    - shifted outputs: every coordinate is moved by 2 spreads (a calibration offset);
    - contaminated coordinate: the first coordinate is off by 10 spreads (a gross error).
    """
    noisy = x + spread * rng.standard_normal(x.shape)
    shifted = x + 2.0 * spread
    contaminated = x.copy()
    contaminated[:, 0] += 10.0 * spread[0]
    return {"added noise": noisy, "shifted outputs": shifted, "contaminated coordinate": contaminated}


def misspecification(engine: Any, task: Any, seed: int = 7) -> dict[str, Any]:
    """Context p-values of simulator observations (should be uniform) and of perturbed
    ones (should be small): the fraction flagged at ALPHA for each set."""
    _, x = task.simulations(CHECKED, seed=seed)
    _, reference = task.simulations(5000, seed=seed + 1)
    spread = reference.std(0)
    rng = np.random.default_rng(seed)
    sets = {"simulator": x, **perturbations(x, spread, rng)}
    out: dict[str, Any] = {"alpha": ALPHA, "observations": CHECKED}
    for name, obs in sets.items():
        p = asyncio.run(engine.context_outliers(obs, ALPHA)).p_value
        out[name] = {"flagged": float((p <= ALPHA).mean()), "median_p": float(np.median(p))}
    # Uniformity of the simulator's own p-values: Kolmogorov-Smirnov distance to U(0, 1).
    p = np.sort(asyncio.run(engine.context_outliers(x, ALPHA)).p_value)
    n = len(p)
    upper, lower = np.arange(1, n + 1) / n - p, p - np.arange(n) / n
    out["simulator"]["ks_distance"] = float(max(upper.max(), lower.max()))
    return out


GRID = 1000  # cells per axis for the 2-D normalisation check


def posterior_models(store: ModelStore) -> list[ModelVersion]:
    """The latest version of every NPE model in the store."""
    out = []
    for name in store.names():
        version = store.open(name)
        spec = version.manifest.dataset
        if isinstance(spec, VectorSpec) and spec.simulation is not None and spec.simulation.method == "npe":
            out.append(version)
    return out


def normalisation(engine: Any, spec: VectorSpec, x: np.ndarray) -> float | None:
    """∫ p(θ | x) dθ over the support by the midpoint rule on a GRID x GRID grid (2-D bounded only)."""
    if spec.dims != 2 or not all(i.low is not None and i.high is not None for i in spec.support):
        return None
    axes = []
    for interval in spec.support:
        assert interval.low is not None
        assert interval.high is not None
        edges = np.linspace(interval.low, interval.high, GRID + 1)
        axes.append(0.5 * (edges[1:] + edges[:-1]))
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    ctx = np.repeat(x[None], len(grid), 0)
    ll = asyncio.run(engine.log_likelihood(grid, None, 1, 0, ctx)).log_likelihood
    cell = float(np.prod([a[1] - a[0] for a in axes]))
    return float(np.exp(ll).sum() * cell)


def evaluate_posterior(
    version: ModelVersion, observations: int, say: Any = print, draws: int = DRAWS, first: int = 1
) -> dict[str, Any]:
    """C2ST per observation (and the normalisation check) for one NPE model version."""
    spec = version.manifest.dataset
    assert isinstance(spec, VectorSpec)
    assert spec.simulation is not None
    task = get_task(spec.simulation.task)
    backend = open_backend(
        version.manifest.graphs, version.path, "onnxruntime", "cpu", torch.get_num_threads()
    )
    engine = build_engine(version.manifest, inline_caller(backend))
    rows = []
    last = min(10, first + observations - 1)  # sbibm has ten benchmark observations per task
    for index in range(first, last + 1):
        start = time.monotonic()
        obs = task.observation(index)
        ctx = np.repeat(obs.x[None], draws, 0)
        served = asyncio.run(engine.sample(draws, None, noise_rng(index), 1.0, ctx))
        inside = bool(np.isfinite(task.log_prior(served)).all())
        reference = task.reference_posterior(obs.x, draws, seed=index)
        row: dict[str, Any] = {
            "observation": index,
            "c2st": c2st(reference, served),
            "inside_support": inside,
        }
        integral = normalisation(engine, spec, obs.x)
        if integral is not None:
            row["integral"] = integral
        row["seconds"] = round(time.monotonic() - start, 1)
        say(
            f"{version.name} observation {index}: "
            + ", ".join(f"{k} {v}" for k, v in row.items() if k != "observation")
        )
        rows.append(row)
    checked = misspecification(engine, task) if engine.checks_context else None
    if checked is not None:
        say(f"{version.name} context check: " + ", ".join(f"{k} {v}" for k, v in checked.items()))
    backend.close()
    c2sts = [r["c2st"] for r in rows] or [float("nan")]
    return {
        "model": version.name,
        "version": version.version,
        "task": task.name,
        "simulations": spec.simulation.simulations,
        "draws": draws,
        "training": {
            "epochs": version.manifest.training.epochs,
            "seconds": version.manifest.training.duration_s,
        },
        "c2st_mean": float(np.mean(c2sts)),
        "c2st_sd": float(np.std(c2sts, ddof=1)) if len(c2sts) > 1 else 0.0,
        "observations": rows,
        "misspecification": checked,
    }


def sbi_eval(
    store_root: Path,
    observations: int = 10,
    models: list[str] | None = None,
    say: Any = print,
    draws: int = DRAWS,
    first: int = 1,
) -> list[dict[str, Any]]:
    """Evaluate every NPE model of the store (or those named) on observations first, first + 1, ..."""
    configure_threads()
    store = ModelStore(store_root)
    chosen = [v for v in posterior_models(store) if models is None or v.name in models]
    return [evaluate_posterior(v, observations, say, draws, first) for v in chosen]


def markdown(results: list[dict[str, Any]]) -> str:
    """The results as a table for docs/results.md."""
    lines = [
        "| model | task | simulations | C2ST mean ± sd (obs.) | worst | ∫ p(θ|x) dθ (2-D) | training |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c2sts = [o["c2st"] for o in r["observations"]]
        integrals = [o["integral"] for o in r["observations"] if "integral" in o]
        integral = f"{min(integrals):.3f}–{max(integrals):.3f}" if integrals else "—"
        c2st_text = f"{r['c2st_mean']:.3f} ± {r['c2st_sd']:.3f} ({len(c2sts)})" if c2sts else "—"
        trained = f"{r['training']['epochs']} epochs, {r['training']['seconds']:.0f} s"
        lines.append(
            f"| {r['model']} v{r['version']} | {r['task']} | {r['simulations']:,} | {c2st_text} "
            f"| {max(c2sts) if c2sts else float('nan'):.3f} | {integral} | {trained} |"
        )
    checks = [r for r in results if r.get("misspecification")]
    if checks:
        sets = ["simulator", "added noise", "shifted outputs", "contaminated coordinate"]
        lines += [
            "",
            f"| model | flagged at α = {ALPHA} (of {CHECKED}): "
            + " | ".join(sets)
            + " | KS distance (simulator) |",
            "|---|" + "---|" * (len(sets) + 1),
        ]
        for r in checks:
            m = r["misspecification"]
            cells = " | ".join(f"{m[s]['flagged']:.3f}" for s in sets)
            lines.append(f"| {r['model']} | {cells} | {m['simulator']['ks_distance']:.3f} |")
    return "\n".join(lines)


__all__ = ["evaluate_posterior", "markdown", "posterior_models", "sbi_eval"]
