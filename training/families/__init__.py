"""The five families, their configs, and the default settings for a dataset."""

from __future__ import annotations

from typing import Any

from service.manifest import DatasetSpec

from .base import FamilyConfig, GenerativeModel
from .diffusion import DiffusionConfig, DiffusionModel
from .flow import FlowConfig, FlowModel
from .gan import GANConfig, GANModel
from .pixelcnn import PixelCNNConfig, PixelCNNModel
from .vae import VAEConfig, VAEModel

FAMILIES: dict[str, tuple[type[GenerativeModel], type[FamilyConfig]]] = {
    "flow": (FlowModel, FlowConfig),
    "vae": (VAEModel, VAEConfig),
    "gan": (GANModel, GANConfig),
    "pixelcnn": (PixelCNNModel, PixelCNNConfig),
    "diffusion": (DiffusionModel, DiffusionConfig),
}


def family_names() -> list[str]:
    """Names accepted by `--family`."""
    return list(FAMILIES)


class UnknownFamilyError(ValueError):
    """A family name genserve does not have."""


def check_family(family: str) -> str:
    """`family`, or an UnknownFamilyError listing the ones there are."""
    if family not in FAMILIES:
        raise UnknownFamilyError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    return family


def default_config(family: str, spec: DatasetSpec, **overrides: Any) -> FamilyConfig:
    """The default architecture for `family` on data like `spec`, with overrides applied.

    Small images (the 8×8 digits) get the settings tuned on `digits`; larger ones get
    wider, deeper models (and dilations for the PixelCNN's receptive field).
    """
    check_family(family)
    _, config_cls = FAMILIES[family]
    large = max(spec.shape[1:]) > 16
    base: dict[str, Any] = {}
    if large:
        presets: dict[str, dict[str, Any]] = {
            "flow": {"hidden": 128, "steps_per_level": 8},
            "vae": {"latent": 32, "channels": 32, "hidden": 512},
            "gan": {"latent": 64, "g_channels": 32, "d_channels": 32},
            "pixelcnn": {"channels": 64, "layers": 10, "dilations": (1, 2, 1, 4)},
            "diffusion": {"channels": 32, "channel_mult": (1, 2, 2)},
        }
        base = dict(presets[family])
    base.update(overrides)
    return config_cls(**base)


def build_model(
    family: str, spec: DatasetSpec, conditional: bool, config: FamilyConfig | dict[str, Any] | None = None
) -> GenerativeModel:
    """Construct a model of `family` for `spec` (default config unless one is given)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    model_cls, config_cls = FAMILIES[family]
    if config is None:
        config = default_config(family, spec)
    elif isinstance(config, dict):
        config = config_cls(**config)
    return model_cls(spec, conditional, config)


__all__ = [
    "FAMILIES",
    "FamilyConfig",
    "GenerativeModel",
    "build_model",
    "default_config",
    "family_names",
]
