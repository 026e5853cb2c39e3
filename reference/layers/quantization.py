"""Quantization methods (`vllm.model_executor.layers.quantization` and its `base_config`): the
base classes a quantization plugin subclasses and `register_quantization_config`, which
makes a new method name known to the engine.

A `QuantizationConfig` is read from a checkpoint's quantization config (`from_config`) and
hands each layer its `QuantizeMethodBase` (`get_quant_method`), which creates the layer's
weights and computes its output. Registering a name adds it to `QUANTIZATION_METHODS` (and
to the current platform's `supported_quantization` where that list is not empty), after
which `get_quantization_config(name)` returns the class. The reference ships no built-in
quantization methods: `get_quantization_config` knows only registered ones.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Literal, TypeVar, get_args

import torch
from torch import nn

from reference.logger import init_logger

logger = init_logger("vllm.model_executor.layers.quantization")

__all__ = [
    "QUANTIZATION_METHODS",
    "QuantizationConfig",
    "QuantizationMethods",
    "QuantizeMethodBase",
    "get_quantization_config",
    "method_has_implemented_embedding",
    "register_quantization_config",
]

#: The method names vLLM 0.32 knows by itself (its `QuantizationMethods` literal).
QuantizationMethods = Literal[
    "awq",
    "auto_awq",
    "fp8",
    "fbgemm_fp8",
    "fp_quant",
    "modelopt",
    "modelopt_fp4",
    "modelopt_mxfp8",
    "modelopt_mixed",
    "auto_gptq",
    "gptq",
    "gptq_marlin",
    "awq_marlin",
    "humming",
    "compressed-tensors",
    "experts_int8",
    "quark",
    "moe_wna16",
    "torchao",
    "inc",
    "mxfp4",
    "gpt_oss_mxfp4",
    "deepseek_v4_fp8",
    "online",
    "fp8_per_tensor",
    "fp8_per_block",
    "fp8_per_channel",
    "int8_per_channel_weight_only",
    "nvfp4_per_token",
    "mxfp8",
]
QUANTIZATION_METHODS: list[str] = list(get_args(QuantizationMethods))
_REGISTERED: dict[str, type[QuantizationConfig]] = {}


class QuantizeMethodBase(ABC):
    """How one layer is quantized: creates its weights and computes its output."""

    requires_device_loading: bool = True
    uses_meta_device: bool = False
    supports_pre_processed_weights: bool = False

    @abstractmethod
    def create_weights(self, layer: nn.Module, *weight_args: Any, **extra_weight_attrs: Any):
        """Create the layer's weights (as parameters registered on `layer`)."""
        raise NotImplementedError

    @abstractmethod
    def apply(self, layer: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The layer's output."""
        raise NotImplementedError

    def embedding(self, layer: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        """An embedding look-up with the quantized weights (only embedding methods)."""
        raise NotImplementedError

    def tie_weights(self, layer: nn.Module, embed_tokens: nn.Module) -> nn.Module:
        """Share `embed_tokens`' weight with `layer` (a tied LM head)."""
        layer.weight = embed_tokens.weight
        return layer

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Transform the loaded weights into the form `apply` computes with (default: none)."""
        return

    def dequantize_weight(self, layer: nn.Module) -> torch.Tensor:
        raise NotImplementedError(
            f"The quantization method {type(self)} does not implement dequantize_weight."
        )


def method_has_implemented_embedding(method_class: type[QuantizeMethodBase]) -> bool:
    """Whether `method_class` overrides `QuantizeMethodBase.embedding`."""
    base = inspect.getattr_static(QuantizeMethodBase, "embedding", None)
    own = inspect.getattr_static(method_class, "embedding", None)
    return own is not None and own is not base


class QuantizationConfig(ABC):
    """A quantization method's configuration, read from a checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.packed_modules_mapping: dict[str, list[str]] = {}

    @abstractmethod
    def get_name(self) -> str:
        """The method's name (the one it is registered under)."""
        raise NotImplementedError

    @abstractmethod
    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        raise NotImplementedError

    @classmethod
    @abstractmethod
    def get_min_capability(cls) -> int:
        """The lowest GPU compute capability it runs on (70 = Volta)."""
        raise NotImplementedError

    @staticmethod
    @abstractmethod
    def get_config_filenames() -> list[str]:
        """Files in the checkpoint folder to read the config from."""
        raise NotImplementedError

    @classmethod
    @abstractmethod
    def from_config(cls, config: dict[str, Any]) -> QuantizationConfig:
        raise NotImplementedError

    @classmethod
    def override_quantization_method(
        cls, hf_quant_cfg: dict[str, Any], user_quant: str | None, hf_config: Any = None
    ) -> str | None:
        """A method name that should serve this checkpoint instead (default: none)."""
        return None

    @staticmethod
    def get_from_keys(config: dict[str, Any], keys: list[str]) -> Any:
        """The value of the first of `keys` in `config`; ValueError if none is there."""
        for key in keys:
            if key in config:
                return config[key]
        raise ValueError(f"Cannot find any of {keys} in the model's quantization config.")

    @staticmethod
    def get_from_keys_or(config: dict[str, Any], keys: list[str], default: Any) -> Any:
        try:
            return QuantizationConfig.get_from_keys(config, keys)
        except ValueError:
            return default

    @abstractmethod
    def get_quant_method(self, layer: nn.Module, prefix: str) -> QuantizeMethodBase | None:
        """The method for `layer` (named `prefix`), or None if it is not quantized."""
        raise NotImplementedError

    def apply_vllm_mapper(self, hf_to_vllm_mapper: Any) -> None:  # noqa: B027
        """Rename the module names this config mentions to the model's (default: none)."""

    def maybe_update_config(  # noqa: B027
        self, model_name: str, hf_config: Any = None, revision: str | None = None
    ) -> None:
        """Complete the config from the model's files (default: nothing to do)."""


_C = TypeVar("_C", bound=type)


def register_quantization_config(quantization: str) -> Callable[[_C], _C]:
    """A class decorator that registers a `QuantizationConfig` subclass as the method
    `quantization` (replacing a built-in or earlier one of that name)."""

    def wrapper(quant_config_cls: _C) -> _C:
        if quantization in QUANTIZATION_METHODS:
            logger.debug(
                "The quantization method '%s' already exists and will be overwritten by the "
                "quantization config %s.",
                quantization,
                quant_config_cls,
            )
        else:
            QUANTIZATION_METHODS.append(quantization)
            from reference.platforms import current_platform

            if supported := current_platform.supported_quantization:
                supported.append(quantization)
        if not issubclass(quant_config_cls, QuantizationConfig):
            raise ValueError("The quantization config must be a subclass of `QuantizationConfig`.")
        _REGISTERED[quantization] = quant_config_cls
        return quant_config_cls

    return wrapper


def get_quantization_config(quantization: str) -> type[QuantizationConfig]:
    """The config class of method `quantization`; ValueError for an unknown name (KeyError
    for a vLLM built-in, none of which the reference implements)."""
    if quantization not in QUANTIZATION_METHODS:
        raise ValueError(f"Invalid quantization method: {quantization}")
    return _REGISTERED[quantization]
