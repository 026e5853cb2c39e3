"""The engine-run checks: each group's plugin inside a real engine on a generated checkpoint.

`general.models-run`, `stat_logger.engine-run`, `io_processor.engine-run`, `logits.engine-run`
and `platform.worker-runs` each build `LLM` / `AsyncLLM` in a probe. Every mutant trips its
check with the observed error and the fix; every good fixture passes them or skips them for a
capability it does not claim. Without torch the checks skip, which is tested too.
"""

from __future__ import annotations

import importlib.util

import pytest

from conformance.checks.general import run_problem, skip_if_engine_missing
from conformance.checks.platform import platform_worker_env
from conformance.context import CheckContext, Session
from conformance.framework import load_catalog
from conformance.probes.engine_run import ENGINE_RUN_DEPS
from conformance.probes.general import ModelRun
from conformance.runner import CheckResult, plan, run_planned
from conformance.target import EntryPointInfo, Target, resolve_target

ENGINE_RUN = [
    "general.models-run",
    "stat_logger.engine-run",
    "io_processor.engine-run",
    "logits.engine-run",
    "platform.worker-runs",
]
#: What each mutant's failure message must show, beyond the fix hint.
OBSERVED = {
    "general.models-run": "MyTrimmedLlamaForCausalLM (llama family): LLM.generate(2 prompts",
    "stat_logger.engine-run": "asyncio.run() cannot be called from a running event loop",
    "io_processor.engine-run": "cannot reshape array of size 128 into shape (16,16)",
    "logits.engine-run": "KeyError: 1",
    "platform.worker-runs": "KeyError: 'PINNED_CPU_CORES'",
}
#: Good fixture → the engine-run check that judges its entry points → expected status.
GOOD = {
    "vllm_add_dummy_model": {"general.models-run": "passed"},
    "vllm_add_dummy_stat_logger": {"stat_logger.engine-run": "passed"},
    # Its general plugin registers a model no generated family fits; its processor runs.
    "prithvi_io_processor": {"general.models-run": "skipped", "io_processor.engine-run": "passed"},
    "dummy_logits_processor": {"logits.engine-run": "passed"},
    # The platform runs; its general plugin registers a custom op, no model.
    "vllm_add_dummy_platform": {"platform.worker-runs": "passed", "general.models-run": "skipped"},
}
HAS_ENGINE = all(importlib.util.find_spec(m) is not None for m in ENGINE_RUN_DEPS)
needs_engine = pytest.mark.skipif(not HAS_ENGINE, reason="needs torch and transformers")


def run_engine_checks(target: Target) -> dict[tuple[str, str | None], CheckResult]:
    """The engine-run checks on `target`, keyed by (check id, entry point)."""
    catalog = {k: v for k, v in load_catalog().items() if k in ENGINE_RUN}
    session = Session(target)
    with target:
        results = [run_planned(session, item) for item in plan(target, session.contract, catalog)]
    return {(r.id, r.entry_point): r for r in results}


def test_the_engine_run_checks_are_registered_with_their_levels():
    catalog = load_catalog()
    assert set(ENGINE_RUN) <= set(catalog)
    levels = {k: catalog[k].level for k in ENGINE_RUN}
    assert levels == {
        k: "recommended" if k == "platform.worker-runs" else "required" for k in ENGINE_RUN
    }


@needs_engine
@pytest.mark.parametrize("check_id", ENGINE_RUN)
def test_the_mutant_fails_its_engine_run_check_with_the_fix(check_id):
    results = run_engine_checks(resolve_target(check_id))
    own = [r for (cid, _), r in results.items() if cid == check_id]
    assert len(own) == 1, f"{check_id} runs once on its mutant's single entry point"
    result = own[0]
    assert result.status == "failed", f"{check_id} should fail on its mutant: {result.message}"
    assert result.message.startswith(f"[{check_id}]")
    assert OBSERVED[check_id] in result.message, result.message
    assert f"\nFix: {load_catalog()[check_id].fix}" in result.message


@needs_engine
@pytest.mark.parametrize("fixture", sorted(GOOD))
def test_good_fixtures_pass_or_capability_skip_the_engine_run_checks(fixture):
    results = run_engine_checks(resolve_target(fixture))
    statuses: dict[str, set[str]] = {}
    for (check_id, _), result in results.items():
        statuses.setdefault(check_id, set()).add(result.status)
        assert result.status in ("passed", "skipped"), f"{check_id}: {result.message}"
        if result.status == "skipped":
            assert result.message.startswith("capability skip: "), result.message
    for check_id, wanted in GOOD[fixture].items():
        assert wanted in statuses.get(check_id, set()), (check_id, statuses)


@needs_engine
def test_models_run_skip_names_the_architectures_no_family_fits():
    results = run_engine_checks(resolve_target("prithvi_io_processor"))
    (result,) = [r for (cid, _), r in results.items() if cid == "general.models-run"]
    assert "PrithviLikeSegmentation" in result.message
    assert "OPT, Llama, GPT-2" in result.message


# --------------------------------------------------------------------------------------------
# Helpers, without an engine.


def test_run_problem_judges_generate_and_encode_runs():
    ok = ModelRun(family="opt", task="generate", outputs=[[0, 0], [0, 0]], vocab=260)
    assert run_problem("A", ok) is None
    short = ModelRun(family="opt", task="generate", outputs=[[0], [0, 0]], vocab=260)
    assert "asked for 2 tokens and produced [0]" in run_problem("A", short)
    outside = ModelRun(family="opt", task="generate", outputs=[[0, 999], [0, 0]], vocab=260)
    assert "outside 0..259" in run_problem("A", outside)
    encoded = ModelRun(family="llama", task="encode", outputs=[True, True])
    assert run_problem("E", encoded) is None
    empty = ModelRun(family="llama", task="encode", outputs=[True, False])
    assert "without data" in run_problem("E", empty)
    assert run_problem("X", ModelRun(family=None, mro=["x.X"])) is None


def test_missing_dependencies_make_the_engine_run_inconclusive():
    from conformance.framework import Inconclusive

    skip_if_engine_missing([])
    with pytest.raises(Inconclusive, match="torch, transformers not installed here"):
        skip_if_engine_missing(["torch", "transformers"])


def test_the_platform_run_admits_the_platform_and_the_distributions_general_plugins():
    eps = (
        EntryPointInfo("vllm.platform_plugins", "mine", "pkg:detect"),
        EntryPointInfo("vllm.platform_plugins", "other", "pkg:detect2"),
        EntryPointInfo("vllm.general_plugins", "ops", "pkg:register"),
    )
    target = Target("pkg", "0.1.0", "project", eps, ("vllm>=0.30",), None, None)
    check = load_catalog()["platform.worker-runs"]
    ctx = CheckContext(Session(target), check, eps[0])
    assert platform_worker_env(ctx) == {"VLLM_PLUGINS": "mine,ops"}


def test_run_problem_catches_hidden_states_of_the_wrong_width_even_when_tokens_came_out():
    # Real vLLM's CPU GEMM multiplies mismatched shapes without complaint: tokens come out.
    def ran(shapes: list[list[int]]) -> ModelRun:
        outputs = [[163, 72], [0, 206]]
        return ModelRun(
            family="llama", task="generate", outputs=outputs, vocab=260, hidden=128, shapes=shapes
        )

    assert "shape [6, 64]" in run_problem("T", ran([[6, 64]]))
    assert "[num_tokens, 128]" in run_problem("T", ran([[6, 64]]))
    assert run_problem("T", ran([[6, 128], [1, 128]])) is None


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"architectures": ["NoSuchArchForSure"], "model_type": "x"}, "['NoSuchArchForSure']"),
        ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, None),
        (None, None),  # no config.json: building LLM says what is wrong, as with any error
    ],
)
def test_an_engine_that_cannot_build_the_model_is_told_apart_from_a_processor_error(
    tmp_path, config, reason
):
    # Judged before LLM(...) is built, from the checkpoint's config.json and the engine's
    # registry: a refusal of the model itself is a capability skip, not the processor's fault.
    import json

    from conformance.probe import run_probe

    if config is not None:
        (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    result = run_probe(
        call="conformance.probes.io_processor:unservable", args={"model": str(tmp_path)}
    )
    assert result.ok, result.describe()
    if reason is None:
        assert result.observation is None
    else:
        assert "no registered model class serves its architectures" in result.observation
        assert reason in result.observation
