"""The executor interface the engine core drives, and the worker-process setup every backend
shares. The backends (`reference.engine.executor`: `uni`, `mp`; `reference.engine.ray_executor`:
`ray`) build on this module, which imports none of them.
"""

from __future__ import annotations

from typing import Any

from reference.config import VllmConfig
from reference.utils import resolve_obj_by_qualname

#: The built-in values of `distributed_executor_backend`, as qualified names: a backend is
#: imported only once chosen (Ray is optional, and its module says how to install it).
BACKENDS: dict[str, str] = {
    "uni": "reference.engine.executor.UniProcExecutor",
    "mp": "reference.engine.executor.MultiprocExecutor",
    "ray": "reference.engine.ray_executor.RayDistributedExecutor",
}


def worker_kwargs(vllm_config: VllmConfig, world_size: int) -> list[dict[str, Any]]:
    """The `init_worker` arguments of every rank; rank 0 is the driver worker."""
    return [
        {
            "vllm_config": vllm_config,
            "local_rank": rank,
            "rank": rank,
            "distributed_init_method": None,
            "is_driver_worker": rank == 0,
        }
        for rank in range(world_size)
    ]


class Executor:
    """The executor interface the engine core drives."""

    def __init__(self, vllm_config: VllmConfig) -> None:
        self.vllm_config = vllm_config
        self.world_size = vllm_config.parallel_config.world_size
        self.is_shutdown = False
        self._init_executor()

    @staticmethod
    def get_class(vllm_config: VllmConfig) -> type[Executor]:
        """The class of `distributed_executor_backend` (`uni` where unset)."""
        backend = vllm_config.parallel_config.distributed_executor_backend or "uni"
        if backend not in BACKENDS:
            raise ValueError(
                f"Unknown distributed_executor_backend {backend!r}; the reference engine has "
                "'uni', 'mp' and 'ray'."
            )
        return resolve_obj_by_qualname(BACKENDS[backend])

    def _init_executor(self) -> None:
        raise NotImplementedError

    def _start_workers(self) -> None:
        """Once the workers exist: each builds its worker class (loading general plugins and
        resolving the platform in its own process), takes its device and loads the model. A
        failure stops whatever the executor started."""
        try:
            self.collective_rpc(
                "init_worker", args=(worker_kwargs(self.vllm_config, self.world_size),)
            )
            self.collective_rpc("init_device")
            self.collective_rpc("load_model")
        except BaseException:
            self.shutdown()
            raise

    def collective_rpc(
        self, method: str, timeout: float | None = None, args: tuple = (), kwargs: Any = None
    ) -> list[Any]:
        raise NotImplementedError

    def execute_model(self, scheduler_output: Any) -> Any:
        return self.collective_rpc("execute_model", args=(scheduler_output,))[0]

    def shutdown(self) -> None:
        self.is_shutdown = True


def discovery_snapshot() -> list[str] | None:
    """The distribution paths this process admits, when discovery is restricted here (a
    conformance probe hides other installed plugins); workers then see the same set."""
    from importlib import metadata

    if getattr(metadata.distributions, "__module__", "") == "importlib.metadata":
        return None
    return sorted({str(getattr(d, "_path", "")) for d in metadata.distributions()})


def restrict_discovery(admitted: list[str]) -> None:
    """In a worker process: admit only the distributions of the driver's `discovery_snapshot`."""
    from importlib import metadata

    original = metadata.distributions
    paths = set(admitted)

    def distributions(**kwargs: Any) -> Any:
        return (d for d in original(**kwargs) if str(getattr(d, "_path", "")) in paths)

    metadata.distributions = distributions
