"""Meta-tests of the suite through pytest itself: good fixtures certify, mutants fail their check."""

from __future__ import annotations

import ast
import fnmatch
import importlib.util
import json

import pytest

from conformance.cli import main
from conformance.overlay import fixture_names, fixtures_root
from conformance.probes.engine_run import ENGINE_RUN_DEPS
from conformance.target import mutant_names
from tests.conftest import torch_inconclusive
from tests.test_checks_logits import JUDGED_AS
from tests.test_drift import MUTANTS_JUDGED_AS as DRIFT_JUDGED_AS

#: Mutants judged by an older contract's rules than the reference's default (its newest).
PINNED = {**JUDGED_AS, **{m: DRIFT_JUDGED_AS for m in mutant_names() if m.startswith("drift.")}}

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.slow


def _certify(pytester, target, tmp_path, *extra):
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        f"--plugin-under-test={target}",
        "--certify",
        f"--conformance-report={tmp_path}",
        "-q",
        *extra,
    )
    report = json.loads((tmp_path / "conformance-report.json").read_text())
    return result, report


@pytest.mark.parametrize("fixture", fixture_names())
def test_every_good_fixture_certifies_with_nothing_failed_even_strict(pytester, tmp_path, fixture):
    # Strict: a failed recommended check would fail the run too (exit 1).
    result, report = _certify(pytester, fixture, tmp_path, "--conformance-strict")
    bad = [
        (c["id"], c["entry_point"], c["message"])
        for c in report["checks"]
        if c["status"] not in ("passed", "skipped")
        and not torch_inconclusive(c["status"], c["message"])
    ]
    assert bad == [], f"{fixture} should pass every check"
    skips = [c["message"] for c in report["checks"] if c["status"] == "skipped"]
    assert all(m.startswith("capability skip:") for m in skips), skips
    unjudged = any(c["status"] == "inconclusive" for c in report["checks"])
    expected, code = ("incomplete", 3) if unjudged else ("certified", 0)
    assert report["summary"]["verdict"] == expected and result.ret == code


#: Checks that build an engine and run a model: they cannot judge without the model stack.
ENGINE_RUNS = ("*.engine-run", "general.models-run", "platform.worker-runs")


#: Optional modules a mutant's code may import: without them its check cannot judge it.
OPTIONAL_IMPORTS = {"torch", "fastapi"}


def _optional_imports(mutant):
    """The optional modules the mutant plugin's own code imports (read, not run)."""
    found = set()
    for path in (fixtures_root() / "mutants" / mutant).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            found |= {name.partition(".")[0] for name in names} & OPTIONAL_IMPORTS
    return found


def _skip_unless_judgeable(mutant):
    """Skip up front, from what is installed here and never from the outcome, a mutant its
    check cannot judge here: one whose code imports torch or fastapi, or whose check runs a
    model."""
    needs = _optional_imports(mutant)
    if any(fnmatch.fnmatchcase(mutant, pattern) for pattern in ENGINE_RUNS):
        needs.update(ENGINE_RUN_DEPS)
    missing = sorted(m for m in needs if importlib.util.find_spec(m) is None)
    if missing:
        pytest.skip(f"{mutant} needs {', '.join(missing)}, which is not installed here")


def _assert_fails_only_its_own_check(mutant, report):
    """The mutant fails its own check, with the rule and the fix, and only it across the whole
    catalog: every other check passes, does not apply, or is blocked by the mutant's own."""
    __tracebackhide__ = True
    own = [c for c in report["checks"] if c["id"] == mutant]
    assert own, f"the check {mutant} did not run on its mutant"
    assert all(c["status"] == "failed" for c in own), own
    message = own[0]["message"]
    assert message.startswith(f"[{mutant}]") and "Rule:" in message and "Fix:" in message
    assert report["summary"]["verdict"] == "not-certified"
    stray = {
        f"{c['id']}[{c['entry_point'] or ''}]": (c["status"], c["blocked_by"])
        for c in report["checks"]
        if c["id"] != mutant
        and c["status"] not in ("passed", "skipped")
        and not torch_inconclusive(c["status"], c["message"])
        and not (c["status"] == "blocked" and c["blocked_by"] == mutant)
    }
    assert stray == {}, f"{mutant} should fail only {mutant}"


@pytest.mark.sweep
@pytest.mark.parametrize("mutant", mutant_names())
def test_every_mutant_fails_its_own_check_and_certify_strict_exits_1(tmp_path, mutant, capsys):
    _skip_unless_judgeable(mutant)
    contract = PINNED.get(mutant)
    pinned = ("--contract", contract) if contract else ()
    code = main(["certify", mutant, "--strict", "--report-dir", str(tmp_path), *pinned])
    out = capsys.readouterr().out
    assert code == 1 and f"[{mutant}]" in out
    report = json.loads((tmp_path / "conformance-report.json").read_text())
    _assert_fails_only_its_own_check(mutant, report)


def _one_mutant_per_group():
    """The first mutant of each check group: the pytest plugin's side of the sweep above."""
    first = {}
    for mutant in mutant_names():
        first.setdefault(mutant.partition(".")[0], mutant)
    return sorted(first.values())


@pytest.mark.sweep
@pytest.mark.parametrize("mutant", _one_mutant_per_group())
def test_the_pytest_plugin_fails_a_mutant_of_each_group_on_its_own_check_only(
    pytester, tmp_path, mutant
):
    # The plugin and the CLI share the runner: one mutant per group shows the plugin's
    # report and exit status agree with the CLI's sweep.
    _skip_unless_judgeable(mutant)
    contract = PINNED.get(mutant)
    pinned = ("--conformance-contract", contract) if contract else ()
    result, report = _certify(pytester, mutant, tmp_path, "--conformance-strict", *pinned)
    _assert_fails_only_its_own_check(mutant, report)
    assert result.ret == 1
