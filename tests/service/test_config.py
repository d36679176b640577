"""Settings: a bad GENSERVE_* value is refused at start-up, named by its variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import ConfigError, load_settings


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("GENSERVE_PORT", "abc", "valid integer"),
        ("GENSERVE_BACKEND", "tensorrt", "'onnxruntime' or 'torchscript'"),
        ("GENSERVE_THREADS", "-1", "greater than or equal to 1"),
        ("GENSERVE_LOG_LEVEL", "bogus", "'info'"),
        # an infinite or absurd queue delay wedged the batcher: every request timed out
        ("GENSERVE_MAX_DELAY_MS", "inf", "finite number"),
        ("GENSERVE_MAX_DELAY_MS", "1e12", "less than or equal to 10000"),
        ("GENSERVE_GRACE_PERIOD_S", "nan", "finite number"),
        ("GENSERVE_MODEL_STORE", "", "must name the store's folder"),
        ("GENSERVE_MODELS", '["vae-digits", "vae-digits"]', "more than once"),
        ("GENSERVE_MODELS", '["vae-digits@2", "vae-digits@2"]', "more than once"),
        ("GENSERVE_MODELS", '["vae-digits@0"]', "not a model name or name@version"),
        ("GENSERVE_MODELS", '["vae-digits@latest"]', "not a model name or name@version"),
        ("GENSERVE_MODELS", '["../vae-digits"]', "not a model name or name@version"),
        ("GENSERVE_MODELS", "vae-digits,,flow-digits", "not a model name or name@version"),
        ("GENSERVE_MODELS", "[]", "lists no model"),
        ("GENSERVE_MODELS", '["vae-digits"', "not valid JSON"),
    ],
)
def test_a_bad_variable_is_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith(f"invalid setting: {variable}: "), caught.value
    assert says in str(caught.value)


def test_cross_field_and_path_checks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    a_file = tmp_path / "store"
    a_file.write_text("not a folder")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        load_settings(model_store=a_file)
    with pytest.raises(ConfigError, match="shorter than request_timeout_s"):
        load_settings(max_delay_ms=5000, request_timeout_s=2)
    monkeypatch.setenv("GENSERVE_LOG_LEVEL", "DEBUG")
    assert load_settings(model_store=tmp_path / "new").log_level == "debug"


def test_models_entries_name_a_version_or_the_latest(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    expected = [
        ("vae-digits", None, "vae-digits"),
        ("vae-digits", 3, "vae-digits@3"),
        ("flow-digits", 12, "flow-digits@12"),
    ]
    # a comma-separated list, or a JSON list
    for value in (
        "vae-digits, vae-digits@3,flow-digits@12",
        '["vae-digits", "vae-digits@3", "flow-digits@12"]',
    ):
        monkeypatch.setenv("GENSERVE_MODELS", value)
        entries = load_settings(model_store=tmp_path).model_entries
        assert entries is not None
        assert [(e.name, e.version, e.label) for e in entries] == expected
    for unset in ("", "  "):
        monkeypatch.setenv("GENSERVE_MODELS", unset)
        assert load_settings(model_store=tmp_path).model_entries is None
    monkeypatch.delenv("GENSERVE_MODELS")
    assert load_settings(model_store=tmp_path).model_entries is None


def test_every_setting_is_in_the_operators_table() -> None:
    """docs/deploy.md's settings table lists each variable once (a new setting needs a row)."""
    from service.config import Settings

    doc = (Path(__file__).parents[2] / "docs" / "deploy.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| `GENSERVE_")]
    documented = [row.split("`")[1] for row in rows]
    assert sorted(documented) == sorted(f"GENSERVE_{name.upper()}" for name in Settings.model_fields)


def test_an_unknown_genserve_variable_is_a_typo_not_ignored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GENSERVE_MAX_SAMPLE", "5")
    with pytest.raises(
        ConfigError, match=r"unknown setting: GENSERVE_MAX_SAMPLE \(did you mean GENSERVE_MAX_SAMPLES\?\)"
    ):
        load_settings(model_store=tmp_path)
    monkeypatch.delenv("GENSERVE_MAX_SAMPLE")
    monkeypatch.setenv("GENSERVE_UPSTREAMS", "/etc/nginx/x.conf")  # the compose load balancer's
    assert load_settings(model_store=tmp_path).max_samples == 1024
