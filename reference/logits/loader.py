"""Loading logits processors, as vLLM 0.32 does, for the interface in force.

`*_for(vllm_config)` picks V1 (`reference.logits.v1`) or Model Runner V2 (`reference.logits.v2`);
each interface's loading lives with the interface. This module is also vLLM's
`vllm.v1.worker.gpu.sample.logits_processor.loader`, so it re-exports both interfaces' loaders.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from reference.config import HfConfig
from reference.logits import default_use_v2_model_runner, v1, v2
from reference.logits.sources import CustomLogitsProcs
from reference.logits.v1 import (
    _load_custom_logitsprocs,
    _load_logitsprocs_by_fqcns,
    _load_logitsprocs_plugins,
    build_logitsprocs,
    cached_load_custom_logitsprocs,
    validate_logits_processors_parameters,
)
from reference.logits.v2 import (
    _cached_load_v2_logitsprocs,
    _load_v2_logitsprocs,
    _load_v2_logitsprocs_by_fqcns,
    _load_v2_logitsprocs_plugins,
    build_custom_logits_processors,
    build_custom_logits_processors_params_validator,
)

if TYPE_CHECKING:
    import torch

    from reference.sampling_params import SamplingParams

__all__ = [
    "CustomLogitsProcs",
    "_cached_load_v2_logitsprocs",
    "_load_custom_logitsprocs",
    "_load_logitsprocs_by_fqcns",
    "_load_logitsprocs_plugins",
    "_load_v2_logitsprocs",
    "_load_v2_logitsprocs_by_fqcns",
    "_load_v2_logitsprocs_plugins",
    "build_custom_logits_processors",
    "build_custom_logits_processors_params_validator",
    "build_logits_processors_for",
    "build_logitsprocs",
    "cached_load_custom_logitsprocs",
    "clear_caches",
    "load_custom_logitsprocs_for",
    "params_validator_for",
    "uses_v2_interface",
    "validate_logits_processors_parameters",
]


def uses_v2_interface(vllm_config: Any) -> bool:
    """Whether `vllm_config` runs Model Runner V2, and so the V2 processor interface."""
    flag = getattr(vllm_config, "use_v2_model_runner", None)
    return default_use_v2_model_runner(vllm_config) if flag is None else bool(flag)


def _configured_custom(vllm_config: Any, custom: CustomLogitsProcs | None) -> CustomLogitsProcs:
    if custom is not None:
        return custom
    model_config = getattr(vllm_config, "model_config", None)
    return tuple(getattr(model_config, "logits_processors", None) or ())


def load_custom_logitsprocs_for(
    vllm_config: Any, custom_logitsprocs: CustomLogitsProcs | None = None
) -> list[type]:
    """The custom processor classes the runner of `vllm_config` would load.

    `custom_logitsprocs` defaults to `vllm_config.model_config.logits_processors`.
    """
    custom = _configured_custom(vllm_config, custom_logitsprocs)
    if uses_v2_interface(vllm_config):
        return list(_load_v2_logitsprocs(custom))
    return list(_load_custom_logitsprocs(custom))


def build_logits_processors_for(
    vllm_config: Any,
    *,
    device: torch.device | str = "cpu",
    is_pin_memory: bool = False,
    req_states: Any = None,
    custom_logitsprocs: CustomLogitsProcs | None = None,
) -> v1.LogitsProcessors | list[v2.LogitsProcessor]:
    """The processors the runner of `vllm_config` would build, by the interface in force.

    Under MRV2 `req_states` defaults to empty buffers sized from the config.
    """
    custom = _configured_custom(vllm_config, custom_logitsprocs)
    model_config = getattr(vllm_config, "model_config", None)
    is_pooling = bool(getattr(model_config, "is_pooling_model", False))
    if not uses_v2_interface(vllm_config):
        return build_logitsprocs(vllm_config, device, is_pin_memory, is_pooling, custom)
    if req_states is None and not is_pooling:
        req_states = _default_request_state(vllm_config, device)
    return build_custom_logits_processors(vllm_config, req_states, is_pooling, custom)


def _default_request_state(
    vllm_config: Any, device: torch.device | str
) -> v2.LogitsProcRequestState:
    # A bare `VllmConfig()` has no model: the buffers then have no vocabulary.
    model_config = vllm_config.model_config
    hf_config = model_config.hf_config if model_config is not None else HfConfig()
    configured_len = model_config.max_model_len if model_config is not None else None
    max_model_len = configured_len or hf_config.get("max_position_embeddings") or 2048
    return v2.LogitsProcRequestState.create(
        max_num_reqs=vllm_config.scheduler_config.max_num_seqs,
        vocab_size=int(hf_config.get("vocab_size") or 0),
        max_model_len=int(max_model_len),
        device=device,
    )


def params_validator_for(
    vllm_config: Any, custom_logitsprocs: CustomLogitsProcs | None = None
) -> Callable[[SamplingParams], None]:
    """The frontend's per-request validator for the interface in force."""
    custom = _configured_custom(vllm_config, custom_logitsprocs)
    if uses_v2_interface(vllm_config):
        return build_custom_logits_processors_params_validator(custom)
    return functools.partial(validate_logits_processors_parameters, custom)


def clear_caches() -> None:
    """Forget the frontend caches of loaded classes (vLLM never does; tests need it)."""
    cached_load_custom_logitsprocs.cache_clear()
    _cached_load_v2_logitsprocs.cache_clear()
