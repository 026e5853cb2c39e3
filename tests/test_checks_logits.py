"""The `logits.*` checks: each mutant trips its check, good processors pass or skip them."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
import types

import pytest

from conformance.checks import logits as checks
from conformance.context import Session
from conformance.framework import load_catalog
from conformance.overlay import Overlay, fixtures_root
from conformance.probes import logits as probes
from conformance.probes.engine_run import ENGINE_RUN_DEPS
from conformance.runner import CheckResult, plan, run_planned
from conformance.target import EntryPointInfo, Target, mutant_names, resolve_target
from tests.conftest import assert_mutant_fails

#: The reference models 0.33 in this module's own process (the probes follow each session's
#: contract: the newest one a plugin admits, so 0.33 for the fixture and the V1 processors, which
#: declare vllm<0.34, as 0.34 removed the V1 interface; the tests at the end pin 0.34).
pytestmark = pytest.mark.contract("0.33.0")

GROUP = "logits"
LOGITS = "vllm.logits_processors"
#: The bundled mutants of this group, each named after the check it must fail.
MUTANTS = [name for name in mutant_names() if name.startswith(f"{GROUP}.")]
#: Checks that build and drive the processor, and so need torch.
DRIVING = [
    "logits.constructs",
    "logits.apply-preserves-shape",
    "logits.argmax-invariance-honest",
    "logits.batch-updates",
]
#: Checks that run a real engine: they need the whole model stack.
ENGINE_RUN = ["logits.engine-run"]
NEEDS_TORCH = {*DRIVING, *ENGINE_RUN}
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_ENGINE = all(importlib.util.find_spec(m) is not None for m in ENGINE_RUN_DEPS)
#: What the failure message must show, beyond the fix hint.
OBSERVED = {
    "logits.is-class": "a function. Model Runner V2 (vLLM 0.32's default) refuses it",
    "logits.subclass": "V1-interface plugins are not supported by the V2 model runner",
    "logits.constructs": "Its __init__ takes (self, vllm_config)",
    "logits.apply-preserves-shape": "returned a tensor of shape (1, 64)",
    "logits.argmax-invariance-honest": "allowed_token_ids",
    "logits.batch-updates": "KeyError",
    "logits.validate-params": "raised TypeError, not ValueError",
    "logits.engine-run": "self.admitted[value]",
}
#: Mutants judged by an older contract than the reference's, and which: argmax claims and
#: batch moves exist only in the V1 interface, which an engine whose default runner is Model
#: Runner V2 (0.27 on, 0.32 included) refuses, so on 0.32 their class alone would already fail
#: logits.subclass. They declare `vllm<0.27`, and are judged as such an engine judges them.
V1_CONTRACT = "0.26.0"
JUDGED_AS = {
    "logits.argmax-invariance-honest": V1_CONTRACT,
    "logits.batch-updates": V1_CONTRACT,
}
#: The checks each mutant leaves unable to judge: they are blocked by its check, not failed.
BLOCKED = {
    # A function is no class: nothing else can be examined.
    "logits.is-class": set(MUTANTS) - {"logits.is-class"},
    # A processor that cannot be built cannot be driven, simulated or in an engine.
    "logits.constructs": {*DRIVING, *ENGINE_RUN} - {"logits.constructs"},
    # The engine samples from what apply returns, and drives the batches that were simulated.
    "logits.apply-preserves-shape": {"logits.engine-run"},
    "logits.batch-updates": {"logits.engine-run"},
}
#: Capability skips of each mutant's other checks: a V2 class, or a V1 one that makes no
#: argmax-invariance claim.
SKIPPED = {
    "logits.subclass": {"logits.argmax-invariance-honest"},
    "logits.apply-preserves-shape": {"logits.argmax-invariance-honest"},
    "logits.batch-updates": {"logits.argmax-invariance-honest"},
    "logits.validate-params": {"logits.argmax-invariance-honest"},
    "logits.engine-run": {"logits.argmax-invariance-honest"},
}

#: Blocks torch in a probe, as on a machine without it (run after the engine is mounted).
NO_TORCH_PATCH = """
import sys, importlib.util
sys.modules["torch"] = None
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a, **k: None if name == "torch" else _find_spec(
    name, *a, **k)
"""


def no_torch(target: Target, **kwargs: object) -> Session:
    """A session whose probes cannot import torch."""
    return Session(target, engine_patch=NO_TORCH_PATCH, **kwargs)  # type: ignore[arg-type]


def run_group(
    target: Target,
    session: Session | None = None,
    only: set[str] | None = None,
    groups: tuple[str, ...] = (GROUP,),
    engine_run: bool = False,
) -> dict[str, CheckResult]:
    """Run the checks of `groups` (or `only` these) on `target`, keyed by check id; the
    engine run only if asked (it builds an engine)."""
    catalog = {
        k: v
        for k, v in load_catalog().items()
        if v.group in groups and (not only or k in only) and (engine_run or k not in ENGINE_RUN)
    }
    if session is None:
        # Checks that only examine the class are quicker without importing torch.
        lean = only is not None and only.isdisjoint(NEEDS_TORCH)
        session = no_torch(target) if lean else Session(target)
    with target:
        return {
            item.check.id: run_planned(session, item)
            for item in plan(target, session.contract, catalog)
        }


#: What a plugin that uses the V1 interface declares: vLLM 0.34 removed it (as the fixture).
V1_REQUIRES = ("vllm>=0.30,<0.34",)


def inline_logits(
    name: str, source: str, attr: str, requires: tuple[str, ...] = ("vllm>=0.30",)
) -> Target:
    """A logits-processor plugin `name` written on the spot, its entry point `name:attr`; the
    reference judges it by the newest contract its `requires` admits."""
    overlay = Overlay().add_inline(
        name, {f"{name}/__init__.py": textwrap.dedent(source)}, {LOGITS: {name: f"{name}:{attr}"}}
    )
    eps = (EntryPointInfo(LOGITS, name, f"{name}:{attr}"),)
    return Target(name, "0.1.0", "project", eps, requires, None, overlay)


def dummy_v1() -> Target:
    """The fixture's own V1 variant, declared as the entry point of a copy of the fixture."""
    source = fixtures_root() / "dummy_logits_processor/dummy_logits_processor/__init__.py"
    return inline_logits("dummy_v1_copy", source.read_text(), "DummyLogitsProcessorV1", V1_REQUIRES)


MINIMAL_V2 = """
from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor

class Proc(LogitsProcessor):
    {body}

    def apply(self, logits, ctx):
        return logits
"""


def minimal_v2(name: str, body: str = "pass") -> Target:
    """A V2 processor `name:Proc` that leaves logits alone; `body` adds to its class."""
    return inline_logits(name, MINIMAL_V2.format(body=body), "Proc")


# --------------------------------------------------------------------------------------------
# Mutants and fixtures.


def test_every_logits_check_has_a_mutant():
    ids = sorted(k for k, v in load_catalog().items() if v.group == GROUP)
    assert ids == MUTANTS, "each logits check needs a mutant named after it"
    assert set(OBSERVED) == set(MUTANTS)
    assert set(JUDGED_AS) | set(BLOCKED) | set(SKIPPED) <= set(MUTANTS)


def expected_skips(check_id: str, blocked: set[str]) -> set[str]:
    """The checks a mutant's run skips here: its capability skips, and the checks that need
    what this environment lacks (torch, the model stack), unless blocked first."""
    skipped = set(SKIPPED.get(check_id, ()))
    if not HAS_TORCH:
        skipped |= NEEDS_TORCH
    elif not HAS_ENGINE:
        skipped |= set(ENGINE_RUN)
    return skipped - blocked - {check_id}


@pytest.mark.parametrize("check_id", MUTANTS)
def test_the_mutant_fails_its_check_and_blocks_only_what_depends_on_it(check_id):
    if check_id in NEEDS_TORCH:
        pytest.importorskip("torch")
    if check_id in ENGINE_RUN:
        for module in ENGINE_RUN_DEPS:
            pytest.importorskip(module)
    target = resolve_target(check_id)
    session = Session(target, contract_version=JUDGED_AS.get(check_id))
    results = run_group(target, session, groups=(GROUP, "package"), engine_run=True)
    assert set(MUTANTS) <= set(results)
    assert_mutant_fails(results, check_id, OBSERVED[check_id])
    blocked = {k for k, r in results.items() if r.status == "blocked"}
    assert blocked == BLOCKED.get(check_id, set())
    # Without torch, what needs it could not judge: inconclusive, where it used to skip.
    skipped = {k for k, r in results.items() if r.status in ("skipped", "inconclusive")}
    assert skipped == expected_skips(check_id, blocked)
    passed = set(results) - blocked - skipped - {check_id}
    assert {k: results[k].status for k in passed} == dict.fromkeys(passed, "passed")


def test_the_dummy_fixture_passes_every_logits_check():
    pytest.importorskip("torch")
    results = run_group(resolve_target("dummy_logits_processor"))
    assert set(results) == set(MUTANTS) - set(ENGINE_RUN)
    # A V2 processor makes no argmax-invariance claim: the only capability skip.
    argmax = results.pop("logits.argmax-invariance-honest")
    assert argmax.status == "skipped"
    assert argmax.message == f"capability skip: {checks.NO_ARGMAX_CLAIM_V2}"
    for check_id, result in results.items():
        assert result.status == "passed", f"{check_id}: {result.message}"


def test_the_dummy_v1_variant_behaves_but_is_refused_by_the_default_runner():
    pytest.importorskip("torch")
    results = run_group(dummy_v1())
    assert results["logits.subclass"].status == "failed"
    assert "implements only the V1 interface" in results["logits.subclass"].message
    # It forces tokens, so it rightly makes no argmax-invariance claim.
    argmax = results.pop("logits.argmax-invariance-honest")
    assert argmax.message == f"capability skip: {checks.NO_ARGMAX_CLAIM_V1}"
    others = {k: r.status for k, r in results.items() if k != "logits.subclass"}
    assert others == dict.fromkeys(others, "passed"), results


def test_an_honest_argmax_claim_passes():
    pytest.importorskip("torch")
    source = """
        from vllm.v1.sample.logits_processor import MinPLogitsProcessor

        class StrictMinP(MinPLogitsProcessor):
            '''vLLM's min-p processor, which keeps the top token of every row.'''
    """
    results = run_group(inline_logits("strict_min_p", source, "StrictMinP", V1_REQUIRES))
    assert results["logits.argmax-invariance-honest"].status == "passed"
    assert results["logits.batch-updates"].status == "passed"


def test_the_processor_is_built_with_the_full_config_an_engine_hands_it():
    pytest.importorskip("torch")
    body = """def __init__(self, vllm_config, req_states):
        super().__init__(vllm_config, req_states)
        # Sized as real processors size themselves: from the served model and the scheduler.
        self.sizes = (vllm_config.model_config.max_model_len,
                      vllm_config.scheduler_config.max_num_seqs)"""
    results = run_group(minimal_v2("config_reader", body))
    for check_id in ("logits.constructs", "logits.apply-preserves-shape", "logits.batch-updates"):
        assert results[check_id].status == "passed", results[check_id].message


def test_an_older_contract_judges_the_subclass_by_the_v1_interface():
    only = {"logits.subclass"}
    v1 = resolve_target("logits.subclass")
    passed = run_group(v1, no_torch(v1, contract_version="0.20.0"), only)["logits.subclass"]
    assert passed.status == "passed", "before MRV2 became the default, V1 is the interface"
    v2 = resolve_target("dummy_logits_processor")
    result = run_group(v2, no_torch(v2, contract_version="0.20.0"), only)["logits.subclass"]
    assert result.status == "failed" and "arrived around v0.27" in result.message


def test_without_torch_only_the_driving_checks_are_inconclusive():
    target = resolve_target("dummy_logits_processor")
    results = run_group(target, no_torch(target))
    for check_id in DRIVING:
        assert results[check_id].status == "inconclusive", check_id
    assert results["logits.constructs"].message == f"inconclusive: {checks.NO_TORCH}"
    # What requires the construction cannot judge without it either, and says so.
    needs = "inconclusive: it needs logits.constructs, which could not judge the plugin here"
    for check_id in set(DRIVING) - {"logits.constructs"}:
        assert results[check_id].message == needs, check_id
    others = {k: r.status for k, r in results.items() if k not in DRIVING}
    assert others == dict.fromkeys(others, "passed"), results


def test_a_class_with_neither_base_fails_the_subclass_check():
    source = """
        class Duck:
            def __init__(self, vllm_config, req_states):
                pass

            def apply(self, logits, ctx):
                return logits
    """
    results = run_group(inline_logits("duck_proc", source, "Duck"), only={"logits.subclass"})
    assert results["logits.subclass"].status == "failed"
    assert "subclasses neither" in results["logits.subclass"].message


@pytest.mark.skipif(not HAS_TORCH, reason="drives the processor: needs torch")
def test_a_processor_lacking_the_interfaces_methods_fails_and_is_never_an_error():
    # Found by the corpus: sovereign-pulse-vllm ships an old per-request callable with no
    # add_request or apply_staged_writes. Looking the method up is the plugin's side of the
    # call: its absence fails the driving checks; it is not the harness's error.
    source = """
        class OldStyle:
            def __init__(self, vllm_config, req_states, *args):
                pass

            def __call__(self, token_ids, logits):
                return logits
    """
    driving = {"logits.apply-preserves-shape", "logits.batch-updates"}
    target = inline_logits("old_style_proc", source, "OldStyle")
    results = run_group(target, only={"logits.is-class", "logits.constructs", *driving})
    for check_id in driving:
        assert results[check_id].status == "failed", (check_id, results[check_id].message)
        assert "AttributeError" in results[check_id].message


def test_a_processor_without_its_own_validate_params_passes():
    results = run_group(minimal_v2("plain_proc"), only={"logits.validate-params"})
    assert results["logits.validate-params"].status == "passed"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "@classmethod\n    def validate_params(cls, sampling_params):\n"
            "        raise ValueError('extra_args are required')",
            ["validate_params(SamplingParams()) raised:\n", "ValueError: extra_args are required"],
        ),
        (
            "def validate_params(self, sampling_params):\n        return None",
            ["It is not a classmethod", "validate_params(SamplingParams()) raised:\n"],
        ),
        (
            "@classmethod\n    def validate_params(cls, sampling_params):\n"
            "        return 'mode' not in (sampling_params.extra_args or {})",
            ["returned False, which rejects nothing"],
        ),
    ],
    ids=["rejects-defaults", "instance-method", "returns-false"],
)
def test_validate_params_problems_are_explained(body, expected):
    results = run_group(minimal_v2("checking_proc", body), only={"logits.validate-params"})
    result = results["logits.validate-params"]
    assert result.status == "failed", result.message
    for text in expected:
        assert text in result.message, result.message


def test_a_harness_failure_while_driving_is_an_error_not_the_plugins_failure():
    pytest.importorskip("torch")
    # The harness's own step between plugin calls (recording the prompt in the slot) breaks.
    patch = (
        "from conformance.probes import logits\n"
        "def _broken(self, state, slot):\n"
        "    raise RuntimeError('harness bug')\n"
        "logits.V2Runner.fill = _broken\n"
    )
    target = resolve_target("dummy_logits_processor")
    check_id = "logits.apply-preserves-shape"
    result = run_group(target, Session(target, engine_patch=patch), {check_id})[check_id]
    assert result.status == "error", result.message
    assert result.owner == "harness" and "RuntimeError: harness bug" in result.message


@pytest.mark.skipif(not HAS_ENGINE, reason="needs torch and transformers")
def test_an_engine_that_refuses_model_runner_v2_here_is_a_capability_skip():
    # vLLM 0.32's CPU build without a usable Triton: the engine's own flag says so, and the
    # probe skips before building an engine that would refuse to start.
    patch = (
        "import sys, types\n"
        "sys.modules['vllm.triton_utils'] = types.SimpleNamespace(HAS_TRITON=False)\n"
    )
    target = resolve_target("dummy_logits_processor")
    session = Session(target, engine_patch=patch)
    result = run_group(target, session, {"logits.engine-run"}, engine_run=True)
    engine_run = result["logits.engine-run"]
    assert engine_run.status == "skipped", engine_run.message
    assert "cannot run the Model Runner V2 interface" in engine_run.message
    assert "Model Runner V2 requires Triton" in engine_run.message


# --------------------------------------------------------------------------------------------
# Helpers.


@pytest.mark.parametrize(
    ("contract", "expected"),
    [
        ("0.32.0", True),
        ("0.27.0", True),
        ("0.27.0rc1", True),
        ("0.32.0+cu128", True),
        ("0.26.2", False),
        ("0.11.0", False),
        ("not-a-version", True),
    ],
)
def test_mrv2_is_default_from_v0_27(contract, expected):
    assert checks.mrv2_is_default(contract) is expected


@pytest.mark.parametrize(("has_triton", "refused"), [(False, True), (True, False)])
def test_model_runner_v2_is_unavailable_only_where_the_engine_has_no_triton(
    monkeypatch, has_triton, refused
):
    vllm = types.ModuleType("vllm")
    triton_utils = types.ModuleType("vllm.triton_utils")
    triton_utils.HAS_TRITON = has_triton  # type: ignore[attr-defined]
    vllm.triton_utils = triton_utils  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.triton_utils", triton_utils)
    reason = probes.runner_unavailable("v2")
    assert (reason is not None) is refused
    # The V1 runner needs no Triton.
    assert probes.runner_unavailable("v1") is None


def test_an_engine_without_a_triton_flag_runs_model_runner_v2(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setitem(sys.modules, "vllm.triton_utils", None)  # the reference has none
    assert probes.runner_unavailable("v2") is None


@pytest.mark.parametrize(
    ("interface", "params", "expected"),
    [
        ("v2", ["self", "vllm_config"], "constructs it as (self, vllm_config, req_states)"),
        ("v1", ["self", "vllm_config", "req_states"], "(self, vllm_config, device, is_pin_memory)"),
        ("v2", ["self", "vllm_config", "req_states"], ""),
        ("v2", ["self", "*args", "**kwargs"], ""),
        ("v1", None, ""),
    ],
)
def test_init_hint_names_the_expected_constructor(interface, params, expected):
    hint = checks.init_hint(interface, params)
    assert (expected in hint) if expected else hint == ""


def test_the_keys_a_processor_reads_are_guessed_from_its_own_constants():
    # The plugin's own module constants and method strings; not vLLM's, and not dunders.
    module = types.ModuleType("guess_keys_plugin")
    source = textwrap.dedent(
        """
        TARGET_ARG = "target_token"

        class Proc:
            def add_request(self, slot, params):
                return (params.extra_args or {}).get("boost", 0)
        """
    )
    exec(compile(source, "guess_keys_plugin.py", "exec"), module.__dict__)
    module.Proc.__module__ = module.__name__
    sys.modules[module.__name__] = module
    try:
        keys = probes.arg_keys(module.Proc)
    finally:
        del sys.modules[module.__name__]
    assert keys == ["target_token", "boost"]


# --------------------------------------------------------------------------------------------
# From 0.34 on: Model Runner V1 and its logits-processor interface are gone.


def test_the_v1_only_check_ends_at_0_34():
    argmax = load_catalog()["logits.argmax-invariance-honest"]
    assert argmax.until == checks.V1_UNTIL == "0.34.0"
    assert [argmax.applies_to_contract(v) for v in ("0.26.0", "0.33.0", "0.34.0")] == [
        True,
        True,
        False,
    ]
    assert [checks.v1_removed(v) for v in ("0.32.0", "0.33.0", "0.34.0", "0.35.1")] == [
        False,
        False,
        True,
        True,
    ]


def test_at_0_34_a_class_without_a_base_is_judged_by_the_only_interface_left():
    obs = probes.LogitsObservation()
    guessed_v1 = type("Old", (), {"update_state": lambda self, batch_update: None})
    probes.judge_interface(obs, guessed_v1, {}, v1=True)
    assert obs.interface == "v1" and obs.guessed
    probes.judge_interface(obs, guessed_v1, {}, v1=False)
    assert obs.interface == "v2"
    # The V1 base is not even looked for then, so its absence is no import error.
    assert probes.engine_bases(obs, v1=False).keys() <= {"v2"} and "v1" not in obs.base_errors


def test_at_0_34_a_v2_processor_passes_every_logits_check():
    pytest.importorskip("torch")
    target = minimal_v2("v2_at_034")
    results = run_group(target, Session(target, contract_version="0.34.0"))
    assert "logits.argmax-invariance-honest" not in results, "its contract ends before 0.34"
    assert {k: r.status for k, r in results.items()} == dict.fromkeys(results, "passed"), {
        k: r.message for k, r in results.items()
    }


class EngineRunContext:
    """Stands in for a check's context: answers the two probes of `logits.engine-run` and
    records what the engine-run probe was asked to do."""

    def __init__(self, contract: str) -> None:
        self.session = types.SimpleNamespace(contract=contract)
        self.engine_run: dict[str, object] = {}

    def observe(self, function, /, *, purpose="", env=None, timeout=None, **args):
        if function is probes.observe_logits:
            return probes.LogitsObservation(
                has_torch=True, is_class=True, interface="v2", driven=True, keys=["k"]
            )
        self.engine_run = {"env": env, **args}
        return probes.EngineRunObservation(tokens=list(checks.ENGINE_LENGTHS))


@pytest.mark.parametrize(
    ("contract", "variable", "choose_runner"), [("0.33.0", "1", True), ("0.34.0", None, False)]
)
def test_the_engine_run_sets_the_runner_variable_only_where_it_exists(
    contract, variable, choose_runner
):
    """0.34 removed `VLLM_USE_V2_MODEL_RUNNER` (any value but "1" fails engine creation) and
    has no runner to choose: the variable is unset there, and the runner rule not asked."""
    ctx = EngineRunContext(contract)
    load_catalog()["logits.engine-run"].func(ctx)  # passes: every request got its tokens
    assert ctx.engine_run["env"] == {"VLLM_USE_V2_MODEL_RUNNER": variable}
    assert ctx.engine_run["choose_runner"] is choose_runner
