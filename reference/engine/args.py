"""`EngineArgs` (`vllm.engine.arg_utils`): the user's engine options, turned into a `VllmConfig`.

As in vLLM 0.32, building an `EngineArgs` loads the general plugins of this process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reference.config import (
    CacheConfig,
    HfConfig,
    LoRAConfig,
    ModelConfig,
    ParallelConfig,
    PoolerConfig,
    SchedulerConfig,
    VllmConfig,
)


@dataclass
class EngineArgs:
    """Engine options; only those the reference engine uses are modelled.

    `tensor_parallel_size=N` starts N workers. The reference does not shard a model: every
    worker holds a full replica and runs every step, and the engine takes rank 0's results
    (see docs/engine.md). `num_workers`, where given, overrides the worker count.
    """

    model: str = ""
    tokenizer: str | None = None
    skip_tokenizer_init: bool = False
    dtype: str = "auto"
    seed: int = 0
    max_model_len: int | None = None
    served_model_name: str | None = None
    runner: str = "auto"
    max_num_seqs: int = 16
    max_num_batched_tokens: int = 2048
    block_size: int = 16
    # Accepted for vLLM's signature; the reference sizes each request's cache as it grows, so
    # neither reserves memory up front.
    gpu_memory_utilization: float = 0.92
    kv_cache_memory_bytes: int | None = None
    # The reference never compiles or captures graphs: it is always "eager".
    enforce_eager: bool = False
    tensor_parallel_size: int = 1
    num_workers: int | None = None
    distributed_executor_backend: str | None = None
    worker_cls: str = "auto"
    worker_extension_cls: str = ""
    logits_processors: list[str | type] | None = None
    io_processor_plugin: str | None = None
    pooler_config: Any = None
    enable_lora: bool = False
    max_loras: int = 1
    max_lora_rank: int = 16
    disable_log_stats: bool = True
    additional_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # vLLM loads general plugins here, so a plugin can add what later options refer to
        # (an architecture, a quantization method) before the config is built.
        from reference.plugins import load_general_plugins

        load_general_plugins()

    def _runner_type(self, hf_config: HfConfig) -> str:
        if self.runner in ("generate", "pooling"):
            return self.runner
        if self.runner != "auto":
            raise ValueError(
                f"Unknown runner {self.runner!r}; use 'auto', 'generate' or 'pooling'."
            )
        from reference.models.registry import ModelRegistry

        archs = list(hf_config.get("architectures") or [])
        if not archs:
            raise ValueError(
                f"{self.model}/config.json names no `architectures`; the engine cannot tell "
                "which model class to build."
            )
        return "pooling" if ModelRegistry.is_pooling_model(archs) else "generate"

    def create_engine_config(self) -> VllmConfig:
        """The `VllmConfig` (the platform applies its defaults and sets `worker_cls`).

        From the 0.34 contract it first has the platform validate the environment, as vLLM
        does there (`Platform.validate_environ`: removed variables are errors); before 0.34
        the reference skips that call (see docs/deviations.md).
        """
        from reference._version import contract_at_least

        if contract_at_least("0.34.0"):
            from reference.platforms import current_platform

            current_platform.validate_environ(hard_fail=False)
        if not self.model:
            raise ValueError("EngineArgs.model is empty; pass the directory of a local checkpoint.")
        hf_config = HfConfig.from_pretrained(self.model)
        pooler = self.pooler_config
        if isinstance(pooler, dict):
            pooler = PoolerConfig(**pooler)
        runner_type = self._runner_type(hf_config)
        if runner_type == "pooling" and pooler is None:
            pooler = PoolerConfig()  # as vLLM: a pooling model always has a pooler config
        max_model_len = self.max_model_len or hf_config.get("max_position_embeddings")
        model_config = ModelConfig(
            model=str(self.model),
            tokenizer=str(self.tokenizer or self.model),
            dtype=self.dtype,
            seed=self.seed,
            max_model_len=max_model_len,
            hf_config=hf_config,
            io_processor_plugin=self.io_processor_plugin,
            logits_processors=self.logits_processors,
            runner_type=runner_type,
            pooler_config=pooler,
            skip_tokenizer_init=self.skip_tokenizer_init,
            served_model_name=self.served_model_name,
        )
        workers = self.num_workers if self.num_workers is not None else self.tensor_parallel_size
        if workers < 1:
            raise ValueError(f"The engine needs at least one worker, got {workers}.")
        backend = self.distributed_executor_backend
        if backend is None:
            backend = "mp" if workers > 1 else "uni"
        if backend not in ("uni", "mp", "ray"):
            raise ValueError(
                f"distributed_executor_backend={backend!r} is not supported by the reference "
                "engine; use 'uni' (in process), 'mp' (spawned worker processes) or 'ray' "
                "(Ray actors; `pip install ray`)."
            )
        if backend == "uni" and workers > 1:
            raise ValueError(
                f"{workers} workers need distributed_executor_backend='mp' (or 'ray'); 'uni' "
                "runs one worker in the engine's own process."
            )
        return VllmConfig(
            model_config=model_config,
            cache_config=CacheConfig(block_size=self.block_size),
            parallel_config=ParallelConfig(
                tensor_parallel_size=workers,
                distributed_executor_backend=backend,
                worker_cls=self.worker_cls,
                worker_extension_cls=self.worker_extension_cls,
            ),
            scheduler_config=SchedulerConfig(
                max_num_seqs=self.max_num_seqs,
                max_num_batched_tokens=self.max_num_batched_tokens,
                max_model_len=max_model_len,
            ),
            lora_config=(
                LoRAConfig(max_loras=self.max_loras, max_lora_rank=self.max_lora_rank)
                if self.enable_lora
                else None
            ),
            additional_config=dict(self.additional_config),
        )


@dataclass
class AsyncEngineArgs(EngineArgs):
    """The options of the async engine (`AsyncLLM`); the same fields here."""

    disable_log_stats: bool = False
