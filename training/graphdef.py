"""A graph to export: a module taking exactly the graph's inputs, and its signature."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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

    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


def wrap(model: nn.Module, fn: Callable[..., Any], arity: int) -> nn.Module:
    return {1: _G1, 2: _G2, 3: _G3}[arity](model, fn)


__all__ = ["GraphDef", "wrap"]
