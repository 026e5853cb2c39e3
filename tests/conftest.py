"""Shared helpers for the suite's own tests."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path

import pytest

from conformance.context import Session
from conformance.framework import load_catalog
from conformance.overlay import Overlay
from conformance.runner import CheckResult, plan, run_planned
from conformance.target import EntryPointInfo, Target

#: Without torch, the checks of plugins that need it are inconclusive and a run of such a good
#: fixture is `incomplete` (exit 3) rather than `certified` (exit 0).
HAS_TORCH = importlib.util.find_spec("torch") is not None
#: Without fastapi (the `endpoint` extra) the endpoint plugins' checks are inconclusive too.
HAS_FASTAPI = importlib.util.find_spec("fastapi") is not None
GOOD_VERDICT, GOOD_EXIT = ("certified", 0) if HAS_TORCH else ("incomplete", 3)


def torch_inconclusive(status: str, message: str) -> bool:
    """A check that could not judge here, in a torch-less environment (torch, or a dependency
    the plugin declares such as numpy, is missing; or a check it needs could not judge), or
    in one without fastapi."""
    return not (HAS_TORCH and HAS_FASTAPI) and status == "inconclusive"


GENERAL = "vllm.general_plugins"
PLATFORM = "vllm.platform_plugins"
IO_PROCESSOR = "vllm.io_processor_plugins"
STAT_LOGGER = "vllm.stat_logger_plugins"
#: General plugins the engine itself provides (vLLM declares them in its own distribution).
BUILTIN_GENERAL = ["lora_filesystem_resolver"]


def add_plugin(
    overlay: Overlay, dist: str, entry_points: dict[str, dict[str, str]], **modules: str
) -> Overlay:
    """Put an inline plugin in `overlay`: `modules` maps module names to (dedented) source."""
    files = {f"{name.replace('.', '/')}.py": textwrap.dedent(src) for name, src in modules.items()}
    return overlay.add_inline(dist, files, entry_points)


def inline_target(group: str, name: str, source: str, attr: str) -> Target:
    """A plugin project `name` of one module, whose entry point `name = name:attr` in `group`
    is the target (source dedented)."""
    overlay = Overlay().add_inline(
        name, {f"{name}/__init__.py": textwrap.dedent(source)}, {group: {name: f"{name}:{attr}"}}
    )
    eps = (EntryPointInfo(group, name, f"{name}:{attr}"),)
    return Target(name, "0.1.0", "project", eps, ("vllm>=0.30",), None, overlay)


@pytest.fixture(scope="module", autouse=True)
def modelled_contract(request: pytest.FixtureRequest) -> Iterable[None]:
    """A module marked `pytestmark = pytest.mark.contract("0.32.0")` tests the behaviour of that
    contract release: the reference engine models it, in this process and in every probe the
    module starts (they inherit the variable). Unmarked modules get the default (the newest)."""
    from reference._version import CONTRACT_ENV

    marker = request.node.get_closest_marker("contract")
    if marker is None:
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CONTRACT_ENV, marker.args[0])
        yield


#: Set by coverage.py (`patch = subprocess`) in a measured process: every Python subprocess
#: started with it in its environment measures itself.
MEASURE_SUBPROCESSES = "COVERAGE_PROCESS_CONFIG"


@pytest.fixture(autouse=True)
def sweeps_unmeasured(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test marked `sweep` runs a whole catalog (or engine suite) against one mutant: it
    repeats, many times over, the plugin-side and engine-side code that the other tests
    measure. Under `tox -e engine`'s coverage, the subprocesses it starts (probes, pytester
    runs) are not measured, which costs them half their time again (docs/coverage.md)."""
    if request.node.get_closest_marker("sweep") is not None:
        monkeypatch.delenv(MEASURE_SUBPROCESSES, raising=False)


@pytest.fixture
def overlay(tmp_path) -> Overlay:
    return Overlay(tmp_path / "overlay")


def code(src: str) -> str:
    return textwrap.dedent(src)


def run_check_group(
    target: Target, group: str | tuple[str, ...], exclude: Iterable[str] = ()
) -> dict[str, CheckResult]:
    """Run the checks of `group` (one name, or several in one session) less `exclude` on
    `target` as `run_checks` does, by id."""
    groups = (group,) if isinstance(group, str) else group
    excluded = set(exclude)
    catalog = {k: v for k, v in load_catalog().items() if v.group in groups and k not in excluded}
    session = Session(target)
    with target:
        return {
            item.check.id: run_planned(session, item)
            for item in plan(target, session.contract, catalog)
        }


def assert_mutant_fails(results: dict[str, CheckResult], check_id: str, observed: str) -> None:
    """The mutant fails its own check, saying what was observed and ending with the fix hint,
    and only it: every other check that does not pass is blocked by it."""
    __tracebackhide__ = True
    result = results[check_id]
    assert result.status == "failed", f"{check_id} should fail on its mutant: {result.message}"
    assert result.message.startswith(f"[{check_id}]")
    assert observed in result.message, "the message shows what was observed"
    assert f"\nFix: {load_catalog()[check_id].fix}" in result.message, "the fix hint ends it"
    failed = {k for k, r in results.items() if r.status in ("failed", "error")}
    assert failed == {check_id}, "it fails its own check and only it"
    stray = {k: r.blocked_by for k, r in results.items() if r.status == "blocked"}
    assert all(by == check_id for by in stray.values()), f"blocked by other checks: {stray}"


def corpus_module():
    """`benchmarks/corpus.py` (not a package: imported from its folder, then the path is
    restored)."""
    benchmarks = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, benchmarks)
    try:
        import corpus
    finally:
        sys.path.remove(benchmarks)
    return corpus
