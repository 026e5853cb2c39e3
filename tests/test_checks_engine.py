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
    missing = [m for m in ("torch", "ray") if importlib.util.find_spec(m) is None]
    if result.status == "skipped" and missing:
        pytest.skip(f"{check_id} skipped where {', '.join(missing)} is missing: {result.message}")
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


RAY_CHECK = "engine.plugins-in-ray-workers"


def test_the_ray_check_is_a_capability_skip_without_ray_naming_the_install():
    # find_spec answers None for a module set to None in sys.modules: "Ray is not installed".
    result = _run(RAY_CHECK, "import sys\nsys.modules['ray'] = None\n")
    assert result.status == "skipped", result.message
    assert "pip install ray" in result.message


def test_the_ray_check_skips_where_the_engine_refuses_ray_on_its_platform():
    pytest.importorskip("ray", reason="the scenario starts a Ray cluster: pip install ray")
    pytest.importorskip("torch")
    # What vLLM's executor raises on its CPU platform (no ray_device_key), made to happen here.
    patch = (
        "import vllm.v1.executor.ray_executor as _ray_executor\n"
        "def _refuse():\n"
        "    raise ValueError('current platform cpu does not support ray.')\n"
        "_ray_executor.initialize_ray_cluster = _refuse\n"
    )
    result = _run(RAY_CHECK, patch)
    assert result.status == "skipped", result.message
    assert "does not support ray" in result.message and "ray_device_key" in result.message


@pytest.mark.slow
def test_the_ray_mutant_fails_naming_the_workers_that_loaded_the_excluded_plugin():
    pytest.importorskip("ray", reason="the scenario starts a Ray cluster: pip install ray")
    pytest.importorskip("torch")
    patch = fixtures_root() / "mutants" / RAY_CHECK / "patch.py"
    result = _run(RAY_CHECK, patch.read_text(encoding="utf-8"))
    assert result.status == "failed", result.message
    assert "the plugin it leaves out loaded in Ray worker pid" in result.message
    assert "driver" not in result.message.split("loaded in", 1)[1].split("(", 1)[0]
