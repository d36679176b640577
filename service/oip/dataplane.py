"""The Open Inference Protocol's view of genserve, for every transport.

Every operation a loaded model admits is one OIP model, `<model>.<operation>`
(`flow-digits.log_likelihood`, `gan-digits.sample`), versioned by the store version. This
module fixes each one's input and output tensors, turns named input tensors and request
parameters into the core's queries, and the core's results into named output tensors.
The REST and gRPC fronts only move tensors between their wire formats and these calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import __version__
from ..core import Call, Operations, ReconstructQuery, SampleQuery, ScoreQuery
from ..engine import SamplerOptions
from ..errors import InvalidInputError, ModelNotFoundError
from ..outliers import METHODS
from ..registry import LoadedModel
from .parameters import ReconstructParameters, SampleParameters, ScoreParameters, parse_parameters
from .tensors import DTYPES, InputTensor, datatype_of

# OIP operation name -> the capability GET /models lists.
OPERATIONS = {"sample": "sample", "log_likelihood": "log-likelihood", "reconstruct": "reconstruct"}
SERVER_NAME = "genserve"
EXTENSIONS = ["binary_tensor_data"]


@dataclass(frozen=True)
class TensorMeta:
    """A tensor's metadata: -1 for the batch axis."""

    name: str
    datatype: str
    shape: list[int]
    optional: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape}


@dataclass(frozen=True)
class RequestedOutput:
    """An output the client asked for, with its parameters (e.g. binary_data)."""

    name: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferRequest:
    """A decoded inference request, whatever its transport."""

    inputs: dict[str, InputTensor]
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None
    id: str | None = None


@dataclass
class InferResponse:
    """Named output arrays in the order they are sent, and the response's facts."""

    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]
    parameters: dict[str, Any]
    id: str | None = None
    requested: dict[str, RequestedOutput] = field(default_factory=dict)  # by name, when listed


def split_name(oip_name: str) -> tuple[str, str]:
    """`<model>.<operation>` -> (model, operation); 404 for any other name."""
    model, dot, operation = oip_name.rpartition(".")
    if not dot or operation not in OPERATIONS:
        raise ModelNotFoundError(
            f"no model {oip_name!r}: OIP models are named <model>.<operation> with operation one of "
            f"{', '.join(OPERATIONS)}"
        )
    return model, operation


def _version(version: str | None) -> int | None:
    if version is None or version == "":
        return None
    if not version.isascii() or not version.isdigit() or len(version) > 9:
        raise ModelNotFoundError(f"no version {version[:32]!r}: versions are store version numbers")
    return int(version)


def _dt(dtype: np.dtype[Any]) -> str:
    return datatype_of(np.empty(0, dtype))


def _batch(shape: tuple[int, ...]) -> list[int]:
    return [-1, *shape]


class DataPlane:
    """Server and model metadata, readiness and inference, over the core's operations."""

    def __init__(self, operations: Operations, model_repository: bool = False) -> None:
        self.operations = operations
        # The model-repository extension is offered in explicit model control alone.
        self.extensions = [*EXTENSIONS, *(["model_repository"] if model_repository else [])]
        # A loaded model version's tensors never change: computed once per (version, operation).
        self._signatures: dict[tuple[str, int, str], tuple[list[TensorMeta], list[TensorMeta]]] = {}

    # --- discovery ---------------------------------------------------------------------
    def server_metadata(self) -> dict[str, Any]:
        """GET /v2: name, version, extensions."""
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(self.extensions)}

    def resolve(self, oip_name: str, version: str | None) -> tuple[LoadedModel, str]:
        """The loaded model version and the operation an OIP model name stands for."""
        name, operation = split_name(oip_name)
        try:
            model = self.operations.model(name, _version(version))
        except ModelNotFoundError:
            known = ", ".join(n for n, _ in self.model_names())
            what = "version" if version else "model"
            raise ModelNotFoundError(
                f"no {what} {oip_name!r}{'/' + version if version else ''} loaded (loaded: {known})"
            ) from None
        if OPERATIONS[operation] not in model.capabilities:
            raise ModelNotFoundError(
                f"no model {oip_name!r}: {name} is a {model.manifest.family} model and does not "
                f"offer {operation} (it offers {', '.join(self.operation_names(model))})"
            )
        return model, operation

    def operation_names(self, model: LoadedModel) -> list[str]:
        """The OIP models one loaded model gives."""
        caps = model.capabilities
        return [f"{model.name}.{op}" for op, cap in OPERATIONS.items() if cap in caps]

    def model_names(self) -> list[tuple[str, list[str]]]:
        """Every OIP model and its loaded versions (highest first)."""
        by_name: dict[str, list[str]] = {}
        for model in self.operations.registry.loaded.values():
            for oip in self.operation_names(model):
                by_name.setdefault(oip, []).append(str(model.version.version))
        return [(n, sorted(v, key=int, reverse=True)) for n, v in sorted(by_name.items())]

    def versions(self, model: LoadedModel) -> list[str]:
        """The loaded versions of a model, highest first."""
        found = {m.version.version for m in self.operations.registry.loaded.values() if m.name == model.name}
        return [str(v) for v in sorted(found, reverse=True)]

    def model_metadata(self, oip_name: str, version: str | None) -> dict[str, Any]:
        """GET /v2/models/{m}[/versions/{v}]: name, versions, platform, inputs, outputs."""
        model, operation = self.resolve(oip_name, version)
        inputs, outputs = self.signature(model, operation)
        names = model.manifest.dataset.label_names
        properties = {
            "family": model.manifest.family,
            "operation": operation,
            "data_kind": model.kind.name,
            "version": str(model.version.version),
            "optional_inputs": ",".join(t.name for t in inputs if t.optional),
        }
        if names:
            properties["labels"] = ",".join(names)
        return {
            "name": oip_name,
            "versions": self.versions(model),
            "platform": f"genserve_{model.manifest.family}",
            "inputs": [t.to_json() for t in inputs],
            "outputs": [t.to_json() for t in outputs],
            "properties": properties,
        }

    def signature(self, model: LoadedModel, operation: str) -> tuple[list[TensorMeta], list[TensorMeta]]:
        """The fixed input and output tensors of one OIP model."""
        key = (model.name, model.version.version, operation)  # a store version never changes
        found = self._signatures.get(key)
        if found is None:
            found = self._signatures[key] = self._signature(model, operation)
        return found

    def _signature(self, model: LoadedModel, operation: str) -> tuple[list[TensorMeta], list[TensorMeta]]:
        kind, engine, manifest = model.kind, model.engine, model.manifest
        data = TensorMeta("inputs", _dt(np.dtype(kind.sample_dtype)), _batch(kind.row_shape))
        labels = [TensorMeta("labels", "INT64", [-1], optional=True)] if engine.conditional else []
        context = [TensorMeta("context", "FP32", [-1, kind.context_width])] if kind.context_width else []
        context_checks = (
            [
                TensorMeta("context_score", "FP64", [-1]),
                TensorMeta("context_p_value", "FP64", [-1]),
                TensorMeta("context_is_outlier", "BOOL", [-1]),
            ]
            if engine.checks_context
            else []
        )
        if operation == "sample":
            n = TensorMeta("n", "INT64", [1], optional=engine.conditional)
            outs = [TensorMeta("samples", data.datatype, data.shape)]
            if engine.conditional:
                outs.append(TensorMeta("labels", "INT64", [-1]))
            return [n, *labels, *context], outs + context_checks
        if operation == "log_likelihood":
            outs = [TensorMeta("log_likelihood", "FP64", [-1])]
            outs += [TensorMeta(k, "FP64", [-1]) for k in kind.row_units(np.zeros(0))]
            if engine.conditional:
                L = model.manifest.dataset.num_classes
                outs += [
                    TensorMeta("posterior", "FP64", [-1, L]),
                    TensorMeta("predicted_label", "INT64", [-1]),
                ]
            cal = manifest.calibration
            if cal is not None:
                for suffix in ["", *(f".{m}" for m in sorted(cal.scores) if m in METHODS)]:
                    outs += [
                        TensorMeta(f"outlier_score{suffix}", "FP64", [-1]),
                        TensorMeta(f"outlier_p_value{suffix}", "FP64", [-1]),
                        TensorMeta(f"is_outlier{suffix}", "BOOL", [-1]),
                        TensorMeta(f"bh_selected{suffix}", "BOOL", [-1]),
                    ]
            return [data, *labels, *context], outs + context_checks
        mask = [TensorMeta("mask", "BOOL", data.shape, optional=True)] if engine.random_reconstruction else []
        outs = [
            TensorMeta(k, _dt(dt), _batch(shape))
            for k, (dt, shape) in engine.reconstruction_outputs().items()
        ]
        if engine.conditional:  # the class used; its probability when inferred (no labels sent)
            outs += [TensorMeta("labels", "INT64", [-1]), TensorMeta("label_probability", "FP64", [-1])]
        return [data, *mask, *labels, *context], outs

    # --- inference ---------------------------------------------------------------------
    async def infer(
        self, model: LoadedModel, operation: str, request: InferRequest, call: Call
    ) -> InferResponse:
        """Run one inference request on a model version and operation from `resolve`, through
        the core, and name its outputs."""
        oip_name = f"{model.name}.{operation}"
        inputs, outputs = self.signature(model, operation)
        allowed = {t.name: t for t in inputs}
        for name in request.inputs:
            if name not in allowed:
                raise InvalidInputError.field(
                    [name], f"is not an input of {oip_name} (its inputs: {', '.join(allowed)})"
                )
        for t in inputs:
            if (
                not t.optional
                and t.name not in request.inputs
                and not (t.name == "n" and "labels" in request.inputs)
            ):
                raise InvalidInputError.field([t.name], f"is a required input of {oip_name}")
        arrays = {name: tensor.data for name, tensor in request.inputs.items()}
        labels = arrays.get("labels")
        flat_labels = None if labels is None else labels.reshape(-1)
        ops = self.operations
        produced: dict[str, np.ndarray]
        facts: dict[str, Any]
        if operation == "sample":
            sp = parse_parameters(SampleParameters, request.parameters)
            call.timeout = sp.timeout_s
            query = SampleQuery(
                n=_sample_count(arrays.get("n"), labels),
                labels=flat_labels,
                context=arrays.get("context"),
                seed=sp.seed,
                temperature=sp.temperature,
                alpha=sp.alpha,
                options=SamplerOptions(steps=sp.steps, sampler=sp.sampler, guidance=sp.guidance),
            )
            sampled = await ops.sample(model, query, call)
            produced = {"samples": sampled.samples}
            if sampled.labels is not None:
                produced["labels"] = sampled.labels
            if sampled.context_check is not None:
                check = sampled.context_check
                produced["context_score"] = check.score
                produced["context_p_value"] = check.p_value
                produced["context_is_outlier"] = check.is_outlier
            facts = {"seed": sampled.seed, "temperature": sampled.temperature, **sampled.options.used()}
        elif operation == "log_likelihood":
            lp = parse_parameters(ScoreParameters, request.parameters)
            call.timeout = lp.timeout_s
            score = ScoreQuery(
                inputs=arrays["inputs"],
                labels=flat_labels,
                context=arrays.get("context"),
                importance_samples=lp.importance_samples,
                seed=lp.seed,
                alpha=lp.alpha,
                outlier_method=lp.method,
                all_outlier_methods=lp.all_outlier_methods,
                fdr=lp.fdr,
                check_context=lp.check_context,
            )
            scored = await ops.score(model, score, call)
            produced = scored.columns()
            head = scored.header()
            facts = {k: head[k] for k in ("seed", "estimator", "importance_samples", "marginal")}
        else:
            rp = parse_parameters(ReconstructParameters, request.parameters)
            call.timeout = rp.timeout_s
            rebuild = ReconstructQuery(
                inputs=arrays["inputs"],
                labels=flat_labels,
                context=arrays.get("context"),
                mask=arrays.get("mask"),
                seed=rp.seed,
                particles=rp.particles,
                options=SamplerOptions(steps=rp.steps, strength=rp.strength),
            )
            rebuilt = await ops.reconstruct(model, rebuild, call)
            produced = rebuilt.columns()
            facts = {"description": rebuilt.reconstruction.description, **rebuilt.options.used()}
            if rebuilt.seed is not None:
                facts["seed"] = rebuilt.seed
            if rebuilt.reconstruction.particles is not None:
                facts["particles"] = rebuilt.reconstruction.particles
        declared = {t.name: t for t in outputs}
        produced = {k: _as_declared(v, declared[k]) for k, v in produced.items() if k in declared}
        requested: dict[str, RequestedOutput] = {}
        if request.outputs is not None:
            for out in request.outputs:
                if out.name not in declared:
                    raise InvalidInputError.field(
                        ["outputs", out.name], f"is not an output of {oip_name} (GET its metadata)"
                    )
                if out.name not in produced:
                    raise InvalidInputError.field(
                        ["outputs", out.name], "is not computed for this request (see docs/api.md)"
                    )
                requested[out.name] = out
            produced = {name: produced[name] for name in requested}
        return InferResponse(oip_name, str(model.version.version), produced, facts, request.id, requested)


def _as_declared(arr: np.ndarray, meta: TensorMeta) -> np.ndarray:
    dtype = DTYPES[meta.datatype]
    return arr if arr.dtype == dtype else arr.astype(dtype)


def _sample_count(n: np.ndarray | None, labels: np.ndarray | None) -> int:
    """How many samples: `n`, or one per label; both must agree."""
    count = None
    if n is not None:
        if n.size != 1 or n.dtype.kind not in "iu":
            raise InvalidInputError.field(["n"], "must be one integer (shape [1])")
        count = int(n.reshape(-1)[0])
        if count < 1:
            raise InvalidInputError.field(["n"], "must be at least 1")
    if labels is not None:
        if count is not None and labels.size not in (1, count):
            raise InvalidInputError.field(
                ["labels"], f"has {labels.size} entries for n={count} (give 1 or n)"
            )
        count = count if count is not None else max(1, labels.size)
    return count if count is not None else 1
