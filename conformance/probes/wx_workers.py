"""The worker and worker extension that `engine.worker-extension-hooks` installs (as the
module `wx_workers` of a test platform's distribution, in an overlay): a device-free worker
and an extension whose destroy hook raises. Every call is recorded in `EVENTS`; the hooks
record the class of the object they are called on, which must be the worker, and the init
hook which config is current (vLLM's `get_current_vllm_config()`, which raises outside a
`set_current_vllm_config` block from 0.33 on). The worker derives from a base of its own, as
vLLM's derive from `WorkerBase` (a class whose only base is `object` cannot take a mixin: no
consistent MRO). Never imported by the harness itself.
"""

from __future__ import annotations

EVENTS = []


def current_config(worker):
    from vllm.config import get_current_vllm_config

    try:
        current = get_current_vllm_config()
    except Exception:
        return "no config current"
    return "its config current" if current is worker.vllm_config else "another config current"


class WorkerBase:
    pass


class Worker(WorkerBase):
    def __init__(self, vllm_config=None, **kwargs):
        self.vllm_config = vllm_config
        EVENTS.append("worker")

    def init_device(self):
        EVENTS.append("device")

    def load_model(self):
        EVENTS.append("load_model")

    def shutdown(self):
        EVENTS.append("shutdown")


class Extension:
    def init_worker_extension(self):
        EVENTS.append(f"init_worker_extension({type(self).__name__})")
        EVENTS.append(current_config(self))

    def destroy_worker_extension(self):
        EVENTS.append(f"destroy_worker_extension({type(self).__name__})")
        raise RuntimeError("destroy_worker_extension failed on purpose")
