"""Workers (`vllm.v1.worker.worker_base`, `cpu_worker`, `gpu_worker`): what runs a model.

`WorkerWrapperBase.init_worker` loads the general plugins of the worker's process, resolves
the platform there and builds the class named by `parallel_config.worker_cls`, as vLLM 0.32
does. Importing this module imports no torch.
"""

from __future__ import annotations

import os
from typing import Any

from reference.config import VllmConfig, set_current_vllm_config
from reference.logger import init_logger
from reference.utils import resolve_obj_by_qualname

logger = init_logger("vllm.v1.worker.worker_base")


class WorkerBase:
    """A worker: one device, one model runner. Subclasses pick the device."""

    def __init__(
        self,
        vllm_config: VllmConfig,
        local_rank: int = 0,
        rank: int = 0,
        distributed_init_method: str | None = None,
        is_driver_worker: bool = False,
    ) -> None:
        self.vllm_config = vllm_config
        self.model_config = vllm_config.model_config
        self.parallel_config = vllm_config.parallel_config
        self.local_rank = local_rank
        self.rank = rank
        self.distributed_init_method = distributed_init_method
        self.is_driver_worker = is_driver_worker
        self.device: Any = None
        self.model_runner: Any = None

    def device_name(self) -> str:
        return "cpu"

    def init_device(self) -> None:
        import torch

        from reference.engine.model_runner import ModelRunner

        self.device = torch.device(self.device_name())
        self.model_runner = ModelRunner(self.vllm_config, self.device)

    def load_model(self) -> None:
        with set_current_vllm_config(self.vllm_config):
            self.model_runner.load_model()

    def execute_model(self, scheduler_output: Any) -> Any:
        with set_current_vllm_config(self.vllm_config):
            return self.model_runner.execute_model(scheduler_output)

    def get_model(self) -> Any:
        return self.model_runner.model

    def set_kv_cache_layout(self, kv_cache_layout: str, *args: Any) -> None:
        """Record the KV-cache layout the engine core chose. From the 0.33 contract the engine
        also passes `cp_kv_cache_interleave_size` (an int), stored on `parallel_config`; an
        override in a platform's worker must accept both arguments there."""
        from reference._version import contract_at_least

        expected = 2 if contract_at_least("0.33.0") else 1
        if 1 + len(args) != expected:
            raise TypeError(
                f"set_kv_cache_layout() takes {expected} argument(s) under this contract "
                f"(kv_cache_layout{', cp_kv_cache_interleave_size' if expected == 2 else ''}), "
                f"got {1 + len(args)}"
            )
        self.kv_cache_layout = kv_cache_layout
        if args:
            self.parallel_config.cp_kv_cache_interleave_size = int(args[0])

    def shutdown(self) -> None:
        """Release what the worker holds (the reference's workers hold nothing to release)."""

    def _lora_manager(self) -> Any:
        manager = self.model_runner.lora_manager
        if manager is None:
            raise ValueError("LoRA is off in this engine; build it with enable_lora=True.")
        return manager

    def add_lora(self, lora_request: Any) -> bool:
        """Load an adapter now (it stays loaded until evicted by more than max_loras)."""
        self._lora_manager().activate(lora_request)
        return True

    def remove_lora(self, lora_int_id: int) -> bool:
        return self._lora_manager().remove(lora_int_id)

    def list_loras(self) -> set[int]:
        return self._lora_manager().list_loras()

    # Introspection RPCs: what this worker's process sees (used by tests and conformance).

    def describe_process(self) -> dict[str, Any]:
        """This worker's pid, rank, platform and worker class."""
        from reference.platforms import current_platform

        return {
            "pid": os.getpid(),
            "rank": self.rank,
            "platform": type(current_platform).__qualname__,
            "device_name": current_platform.device_name,
            "worker_cls": f"{type(self).__module__}.{type(self).__qualname__}",
        }

    def custom_op_class(self, op_name: str = "RotaryEmbedding") -> str:
        """The class an in-tree custom op constructs as in this worker (after OOT replacement)."""
        import torch

        with set_current_vllm_config(self.vllm_config):
            if op_name == "RotaryEmbedding":
                from reference.ops.rotary_embedding import RotaryEmbedding

                op = RotaryEmbedding(64, 64, 256, 10000.0, True, torch.float32)
            elif op_name == "RMSNorm":
                from reference.ops.layernorm import RMSNorm

                op = RMSNorm(64)
            else:
                raise ValueError(f"Unknown op {op_name!r}; use 'RotaryEmbedding' or 'RMSNorm'.")
        return f"{type(op).__module__}.{type(op).__qualname__}"


class CPUWorker(WorkerBase):
    """A worker computing on the host CPU."""


class GPUWorker(WorkerBase):
    """A worker on CUDA device `local_rank`."""

    def device_name(self) -> str:
        import torch

        # Replicas may outnumber the devices: ranks share them round-robin.
        return f"cuda:{self.local_rank % max(1, torch.cuda.device_count())}"

    def init_device(self) -> None:
        import torch

        torch.cuda.set_device(torch.device(self.device_name()))
        super().init_device()


def _inject_extension(worker_cls: type, extension_cls: type) -> None:
    """Make `extension_cls` a base of `worker_cls`, as vLLM does for `worker_extension_cls`, so
    that `collective_rpc` can call its methods; a name both define is an error."""
    if extension_cls in worker_cls.__bases__:
        return
    for attr in dir(extension_cls):
        if attr.startswith("__"):
            continue
        if hasattr(worker_cls, attr):
            raise AssertionError(
                f"Worker class {worker_cls} already has an attribute {attr}, which conflicts "
                f"with the worker extension class {extension_cls}."
            )
    worker_cls.__bases__ = (*worker_cls.__bases__, extension_cls)
    logger.info("Injected %s into %s", extension_cls, worker_cls)


class WorkerWrapperBase:
    """Holds the worker of one rank; `init_worker` builds it in the process that will run it."""

    def __init__(self, vllm_config: VllmConfig | None = None, rpc_rank: int = 0) -> None:
        self.rpc_rank = rpc_rank
        self.vllm_config = vllm_config
        self.worker: WorkerBase | None = None
        self.extension_cls: type | None = None

    def init_worker(self, all_kwargs: list[dict[str, Any]]) -> None:
        """Load this process's general plugins, resolve its platform, build the worker."""
        kwargs = all_kwargs[self.rpc_rank]
        vllm_config: VllmConfig = kwargs["vllm_config"]
        self.vllm_config = vllm_config
        # Plugins must be loaded in every process (contract §5): a worker is often a fresh
        # interpreter whose registries are empty.
        from reference.plugins import load_general_plugins

        load_general_plugins()
        from reference.platforms import current_platform

        logger.debug("Worker rank %d runs on platform %s", self.rpc_rank, current_platform)
        worker_cls = vllm_config.parallel_config.worker_cls
        if worker_cls == "auto":
            raise ValueError(
                "parallel_config.worker_cls is still 'auto': the platform's "
                "check_and_update_config() must set it to the worker class to use."
            )
        cls = resolve_obj_by_qualname(worker_cls) if isinstance(worker_cls, str) else worker_cls
        self.extension_cls = self._extension_class()
        if self.extension_cls is not None:
            _inject_extension(cls, self.extension_cls)
        with set_current_vllm_config(vllm_config):
            self.worker = cls(**kwargs)

    def _extension_class(self) -> type | None:
        """`parallel_config.worker_extension_cls`, resolved (None where none is configured)."""
        assert self.vllm_config is not None
        named = self.vllm_config.parallel_config.worker_extension_cls
        if not named:
            return None
        return resolve_obj_by_qualname(named) if isinstance(named, str) else named

    def init_device(self) -> None:
        """The worker takes its device; from the 0.33 contract the extension's
        `init_worker_extension(worker)` hook then runs (before the model loads), with the
        worker's config still current, as in vLLM 0.33 and 0.34. Its errors propagate."""
        assert self.worker is not None, "init_worker() must come first"
        with set_current_vllm_config(self.vllm_config):
            self.worker.init_device()
            hook = self._extension_hook("init_worker_extension")
            if hook is not None:
                hook(self.worker)

    def shutdown(self) -> None:
        """Shut the worker down; from the 0.33 contract the extension's
        `destroy_worker_extension(worker)` hook runs first, and its errors are logged, not
        raised, so that the worker still shuts down."""
        if self.worker is None:
            return
        hook = self._extension_hook("destroy_worker_extension")
        if hook is not None:
            try:
                hook(self.worker)
            except Exception:
                logger.exception("The worker extension's destroy_worker_extension hook failed.")
        self.worker.shutdown()

    def _extension_hook(self, name: str) -> Any:
        """The extension class's lifecycle hook `name`, where the modelled contract has them
        (0.33 on) and the class defines it; before 0.33 same-named methods are never called."""
        from reference._version import contract_at_least

        extension = self.extension_cls
        if extension is None or not contract_at_least("0.33.0"):
            return None
        return getattr(extension, name, None)

    def execute_method(self, method: str, *args: Any, **kwargs: Any) -> Any:
        target = self if self.worker is None or hasattr(type(self), method) else self.worker
        return getattr(target, method)(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        worker = self.__dict__.get("worker")
        if worker is None:
            raise AttributeError(name)
        return getattr(worker, name)
