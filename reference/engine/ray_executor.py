"""The Ray executor (`distributed_executor_backend="ray"`): one Ray actor per worker.

Same replica semantics as the `mp` executor: every actor holds a full replica of the model,
runs every step, and the engine uses rank 0's results. Each actor is a fresh interpreter, so
its `init_worker` loads that process's general plugins and resolves the platform there.

The driver's `VLLM_*` variables (and the other families vLLM 0.32 copies, see
`get_env_vars_to_copy`) travel in each actor's Ray `runtime_env`, so `VLLM_PLUGINS` filters
the plugins of the actors as it does the driver's, even on a cluster started before they were
set. If no Ray is initialized in this process, the executor starts a small local cluster and
shuts it down with the engine. Ray is optional (`pip install ray`); this module imports it
only when an executor is built.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from reference.engine.executor_base import Executor, discovery_snapshot, restrict_discovery
from reference.engine.worker import WorkerWrapperBase
from reference.logger import init_logger

logger = init_logger("vllm.v1.executor.ray_executor")

RAY_MISSING = (
    "distributed_executor_backend='ray' needs Ray, which is not installed: "
    "`pip install ray` (or the project's `ray` extra), or use 'mp'."
)

#: Variables set per worker, never copied from the driver (vLLM 0.32's list).
WORKER_SPECIFIC_ENV_VARS: frozenset[str] = frozenset(
    {
        "VLLM_HOST_IP",
        "VLLM_HOST_PORT",
        "VLLM_NIXL_SIDE_CHANNEL_HOST",
        "LOCAL_RANK",
        "CUDA_VISIBLE_DEVICES",
        "HIP_VISIBLE_DEVICES",
        "ROCR_VISIBLE_DEVICES",
    }
)
#: Prefixes of the driver variables copied to Ray workers (vLLM 0.32's defaults).
DEFAULT_ENV_VAR_PREFIXES: frozenset[str] = frozenset(
    {"VLLM_", "FLASH_ATTENTION_", "LMCACHE_", "NCCL_", "UCX_", "HF_", "HUGGING_FACE_"}
)
#: Single variables copied besides the prefixed ones.
DEFAULT_EXTRA_ENV_VARS: frozenset[str] = frozenset({"PYTHONHASHSEED"})
#: Local cluster started by the executor: CPUs it advertises (actors ask for none).
LOCAL_CLUSTER_CPUS = 1
#: Bytes of object store for that cluster (the smallest Ray accepts is about 75 MB).
LOCAL_CLUSTER_OBJECT_STORE = 100 * 1024 * 1024


def _csv(value: str) -> set[str]:
    return {item.strip() for item in value.split(",") if item.strip()}


def non_carry_over_env_vars() -> set[str]:
    """Names a user excluded from copying: a JSON list in
    `$VLLM_CONFIG_ROOT/ray_non_carry_over_env_vars.json`, as in vLLM (unreadable: none)."""
    config_home = os.environ.get(
        "XDG_CONFIG_HOME", os.path.join(os.path.expanduser("~"), ".config")
    )
    root = os.path.expanduser(os.environ.get("VLLM_CONFIG_ROOT", os.path.join(config_home, "vllm")))
    path = Path(root, "ray_non_carry_over_env_vars.json")
    if not path.is_file():
        return set()
    try:
        return set(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        logger.warning("Failed to parse %s; no variable is excluded from copying.", path)
        return set()


def get_env_vars_to_copy(
    exclude_vars: Iterable[str] | None = None,
    additional_vars: Iterable[str] | None = None,
    destination: str | None = None,
) -> set[str]:
    """The names of the driver variables that Ray workers receive (vLLM 0.32's rule).

    The registered `vllm.envs` names, every variable of `os.environ` with a prefix of
    `DEFAULT_ENV_VAR_PREFIXES` or `VLLM_RAY_EXTRA_ENV_VAR_PREFIXES_TO_COPY`, the names in
    `DEFAULT_EXTRA_ENV_VARS`, `VLLM_RAY_EXTRA_ENV_VARS_TO_COPY` and `additional_vars`; less
    `exclude_vars` and the user's non-carry-over list.
    """
    from reference import envs

    prefixes = DEFAULT_ENV_VAR_PREFIXES | _csv(
        os.environ.get("VLLM_RAY_EXTRA_ENV_VAR_PREFIXES_TO_COPY", "")
    )
    names = set(envs.environment_variables)
    names |= {name for name in os.environ if name.startswith(tuple(prefixes))}
    names |= DEFAULT_EXTRA_ENV_VARS | _csv(os.environ.get("VLLM_RAY_EXTRA_ENV_VARS_TO_COPY", ""))
    names |= set(additional_vars or ())
    names -= set(exclude_vars or ()) | non_carry_over_env_vars()
    copied = sorted(n for n in names if n in os.environ)
    logger.debug("Copying environment variables to %s: %s", destination or "workers", copied)
    return names


def env_vars_for_workers() -> dict[str, str]:
    """The driver variables, with their values, that every Ray worker starts with."""
    from reference.platforms import current_platform

    additional = getattr(current_platform, "additional_env_vars", None) or []
    names = get_env_vars_to_copy(
        exclude_vars=WORKER_SPECIFIC_ENV_VARS,
        additional_vars=additional,
        destination="Ray workers",
    )
    return {name: os.environ[name] for name in sorted(names) if name in os.environ}


def _project_root() -> str:
    """The directory that holds the `reference` package (a source checkout needs it)."""
    return str(Path(__file__).resolve().parents[2])


def runtime_env_for_workers() -> dict[str, Any]:
    """The Ray `runtime_env` of every worker actor: the copied variables, and a PYTHONPATH
    that lets the actor import the reference before it adopts the driver's `sys.path`."""
    env_vars = env_vars_for_workers()
    python_path = [
        _project_root(),
        *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)),
    ]
    env_vars["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(python_path))
    return {"env_vars": env_vars}


class RayWorkerWrapper(WorkerWrapperBase):
    """The body of one Ray actor: set up the process as the driver's (import path, the view
    of installed plugins, the mounted reference), then hold the worker of one rank.

    `init_worker` (inherited) loads the general plugins of the actor's process, resolves its
    platform and builds `parallel_config.worker_cls`.
    """

    def __init__(
        self,
        rpc_rank: int,
        sys_path: list[str],
        mount_reference: bool,
        admitted: list[str] | None,
    ) -> None:
        # Like a spawned child: the driver's import path first (overlays, the mount shim),
        # then whatever the Ray worker had that the driver did not.
        driver = [p for p in sys_path if p]
        sys.path[:] = driver + [p for p in sys.path if p not in set(driver)]
        if admitted is not None:
            restrict_discovery(admitted)
        if mount_reference:
            from reference.surface import mount

            mount()
        super().__init__(rpc_rank=rpc_rank)

    def get_pid(self) -> int:
        return os.getpid()

    def get_env(self, names: list[str]) -> dict[str, str | None]:
        """The values these variables have in this actor (what the driver forwarded)."""
        return {name: os.environ.get(name) for name in names}


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError(RAY_MISSING) from exc
    return ray


def initialize_ray_cluster() -> bool:
    """Use the Ray of this process, else start a small local cluster; True if started here.

    `RAY_ADDRESS`, where set, names a cluster to join instead (left running afterwards).
    """
    ray = _ray()
    if ray.is_initialized():
        return False
    # No usage statistics (nothing may reach the network), as vLLM does unless asked.
    if os.environ.get("RAY_USAGE_STATS_ENABLED", "0") != "1":
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        return False
    ray.init(
        address="local",
        num_cpus=LOCAL_CLUSTER_CPUS,
        object_store_memory=LOCAL_CLUSTER_OBJECT_STORE,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    return True


class RayDistributedExecutor(Executor):
    """`world_size` Ray actors, each a full replica (vLLM's `RayDistributedExecutor`)."""

    uses_ray: bool = True

    def _init_executor(self) -> None:
        from reference.surface import is_mounted

        ray = _ray()
        self._pids: list[int] = []
        self.workers: list[Any] = []
        # Set up before anything can fail, so a failed start still stops what it started.
        self._finalizer = weakref.finalize(
            self, _stop_actors, self.workers, initialize_ray_cluster()
        )
        try:
            runtime_env = runtime_env_for_workers()
            actor_cls = ray.remote(num_cpus=0, max_restarts=0)(RayWorkerWrapper)
            admitted = discovery_snapshot()
            for rank in range(self.world_size):
                self.workers.append(
                    actor_cls.options(runtime_env=runtime_env).remote(
                        rank, list(sys.path), is_mounted(), admitted
                    )
                )
            self._pids = self.collective_rpc("get_pid")
        except BaseException:
            self.shutdown()
            raise
        self._start_workers()

    @property
    def worker_pids(self) -> list[int]:
        return list(self._pids)

    def collective_rpc(
        self, method: str, timeout: float | None = None, args: tuple = (), kwargs: Any = None
    ) -> list[Any]:
        if self.is_shutdown:
            raise RuntimeError("The executor was shut down; build a new engine to run more work.")
        ray = _ray()
        refs = [w.execute_method.remote(method, *args, **(kwargs or {})) for w in self.workers]
        results = []
        errors = []
        for rank, ref in enumerate(refs):
            try:
                results.append(ray.get(ref, timeout=timeout))
            except ray.exceptions.GetTimeoutError as exc:
                raise TimeoutError(
                    f"Ray worker {rank} did not answer {method!r} in {timeout}s."
                ) from exc
            except ray.exceptions.RayActorError as exc:
                raise RuntimeError(
                    f"Ray worker {rank} died during {method!r}: {exc}. Its log is under the "
                    "Ray session directory (/tmp/ray/session_latest/logs)."
                ) from exc
            except ray.exceptions.RayTaskError as exc:
                errors.append(f"worker {rank}: {exc}")
                results.append(None)
        if errors:
            raise RuntimeError(f"{method!r} failed in the Ray workers:\n" + "\n".join(errors))
        return results

    def shutdown(self) -> None:
        if self.is_shutdown:
            return
        try:  # each worker runs its extension's destroy hook and shuts down, then dies
            self.collective_rpc("shutdown", timeout=10)
        except Exception as exc:
            logger.debug("Ray workers did not all shut down cleanly: %s", exc)
        self.is_shutdown = True
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()


def _stop_actors(actors: list[Any], started_ray: bool) -> None:
    """Kill the worker actors; stop the local cluster too if this engine started it."""
    try:
        import ray
    except ImportError:
        return
    if not ray.is_initialized():
        return  # Ray's own exit handler came first: the cluster is gone with its actors
    for actor in actors:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # already dead
            pass
    if started_ray:
        ray.shutdown()
