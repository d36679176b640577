"""Outlier scores from likelihoods, and conformal p-values against a calibration set.

Raw likelihood is a poor outlier score on its own: deep generative models often give
*higher* likelihood to inputs simpler than their training data (Nalisnick et al. 2019),
because low-level statistics and input complexity dominate it. So besides the raw
negative log-likelihood the service offers scores that correct for that:

- `typicality`: how far an input's NLL lies from the in-distribution typical value,
  two-sided (Nalisnick et al. 2019b, the single-input typicality test);
- `complexity`: NLL minus the input's lossless compressed length, both in bits per
  dimension (Serrà et al. 2020, with raw DEFLATE as the compressor);
- `likelihood_ratio`: NLL minus the NLL of a local background model fitted on the
  training split (Ren et al. 2019's ratio, with Schirrmeister et al. 2020's local
  background; see background.py): a learned compressor in place of DEFLATE.
- `label_ambiguity` (conditional models, labels left to the model): how close the two
  most probable labels are under Bayes' rule, log p(y2|x) - log p(y1|x). The corrections
  above remove low-level statistics; this one looks at semantics: an input of a class the
  model never saw fits no label clearly (the generative classifier's counterpart of the
  max-softmax baseline, Hendrycks & Gimpel 2017).
- `ratio_ambiguity` and `combined`: sums of the scores above, each standardised by its
  median and interquartile range on the validation split, so that an input is flagged
  when it is unusual in low-level statistics, in semantics, or in both.

Every score is "larger = more anomalous". A p-value compares a score with the scores of
the held-out in-distribution calibration split stored in the manifest:
    p = (1 + #{calibration scores >= s}) / (n + 1),
which is valid (P(p <= alpha) <= alpha for in-distribution inputs) whatever the score,
provided the request is scored exactly as the calibration split was: same estimator, sample
count and noise seed, and the marginal likelihood unless labels are given. The statistics a score
needs (the typical NLL) come from the validation split, never the calibration split, so
calibration and test scores stay exchangeable.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .background import background_log_likelihood
from .errors import InvalidInputError
from .manifest import BackgroundRecord, CalibrationRecord, DatasetSpec, Manifest, VectorSpec

if TYPE_CHECKING:
    from .engine import Engine, Likelihood

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Evidence:
    """What the scores of a batch see: per row, the likelihood, the input and (when the
    model inferred the label) the label posterior."""

    ll: FloatArray  # [B] log-likelihood, nats: marginal unless labels were given
    x: np.ndarray  # [B, C, H, W] integer levels
    log_posterior: FloatArray | None = None  # [B, L] log p(y | x), for unlabelled conditional scoring

    @classmethod
    def of(cls, likelihood: Likelihood, x: np.ndarray) -> Evidence:
        """The evidence an engine's answer gives for inputs `x`."""
        return cls(likelihood.log_likelihood, x, likelihood.log_posterior)


ScoreFn = Callable[
    [Evidence, DatasetSpec | VectorSpec, dict[str, float], BackgroundRecord | None], FloatArray
]


def nll_bits_per_dim(log_likelihood: FloatArray, spec: DatasetSpec | VectorSpec) -> FloatArray:
    """Raw negative log-likelihood in bits per dimension."""
    return -np.asarray(log_likelihood, dtype=np.float64) / (spec.dims * math.log(2))


def compressed_bits(x: np.ndarray, spec: DatasetSpec | VectorSpec) -> FloatArray:
    """Lossless compressed length of each image in bits [N]: raw DEFLATE at level 9.

    Raw DEFLATE (no zlib header or checksum) keeps the constant overhead small on tiny
    images; any constant left cancels in rankings and p-values. Each row is compressed on
    its own, so a row's length never depends on the rest of the batch.
    """
    if not isinstance(spec, DatasetSpec):
        raise ValueError("the complexity score compresses integer images; vectors have none")
    dtype = np.uint8 if spec.levels <= 256 else np.uint16
    rows = np.ascontiguousarray(np.asarray(x).reshape(len(x), -1).astype(dtype))  # [N, D]
    out = np.empty(len(rows), dtype=np.float64)
    for i, row in enumerate(rows):
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        out[i] = 8 * len(c.compress(row.tobytes()) + c.flush())
    return out


def _nll(
    e: Evidence, spec: DatasetSpec | VectorSpec, stats: dict[str, float], bg: BackgroundRecord | None
) -> FloatArray:
    return nll_bits_per_dim(e.ll, spec)


def _typicality(
    e: Evidence, spec: DatasetSpec | VectorSpec, stats: dict[str, float], bg: BackgroundRecord | None
) -> FloatArray:
    return np.abs(nll_bits_per_dim(e.ll, spec) - stats["typical_bpd"])


def _complexity(
    e: Evidence, spec: DatasetSpec | VectorSpec, stats: dict[str, float], bg: BackgroundRecord | None
) -> FloatArray:
    return nll_bits_per_dim(e.ll, spec) - compressed_bits(e.x, spec) / spec.dims


def _likelihood_ratio(
    e: Evidence, spec: DatasetSpec | VectorSpec, stats: dict[str, float], bg: BackgroundRecord | None
) -> FloatArray:
    if bg is None:
        raise ValueError("likelihood_ratio needs a background model")
    return nll_bits_per_dim(e.ll, spec) - nll_bits_per_dim(background_log_likelihood(bg, e.x), spec)


def label_ambiguity(log_posterior: FloatArray) -> FloatArray:
    """log p(y2 | x) - log p(y1 | x) for the two most probable labels, nats [B]: near 0
    when the model cannot tell two classes apart, very negative when it is sure."""
    top2 = np.partition(np.asarray(log_posterior, dtype=np.float64), -2, axis=1)[:, -2:]  # [B, 2]
    return top2[:, 0] - top2[:, 1]


def _label_ambiguity(
    e: Evidence, spec: DatasetSpec | VectorSpec, stats: dict[str, float], bg: BackgroundRecord | None
) -> FloatArray:
    if e.log_posterior is None:
        raise ValueError("label_ambiguity needs the label posterior of an unlabelled request")
    return label_ambiguity(e.log_posterior)


def _standardised_sum(parts: tuple[str, ...]) -> ScoreFn:
    """Σ over `parts` of (score - validation median) / validation scale. A part whose
    statistics are absent is left out: the label posterior when labels are given."""

    def fn(
        e: Evidence, spec: DatasetSpec | VectorSpec, stats: dict[str, float], bg: BackgroundRecord | None
    ) -> FloatArray:
        total = np.zeros(len(e.ll), dtype=np.float64)
        for part in parts:
            if f"{part}_median" not in stats:
                continue
            total += (METHODS[part][0](e, spec, {}, bg) - stats[f"{part}_median"]) / stats[f"{part}_scale"]
        return total

    return fn


_RATIO_AMBIGUITY = ("likelihood_ratio", "label_ambiguity")
_COMBINED = ("likelihood_ratio", "complexity", "label_ambiguity")
# Components of the standardised sums; the order of METHODS is also the tie-break order
# of the build's selection (simpler first).
PARTS: dict[str, tuple[str, ...]] = {"ratio_ambiguity": _RATIO_AMBIGUITY, "combined": _COMBINED}

METHODS: dict[str, tuple[ScoreFn, str]] = {
    "nll": (_nll, "negative log-likelihood in bits/dim (the raw baseline; ranks simple inputs as typical)"),
    "typicality": (
        _typicality,
        "|NLL - typical NLL| in bits/dim, two-sided: flags inputs far more or far less likely "
        "than in-distribution data (Nalisnick et al. 2019b)",
    ),
    "complexity": (
        _complexity,
        "NLL minus the input's losslessly compressed length (raw DEFLATE), bits/dim: corrects "
        "likelihood for input complexity (Serrà et al. 2020)",
    ),
    "likelihood_ratio": (
        _likelihood_ratio,
        "NLL minus the NLL of a local background model (each pixel given its left and upper "
        "neighbours, fitted on the training split), bits/dim: the likelihood ratio of Ren et al. "
        "2019 with a local background (Schirrmeister et al. 2020)",
    ),
    "label_ambiguity": (
        _label_ambiguity,
        "log p(y2|x) - log p(y1|x), nats, for the two most probable labels under Bayes' rule: "
        "semantic novelty, an input that fits no class clearly (conditional models, scored "
        "without labels)",
    ),
    "ratio_ambiguity": (
        _standardised_sum(_RATIO_AMBIGUITY),
        "likelihood_ratio + label_ambiguity, each standardised by its validation median and "
        "interquartile range: low-level and semantic novelty together (with labels given, "
        "the likelihood-ratio part alone)",
    ),
    "combined": (
        _standardised_sum(_COMBINED),
        "likelihood_ratio + complexity + label_ambiguity, each standardised by its validation "
        "median and interquartile range (with labels given, without the label_ambiguity part)",
    ),
}
NEEDS_BACKGROUND = frozenset({"likelihood_ratio", "ratio_ambiguity", "combined"})
NEEDS_POSTERIOR = frozenset({"label_ambiguity", "ratio_ambiguity", "combined"})
NEEDS_IMAGES = frozenset({"complexity", "combined"})
# Of those, the ones with nothing left to score when labels are given (the sums drop a part).
POSTERIOR_ONLY = frozenset({"label_ambiguity"})
DEFAULT_METHOD = "nll"  # only the fallback: each build picks its default on validation data


def _spread(values: FloatArray) -> float:
    """A robust scale: the interquartile range of a normal's units (1 when degenerate)."""
    q1, q3 = np.percentile(values, [25, 75])
    scale = float(q3 - q1) / 1.349
    return scale if scale > 1e-9 else 1.0


def method_stats(
    method: str,
    reference: Evidence,
    spec: DatasetSpec | VectorSpec,
    background: BackgroundRecord | None = None,
) -> dict[str, float]:
    """Statistics a method needs, from in-distribution evidence of the validation split."""
    if method == "typicality":
        return {"typical_bpd": float(np.mean(nll_bits_per_dim(reference.ll, spec)))}
    out: dict[str, float] = {}
    for part in PARTS.get(method, ()):
        if (part in NEEDS_POSTERIOR and reference.log_posterior is None) or (
            part in NEEDS_BACKGROUND and background is None
        ):
            continue
        values = score(part, reference, spec, {}, background)
        out[f"{part}_median"] = float(np.median(values))
        out[f"{part}_scale"] = _spread(values)
    return out


def available_methods(
    background: BackgroundRecord | None, conditional: bool = True, images: bool = True
) -> list[str]:
    """The methods a model can be scored with: stores built without a background lack the
    ratio, unconditional models have no label posterior, and vectors have no compressed
    length."""
    return [
        m
        for m in METHODS
        if (background is not None or m not in NEEDS_BACKGROUND)
        and (conditional or m not in NEEDS_POSTERIOR)
        and (images or m not in NEEDS_IMAGES)
    ]


def score(
    method: str,
    evidence: Evidence,
    spec: DatasetSpec | VectorSpec,
    stats: dict[str, float],
    background: BackgroundRecord | None = None,
) -> FloatArray:
    """Scores of one method for a batch of rows (larger = more anomalous) [B]."""
    fn, _ = METHODS[method]
    return fn(evidence, spec, stats, background)


def all_stats(
    reference: Evidence, spec: DatasetSpec | VectorSpec, background: BackgroundRecord | None = None
) -> dict[str, dict[str, float]]:
    """Every method's statistics from one set of in-distribution reference evidence (for
    vectors, of the methods that apply to them)."""
    methods = METHODS if isinstance(spec, DatasetSpec) else available_methods(None, True, images=False)
    return {m: method_stats(m, reference, spec, background) for m in methods}


def calibration_scores(
    evidence: Evidence,
    spec: DatasetSpec | VectorSpec,
    stats: dict[str, dict[str, float]],
    background: BackgroundRecord | None = None,
    conditional: bool = True,
) -> dict[str, list[float]]:
    """Every method's scores for the calibration split (stored in the manifest): the
    methods the model admits, less those needing a label posterior the evidence lacks."""
    methods = available_methods(background, conditional, isinstance(spec, DatasetSpec))
    if evidence.log_posterior is None:
        methods = [m for m in methods if m not in POSTERIOR_ONLY]
    return {m: score(m, evidence, spec, stats.get(m, {}), background).tolist() for m in methods}


def conformal_p_values(calibration: FloatArray, scores: FloatArray) -> FloatArray:
    """p = (1 + #{c >= s}) / (n + 1) for each score s; exact, O((n + m) log n)."""
    cal = np.sort(np.asarray(calibration, dtype=np.float64))
    s = np.asarray(scores, dtype=np.float64)
    at_least = len(cal) - np.searchsorted(cal, s, side="left")
    return ((1.0 + at_least) / (len(cal) + 1.0)).astype(np.float64)


def benjamini_hochberg(p_values: FloatArray, fdr: float) -> NDArray[np.bool_]:
    """Benjamini-Hochberg selection: the rows declared outliers at false-discovery rate `fdr`.

    Rejects the k smallest p-values, k the largest i with p_(i) <= i * fdr / m. Conformal
    p-values against one calibration set are positively dependent (PRDS), under which BH
    controls the FDR (Bates et al. 2023).
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    if m == 0:
        return np.zeros(0, dtype=bool)
    order = np.argsort(p, kind="stable")
    passed = p[order] <= fdr * np.arange(1, m + 1) / m
    k = int(np.nonzero(passed)[0].max()) + 1 if passed.any() else 0
    selected = np.zeros(m, dtype=bool)
    selected[order[:k]] = True
    return selected


def _reference(cal: CalibrationRecord, given_labels: bool) -> tuple[dict[str, list[float]], dict[str, Any]]:
    if given_labels and cal.scores_given_labels:
        return cal.scores_given_labels, cal.stats_given_labels or cal.stats
    return cal.scores, cal.stats


@dataclass(frozen=True)
class Verdicts:
    """One outlier method's verdict on every row of a request, as columns.

    Columns, not per-row objects: a 10,000-row request is answered as arrays (an .npz, OIP
    tensors) without a Python object per row; `rows()` builds the JSON rows in one pass.
    """

    method: str
    score: FloatArray  # [N] larger = more anomalous
    p_value: FloatArray  # [N] conformal p-values
    alpha: float
    fdr: float | None = None
    bh_selected: NDArray[np.bool_] | None = None  # [N] with fdr: Benjamini-Hochberg's selection

    @property
    def is_outlier(self) -> NDArray[np.bool_]:
        """[N] p_value <= alpha."""
        return np.asarray(self.p_value <= self.alpha)

    def rows(self) -> list[dict[str, Any]]:
        """One JSON object per row (whole columns to Python lists first, one C pass each)."""
        m, alpha = self.method, self.alpha
        flags = self.is_outlier.tolist()
        if self.bh_selected is None:
            return [
                {"method": m, "score": s, "p_value": p, "is_outlier": f, "alpha": alpha}
                for s, p, f in zip(self.score.tolist(), self.p_value.tolist(), flags, strict=True)
            ]
        fdr = self.fdr
        return [
            {
                "method": m,
                "score": s,
                "p_value": p,
                "is_outlier": f,
                "alpha": alpha,
                "fdr": fdr,
                "bh_selected": b,
            }
            for s, p, f, b in zip(
                self.score.tolist(), self.p_value.tolist(), flags, self.bh_selected.tolist(), strict=True
            )
        ]


@dataclass(frozen=True)
class OutlierReport:
    """The outlier verdicts of a request: the chosen method's, and every method's when asked."""

    rows_count: int
    chosen: Verdicts | None = None  # None: the model has no calibration
    every: tuple[Verdicts, ...] | None = None  # all methods, sorted by name, when asked for

    def rows(self) -> list[dict[str, Any]]:
        """Per row, {"outlier": {...}} (and {"outliers": [...]} when every method was asked for)."""
        if self.chosen is None:
            return [{} for _ in range(self.rows_count)]
        chosen = self.chosen.rows()
        if self.every is None:
            return [{"outlier": block} for block in chosen]
        columns = [v.rows() if v.method != self.chosen.method else chosen for v in self.every]
        return [
            {"outlier": chosen[i], "outliers": [col[i] for col in columns]} for i in range(self.rows_count)
        ]


async def outlier_results(
    engine: Engine,
    manifest: Manifest,
    x: np.ndarray,
    labels: np.ndarray | None,
    ll: Likelihood,
    samples: int,
    alpha: float,
    method: str | None,
    all_methods: bool,
    fdr: float | None = None,
    seed: int = 0,
    context: np.ndarray | None = None,
) -> OutlierReport:
    """The chosen method's verdicts on each row (and every method's when `all_methods`).

    A row's score and p-value depend only on that row; with `fdr`, each verdict also
    carries the batch's Benjamini-Hochberg selection for that method.
    """
    cal = manifest.calibration
    if cal is None:
        return OutlierReport(len(x))
    chosen = cal.default_method if method is None else method  # "" is a mistake, not "default"
    if chosen not in cal.scores or chosen not in METHODS:
        known = ", ".join(sorted(m for m in cal.scores if m in METHODS))
        raise InvalidInputError.field(["outlier_method"], f"unknown method (this model has: {known})")
    given = labels is not None and engine.conditional
    table, stats = _reference(cal, given)
    if chosen not in table:
        raise InvalidInputError.field(
            ["outlier_method"], f"{chosen} scores the label posterior: send the inputs without labels"
        )
    if samples != cal.samples or (engine.sampled_estimator and seed != cal.seed):
        # Scored with another estimator size or other noise than the calibration split: a
        # sampled estimator's noise is shared by every row, so other noise shifts every
        # score alike and the ranks against the calibration scores are no longer
        # exchangeable. Score again the calibrated way.
        ll = await engine.log_likelihood(x, labels, cal.samples, seed=cal.seed, context=context)
    evidence = Evidence.of(ll, x)
    spec = manifest.dataset
    methods = sorted(m for m in table if m in METHODS) if all_methods else [chosen]
    verdicts: dict[str, Verdicts] = {}
    for m in methods:
        s = score(m, evidence, spec, stats.get(m, {}), cal.background)
        p = conformal_p_values(np.asarray(table[m]), s)
        bh = None if fdr is None else benjamini_hochberg(p, fdr)
        verdicts[m] = Verdicts(m, s, p, alpha, fdr, bh)
    every = tuple(verdicts[m] for m in methods) if all_methods else None
    return OutlierReport(len(x), verdicts[chosen], every)
