"""The retry policy: Retry-After honoured and bounded, the deadline over every try."""

from __future__ import annotations

import httpx

from genserve.client.protocol import Prepared
from genserve.client.retry import Attempts, RetryPolicy


def _answer(status: int, retry_after: str | None = None) -> httpx.Response:
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    return httpx.Response(status, headers=headers)


def test_waits_follow_retry_after_capped_and_back_off_without_it() -> None:
    attempts = Attempts(RetryPolicy(attempts=4, backoff=0.5, max_wait=3.0), timeout=None)
    assert attempts.next_wait(_answer(503, "2")) == 2.0
    assert attempts.next_wait(_answer(503, "60")) == 3.0  # bounded by max_wait
    assert attempts.next_wait(None) == 2.0  # a failed connection: 0.5 doubled twice
    assert attempts.next_wait(_answer(503, "1")) is None  # four tries used


def test_only_503s_are_retried() -> None:
    attempts = Attempts(RetryPolicy(), timeout=None)
    for status in (200, 400, 422, 500, 504):
        assert attempts.next_wait(_answer(status)) is None


def test_no_wait_past_the_deadline_and_the_server_gets_what_is_left() -> None:
    attempts = Attempts(RetryPolicy(), timeout=1.5)
    assert attempts.next_wait(_answer(503, "2")) is None  # 2 s would pass a 1.5 s deadline
    sent = attempts.stamp(Prepared("POST", "/sample", json={"model": "m"}))
    assert sent.json is not None and 0 < sent.json["timeout"] <= 1.5
    query = attempts.stamp(Prepared("POST", "/log-likelihood", params={"model": "m"}, content=b""))
    assert 0 < float(query.params["timeout"]) <= 1.5
