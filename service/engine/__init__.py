"""Per-family serving logic over a backend's graphs."""

from __future__ import annotations

from ..manifest import Manifest
from .base import Engine, GraphCaller, Likelihood, Reconstruction, inline_caller, noise_rng
from .flow import FlowEngine
from .gan import GANEngine
from .pixelcnn import PixelCNNEngine
from .vae import VAEEngine

ENGINES: dict[str, type[Engine]] = {
    "flow": FlowEngine,
    "vae": VAEEngine,
    "gan": GANEngine,
    "pixelcnn": PixelCNNEngine,
}


def build_engine(manifest: Manifest, call: GraphCaller) -> Engine:
    """The engine for the manifest's family."""
    return ENGINES[manifest.family](manifest, call)


__all__ = [
    "ENGINES",
    "Engine",
    "GraphCaller",
    "Likelihood",
    "Reconstruction",
    "build_engine",
    "inline_caller",
    "noise_rng",
]
