"""Stat-logger checks (`vllm.stat_logger_plugins`): the entry point's type, and the class
driven through construction and recording exactly as vLLM 0.32's `AsyncLLM` drives it.

Two probes per entry point feed every check (conformance/probes/stat_logger.py).
`observe_stat_logger` loads the entry point and runs the engine's own
`load_stat_logger_plugin_factories()` on it alone; `drive_stat_logger` builds the class as the
engine's manager does (per-engine classes through the engine's `PerEngineStatLoggerAdapter`,
aggregate ones with keywords) for two engine indexes, then feeds it realistic stats the way the
frontend's output loop does.
"""

from __future__ import annotations

from typing import NoReturn

from conformance.checks.general import (
    ENGINE_RUN_TIMEOUT_S,
    fail_engine_run,
    skip_if_engine_missing,
)
from conformance.context import CheckContext, EngineRun, observation
from conformance.framework import check, fail, fail_on, inconclusive
from conformance.probes.data import ExceptionInfo
from conformance.probes.stat_logger import (
    ENGINE_INDEXES,
    LoggerClass,
    StatLoggerDrive,
    StatLoggerObservation,
    drive_stat_logger,
    observe_stat_logger,
    run_stat_logger_engine,
)

PER_ENGINE_CALL = " and ".join(f"cls(vllm_config, {i})" for i in ENGINE_INDEXES) + ", positionally"
AGGREGATE_CALL = f"cls(vllm_config=vllm_config, engine_indexes={list(ENGINE_INDEXES)})"
#: Seconds the three requests may take once the engine is built (a few steps of a tiny model).
STEP_TIMEOUT_S = 60
#: Every stat-logger check but the first needs the entry point to be a class.
IS_CLASS = ("stat_logger.is-class",)


# --------------------------------------------------------------------------------------------
# Pure helpers (unit-tested): what an observation means.


def not_a_class_problem(run: StatLoggerObservation) -> str:
    """Why a loaded entry point that is not a class cannot be a stat-logger plugin."""
    assert run.loaded is not None
    loaded = run.loaded
    if loaded.kind == "function":
        params = run.params or []
        return (
            f"The entry point resolves to the function {loaded.qualname}"
            f"({', '.join(params)}). A factory function works only when passed in code as "
            "`AsyncLLM(stat_loggers=[...])`; an entry point must be the class itself, which "
            "vLLM builds once per engine index."
        )
    if run.instance_of_base:
        return (
            f"The entry point resolves to {loaded.repr}, an instance of {run.type}, "
            "not the class: vLLM builds its own instances, one per engine index."
        )
    return f"The entry point resolves to {loaded.repr} (a {run.type}), not a class."


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


def construct_call(drive: StatLoggerDrive) -> str:
    """How the engine builds the class, in words."""
    return AGGREGATE_CALL if drive.aggregate else PER_ENGINE_CALL


# --------------------------------------------------------------------------------------------
# The shared probes.


def _plugins_env(ctx: CheckContext) -> dict[str, str | None]:
    # Only this entry point is admitted: a sibling stat logger must not decide the outcome.
    return {"VLLM_PLUGINS": ctx.ep.name}


def _observed(ctx: CheckContext) -> StatLoggerObservation:
    """The entry point loaded in a fresh process; fails the check if it did not load."""
    run = ctx.observe(
        observe_stat_logger, env=_plugins_env(ctx), purpose="that loads the stat logger"
    )
    if run.load_error is not None:
        fail_on(run.load_error, f"Loading {ctx.ep.value!r} raised:")
    return run


def _class(ctx: CheckContext) -> tuple[StatLoggerObservation, LoggerClass]:
    """The observation of an entry point that is a class (stat_logger.is-class passed)."""
    run = _observed(ctx)
    if run.cls is None:
        fail(
            "The entry point is not a class, so there is nothing to build "
            "(see stat_logger.is-class)."
        )
    return run, run.cls


def _drive(ctx: CheckContext) -> StatLoggerDrive:
    """The class built and fed as the engine does, with the full config of a served model
    (inconclusive where this engine cannot build one)."""
    drive = ctx.observe(
        drive_stat_logger,
        env=_plugins_env(ctx),
        purpose="that builds and feeds the stat logger",
    )
    if drive.config_error is not None:
        inconclusive(
            "this engine could not build the config it hands a stat logger (a served model's): "
            f"{drive.config_error.headline}"
        )
    return drive


def _fail_not_loadable(run: StatLoggerObservation, problem: str) -> NoReturn:
    """Fail with `problem`, and with the traceback of vLLM's loader when it raised."""
    if run.loader_error is not None:
        fail_on(run.loader_error, f"{problem}\nvLLM's loader raised:")
    fail(problem)


def _fail_call(error: ExceptionInfo, head: str, hint: str) -> NoReturn:
    """Fail on `error`, raised by the call `head` describes, with `hint` first when there is one."""
    fail_on(error, f"{hint}\n{head}" if hint else head)


# --------------------------------------------------------------------------------------------
# The checks.


@check(
    "stat_logger.is-class",
    title="the stat-logger entry point is a class",
    fix="Point the entry point at the StatLoggerBase subclass itself "
    '(`name = "pkg.module:MyStatLogger"`), not at a factory function or an instance.',
    requires=("package.entry-points-resolve",),
)
def check_is_class(ctx: CheckContext) -> None:
    """vLLM's `load_stat_logger_plugin_factories()` takes each entry point as the factory and
    requires a class: a function or an instance makes it raise TypeError, and the engine does
    not start. (In code, `AsyncLLM(stat_loggers=...)` also takes factory functions; entry
    points do not.)"""
    run = _observed(ctx)
    if run.cls is None:
        _fail_not_loadable(run, not_a_class_problem(run))


@check(
    "stat_logger.subclass",
    title="the class subclasses vllm.v1.metrics.loggers.StatLoggerBase",
    fix="Derive the class from `vllm.v1.metrics.loggers.StatLoggerBase` (or "
    "`AggregateStatLoggerBase` for one logger serving every engine).",
    requires=IS_CLASS,
)
def check_subclass(ctx: CheckContext) -> None:
    """vLLM checks `issubclass(cls, StatLoggerBase)` when it loads stat-logger plugins and
    raises TypeError for anything else, so the engine does not start. Having the right
    methods is not enough: the check is nominal."""
    run, cls = _class(ctx)
    assert run.loaded is not None
    if not cls.is_base:
        has = f" It has {', '.join(cls.methods)}, but" if cls.methods else ""
        _fail_not_loadable(
            run,
            f"{run.loaded.qualname} does not subclass vllm.v1.metrics.loggers.StatLoggerBase."
            f"{has} vLLM checks the base class.",
        )
    if run.loader_error is not None:
        fail_on(run.loader_error, "vLLM's load_stat_logger_plugin_factories() raised:")


@check(
    "stat_logger.constructs",
    title="the class constructs as the engine builds it: per engine positionally, aggregate by "
    "keywords",
    fix="Declare `__init__(self, vllm_config, engine_index=0)` for a per-engine logger, or "
    "`__init__(self, vllm_config, engine_indexes)` on an AggregateStatLoggerBase subclass, and "
    "implement every abstract method (record, log_engine_initialized).",
    requires=IS_CLASS,
)
def check_constructs(ctx: CheckContext) -> None:
    """vLLM's stat-logger manager builds a per-engine class once per engine index as
    `cls(vllm_config, engine_index)` (positionally, through its PerEngineStatLoggerAdapter),
    and an AggregateStatLoggerBase subclass once as
    `cls(vllm_config=..., engine_indexes=[...])`. The class is built here for engine indexes
    [0, 1]; a constructor that raises stops the engine's start."""
    drive = _drive(ctx)
    if drive.construct_error is not None:
        _, cls = _class(ctx)
        hint = init_hint(cls.init_params, drive.aggregate)
        if cls.abstract and not hint:
            hint = f"Abstract methods left unimplemented: {', '.join(cls.abstract)}."
        head = f"Building the logger as the engine does, {construct_call(drive)}, raised:"
        _fail_call(drive.construct_error, head, hint)


@check(
    "stat_logger.records",
    title="record(), log_engine_initialized() and log() accept the engine's calls and raise "
    "nothing",
    fix="Declare `record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, "
    "engine_idx=0)` (both stats may be None), and make record, log_engine_initialized and log "
    "tolerate every stats field being present or absent.",
    requires=("stat_logger.constructs",),
)
def check_records(ctx: CheckContext) -> None:
    """The frontend calls `log_engine_initialized()` once after construction, then for every
    batch of engine outputs `record(scheduler_stats, iteration_stats, mm_cache_stats=...,
    engine_idx=...)` (through the per-engine adapter for per-engine classes; either stats
    object may be None), and `log()` on the logging interval; aggregate loggers also get
    `record_sleep_state(int, int)` and `record_admission_rejection(reason)`. These run on
    the server's output loop: an exception there stops the server's output handling. The
    probe makes each call with realistic stats for engine indexes 0 and 1."""
    drive = _drive(ctx)
    if drive.construct_error is not None:
        fail_on(
            drive.construct_error,
            f"The logger could not be built ({construct_call(drive)}), so nothing could be "
            "recorded (see stat_logger.constructs):",
        )
    step = drive.step_error
    if step is not None:
        _, cls = _class(ctx)
        hint = record_hint(cls.record_params) if step.call.startswith("record(") else ""
        adapter = "" if drive.aggregate else " (forwarded by PerEngineStatLoggerAdapter)"
        done = drive.steps_done
        after = f", after {', '.join(done)} succeeded" if done else ""
        _fail_call(step.error, f"{step.call}{adapter} raised{after}:", hint)


@check(
    "stat_logger.engine-run",
    title="inside a real AsyncLLM the logger is built, initialised and fed every step, raising "
    "nothing",
    fix="Read only what the engine's stats objects have (SchedulerStats, IterationStats: use "
    "`getattr(stats, name, default)` for fields that vary between releases), accept either "
    "stats being None, and never raise from record, log_engine_initialized or log.",
    requires=("stat_logger.subclass", "stat_logger.records"),
    engine_run=lambda ctx: EngineRun(
        run_stat_logger_engine,
        env=_plugins_env(ctx),
        timeout=ENGINE_RUN_TIMEOUT_S,
        args={"step_timeout": STEP_TIMEOUT_S},
    ),
)
def check_engine_run(ctx: CheckContext) -> None:
    """The stat-logger checks above feed the class stats the harness built; this one lets the
    engine do it. `AsyncLLM` is built on a tiny generated Llama with only this plugin
    admitted (`VLLM_PLUGINS`) and serves three requests of different lengths; the plugin's
    class is watched (not its own counters): it must be constructed, get
    `log_engine_initialized()` and `record(...)` for the engine steps, and neither they nor
    `log()` (from `do_log_stats()`) may raise, since they run on the server's output loop."""
    run = observation(
        ctx.engine_run(), run_stat_logger_engine, "that runs AsyncLLM with the stat logger"
    )
    skip_if_engine_missing(run.missing)
    if run.errors:
        first = run.errors[0]
        fail_on(first.error, f"The engine's {first.call}(...) call raised:")
    if run.error is not None:
        fail_engine_run(ctx, run.error, f"AsyncLLM failed while {run.stage}:")
    if run.timed_out:
        fail(
            f"AsyncLLM failed while {run.stage}: no result within {STEP_TIMEOUT_S} s "
            "(the engine loop stopped)."
        )
    missing = [
        name for name in ("constructed", "log_engine_initialized", "record") if not run.seen[name]
    ]
    if missing:
        fail(
            f"AsyncLLM ran, but these never happened to the plugin's class: "
            f"{', '.join(missing)} (calls seen: {run.seen}); the engine did not use the entry "
            "point."
        )
