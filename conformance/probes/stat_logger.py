"""Probes of stat-logger plugins (`vllm.stat_logger_plugins`): what the entry point is, the class
built and fed as vLLM 0.32's `AsyncLLM` drives it, and the class inside a real `AsyncLLM`.

`observe_stat_logger` loads the entry point and runs the engine's own
`load_stat_logger_plugin_factories()` on it; `drive_stat_logger` builds the class as the
engine's manager does (per-engine classes through the engine's `PerEngineStatLoggerAdapter`,
aggregate ones with keywords) for two engine indexes, then feeds it realistic stats the way the
frontend's output loop does; `run_stat_logger_engine` serves requests with the class admitted.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conformance.probes import engine_run, runtime
from conformance.probes.data import ExceptionInfo
from conformance.probes.runtime import ObjectSketch

#: The engine (data-parallel) indexes the logger is built for: two, so that a per-engine
#: class is constructed twice and `engine_idx` varies.
ENGINE_INDEXES = (0, 1)
#: The methods of the plugin's class that the engine calls on every run.
ENGINE_CALLS = ("log_engine_initialized", "record", "log")


@dataclass
class LoggerClass:
    """The shape of an entry point that is a class."""

    is_base: bool = False
    aggregate: bool = False
    abstract: list[str] = field(default_factory=list)
    init_params: list[str] | None = None
    record_params: list[str] | None = None
    #: Which of the methods vLLM calls the class has.
    methods: list[str] = field(default_factory=list)


@dataclass
class StatLoggerObservation:
    load_error: ExceptionInfo | None = None
    loaded: ObjectSketch | None = None
    #: `module.QualName` of the loaded object's type.
    type: str = ""
    instance_of_base: bool = False
    #: The parameters of a function the entry point resolved to.
    params: list[str] | None = None
    cls: LoggerClass | None = None
    #: What the engine's `load_stat_logger_plugin_factories()` raised on this entry point alone.
    loader_error: ExceptionInfo | None = None
    #: The factories it returned, as reprs.
    loader: list[str] = field(default_factory=list)


@runtime.warm
def observe_stat_logger(group: str, name: str) -> StatLoggerObservation:
    """Load the entry point, describe it, and let the engine's loader judge it."""
    from vllm.v1.metrics.loggers import (
        AggregateStatLoggerBase,
        StatLoggerBase,
        load_stat_logger_plugin_factories,
    )

    obs = StatLoggerObservation()
    obj, obs.load_error = runtime.attempt(runtime.target_entry_point(group, name).load)
    if obs.load_error is not None:
        return obs
    obs.loaded = runtime.describe(obj)
    obs.type = runtime.qualname(type(obj))
    obs.instance_of_base = isinstance(obj, StatLoggerBase)
    if isinstance(obj, type):
        obs.cls = LoggerClass(
            is_base=issubclass(obj, StatLoggerBase),
            aggregate=issubclass(obj, AggregateStatLoggerBase),
            abstract=sorted(getattr(obj, "__abstractmethods__", ())),
            init_params=runtime.params(obj.__init__),
            record_params=runtime.params(getattr(obj, "record", None)),
            methods=[m for m in ENGINE_CALLS if callable(getattr(obj, m, None))],
        )
    elif callable(obj):
        obs.params = runtime.params(obj)
    # The engine's own loader; VLLM_PLUGINS names this entry point, so it loads it alone.
    factories, obs.loader_error = runtime.attempt(load_stat_logger_plugin_factories)
    obs.loader = [repr(f)[:200] for f in factories or ()]
    return obs


# --------------------------------------------------------------------------------------------
# Driving the class as the engine's stat-logger manager does, with stats the harness builds.


@dataclass
class CallError:
    """A call the engine makes on the logger, and what it raised."""

    call: str
    error: ExceptionInfo


@dataclass
class StatLoggerDrive:
    #: What building the engine's config raised (nothing else was done then).
    config_error: ExceptionInfo | None = None
    aggregate: bool = False
    construct_error: ExceptionInfo | None = None
    #: Engine index -> the type of the per-engine instance the adapter built.
    instances: dict[str, str] = field(default_factory=dict)
    steps_done: list[str] = field(default_factory=list)
    step_error: CallError | None = None


def _fill(obj: Any, **values: Any) -> Any:
    """Set the fields `obj` has. Stats records are "not stable interfaces": set only what this
    engine defines, and not read-only views (0.32's `IterationStats.num_prompt_tokens` is a
    property)."""
    for key, value in values.items():
        declared = getattr(type(obj), key, None)
        if isinstance(declared, property) and declared.fset is None:
            continue
        if hasattr(obj, key):
            setattr(obj, key, value)
    return obj


def _finished() -> list[Any]:
    """One finished request's stats, with the fields this engine's class accepts."""
    from vllm.v1.metrics import stats

    try:
        from vllm.v1.engine import FinishReason

        reason: Any = FinishReason.STOP
    except ImportError:
        reason = "stop"
    cls = getattr(stats, "FinishedRequestStats", None)
    if cls is None:
        return []
    values = {
        "finish_reason": reason,
        "e2e_latency": 1.25,
        "num_prompt_tokens": 48,
        "num_generation_tokens": 16,
        "queued_time": 0.01,
        "prefill_time": 0.05,
        "decode_time": 0.9,
    }
    try:
        accepted = inspect.signature(cls).parameters
        return [cls(**{k: v for k, v in values.items() if k in accepted})]
    except Exception:  # a release whose record needs more: the iteration has no finished ones
        return []


def scheduler_stats(engine_idx: int) -> Any:
    from vllm.v1.metrics import stats

    made = _fill(
        stats.SchedulerStats(),
        num_running_reqs=3 + engine_idx,
        num_waiting_reqs=1,
        step_counter=40,
        current_wave=0,
        kv_cache_usage=0.375,
    )
    cache = getattr(made, "prefix_cache_stats", None)
    if cache is not None:
        _fill(cache, requests=3, queries=144, hits=64)
    return made


def iteration_stats() -> Any:
    from vllm.v1.metrics import stats

    made = stats.IterationStats()
    tokens = getattr(made, "prompt_token_stats", None)
    if tokens is not None:
        _fill(tokens, computed=144, total=144)
    return _fill(
        made,
        num_prompt_tokens=144,
        num_generation_tokens=24,
        num_preempted_reqs=0,
        finished_requests=_finished(),
        time_to_first_tokens_iter=[0.042, 0.051, 0.063],
        inter_token_latencies_iter=[0.011] * 21,
    )


def mm_cache_stats() -> Any:
    from vllm.v1.metrics import stats

    cls = getattr(stats, "MultiModalCacheStats", None)
    return None if cls is None else _fill(cls(), requests=1, queries=2, hits=1)


def _record(logger: Any, sched: Any, it: Any, mm: Any, idx: int) -> tuple[str, Callable[[], Any]]:
    """One `record` call as the manager makes it: positional stats, keyword mm_cache_stats and
    engine_idx; with how it is shown."""
    shown = (
        f"record({'SchedulerStats(...)' if sched is not None else None}, "
        f"{'IterationStats(...)' if it is not None else None}, "
        f"mm_cache_stats={'MultiModalCacheStats(...)' if mm is not None else None}, "
        f"engine_idx={idx})"
    )
    return shown, functools.partial(logger.record, sched, it, mm_cache_stats=mm, engine_idx=idx)


def _steps(logger: Any, aggregate: bool) -> list[tuple[str, Callable[[], Any]]]:
    """The calls the frontend makes, in order, with stats for both engine indexes and with
    either stats object missing."""
    steps = [("log_engine_initialized()", logger.log_engine_initialized)]
    for idx in ENGINE_INDEXES:
        steps.append(
            _record(logger, scheduler_stats(idx), iteration_stats(), mm_cache_stats(), idx)
        )
    steps.append(_record(logger, None, iteration_stats(), None, 0))
    steps.append(_record(logger, scheduler_stats(1), None, None, 1))
    steps.append(("log()", logger.log))
    steps.append(_record(logger, scheduler_stats(0), iteration_stats(), None, 0))
    steps.append(("log()", logger.log))
    if aggregate:
        # Only aggregate loggers receive these: the per-engine adapter drops them.
        steps.append(
            ("record_sleep_state(1, 1)", functools.partial(logger.record_sleep_state, 1, 1))
        )
        steps.append(
            ("record_sleep_state(0, 1)", functools.partial(logger.record_sleep_state, 0, 1))
        )
        if hasattr(logger, "record_admission_rejection"):
            call = functools.partial(logger.record_admission_rejection, "queue full")
            steps.append(("record_admission_rejection('queue full')", call))
    return steps


@runtime.warm
def drive_stat_logger(group: str, name: str) -> StatLoggerDrive:
    """Build the class as the engine's manager does and make every call the frontend makes."""
    import vllm.v1.metrics.loggers as loggers

    obs = StatLoggerDrive()
    try:
        config = engine_run.served_config()  # the full config of a served model, as the engine's
    except Exception as exc:
        obs.config_error = runtime.capture(exc)
        return obs
    config.cache_config.num_gpu_blocks = 2048  # the engine knows it by the time it logs
    config.parallel_config.data_parallel_size = len(ENGINE_INDEXES)
    cls = runtime.load_entry_point(group, name)
    obs.aggregate = isinstance(cls, type) and issubclass(cls, loggers.AggregateStatLoggerBase)
    if obs.aggregate:
        logger, obs.construct_error = runtime.attempt(
            cls, vllm_config=config, engine_indexes=list(ENGINE_INDEXES)
        )
    else:
        adapter = loggers.PerEngineStatLoggerAdapter
        logger, obs.construct_error = runtime.attempt(adapter, config, list(ENGINE_INDEXES), cls)
    if obs.construct_error is not None:
        return obs
    built = getattr(logger, "per_engine_stat_loggers", None)
    if isinstance(built, dict):
        obs.instances = {str(k): runtime.qualname(type(v)) for k, v in built.items()}
    for shown, call in _steps(logger, obs.aggregate):
        _, error = runtime.attempt(call)
        if error is not None:
            obs.step_error = CallError(shown, error)
            break
        obs.steps_done.append(shown)
    return obs


# --------------------------------------------------------------------------------------------
# Engine run: the class inside a real AsyncLLM.


@dataclass
class StatLoggerEngineRun:
    #: The model stack's modules not installed here (nothing else was done).
    missing: list[str] = field(default_factory=list)
    #: How often the engine constructed the plugin's class and called each of its methods.
    seen: dict[str, int] = field(default_factory=dict)
    #: What the plugin's methods raised when the engine called them.
    errors: list[CallError] = field(default_factory=list)
    #: The step that failed, and what it raised (None: it ran out of time instead).
    stage: str | None = None
    error: ExceptionInfo | None = None
    timed_out: bool = False
    #: Tokens generated per request.
    tokens: list[int] = field(default_factory=list)


def _watch(cls: type, seen: dict[str, int], errors: list[CallError]) -> None:
    """Count the engine's calls on the plugin's own class, whatever the plugin keeps, and
    keep what they raise."""

    def spy(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            seen[name] += 1
            try:
                return runtime.call_plugin(method, self, *args, **kwargs)
            except BaseException as exc:
                errors.append(CallError(name, runtime.capture(exc)))
                raise

        return wrapper

    for name in ENGINE_CALLS:
        if callable(getattr(cls, name, None)):
            setattr(cls, name, spy(name, getattr(cls, name)))
    init = cls.__init__

    def counted_init(self: Any, *args: Any, **kwargs: Any) -> None:
        runtime.call_plugin(init, self, *args, **kwargs)
        seen["constructed"] += 1

    cls.__init__ = counted_init  # type: ignore[misc]


async def _serve(obs: StatLoggerEngineRun, step_timeout: float) -> None:
    from vllm import AsyncEngineArgs, SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

    obs.stage = "AsyncLLM.from_engine_args(...)"
    args = AsyncEngineArgs(
        model=engine_run.tiny_checkpoint("llama"), **engine_run.UNIPROCESS_ENGINE
    )
    engine = runtime.call_plugin(AsyncLLM.from_engine_args, args)
    obs.stage = "generating 3 requests"

    async def one(i: int, prompt: str, n: int) -> int:
        last = None
        params = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)
        async for out in engine.generate(prompt, params, request_id=f"conf-{i}"):
            last = out
        return len(last.outputs[0].token_ids) if last is not None else 0

    jobs = asyncio.ensure_future(asyncio.gather(one(0, "a", 3), one(1, "bc", 2), one(2, "def", 4)))
    # A raising logger can stop the engine's loop and leave requests waiting: stop at the
    # first error the spies see instead of waiting out the timeout.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + step_timeout
    while not jobs.done() and not obs.errors:
        if loop.time() > deadline:
            obs.timed_out = True
            jobs.cancel()
            return
        await asyncio.wait({jobs}, timeout=0.05)
    if not jobs.done():
        jobs.cancel()
        return
    obs.tokens = list(jobs.result())
    obs.stage = "do_log_stats()"
    await engine.do_log_stats()
    engine.shutdown()
    obs.stage = None


@runtime.warm
def run_stat_logger_engine(group: str, name: str, step_timeout: float) -> StatLoggerEngineRun:
    """Serve three requests of different lengths with `AsyncLLM` on a tiny generated Llama, the
    plugin's class watched; `step_timeout` bounds the requests once the engine is built."""
    obs = StatLoggerEngineRun(missing=engine_run.missing_engine_deps())
    if obs.missing:
        return obs
    cls = runtime.load_entry_point(group, name)
    obs.seen = dict.fromkeys(("constructed", *ENGINE_CALLS), 0)
    if isinstance(cls, type):
        _watch(cls, obs.seen, obs.errors)
    try:
        asyncio.run(_serve(obs, step_timeout))
    except BaseException as exc:
        obs.error = runtime.capture(exc)
    return obs
