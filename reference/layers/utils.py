"""Layer helpers (`vllm.model_executor.layers.utils` and `vllm.model_executor.utils`): the
unquantized matrix product layers compute with, and weight attributes that loaders read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["default_unquantized_gemm", "dispatch_unquantized_gemm", "set_weight_attrs"]


def default_unquantized_gemm(
    layer: torch.nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`x @ weight.T + bias`: a linear layer's output."""
    return torch.nn.functional.linear(x, weight, bias)


def dispatch_unquantized_gemm(linear_backend: str = "auto") -> Callable[..., torch.Tensor]:
    """The unquantized product for this platform; on the reference (CPU, one process) always
    `default_unquantized_gemm` (vLLM picks ROCm, CPU or FlashInfer kernels by platform)."""
    return default_unquantized_gemm


def set_weight_attrs(weight: torch.Tensor, weight_attrs: dict[str, Any] | None) -> None:
    """Set attributes on a weight (its `weight_loader`, `output_dim`, ...); AssertionError
    if one is already set, which would silently change how the weight loads."""
    if weight_attrs is None:
        return
    for key, value in weight_attrs.items():
        assert not hasattr(weight, key), f"Overwriting existing tensor attribute: {key}"
        setattr(weight, key, value)
