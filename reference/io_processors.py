"""IO processor plugins: the `IOProcessor` interface of vLLM 0.32 and how a pooling model's
processor is chosen (`vllm.plugins.io_processors` and its `interface` module).

Interface history (what a plugin written for an older vLLM looks like):

- v0.10.2 to v0.16: `__init__(vllm_config)`; abstract `parse_request(request)` and
  `output_to_response(plugin_output)`; `validate_or_generate_params(params)` returned
  `params or PoolingParams()`; `get_io_processor(vllm_config, plugin_from_init=None)`.
- about v0.17 to v0.18: `__init__(vllm_config, renderer)`; `parse_data` and
  `merge_sampling_params` / `merge_pooling_params` arrive, and the old names still work through
  shims that emit a `DeprecationWarning`; `output_to_response` is no longer called.
- by v0.29, through 0.32 (this module): the shims are gone. A plugin that still defines only
  `parse_request` gets the default `parse_data`, which raises NotImplementedError.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Generic, TypeVar

from reference.config import VllmConfig
from reference.inputs import PromptType
from reference.logger import init_logger
from reference.outputs import PoolingRequestOutput
from reference.plugins import IO_PROCESSOR_PLUGINS_GROUP, load_plugins_by_group
from reference.pooling_params import PoolingParams
from reference.sampling_params import SamplingParams
from reference.utils import resolve_obj_by_qualname

logger = init_logger("vllm.plugins.io_processors")

IOProcessorInput = TypeVar("IOProcessorInput")
IOProcessorOutput = TypeVar("IOProcessorOutput")


class BaseRenderer:
    """What turns prompts into engine inputs (vLLM's `vllm.renderers.BaseRenderer`).

    IO processors receive one at construction. The reference's renderer only carries the
    config and the tokenizer (None for pooling models served with `skip_tokenizer_init`).
    """

    def __init__(self, config: VllmConfig | None = None, tokenizer: Any = None) -> None:
        self.config = config
        self.tokenizer = tokenizer


class IOProcessor(ABC, Generic[IOProcessorInput, IOProcessorOutput]):
    """Turns a request's `data` into prompts for a pooling model, and the model's outputs for
    those prompts into the response.

    Flow: `parse_data(data)` → `pre_process(prompt, request_id=...)` → the engine pools each
    prompt with `merge_pooling_params()` → `post_process(outputs, request_id=...)`.
    """

    def __init__(self, vllm_config: VllmConfig, renderer: BaseRenderer) -> None:
        super().__init__()
        self.vllm_config = vllm_config

    def parse_data(self, data: object) -> IOProcessorInput:
        """Validate a request's raw `data` and turn it into this processor's input type."""
        raise NotImplementedError(
            f"{type(self).__qualname__} does not implement parse_data(), so it cannot take "
            "requests. Implement parse_data(self, data) (before vLLM ~0.17 it was called "
            "parse_request)."
        )

    def merge_sampling_params(self, params: SamplingParams | None = None) -> SamplingParams:
        """The sampling parameters to use: the request's, or the defaults."""
        return params or SamplingParams()

    def merge_pooling_params(self, params: PoolingParams | None = None) -> PoolingParams:
        """The pooling parameters to use: the request's, or the plugin task's defaults."""
        return params or PoolingParams(task="plugin")

    @abstractmethod
    def pre_process(
        self, prompt: IOProcessorInput, request_id: str | None = None, **kwargs: Any
    ) -> PromptType | Sequence[PromptType]:
        """The engine prompt (or prompts) for one parsed request."""

    async def pre_process_async(
        self, prompt: IOProcessorInput, request_id: str | None = None, **kwargs: Any
    ) -> PromptType | Sequence[PromptType]:
        return self.pre_process(prompt, request_id, **kwargs)

    @abstractmethod
    def post_process(
        self,
        model_output: Sequence[PoolingRequestOutput],
        request_id: str | None = None,
        **kwargs: Any,
    ) -> IOProcessorOutput:
        """The response for one request, from the outputs of its prompts in prompt order."""

    async def post_process_async(
        self,
        model_output: AsyncGenerator[tuple[int, PoolingRequestOutput], None],
        request_id: str | None = None,
        **kwargs: Any,
    ) -> IOProcessorOutput:
        """Collect `(prompt index, output)` pairs as they finish, then `post_process` them in
        prompt order."""
        pairs = [pair async for pair in model_output]
        ordered = [output for _, output in sorted(pairs, key=lambda pair: pair[0])]
        return self.post_process(ordered, request_id=request_id, **kwargs)


def _requested_plugin(vllm_config: VllmConfig, plugin_from_init: str | None) -> str | None:
    """The plugin name the engine argument gives, else the one the model's config.json gives."""
    if plugin_from_init:
        return plugin_from_init
    return vllm_config.model_config.hf_config.to_dict().get("io_processor_plugin")


def _loadable_plugins() -> dict[str, str]:
    """Call every admitted plugin function (not only the requested one), as vLLM does."""
    loadable: dict[str, str] = {}
    for name, func in load_plugins_by_group(IO_PROCESSOR_PLUGINS_GROUP).items():
        try:
            qualname = func()
        except Exception:
            logger.warning("Failed to load plugin %s.", name, exc_info=True)
            continue
        if qualname is not None:
            loadable[name] = qualname
    return loadable


def has_io_processor(vllm_config: VllmConfig, plugin_from_init: str | None = None) -> bool:
    """Whether an IO processor is requested; loads nothing (`get_io_processor` may still fail)."""
    return _requested_plugin(vllm_config, plugin_from_init) is not None


def get_io_processor(
    vllm_config: VllmConfig, renderer: BaseRenderer, plugin_from_init: str | None = None
) -> IOProcessor | None:
    """Build the IO processor requested by `plugin_from_init` or by the model's config.json.

    Returns None when neither names one. Raises ValueError when none is installed or the
    requested name is not among those installed.
    """
    model_plugin = _requested_plugin(vllm_config, plugin_from_init)
    if model_plugin is None:
        logger.debug("No IOProcessor plugins requested by the model")
        return None
    loadable = _loadable_plugins()
    if not loadable:
        raise ValueError(f"No IOProcessor plugins installed but one is required ({model_plugin}).")
    if model_plugin not in loadable:
        raise ValueError(
            f"The model requires the '{model_plugin}' IO Processor plugin but it is not "
            f"installed. Available plugins: {list(loadable)}"
        )
    processor_cls = resolve_obj_by_qualname(loadable[model_plugin])
    return processor_cls(vllm_config, renderer)
