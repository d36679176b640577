"""Scale-out on loopback: two genserve processes behind a real nginx configured from the
compose `scale` template; one replica is stopped gracefully and restarted under load."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy.procs import Nginx, Server, metric, models_env

pytestmark = pytest.mark.slow

CLIENTS = 4


def nginx_binary() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.skip("nginx is not installed (Debian package `nginx`; `make test` installs it)")


class Load:
    """Steady client load through the balancer; every outcome is kept."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(CLIENTS)]

    def _client(self, index: int) -> None:
        bodies = [
            ("/sample", {"model": "pixelcnn-digits", "n": 2, "labels": 1}),
            ("/log-likelihood", {"model": "flow-digits", "inputs": [[[index % 17] * 8] * 8] * 4}),
        ]
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = 0
            while not self.stop.is_set():
                path, body = bodies[i % len(bodies)]
                i += 1
                try:
                    r = client.post(path, json=body)
                    outcome = None if r.status_code == 200 else f"{path}: {r.status_code} {r.text[:200]}"
                except httpx.HTTPError as exc:
                    outcome = f"{path}: {type(exc).__name__}: {exc}"
                with self.lock:
                    if outcome is None:
                        self.ok += 1
                    else:
                        self.failures.append(outcome)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def wait_for(self, more: int, timeout: float = 20.0) -> None:
        target = self.ok + more
        deadline = time.monotonic() + timeout
        while self.ok < target:
            assert time.monotonic() < deadline, f"load stalled at {self.ok}: {self.failures[:3]}"
            time.sleep(0.05)


@pytest.fixture
def cluster(tiny_store: Path, tmp_path: Path) -> Iterator[tuple[Server, Server, Nginx]]:
    binary = nginx_binary()
    env = {**models_env("pixelcnn-digits", "flow-digits"), "GENSERVE_GRACE_PERIOD_S": "20"}
    a = Server(tiny_store, tmp_path / "a.log", env=env).start()
    b = Server(tiny_store, tmp_path / "b.log", env=env).start()
    lb = Nginx(tmp_path / "nginx", [a.port, b.port])
    try:
        a.wait_until("/health/ready", 200)
        b.wait_until("/health/ready", 200)
        lb.start(binary)
        deadline = time.monotonic() + 10
        while True:
            try:
                if httpx.get(f"{lb.url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, lb.error_log()
            time.sleep(0.05)
        yield a, b, lb
    finally:
        lb.stop()
        for s in (a, b):
            if s.proc is not None and s.proc.poll() is None:
                s.terminate()
                s.wait(timeout=30)
            s.kill()


def served(url: str) -> float:
    return metric(url, "genserve_requests_total", status="200", endpoint="/sample") + metric(
        url, "genserve_requests_total", status="200", endpoint="/log-likelihood"
    )


def test_rolling_restart_behind_nginx_loses_no_request(
    cluster: tuple[Server, Server, Nginx], tmp_path: Path
) -> None:
    a, b, lb = cluster
    with Load(lb.url) as load:
        load.wait_for(40)
        a_before = served(a.url)
        assert a_before > 0, "replica A got no traffic before its restart"

        # Graceful stop of A under load: it drains, nginx retries its refusals on B.
        a.terminate()
        assert a.wait(timeout=30) == 0, a.log()
        load.wait_for(20)  # B alone carries the load

        # Restart A on the same port: nginx brings it back into rotation by itself.
        a.proc = None
        a.start()
        a.wait_until("/health/ready", 200)
        deadline = time.monotonic() + 20
        while served(a.url) < 10:
            assert time.monotonic() < deadline, "the restarted replica got no traffic back"
            time.sleep(0.1)
        load.wait_for(20)

    assert load.failures == [], load.failures[:5]
    assert load.ok > 80
    assert served(b.url) > 0
    # The drain happened under load: A refused or finished requests while going away.
    assert "SIGTERM: draining" in a.log()
    # nginx saw A go away (a refusal or a closed port) and moved on without the client noticing.
    assert "upstream" in lb.error_log()
