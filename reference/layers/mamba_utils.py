"""State calculators of Mamba-style layers (`vllm.model_executor.layers.mamba.mamba_utils`):
the shapes and dtypes of the recurrent state a model declares for its cache.

A model with Mamba, linear-attention, short-convolution or gated-delta-net layers reports
its per-request state through these (its `get_mamba_state_shape_from_config` and
`get_mamba_state_dtype_from_config` class methods). The arithmetic is vLLM 0.32's: the
convolution state is `(state_len, dim)` (layout "SD", the default) or `(dim, state_len)`
(layout "DS", chosen with `VLLM_SSM_CONV_STATE_LAYOUT`), with the sharded dimension divided
by the tensor-parallel size. The ReplaySSM and KDA-record extensions are not modelled.
"""

from __future__ import annotations

import functools
import os
from typing import Literal

import torch

from reference.distributed import divide
from reference.torch_utils import STR_DTYPE_TO_TORCH_DTYPE, get_kv_cache_torch_dtype

__all__ = [
    "MambaStateDtypeCalculator",
    "MambaStateShapeCalculator",
    "get_conv_state_layout",
    "get_kv_cache_torch_dtype",
    "is_conv_state_dim_first",
]

ConvStateLayoutType = Literal["SD", "DS"]


@functools.lru_cache
def get_conv_state_layout() -> ConvStateLayoutType:
    """ "SD" (state_len, dim), unless `VLLM_SSM_CONV_STATE_LAYOUT` says "DS"; read once."""
    layout = os.environ.get("VLLM_SSM_CONV_STATE_LAYOUT")
    return "DS" if layout == "DS" else "SD"


def is_conv_state_dim_first() -> bool:
    return get_conv_state_layout() == "DS"


class MambaStateDtypeCalculator:
    """Dtypes of a layer's states; `"auto"` cache dtypes follow the model's dtype."""

    @classmethod
    def linear_attention_state_dtype(
        cls, model_dtype: str | torch.dtype, mamba_cache_dtype: str
    ) -> tuple[torch.dtype, ...]:
        return (get_kv_cache_torch_dtype(mamba_cache_dtype, model_dtype),)

    @classmethod
    def mamba1_state_dtype(
        cls, model_dtype: str | torch.dtype, mamba_cache_dtype: str, mamba_ssm_cache_dtype: str
    ) -> tuple[torch.dtype, ...]:
        return cls._mamba_state_dtype(model_dtype, mamba_cache_dtype, mamba_ssm_cache_dtype)

    @classmethod
    def mamba2_state_dtype(
        cls, model_dtype: str | torch.dtype, mamba_cache_dtype: str, mamba_ssm_cache_dtype: str
    ) -> tuple[torch.dtype, ...]:
        return cls._mamba_state_dtype(model_dtype, mamba_cache_dtype, mamba_ssm_cache_dtype)

    @classmethod
    def _mamba_state_dtype(
        cls, model_dtype: str | torch.dtype, mamba_cache_dtype: str, mamba_ssm_cache_dtype: str
    ) -> tuple[torch.dtype, ...]:
        """(conv state dtype, temporal state dtype)."""
        conv = get_kv_cache_torch_dtype(mamba_cache_dtype, model_dtype)
        if mamba_ssm_cache_dtype == "auto":
            return (conv, conv)
        return (conv, STR_DTYPE_TO_TORCH_DTYPE[mamba_ssm_cache_dtype])

    @classmethod
    def short_conv_state_dtype(
        cls, model_dtype: str | torch.dtype, mamba_cache_dtype: str
    ) -> tuple[torch.dtype, ...]:
        return (get_kv_cache_torch_dtype(mamba_cache_dtype, model_dtype),)

    @classmethod
    def gated_delta_net_state_dtype(
        cls,
        model_dtype: str | torch.dtype,
        mamba_cache_dtype: str,
        mamba_ssm_cache_dtype: str = "auto",
    ) -> tuple[torch.dtype, torch.dtype]:
        conv, temporal = cls._mamba_state_dtype(
            model_dtype, mamba_cache_dtype, mamba_ssm_cache_dtype
        )
        return conv, temporal

    @classmethod
    def kda_state_dtype(
        cls,
        model_dtype: str | torch.dtype,
        mamba_cache_dtype: str,
        mamba_ssm_cache_dtype: str = "auto",
    ) -> tuple[torch.dtype, torch.dtype]:
        """The recurrent state is float32 unless float32 or bfloat16 is asked for."""
        conv = get_kv_cache_torch_dtype(mamba_cache_dtype, model_dtype)
        if mamba_ssm_cache_dtype == "auto":
            return conv, torch.float32
        if mamba_ssm_cache_dtype in ("float32", "bfloat16"):
            return conv, STR_DTYPE_TO_TORCH_DTYPE[mamba_ssm_cache_dtype]
        raise ValueError(
            "KDA recurrent state supports only auto, float32, and bfloat16; "
            f"got {mamba_ssm_cache_dtype}"
        )


class MambaStateShapeCalculator:
    """Per-request state shapes of one layer on one tensor-parallel rank."""

    @classmethod
    def linear_attention_state_shape(
        cls, num_heads: int, tp_size: int, head_dim: int
    ) -> tuple[tuple[int, int, int]]:
        return ((num_heads // tp_size, head_dim, head_dim),)

    @staticmethod
    def _orient_conv_shape(dim: int, state_len: int) -> tuple[int, int]:
        return (dim, state_len) if is_conv_state_dim_first() else (state_len, dim)

    @classmethod
    def mamba1_state_shape(
        cls, tp_world_size: int, intermediate_size: int, state_size: int, conv_kernel: int
    ) -> tuple[tuple[int, int], tuple[int, int]]:
        """(conv state, temporal state): the inner dimension sharded, a kernel-1 window."""
        inner = divide(intermediate_size, tp_world_size)
        return cls._orient_conv_shape(inner, conv_kernel - 1), (inner, state_size)

    @classmethod
    def mamba2_state_shape(
        cls,
        tp_world_size: int,
        intermediate_size: int,
        n_groups: int,
        num_heads: int,
        head_dim: int,
        state_size: int,
        conv_kernel: int,
        num_spec: int = 0,
    ) -> tuple[tuple[int, int], tuple[int, int, int]]:
        """(conv state, temporal state); groups are replicated up to the TP size when it
        does not divide them, so that every head's group is on its rank."""
        n_groups += cls.extra_groups_for_head_shards(n_groups, tp_world_size)
        conv_dim = intermediate_size + 2 * n_groups * state_size
        conv = cls._orient_conv_shape(divide(conv_dim, tp_world_size), conv_kernel - 1 + num_spec)
        return conv, (divide(num_heads, tp_world_size), head_dim, state_size)

    @classmethod
    def short_conv_state_shape(
        cls, tp_world_size: int, intermediate_size: int, conv_kernel: int, num_spec: int = 0
    ) -> tuple[tuple[int, int]]:
        conv_dim = divide(intermediate_size, tp_world_size)
        return (cls._orient_conv_shape(conv_dim, conv_kernel - 1 + num_spec),)

    @classmethod
    def extra_groups_for_head_shards(cls, ngroups: int, tp_size: int) -> int:
        """How many groups to add so that `tp_size` shards each hold whole groups."""
        return 0 if ngroups % tp_size == 0 else tp_size - ngroups

    @classmethod
    def gated_delta_net_state_shape(
        cls,
        tp_world_size: int,
        num_k_heads: int,
        num_v_heads: int,
        head_k_dim: int,
        head_v_dim: int,
        conv_kernel_size: int,
        num_spec: int = 0,
    ) -> tuple[tuple[int, int], tuple[int, int, int]]:
        conv_dim = head_k_dim * num_k_heads * 2 + head_v_dim * num_v_heads
        conv = cls._orient_conv_shape(
            divide(conv_dim, tp_world_size), conv_kernel_size - 1 + num_spec
        )
        return conv, (divide(num_v_heads, tp_world_size), head_v_dim, head_k_dim)

    @classmethod
    def kda_state_shape(
        cls,
        tp_world_size: int,
        num_heads: int,
        head_dim: int,
        num_k_heads: int | None = None,
        head_k_dim: int | None = None,
        conv_kernel_size: int = 4,
        num_spec: int = 0,
    ) -> tuple[tuple[int, int], tuple[int, int, int]]:
        num_k_heads = num_heads if num_k_heads is None else num_k_heads
        head_k_dim = head_dim if head_k_dim is None else head_k_dim
        conv_dim = num_heads * head_dim + 2 * num_k_heads * head_k_dim
        conv = cls._orient_conv_shape(
            divide(conv_dim, tp_world_size), conv_kernel_size - 1 + num_spec
        )
        return conv, (divide(num_heads, tp_world_size), head_dim, head_dim)
