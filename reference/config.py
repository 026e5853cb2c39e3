"""The engine configuration (`VllmConfig` and its parts) that plugins receive.

Only the fields the plugin contract touches are modelled. Building a `VllmConfig` applies
the platform's defaults and `check_and_update_config`, as vLLM 0.32's `__post_init__` does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class HfConfig:
    """A model's `config.json`, with attribute access and `to_dict()` like transformers'."""

    def __init__(self, values: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.__dict__.update(values or {})
        self.__dict__.update(kwargs)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> HfConfig:
        path = Path(model_dir) / "config.json"
        try:
            return cls(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{model_dir} has no config.json; the reference engine loads local Hugging Face "
                "checkpoints only (no hub downloads)."
            ) from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def get(self, key: str, default: Any = None) -> Any:
        return self.__dict__.get(key, default)

    def __repr__(self) -> str:
        return f"HfConfig({self.__dict__!r})"


@dataclass
class PoolerConfig:
    """How a pooling model pools: `LAST`, `MEAN` or `CLS`, normalised or not (vLLM's
    `vllm.config.PoolerConfig`; a pooling model always has one)."""

    pooling_type: str | None = None
    normalize: bool | None = None


@dataclass
class ModelConfig:
    model: str = ""
    tokenizer: str | None = None
    dtype: str = "auto"
    seed: int = 0
    max_model_len: int | None = None
    hf_config: HfConfig = field(default_factory=HfConfig)
    io_processor_plugin: str | None = None
    logits_processors: list[str | type] | None = None
    runner_type: str = "generate"
    enforce_eager: bool = True
    #: How a pooling model pools (`EngineArgs` gives every pooling model one; None otherwise).
    pooler_config: Any = None
    skip_tokenizer_init: bool = False
    #: The name requests use for the base model (`served_model_name`, else `model`).
    served_model_name: str | None = None

    @property
    def architectures(self) -> list[str]:
        return list(self.hf_config.get("architectures") or [])

    @property
    def is_pooling_model(self) -> bool:
        return self.runner_type == "pooling"


@dataclass
class CacheConfig:
    block_size: int = 16
    num_gpu_blocks: int | None = None
    num_cpu_blocks: int | None = None
    cache_dtype: str = "auto"
    #: vLLM's field (on by default in V1); platforms read and set it, the reference's
    #: scheduler does not cache prefixes.
    enable_prefix_caching: bool = True


@dataclass
class ParallelConfig:
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    distributed_executor_backend: str | None = None
    worker_cls: str = "auto"
    worker_extension_cls: str = ""
    #: Set by `WorkerBase.set_kv_cache_layout` from the 0.33 contract on.
    cp_kv_cache_interleave_size: int = 1

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size


@dataclass
class SchedulerConfig:
    max_num_seqs: int = 16
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None


@dataclass
class DeviceConfig:
    device: str = "auto"


@dataclass
class LoadConfig:
    load_format: str = "auto"


@dataclass
class LoRAConfig:
    max_loras: int = 1
    max_lora_rank: int = 16


@dataclass
class CompilationConfig:
    custom_ops: list[str] = field(default_factory=list)
    level: int = 0
    #: Layer name -> layer, filled as the model is built (attention layers register here);
    #: platform workers read it (vllm-spyre-next). Not a constructor argument, as in vLLM.
    static_forward_context: dict[str, Any] = field(default_factory=dict, init=False)


@dataclass
class ObservabilityConfig:
    collect_detailed_traces: list[str] | None = None


@dataclass
class VllmConfig:
    """The whole engine configuration. As in vLLM 0.32, a bare `VllmConfig()` has no model
    (`model_config` is None): the engine always passes one, and every step of `__post_init__`,
    the platform's `check_and_update_config` included, runs with or without it."""

    model_config: ModelConfig | None = None
    cache_config: CacheConfig = field(default_factory=CacheConfig)
    parallel_config: ParallelConfig = field(default_factory=ParallelConfig)
    scheduler_config: SchedulerConfig = field(default_factory=SchedulerConfig)
    device_config: DeviceConfig = field(default_factory=DeviceConfig)
    load_config: LoadConfig = field(default_factory=LoadConfig)
    lora_config: LoRAConfig | None = None
    compilation_config: CompilationConfig = field(default_factory=CompilationConfig)
    observability_config: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    speculative_config: Any = None
    #: Encoder-cache transfer between instances (vLLM's `ECTransferConfig`); the reference
    #: runs one instance and never sets it (`vllm.distributed.ec_transfer`).
    ec_transfer_config: Any = None
    additional_config: dict[str, Any] = field(default_factory=dict)
    use_v2_model_runner: bool | None = None

    def __post_init__(self) -> None:
        from reference.platforms import current_platform

        if self.use_v2_model_runner is None:
            from reference.logits import default_use_v2_model_runner

            self.use_v2_model_runner = default_use_v2_model_runner(self)
        current_platform.apply_config_platform_defaults(self)
        current_platform.check_and_update_config(self)


_current_vllm_config: VllmConfig | None = None


def get_current_vllm_config() -> VllmConfig:
    """The config of the engine being built (a default one outside any engine)."""
    return _current_vllm_config if _current_vllm_config is not None else VllmConfig()


class set_current_vllm_config:
    """`with set_current_vllm_config(cfg):` makes `cfg` current while layers are built."""

    def __init__(self, vllm_config: VllmConfig) -> None:
        self.vllm_config = vllm_config
        self._previous: VllmConfig | None = None

    def __enter__(self) -> VllmConfig:
        global _current_vllm_config
        self._previous, _current_vllm_config = _current_vllm_config, self.vllm_config
        return self.vllm_config

    def __exit__(self, *exc: object) -> None:
        global _current_vllm_config
        _current_vllm_config = self._previous
