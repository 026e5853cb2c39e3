"""Engine mode: the reference passes every engine check, and each engine mutant fails its own."""

from __future__ import annotations

import importlib.util

import pytest

from conformance.checks import load_catalog
from conformance.context import Session
from conformance.overlay import fixtures_root
from conformance.runner import Planned, engine_target, plan_engine, run_planned

CATALOG = load_catalog()
ENGINE_CHECKS = sorted(c for c in CATALOG if c.startswith("engine."))


def _run(check_id: str, patch: str = ""):
    session = Session(engine_target("reference"), "reference", engine_patch=patch)
    return run_planned(session, Planned(CATALOG[check_id], None))


def test_engine_checks_are_planned_for_the_reference_contract():
    planned = [p.check.id for p in plan_engine("0.32.0")]
    assert planned == ENGINE_CHECKS and len(planned) >= 10


@pytest.mark.parametrize("check_id", ENGINE_CHECKS)
def test_the_reference_engine_passes(check_id):
    result = _run(check_id)
    assert result.status in ("passed", "skipped"), result.message


@pytest.mark.parametrize("check_id", ENGINE_CHECKS)
def test_the_engine_mutant_fails_its_own_check(check_id):
    patch = fixtures_root() / "mutants" / check_id / "patch.py"
    assert patch.is_file(), f"{check_id} has no engine mutant at {patch}"
    result = _run(check_id, patch.read_text(encoding="utf-8"))
    if result.status == "skipped" and importlib.util.find_spec("torch") is None:
        pytest.skip(f"{check_id} needs torch, which is not installed: {result.message}")
    assert result.status == "failed", f"the mutant passed {check_id}: {result.message}"
    assert f"[{check_id}]" in result.message and "Fix:" in result.message


def test_every_catalog_check_has_a_mutant():
    root = fixtures_root() / "mutants"
    missing = [
        check_id
        for check_id in CATALOG
        if not (root / check_id / "pyproject.toml").is_file()
        and not (root / check_id / "patch.py").is_file()
    ]
    assert missing == [], f"checks without a mutant: {missing}"
