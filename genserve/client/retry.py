"""When to try a request again: 503s (the server says it cannot take it now) and failed
connections (the request never reached a server), within the call's deadline."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import httpx

from .protocol import Prepared, retry_after


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` tries in all; each wait is the server's `Retry-After`, or `backoff`
    doubling per attempt when it sent none, never more than `max_wait` seconds."""

    attempts: int = 5
    backoff: float = 0.5
    max_wait: float = 30.0

    def wait(self, attempt: int, hint: float | None) -> float:
        """Seconds to wait before try `attempt + 1` (attempt counts from 0)."""
        base = hint if hint is not None else self.backoff * 2**attempt
        return min(max(base, 0.0), self.max_wait)


@dataclass
class Attempts:
    """The retry loop's state for one call: the deadline over every try, the next wait."""

    policy: RetryPolicy
    timeout: float | None  # seconds for the whole call, retries included; None: the server's
    started: float = 0.0
    attempt: int = 0

    def __post_init__(self) -> None:
        self.started = time.monotonic()

    def remaining(self) -> float | None:
        """Seconds left of the call's deadline (None: no client deadline)."""
        return None if self.timeout is None else self.timeout - (time.monotonic() - self.started)

    def stamp(self, prepared: Prepared) -> Prepared:
        """The request with what is left of the deadline as the server's `timeout`."""
        left = self.remaining()
        if left is None or prepared.method == "GET":
            return prepared
        left = max(left, 0.001)
        if prepared.json is not None:
            return replace(prepared, json={**prepared.json, "timeout": left})
        return replace(prepared, params={**prepared.params, "timeout": repr(left)})

    def next_wait(self, response: httpx.Response | None) -> float | None:
        """Seconds to wait before trying again, or None to stop: the answer is final (not a
        503), the tries are used up, or the wait would pass the deadline."""
        if response is not None and response.status_code != 503:
            return None
        if self.attempt + 1 >= self.policy.attempts:
            return None
        wait = self.policy.wait(self.attempt, None if response is None else retry_after(response))
        left = self.remaining()
        if left is not None and wait >= left:
            return None
        self.attempt += 1
        return wait
