"""A real server on the tiny store for the client and the online commands."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.servers import uvicorn_server

TOKEN = "client-test-token"


@pytest.fixture(scope="session")
def server(tiny_store: Path) -> Iterator[str]:
    """uvicorn on the tiny store, with a token, one waiting call per model, 50 rows at most."""
    env = {"GENSERVE_API_TOKEN": TOKEN, "GENSERVE_MAX_QUEUE": "1", "GENSERVE_MAX_ROWS": "50"}
    with uvicorn_server(tiny_store, **env) as url:
        yield url
