"""The forward context (`vllm.forward_context`): per-step state that layers read while the
model runs, without it being passed through every `forward`.

`set_forward_context(...)` makes a `ForwardContext` current for the length of a `with`
block; `get_forward_context()` returns it and asserts, as vLLM does, when none is set. The
reference's contexts carry no attention metadata of their own (it has no paged attention),
so `attn_metadata` holds whatever the caller passed.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CUDAGraphMode",
    "ForwardContext",
    "create_forward_context",
    "get_forward_context",
    "is_forward_context_available",
    "override_forward_context",
    "set_forward_context",
]


class CUDAGraphMode(enum.Enum):
    """How a step's forward runs under CUDA graphs; the reference runs every step eagerly."""

    NONE = 0
    PIECEWISE = 1
    FULL = 2


@dataclass
class ForwardContext:
    no_compile_layers: dict[str, Any]
    attn_metadata: Any
    slot_mapping: Any
    dp_metadata: Any = None
    cudagraph_runtime_mode: CUDAGraphMode = CUDAGraphMode.NONE
    batch_descriptor: Any = None
    ubatch_slices: Any = None
    is_padding: Any = None
    skip_compiled: bool = False
    all_moe_layers: list[str] | None = None
    moe_layer_index: int = 0
    additional_kwargs: dict[str, Any] = field(default_factory=dict)


_forward_context: ForwardContext | None = None


def get_forward_context() -> ForwardContext:
    """The current forward context; AssertionError outside `set_forward_context`."""
    assert _forward_context is not None, (
        "Forward context is not set. Please use `set_forward_context` to set the forward context."
    )
    return _forward_context


def is_forward_context_available() -> bool:
    return _forward_context is not None


def create_forward_context(
    attn_metadata: Any,
    vllm_config: Any,
    dp_metadata: Any = None,
    cudagraph_runtime_mode: CUDAGraphMode = CUDAGraphMode.NONE,
    batch_descriptor: Any = None,
    ubatch_slices: Any = None,
    slot_mapping: Any = None,
    additional_kwargs: dict[str, Any] | None = None,
    skip_compiled: bool = False,
    is_padding: Any = None,
) -> ForwardContext:
    """A `ForwardContext` for one step of the engine configured by `vllm_config`."""
    compilation = getattr(vllm_config, "compilation_config", None)
    return ForwardContext(
        # As in vLLM: the layers that registered themselves while the model was built.
        no_compile_layers=getattr(compilation, "static_forward_context", {}),
        attn_metadata=attn_metadata,
        slot_mapping=slot_mapping or {},
        dp_metadata=dp_metadata,
        cudagraph_runtime_mode=cudagraph_runtime_mode,
        batch_descriptor=batch_descriptor,
        ubatch_slices=ubatch_slices,
        is_padding=is_padding,
        skip_compiled=skip_compiled,
        additional_kwargs=additional_kwargs or {},
    )


@contextmanager
def override_forward_context(forward_context: ForwardContext | None) -> Iterator[None]:
    """Make `forward_context` current inside the block; the previous one returns after."""
    global _forward_context
    previous, _forward_context = _forward_context, forward_context
    try:
        yield
    finally:
        _forward_context = previous


@contextmanager
def set_forward_context(
    attn_metadata: Any,
    vllm_config: Any,
    num_tokens: int | None = None,
    num_tokens_across_dp: Any = None,
    cudagraph_runtime_mode: CUDAGraphMode = CUDAGraphMode.NONE,
    batch_descriptor: Any = None,
    ubatch_slices: Any = None,
    slot_mapping: Any = None,
    skip_compiled: bool = False,
    is_padding: Any = None,
) -> Iterator[None]:
    """Run the block with a new forward context for `attn_metadata` (one rank: no data-
    parallel metadata)."""
    context = create_forward_context(
        attn_metadata,
        vllm_config,
        cudagraph_runtime_mode=cudagraph_runtime_mode,
        batch_descriptor=batch_descriptor,
        ubatch_slices=ubatch_slices,
        slot_mapping=slot_mapping,
        skip_compiled=skip_compiled,
        is_padding=is_padding,
    )
    with override_forward_context(context):
        yield
