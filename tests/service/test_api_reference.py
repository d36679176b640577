"""docs/api.md stays the whole contract: every request field and every problem type is in it."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

import service.app  # noqa: F401  (defines every error type the API raises, e.g. ClientGoneError)
from service import errors
from service.api.schemas import LogLikelihoodRequest, ReconstructRequest, SampleRequest

DOC = (Path(__file__).parents[2] / "docs" / "api.md").read_text()


def section(title: str) -> str:
    """The text of one `## title` section."""
    start = DOC.index(f"## {title}\n")
    end = DOC.find("\n## ", start + 1)
    return DOC[start : end if end > 0 else None]


@pytest.mark.parametrize(
    ("title", "request_model"),
    [
        ("POST /sample", SampleRequest),
        ("POST /log-likelihood", LogLikelihoodRequest),
        ("POST /reconstruct", ReconstructRequest),
    ],
)
def test_every_request_field_is_documented(title: str, request_model: type[BaseModel]) -> None:
    lines = section(title).splitlines()
    start = lines.index("| field | type | default | meaning |")  # the request table comes first
    table = itertools.takewhile(lambda line: line.startswith("|"), lines[start + 2 :])
    first_cells = [row.split("|")[1] for row in table]
    documented = {name for cell in first_cells for name in re.findall(r"`([a-z_]+)`", cell)}
    assert documented == set(request_model.model_fields), title


def all_error_types() -> set[str]:
    found, todo = set(), [errors.GenserveError]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        found.add(cls.type)
    return found


def test_every_problem_type_is_in_the_errors_table() -> None:
    table = set(re.findall(r"^\| \d{3} \| `([a-z-]+)` \|", section("Errors"), flags=re.M))
    # the service's own errors, plus the framework's routing errors mapped in api/errors.py
    assert all_error_types() | {"not-found", "method-not-allowed"} <= table
    assert table <= all_error_types() | {"not-found", "method-not-allowed"}
