"""Probes of platform plugins (`vllm.platform_plugins`): detection, the platform class, a run.

`observe_detection` loads the entry point, calls it `CALLS` times between two snapshots of the
process (environment, import path, logging) and, when it answers with a class name, lets the
engine resolve `current_platform` as it would at startup. `observe_class`, run with the plugin
filtered out by `VLLM_PLUGINS` (the built-in must win), examines the named class and calls its
hooks as vLLM 0.32 calls them. `observe_worker_run` runs a tiny model on the platform's worker.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from conformance.probes import engine_run, runtime
from conformance.probes.data import ExceptionInfo
from conformance.probes.runtime import DOTTED_NAME, Answer

#: How many times the detection function is called in a row (vLLM calls it twice per process).
CALLS = 3
#: Captured log records kept for the checks (the first ones: the engine's verdict comes early).
RECORDS_KEPT = 40


# --------------------------------------------------------------------------------------------
# Detection: load the entry point, call it, resolve the platform.


@dataclass
class LoggerState:
    level: str
    propagate: bool
    disabled: bool
    handlers: list[str] = field(default_factory=list)


@dataclass
class Snapshot:
    """The process state a detection function must leave alone. Values of variables that
    existed before the calls are kept only as hashes: they may hold the user's secrets."""

    environ: dict[str, str] = field(default_factory=dict)
    sys_path: list[str] = field(default_factory=list)
    #: `logging.disable`'s level.
    disable: int = 0
    #: "root" and "vllm" loggers.
    loggers: dict[str, LoggerState] = field(default_factory=dict)


@dataclass
class Record:
    """One captured `vllm.*` log record."""

    logger: str
    level: str
    message: str
    exc: str | None = None


@dataclass
class DetectionObservation:
    load_error: ExceptionInfo | None = None
    callable: bool = False
    #: What the entry point resolved to.
    loaded: runtime.ObjectSketch | None = None
    before: Snapshot | None = None
    after: Snapshot | None = None
    answers: list[Answer] = field(default_factory=list)
    resolve_error: ExceptionInfo | None = None
    #: `module.QualName` of `current_platform`'s class.
    current: str | None = None
    current_is_plugin: bool = False
    class_error: ExceptionInfo | None = None
    #: The platform was resolved while `import vllm` ran, before the probe (vLLM 0.26-0.31).
    resolved_at_import: bool = False
    #: Where the platform was resolved from, from the probe's own frame on.
    init_trace: str = ""
    records: list[Record] = field(default_factory=list)


def _logger_state(logger: logging.Logger) -> LoggerState:
    handlers = [
        f"{type(h).__module__}.{type(h).__qualname__}#{id(h)} level={logging.getLevelName(h.level)}"
        for h in logger.handlers
    ]
    return LoggerState(
        level=logging.getLevelName(logger.level),
        propagate=logger.propagate,
        disabled=logger.disabled,
        handlers=handlers,
    )


def snapshot() -> Snapshot:
    """The environment, import path and logging setup of this process, now."""
    return Snapshot(
        environ=dict(os.environ),
        sys_path=list(sys.path),
        disable=logging.root.manager.disable,
        loggers={
            "root": _logger_state(logging.getLogger()),
            "vllm": _logger_state(logging.getLogger("vllm")),
        },
    )


def _hash_user_values(before: Snapshot, after: Snapshot) -> None:
    """Replace the values of variables the user had set with hashes (still comparable)."""
    for key in set(before.environ) | set(after.environ):
        for env in (before.environ, after.environ):
            if key in before.environ and key in env:
                env[key] = hashlib.sha256(env[key].encode()).hexdigest()[:16]


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _resolve(qualname: str) -> Any:
    """The object a dotted name the plugin supplied names, imported as vLLM imports it."""
    module, _, attribute = qualname.rpartition(".")
    return runtime.call_plugin(
        getattr, runtime.call_plugin(importlib.import_module, module), attribute
    )


def _resolve_platform(obs: DetectionObservation, qualname: str) -> None:
    import vllm.platforms

    # Resolving runs the plugin's detection and builds its class: the plugin's to answer for.
    current, obs.resolve_error = runtime.attempt(getattr, vllm.platforms, "current_platform")
    if obs.resolve_error is not None:
        return
    obs.current = _name(type(current))
    cls, obs.class_error = runtime.attempt(_resolve, qualname)
    if obs.class_error is None:
        obs.current_is_plugin = isinstance(cls, type) and isinstance(current, cls)
    obs.resolved_at_import, obs.init_trace = _where_resolved(vllm.platforms)


def _where_resolved(platforms: Any) -> tuple[bool, str]:
    """Whether the platform was resolved before the probe function ran (while `import vllm`
    ran: vLLM 0.26-0.31 do that), and the stack it was resolved from, from this module's
    innermost frame on (the harness's plugin-boundary frames left out)."""
    trace = str(getattr(platforms, "_init_trace", "") or "")
    frames = [f for f in re.split(r'(?m)^(?=  File ")', trace) if f.strip()]
    ours = [i for i, f in enumerate(frames) if f.startswith(f'  File "{__file__}"')]
    if not ours:
        return bool(frames), "\n".join(trace.splitlines()[-30:])
    boundary = f'  File "{runtime.__file__}"'
    kept = [f for f in frames[ours[-1] :] if not f.startswith(boundary)]
    return False, "\n".join("".join(kept).splitlines()[-30:])


def observe_detection(group: str, name: str) -> DetectionObservation:
    """Load the platform plugin, call it `CALLS` times, and let the engine resolve the platform."""
    import vllm.platforms  # noqa: F401  (the engine's surface, without resolving the platform)

    obs = DetectionObservation()
    mark = runtime.mark()
    func, obs.load_error = runtime.attempt(runtime.load_entry_point, group, name)
    if obs.load_error is None:
        obs.callable = callable(func)
        obs.loaded = runtime.describe(func)
        if obs.callable:
            obs.before = snapshot()
            obs.answers = [runtime.call_entry_function(func) for _ in range(CALLS)]
            obs.after = snapshot()
            _hash_user_values(obs.before, obs.after)
            first = obs.answers[0]
            if first.kind == "str" and first.value and DOTTED_NAME.fullmatch(first.value):
                _resolve_platform(obs, first.value)
    obs.records = [
        Record(r["logger"], r["level"], r["message"], r.get("exc"))
        for r in runtime.records(since=mark)
        if r["level"] != "DEBUG" or "failed during detection" in r["message"]
    ][:RECORDS_KEPT]
    return obs


# --------------------------------------------------------------------------------------------
# The platform class and its hooks, with the plugin filtered out of resolution.


@dataclass
class Value:
    """What a hook returned (or a class attribute held), and what its dotted name leads to."""

    repr: str = ""
    type: str = ""
    #: The value itself, when it is a str.
    value: str | None = None
    #: The attribute is not set at all.
    missing: bool = False
    #: For `_enum`: the PlatformEnum member's name, and the bases that hold the same member.
    enum: str | None = None
    inherited_from: list[str] = field(default_factory=list)
    #: For a dotted name: what it imported, or why it did not.
    resolved: str | None = None
    import_error: ExceptionInfo | None = None
    is_class: bool | None = None
    #: For a communicator: whether it subclasses DeviceCommunicatorBase (None: unknown).
    is_base: bool | None = None


@dataclass
class ClassObservation:
    #: The built-in platform that resolved with the plugin filtered out.
    fallback: str | None = None
    fallback_error: ExceptionInfo | None = None
    fallback_is_plugin: bool = False
    class_error: ExceptionInfo | None = None
    is_class: bool = False
    class_repr: str = ""
    is_platform: bool = False
    #: `_enum`, `device_name`, `device_type`.
    attrs: dict[str, Value] = field(default_factory=dict)
    init_error: ExceptionInfo | None = None
    instantiated: bool = False
    config_error: ExceptionInfo | None = None
    worker_error: ExceptionInfo | None = None
    worker_cls: Value | None = None
    attn_setup_error: ExceptionInfo | None = None
    attn_params: list[str] | None = None
    attn_call: str = ""
    attn_error: ExceptionInfo | None = None
    attn: Value | None = None
    comm_error: ExceptionInfo | None = None
    comm: Value | None = None


_MISSING = object()


def _value(value: Any) -> Value:
    return Value(
        repr=repr(value)[:300],
        type=type(value).__qualname__,
        value=value if type(value) is str else None,
    )


def _attributes(cls: type) -> dict[str, Value]:
    from vllm.platforms.interface import Platform, PlatformEnum

    attrs = {}
    for attr in ("_enum", "device_name", "device_type"):
        value = getattr(cls, attr, _MISSING)
        attrs[attr] = Value(missing=True) if value is _MISSING else _value(value)
    enum = getattr(cls, "_enum", None)
    if isinstance(enum, PlatformEnum):
        attrs["_enum"].enum = enum.name
        # A class derived from a built-in platform may keep that platform's identity.
        attrs["_enum"].inherited_from = [
            _name(base)
            for base in cls.__mro__[1:]
            if base is not Platform and base.__dict__.get("_enum") is enum
        ]
    return attrs


def _call_hook(target: Any, hook: str, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """`target.hook(*args, **kwargs)` through the plugin boundary, looking the hook up too."""
    method, error = runtime.attempt(getattr, target, hook)
    if error is not None:
        return None, error
    return runtime.attempt(method, *args, **kwargs)


def _worker_cls(obs: ClassObservation, target: Any) -> None:
    from vllm.config import VllmConfig

    try:
        config = VllmConfig()  # runs the built-in platform's check_and_update_config
    except Exception as exc:
        obs.config_error = runtime.capture(exc)
        return
    config.parallel_config.worker_cls = "auto"
    _, obs.worker_error = _call_hook(target, "check_and_update_config", config)
    if obs.worker_error is None:
        obs.worker_cls = _value(config.parallel_config.worker_cls)


def _selector(dtype: Any) -> dict[str, Any]:
    from vllm.platforms.interface import Platform
    from vllm.v1.attention.selector import AttentionSelectorConfig

    selector = AttentionSelectorConfig(
        head_size=128, dtype=dtype, kv_cache_dtype="auto", block_size=16
    )
    kwargs: dict[str, Any] = {"attn_selector_config": selector}
    # num_heads arrived after the keyword form (~v0.20): pass it where the engine does.
    if "num_heads" in (runtime.params(Platform.get_attn_backend_cls) or ()):
        kwargs["num_heads"] = 8
    return kwargs


def _ask_attn(obs: ClassObservation, target: Any, kwargs: dict[str, Any]) -> Any:
    selector = kwargs["attn_selector_config"]
    shown = [
        "attn_selector_config=AttentionSelectorConfig(head_size=128, "
        f"dtype={selector.dtype!r}, kv_cache_dtype='auto', block_size=16)"
    ]
    shown += [f"{k}={v!r}" for k, v in kwargs.items() if k != "attn_selector_config"]
    obs.attn_call = f"get_attn_backend_cls(None, {', '.join(shown)})"
    backend, obs.attn_error = _call_hook(target, "get_attn_backend_cls", None, **kwargs)
    return backend


def _binds(target: Any, kwargs: dict[str, Any]) -> bool:
    """Whether the call fits the hook's signature (True when there is none to read)."""
    try:
        inspect.signature(target.get_attn_backend_cls).bind(None, **kwargs)
    except TypeError:
        return False  # the call itself does not fit: no dtype can change that
    except (AttributeError, ValueError):
        pass
    return True


def _import_name(value: Value) -> Any:
    """Import the dotted name `value` holds (recording why not); the object or None."""
    obj, value.import_error = runtime.attempt(_resolve, value.value or "")
    return obj


def _attn_backend(obs: ClassObservation, target: Any) -> None:
    # vLLM passes a torch dtype, and real vLLM has always imported torch by now. The reference
    # may not have, and importing torch only to ask costs seconds: a str stands in, and the
    # question is asked again with a torch dtype if the hook raises with it.
    torch = sys.modules.get("torch")
    try:
        kwargs = _selector(torch.bfloat16 if torch is not None else "bfloat16")
    except Exception as exc:
        obs.attn_setup_error = runtime.capture(exc)
        return
    obs.attn_params = runtime.params(getattr(target, "get_attn_backend_cls", None))
    backend = _ask_attn(obs, target, kwargs)
    binds = _binds(target, kwargs)
    retry = obs.attn_error is not None and binds and "torch" not in sys.modules
    if retry and importlib.util.find_spec("torch"):
        import torch

        backend = _ask_attn(obs, target, _selector(torch.bfloat16))
    if obs.attn_error is None:
        obs.attn = _value(backend)
        if obs.attn.value is not None and "." in obs.attn.value:
            resolved = _import_name(obs.attn)
            if obs.attn.import_error is None:
                obs.attn.resolved = repr(resolved)[:200]


def _communicator(obs: ClassObservation, target: Any) -> None:
    communicator, obs.comm_error = _call_hook(target, "get_device_communicator_cls")
    if obs.comm_error is not None:
        return
    comm = obs.comm = _value(communicator)
    if comm.value is None or "." not in comm.value:
        return
    cls = _import_name(comm)
    if comm.import_error is not None:
        return
    comm.is_class = isinstance(cls, type)
    try:
        from vllm.distributed.device_communicators.base_device_communicator import (
            DeviceCommunicatorBase,
        )
    except ImportError:
        return
    comm.is_base = isinstance(cls, type) and issubclass(cls, DeviceCommunicatorBase)


def observe_class(group: str, name: str, qualname: str) -> ClassObservation:
    """Examine the platform class `qualname` (the plugin's answer) and call its hooks; run
    with the plugin filtered out of `VLLM_PLUGINS`, so the built-in platform resolves."""
    import vllm.platforms
    from vllm.platforms.interface import Platform

    obs = ClassObservation()
    current, obs.fallback_error = runtime.attempt(getattr, vllm.platforms, "current_platform")
    if obs.fallback_error is None:
        obs.fallback = _name(type(current))
    cls, obs.class_error = runtime.attempt(_resolve, qualname)
    if obs.class_error is not None:
        return obs
    obs.fallback_is_plugin = isinstance(cls, type) and isinstance(current, cls)
    obs.is_class = isinstance(cls, type)
    obs.class_repr = repr(cls)[:300]
    if not obs.is_class:
        return obs
    obs.is_platform = issubclass(cls, Platform)
    obs.attrs = _attributes(cls)
    # vLLM calls every hook through the `current_platform` instance (the class, if it raised).
    target, obs.init_error = runtime.attempt(cls)
    obs.instantiated = obs.init_error is None
    if not obs.instantiated:
        target = cls
    _worker_cls(obs, target)
    _attn_backend(obs, target)
    _communicator(obs, target)
    return obs


# --------------------------------------------------------------------------------------------
# Engine run: the platform's worker running a model.


@dataclass
class WorkerRunObservation:
    #: The model stack's modules that are not installed (nothing ran if any).
    missing: list[str] = field(default_factory=list)
    #: `module.QualName` of the platform the engine resolved.
    platform: str | None = None
    worker_cls: str | None = None
    #: The step that raised, and what it raised.
    stage: str | None = None
    error: ExceptionInfo | None = None
    #: How many tokens each prompt produced.
    tokens: list[int] = field(default_factory=list)


def _run_worker(obs: WorkerRunObservation) -> None:
    import vllm.platforms

    obs.stage = "resolving current_platform"
    platform = runtime.call_plugin(getattr, vllm.platforms, "current_platform")
    obs.platform = _name(type(platform))
    from vllm import LLM, SamplingParams

    obs.stage = "LLM(model=tiny_llama, distributed_executor_backend='uni')"
    model = engine_run.tiny_checkpoint("llama")
    llm = runtime.call_plugin(LLM, model=model, **engine_run.UNIPROCESS_ENGINE)
    obs.worker_cls = str(llm.llm_engine.vllm_config.parallel_config.worker_cls)
    obs.stage = "LLM.generate(2 prompts, max_tokens=2)"
    params = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
    outs = runtime.call_plugin(llm.generate, ["Hello", "abc"], params)
    obs.tokens = [len(o.outputs[0].token_ids) for o in outs]
    obs.stage = None
    engine_run.shut(llm)


@runtime.warm
def observe_worker_run(group: str, name: str) -> WorkerRunObservation:
    """Build `LLM` on a tiny Llama on the platform (admitted alone by `VLLM_PLUGINS`) with the
    uniprocess executor, and generate 2 tokens for 2 prompts."""
    obs = WorkerRunObservation(missing=engine_run.missing_engine_deps())
    if obs.missing:
        return obs
    try:
        _run_worker(obs)
    except BaseException as exc:
        obs.error = runtime.capture(exc)
    return obs
