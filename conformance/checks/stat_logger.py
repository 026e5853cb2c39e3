"""Stat-logger checks (`vllm.stat_logger_plugins`): the entry point's type, and the class
driven through construction and recording exactly as vLLM 0.32's `AsyncLLM` drives it.

Two probes per entry point feed every check. `stat_logger_examine` loads the entry point and
runs the engine's own `load_stat_logger_plugin_factories()` on it alone; `stat_logger_drive`
builds the class as the engine's manager does (per-engine classes through the engine's
`PerEngineStatLoggerAdapter`, aggregate ones with keywords) for two engine indexes, then feeds
it realistic stats the way the frontend's output loop does.
"""

from __future__ import annotations

from typing import Any

from conformance.context import CheckContext
from conformance.framework import check, fail

#: The engine (data-parallel) indexes the logger is built for: two, so that a per-engine
#: class is constructed twice and `engine_idx` varies.
ENGINE_INDEXES = (0, 1)
PER_ENGINE_CALL = "cls(vllm_config, 0) and cls(vllm_config, 1), positionally"
AGGREGATE_CALL = "cls(vllm_config=vllm_config, engine_indexes=[0, 1])"

STAT_LOGGER_EXAMINE = r"""
import inspect, traceback
R = probe.result



from vllm.v1.metrics.loggers import (
    AggregateStatLoggerBase, StatLoggerBase, load_stat_logger_plugin_factories)

try:
    obj = target_entry_point(EP_GROUP, EP_NAME).load()
except BaseException as exc:
    R["load_error"] = _err(exc)
else:
    R["describe"] = describe(obj)
    R["is_class"] = isinstance(obj, type)
    R["type"] = f"{type(obj).__module__}.{type(obj).__qualname__}"
    R["instance_of_base"] = isinstance(obj, StatLoggerBase)
    if R["is_class"]:
        R["is_base"] = issubclass(obj, StatLoggerBase)
        R["aggregate"] = issubclass(obj, AggregateStatLoggerBase)
        R["abstract"] = sorted(getattr(obj, "__abstractmethods__", ()))
        R["init_params"] = _params(obj.__init__)
        R["record_params"] = _params(getattr(obj, "record", None))
        R["methods"] = [m for m in ("record", "log_engine_initialized", "log")
                        if callable(getattr(obj, m, None))]
    elif callable(obj):
        R["params"] = _params(obj)
    # The engine's own loader; VLLM_PLUGINS names this entry point, so it loads it alone.
    try:
        factories = load_stat_logger_plugin_factories()
    except BaseException as exc:
        R["loader_error"] = _err(exc)
    else:
        R["loader"] = [repr(f)[:200] for f in factories]
"""

STAT_LOGGER_DRIVE = r"""
import traceback
R = probe.result


import vllm.v1.metrics.loggers as loggers
from vllm.config import VllmConfig
from vllm.v1.metrics import stats

def _fill(obj, **values):
    # Stats records are "not stable interfaces": set only the fields this engine has, and
    # not read-only views (0.32's IterationStats.num_prompt_tokens is a property).
    for key, value in values.items():
        declared = getattr(type(obj), key, None)
        if isinstance(declared, property) and declared.fset is None:
            continue
        if hasattr(obj, key):
            setattr(obj, key, value)
    return obj

def _finished():
    try:
        from vllm.v1.engine import FinishReason
        reason = FinishReason.STOP
    except ImportError:
        reason = "stop"
    cls = getattr(stats, "FinishedRequestStats", None)
    if cls is None:
        return []
    try:
        import inspect
        accepted = inspect.signature(cls).parameters
        values = dict(finish_reason=reason, e2e_latency=1.25, num_prompt_tokens=48,
                      num_generation_tokens=16, queued_time=0.01, prefill_time=0.05,
                      decode_time=0.9)
        return [cls(**{k: v for k, v in values.items() if k in accepted})]
    except Exception:
        return []

def scheduler_stats(engine_idx):
    s = _fill(stats.SchedulerStats(), num_running_reqs=3 + engine_idx, num_waiting_reqs=1,
              step_counter=40, current_wave=0, kv_cache_usage=0.375)
    cache = getattr(s, "prefix_cache_stats", None)
    if cache is not None:
        _fill(cache, requests=3, queries=144, hits=64)
    return s

def iteration_stats():
    it = stats.IterationStats()
    tokens = getattr(it, "prompt_token_stats", None)
    if tokens is not None:
        _fill(tokens, computed=144, total=144)
    return _fill(it, num_prompt_tokens=144, num_generation_tokens=24,
                 num_preempted_reqs=0, finished_requests=_finished(),
                 time_to_first_tokens_iter=[0.042, 0.051, 0.063],
                 inter_token_latencies_iter=[0.011] * 21)

def mm_cache_stats():
    cls = getattr(stats, "MultiModalCacheStats", None)
    return None if cls is None else _fill(cls(), requests=1, queries=2, hits=1)

config = VllmConfig()
config.cache_config.num_gpu_blocks = 2048  # the engine knows it by the time it logs
config.parallel_config.data_parallel_size = len(ENGINES)
cls = target_entry_point(EP_GROUP, EP_NAME).load()
aggregate = isinstance(cls, type) and issubclass(cls, loggers.AggregateStatLoggerBase)
R["aggregate"] = aggregate
try:
    # As the engine's StatLoggerManager builds each factory it is given.
    if aggregate:
        logger = cls(vllm_config=config, engine_indexes=list(ENGINES))
    else:
        logger = loggers.PerEngineStatLoggerAdapter(config, list(ENGINES), cls)
except BaseException as exc:
    R["construct_error"] = _err(exc)
else:
    R["constructed"] = True
    built = getattr(logger, "per_engine_stat_loggers", None)
    if isinstance(built, dict):
        R["instances"] = {str(k): f"{type(v).__module__}.{type(v).__qualname__}"
                          for k, v in built.items()}

    def record(shown, sched, it, mm, idx):
        # The manager's call: positional stats, keyword mm_cache_stats and engine_idx.
        return shown, lambda: logger.record(sched, it, mm_cache_stats=mm, engine_idx=idx)

    S, I, M = "SchedulerStats(...)", "IterationStats(...)", "MultiModalCacheStats(...)"
    steps = [("log_engine_initialized()", logger.log_engine_initialized)]
    for idx in ENGINES:
        steps.append(record(f"record({S}, {I}, mm_cache_stats={M}, engine_idx={idx})",
                            scheduler_stats(idx), iteration_stats(), mm_cache_stats(), idx))
    steps.append(record(f"record(None, {I}, mm_cache_stats=None, engine_idx=0)",
                        None, iteration_stats(), None, 0))
    steps.append(record(f"record({S}, None, mm_cache_stats=None, engine_idx=1)",
                        scheduler_stats(1), None, None, 1))
    steps.append(("log()", logger.log))
    steps.append(record(f"record({S}, {I}, mm_cache_stats=None, engine_idx=0)",
                        scheduler_stats(0), iteration_stats(), None, 0))
    steps.append(("log()", logger.log))
    if aggregate:
        # Only aggregate loggers receive these: the per-engine adapter drops them.
        steps.append(("record_sleep_state(1, 1)", lambda: logger.record_sleep_state(1, 1)))
        steps.append(("record_sleep_state(0, 1)", lambda: logger.record_sleep_state(0, 1)))
        if hasattr(logger, "record_admission_rejection"):
            steps.append(("record_admission_rejection('queue full')",
                          lambda: logger.record_admission_rejection("queue full")))
    done = []
    for shown, call in steps:
        try:
            call()
        except BaseException as exc:
            R["step_error"] = {"call": shown, "error": _err(exc)}
            break
        done.append(shown)
    R["steps_done"] = done
"""


# --------------------------------------------------------------------------------------------
# Pure helpers (unit-tested): what an observation means.


def not_a_class_problem(run: dict[str, Any]) -> str:
    """Why a loaded entry point that is not a class cannot be a stat-logger plugin."""
    described = run["describe"]
    if described["kind"] == "function":
        params = run.get("params") or []
        return (
            f"The entry point resolves to the function {described['qualname']}"
            f"({', '.join(params)}). A factory function works only when passed in code as "
            "`AsyncLLM(stat_loggers=[...])`; an entry point must be the class itself, which "
            "vLLM builds once per engine index."
        )
    if run.get("instance_of_base"):
        return (
            f"The entry point resolves to {described['repr']}, an instance of {run['type']}, "
            "not the class: vLLM builds its own instances, one per engine index."
        )
    return f"The entry point resolves to {described['repr']} (a {run['type']}), not a class."


def init_hint(params: list[str] | None, aggregate: bool) -> str:
    """A hint naming what is wrong with `__init__`'s parameters, if the list shows it."""
    if not params:
        return ""
    shown = f"Its __init__ takes ({', '.join(params)})"
    if any(p.startswith("*") for p in params):
        return ""
    if aggregate:
        if "engine_indexes" not in params or "vllm_config" not in params:
            return (
                f"{shown}; an AggregateStatLoggerBase subclass is built with the keywords "
                "`vllm_config=` and `engine_indexes=`."
            )
        return ""
    if len(params) < 3:
        return f"{shown}: no `engine_index`, which vLLM passes as the second positional argument."
    return ""


def record_hint(params: list[str] | None) -> str:
    """A hint naming the older `record` form a parameter list matches, if any."""
    if not params or any(p.startswith("**") for p in params):
        return ""
    if "mm_cache_stats" not in params:
        return (
            f"Its record takes ({', '.join(params)}): the pre-v0.11 form without "
            "`mm_cache_stats`, which vLLM now passes by keyword."
        )
    if "engine_idx" not in params:
        return f"Its record takes ({', '.join(params)}); vLLM passes `engine_idx=` by keyword."
    return ""


# --------------------------------------------------------------------------------------------
# The shared probes.


def _plugins_env(ctx: CheckContext) -> dict[str, str | None]:
    # Only this entry point is admitted: a sibling stat logger must not decide the outcome.
    assert ctx.entry_point is not None
    return {"VLLM_PLUGINS": ctx.entry_point.name}


def stat_logger_examine(ctx: CheckContext) -> dict[str, Any]:
    """Observations of loading the entry point; fails the check if the probe died."""
    assert ctx.entry_point is not None
    result = ctx.session.memo(
        f"stat_logger_examine {ctx.entry_point.key}",
        lambda: ctx.probe(STAT_LOGGER_EXAMINE, env=_plugins_env(ctx)),
    )
    if not result.ok:
        fail(f"Loading the stat logger in a fresh process {result.describe()}")
    run = result.values
    if "load_error" in run:
        fail(f"Loading {ctx.entry_point.value!r} raised:\n{run['load_error']}")
    return run


def _class(ctx: CheckContext) -> dict[str, Any]:
    """Observations of an entry point that is a class; fails the check otherwise."""
    run = stat_logger_examine(ctx)
    if not run["is_class"]:
        fail(
            f"The entry point resolves to {run['describe']['repr']}, not a class, so there is "
            "nothing to build (see stat_logger.is-class)."
        )
    return run


def stat_logger_drive(ctx: CheckContext) -> dict[str, Any]:
    """Observations of building and feeding the class as the engine does."""
    assert ctx.entry_point is not None
    examined = _class(ctx)
    code = f"ENGINES = {ENGINE_INDEXES!r}\n" + STAT_LOGGER_DRIVE
    result = ctx.session.memo(
        f"stat_logger_drive {ctx.entry_point.key}",
        lambda: ctx.probe(code, env=_plugins_env(ctx)),
    )
    if not result.ok:
        fail(f"Building and feeding the stat logger in a fresh process {result.describe()}")
    return {**result.values, "examined": examined}


def construct_call(run: dict[str, Any]) -> str:
    """How the engine builds the class, in words."""
    return AGGREGATE_CALL if run.get("aggregate") else PER_ENGINE_CALL


# --------------------------------------------------------------------------------------------
# The checks.


@check(
    "stat_logger.is-class",
    title="the stat-logger entry point is a class",
    fix="Point the entry point at the StatLoggerBase subclass itself "
    '(`name = "pkg.module:MyStatLogger"`), not at a factory function or an instance.',
)
def check_is_class(ctx: CheckContext) -> None:
    """vLLM's `load_stat_logger_plugin_factories()` takes each entry point as the factory and
    requires a class: a function or an instance makes it raise TypeError, and the engine does
    not start. (In code, `AsyncLLM(stat_loggers=...)` also takes factory functions; entry
    points do not.)"""
    run = stat_logger_examine(ctx)
    if not run["is_class"]:
        loader = run.get("loader_error", "")
        engine = f"\nvLLM's loader raised:\n{loader}" if loader else ""
        fail(not_a_class_problem(run) + engine)


@check(
    "stat_logger.subclass",
    title="the class subclasses vllm.v1.metrics.loggers.StatLoggerBase",
    fix="Derive the class from `vllm.v1.metrics.loggers.StatLoggerBase` (or "
    "`AggregateStatLoggerBase` for one logger serving every engine).",
)
def check_subclass(ctx: CheckContext) -> None:
    """vLLM checks `issubclass(cls, StatLoggerBase)` when it loads stat-logger plugins and
    raises TypeError for anything else, so the engine does not start. Having the right
    methods is not enough: the check is nominal."""
    run = _class(ctx)
    name = run["describe"]["qualname"]
    if not run["is_base"]:
        loader = run.get("loader_error", "")
        engine = f"\nvLLM's loader raised:\n{loader}" if loader else ""
        methods = run.get("methods") or []
        has = f" It has {', '.join(methods)}, but" if methods else ""
        fail(
            f"{name} does not subclass vllm.v1.metrics.loggers.StatLoggerBase.{has} vLLM "
            f"checks the base class.{engine}"
        )
    if "loader_error" in run:
        fail(f"vLLM's load_stat_logger_plugin_factories() raised:\n{run['loader_error']}")


@check(
    "stat_logger.constructs",
    title="the class constructs as the engine builds it: per engine positionally, aggregate by "
    "keywords",
    fix="Declare `__init__(self, vllm_config, engine_index=0)` for a per-engine logger, or "
    "`__init__(self, vllm_config, engine_indexes)` on an AggregateStatLoggerBase subclass, and "
    "implement every abstract method (record, log_engine_initialized).",
)
def check_constructs(ctx: CheckContext) -> None:
    """vLLM's stat-logger manager builds a per-engine class once per engine index as
    `cls(vllm_config, engine_index)` (positionally, through its PerEngineStatLoggerAdapter),
    and an AggregateStatLoggerBase subclass once as
    `cls(vllm_config=..., engine_indexes=[...])`. The class is built here for engine indexes
    [0, 1]; a constructor that raises stops the engine's start."""
    run = stat_logger_drive(ctx)
    if "construct_error" in run:
        examined = run["examined"]
        hint = init_hint(examined.get("init_params"), bool(run.get("aggregate")))
        abstract = examined.get("abstract") or []
        if abstract and not hint:
            hint = f"Abstract methods left unimplemented: {', '.join(abstract)}."
        fail(
            f"Building the logger as the engine does, {construct_call(run)}, raised:\n"
            f"{run['construct_error'].rstrip()}\n{hint}".rstrip()
        )


@check(
    "stat_logger.records",
    title="record(), log_engine_initialized() and log() accept the engine's calls and raise "
    "nothing",
    fix="Declare `record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, "
    "engine_idx=0)` (both stats may be None), and make record, log_engine_initialized and log "
    "tolerate every stats field being present or absent.",
)
def check_records(ctx: CheckContext) -> None:
    """The frontend calls `log_engine_initialized()` once after construction, then for every
    batch of engine outputs `record(scheduler_stats, iteration_stats, mm_cache_stats=...,
    engine_idx=...)` (through the per-engine adapter for per-engine classes; either stats
    object may be None), and `log()` on the logging interval; aggregate loggers also get
    `record_sleep_state(int, int)` and `record_admission_rejection(reason)`. These run on
    the server's output loop: an exception there stops the server's output handling. The
    probe makes each call with realistic stats for engine indexes 0 and 1."""
    run = stat_logger_drive(ctx)
    if "construct_error" in run:
        fail(
            f"The logger could not be built ({construct_call(run)}), so nothing could be "
            "recorded (see stat_logger.constructs)."
        )
    if "step_error" in run:
        step = run["step_error"]
        done = run.get("steps_done") or []
        before = f"\nCalls that succeeded before it: {', '.join(done)}." if done else ""
        hint = record_hint(run["examined"].get("record_params"))
        hint = f"\n{hint}" if hint and step["call"].startswith("record(") else ""
        adapter = "" if run.get("aggregate") else " (forwarded by PerEngineStatLoggerAdapter)"
        fail(f"{step['call']}{adapter} raised:\n{step['error'].rstrip()}{hint}{before}".rstrip())


# --------------------------------------------------------------------------------------------
# Engine run: the logger inside a real AsyncLLM.

ENGINE_RUN = r"""
import asyncio, functools
R = probe.result

if not ENGINE_MISSING:
    cls = target_entry_point(EP_GROUP, EP_NAME).load()
    seen = {"constructed": 0, "log_engine_initialized": 0, "record": 0, "log": 0}
    errors = []

    def _spy(name, method):
        # Counts the engine's calls on the plugin's own class, whatever the plugin keeps.
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            seen[name] += 1
            try:
                return method(self, *args, **kwargs)
            except BaseException as exc:
                errors.append({"call": name, "error": _err(exc)})
                raise
        return wrapper

    if isinstance(cls, type):
        for name in ("log_engine_initialized", "record", "log"):
            if callable(getattr(cls, name, None)):
                setattr(cls, name, _spy(name, getattr(cls, name)))
        _init = cls.__init__
        def _counted_init(self, *args, **kwargs):
            _init(self, *args, **kwargs)
            seen["constructed"] += 1
        cls.__init__ = _counted_init

    from vllm import AsyncEngineArgs, SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

    async def main():
        stage = "AsyncLLM.from_engine_args(...)"
        try:
            # One worker in the engine core's process, as general.models-run builds LLM.
            args = AsyncEngineArgs(model=tiny_checkpoint("llama"), max_num_seqs=2,
                                   max_model_len=128, distributed_executor_backend="uni",
                                   **SMALL_ENGINE)
            engine = AsyncLLM.from_engine_args(args)
            stage = "generating 3 requests"
            async def one(i, prompt, n):
                last = None
                params = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)
                async for out in engine.generate(prompt, params, request_id=f"conf-{i}"):
                    last = out
                return len(last.outputs[0].token_ids)
            jobs = asyncio.ensure_future(
                asyncio.gather(one(0, "a", 3), one(1, "bc", 2), one(2, "def", 4)))
            # A raising logger can stop the engine's loop and leave requests waiting: stop
            # at the first error the spies see instead of waiting out the timeout.
            deadline = asyncio.get_running_loop().time() + STEP_TIMEOUT
            while not jobs.done() and not errors:
                if asyncio.get_running_loop().time() > deadline:
                    raise asyncio.TimeoutError
                await asyncio.wait({jobs}, timeout=0.05)
            if not jobs.done():
                jobs.cancel()
                return
            R["tokens"] = jobs.result()
            stage = "do_log_stats()"
            await engine.do_log_stats()
            engine.shutdown()
        except asyncio.TimeoutError:
            R["engine_error"] = {"stage": stage, "error": f"no result within {STEP_TIMEOUT} s "
                                 "(the engine loop stopped)"}
        except BaseException as exc:
            R["engine_error"] = {"stage": stage, "error": _err(exc)}

    asyncio.run(main())
    R["seen"] = seen
    R["errors"] = errors
"""

#: Seconds the three requests may take once the engine is built (a few steps of a tiny model).
STEP_TIMEOUT_S = 60


@check(
    "stat_logger.engine-run",
    title="inside a real AsyncLLM the logger is built, initialised and fed every step, raising "
    "nothing",
    fix="Read only what the engine's stats objects have (SchedulerStats, IterationStats: use "
    "`getattr(stats, name, default)` for fields that vary between releases), accept either "
    "stats being None, and never raise from record, log_engine_initialized or log.",
)
def check_engine_run(ctx: CheckContext) -> None:
    """The stat-logger checks above feed the class stats the harness built; this one lets the
    engine do it. `AsyncLLM` is built on a tiny generated Llama with only this plugin
    admitted (`VLLM_PLUGINS`) and serves three requests of different lengths; the plugin's
    class is watched (not its own counters): it must be constructed, get
    `log_engine_initialized()` and `record(...)` for the engine steps, and neither they nor
    `log()` (from `do_log_stats()`) may raise, since they run on the server's output loop."""
    from conformance.checks.general import (
        ENGINE_RUN_TIMEOUT_S,
        engine_run_code,
        skip_if_engine_missing,
    )

    assert ctx.entry_point is not None
    _class(ctx)
    code = engine_run_code(f"STEP_TIMEOUT = {STEP_TIMEOUT_S}\n" + ENGINE_RUN)
    result = ctx.session.memo(
        f"stat_logger_engine_run {ctx.entry_point.key}",
        lambda: ctx.probe(code, env=_plugins_env(ctx), timeout=ENGINE_RUN_TIMEOUT_S),
    )
    if not result.ok:
        fail(f"Running AsyncLLM with the stat logger in a fresh process {result.describe()}")
    run = result.values
    skip_if_engine_missing(run)
    seen, errors = run["seen"], run["errors"]
    if errors:
        first = errors[0]
        fail(f"The engine's {first['call']}(...) call raised:\n{first['error'].rstrip()}")
    if "engine_error" in run:
        stage = run["engine_error"]
        fail(f"AsyncLLM failed while {stage['stage']}:\n{stage['error'].rstrip()}")
    missing = [
        name for name in ("constructed", "log_engine_initialized", "record") if not seen[name]
    ]
    if missing:
        fail(
            f"AsyncLLM ran, but these never happened to the plugin's class: "
            f"{', '.join(missing)} (calls seen: {seen}); the engine did not use the entry point."
        )
