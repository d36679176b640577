"""The base of every schema in the store contract."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """No extra fields, immutable: a manifest that drifts from the schema fails loudly."""

    model_config = ConfigDict(extra="forbid", frozen=True)
