"""The `general.*` checks: each mutant trips its check, every good fixture passes them."""

from __future__ import annotations

import importlib.util
import textwrap
from typing import Any

import pytest

from conformance.checks.general import fast_import_problem
from conformance.framework import load_catalog
from conformance.overlay import Overlay, fixture_names, fixtures_root
from conformance.probe import run_probe
from conformance.probes.general import GeneralObservation
from conformance.runner import CheckResult
from conformance.target import EntryPointInfo, Target, resolve_target
from tests.conftest import assert_mutant_fails, run_check_group, torch_inconclusive

GROUP = "general"
GENERAL = "vllm.general_plugins"
#: Checks that run a real engine: tested (mutant and good fixtures) in test_checks_engine_run.py,
#: and left out of this file's runs, which stay fast.
ENGINE_RUN = ["general.models-run"]
#: Every general mutant in fixtures/mutants/, but the engine-run ones.
MUTANTS = sorted(
    p.name for p in (fixtures_root() / "mutants").glob("general.*") if p.name not in ENGINE_RUN
)
#: Mutants whose point needs torch: a model class, or a tensor on "cuda".
NEEDS_TORCH = {
    "general.registered-models-resolve",
    "general.no-cuda-init",
    "general.lazy-model-registration",
    "general.no-builtin-overwrite",
}
#: What the failure message must show, beyond the fix hint.
OBSERVED = {
    "general.loadable": "No module named 'mutant_fused_kernels_ext'",
    "general.callable": "requires argument(s) model_registry",
    "general.runs": "KeyError: 'MUTANT_MODEL_VARIANT'",
    "general.reentrant": "vllm.utils.import_utils: resolve_obj_by_qualname replaced",
    "general.no-cuda-init": "in _gpu_usable",
    "general.lazy-model-registration": "MutantEagerForCausalLM",
    "general.registered-models-resolve": "has no attribute 'MutantResolveForCausalLm'",
    "general.no-builtin-overwrite": "LlamaForCausalLM",
    "general.fast-import": "> 1 s",
    "general.quiet": "printed 40.0 MiB",
}


def run_group(target: Target, group: str = GROUP) -> dict[str, CheckResult]:
    """The group's checks and the package checks (their prerequisites) on `target`."""
    return run_check_group(target, (group, "package"), ENGINE_RUN)


def inline_target(name: str, source: str, **modules: str) -> Target:
    """A general plugin `name:register` (plus `modules` of its package) written on the spot."""
    files = {f"{name}/__init__.py": textwrap.dedent(source)}
    files.update({f"{name}/{mod}.py": textwrap.dedent(src) for mod, src in modules.items()})
    overlay = Overlay().add_inline(name, files, {GENERAL: {name: f"{name}:register"}})
    eps = (EntryPointInfo(GENERAL, name, f"{name}:register"),)
    return Target(name, "0.1.0", "project", eps, ("vllm>=0.30",), None, overlay)


def test_every_general_check_has_a_mutant():
    ids = sorted(k for k, v in load_catalog().items() if v.group == GROUP)
    assert ids == sorted(MUTANTS + ENGINE_RUN), "each general check needs a mutant named after it"
    assert set(OBSERVED) == set(MUTANTS), "each mutant says what its failure must show"


@pytest.mark.parametrize("check_id", MUTANTS)
def test_the_mutant_fails_its_check_and_only_it(check_id):
    if check_id in NEEDS_TORCH:
        pytest.importorskip("torch")
    results = run_group(resolve_target(check_id))
    assert_mutant_fails(results, check_id, OBSERVED[check_id])


GOOD_GENERAL = [name for name in fixture_names() if resolve_target(name).entry_points_of(GENERAL)]


@pytest.mark.parametrize("fixture", GOOD_GENERAL)
def test_good_fixtures_pass_the_general_checks(fixture):
    results = run_group(resolve_target(fixture))
    results = {k: r for k, r in results.items() if k.startswith("general.")}
    assert set(results) == set(MUTANTS)
    # Where a dependency (torch, numpy, ...) is absent, the checks that need it skip so.
    results = {k: r for k, r in results.items() if not torch_inconclusive(r.status, r.message)}
    if fixture == "vllm_add_dummy_model" and importlib.util.find_spec("torch") is not None:
        assert results["general.registered-models-resolve"].status == "passed", (
            "judged, not skipped"
        )
    for check_id, result in results.items():
        if result.status == "inconclusive" and check_id == "general.no-cuda-init":
            assert importlib.util.find_spec("torch") is None, "inconclusive only without torch"
            continue
        if result.status == "skipped":
            # Only the model-registry checks judge a capability: plugins without models skip.
            assert check_id in (
                "general.lazy-model-registration",
                "general.registered-models-resolve",
            )
            assert result.message == "capability skip: the plugin registers no model architectures"
            continue
        assert result.status == "passed", f"{fixture}: {check_id}: {result.message}"


def test_an_unguarded_custom_op_registration_is_not_reentrant():
    pytest.importorskip("torch")
    source = """
        from vllm.model_executor.layers.rotary_embedding import RotaryEmbedding

        class MyRope(RotaryEmbedding):
            pass

        def register():
            RotaryEmbedding.register_oot(MyRope)
    """
    result = run_group(inline_target("unguarded_op", source))["general.reentrant"]
    assert result.status == "failed"
    assert "The second call raised" in result.message and "Duplicate" in result.message


def test_a_plugin_that_exits_the_interpreter_fails_loading_and_the_rest_is_blocked():
    results = run_group(inline_target("exits", "import os\nos._exit(3)\n"))
    failed = {k for k, r in results.items() if r.status == "failed"}
    assert failed == {"package.entry-points-resolve"}, "the facts probe is the first to die"
    assert "exited with code 3" in results["package.entry-points-resolve"].message
    blocked = {k: r.blocked_by for k, r in results.items() if r.status == "blocked"}
    assert set(blocked) == set(MUTANTS)
    assert set(blocked.values()) == {"package.entry-points-resolve"}


def test_cuda_touched_by_a_lazily_registered_model_module_is_not_the_plugins_doing():
    # The check imports the model to see that it resolves, as a worker would; only the
    # plugin's own import and calls must stay off CUDA.
    pytest.importorskip("torch")
    target = inline_target(
        "lazy_cuda",
        """
        def register():
            from vllm import ModelRegistry

            if "LazyCudaForCausalLM" not in ModelRegistry.get_supported_archs():
                ModelRegistry.register_model("LazyCudaForCausalLM", "lazy_cuda.model:Model")
        """,
        model="""
        import torch

        try:
            torch.zeros(1, device="cuda")
        except Exception:
            pass

        class Model(torch.nn.Module):
            pass
        """,
    )
    results = run_group(target)
    assert results["general.registered-models-resolve"].status == "passed", "the model was imported"
    cuda = results["general.no-cuda-init"]
    assert cuda.status == "passed", cuda.message


# --- general.fast-import: the engine's own imports do not count -------------------------------


def _fast_import_run(**values: Any) -> GeneralObservation:
    return GeneralObservation(**{"engine_accounting": True, **values})


def test_fast_import_subtracts_the_engines_module_imports():
    # Real vLLM: importing rotary_embedding costs seconds, all of it the engine's.
    run = _fast_import_run(
        call_s=4.3,
        call_engine_s=4.2,
        engine_imports={"vllm.model_executor.layers.rotary_embedding": 4.2},
    )
    assert fast_import_problem(run) is None
    run.call_engine_s = 0.0
    assert fast_import_problem(run) == (
        "Loading took 0.00 s and the call 4.30 s (4.30 s > 1 s), none of it importing the "
        "engine's modules."
    )


def test_fast_import_names_the_engine_modules_it_did_not_count():
    run = _fast_import_run(
        load_s=2.0, load_engine_s=0.5, engine_imports={"vllm.model_executor.models": 0.5}
    )
    problem = fast_import_problem(run)
    assert problem is not None
    assert "0.50 s of it was the engine importing its own modules" in problem
    assert "vllm.model_executor.models 0.50 s" in problem
    assert "1.50 s > 1 s" in problem


def test_fast_import_without_per_module_timing_counts_everything():
    run = _fast_import_run(load_s=1.2, engine_accounting=False)
    assert "could not be timed per module" in fast_import_problem(run)
    assert fast_import_problem(_fast_import_run(load_s=0.9, engine_accounting=False)) is None


#: Stands in for a heavy engine module: importing vllm's rotary_embedding takes 1.2 s.
SLOW_ENGINE_MODULE = """
import time
import reference.surface as _surface
_module_for = _surface.SurfaceFinder.module_for

def _slow_module_for(self, name):
    if name == "vllm.model_executor.layers.rotary_embedding":
        time.sleep(1.2)
    return _module_for(self, name)

_surface.SurfaceFinder.module_for = _slow_module_for
"""


def _general_run_values(target: Target, patch: str = "") -> GeneralObservation:
    [ep] = target.entry_points_of(GENERAL)
    result = run_probe(
        call="conformance.probes.general:observe_general",
        args={"group": ep.group, "name": ep.name},
        patch=patch,
        timeout=120,
        **target.probe_settings(),
    )
    assert result.ok, result.describe()
    return result.observation_as(GeneralObservation)


def test_a_slow_engine_import_does_not_count_but_the_plugins_own_slow_import_does():
    pytest.importorskip("torch")
    source = """
        import time
        from vllm.model_executor.layers.rotary_embedding import RotaryEmbedding
        import {name}.helpers

        def register():
            pass
    """
    helpers = "import time\ntime.sleep({delay})\n"
    fast = inline_target(
        "engine_heavy", source.format(name="engine_heavy"), helpers=helpers.format(delay=0)
    )
    values = _general_run_values(fast, SLOW_ENGINE_MODULE)
    assert values.load_s > 1.2 and values.load_engine_s > 1.2
    slowest = max(values.engine_imports, key=values.engine_imports.__getitem__)
    assert slowest == "vllm.model_executor.layers.rotary_embedding"
    assert fast_import_problem(values) is None, "the 1.2 s were the engine's"

    slow = inline_target(
        "own_heavy", source.format(name="own_heavy"), helpers=helpers.format(delay=1.2)
    )
    values = _general_run_values(slow)
    assert values.load_s > 1.2 and values.load_engine_s < 0.5
    assert "1 s" in fast_import_problem(values), "a module of the plugin's own counts"


def test_weights_a_subclass_adds_are_the_generated_checkpoints_gap(monkeypatch):
    # Found by the corpus: qwerky-vllm-models' MambaInLlamaMambaForCausalLM subclasses
    # LlamaForCausalLM and adds Mamba layers; built from the generated Llama checkpoint, vLLM
    # 0.32 raised "Following weights were not initialized from checkpoint" and
    # general.models-run failed the plugin for what the checkpoint cannot hold.
    from conformance.checks import general

    llama = {"model", "layers", "self_attn", "qkv_proj", "q_proj", "mlp", "weight", "norm"}
    monkeypatch.setattr(general, "checkpoint_parts", lambda family: llama)
    said = "Following weights were not initialized from checkpoint: {%s}"
    added = said % "'model.layers.0.mamba.A', 'model.layers.1.mamba.D'"
    assert general.weights_the_checkpoint_lacks(added, "llama") == {"mamba", "A", "D"}
    # A parameter the checkpoint offers and the model did not load is the plugin's failure.
    offered = said % "'model.layers.0.mamba.A', 'model.layers.0.self_attn.qkv_proj.weight'"
    assert general.weights_the_checkpoint_lacks(offered, "llama") == set()
    assert general.weights_the_checkpoint_lacks("ValueError: other", "llama") == set()
    monkeypatch.setattr(general, "checkpoint_parts", lambda family: set())
    assert general.weights_the_checkpoint_lacks(added, "llama") == set(), "no checkpoint: fail"


def test_vllms_builtin_architectures_are_seen_and_their_replacement_is_flagged():
    # Found by the corpus: simulst's register() raises unless vLLM ships HYV3ForCausalLM
    # (built in since vLLM 0.31), and vllm-factory re-registers the built-in ModernBertModel.
    # The reference knew only its own four stand-ins: it failed the first for its own gap
    # and could not see the second replace anything.
    target = inline_target(
        "builtin_user",
        """
        def register():
            from vllm import ModelRegistry

            if "HYV3ForCausalLM" not in ModelRegistry.get_supported_archs():
                raise RuntimeError("this vLLM does not provide HYV3ForCausalLM")
            ModelRegistry.register_model("ModernBertModel", "builtin_user.model:ModernBert")
        """,
        model="class ModernBert:\n    pass\n",
    )
    results = run_group(target)
    assert results["general.runs"].status == "passed", results["general.runs"].message
    overwrite = results["general.no-builtin-overwrite"]
    assert overwrite.status == "failed"
    assert "replaced built-in architecture(s): ModernBertModel." in overwrite.message


@pytest.mark.parametrize(
    ("arch", "said"),
    [
        ("HYV3ForCausalLM", "vllm.model_executor.models.hy_v3, which the embedded reference"),
        (
            "LlamaBidirectionalModel",
            "LlamaBidirectionalModel from vllm.model_executor.models.llama, which the embedded",
        ),
    ],
    ids=["module-absent", "class-absent"],
)
def test_resolving_a_builtin_the_reference_does_not_run_is_inconclusive(arch, said):
    # vLLM's HYV3ForCausalLM lives in vllm.model_executor.models.hy_v3, which the reference
    # does not answer; its llama module lacks vLLM's LlamaBidirectionalModel. A plugin that
    # resolves either cannot be judged here, only on vLLM.
    if arch == "LlamaBidirectionalModel":
        pytest.importorskip("torch")  # the reference's llama module is a torch module
    target = inline_target(
        "builtin_resolver",
        f"""
        def register():
            from vllm import ModelRegistry

            ModelRegistry.resolve_model_cls([{arch!r}])
        """,
    )
    result = run_group(target)["general.runs"]
    assert result.status == "inconclusive", result.message
    assert said in result.message
