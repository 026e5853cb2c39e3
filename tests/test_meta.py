"""Meta-tests of the suite through pytest itself: good fixtures certify, mutants fail their check."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conformance.cli import main
from conformance.overlay import fixture_names
from conformance.target import mutant_names

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
def test_every_good_fixture_certifies_with_nothing_failed(pytester, tmp_path, fixture):
    result, report = _certify(pytester, fixture, tmp_path)
    bad = [
        (c["id"], c["entry_point"], c["message"])
        for c in report["checks"]
        if c["status"] not in ("passed", "skipped")
    ]
    assert bad == [], f"{fixture} should pass every check"
    skips = [c["message"] for c in report["checks"] if c["status"] == "skipped"]
    assert all(m.startswith("capability skip:") for m in skips), skips
    assert report["summary"]["verdict"] == "certified" and result.ret == 0


@pytest.mark.parametrize("mutant", mutant_names())
def test_every_mutant_fails_its_own_check(pytester, tmp_path, mutant):
    result, report = _certify(pytester, mutant, tmp_path, "--conformance-strict")
    own = [c for c in report["checks"] if c["id"] == mutant]
    assert own, f"the check {mutant} did not run on its mutant"
    if importlib.util.find_spec("torch") is None and all(
        c["status"] == "skipped" and "torch" in c["message"] for c in own
    ):
        pytest.skip(f"{mutant} needs torch, which is not installed")
    assert all(c["status"] == "failed" for c in own), own
    message = own[0]["message"]
    assert message.startswith(f"[{mutant}]") and "Rule:" in message and "Fix:" in message
    assert report["summary"]["verdict"] == "not-certified" and result.ret == 1


@pytest.mark.parametrize("fixture", fixture_names())
def test_certify_exits_0_on_every_good_fixture_even_strict(fixture, capsys):
    assert main(["certify", fixture, "--strict"]) == 0, capsys.readouterr().out


@pytest.mark.parametrize("mutant", mutant_names())
def test_certify_strict_exits_1_on_every_mutant(mutant, capsys):
    code = main(["certify", mutant, "--strict"])
    out = capsys.readouterr().out
    if importlib.util.find_spec("torch") is None and f"[{mutant}]" not in out:
        pytest.skip(f"{mutant} needs torch, which is not installed")
    assert code == 1 and f"[{mutant}]" in out
