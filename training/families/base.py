"""What every family's model offers the training, evaluation and export code."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from service.manifest import DatasetSpec

from ..data import DataError
from .augment import transform_count


class FamilyConfig(BaseModel):
    """Base of each family's architecture config (saved beside every checkpoint)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Trainable(nn.Module):
    """What the training driver (training.train.fit) needs of a model, whatever its data:
    optimisers, one optimisation step on a batch, and the data transforms it can take."""

    family: ClassVar[str]
    grad_clip: float = 100.0

    @property
    def transform_count(self) -> int:
        """How many data transforms the model can be conditioned on (0: no augmentation)."""
        return 0

    def training_loss(
        self, x: Tensor, y: Tensor | None, aug: Tensor | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """Scalar loss on a batch (under transform `aug`), and metrics."""
        raise NotImplementedError(f"{self.family} trains through its own train_step")

    def train_step(
        self,
        x: Tensor,
        y: Tensor | None,
        optimizers: list[torch.optim.Optimizer],
        step: int,
        aug: Tensor | None = None,
    ) -> dict[str, float]:
        """One optimisation step; families with several players override this."""
        (opt,) = optimizers
        opt.zero_grad(set_to_none=True)
        loss, metrics = self.training_loss(x, y) if aug is None else self.training_loss(x, y, aug)
        loss.backward()  # type: ignore[no-untyped-call]
        nn.utils.clip_grad_norm_(self.parameters(), max_norm=self.grad_clip)
        opt.step()
        return metrics

    def make_optimizers(self, lr: float, weight_decay: float) -> list[torch.optim.Optimizer]:
        """The optimisers `train_step` expects."""
        return [torch.optim.Adam(self.parameters(), lr=lr, weight_decay=weight_decay)]


class GenerativeModel(Trainable, ABC):
    """A generative model over integer-level images [B, C, H, W], optionally class-conditional.

    Subclasses set `family` and `has_likelihood` and implement the objective; likelihood
    families also implement `log_likelihood` (nats per example of the discrete data, or a
    lower bound on it, as `estimator` says).
    """

    family: ClassVar[str]
    has_likelihood: ClassVar[bool] = True
    estimator: ClassVar[str] = "exact"

    def __init__(self, spec: DatasetSpec, conditional: bool, config: FamilyConfig) -> None:
        super().__init__()
        if conditional and spec.num_classes < 2:
            has = "no labels" if spec.num_classes == 0 else "labels of one class only"
            raise DataError(
                f"a conditional model needs labels of at least two classes; {spec.name!r} has "
                f"{has} (train it with --unconditional)"
            )
        self.spec = spec
        self.conditional = conditional
        self.config = config
        self.num_classes = spec.num_classes if conditional else 0

    @property
    def dims(self) -> int:
        """D, the number of discrete values in one example."""
        return self.spec.dims

    def onehot(self, y: Tensor | None) -> Tensor | None:
        """Labels [B] -> one-hot [B, L] (float), or None for an unconditional model."""
        if not self.conditional:
            return None
        if y is None:
            raise ValueError("this model is class-conditional: labels are required")
        return F.one_hot(y, self.num_classes).to(next(self.parameters()).dtype)

    def scaled(self, x: Tensor) -> Tensor:
        """Integer levels -> floats in [-1, 1]."""
        return x.to(torch.float32) * (2.0 / (self.spec.levels - 1)) - 1.0

    @property
    def transform_count(self) -> int:
        """How many data transforms the model can be conditioned on (0: no augmentation)."""
        if not getattr(self.config, "augment_transforms", False):
            return 0
        return transform_count(*self.spec.shape[1:])

    def conditioning(
        self, y: Tensor | None, aug: Tensor | None, batch: int, device: torch.device
    ) -> Tensor | None:
        """Conditioning vector [B, L (+ transforms)]: the label's one-hot, then the transform's
        (the identity when `aug` is None, as in evaluation and export); None if neither."""
        parts = []
        label = self.onehot(y)
        if label is not None:
            parts.append(label)
        if n_aug := self.transform_count:
            t = torch.zeros(batch, dtype=torch.long, device=device) if aug is None else aug
            parts.append(F.one_hot(t, n_aug).to(next(self.parameters()).dtype))
        return torch.cat(parts, dim=1) if parts else None

    def log_likelihood(self, x: Tensor, y: Tensor | None, samples: int = 1) -> Tensor:
        """log P(x | y) in nats per example [B] (or the family's estimate of it)."""
        raise NotImplementedError(f"{self.family} models have no tractable likelihood")

    def marginal_log_likelihood(
        self, x: Tensor, log_prior: Tensor, samples: int = 1
    ) -> tuple[Tensor, Tensor]:
        """For a conditional model: log p(x) = log Σ_y p(x|y) p(y), and p(y|x) [B, L]."""
        B = x.shape[0]
        per_class = torch.stack(
            [
                self.log_likelihood(x, torch.full((B,), c, dtype=torch.long, device=x.device), samples)
                for c in range(self.num_classes)
            ],
            dim=1,
        )  # [B, L]
        joint = per_class + log_prior[None, :]
        marginal = torch.logsumexp(joint, dim=1)
        return marginal, torch.exp(joint - marginal[:, None])

    @abstractmethod
    def draw_noise(self, n: int, generator: torch.Generator) -> dict[str, Tensor]:
        """All the randomness `n` samples need, drawn on the CPU from `generator`.

        Sampling is a deterministic function of this noise, so the service (which draws
        the same noise with its own per-request generator) can reproduce it exactly.
        """

    @abstractmethod
    def sample_with_noise(
        self, noise: dict[str, Tensor], y: Tensor | None, temperature: float = 1.0
    ) -> Tensor:
        """Integer images [n, C, H, W] from the noise `draw_noise` made."""

    @torch.no_grad()
    def sample(
        self, n: int, y: Tensor | None, generator: torch.Generator, temperature: float = 1.0
    ) -> Tensor:
        """Draw `n` integer images [n, C, H, W] using only `generator` for randomness."""
        device = next(self.parameters()).device
        noise = {k: v.to(device) for k, v in self.draw_noise(n, generator).items()}
        return self.sample_with_noise(noise, y, temperature)

    def bits_per_dim(self, nats: Tensor) -> Tensor:
        """Negative log-likelihood in nats per example -> bits per dimension."""
        return -nats / (self.dims * math.log(2))

    def export_info(self) -> dict[str, Any]:
        """Family-specific facts the manifest records (latent size, estimator, ...)."""
        return {}
