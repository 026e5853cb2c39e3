"""Model interfaces (`vllm.model_executor.models.interfaces`): the marker protocols a model
class inherits to tell the engine what it supports, and the `supports_*` predicates the
engine asks.

Each interface is a `Protocol` with a class flag (`supports_pp`, `supports_lora`, ...)
that is True on every class inheriting it, plus the attributes vLLM expects next to it.
The predicates answer from those, for a class or an instance, as vLLM 0.32's do: a flag
alone is not enough where vLLM also requires attributes (LoRA's `packed_modules_mapping`
and `embedding_modules`; pipeline parallelism's `make_empty_intermediate_tensors` and an
`intermediate_tensors` parameter of `forward`). Only the interfaces real plugins import are
modelled: multimodal, pipeline parallel, LoRA, quantization, inner state, hybrid,
attention-free and M-RoPE.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar, Literal, Protocol, TypeAlias

from torch import Tensor

from reference.logger import init_logger

logger = init_logger("vllm.model_executor.models.interfaces")

__all__ = [
    "HasInnerState",
    "IsAttentionFree",
    "IsHybrid",
    "MultiModalEmbeddings",
    "SupportsLoRA",
    "SupportsMRoPE",
    "SupportsMultiModal",
    "SupportsPP",
    "SupportsQuant",
    "has_inner_state",
    "is_attention_free",
    "is_hybrid",
    "supports_lora",
    "supports_mrope",
    "supports_multimodal",
    "supports_pp",
]

#: What `embed_multimodal` returns: one tensor per item, or a batched tensor.
MultiModalEmbeddings: TypeAlias = list[Tensor] | Tensor | tuple[Tensor, ...]


class SupportsMultiModal(Protocol):
    """A model that takes images, audio or video next to text."""

    supports_multimodal: ClassVar[Literal[True]] = True
    supports_multimodal_raw_input_only: ClassVar[bool] = False
    supports_encoder_tp_data: ClassVar[bool] = False
    requires_raw_input_tokens: ClassVar[bool] = False

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        """The prompt text that stands for the `i`-th item of `modality`."""
        ...

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        """The embeddings of the request's multimodal items."""
        ...


class SupportsPP(Protocol):
    """A model that can run as several pipeline stages (its `forward` takes and returns
    `IntermediateTensors` between stages)."""

    supports_pp: ClassVar[Literal[True]] = True


class SupportsLoRA(Protocol):
    """A model LoRA adapters can be applied to."""

    supports_lora: ClassVar[Literal[True]] = True
    is_3d_moe_weight: ClassVar[bool] = False
    is_non_gated_moe: ClassVar[bool] = False
    embedding_modules: ClassVar[dict[str, str]] = {}
    packed_modules_mapping: dict[str, list[str]] = {}
    lora_skip_prefixes: ClassVar[list[str]] = []


class HasInnerState(Protocol):
    """A model with per-request recurrent state (Mamba-style)."""

    has_inner_state: ClassVar[Literal[True]] = True


class IsAttentionFree(Protocol):
    """A model without attention layers (no KV cache)."""

    is_attention_free: ClassVar[Literal[True]] = True


class IsHybrid(Protocol):
    """A model that mixes attention and Mamba-style layers; it reports its state shapes
    through `get_mamba_state_shape_from_config` (see `MambaStateShapeCalculator`)."""

    is_hybrid: ClassVar[Literal[True]] = True


class SupportsMRoPE(Protocol):
    """A model with multimodal rotary positions (`get_mrope_input_positions`)."""

    supports_mrope: ClassVar[Literal[True]] = True


class SupportsQuant:
    """A model whose `quant_config` is taken from the `vllm_config` it is built with."""

    hf_to_vllm_mapper: Any = None
    packed_modules_mapping: dict[str, list[str]] = {}
    quant_config: Any = None

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        instance = super().__new__(cls)
        quant_config = cls._find_quant_config(*args, **kwargs)
        if quant_config is not None:
            instance.quant_config = quant_config
            instance.quant_config.packed_modules_mapping.update(cls.packed_modules_mapping)
        return instance

    @staticmethod
    def _find_quant_config(*args: Any, **kwargs: Any) -> Any:
        """The `quant_config` of a `vllm_config` (or a quantization config) among the args."""
        from reference.layers.quantization import QuantizationConfig

        for arg in (*args, *kwargs.values()):
            if isinstance(arg, QuantizationConfig):
                return arg
            found = getattr(arg, "quant_config", None)
            if isinstance(found, QuantizationConfig):
                return found
        return None


def _flag(model: Any, name: str) -> bool:
    return bool(getattr(model, name, False))


def supports_multimodal(model: Any) -> bool:
    return _flag(model, "supports_multimodal")


def supports_lora(model: Any) -> bool:
    """The flag, and the attributes LoRA needs (warning when the flag is set without them)."""
    missing = [a for a in ("packed_modules_mapping", "embedding_modules") if not hasattr(model, a)]
    if _flag(model, "supports_lora") and missing:
        logger.warning(
            "The model (%s) sets `supports_lora=True`, but is missing LoRA-specific attributes: %s",
            model,
            tuple(missing),
        )
    return _flag(model, "supports_lora") and not missing


def supports_pp(model: Any) -> bool:
    """Inherits `SupportsPP` (a class) or has its flag and `make_empty_intermediate_tensors`,
    and its `forward` takes `intermediate_tensors` (by name or through `**kwargs`)."""
    if isinstance(model, type) and SupportsPP in model.__mro__:
        attributes = True
    else:
        attributes = _flag(model, "supports_pp") and hasattr(
            model, "make_empty_intermediate_tensors"
        )
    takes = _takes_keyword(getattr(model, "forward", None), "intermediate_tensors")
    if attributes and not takes:
        logger.warning(
            "The model (%s) sets `supports_pp=True`, but does not accept "
            "`intermediate_tensors` in its `forward` method",
            model,
        )
    return attributes and takes


def _takes_keyword(function: Any, name: str) -> bool:
    if not callable(function):
        return False
    params = inspect.signature(function).parameters.values()
    return any(
        (p.name == name and p.kind is not p.POSITIONAL_ONLY) or p.kind is p.VAR_KEYWORD
        for p in params
    )


def has_inner_state(model: Any) -> bool:
    return _flag(model, "has_inner_state")


def is_attention_free(model: Any) -> bool:
    return _flag(model, "is_attention_free")


def is_hybrid(model: Any) -> bool:
    return _flag(model, "is_hybrid")


def supports_mrope(model: Any) -> bool:
    return _flag(model, "supports_mrope")
