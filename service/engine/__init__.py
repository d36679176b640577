"""Per-family serving logic over a backend's graphs."""

from __future__ import annotations

from ..manifest import Manifest
from .base import Engine, GraphCaller, Likelihood, Reconstruction, SamplerOptions, inline_caller, noise_rng
from .diffusion import DiffusionEngine
from .flow import FlowEngine
from .gan import GANEngine
from .pixelcnn import PixelCNNEngine
from .vae import VAEEngine
from .vector_flow import VectorFlowEngine

# (data kind, family) -> engine: a family on another kind of data serves differently
# (vectors need no dequantization, and take a context).
ENGINES: dict[tuple[str, str], type[Engine]] = {
    ("images", "flow"): FlowEngine,
    ("images", "vae"): VAEEngine,
    ("images", "gan"): GANEngine,
    ("images", "pixelcnn"): PixelCNNEngine,
    ("images", "diffusion"): DiffusionEngine,
    ("vectors", "flow"): VectorFlowEngine,
}


class UnservableModelError(ValueError):
    """A manifest whose family this server has no engine for on its kind of data."""


def build_engine(manifest: Manifest, call: GraphCaller) -> Engine:
    """The engine for the manifest's family on its kind of data."""
    key = (manifest.dataset.kind, manifest.family)
    if key not in ENGINES:
        raise UnservableModelError(f"no engine serves {manifest.family} models on {key[0]}")
    return ENGINES[key](manifest, call)


__all__ = [
    "ENGINES",
    "Engine",
    "GraphCaller",
    "Likelihood",
    "Reconstruction",
    "SamplerOptions",
    "UnservableModelError",
    "build_engine",
    "inline_caller",
    "noise_rng",
]
