"""Probe of an engine's worker-extension contract (the `engine.worker-extension-hooks` check).

vLLM 0.33 added lifecycle hooks to the class `parallel_config.worker_extension_cls` names: the
worker wrapper mixes that class into the worker class, calls its `init_worker_extension()` on
the worker right after the worker's `init_device()` (before the model loads), and its
`destroy_worker_extension()` in `shutdown()` before the worker's own shutdown, logging (not
raising) what the destroy hook raises. The probe drives the engine's own `WorkerWrapperBase`
through a worker's life in the order an executor does, with a device-free worker class the
check wrote, so it needs no device, no model and no compiled ops.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from typing import Any

from conformance.probes import engine_run, runtime
from conformance.probes.data import ExceptionInfo
from conformance.probes.engine import LogRecord


@dataclass
class WorkerLifecycle:
    #: What building the `VllmConfig` the worker is given raised; nothing else ran then.
    config_error: ExceptionInfo | None = None
    #: The wrapper step that raised (`init_worker`, `init_device`, `load_model`, `shutdown`),
    #: and what it raised; the steps after it did not run.
    failed_step: str | None = None
    error: ExceptionInfo | None = None
    #: What the scenario's worker and extension recorded (their `EVENTS`), in order.
    events: list[str] = field(default_factory=list)
    #: Whether the worker built is an instance of the extension class (it was mixed in).
    mixed_in: bool = False
    #: ERROR records `vllm` logged during `shutdown()`.
    shutdown_errors: list[LogRecord] = field(default_factory=list)


#: The wrapper's steps, in the order an executor takes them.
STEPS = ("init_worker", "init_device", "load_model", "shutdown")


def run_worker_lifecycle(module: str, worker: str, extension: str) -> WorkerLifecycle:
    """Build the `VllmConfig` of a served tiny model (`EngineArgs(worker_cls=module.worker,
    worker_extension_cls=module.extension)`, no weights read), then drive the engine's
    `WorkerWrapperBase(rpc_rank=0)` through `init_worker`, `init_device`, `load_model` and
    `shutdown`. `module` must keep a list `EVENTS` of what its classes were called for."""
    obs = WorkerLifecycle()
    vllm_config, obs.config_error = runtime.attempt(
        engine_run.served_config,
        worker_cls=f"{module}.{worker}",
        worker_extension_cls=f"{module}.{extension}",
    )
    if obs.config_error is not None:
        return obs
    worker_base = runtime.call_plugin(importlib.import_module, "vllm.v1.worker.worker_base")
    wrapper = runtime.call_plugin(worker_base.WorkerWrapperBase, rpc_rank=0)
    kwargs: dict[str, Any] = {
        "vllm_config": vllm_config,
        "local_rank": 0,
        "rank": 0,
        "distributed_init_method": None,
        "is_driver_worker": True,
    }
    calls = {
        "init_worker": lambda: wrapper.init_worker([kwargs]),
        "init_device": lambda: wrapper.init_device(),
        "load_model": lambda: wrapper.load_model(),
        "shutdown": lambda: wrapper.shutdown(),
    }
    for step in STEPS:
        mark = runtime.mark()
        _, obs.error = runtime.attempt(calls[step])
        if step == "init_worker" and obs.error is None:
            built = getattr(wrapper, "worker", None)
            obs.mixed_in = isinstance(built, getattr(sys.modules[module], extension))
        if step == "shutdown":
            obs.shutdown_errors = [
                LogRecord(r["level"], r["message"], r["exc"])
                for r in runtime.records(since=mark)
                if r["level"] == "ERROR"
            ]
        if obs.error is not None:
            obs.failed_step = step
            break
    written = sys.modules.get(module)
    obs.events = list(written.EVENTS) if written is not None else []
    return obs
