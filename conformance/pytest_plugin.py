"""The pytest plugin (`pytest11` entry point `vllm_conformance`).

`pytest --plugin-under-test=DIST` collects the check catalog for DIST (from any directory;
with no paths, only the suite) as items `vllm-conformance::<check id>[<group>:<name>]`.
Without the option the plugin only offers the fixtures `conformance_overlay` and
`conformance_probe` and changes nothing else.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conformance.context import Session, contract_problem
from conformance.framework import load_catalog
from conformance.measure import CoverageUnavailable, Measurement, plugin_scope
from conformance.measure import render_console as render_coverage
from conformance.overlay import Overlay
from conformance.preflight import render_preflight, run_preflight
from conformance.probe import ENGINE_CHOICES, ProbeResult, resolve_engine, run_probe
from conformance.report import build_report, engine_info, plugin_subject, write_reports
from conformance.runner import (
    CheckResult,
    Planned,
    exit_code,
    on_real_vllm,
    plan,
    prefetch_engine_runs,
    read_expected_failures,
    run_planned,
)
from conformance.target import TargetError, resolve_target

ENV_VAR = "VLLM_CONFORMANCE_PLUGIN"
COLLECTOR_NAME = "vllm-conformance"
_STATE = pytest.StashKey["_RunState"]()
#: The key of `workerinput` that hands the coverage directory to pytest-xdist workers.
COVERAGE_DIR = "vllm_conformance_coverage"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vllm-conformance", "vLLM plugin conformance")
    group.addoption(
        "--plugin-under-test",
        metavar="DIST",
        help="certify this plugin distribution (installed name, project path or bundled "
        f"fixture); also the ini key plugin_under_test and ${ENV_VAR}",
    )
    group.addoption(
        "--engine",
        choices=ENGINE_CHOICES,
        default=None,
        help="the engine that answers `import vllm` in probes: reference, vllm, or auto "
        "(default: vllm where it is installed, else the reference)",
    )
    group.addoption(
        "--expected-failures",
        metavar="FILE",
        help='TOML (or JSON) table: "check.id" or "check.id[group:name]" = "reason"',
    )
    group.addoption(
        "--conformance-report",
        metavar="DIR",
        help="write conformance-report.json and conformance-report.md into DIR",
    )
    group.addoption(
        "--conformance-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds one probe may run (default 60)",
    )
    group.addoption(
        "--conformance-strict",
        action="store_true",
        default=False,
        help="recommended checks count as required: their failures fail the run",
    )
    group.addoption(
        "--conformance-contract",
        metavar="VERSION",
        default=None,
        help="judge by the rules of this plugin-contract version (the reference engine only)",
    )
    group.addoption(
        "--plugin-coverage",
        action="store_true",
        default=False,
        help="measure which of the plugin's lines the checks execute (needs coverage.py); the "
        "verdict does not change",
    )
    group.addoption(
        "--certify",
        action="store_true",
        default=False,
        help="a certification run: no deselection, no expected failures",
    )
    parser.addini("plugin_under_test", "distribution to certify (like --plugin-under-test)")
    parser.addini("conformance_engine", "engine for probes (like --engine)", default="auto")


class _RunState:
    """Per-process state of a conformance run."""

    def __init__(self, config: pytest.Config, spec: str) -> None:
        self.spec = spec
        try:
            self.target = resolve_target(spec)
        except TargetError as exc:
            raise pytest.UsageError(f"--plugin-under-test: {exc}") from None
        choice = config.getoption("engine") or config.getini("conformance_engine")
        if choice not in ENGINE_CHOICES:
            raise pytest.UsageError(
                f"Unknown engine {choice!r}; expected one of {', '.join(ENGINE_CHOICES)}."
            )
        self.engine, self.engine_why = resolve_engine(choice)
        contract = config.getoption("conformance_contract")
        problem = contract_problem(self.engine, contract, "--conformance-contract")
        if problem:
            raise pytest.UsageError(problem)
        self.session = Session(self.target, self.engine, contract_version=contract)
        timeout = config.getoption("conformance_timeout")
        if timeout is not None:
            self.session.timeout = timeout
        self.certify = bool(config.getoption("certify"))
        self.strict = bool(config.getoption("conformance_strict"))
        self.expected = _read_expected_failures(config.getoption("expected_failures"))
        self.results: dict[str, CheckResult] = {}
        self.report_path: str | None = None
        self.measurement = _measurement(config)
        self.coverage: dict[str, Any] | None = None
        self.prefetched = False

    def planned(self) -> list[Planned]:
        return plan(self.target, self.session.contract)

    def measure(self) -> None:
        """Start measuring the plugin's lines in this process's probes (once, lazily: only
        processes that run checks measure)."""
        if self.measurement is not None and self.session.coverage is None:
            self.session.coverage = self.measurement.start(plugin_scope(self.target))

    def prefetch(self, session: pytest.Session) -> None:
        """Once per process, before its first check: start the engine run the selected
        checks declare (`prefetch_engine_runs`). Not on xdist workers: each collects every
        check, and which of them will run the engine is not known there."""
        if self.prefetched or hasattr(session.config, "workerinput"):
            return
        self.prefetched = True
        items = [i.planned for i in session.items if isinstance(i, CheckItem)]
        prefetch_engine_runs(self.session, items)

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        # pytest-xdist: every worker measures into the controller's directory.
        if self.measurement is not None:
            node.workerinput[COVERAGE_DIR] = str(self.measurement.directory)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Runs on the xdist controller too: worker reports arrive with their user_properties.
        for key, value in getattr(report, "user_properties", ()):
            if key == "conformance":
                result = CheckResult(**json.loads(value))
                self.results[f"{result.id}[{result.entry_point}]"] = result


def _measurement(config: pytest.Config) -> Measurement | None:
    """`--plugin-coverage`'s measurement: a new directory, or on an xdist worker the
    controller's (a usage error without coverage.py)."""
    if not config.getoption("plugin_coverage"):
        return None
    directory = getattr(config, "workerinput", {}).get(COVERAGE_DIR)
    try:
        return Measurement(directory)
    except CoverageUnavailable as exc:
        raise pytest.UsageError(f"--plugin-coverage: {exc}") from None


def _read_expected_failures(path: str | None) -> dict[str, str]:
    try:
        return read_expected_failures(path)
    except ValueError as exc:
        raise pytest.UsageError(f"--expected-failures: {exc}") from None


def _spec(config: pytest.Config) -> str | None:
    return (
        config.getoption("plugin_under_test")
        or config.getini("plugin_under_test")
        or os.environ.get(ENV_VAR)
        or None
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "conformance: a vllm-conformance catalog check")
    spec = _spec(config)
    if not spec:
        return
    state = _RunState(config, spec)
    if state.certify:
        if state.expected:
            raise pytest.UsageError("--certify allows no --expected-failures.")
        if (
            config.getoption("keyword")
            or config.getoption("markexpr")
            or config.getoption("deselect", None)
        ):
            raise pytest.UsageError("--certify allows no deselection (-k, -m, --deselect).")
    known = {p.item_id for p in state.planned()} | set(load_catalog())
    for key in sorted(set(state.expected) - known):
        config.issue_config_time_warning(
            pytest.PytestConfigWarning(
                f"--expected-failures names {key!r}, which is no check of this run"
            ),
            stacklevel=2,
        )
    config.stash[_STATE] = state
    config.pluginmanager.register(state, "vllm-conformance-run")


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is not None:
        state.target.cleanup()
        if state.measurement is not None:
            state.measurement.cleanup()


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = config.stash.get(_STATE, None)
    if state is None:
        return []
    t = state.target
    lines = [
        f"vllm-conformance: plugin {t.name} {t.version or '?'} ({t.source}); engine "
        f"{state.engine} ({state.engine_why}; contract {state.session.contract}); "
        f"certify={state.certify}"
    ]
    lines += [f"  entry point {ep.group}: {ep.name} = {ep.value}" for ep in t.vllm_entry_points]
    preflight = run_preflight(t, state.engine)
    lines += render_preflight(preflight, on_real_vllm(t))
    env = {k: v for k, v in sorted(os.environ.items()) if k.startswith("VLLM_")}
    lines.append(
        "  VLLM_* environment: " + (", ".join(f"{k}={v!r}" for k, v in env.items()) or "none")
    )
    return lines


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # With --plugin-under-test and no paths, the run is the suite alone, from any directory.
    if (
        config.stash.get(_STATE, None) is not None
        and config.args_source != pytest.Config.ArgsSource.ARGS
    ):
        return True
    return None


class ConformanceWarning(UserWarning):
    """A recommended check failed."""


class CheckItem(pytest.Item):
    def __init__(self, *, planned: Planned, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.planned = planned
        self.add_marker(pytest.mark.conformance)

    def runtest(self) -> None:
        state: _RunState = self.config.stash[_STATE]
        state.measure()
        state.prefetch(self.session)
        result = run_planned(state.session, self.planned, state.expected)
        self.user_properties.append(("conformance", json.dumps(result.to_json())))
        if result.status == "failed" and result.level == "recommended" and not state.strict:
            # Recommended checks warn: they never fail the run or the certification.
            warnings.warn(ConformanceWarning(result.message), stacklevel=1)
            return
        if result.status == "passed" and result.message:
            # A pass with a note (a second attempt after the engine failed on its own).
            warnings.warn(ConformanceWarning(result.message), stacklevel=1)
        if result.status in ("failed", "error"):
            pytest.fail(result.message, pytrace=False)
        if result.status == "blocked":
            pytest.skip(f"blocked by {result.blocked_by}: it did not pass")
        if result.status in ("skipped", "inconclusive"):
            pytest.skip(result.message)
        if result.status == "xfailed":
            pytest.xfail(result.message)

    def reportinfo(self) -> tuple[str, int, str]:
        return (COLLECTOR_NAME, 0, self.name)


class CatalogCollector(pytest.Collector):
    def collect(self) -> list[pytest.Item]:
        state: _RunState = self.config.stash[_STATE]
        return [
            CheckItem.from_parent(self, name=planned.item_id, planned=planned)
            for planned in state.planned()
        ]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    if config.stash.get(_STATE, None) is None:
        return
    collector = CatalogCollector.from_parent(session, name=COLLECTOR_NAME, nodeid=COLLECTOR_NAME)
    items.extend(collector.collect())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    state = config.stash.get(_STATE, None)
    if state is not None and state.measurement is not None:
        state.measurement.collect()  # before the target's overlay is cleaned up
    if state is None or hasattr(config, "workerinput"):
        return
    if state.measurement is not None:
        state.coverage = state.measurement.summary()
    directory = config.getoption("conformance_report")
    results = [state.results[key] for key in sorted(state.results)]
    if directory:
        report = build_report(
            plugin_subject(state.target),
            engine_info(state.engine, state.session.contract),
            results,
            state.strict,
            coverage=state.coverage,
        )
        json_path, _ = write_reports(report, directory)
        state.report_path = str(json_path)
    if results and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        # The same exit code as `vllm-conformance certify` on the same run.
        session.exitstatus = exit_code(results, state.strict)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is None or hasattr(config, "workerinput"):
        return
    from conformance.runner import verdict

    results = list(state.results.values())
    terminalreporter.write_sep("=", "vllm-conformance")
    if not results:
        # `--co`, or every item deselected: nothing ran, so there is no verdict to give.
        terminalreporter.write_line(f"{state.target.name}: no checks ran, no verdict")
    else:
        terminalreporter.write_line(
            f"{state.target.name}: {verdict(results, state.strict)} ({len(results)} checks)"
        )
    if state.coverage is not None:
        for line in render_coverage(state.coverage):
            terminalreporter.write_line(line)
    if state.report_path:
        terminalreporter.write_line(f"report: {state.report_path}")


@pytest.fixture
def conformance_overlay(tmp_path: Path) -> Iterator[Overlay]:
    """An empty overlay in the test's temporary directory; add plugins to it."""
    yield Overlay(tmp_path / "overlay")


@pytest.fixture
def conformance_probe() -> Callable[..., ProbeResult]:
    """`run_probe(code, engine=..., overlay=..., env=..., timeout=...)` for this test."""

    def probe(code: str, **kwargs: Any) -> ProbeResult:
        return run_probe(code, **kwargs)

    return probe
