"""The value ranges of request options, declared once for every front's boundary models."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

Seed = Annotated[int, Field(ge=0, le=2**63 - 1)]
Temperature = Annotated[float, Field(gt=0.0, le=10.0)]
Alpha = Annotated[float, Field(gt=0.0, lt=1.0)]
Fdr = Annotated[float, Field(gt=0.0, lt=1.0)]
AtLeastOne = Annotated[int, Field(ge=1)]  # n, importance samples, particles, versions
Timeout = Annotated[float, Field(gt=0.0)]
Steps = Annotated[int, Field(ge=1, le=1000)]  # diffusion: denoiser steps
SamplerName = Literal["ddim", "ancestral"]
Guidance = Annotated[float, Field(ge=0.0, le=20.0)]  # classifier-free guidance weight w
Strength = Annotated[float, Field(gt=0.0, le=1.0)]  # noise-then-denoise: the time x is noised to
