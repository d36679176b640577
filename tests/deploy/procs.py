"""Real processes for the deployment tests: `genserve serve` on loopback, and nginx."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
NGINX_TEMPLATE = REPO / "deploy" / "nginx" / "templates" / "genserve.conf.template"
NGINX_UPSTREAMS = REPO / "deploy" / "nginx" / "upstreams.conf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    """One `genserve serve` process; its log goes to a file the test can read."""

    store: Path
    log_path: Path
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            "GENSERVE_MODEL_STORE": str(self.store),
            "GENSERVE_HOST": "127.0.0.1",
            "GENSERVE_PORT": str(self.port),
            # Two cores here, several servers: one runtime thread each, no oversubscription.
            "GENSERVE_THREADS": "1",
            **self.env,
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "training.cli", "serve", "--no-build"],
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until(self, path: str, status: int, timeout: float = 60.0) -> httpx.Response:
        """Poll `path` until it answers `status`; fail with the server's log otherwise."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                r = httpx.get(self.url + path, timeout=2)
                if r.status_code == status:
                    return r
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{path} did not answer {status} within {timeout}s:\n{self.log()}")

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """Clean-up only: whatever state the test left the process in."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus sample's values over series matching `labels`."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        m = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
        if not m:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def render_template(text: str, values: dict[str, str]) -> str:
    """envsubst restricted to the given names, as the nginx image does with
    NGINX_ENVSUBST_FILTER: nginx's own $variables are left alone."""
    out = text
    for name, value in values.items():
        out = out.replace("${" + name + "}", value)
    leftover = re.findall(r"\$\{GENSERVE_\w+\}", out)
    assert not leftover, f"template variables left unrendered: {leftover}"
    return out


def local_upstreams(ports: list[int]) -> str:
    """The compose upstream list with its replicas replaced by loopback ports, server
    parameters (max_fails, fail_timeout) kept as they are."""
    lines = [ln for ln in NGINX_UPSTREAMS.read_text().splitlines() if ln.strip().startswith("server ")]
    assert len(lines) >= len(ports)
    return "\n".join(
        re.sub(r"server \S+:\d+", f"server 127.0.0.1:{port}", line)
        for line, port in zip(lines, ports, strict=False)
    )


@dataclass
class Nginx:
    """nginx in the foreground with a private prefix, serving the genserve template."""

    root: Path
    upstream_ports: list[int]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, binary: str) -> Nginx:
        self.root.mkdir(parents=True, exist_ok=True)
        # Workers drop to an unprivileged user when nginx runs as root; they must be able
        # to reach the temp folders.
        self.root.chmod(0o755)
        upstreams = self.root / "upstreams.conf"
        upstreams.write_text(local_upstreams(self.upstream_ports) + "\n")
        site = self.root / "genserve.conf"
        site.write_text(
            render_template(
                NGINX_TEMPLATE.read_text(),
                {"GENSERVE_LB_PORT": f"127.0.0.1:{self.port}", "GENSERVE_UPSTREAMS": str(upstreams)},
            )
        )
        temp = {k: self.root / k for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
        main = f"""
daemon off;
worker_processes 1;
pid {self.root}/nginx.pid;
error_log {self.root}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log {self.root}/access.log;
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {site};
}}
"""
        conf = self.root / "nginx.conf"
        conf.write_text(main)
        args = [binary, "-p", str(self.root), "-e", str(self.root / "error.log"), "-c", str(conf)]
        check = subprocess.run([*args, "-t"], capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stderr
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def error_log(self) -> str:
        path = self.root / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def models_env(*names: str) -> dict[str, str]:
    """GENSERVE_MODELS for a subset of the store (faster start-up)."""
    return {"GENSERVE_MODELS": json.dumps(list(names))}
