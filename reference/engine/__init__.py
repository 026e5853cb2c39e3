"""The reference engine proper: `LLM`, `AsyncLLM` and `EngineArgs`, with the engine core,
scheduler, executors, workers and sampler behind them (see docs/engine.md).

Nothing here imports torch until a model is built.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "LLM": "reference.engine.llm",
    "AsyncLLM": "reference.engine.async_llm",
    "EngineArgs": "reference.engine.args",
    "AsyncEngineArgs": "reference.engine.args",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
