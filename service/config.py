"""Service settings, from the environment (prefix GENSERVE_) or constructor arguments."""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .store import NAME_PATTERN, VERSION_PATTERN


class ModelEntry(NamedTuple):
    """One entry of `models`: a model name and the version to load (None: the latest)."""

    name: str
    version: int | None

    @property
    def label(self) -> str:
        """How the entry was written: `name` or `name@version`."""
        return self.name if self.version is None else f"{self.name}@{self.version}"


def parse_model_entry(text: str) -> ModelEntry:
    """`name` (the latest version) or `name@version` (that version); ValueError otherwise."""
    name, at, version = text.partition("@")
    if not NAME_PATTERN.fullmatch(name) or ".." in name or (at and not VERSION_PATTERN.fullmatch(version)):
        raise ValueError(
            f"entry {text[:80]!r} is not a model name or name@version (e.g. vae-digits or vae-digits@3)"
        )
    return ModelEntry(name, int(version) if at else None)


class ConfigError(ValueError):
    """A setting the service refuses, named by its environment variable."""


class Settings(BaseSettings):
    """Everything an operator can tune. `GENSERVE_<NAME>` sets each field."""

    model_config = SettingsConfigDict(
        env_prefix="GENSERVE_", extra="forbid", frozen=True, allow_inf_nan=False
    )

    model_store: Path = Field(default=Path("model_store"), description="Root of the model store.")
    host: str = Field(default="127.0.0.1", description="Interface to bind.")
    port: int = Field(default=8000, ge=1, le=65535)
    grpc_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Also serve the Open Inference Protocol over gRPC on this port (on `host`); unset: off.",
    )
    backend: Literal["onnxruntime", "torchscript"] = "onnxruntime"
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: GPU when usable, else CPU. cuda without a GPU fails at start-up."
    )
    # NoDecode: the variable is a comma-separated list (a JSON list works too), not JSON only.
    models: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description="Models to load, comma-separated: `name` (its latest version) or `name@version` "
        "(that version; list several to serve them side by side). Default: the latest version of "
        "every model.",
    )
    model_control: Literal["none", "poll", "explicit"] = Field(
        default="none",
        description='Live model management (docs/deploy.md, "Model updates"): none (the models '
        "loaded at start-up serve until a restart), poll (load each newly published version of the "
        "models that follow their latest), explicit (the OIP repository routes load and unload "
        "models; needs a token).",
    )
    poll_interval_s: float = Field(
        default=5.0, gt=0.0, le=3600.0, description="With model_control=poll: how often the store is read."
    )
    threads: int | None = Field(default=None, ge=1, description="Runtime intra-op threads (default: cores).")
    lanes: int | None = Field(
        default=None,
        ge=1,
        description="Parts of a batch run side by side, on threads/lanes threads each "
        "(default: the threads; ONNX Runtime on the CPU only, 1 otherwise).",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"

    # Request limits: bad or huge input gets a 4xx, never an out-of-memory server.
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_samples: int = Field(default=1024, ge=1, description="Largest n for /sample (images).")
    max_vector_samples: int = Field(
        default=100_000,
        ge=1,
        description="Largest n for /sample on vector models (a draw is a few numbers: 10,000 "
        "posterior draws for one observation is a usual request).",
    )
    max_rows: int = Field(default=20_000, ge=1, description="Most input rows per request.")
    max_output_values: int = Field(
        default=20_000_000, ge=1, description="Most numbers one response may carry (rows × values)."
    )
    max_importance_samples: int = Field(default=4096, ge=1)
    max_denoiser_passes: int = Field(
        default=64_000,
        ge=1,
        description="Most network passes one diffusion request may ask for: rows × steps, "
        "twice that with guidance (64 samples at 1,000 ancestral steps).",
    )
    pixelcnn_max_samples: int = Field(
        default=256, ge=1, description="Largest n for PixelCNN sampling (one graph call per pixel)."
    )

    # Batching, queueing and time limits (per model).
    max_batch: int = Field(default=4096, ge=1, description="Most rows merged into one runtime call.")
    max_delay_ms: float = Field(
        default=0.0,
        ge=0.0,
        le=10_000.0,
        description="How long a partial batch may wait for company (0: never wait).",
    )
    max_queue: int = Field(default=256, ge=1, description="Waiting calls per model before 503 + Retry-After.")
    request_timeout_s: float = Field(default=120.0, gt=0.0, description="Deadline per request (504 after).")

    # Lifecycle (docs/deploy.md): keep the orchestrator's kill timeout above the grace period.
    grace_period_s: float = Field(
        default=30.0,
        ge=0.0,
        description="After SIGTERM, how long requests in progress may run before they are cancelled.",
    )
    allow_partial: bool = Field(
        default=False,
        description="Ready when at least one model loaded even if others failed verification "
        "(default: any failure leaves the server live but not ready).",
    )

    # Access control (docs/deploy.md, "Access control").
    api_token: SecretStr | None = Field(
        default=None,
        description="Bearer token every route but the health probes requires (unset: no token).",
    )
    api_token_file: Path | None = Field(
        default=None,
        description="A file holding the token (e.g. a mounted secret); surrounding whitespace is ignored.",
    )
    metrics_public: bool = Field(
        default=True,
        description="With a token: whether /metrics stays open to scrapers (false: it needs the token too).",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("model_store")
    @classmethod
    def _a_folder(cls, value: Path) -> Path:
        # An empty GENSERVE_MODEL_STORE would be ".", and `serve` would build the zoo there.
        if str(value).strip() in ("", "."):
            raise ValueError("must name the store's folder")
        if value.exists() and not value.is_dir():
            raise ValueError(f"{value} is a file, not a folder")
        return value

    @field_validator("models", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"starts like a JSON list but is not valid JSON ({exc.msg})") from None
        return [part.strip() for part in text.split(",")] if text else None

    @field_validator("models")
    @classmethod
    def _entries(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("lists no model (leave it unset to load every model)")
        entries = [parse_model_entry(v) for v in value]
        if len(set(entries)) != len(entries):
            raise ValueError("lists a model more than once")
        return value

    def sample_cap(self, family: str, kind: str = "images") -> int:
        """Largest `n` for /sample (and rows of a PixelCNN completion): the PixelCNN, one
        graph call per pixel, has its own lower cap; vectors a higher one."""
        if kind == "vectors":
            return self.max_vector_samples
        if family == "pixelcnn":
            return min(self.max_samples, self.pixelcnn_max_samples)
        return self.max_samples

    @property
    def token(self) -> str | None:
        """The bearer token clients must send, from api_token or api_token_file (None: no auth)."""
        if self.api_token is not None:
            return self.api_token.get_secret_value()
        if self.api_token_file is not None:
            return self.api_token_file.read_text().strip()
        return None

    @property
    def model_entries(self) -> list[ModelEntry] | None:
        """`models` parsed: which versions of which models to load (None: every model's latest)."""
        return None if self.models is None else [parse_model_entry(v) for v in self.models]

    @model_validator(mode="after")
    def _delay_within_deadline(self) -> Settings:
        # A batch that may wait longer than any request lives would time every request out.
        if self.max_delay_ms / 1000.0 >= self.request_timeout_s:
            raise ValueError("max_delay_ms must be shorter than request_timeout_s")
        return self

    @model_validator(mode="after")
    def _one_usable_token(self) -> Settings:
        if self.api_token is not None and self.api_token_file is not None:
            raise ValueError("set api_token or api_token_file, not both")
        if self.api_token_file is not None:
            try:
                text = self.api_token_file.read_text().strip()
            except OSError as exc:
                raise ValueError(
                    f"api_token_file: cannot read {self.api_token_file} ({exc.strerror})"
                ) from None
            if not text:
                raise ValueError(f"api_token_file: {self.api_token_file} is empty")
        if self.api_token is not None and not self.api_token.get_secret_value().strip():
            raise ValueError("api_token is empty (unset it for no token)")
        return self

    @model_validator(mode="after")
    def _explicit_needs_token(self) -> Settings:
        # Whoever may load and unload models controls the server: never without a token.
        if self.model_control == "explicit" and self.api_token is None and self.api_token_file is None:
            raise ValueError(
                "model_control=explicit needs an access token: set GENSERVE_API_TOKEN or "
                "GENSERVE_API_TOKEN_FILE (the management routes always require it)"
            )
        return self


# GENSERVE_* variables that configure something else: the compose file's image build and
# its load balancer. Any other unknown GENSERVE_* variable is a typo and is refused.
NOT_SETTINGS = frozenset({"GENSERVE_BUILD_STORE", "GENSERVE_LB_PORT", "GENSERVE_UPSTREAMS"})


SETTING_VARIABLES = [f"GENSERVE_{name.upper()}" for name in Settings.model_fields]


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """GENSERVE_* variables that name no setting (pydantic-settings ignores them silently)."""
    known = {*SETTING_VARIABLES, *NOT_SETTINGS}
    return sorted(k for k in environ if k.upper().startswith("GENSERVE_") and k.upper() not in known)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and `overrides`, or a ConfigError naming every bad
    one by its environment variable (one line, for the CLI and the start-up log)."""
    unknown = unknown_variables(os.environ)
    if unknown:
        hints = []
        for name in unknown[:5]:
            close = difflib.get_close_matches(name.upper(), SETTING_VARIABLES, n=1)
            hints.append(f"{name}" + (f" (did you mean {close[0]}?)" if close else ""))
        raise ConfigError("unknown setting: " + "; ".join(hints) + " (docs/deploy.md#settings lists them)")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            field = ".".join(map(str, e["loc"][:1]))
            where = f"GENSERVE_{field.upper()}" if field else "settings"
            problems.append(f"{where}: {e['msg']}")
        raise ConfigError("invalid setting: " + "; ".join(problems)) from None
