"""Every problem type maps to its exception; answers without problem+json by status."""

from __future__ import annotations

import pytest

from genserve.client import errors


@pytest.mark.parametrize(("kind", "cls"), sorted(errors._BY_KIND.items()))
def test_each_problem_type_has_its_exception(kind: str, cls: type[errors.ProblemError]) -> None:
    body = {
        "type": errors.PROBLEM_PREFIX + kind,
        "title": "t",
        "status": 400,
        "detail": "why",
        "errors": [{"loc": ["inputs", 0], "msg": "bad"}],
    }
    exc = errors.problem_error(400, body, retry_after=2.0)
    assert type(exc) is cls
    assert exc.kind == kind and exc.detail == "why" and exc.retry_after == 2.0
    assert exc.fields == ["inputs.0"]
    assert isinstance(exc, errors.GenserveError)


def test_an_answer_without_problem_json_is_typed_by_its_status() -> None:
    # A proxy in front of the server (nginx's 413 or 504) sends HTML.
    assert type(errors.problem_error(413, None, text="<html>")) is errors.PayloadTooLargeError
    assert type(errors.problem_error(504, None)) is errors.DeadlineExceededError
    assert type(errors.problem_error(502, None)) is errors.InternalServerError
    oip = errors.problem_error(400, {"error": "unknown tensor"})  # the OIP form
    assert oip.detail == "unknown tensor" and type(oip) is errors.ProblemError
