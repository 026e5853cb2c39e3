"""The `lora_resolver.*` checks: mutants trip them, the filesystem resolvers pass them."""

from __future__ import annotations

import shutil
import textwrap

import pytest

from conformance.framework import load_catalog
from conformance.overlay import Overlay, fixture_names, fixtures_root
from conformance.runner import CheckResult
from conformance.target import EntryPointInfo, Target, resolve_target
from tests.conftest import assert_mutant_fails, run_check_group

GROUP = "lora_resolver"
GENERAL = "vllm.general_plugins"
CHECKS = sorted(k for k, v in load_catalog().items() if v.group == GROUP)
#: Every mutant of the group: fixtures/mutants/lora_resolver.<check>, named after its check.
MUTANTS = sorted(
    p.name for p in (fixtures_root() / "mutants").iterdir() if p.name.startswith(GROUP + ".")
)
#: What each mutant's failure message must show, beyond the fix hint.
OBSERVED = {
    "lora_resolver.async": "resolve_lora is not an `async def`",
    "lora_resolver.unknown-is-none": "raised FileNotFoundError",
    "lora_resolver.no-path-escape": "a symbolic link in the resolver's directory",
}
#: The hook `lora_filesystem_resolver_plugin` needs so the checks can configure it.
FIXTURE_HOOK = '''

def conformance_setup(workdir: str) -> None:
    """vllm-plugin-conformance hook: serve adapters from `<workdir>/adapters`."""
    adapter_dir = os.path.join(workdir, "adapters")
    os.makedirs(adapter_dir, exist_ok=True)
    os.environ[ENV_VAR] = adapter_dir
'''


def run_group(target: Target, groups: tuple[str, ...] = (GROUP,)) -> dict[str, CheckResult]:
    return run_check_group(target, groups)


def inline_target(name: str, source: str) -> Target:
    """A general plugin `name:register` written on the spot, as a target."""
    overlay = Overlay().add_inline(
        name,
        {f"{name}/__init__.py": textwrap.dedent(source)},
        {GENERAL: {name: f"{name}:register"}},
    )
    eps = (EntryPointInfo(GENERAL, name, f"{name}:register"),)
    return Target(name, "0.1.0", "project", eps, ("vllm>=0.30",), None, overlay)


def assert_all_pass(results: dict[str, CheckResult]) -> None:
    assert sorted(results) == CHECKS
    for check_id, result in results.items():
        assert result.status == "passed", f"{check_id}: {result.message}"


def test_every_lora_resolver_check_has_a_mutant():
    assert CHECKS == MUTANTS, "each lora_resolver check needs a mutant named after it"
    assert sorted(OBSERVED) == MUTANTS, "each mutant says what its failure must show"


@pytest.mark.parametrize("check_id", MUTANTS)
def test_the_mutant_fails_its_check_and_only_it(check_id):
    results = run_group(resolve_target(check_id), (GROUP, "package"))
    assert set(CHECKS) <= set(results), "every lora_resolver check judged the mutant"
    assert_mutant_fails(results, check_id, OBSERVED[check_id])


def test_the_escape_mutant_is_caught_by_every_kind_of_name():
    message = run_group(resolve_target("lora_resolver.no-path-escape"))[
        "lora_resolver.no-path-escape"
    ].message
    for kind in ("an absolute path", "a '..' chain", "a relative path from", "a symbolic link in"):
        assert kind in message, f"the check asked by {kind}"
    assert "VLLM_LORA_RESOLVER_CACHE_DIR" in message and "'../' * " in message


def test_the_engines_filesystem_resolver_passes_through_a_small_plugin():
    target = inline_target(
        "builtin_fs",
        """
        from vllm.plugins.lora_resolvers.filesystem_resolver import register_filesystem_resolver

        def register():
            register_filesystem_resolver()
        """,
    )
    assert_all_pass(run_group(target))


def test_the_fixture_passes_once_it_has_the_setup_hook(tmp_path):
    project = tmp_path / "lora_filesystem_resolver_plugin"
    shutil.copytree(
        fixtures_root() / "lora_filesystem_resolver_plugin",
        project,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    init = project / "lora_filesystem_resolver_plugin" / "__init__.py"
    if "def conformance_setup" not in init.read_text(encoding="utf-8"):
        init.write_text(init.read_text(encoding="utf-8") + FIXTURE_HOOK, encoding="utf-8")
    assert_all_pass(run_group(resolve_target(str(project))))


@pytest.mark.parametrize("fixture", fixture_names())
def test_good_fixtures_pass_or_skip_for_want_of_a_resolver(fixture):
    target = resolve_target(fixture)
    results = run_group(target)
    if not target.entry_points_of(GENERAL):
        assert results == {}, "only general plugins are judged"
        return
    statuses = {r.status for r in results.values()}
    if any(r.status == "inconclusive" for r in results.values()):
        pytest.skip("the fixture's general plugin needs a dependency that is not installed")
    if statuses == {"skipped"}:
        # A general plugin with no resolver, or (until it gains conformance_setup) the LoRA
        # fixture, which registers only when its own variable is set.
        for result in results.values():
            assert "registers no LoRA resolver" in result.message
    else:
        assert_all_pass(results)


def test_a_plugin_without_a_resolver_is_told_about_the_hook():
    result = run_group(inline_target("nothing", "def register():\n    pass\n"))
    assert result["lora_resolver.async"].status == "skipped"
    assert "no conformance_setup(workdir) hook, as its entry-point module defines none" in (
        result["lora_resolver.async"].message
    )


def test_a_raising_setup_hook_fails_the_async_check_and_blocks_the_rest():
    results = run_group(
        inline_target(
            "bad_hook",
            """
            def conformance_setup(workdir):
                raise RuntimeError("no adapters here")

            def register():
                pass
            """,
        )
    )
    assert sorted(results) == CHECKS
    first = results["lora_resolver.async"]
    assert first.status == "failed", first.message
    assert "conformance_setup(workdir) hook raised" in first.message
    assert "RuntimeError: no adapters here" in first.message
    others = {k: (r.status, r.blocked_by) for k, r in results.items() if r is not first}
    assert others == {
        "lora_resolver.no-path-escape": ("blocked", "lora_resolver.async"),
        "lora_resolver.unknown-is-none": ("blocked", "lora_resolver.async"),
    }


def test_a_plugin_that_does_not_load_blocks_the_checks_with_the_general_ones():
    results = run_group(
        inline_target(
            "broken_import", "import mutant_no_such_module\n\ndef register():\n    pass\n"
        )
    )
    assert {r.status for r in results.values()} == {"blocked"}
    assert {r.blocked_by for r in results.values()} == {"general.loadable"}


def test_a_resolver_that_answers_every_name_fails_both_behaviour_checks():
    results = run_group(
        inline_target(
            "yes_man",
            """
            import os
            from vllm.lora.request import LoRARequest
            from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

            class YesResolver(LoRAResolver):
                async def resolve_lora(self, base_model_name, lora_name):
                    return LoRARequest(lora_name, 1, "/srv/adapters/" + lora_name)

            def register():
                if "yes" not in LoRAResolverRegistry.resolvers:
                    LoRAResolverRegistry.register_resolver("yes", YesResolver())
            """,
        )
    )
    assert results["lora_resolver.async"].status == "passed"
    assert results["lora_resolver.unknown-is-none"].status == "failed"
    assert "for an adapter nobody made" in results["lora_resolver.unknown-is-none"].message
    assert results["lora_resolver.no-path-escape"].status == "failed"


def test_a_registered_object_without_resolve_lora_fails_the_async_check():
    results = run_group(
        inline_target(
            "not_a_resolver",
            """
            from vllm.lora.resolver import LoRAResolverRegistry

            def register():
                LoRAResolverRegistry.resolvers.setdefault("odd", object())
            """,
        )
    )
    assert results["lora_resolver.async"].status == "failed"
    assert "has no resolve_lora method" in results["lora_resolver.async"].message
    # Nothing can be asked of it, so the behaviour checks have nothing to judge.
    assert results["lora_resolver.unknown-is-none"].status == "blocked"
    assert results["lora_resolver.unknown-is-none"].blocked_by == "lora_resolver.async"


def test_a_resolver_with_the_wrong_signature_fails_the_async_check():
    results = run_group(
        inline_target(
            "one_arg",
            """
            from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

            class OneArg(LoRAResolver):
                async def resolve_lora(self, lora_name):
                    return None

            def register():
                LoRAResolverRegistry.resolvers.setdefault("one", OneArg())
            """,
        )
    )
    message = results["lora_resolver.async"].message
    assert results["lora_resolver.async"].status == "failed"
    assert "cannot be called as resolve_lora(base_model_name, lora_name)" in message


def test_links_are_never_planted_outside_the_checks_workdir(tmp_path):
    # A resolver rooted in a directory of the user's: the check must leave it untouched.
    user_dir = tmp_path / "user-adapters"
    user_dir.mkdir()
    results = run_group(
        inline_target(
            "user_rooted",
            f"""
            from vllm.plugins.lora_resolvers.filesystem_resolver import FilesystemResolver
            from vllm.lora.resolver import LoRAResolverRegistry

            def register():
                LoRAResolverRegistry.resolvers.setdefault("u", FilesystemResolver({str(user_dir)!r}))
            """,
        )
    )
    assert_all_pass(results)
    assert list(user_dir.iterdir()) == [], "no link was planted in the user's directory"


def test_a_resolver_that_never_answers_is_reported_once_and_in_bounded_time():
    results = run_group(
        inline_target(
            "stalls",
            """
            import asyncio
            from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

            class Stalls(LoRAResolver):
                async def resolve_lora(self, base_model_name, lora_name):
                    await asyncio.sleep(3600)

            def register():
                LoRAResolverRegistry.resolvers.setdefault("stalls", Stalls())
            """,
        )
    )
    message = results["lora_resolver.unknown-is-none"].message
    assert results["lora_resolver.unknown-is-none"].status == "failed"
    assert "no answer within 5 s" in message and "not asked" in message
    assert results["lora_resolver.no-path-escape"].status == "passed", "a stall is no escape"
