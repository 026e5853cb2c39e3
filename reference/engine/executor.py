"""Executors: run the workers in the engine core's process (`uni`) or in N spawned worker
processes (`mp`), and call methods on all of them (`collective_rpc`). The interface they
implement is `reference.engine.executor_base.Executor` (also importable from here); the Ray
executor (`ray`, one Ray actor per worker) is in `reference.engine.ray_executor`.

With `mp`, every worker holds a full replica of the model (the reference does not shard) and
runs every step; the engine uses rank 0's results. A worker exits when its driver goes away:
the pipe closes, the parent pid changes, or (Linux) the parent-death signal arrives.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
import weakref
from typing import Any

from reference.engine.executor_base import (
    Executor,
    discovery_snapshot,
    restrict_discovery,
    worker_kwargs,
)
from reference.logger import init_logger

logger = init_logger("vllm.v1.executor")

_SHUTDOWN = "__shutdown__"


class UniProcExecutor(Executor):
    """One worker, in this process (vLLM's `UniProcExecutor`)."""

    def _init_executor(self) -> None:
        from reference.engine.worker import WorkerWrapperBase

        self.driver_worker = WorkerWrapperBase(self.vllm_config, rpc_rank=0)
        self.driver_worker.init_worker(worker_kwargs(self.vllm_config, 1))
        self.driver_worker.execute_method("init_device")
        self.driver_worker.execute_method("load_model")

    def collective_rpc(
        self, method: str, timeout: float | None = None, args: tuple = (), kwargs: Any = None
    ) -> list[Any]:
        return [self.driver_worker.execute_method(method, *args, **(kwargs or {}))]

    def shutdown(self) -> None:
        if self.is_shutdown:
            return
        self.is_shutdown = True
        self.driver_worker.shutdown()


# --------------------------------------------------------------------------------------------
# Multiprocessing


def _die_with_parent(parent_pid: int) -> None:
    """Exit as soon as the driver process is gone, even while a step is running."""
    try:  # Linux: the kernel sends SIGKILL when the parent thread dies.
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(0.2)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()
    if os.getppid() != parent_pid:
        os._exit(1)


def _worker_main(
    rpc_rank: int,
    conn: Any,
    parent_pid: int,
    mount_reference: bool,
    admitted: list[str] | None,
) -> None:
    """A worker process: serve `(method, args, kwargs)` calls until shutdown or EOF."""
    _die_with_parent(parent_pid)
    if admitted is not None:
        restrict_discovery(admitted)
    if mount_reference:
        from reference.surface import mount

        mount()
    from reference.engine.worker import WorkerWrapperBase

    wrapper = WorkerWrapperBase(rpc_rank=rpc_rank)
    while True:
        try:
            method, args, kwargs = conn.recv()
        except (EOFError, OSError):
            break  # the driver is gone
        if method == _SHUTDOWN:
            try:
                wrapper.shutdown()
            except Exception:
                logger.exception("Worker %d failed to shut down.", rpc_rank)
            conn.send(("ok", None))
            break
        try:
            result = wrapper.execute_method(method, *args, **kwargs)
            reply = ("ok", result)
        except BaseException as exc:
            reply = ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            break
    conn.close()
    os._exit(0)


class MultiprocExecutor(Executor):
    """`world_size` worker processes started with `spawn` (vLLM's `MultiprocExecutor`)."""

    def _init_executor(self) -> None:
        import multiprocessing

        from reference.surface import is_mounted

        ctx = multiprocessing.get_context("spawn")
        self.workers: list[tuple[Any, Any]] = []
        admitted = discovery_snapshot()
        for rank in range(self.world_size):
            parent_conn, child_conn = ctx.Pipe()
            proc = ctx.Process(
                target=_worker_main,
                args=(rank, child_conn, os.getpid(), is_mounted(), admitted),
                name=f"VllmWorker-{rank}",
                daemon=True,
            )
            proc.start()
            # Only the child holds its end now, so it sees EOF when this process dies.
            child_conn.close()
            self.workers.append((proc, parent_conn))
        self._finalizer = weakref.finalize(self, _stop_workers, list(self.workers))
        self._start_workers()

    @property
    def worker_pids(self) -> list[int]:
        return [proc.pid for proc, _ in self.workers]

    def collective_rpc(
        self, method: str, timeout: float | None = None, args: tuple = (), kwargs: Any = None
    ) -> list[Any]:
        if self.is_shutdown:
            raise RuntimeError("The executor was shut down; build a new engine to run more work.")
        for _, conn in self.workers:
            conn.send((method, args, kwargs or {}))
        deadline = None if timeout is None else time.monotonic() + timeout
        results = []
        errors = []
        for rank, (proc, conn) in enumerate(self.workers):
            while not conn.poll(0.5):
                if not proc.is_alive():
                    raise RuntimeError(
                        f"Worker {rank} (pid {proc.pid}) died with exit code {proc.exitcode} "
                        f"during {method!r}; see its output above."
                    )
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"Worker {rank} did not answer {method!r} in {timeout}s.")
            try:
                status, value = conn.recv()
            except (EOFError, OSError) as exc:
                raise RuntimeError(
                    f"Worker {rank} (pid {proc.pid}) closed its pipe during {method!r} ({exc}). "
                    "If the traceback above says the main module was re-imported, guard the "
                    "script's engine code with `if __name__ == '__main__':` (workers are "
                    "started with spawn)."
                ) from exc
            if status == "error":
                errors.append(f"worker {rank}: {value}")
            results.append(value)
        if errors:
            raise RuntimeError(f"{method!r} failed in the workers:\n" + "\n".join(errors))
        return results

    def shutdown(self) -> None:
        if self.is_shutdown:
            return
        self.is_shutdown = True
        self._finalizer()


def _stop_workers(workers: list[tuple[Any, Any]]) -> None:
    """Ask each worker to exit, then make sure: terminate, then kill, what is left."""
    for _, conn in workers:
        try:
            conn.send((_SHUTDOWN, (), {}))
        except (BrokenPipeError, OSError):
            pass
    deadline = time.monotonic() + 5.0
    for proc, conn in workers:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.terminate()
            proc.join(2.0)
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)
        conn.close()
