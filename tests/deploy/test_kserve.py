"""The KServe ServingRuntime and InferenceService (deploy/kserve), checked offline against
KServe's own resource schemas (tests/deploy/schemas) and against what genserve needs."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config import SETTING_VARIABLES
from tests.deploy.procs import REPO

jsonschema = pytest.importorskip("jsonschema")
SCHEMAS = Path(__file__).with_name("schemas")
KSERVE = REPO / "deploy" / "kserve"


def strict(schema: Any) -> Any:
    """The schema with unknown fields refused wherever an object declares its properties
    (the CRDs never say so; the API server prunes or, with strict validation, refuses)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def validator(name: str) -> Any:
    with gzip.open(SCHEMAS / f"kserve-{name}.schema.json.gz", "rt") as fh:
        schema = strict(json.load(fh))
    # metadata is a plain object in the CRD (the API server checks it): keep it open.
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((KSERVE / name).read_text())
    return doc


def errors(v: Any, doc: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(doc)]


def test_the_runtime_and_the_service_validate_against_kserves_schemas() -> None:
    runtime, service = load("servingruntime.yaml"), load("inferenceservice.yaml")
    assert (runtime["apiVersion"], runtime["kind"]) == ("serving.kserve.io/v1alpha1", "ServingRuntime")
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert errors(validator("servingruntime.v1alpha1"), runtime) == []
    assert errors(validator("inferenceservice.v1beta1"), service) == []


def test_the_strict_schema_catches_a_typo() -> None:
    runtime = load("servingruntime.yaml")
    broken = copy.deepcopy(runtime)
    broken["spec"]["containers"][0]["readinesProbe"] = broken["spec"]["containers"][0].pop("readinessProbe")
    assert any("readinesProbe" in e for e in errors(validator("servingruntime.v1alpha1"), broken))
    broken = copy.deepcopy(runtime)
    broken["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    assert errors(validator("servingruntime.v1alpha1"), broken)


def test_the_service_selects_the_runtime_over_protocol_v2_with_both_ports_and_v2_probes() -> None:
    runtime, service = load("servingruntime.yaml"), load("inferenceservice.yaml")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert {"v2", "grpc-v2"} <= set(runtime["spec"]["protocolVersions"])
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"  # the container KServe merges the predictor into
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert set(env) <= set(SETTING_VARIABLES), set(env) - set(SETTING_VARIABLES)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http1": int(env["GENSERVE_PORT"]), "h2c": int(env["GENSERVE_GRPC_PORT"])}
    assert env["GENSERVE_HOST"] == "0.0.0.0"
    for probe, path in (("livenessProbe", "/v2/health/live"), ("readinessProbe", "/v2/health/ready")):
        assert container[probe]["httpGet"] == {"path": path, "port": ports["http1"]}
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
