"""The `stat_logger.*` checks: each mutant trips its check, good loggers pass them."""

from __future__ import annotations

import textwrap

import pytest

from conformance.checks import stat_logger as checks
from conformance.framework import load_catalog
from conformance.overlay import Overlay
from conformance.probes.engine_run import ENGINE_RUN_DEPS
from conformance.probes.runtime import ObjectSketch
from conformance.probes.stat_logger import StatLoggerObservation
from conformance.runner import CheckResult
from conformance.target import EntryPointInfo, Target, mutant_names, resolve_target
from tests.conftest import assert_mutant_fails, run_check_group

GROUP = "stat_logger"
STAT_LOGGERS = "vllm.stat_logger_plugins"
#: The bundled mutants of this group, each named after the check it must fail.
MUTANTS = [name for name in mutant_names() if name.startswith(f"{GROUP}.")]
#: What the failure message must show, beyond the fix hint.
OBSERVED = {
    "stat_logger.is-class": "the function mutant_stat_logger_is_class.make_stat_logger",
    "stat_logger.subclass": "must be a subclass of StatLoggerBase",
    "stat_logger.constructs": "takes 2 positional arguments but 3 were given",
    "stat_logger.records": "'NoneType' object has no attribute 'num_running_reqs'",
    "stat_logger.engine-run": "asyncio.run() cannot be called from a running event loop",
}
#: The checks each mutant leaves unable to judge: they are blocked by its check, not failed.
BLOCKED = {
    # A function is not a class: there is nothing to subclass-check, build or feed.
    "stat_logger.is-class": {
        "stat_logger.subclass",
        "stat_logger.constructs",
        "stat_logger.records",
        "stat_logger.engine-run",
    },
    # vLLM's loader refuses the class, so no engine starts with it.
    "stat_logger.subclass": {"stat_logger.engine-run"},
    # A logger that cannot be built cannot record, nor serve in an engine.
    "stat_logger.constructs": {"stat_logger.records", "stat_logger.engine-run"},
    "stat_logger.records": {"stat_logger.engine-run"},
    "stat_logger.engine-run": set(),
}
#: Checks that run a real engine: left out of this file's runs of good loggers, which stay
#: fast (test_checks_engine_run.py runs them on the good fixtures).
ENGINE_RUN = ["stat_logger.engine-run"]
FAST = sorted(set(MUTANTS) - set(ENGINE_RUN))


def run_group(target: Target) -> dict[str, CheckResult]:
    """The group's checks but the engine run, on `target`."""
    return run_check_group(target, GROUP, ENGINE_RUN)


def run_all(target: Target) -> dict[str, CheckResult]:
    """Every check of the group and the package checks, in one session."""
    return run_check_group(target, (GROUP, "package"))


def inline_logger(name: str, source: str, attr: str = "Logger") -> Target:
    """A stat-logger plugin `name:attr` written on the spot."""
    overlay = Overlay().add_inline(
        name,
        {f"{name}/__init__.py": textwrap.dedent(source)},
        {STAT_LOGGERS: {name: f"{name}:{attr}"}},
    )
    eps = (EntryPointInfo(STAT_LOGGERS, name, f"{name}:{attr}"),)
    return Target(name, "0.1.0", "project", eps, ("vllm>=0.30",), None, overlay)


PER_ENGINE = """
    from vllm.v1.metrics.loggers import StatLoggerBase

    class Logger(StatLoggerBase):
        def __init__(self, vllm_config, engine_index=0):
            self.engine_index = engine_index
            self.running = 0

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
            {record_body}

        def log_engine_initialized(self):
            pass
"""


# --------------------------------------------------------------------------------------------
# Mutants and fixtures.


def test_every_stat_logger_check_has_a_mutant():
    ids = sorted(k for k, v in load_catalog().items() if v.group == GROUP)
    assert ids == MUTANTS, "each stat_logger check needs a mutant named after it"
    assert set(OBSERVED) == set(BLOCKED) == set(MUTANTS)


@pytest.mark.parametrize("check_id", MUTANTS)
def test_the_mutant_fails_its_check_and_blocks_only_what_depends_on_it(check_id):
    if check_id in ENGINE_RUN:
        for module in ENGINE_RUN_DEPS:  # the check runs a model: without them it skips
            pytest.importorskip(module)
    results = run_all(resolve_target(check_id))
    assert_mutant_fails(results, check_id, OBSERVED[check_id])
    blocked = {k for k, r in results.items() if r.status == "blocked"}
    assert blocked == BLOCKED[check_id]
    passed = set(results) - blocked - {check_id}
    assert {results[k].status for k in passed} == {"passed"}, "the rest judge and pass"


def test_the_dummy_stat_logger_fixture_passes_every_stat_logger_check():
    # A per-engine logger that accepts every call: nothing is skipped.
    results = run_group(resolve_target("vllm_add_dummy_stat_logger"))
    assert set(results) == set(FAST)
    for check_id, result in results.items():
        assert result.status == "passed", f"{check_id}: {result.message}"


def test_the_logger_is_built_with_the_full_config_of_a_served_model():
    # As vLLM's own Prometheus logger does: it labels metrics with the served model's name.
    reads_config = PER_ENGINE.format(record_body="pass").replace(
        "            self.engine_index = engine_index\n",
        "            self.engine_index = engine_index\n"
        "            model_config = vllm_config.model_config\n"
        "            self.labels = (model_config.served_model_name or model_config.model,\n"
        "                           model_config.max_model_len)\n",
    )
    assert "served_model_name" in reads_config
    results = run_group(inline_logger("config_reader", reads_config))
    assert results["stat_logger.constructs"].status == "passed", results[
        "stat_logger.constructs"
    ].message
    assert results["stat_logger.records"].status == "passed"


def test_an_aggregate_logger_is_built_by_keywords_and_gets_the_aggregate_calls():
    source = """
        from vllm.v1.metrics.loggers import AggregateStatLoggerBase

        class Logger(AggregateStatLoggerBase):
            def __init__(self, *, vllm_config, engine_indexes):  # keywords only, on purpose
                self.engines = list(engine_indexes)
                self.events = []

            def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
                assert engine_idx in self.engines

            def log_engine_initialized(self):
                pass

            def record_sleep_state(self, is_awake, level):
                raise RuntimeError("sleep state reached the aggregate logger")
    """
    results = run_group(inline_logger("agg_logger", source))
    assert results["stat_logger.constructs"].status == "passed"
    records = results["stat_logger.records"]
    assert records.status == "failed"
    assert "record_sleep_state(1, 1) raised" in records.message
    assert "(forwarded by PerEngineStatLoggerAdapter)" not in records.message


def test_an_aggregate_logger_with_a_positional_per_engine_init_is_explained():
    source = """
        from vllm.v1.metrics.loggers import AggregateStatLoggerBase

        class Logger(AggregateStatLoggerBase):
            def __init__(self, config, engine_index=0):
                pass

            def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
                pass

            def log_engine_initialized(self):
                pass
    """
    result = run_group(inline_logger("agg_bad_init", source))["stat_logger.constructs"]
    assert result.status == "failed"
    assert "cls(vllm_config=vllm_config, engine_indexes=[0, 1])" in result.message
    assert "`vllm_config=` and `engine_indexes=`" in result.message


def test_a_record_that_assumes_scheduler_stats_fails_on_the_none_batch():
    source = PER_ENGINE.format(record_body="self.running = scheduler_stats.num_running_reqs")
    result = run_group(inline_logger("none_sched", source))["stat_logger.records"]
    assert result.status == "failed"
    assert "record(None, IterationStats(...), mm_cache_stats=None, engine_idx=0)" in result.message
    assert "AttributeError" in result.message


def test_a_logger_missing_an_abstract_method_fails_construction():
    source = """
        from vllm.v1.metrics.loggers import StatLoggerBase

        class Logger(StatLoggerBase):
            def __init__(self, vllm_config, engine_index=0):
                pass

            def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
                pass
    """
    result = run_group(inline_logger("abstract_logger", source))["stat_logger.constructs"]
    assert result.status == "failed"
    assert "log_engine_initialized" in result.message


def test_an_instance_as_entry_point_is_named_as_such():
    source = textwrap.dedent(PER_ENGINE.format(record_body="pass")) + "\nLOGGER = Logger(None, 0)\n"
    results = run_group(inline_logger("instance_logger", source, attr="LOGGER"))
    message = results["stat_logger.is-class"].message
    assert results["stat_logger.is-class"].status == "failed"
    assert "an instance of instance_logger.Logger, not the class" in message
    assert results["stat_logger.constructs"].status == "blocked"
    assert results["stat_logger.constructs"].blocked_by == "stat_logger.is-class"


def test_a_logger_that_does_not_load_fails_is_class_and_blocks_the_rest():
    results = run_group(inline_logger("broken_logger", "import no_such_module_for_sure\n"))
    is_class = results.pop("stat_logger.is-class")
    assert is_class.status == "failed"
    assert "No module named 'no_such_module_for_sure'" in is_class.message
    assert {(r.status, r.blocked_by) for r in results.values()} == {
        ("blocked", "stat_logger.is-class")
    }


def test_only_the_judged_entry_point_is_loaded():
    # A sibling entry point that vLLM would reject must not fail the good one's checks.
    overlay = Overlay().add_inline(
        "two_loggers",
        {
            "two_loggers/__init__.py": textwrap.dedent(PER_ENGINE.format(record_body="pass"))
            + "\ndef factory(vllm_config, engine_index):\n    return Logger(vllm_config, engine_index)\n"
        },
        {STAT_LOGGERS: {"good": "two_loggers:Logger", "bad": "two_loggers:factory"}},
    )
    eps = (EntryPointInfo(STAT_LOGGERS, "good", "two_loggers:Logger"),)
    results = run_group(Target("two_loggers", "0.1.0", "project", eps, (), None, overlay))
    assert {k: r.status for k, r in results.items()} == dict.fromkeys(FAST, "passed")


# --------------------------------------------------------------------------------------------
# Helpers.


def test_not_a_class_problem_tells_functions_instances_and_other_objects_apart():
    function = StatLoggerObservation(
        loaded=ObjectSketch(kind="function", repr="", qualname="p.make"),
        type="builtins.function",
        params=["vllm_config", "engine_index"],
    )
    assert "p.make(vllm_config, engine_index)" in checks.not_a_class_problem(function)
    assert "stat_loggers=" in checks.not_a_class_problem(function)
    instance = StatLoggerObservation(
        loaded=ObjectSketch(kind="other", repr="<p.L object>", qualname="?"),
        type="p.L",
        instance_of_base=True,
    )
    assert "an instance of p.L" in checks.not_a_class_problem(instance)
    other = StatLoggerObservation(
        loaded=ObjectSketch(kind="other", repr="42", qualname="?"), type="builtins.int"
    )
    assert checks.not_a_class_problem(other).endswith("(a builtins.int), not a class.")


@pytest.mark.parametrize(
    ("params", "aggregate", "expected"),
    [
        (["self", "vllm_config", "engine_index"], False, ""),
        (["self", "vllm_config"], False, "no `engine_index`"),
        (["self", "*args", "**kwargs"], False, ""),
        (["self", "vllm_config", "engine_indexes"], True, ""),
        (["self", "vllm_config", "engine_index"], True, "`engine_indexes=`"),
        (None, False, ""),
    ],
)
def test_init_hint(params, aggregate, expected):
    hint = checks.init_hint(params, aggregate)
    assert (expected in hint) if expected else hint == ""


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (["self", "scheduler_stats", "iteration_stats", "mm_cache_stats", "engine_idx"], ""),
        (["self", "scheduler_stats", "iteration_stats", "engine_idx"], "pre-v0.11 form"),
        (["self", "scheduler_stats", "iteration_stats", "mm_cache_stats"], "`engine_idx=`"),
        (["self", "*args", "**kwargs"], ""),
        (None, ""),
    ],
)
def test_record_hint(params, expected):
    hint = checks.record_hint(params)
    assert (expected in hint) if expected else hint == ""
