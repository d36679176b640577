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
