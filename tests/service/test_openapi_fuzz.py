"""Schemathesis over the server's own OpenAPI document, against a running server process:
every documented operation (the genserve routes, OIP under /v2, the repository extension
of explicit model control) gets generated and mutated requests, and every answer must be
no 5xx, a documented status, and a body and content type that match the document.

Half the generated requests name a loaded model (a random name is only ever a 404), so
the fuzzing reaches the models' own checks. Derandomized: CI runs the same cases each time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from service.app import create_app
from service.config import Settings
from tests.service.servers import uvicorn_server

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

TOKEN = "fuzz-t0ken"
AUTH = {"authorization": f"Bearer {TOKEN}"}
MODELS = ["flow-digits", "vae-digits", "gan-digits", "pixelcnn-digits"]
OIP_MODELS = [f"{m}.{op}" for m in MODELS for op in ("sample", "log_likelihood", "reconstruct")]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    content_type_conformance,
    response_headers_conformance,
]


@pytest.fixture(scope="module")
def server(tiny_store: Path) -> Iterator[str]:
    env = {"GENSERVE_MODEL_CONTROL": "explicit", "GENSERVE_API_TOKEN": TOKEN, "GENSERVE_THREADS": "1"}
    with uvicorn_server(tiny_store, **env) as url:
        yield url


def _document() -> dict[str, Any]:
    """The OpenAPI document of a server in explicit model control (every route it can have).
    Built here rather than fetched, so the cases are parametrized at collection time."""
    settings = Settings(model_store=Path("model_store"), model_control="explicit", api_token=TOKEN)
    doc: dict[str, Any] = create_app(settings).openapi()
    return doc


DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT)


def test_the_server_serves_this_document(server: str) -> None:
    assert httpx.get(f"{server}/openapi.json", headers=AUTH).json() == DOCUMENT


def _real_model(case: Any, which: int) -> None:
    """Point the case at a loaded model (or one of its OIP models), keeping everything else."""
    path = case.operation.path
    if path.startswith("/v2/repository"):
        return  # a real name there would load or unload models under the other cases
    if case.path_parameters and "name" in case.path_parameters:
        case.path_parameters["name"] = OIP_MODELS[which % len(OIP_MODELS)]
        if "version" in case.path_parameters:
            case.path_parameters["version"] = "1"
    elif isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = MODELS[which % len(MODELS)]
    elif case.query and "model" in case.query:
        case.query["model"] = MODELS[which % len(MODELS)]


@schema.parametrize()
@schema.given(real=st.booleans(), which=st.integers(0, 11))
@settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_documented_operation_answers_as_documented(
    server: str, case: Any, real: bool, which: int
) -> None:
    if real:
        _real_model(case, which)
    case.call_and_validate(base_url=server, headers=AUTH, checks=CHECKS, timeout=60)
