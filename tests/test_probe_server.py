"""Shared probe interpreters: a session's probes fork from one prepared interpreter per set of
settings (`conformance.probe.ProbePool`), instead of starting Python and the engine each time.

Each forked probe must still be what a fresh probe is: its own process with a fresh copy of the
prepared state (one probe's plugin state never reaches the next), its own environment, output,
exit status and time limit. The engine-run checks of one run share one prepared engine
interpreter per configuration; counted here on the reference engine, where it is cheap.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from conformance import context as context_module
from conformance import probe as probe_module
from conformance.context import CheckContext, Session
from conformance.framework import load_catalog
from conformance.probe import ProbePool, ProbeResult, run_probe
from conformance.runner import plan, prefetch_engine_runs, run_planned
from conformance.target import resolve_target
from tests.conftest import HAS_TORCH

#: The warm interpreter imports the model stack; without torch there is none to import.
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="the warm interpreter needs torch")

#: Reads a module-level counter, bumps it and reports the process: a probe that leaked its
#: state into the next would see the counter at 1.
COUNTER = """
import os, json
import conformance.probes.runtime as rt
probe.result["seen"] = getattr(rt, "_test_counter", 0)
rt._test_counter = probe.result["seen"] + 1
probe.result["pid"] = os.getpid()
probe.result["foo"] = os.environ.get("VLLM_TEST_FOO")
"""


@pytest.fixture
def pool():
    p = ProbePool()
    yield p
    p.close()


def test_probes_of_one_pool_share_one_interpreter_and_start_fresh(pool):
    results = [run_probe(COUNTER, pool=pool) for _ in range(3)]
    assert [r.status for r in results] == ["ok"] * 3
    assert pool.started == 1
    assert [r.values["seen"] for r in results] == [0, 0, 0]  # no state leaks between probes
    assert len({r.values["pid"] for r in results}) == 3  # one process per probe
    assert all(r.values["pid"] != os.getpid() for r in results)


def test_an_unread_vllm_variable_is_set_in_the_child_without_a_new_interpreter(pool):
    seen = [run_probe(COUNTER, pool=pool, env={"VLLM_TEST_FOO": v}).values["foo"] for v in "ab"]
    seen.append(run_probe(COUNTER, pool=pool).values["foo"])
    assert seen == ["a", "b", None]
    assert pool.started == 1


def test_a_variable_the_preparation_read_gets_its_own_interpreter(pool):
    # The engine's logging is configured from VLLM_LOGGING_LEVEL while the interpreter is
    # prepared: a probe that changes it cannot fork from one prepared without it.
    code = "import os; probe.result['level'] = os.environ.get('VLLM_LOGGING_LEVEL')"
    first = run_probe(code, pool=pool)
    other = run_probe(code, pool=pool, env={"VLLM_LOGGING_LEVEL": "DEBUG"})
    assert (first.values["level"], other.values["level"]) == (None, "DEBUG")
    assert "VLLM_LOGGING_LEVEL" in pool.servers[0].env_read
    assert pool.started == 2


def test_a_forked_probe_that_hangs_is_killed_and_the_pool_goes_on(pool):
    hung = run_probe("import time; time.sleep(60)", pool=pool, timeout=2)
    assert hung.status == "timeout"
    assert hung.wall_s < 30
    after = run_probe(COUNTER, pool=pool)
    assert after.ok and pool.started == 1


@pytest.mark.parametrize(
    ("code", "status", "field", "value"),
    [
        ("import os; os._exit(3)", "crashed", "exit_code", 3),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "crashed", "signal", 9),
        ("raise SystemExit(2)", "raised", "exit_code", 0),
    ],
)
def test_a_forked_probe_reports_exits_and_crashes_as_a_fresh_one_does(
    pool, code, status, field, value
):
    served, fresh = run_probe(code, pool=pool), run_probe(code)
    assert (served.status, getattr(served, field)) == (status, value)
    assert (fresh.status, getattr(fresh, field)) == (status, value)
    assert pool.started == 1


def test_a_forked_probe_that_segfaults_says_where_as_a_fresh_one_does(pool):
    crash = "import ctypes\ndef native_kernel():\n    ctypes.string_at(0)\nnative_kernel()\n"
    served = run_probe(crash, pool=pool)
    assert served.signal == 11 and pool.started == 1
    assert served.crash_report.startswith("Fatal Python error: Segmentation fault")
    assert "native_kernel" in served.describe()


def test_output_is_captured_and_counted_in_a_forked_probe(pool):
    result = run_probe("import sys; print('x' * 5000); print('oops', file=sys.stderr)", pool=pool)
    assert result.ok
    assert result.stdout_tail.endswith("x" * 100 + "\n")
    assert "oops" in result.stderr_tail
    assert result.output_bytes == 5001 + 5


def test_coverage_and_engine_patches_still_start_fresh_interpreters(pool):
    patched = run_probe(COUNTER, pool=pool, patch="import os")
    assert patched.ok and pool.started == 0


@needs_torch
def test_the_warm_interpreter_has_imported_the_model_stack(pool):
    code = "import sys; probe.result['torch'] = 'torch' in sys.modules"
    cold, warm = run_probe(code, pool=pool), run_probe(code, pool=pool, warm=True)
    assert (cold.values["torch"], warm.values["torch"]) == (False, True)
    assert pool.started == 2


def test_a_server_that_cannot_start_falls_back_to_fresh_probes(pool, monkeypatch):
    # A server started with a flag it does not know never says it is ready.
    monkeypatch.setattr(probe_module, "SERVE_FLAG", "--no-such-flag")
    result = run_probe(COUNTER, pool=pool)
    assert result.ok and result.values["seen"] == 0
    assert pool.servers == [] and pool.failed


@needs_torch
def test_the_engine_run_checks_of_one_run_share_one_engine_interpreter():
    """stat_logger.is-class, .constructs and .engine-run (one configuration: the plugin alone
    admitted) fork from one warm interpreter: one engine import for the three."""
    target = resolve_target("vllm_add_dummy_stat_logger")
    wanted = ("stat_logger.is-class", "stat_logger.constructs", "stat_logger.engine-run")
    catalog = {k: v for k, v in load_catalog().items() if k in wanted}
    session = Session(target)
    with target:
        results = [run_planned(session, item) for item in plan(target, session.contract, catalog)]
    session.close()
    assert {r.id: r.status for r in results} == dict.fromkeys(wanted, "passed")
    probes = [k for k in session._probes if k.startswith('["conformance.probes.stat_logger')]
    assert len(probes) == 3
    # One warm server for the three (the facts probe, cold, has its own).
    assert session.pool.started == 2


def test_a_cancelled_probe_stops_at_once():
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    started = time.perf_counter()
    result = run_probe("import time; time.sleep(60)", cancel=cancel, timeout=120)
    assert result.status == "cancelled" and time.perf_counter() - started < 20


def _platform_check(session: Session, check_id: str) -> CheckContext:
    items = [i for i in plan(session.target, session.contract) if i.check.id == check_id]
    return CheckContext(session, items[0].check, items[0].entry_point)


def test_the_engine_run_started_ahead_is_the_one_the_check_then_asks_for(monkeypatch):
    """platform.worker-runs declares its engine run: prefetched, it runs once, in a thread of
    its own, and the check's own request gets that result."""
    calls: list[dict] = []

    def fake_run_probe(**kwargs):
        calls.append(kwargs)
        return ProbeResult(status="ok", exit_code=0)

    monkeypatch.setattr(context_module, "run_probe", fake_run_probe)
    target = resolve_target("vllm_add_dummy_platform")
    session = Session(target)
    with target:
        ctx = _platform_check(session, "platform.worker-runs")
        ctx.prefetch_engine_run()
        ctx.prefetch_engine_run()  # already started
        result = ctx.engine_run()
    session.close()
    assert result.status == "ok" and len(calls) == 1
    (call,) = calls
    assert call["call"] == "conformance.probes.platform:observe_worker_run"
    assert call["env"] == {"VLLM_PLUGINS": "dummy_platform_plugin,dummy_custom_ops"}
    assert call["pool"] is None and call["cancel"] is not None  # a fresh interpreter, stoppable


def test_a_run_prefetches_only_the_first_selected_engine_run(monkeypatch):
    started: list[str] = []
    monkeypatch.setattr(
        CheckContext, "prefetch_engine_run", lambda ctx: started.append(ctx.check.id)
    )
    target = resolve_target("vllm_add_dummy_platform")
    session = Session(target)
    with target:
        items = plan(target, session.contract)
        prefetch_engine_runs(session, items)
        prefetch_engine_runs(session, [i for i in items if i.check.id != "platform.worker-runs"])
    assert started == ["platform.worker-runs"]


def test_closing_a_session_stops_an_engine_run_no_check_asked_for(monkeypatch):
    stopped = threading.Event()

    def slow_run_probe(**kwargs):
        kwargs["cancel"].wait(60)
        stopped.set()
        return ProbeResult(status="cancelled")

    monkeypatch.setattr(context_module, "run_probe", slow_run_probe)
    target = resolve_target("vllm_add_dummy_platform")
    session = Session(target)
    with target:
        _platform_check(session, "platform.worker-runs").prefetch_engine_run()
        session.close()
    assert stopped.is_set() and not session._ahead
