"""The reference engine: an independent, readable implementation of vLLM's plugin contract.

Importing `reference` never mounts it as `vllm`; call `reference.surface.mount()` for that.
The names vLLM exports at top level (`ModelRegistry`, `SamplingParams`, …) resolve lazily,
so importing the package stays cheap and torch-free.
"""

from __future__ import annotations

import importlib
from typing import Any

from reference import _version
from reference._version import HARNESS_VERSION

_LAZY = {
    "ModelRegistry": "reference.models.registry",
    "SamplingParams": "reference.sampling_params",
    "PoolingParams": "reference.pooling_params",
    "RequestOutput": "reference.outputs",
    "CompletionOutput": "reference.outputs",
    "PoolingRequestOutput": "reference.outputs",
    "TextPrompt": "reference.inputs",
    "TokensPrompt": "reference.inputs",
    "LLM": "reference.engine.llm",
    # As in 0.32: the v1 AsyncLLM is exported at top level only as `AsyncLLMEngine`; its own
    # path is `vllm.v1.engine.async_llm.AsyncLLM`.
    "AsyncLLMEngine": "reference.engine.async_llm",
    "EngineArgs": "reference.engine.args",
    "AsyncEngineArgs": "reference.engine.args",
}


def __getattr__(name: str) -> Any:
    if name in ("CONTRACT_VERSION", "__version__"):
        # Read on each access: the contract modelled comes from the environment.
        return getattr(_version, name)
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vllm' has no attribute {name!r}")


__all__ = ["CONTRACT_VERSION", "HARNESS_VERSION", "__version__", *_LAZY]
