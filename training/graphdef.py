"""A graph to export: a module taking exactly the graph's inputs, and its signature."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from service.manifest import TensorSpec


class _G1(nn.Module):
    def __init__(self, model: nn.Module, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, a: Tensor) -> Any:
        return self.fn(self.model, a)


class _G2(_G1):
    def forward(self, a: Tensor, b: Tensor) -> Any:  # type: ignore[override]
        return self.fn(self.model, a, b)


class _G3(_G1):
    def forward(self, a: Tensor, b: Tensor, c: Tensor) -> Any:  # type: ignore[override]
        return self.fn(self.model, a, b, c)


# (batch, held-out x, y, generator) -> one tensor per graph input
Example = Callable[[int, Tensor, Tensor | None, torch.Generator], tuple[Tensor, ...]]


@dataclass
class GraphDef:
    """One graph to export: a module with exactly the graph's inputs, and its signature."""

    name: str
    description: str
    module: nn.Module
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    likelihood_outputs: tuple[str, ...] = ()
    # The exporter's onnxscript optimizer pass; ONNX Runtime optimizes every graph again
    # when it loads it. Off where the pass is pathologically slow (zuko's flows: minutes
    # per graph instead of seconds).
    optimize: bool = True
    # Inputs for tracing and the parity check, for graphs whose inputs have meanings that
    # random normal noise would break (levels, positions, times in [0, 1]); None: held-out
    # data for x, labels for y, noise for the rest.
    example: Example | None = None

    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


def wrap(model: nn.Module, fn: Callable[..., Any], arity: int) -> nn.Module:
    return {1: _G1, 2: _G2, 3: _G3}[arity](model, fn)


__all__ = ["Example", "GraphDef", "wrap"]
