"""Torch helpers plugins import from `vllm.utils.torch_utils`: registering a custom op in the
`vllm` operator library, dtype tables and context managers, seeding.

Only the names real plugins import (see docs/ecosystem.md) are here, each with vLLM 0.32's
signature and behaviour on one CPU process.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.library import Library, infer_schema

__all__ = [
    "STR_DTYPE_TO_TORCH_DTYPE",
    "direct_register_custom_op",
    "get_dtype_size",
    "get_kv_cache_torch_dtype",
    "set_default_torch_dtype",
    "set_random_seed",
    "vllm_lib",
]

#: Cache and model dtype names → torch dtypes (the fp8 cache formats are stored as bytes).
STR_DTYPE_TO_TORCH_DTYPE: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "half": torch.half,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float": torch.float,
    "fp8": torch.uint8,
    "fp8_e4m3": torch.uint8,
    "fp8_e5m2": torch.uint8,
    "int8": torch.int8,
}

#: The `vllm` operator namespace: ops registered here are called as `torch.ops.vllm.<name>`.
vllm_lib = Library("vllm", "FRAGMENT")


def direct_register_custom_op(
    op_name: str,
    op_func: Callable[..., Any],
    mutates_args: list[str] | None = None,
    fake_impl: Callable[..., Any] | None = None,
    target_lib: Library | None = None,
    dispatch_key: str | None = None,
    tags: tuple[torch.Tag, ...] = (),
) -> None:
    """Define `op_name` in `target_lib` (default: the `vllm` library) with the schema read
    from `op_func`'s annotations, implement it with `op_func` for the current platform's
    dispatch key, and register `fake_impl` (used under torch.compile's fake tensors)."""
    if mutates_args is None:
        mutates_args = []
    if dispatch_key is None:
        from reference.platforms import current_platform

        dispatch_key = current_platform.dispatch_key
    schema = infer_schema(op_func, mutates_args=mutates_args)
    lib = target_lib or vllm_lib
    lib.define(op_name + schema, tags=tags)
    lib.impl(op_name, op_func, dispatch_key=dispatch_key)
    if fake_impl is not None:
        lib._register_fake(op_name, fake_impl)


@contextlib.contextmanager
def set_default_torch_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Make `dtype` torch's default dtype inside the block."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def get_dtype_size(dtype: torch.dtype) -> int:
    """Bytes per element of `dtype`."""
    return torch.tensor([], dtype=dtype).element_size()


def get_kv_cache_torch_dtype(
    cache_dtype: str | torch.dtype | None,
    model_dtype: str | torch.dtype | None = None,
) -> torch.dtype:
    """The torch dtype of a cache: `"auto"` follows the model's dtype, a name is looked up in
    `STR_DTYPE_TO_TORCH_DTYPE`, a torch dtype is itself; ValueError otherwise."""
    if isinstance(cache_dtype, str):
        if cache_dtype == "auto":
            if isinstance(model_dtype, str) and model_dtype in STR_DTYPE_TO_TORCH_DTYPE:
                return STR_DTYPE_TO_TORCH_DTYPE[model_dtype]
            if isinstance(model_dtype, torch.dtype):
                return model_dtype
            raise ValueError(f"Invalid model dtype: {model_dtype}")
        if cache_dtype in STR_DTYPE_TO_TORCH_DTYPE:
            return STR_DTYPE_TO_TORCH_DTYPE[cache_dtype]
        raise ValueError(f"Invalid kv cache dtype: {cache_dtype}")
    if isinstance(cache_dtype, torch.dtype):
        return cache_dtype
    raise ValueError(f"Invalid kv cache dtype: {cache_dtype}")


def set_random_seed(seed: int | None, data_parallel_index: int = 0) -> None:
    """Seed Python's, NumPy's and torch's generators (nothing when `seed` is None); a
    data-parallel rank other than 0 derives its own seed from `(seed, index)`."""
    if seed is None:
        return
    import numpy as np

    if data_parallel_index:
        seed = int(np.random.SeedSequence((seed, data_parallel_index)).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    from reference.platforms import current_platform

    current_platform.manual_seed_all(seed)
