"""Attention back-end selection types that platform plugins receive (vLLM 0.32 shapes)."""

from __future__ import annotations

import enum
from typing import Any, NamedTuple


class AttentionType(str, enum.Enum):
    DECODER = "decoder"
    ENCODER = "encoder"
    ENCODER_ONLY = "encoder_only"
    ENCODER_DECODER = "encoder_decoder"


class AttentionBackendEnum(enum.Enum):
    TORCH_SDPA = "reference.attention.TorchSDPABackend"
    CUSTOM = ""

    def get_path(self) -> str:
        return self.value


class AttentionSelectorConfig(NamedTuple):
    """What the engine knows about a layer when it asks the platform for a back-end."""

    head_size: int
    dtype: Any
    kv_cache_dtype: str | None
    block_size: int | None
    use_mla: bool = False
    has_sink: bool = False
    use_sparse: bool = False
    use_mm_prefix: bool = False
    use_per_head_quant_scales: bool = False
    attn_type: str = AttentionType.DECODER
    has_sliding_window: bool = False
    use_non_causal: bool = False
    use_batch_invariant: bool = False
    use_kv_connector: bool = False
    use_pcp: bool = False
    use_adaptive_verification: bool = False
    use_dcp: bool = False
    use_rswa: bool = False


class TorchSDPABackend:
    """The reference's only attention back-end: PyTorch's scaled dot-product attention."""

    @staticmethod
    def get_name() -> str:
        return "TORCH_SDPA"
