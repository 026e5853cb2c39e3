"""Loading logits processors, as vLLM 0.32 does, for the V1 and the Model Runner V2 interface.

Sources are the `vllm.logits_processors` entry points (never filtered by `VLLM_PLUGINS`)
and `module:Qualname` strings or classes; `*_for(vllm_config)` picks the interface in force.
"""

from __future__ import annotations

import functools
import importlib
import itertools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from reference.logger import init_logger
from reference.logits import default_use_v2_model_runner, v1, v2
from reference.logits.errors import VLLMValidationError
from reference.plugins import LOGITSPROCS_GROUP, discover_entry_points

if TYPE_CHECKING:
    import torch

    from reference.sampling_params import SamplingParams

logger = init_logger("vllm.v1.sample.logits_processor")
v2_logger = init_logger("vllm.v1.worker.gpu.sample.logits_processor.loader")

_V2_BASE = "vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor"

CustomLogitsProcs = Sequence["str | type"]


# --------------------------------------------------------------------------------------------
# Shared mechanics


def _load_entry_point_classes(log: Any) -> list[tuple[str, Any]]:
    """Load every `vllm.logits_processors` entry point; any failure aborts startup."""
    entry_points = discover_entry_points(LOGITSPROCS_GROUP)
    if not entry_points:
        log.debug("No logitsprocs plugins installed (group %s).", LOGITSPROCS_GROUP)
        return []
    log.debug("Loading installed logitsprocs plugins (group %s):", LOGITSPROCS_GROUP)
    loaded = []
    for entrypoint in entry_points:
        try:
            log.debug(
                "- Loading logitproc plugin entrypoint=%s target=%s",
                entrypoint.name,
                entrypoint.value,
            )
            loaded.append((entrypoint.name, entrypoint.load()))
        except Exception as e:
            log.error("Failed to load LogitsProcessor plugin %s: %s", entrypoint, e)
            raise RuntimeError(f"Failed to load LogitsProcessor plugin {entrypoint}") from e
    return loaded


def _import_fqcn(ldx: int, fqcn: str, log: Any) -> Any:
    """Resolve `module:Qualname`; the dotted `module.Qualname` form is not accepted."""
    if not isinstance(fqcn, str):
        raise TypeError(
            f"Logits processor #{ldx} is {fqcn!r}; expected a LogitsProcessor subclass or a "
            "'<module>:<type>' string."
        )
    log.debug("- Loading logits processor %s", fqcn)
    parts = fqcn.split(":")
    if len(parts) != 2:
        raise ValueError(
            f"Invalid logits processor FQCN {fqcn!r}. Expected format: '<module>:<type>'"
        )
    module_path, qualname = parts
    try:
        module = importlib.import_module(module_path)
    except Exception as e:
        log.error("Failed to load %sth LogitsProcessor plugin %s: %s", ldx, fqcn, e)
        raise RuntimeError(f"Failed to load {ldx}th LogitsProcessor plugin {fqcn}") from e
    obj: Any = module
    for attr in qualname.split("."):
        obj = getattr(obj, attr)
    if not isinstance(obj, type):
        raise ValueError("Loaded logit processor must be a type.")
    return obj


def _run_validate_params(cls: type, sampling_params: SamplingParams) -> None:
    """Call `cls.validate_params`; a plain ValueError becomes a VLLMValidationError (HTTP 400)."""
    try:
        cls.validate_params(sampling_params)
    except VLLMValidationError:
        raise
    except ValueError as e:
        raise VLLMValidationError(str(e)) from e


# --------------------------------------------------------------------------------------------
# V1 runner: `vllm.v1.sample.logits_processor`


def _load_logitsprocs_plugins() -> list[type[v1.LogitsProcessor]]:
    """Every installed entry-point class, unchecked: V1 does not verify the base class."""
    return [cls for _, cls in _load_entry_point_classes(logger)]


def _load_logitsprocs_by_fqcns(
    logits_processors: CustomLogitsProcs | None,
) -> list[type[v1.LogitsProcessor]]:
    """Turn a mixed list of V1 classes and `module:Qualname` strings into classes."""
    if not logits_processors:
        return []
    logger.debug(
        "%s additional custom logits processors specified, checking whether they need to be "
        "loaded.",
        len(logits_processors),
    )
    classes: list[type[v1.LogitsProcessor]] = []
    for ldx, item in enumerate(logits_processors):
        if isinstance(item, type):
            logger.debug(" - Already-loaded logit processor: %s", item.__name__)
            if not issubclass(item, v1.LogitsProcessor):
                raise ValueError(f"{item.__name__} is not a subclass of LogitsProcessor")
            classes.append(item)
            continue
        obj = _import_fqcn(ldx, item, logger)
        if not issubclass(obj, v1.LogitsProcessor):
            raise ValueError(f"{obj.__name__} must be a subclass of LogitsProcessor")
        classes.append(obj)
    return classes


def _load_custom_logitsprocs(
    logits_processors: CustomLogitsProcs | None,
) -> list[type[v1.LogitsProcessor]]:
    """Installed plugins first, then the caller's list (nothing at all on TPU)."""
    from reference.platforms import current_platform

    if current_platform.is_tpu():
        return []
    return _load_logitsprocs_plugins() + _load_logitsprocs_by_fqcns(logits_processors)


#: The frontend's loader: called with a tuple (or None) so the result can be cached.
cached_load_custom_logitsprocs = functools.lru_cache(_load_custom_logitsprocs)


def build_logitsprocs(
    vllm_config: Any,
    device: torch.device | str,
    is_pin_memory: bool,
    is_pooling_model: bool,
    custom_logitsprocs: CustomLogitsProcs = (),
) -> v1.LogitsProcessors:
    """The V1 runner's processors: the built-ins, then plugins, then `custom_logitsprocs`.

    Pooling models get none, and with speculative decoding only min-tokens runs; in both
    cases installed plugins are not even imported, and a custom list is an error.
    """
    if is_pooling_model:
        if custom_logitsprocs:
            raise ValueError(v1.STR_POOLING_REJECTS_LOGITSPROCS)
        logger.debug(
            "Skipping logits processor loading because pooling models do not support logits "
            "processors."
        )
        return v1.LogitsProcessors()
    if getattr(vllm_config, "speculative_config", None):
        if custom_logitsprocs:
            raise ValueError(v1.STR_SPEC_DEC_REJECTS_LOGITSPROCS)
        logger.warning("min_p and logit_bias parameters won't work with speculative decoding.")
        return v1.LogitsProcessors(
            [v1.MinTokensLogitsProcessor(vllm_config, device, is_pin_memory)]
        )
    classes = _load_custom_logitsprocs(custom_logitsprocs)
    return v1.LogitsProcessors(
        ctor(vllm_config, device, is_pin_memory)
        for ctor in itertools.chain(v1.BUILTIN_LOGITS_PROCESSORS, classes)
    )


def validate_logits_processors_parameters(
    logits_processors: CustomLogitsProcs | None, sampling_params: SamplingParams
) -> None:
    """Run every custom processor's `validate_params` on a request (frontend, V1 runner)."""
    key = tuple(logits_processors) if logits_processors is not None else None
    for cls in cached_load_custom_logitsprocs(key):
        _run_validate_params(cls, sampling_params)


# --------------------------------------------------------------------------------------------
# Model Runner V2: `vllm.v1.worker.gpu.sample.logits_processor`


def _load_v2_logitsprocs_plugins() -> list[type[v2.LogitsProcessor]]:
    """Every installed entry-point class; a V1-interface class is rejected at load time."""
    classes = []
    for name, cls in _load_entry_point_classes(v2_logger):
        if not (isinstance(cls, type) and issubclass(cls, v2.LogitsProcessor)):
            raise ValueError(
                f"LogitsProcessor plugin {name} is not a subclass of {_V2_BASE}; V1-interface "
                "plugins are not supported by the V2 model runner."
            )
        classes.append(cls)
    return classes


def _load_v2_logitsprocs_by_fqcns(
    logits_processors: CustomLogitsProcs,
) -> list[type[v2.LogitsProcessor]]:
    """Turn a mixed list of V2 classes and `module:Qualname` strings into classes."""
    classes: list[type[v2.LogitsProcessor]] = []
    for ldx, item in enumerate(logits_processors):
        if isinstance(item, type):
            v2_logger.debug(" - Already-loaded logit processor: %s", item.__name__)
            obj = item
        else:
            obj = _import_fqcn(ldx, item, v2_logger)
        if not issubclass(obj, v2.LogitsProcessor):
            raise ValueError(f"{obj.__name__} is not a subclass of {_V2_BASE}")
        classes.append(obj)
    return classes


def _load_v2_logitsprocs(
    logits_processors: CustomLogitsProcs | None,
) -> list[type[v2.LogitsProcessor]]:
    """Installed plugins first, then the caller's list."""
    return _load_v2_logitsprocs_plugins() + _load_v2_logitsprocs_by_fqcns(logits_processors or ())


@functools.lru_cache
def _cached_load_v2_logitsprocs(
    custom_logitsprocs: tuple[str | type, ...],
) -> list[type[v2.LogitsProcessor]]:
    return _load_v2_logitsprocs(list(custom_logitsprocs))


def build_custom_logits_processors(
    vllm_config: Any,
    req_states: Any,
    is_pooling_model: bool,
    custom_logitsprocs: CustomLogitsProcs = (),
) -> list[v2.LogitsProcessor]:
    """The V2 runner's custom processors, entry-point plugins first.

    Built-ins are not processors under MRV2, and speculative decoding is not rejected.
    `req_states` is a `LogitsProcRequestState` or a runner state it can be made from.
    """
    if is_pooling_model:
        if custom_logitsprocs:
            raise ValueError(v1.STR_POOLING_REJECTS_LOGITSPROCS)
        v2_logger.debug(
            "Skipping logits processor loading because pooling models do not support logits "
            "processors."
        )
        return []
    classes = _load_v2_logitsprocs(custom_logitsprocs)
    if not isinstance(req_states, v2.LogitsProcRequestState):
        req_states = v2.LogitsProcRequestState.from_request_state(req_states)
    return [ctor(vllm_config, req_states) for ctor in classes]


def build_custom_logits_processors_params_validator(
    custom_logitsprocs: CustomLogitsProcs | None,
) -> Callable[[SamplingParams], None]:
    """Load the classes once (at startup) and return the per-request validator.

    As in vLLM, with no custom list nothing is validated at admission, not even the
    entry-point plugins' `validate_params`.
    """
    if not custom_logitsprocs:
        return lambda _sampling_params: None
    classes = _cached_load_v2_logitsprocs(tuple(custom_logitsprocs))

    def validate_params(sampling_params: SamplingParams) -> None:
        for cls in classes:
            _run_validate_params(cls, sampling_params)

    return validate_params


# --------------------------------------------------------------------------------------------
# The interface in force


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
    model_config = vllm_config.model_config
    hf_config = model_config.hf_config
    max_model_len = model_config.max_model_len or hf_config.get("max_position_embeddings") or 2048
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
