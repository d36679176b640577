"""Bearer-token access control: every route but the health probes (and /metrics if kept
public) refuses a missing or wrong token with 401 and WWW-Authenticate, in the form of the
route's protocol; the settings refuse an unusable token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config import ConfigError, Settings, load_settings
from tests.service.asgi import Client

TOKEN = "s3cret-token"
GOOD = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    # An empty store: access control comes before any model, so none is needed.
    c = Client(Settings(model_store=tmp_path / "store", api_token=TOKEN, metrics_public=False))
    yield c
    c.close()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/models"),
        ("GET", "/models/flow-digits"),
        ("POST", "/sample"),
        ("POST", "/log-likelihood"),
        ("POST", "/reconstruct"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/v2"),
        ("GET", "/v2/models/flow-digits.sample"),
        ("POST", "/v2/models/flow-digits.sample/infer"),
        ("GET", "/nowhere"),
    ],
)
def test_every_route_but_the_probes_needs_the_token(client: Client, method: str, path: str) -> None:
    for headers in (
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": TOKEN},
        {"authorization": "Basic eDp5"},
    ):
        r = client.request(method, path, headers=headers, json={})
        assert r.status_code == 401, (path, headers, r.text)
        assert r.headers["www-authenticate"] == 'Bearer realm="genserve"'
        if path.startswith("/v2"):
            assert set(r.json()) == {"error"}
        else:
            assert r.headers["content-type"] == "application/problem+json" and r.json()["status"] == 401
    assert "wrong" not in client.request(method, path, headers={"authorization": "Bearer wrong"}).text
    assert client.request(method, path, headers=GOOD, json={}).status_code != 401


def test_probes_stay_open_and_metrics_are_open_by_default(client: Client, tmp_path: Path) -> None:
    for path in ("/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready"):
        assert client.get(path).status_code != 401, path
    c = Client(Settings(model_store=tmp_path / "other", api_token=TOKEN))
    try:
        assert c.get("/metrics").status_code == 200
        assert c.get("/models").status_code == 401
    finally:
        c.close()


def test_a_token_file_works_and_bad_tokens_are_refused_at_start(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text(f"  {TOKEN}\n")
    assert Settings(model_store=tmp_path, api_token_file=secret).token == TOKEN
    with pytest.raises(ValueError, match="not both"):
        Settings(model_store=tmp_path, api_token=TOKEN, api_token_file=secret)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        Settings(model_store=tmp_path, api_token_file=empty)
    with pytest.raises(ValueError, match="cannot read"):
        Settings(model_store=tmp_path, api_token_file=tmp_path / "missing")
    with pytest.raises(ConfigError, match="api_token is empty"):
        load_settings(api_token=" ")


def test_binding_beyond_loopback_without_a_token_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from service.app import create_app

    with caplog.at_level("WARNING", logger="genserve"):
        create_app(Settings(model_store=tmp_path, host="0.0.0.0"))
    assert any("without an access token" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="genserve"):
        create_app(Settings(model_store=tmp_path, host="0.0.0.0", api_token=TOKEN))
        create_app(Settings(model_store=tmp_path))
    assert not any("without an access token" in r.getMessage() for r in caplog.records)


def test_the_playground_page_loads_without_the_token_but_its_api_calls_need_it(client: Client) -> None:
    # The page holds no data; the browser asks for the token once the API answers 401.
    root = client.get("/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "playground/"
    page = client.get("/playground/")
    assert page.status_code == 200 and "genserve playground" in page.text
    assert client.get("/playground/static/playground.js").status_code == 200
    assert client.get("/playground/../models").status_code == 401
    assert client.get("/playground-not-the-page").status_code == 401
