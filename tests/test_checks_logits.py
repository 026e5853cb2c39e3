"""The `logits.*` checks: each mutant trips its check, good processors pass or skip them."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any

import pytest

from conformance.checks import load_catalog
from conformance.checks import logits as checks
from conformance.context import Session
from conformance.overlay import Overlay, fixtures_root
from conformance.runner import CheckResult, plan, run_planned
from conformance.target import EntryPointInfo, Target, resolve_target
from tests.conftest import assert_mutant_fails

GROUP = "logits"
LOGITS = "vllm.logits_processors"
MUTANTS = [
    "logits.is-class",
    "logits.subclass",
    "logits.constructs",
    "logits.apply-preserves-shape",
    "logits.argmax-invariance-honest",
    "logits.batch-updates",
    "logits.validate-params",
]
#: The checks that build and drive the processor, and so need torch.
DRIVING = [
    "logits.constructs",
    "logits.apply-preserves-shape",
    "logits.argmax-invariance-honest",
    "logits.batch-updates",
]
#: What the failure message must show, beyond the fix hint.
OBSERVED = {
    "logits.is-class": "a function. Model Runner V2 (vLLM 0.32's default) refuses it",
    "logits.subclass": "V1-interface plugins are not supported by the V2 model runner",
    "logits.constructs": "Its __init__ takes (self, vllm_config)",
    "logits.apply-preserves-shape": "returned a tensor of shape (1, 64)",
    "logits.argmax-invariance-honest": "allowed_token_ids",
    "logits.batch-updates": "KeyError",
    "logits.validate-params": "raised TypeError, not ValueError",
}
#: Mutants that break more than their own rule, and which other checks they fail (why).
ALSO_FAILS = {
    # A function is no class: nothing else can be examined.
    "logits.is-class": set(MUTANTS) - {"logits.is-class"},
    # A processor that cannot be built cannot be driven (argmax: a V2 class is skipped first).
    "logits.constructs": {"logits.apply-preserves-shape", "logits.batch-updates"},
    # Argmax claims and batch moves exist only in the V1 interface, which 0.32 rejects.
    "logits.argmax-invariance-honest": {"logits.subclass"},
    "logits.batch-updates": {"logits.subclass"},
}

#: Blocks torch in a probe, as on a machine without it.
NO_TORCH_PATCH = """
import sys, importlib.util
sys.modules["torch"] = None
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a, **k: None if name == "torch" else _find_spec(
    name, *a, **k)
"""


@dataclass
class NoTorchSession(Session):
    """A session whose probes cannot import torch."""

    def probe(self, code: str, **kwargs: Any):
        return super().probe(NO_TORCH_PATCH + textwrap.dedent(code), **kwargs)


#: Checks that run a real engine: tested (mutant and good fixtures) in test_checks_engine_run.py,
#: and left out of this file's runs, which stay fast.
ENGINE_RUN = ["logits.engine-run"]


def run_group(
    target: Target, session: Session | None = None, only: set[str] | None = None
) -> dict[str, CheckResult]:
    """Run the logits checks (or `only` these) on `target`, keyed by check id."""
    catalog = {
        k: v
        for k, v in load_catalog().items()
        if v.group == GROUP and (not only or k in only) and k not in ENGINE_RUN
    }
    if session is None:
        # Checks that only examine the class are quicker without importing torch.
        lean = only is not None and only.isdisjoint(DRIVING)
        session = NoTorchSession(target) if lean else Session(target)
    with target:
        return {
            item.check.id: run_planned(session, item)
            for item in plan(target, session.contract, catalog)
        }


def inline_logits(name: str, source: str, attr: str) -> Target:
    """A logits-processor plugin `name` written on the spot, its entry point `name:attr`."""
    overlay = Overlay().add_inline(
        name, {f"{name}/__init__.py": textwrap.dedent(source)}, {LOGITS: {name: f"{name}:{attr}"}}
    )
    eps = (EntryPointInfo(LOGITS, name, f"{name}:{attr}"),)
    return Target(name, "0.1.0", "project", eps, ("vllm>=0.30",), None, overlay)


def dummy_v1() -> Target:
    """The fixture's own V1 variant, declared as the entry point of a copy of the fixture."""
    source = fixtures_root() / "dummy_logits_processor/dummy_logits_processor/__init__.py"
    return inline_logits("dummy_v1_copy", source.read_text(), "DummyLogitsProcessorV1")


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
    assert ids == sorted(MUTANTS + ENGINE_RUN), "each logits check needs a mutant named after it"


@pytest.mark.parametrize("check_id", MUTANTS)
def test_the_mutant_fails_its_check_with_the_fix_and_breaks_nothing_unexpected(check_id):
    if check_id in DRIVING:
        pytest.importorskip("torch")
    results = run_group(resolve_target(check_id))
    assert_mutant_fails(results, check_id, OBSERVED[check_id], ALSO_FAILS.get(check_id, set()))


def test_the_dummy_fixture_passes_every_logits_check():
    pytest.importorskip("torch")
    results = run_group(resolve_target("dummy_logits_processor"))
    assert set(results) == set(MUTANTS)
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
    results = run_group(inline_logits("strict_min_p", source, "StrictMinP"))
    assert results["logits.argmax-invariance-honest"].status == "passed"
    assert results["logits.batch-updates"].status == "passed"


def test_an_older_contract_judges_the_subclass_by_the_v1_interface():
    only = {"logits.subclass"}
    v1 = resolve_target("logits.subclass")
    passed = run_group(v1, NoTorchSession(v1, _contract="0.20.0"), only)["logits.subclass"]
    assert passed.status == "passed", "before MRV2 became the default, V1 is the interface"
    v2 = resolve_target("dummy_logits_processor")
    result = run_group(v2, NoTorchSession(v2, _contract="0.20.0"), only)["logits.subclass"]
    assert result.status == "failed" and "arrived around v0.27" in result.message


def test_without_torch_only_the_driving_checks_skip():
    target = resolve_target("dummy_logits_processor")
    results = run_group(target, NoTorchSession(target))
    for check_id in DRIVING:
        assert results[check_id].status == "skipped", check_id
    # The V2 processor is skipped by the argmax check before torch matters.
    for check_id in set(DRIVING) - {"logits.argmax-invariance-honest"}:
        assert results[check_id].message == f"capability skip: {checks.NO_TORCH}", check_id
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
    assert "subclasses neither" in results["logits.subclass"].message


def test_a_processor_without_its_own_validate_params_passes():
    results = run_group(minimal_v2("plain_proc"), only={"logits.validate-params"})
    assert results["logits.validate-params"].status == "passed"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "@classmethod\n    def validate_params(cls, sampling_params):\n"
            "        raise ValueError('extra_args are required')",
            "validate_params(SamplingParams()) raised:\nValueError: extra_args are required",
        ),
        (
            "def validate_params(self, sampling_params):\n        return None",
            "It is not a classmethod",
        ),
        (
            "@classmethod\n    def validate_params(cls, sampling_params):\n"
            "        return 'mode' not in (sampling_params.extra_args or {})",
            "returned False, which rejects nothing",
        ),
    ],
    ids=["rejects-defaults", "instance-method", "returns-false"],
)
def test_validate_params_problems_are_explained(body, expected):
    results = run_group(minimal_v2("checking_proc", body), only={"logits.validate-params"})
    result = results["logits.validate-params"]
    assert result.status == "failed" and expected in result.message, result.message


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


def test_an_engine_refusing_model_runner_v2_is_told_apart_from_a_plugin_error():
    refusal = (
        "Traceback (most recent call last):\n  ...\nValueError: Model Runner V2 requires Triton."
    )
    assert (
        checks._runner_unavailable("v2", refusal) == "ValueError: Model Runner V2 requires Triton."
    )
    # The V1 runner needs no Triton, and a plugin's own error is not the engine's refusal.
    assert checks._runner_unavailable("v1", refusal) is None
    assert checks._runner_unavailable("v2", "TypeError: apply() missing 1 argument") is None


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
