"""`genserve ood-eval`: how well each outlier score separates in- from out-of-distribution data.

Protocols (shared DATA.md), each reporting AUROC, AUPR (outliers positive) and FPR at 95%
TPR for every likelihood family x every score, next to classical detectors fitted on the
same training images:

- `transformed` and `simpler`: the store's served models, through their exported graphs and
  the service's own engine and scores; in-distribution = the test split, outliers built from
  the test images (`ood_sets`). Also checks calibration: the fraction of in-distribution test
  inputs flagged at alpha = 0.05 and 0.01.
- `novelty`: one run per held-out class, with models retrained on the other classes (a short
  budget, eager graphs in the same engine); outliers = every image of the held-out class.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
from rich.console import Console

from service.background import fit_background
from service.engine import Engine, build_engine, inline_caller
from service.manifest import BackgroundRecord, Conditioning, DatasetSpec, Manifest
from service.outliers import (
    Evidence,
    all_stats,
    available_methods,
    nll_bits_per_dim,
    outlier_results,
    score,
)
from service.runtime import load_backend
from service.store import ModelNotFoundError, ModelStore

from .build import SERVING_SAMPLES
from .data import ImageDataset, SplitFractions, load_dataset, make_splits
from .detectors import fit_detectors
from .export import EagerBackend
from .families import GenerativeModel, build_model, default_config
from .ood_metrics import band_probability, detection_metrics, resplit_flag_interval
from .ood_sets import SIMPLER, TRANSFORMED, build_sets
from .runtime import configure_threads, seed_everything
from .train import class_prior, default_train_config, fit, likelihood_validator

LIKELIHOOD_FAMILIES = ("flow", "vae", "pixelcnn", "diffusion")
Metrics = dict[str, float]


class DetectorResult(BaseModel):
    """One detector's metrics on each outlier set of a protocol."""

    detector: str  # "flow/typicality", "kde", ...
    kind: str  # "generative" | "classical"
    sets: dict[str, Metrics]


class CalibrationCheck(BaseModel):
    """Fraction of in-distribution test inputs flagged at each alpha, per method."""

    model: str
    labels: str  # "marginal" | "given"
    method: str
    default: bool
    n: int
    n_calibration: int  # calibration scores the p-values are computed against
    flagged: dict[str, float]
    # Per alpha, the central 90 % interval of the flagged fraction over random re-splits of
    # the pooled calibration and test scores (ood_metrics.resplit_flag_interval).
    resplit_90: dict[str, list[float]] = {}


class OODReport(BaseModel):
    """Everything `genserve ood-eval` measured."""

    dataset: str
    created: str
    settings: dict[str, Any]
    protocols: dict[str, list[DetectorResult]]
    calibration: list[CalibrationCheck]
    mean_nll_bpd: dict[str, dict[str, float]]  # family -> set ("test" too) -> mean NLL bits/dim
    defaults: dict[str, str]


@dataclass
class Scored:
    """A likelihood model scored the served way: engine, estimator size, score statistics."""

    family: str
    engine: Engine
    samples: int
    stats: dict[str, dict[str, float]] = field(default_factory=dict)
    background: BackgroundRecord | None = None

    def evidence(self, x: np.ndarray) -> Evidence:
        """Marginal log p(x) per row (nats) and the label posterior, as an unlabelled request
        gets them."""
        return Evidence.of(asyncio.run(self.engine.log_likelihood(x, None, self.samples, seed=0)), x)


def _generative_rows(
    models: list[Scored], x_in: np.ndarray, sets: dict[str, np.ndarray]
) -> tuple[list[DetectorResult], dict[str, dict[str, float]]]:
    rows, nll = [], {}
    for m in models:
        spec = m.engine.spec
        e_in = m.evidence(x_in)
        e_out = {name: m.evidence(x) for name, x in sets.items()}
        nll[m.family] = {
            name: float(np.mean(nll_bits_per_dim(e.ll, spec))) for name, e in {"test": e_in, **e_out}.items()
        }
        for method in available_methods(m.background, m.engine.conditional):
            s_in = score(method, e_in, spec, m.stats[method], m.background)
            metrics = {
                name: detection_metrics(s_in, score(method, e_out[name], spec, m.stats[method], m.background))
                for name in sets
            }
            rows.append(DetectorResult(detector=f"{m.family}/{method}", kind="generative", sets=metrics))
    return rows, nll


def _classical_rows(
    x_train: np.ndarray, levels: int, x_in: np.ndarray, sets: dict[str, np.ndarray], seed: int
) -> list[DetectorResult]:
    rows = []
    for name, fn in fit_detectors(x_train, levels, seed).items():
        s_in = fn(x_in)
        metrics = {k: detection_metrics(s_in, fn(x)) for k, x in sets.items()}
        rows.append(DetectorResult(detector=name, kind="classical", sets=metrics))
    return rows


# The alphas the calibration check reports, and the bands of flagged fractions the outlier
# acceptance points hold them to.
CALIBRATION_ALPHAS = (0.05, 0.01)
CALIBRATION_BANDS = {0.05: (0.03, 0.07), 0.01: (0.0, 0.025)}


def _calibration_checks(
    name: str, scored: Scored, manifest: Manifest, x: np.ndarray, y: np.ndarray | None
) -> list[CalibrationCheck]:
    checks: list[CalibrationCheck] = []
    cal = manifest.calibration
    assert cal is not None
    for labels, lab in (("marginal", None), ("given", y if scored.engine.conditional else None)):
        if labels == "given" and lab is None:
            continue
        table = cal.scores_given_labels if labels == "given" and cal.scores_given_labels else cal.scores
        methods = [m for m in available_methods(cal.background, scored.engine.conditional) if m in table]
        ll = asyncio.run(scored.engine.log_likelihood(x, lab, scored.samples, seed=0))
        # One pass through the service's scoring gives every method's scores and p-values;
        # each alpha is a threshold on the p-values (is_outlier = p <= alpha).
        res = asyncio.run(
            outlier_results(scored.engine, manifest, x, lab, ll, scored.samples, 0.05, None, True)
        )
        by_method = {v.method: v for v in res.every or ()}
        for m in methods:
            p_values, test_scores = by_method[m].p_value, by_method[m].score
            checks.append(
                CalibrationCheck(
                    model=name,
                    labels=labels,
                    method=m,
                    default=m == cal.default_method,
                    n=len(x),
                    n_calibration=len(table[m]),
                    flagged={str(a): float(np.mean(p_values <= a)) for a in CALIBRATION_ALPHAS},
                    resplit_90=resplit_flag_interval(np.asarray(table[m]), test_scores, CALIBRATION_ALPHAS),
                )
            )
    return checks


def evaluate_store(
    store_root: Any, dataset: str = "digits", seed: int = 2, console: Console | None = None
) -> OODReport:
    """The transformed and simpler protocols on the store's served likelihood models."""
    configure_threads()
    store = ModelStore(store_root)
    report = OODReport(
        dataset=dataset,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        settings={"set_seed": seed},
        protocols={},
        calibration=[],
        mean_nll_bpd={},
        defaults={},
    )
    models, manifests = [], {}
    data: ImageDataset | None = None
    splits = None
    for name in store.names():
        version = store.open(name)
        man = version.manifest
        if man.family not in LIKELIHOOD_FAMILIES or man.split.dataset != dataset or man.calibration is None:
            continue
        if data is None:
            data = load_dataset(dataset)
            splits = make_splits(
                data.y, len(data), seed=man.split.seed, fractions=SplitFractions(**man.split.fractions)
            )
        backend = load_backend(version, "onnxruntime", "cpu", torch.get_num_threads())
        engine = build_engine(man, inline_caller(backend))
        cal = man.calibration
        scored = Scored(man.family, engine, cal.samples, cal.stats, cal.background)
        models.append(scored)
        manifests[name] = (scored, man)
        report.defaults[man.family] = man.calibration.default_method
    if data is None or splits is None:
        raise ModelNotFoundError(f"no likelihood models for {dataset} with calibration in {store_root}")
    x_in = data.x[splits.test]
    y_in = data.y[splits.test] if data.y is not None else None
    all_sets = build_sets(x_in, data.spec.levels, seed=seed)
    classical_all = _classical_rows(data.x[splits.train], data.spec.levels, x_in, all_sets, seed)
    generative_all, report.mean_nll_bpd = _generative_rows(models, x_in, all_sets)
    for protocol, kinds in (("transformed", TRANSFORMED), ("simpler", SIMPLER)):
        report.protocols[protocol] = [
            DetectorResult(
                detector=r.detector, kind=r.kind, sets={k: v for k, v in r.sets.items() if k in kinds}
            )
            for r in generative_all + classical_all
        ]
    for name, (scored, man) in manifests.items():
        report.calibration += _calibration_checks(name, scored, man, x_in, y_in)
        if console:
            console.print(f"scored {name}")
    return report


def eager_engine(model: GenerativeModel, spec: DatasetSpec, prior: list[float] | None) -> Engine:
    """The service's engine over eager graph modules: served scoring without an export."""
    # Engines read only the family, data spec, conditioning, family info and graph names
    # from a manifest. No graphs listed: scoring needs none of the optional ones (a
    # PixelCNN's step graphs serve sampling, which would take the full pass here).
    fields: dict[str, Any] = {
        "family": model.family,
        "dataset": spec,
        "conditioning": Conditioning(conditional=model.conditional, class_prior=prior),
        "family_info": model.export_info(),
        "graphs": [],
    }
    manifest = Manifest.model_construct(**fields)
    return build_engine(manifest, inline_caller(EagerBackend(model)))


def _without_class(data: ImageDataset, held_out: int) -> ImageDataset:
    assert data.y is not None
    assert data.spec.label_names is not None
    keep = data.y != held_out
    names = [n for i, n in enumerate(data.spec.label_names) if i != held_out]
    remap = np.cumsum(np.arange(len(data.spec.label_names)) != held_out) - 1  # old -> new label
    spec = data.spec.model_copy(update={"label_names": names})
    return ImageDataset(x=data.x[keep], y=remap[data.y[keep]], spec=spec)


def evaluate_novelty(
    dataset: str = "digits",
    classes: list[int] | None = None,
    minutes: float | None = None,
    families: tuple[str, ...] = LIKELIHOOD_FAMILIES,
    epoch_scale: float = 1.0,
    seed: int = 0,
    train_overrides: dict[str, Any] | None = None,
    console: Console | None = None,
) -> list[DetectorResult]:
    """One-class novelty: per held-out class, models retrained on the rest score it.

    Each model trains with its family's default recipe shortened to `epoch_scale` of the
    default epochs (so annealed schedules still finish); `minutes` is an explicit
    wall-clock limit per model (default none), and a model it cuts short says so.
    Returns one row per detector with one metrics entry per held-out class ("class 3").
    """
    configure_threads()
    data = load_dataset(dataset)
    assert data.y is not None
    assert data.spec.label_names is not None
    classes = list(range(data.spec.num_classes)) if classes is None else classes
    rows: dict[str, DetectorResult] = {}
    for c in classes:
        rest = _without_class(data, c)
        assert rest.y is not None
        splits = make_splits(rest.y, len(rest), seed=seed)
        x_out = {f"class {data.spec.label_names[c]}": data.x[data.y == c]}
        x_in = rest.x[splits.test]
        x = torch.as_tensor(rest.x)
        y = torch.as_tensor(rest.y)
        tr, va = torch.as_tensor(splits.train), torch.as_tensor(splits.validation)
        scored = []
        for family in families:
            base = default_train_config(family, rest.spec)
            epochs = max(1, round(base.max_epochs * epoch_scale))
            tcfg = default_train_config(
                family,
                rest.spec,
                **{"max_minutes": minutes, "max_epochs": epochs, **(train_overrides or {})},
            )
            seed_everything(seed)
            model = build_model(family, rest.spec, True, default_config(family, rest.spec))
            validator = likelihood_validator(x[va], y[va], tcfg.val_samples)
            model, _, _ = fit(
                model,
                x[tr],
                y[tr],
                validator,
                tcfg,
                seed,
                label=f"{family} w/o {c}",
                progress=console is not None,
                say=None if console is None else console.print,
            )
            model.cpu().eval()
            prior = class_prior(rest.y[splits.train], rest.spec.num_classes)
            s = Scored(family, eager_engine(model, rest.spec, prior), SERVING_SAMPLES.get(family, 1))
            s.background = fit_background(rest.x[splits.train], rest.spec.levels)
            s.stats = all_stats(s.evidence(rest.x[splits.validation]), rest.spec, s.background)
            scored.append(s)
        new_rows = _generative_rows(scored, x_in, x_out)[0]
        new_rows += _classical_rows(rest.x[splits.train], rest.spec.levels, x_in, x_out, seed)
        for r in new_rows:
            rows.setdefault(
                r.detector, DetectorResult(detector=r.detector, kind=r.kind, sets={})
            ).sets.update(r.sets)
        if console:
            console.print(f"novelty: held-out class {c} done")
    return list(rows.values())


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _name(row: DetectorResult) -> str:
    return f"**{row.detector}**" if row.kind == "generative" else row.detector


def render_markdown(report: OODReport) -> str:
    """The report as markdown tables (what docs/outliers.md shows)."""
    lines = [
        f"Dataset `{report.dataset}`, run {report.created}. Served defaults: "
        + ", ".join(f"{k} → `{v}`" for k, v in sorted(report.defaults.items()))
        + "."
    ]
    for protocol, rows in report.protocols.items():
        if not rows:
            continue
        sets = list(rows[0].sets)
        lines += ["", f"### {protocol}: AUROC per outlier set", ""]
        short = sets if len(sets) <= 9 else []
        head = ["detector", *short, "mean AUROC", "mean AUPR", "mean FPR95"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            cells = [f"{r.sets[s]['auroc']:.3f}" for s in short]
            mean = [_mean([r.sets[s][k] for s in sets]) for k in ("auroc", "aupr", "fpr95")]
            lines.append("| " + " | ".join([_name(r), *cells, *(f"{v:.3f}" for v in mean)]) + " |")
        if not short:
            # Too many sets (ten held-out classes) for the table above: a compact one.
            lines += ["", f"### {protocol}: AUROC per outlier set, each", ""]
            lines += ["| " + " | ".join(["detector", *sets, "mean"]) + " |", "|" + "---|" * (len(sets) + 2)]
            for r in rows:
                cells = [f"{r.sets[s]['auroc']:.2f}" for s in sets]
                mean_auroc = _mean([r.sets[s]["auroc"] for s in sets])
                lines.append("| " + " | ".join([_name(r), *cells, f"{mean_auroc:.3f}"]) + " |")
    if report.mean_nll_bpd:
        sets = list(next(iter(report.mean_nll_bpd.values())))
        lines += ["", "### Mean NLL (bits/dim) per set: lower = the model calls it more likely", ""]
        lines += ["| family | " + " | ".join(sets) + " |", "|" + "---|" * (len(sets) + 1)]
        for fam, vals in report.mean_nll_bpd.items():
            lines.append(f"| {fam} | " + " | ".join(f"{vals[s]:.3f}" for s in sets) + " |")
    if report.calibration:
        lines += ["", "### Calibration: fraction of in-distribution test inputs flagged", ""]
        lines += [
            "Each fraction with its count of flagged inputs, and in brackets the central 90 % of "
            "the fractions that random re-splits of the same held-out calibration and test scores "
            "give (the spread of an exact procedure at these sample sizes).",
            "",
            "| model | labels | method | n | " + " | ".join(f"alpha {a}" for a in CALIBRATION_ALPHAS) + " |",
            "|---|---|---|---|" + "---|" * len(CALIBRATION_ALPHAS),
        ]
        for c in report.calibration:
            m = f"**{c.method}** (default)" if c.default else c.method
            cells = []
            for a in map(str, CALIBRATION_ALPHAS):
                band = c.resplit_90.get(a)
                # The count beside the fraction: 8 of 269 prints as 0.030 but lies under 0.03.
                flagged = f"{c.flagged[a]:.3f} ({round(c.flagged[a] * c.n)})"
                cells.append(flagged + (f" [{band[0]:.3f}, {band[1]:.3f}]" if band else ""))
            lines.append(f"| {c.model} | {c.labels} | {m} | {c.n} | {' | '.join(cells)} |")
        sizes = sorted({(c.n_calibration, c.n) for c in report.calibration})
        for n_cal, n_test in sizes:
            odds = ", ".join(
                f"in [{lo:g}, {hi:g}] at alpha {a} with probability "
                f"{band_probability(n_cal, n_test, a, lo, hi):.2f}"
                for a, (lo, hi) in CALIBRATION_BANDS.items()
            )
            lines += [
                "",
                f"With {n_cal} calibration and {n_test} test inputs, an exact procedure flags a "
                f"fraction {odds} (beta-binomial over the draw of the data, "
                "ood_metrics.band_probability).",
            ]
    return "\n".join(lines) + "\n"
