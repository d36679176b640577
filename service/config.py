"""Service settings, from the environment (prefix GENSERVE_) or constructor arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything an operator can tune. `GENSERVE_<NAME>` sets each field."""

    model_config = SettingsConfigDict(env_prefix="GENSERVE_", extra="forbid", frozen=True)

    model_store: Path = Field(default=Path("model_store"), description="Root of the model store.")
    host: str = Field(default="127.0.0.1", description="Interface to bind.")
    port: int = Field(default=8000, ge=1, le=65535)
    backend: Literal["onnxruntime", "torchscript"] = "onnxruntime"
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: GPU when usable, else CPU. cuda without a GPU fails at start-up."
    )
    models: list[str] | None = Field(default=None, description="Models to load (default: all in the store).")
    threads: int | None = Field(default=None, ge=1, description="Runtime intra-op threads (default: cores).")
    lanes: int | None = Field(
        default=None,
        ge=1,
        description="Parts of a batch run side by side, on threads/lanes threads each "
        "(default: the threads; ONNX Runtime on the CPU only, 1 otherwise).",
    )
    log_level: str = "info"

    # Request limits: bad or huge input gets a 4xx, never an out-of-memory server.
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_samples: int = Field(default=1024, ge=1, description="Largest n for /sample.")
    max_rows: int = Field(default=20_000, ge=1, description="Most input rows per request.")
    max_output_values: int = Field(
        default=20_000_000, ge=1, description="Most numbers one response may carry (rows × values)."
    )
    max_importance_samples: int = Field(default=4096, ge=1)
    pixelcnn_max_samples: int = Field(
        default=256, ge=1, description="Largest n for PixelCNN sampling (one graph call per pixel)."
    )

    # Batching, queueing and time limits (per model).
    max_batch: int = Field(default=4096, ge=1, description="Most rows merged into one runtime call.")
    max_delay_ms: float = Field(
        default=0.0, ge=0.0, description="How long a partial batch may wait for company (0: never wait)."
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
