"""Model loaders (`vllm.model_executor.model_loader` and its `base_loader`, `utils` and
`weight_utils`): `register_model_loader` makes a `BaseModelLoader` subclass the loader of a
`load_format` name, and the helpers a loader uses to build a model and finish its weights.

`BaseModelLoader.load_model` does what vLLM 0.32's does on one device: under the model's
dtype it builds the model class the registry gives for the checkpoint (`initialize_model`,
which calls `Model(vllm_config=..., prefix=...)`), asks the loader's `load_weights` to fill
it, then lets every layer's quantize method process its weights
(`process_weights_after_loading`). The reference engine's own runner loads checkpoints
itself and does not consult this registry; only `get_model_loader` does.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from reference.config import set_current_vllm_config
from reference.layers.quantization import QuantizeMethodBase
from reference.logger import init_logger

# Private: vLLM's model_loader modules do not re-export it (it lives in vllm.utils.torch_utils).
from reference.torch_utils import set_default_torch_dtype as _default_dtype

logger = init_logger("vllm.model_executor.model_loader")

__all__ = [
    "BaseModelLoader",
    "default_weight_loader",
    "get_model_loader",
    "initialize_model",
    "process_weights_after_loading",
    "register_model_loader",
]

_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "float": torch.float32,
}


class BaseModelLoader(ABC):
    """A way to get a model's weights (a `load_format`): subclasses download and load."""

    def __init__(self, load_config: Any) -> None:
        self.load_config = load_config

    def get_external_weight_memory(self, vllm_config: Any) -> int:
        """Bytes of weights held by another process (none)."""
        return 0

    @abstractmethod
    def download_model(self, model_config: Any) -> None:
        """Fetch the model's files so that they can be loaded at once."""
        raise NotImplementedError

    @abstractmethod
    def load_weights(self, model: nn.Module, model_config: Any) -> None:
        """Load weights into an already-built `model`."""
        raise NotImplementedError

    def create_model(self, vllm_config: Any, model_config: Any, prefix: str = "") -> nn.Module:
        return initialize_model(vllm_config=vllm_config, model_config=model_config, prefix=prefix)

    def load_model(self, vllm_config: Any, model_config: Any, prefix: str = "") -> nn.Module:
        """Build the model under its dtype, load its weights, process them; in eval mode."""
        device = getattr(vllm_config.load_config, "device", None) or "cpu"
        target = torch.device("cpu" if device == "auto" else device)
        with _default_dtype(_torch_dtype(model_config.dtype)):
            with target:
                model = self.create_model(vllm_config, model_config, prefix=prefix)
            self.load_weights(model, model_config)
            process_weights_after_loading(model, model_config, target)
        return model.eval()


def _torch_dtype(dtype: Any) -> torch.dtype:
    """The model's dtype; `"auto"` (the checkpoint's) is float32 on the reference's CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    return _DTYPES.get(str(dtype), torch.float32)


_LOADERS: dict[str, type[BaseModelLoader]] = {}

_L = TypeVar("_L", bound=type)


def register_model_loader(load_format: str) -> Callable[[_L], _L]:
    """A class decorator that makes a `BaseModelLoader` subclass the loader of
    `load_format` (replacing an earlier one, with a warning)."""

    def wrapper(model_loader_cls: _L) -> _L:
        if load_format in _LOADERS:
            logger.warning(
                "Load format `%s` is already registered, and will be overwritten by the new "
                "loader class `%s`.",
                load_format,
                model_loader_cls,
            )
        if not issubclass(model_loader_cls, BaseModelLoader):
            raise ValueError("The model loader must be a subclass of `BaseModelLoader`.")
        _LOADERS[load_format] = model_loader_cls
        logger.info(
            "Registered model loader `%s` with load format `%s`", model_loader_cls, load_format
        )
        return model_loader_cls

    return wrapper


def get_model_loader(load_config: Any) -> BaseModelLoader:
    """An instance of the loader registered for `load_config.load_format`; ValueError if
    none is (the reference registers no built-in formats)."""
    load_format = load_config.load_format
    if load_format not in _LOADERS:
        raise ValueError(f"Load format `{load_format}` is not supported")
    return _LOADERS[load_format](load_config)


def initialize_model(
    vllm_config: Any,
    *,
    prefix: str = "",
    model_class: type[nn.Module] | None = None,
    model_config: Any = None,
) -> nn.Module:
    """Build `model_class` (default: the registry's class for the checkpoint's architecture)
    as `model_class(vllm_config=..., prefix=...)`, with `vllm_config` current."""
    if model_config is None:
        model_config = vllm_config.model_config
    if model_class is None:
        from reference.models.registry import ModelRegistry

        model_class, _ = ModelRegistry.resolve_model_cls(model_config.architectures, model_config)
    params = inspect.signature(model_class.__init__).parameters
    if "vllm_config" not in params or "prefix" not in params:
        raise TypeError(
            f"{model_class.__qualname__} must accept `vllm_config` and `prefix` (vLLM's model "
            "constructor); the reference does not guess old-style constructor arguments."
        )
    with set_current_vllm_config(vllm_config):
        return model_class(vllm_config=vllm_config, prefix=prefix)


def process_weights_after_loading(
    model: nn.Module, model_config: Any, target_device: torch.device
) -> None:
    """Let each layer's quantize method transform its loaded weights, then the model's own
    `process_weights_after_loading`, if it has one."""
    for _name, module in model.named_modules():
        quant_method = getattr(module, "quant_method", None)
        if isinstance(quant_method, QuantizeMethodBase):
            quant_method.process_weights_after_loading(module)
            if hasattr(module, "update_param_tp_status"):
                module.update_param_tp_status()
    if hasattr(model, "process_weights_after_loading"):
        model.process_weights_after_loading()


def default_weight_loader(param: torch.Tensor, loaded_weight: torch.Tensor) -> None:
    """Copy `loaded_weight` into `param`: same shape, or both of one element."""
    if param.numel() == 1 and loaded_weight.numel() == 1:
        param.data.copy_(loaded_weight.view(param.shape))
        return
    assert param.size() == loaded_weight.size(), (
        f"Attempted to load weight ({loaded_weight.size()}) into parameter ({param.size()})"
    )
    param.data.copy_(loaded_weight)
