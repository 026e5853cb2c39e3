"""`LLMEngine`, the engine the offline `LLM` is built on (vLLM's
`vllm.v1.engine.llm_engine`): `LLM(...)` makes its engine with `LLMEngine.from_engine_args`,
so a plugin that wraps that class method (to read its own metadata from the model's checkpoint
before the engine starts, as flash-head does) sees every offline engine start, here as in vLLM.
It holds the config and the engine core; requests go through `LLM`.
"""

from __future__ import annotations

from typing import Any

from reference.config import VllmConfig
from reference.engine.args import EngineArgs
from reference.engine.core import EngineCore

__all__ = ["LLMEngine"]


class LLMEngine:
    """The config and the engine core of one offline engine (`LLM.llm_engine`)."""

    def __init__(
        self,
        vllm_config: VllmConfig,
        executor_class: Any,
        log_stats: bool,
        aggregate_engine_logging: bool = False,
        usage_context: Any = None,
        stat_loggers: list[Any] | None = None,
        mm_registry: Any = None,
        multiprocess_mode: bool = False,
    ) -> None:
        # The reference's engine core picks its executor from the config itself
        # (`distributed_executor_backend`); the offline engine runs no stat loggers.
        self.vllm_config = vllm_config
        self.log_stats = log_stats
        self.engine_core = EngineCore(vllm_config)

    @classmethod
    def from_engine_args(
        cls,
        engine_args: EngineArgs,
        usage_context: Any = None,
        stat_loggers: list[Any] | None = None,
        enable_multiprocessing: bool = False,
    ) -> LLMEngine:
        """An engine for `engine_args`: their config, built now (the platform's hooks run)."""
        config = engine_args.create_engine_config()
        return cls(
            config,
            executor_class=None,
            log_stats=not getattr(engine_args, "disable_log_stats", True),
            usage_context=usage_context,
            stat_loggers=stat_loggers,
            multiprocess_mode=enable_multiprocessing,
        )
