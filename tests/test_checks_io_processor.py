"""The `io_processor.*` checks: each mutant trips its check, good processors pass them."""

from __future__ import annotations

import importlib.util
import textwrap

import pytest

from conformance.checks import io_processor as checks
from conformance.framework import load_catalog
from conformance.overlay import Overlay
from conformance.probes.data import ExceptionInfo
from conformance.probes.engine_run import ENGINE_RUN_DEPS
from conformance.probes.io_processor import MALFORMED, Answer, Rejection
from conformance.runner import CheckResult
from conformance.target import EntryPointInfo, Target, mutant_names, resolve_target
from tests.conftest import HAS_TORCH, assert_mutant_fails, run_check_group

GROUP = "io_processor"
IO_PROCESSORS = "vllm.io_processor_plugins"
#: The bundled mutants of this group, each named after the check it must fail.
MUTANTS = [name for name in mutant_names() if name.startswith(f"{GROUP}.")]
#: What the failure message must show, beyond the fix hint.
OBSERVED = {
    "io_processor.loadable": "No module named 'mutant_fast_tokenizer_ext'",
    "io_processor.returns-qualname": "the entry-point 'module:Class' form",
    "io_processor.subclass": "does not subclass vllm.plugins.io_processors.interface.IOProcessor",
    "io_processor.constructs": "the v0.10-v0.16 form",
    "io_processor.round-trip": "'PoolingOutput' object is not subscriptable",
    "io_processor.rejects-bad-input": "parse_data({}) raised KeyError: 'texts'",
    "io_processor.engine-run": "cannot reshape array of size 128 into shape (16,16)",
}
CLASS_CHECKS = [
    "io_processor.subclass",
    "io_processor.constructs",
    "io_processor.round-trip",
    "io_processor.rejects-bad-input",
]
#: Checks that run a real engine: left out of this file's runs of good processors, which stay
#: fast (test_checks_engine_run.py runs them on the good fixtures).
ENGINE_RUN = ["io_processor.engine-run"]
FAST = sorted(set(MUTANTS) - set(ENGINE_RUN))
#: The checks each mutant leaves unable to judge: they are blocked by its check, not failed.
BLOCKED = {
    # Nothing can be examined when the entry point does not load.
    "io_processor.loadable": set(MUTANTS) - {"io_processor.loadable"},
    # A 'module:Class' answer names no class, so the class checks have nothing to examine.
    "io_processor.returns-qualname": {*CLASS_CHECKS, *ENGINE_RUN},
    "io_processor.subclass": set(),
    # A processor that cannot be built cannot take requests.
    "io_processor.constructs": {
        "io_processor.round-trip",
        "io_processor.rejects-bad-input",
        "io_processor.engine-run",
    },
    # A round trip that fails on hand-made outputs fails on the engine's too.
    "io_processor.round-trip": {"io_processor.engine-run"},
    "io_processor.rejects-bad-input": set(),
    "io_processor.engine-run": set(),
}
#: What each mutant's own engine run does when it is not blocked: the sentiment mutants have
#: no checkpoint (a capability skip); the engine-run mutant runs and fails.
SKIPPED = {
    "io_processor.subclass": {"io_processor.engine-run"},
    "io_processor.rejects-bad-input": {"io_processor.engine-run"},
}
#: The mutant's declared dependencies and the model stack, for the mutant that runs a model.
ENGINE_RUN_NEEDS = {"io_processor.engine-run": ("numpy", *ENGINE_RUN_DEPS)}


def run_group(target: Target) -> dict[str, CheckResult]:
    """The group's checks but the engine run, on `target`."""
    return run_check_group(target, GROUP, ENGINE_RUN)


def run_all(target: Target) -> dict[str, CheckResult]:
    """Every check of the group and the package checks, in one session."""
    return run_check_group(target, (GROUP, "package"))


def inline_processor(name: str, processor_source: str, answer: str | None = None) -> Target:
    """An IO-processor plugin `name:register` whose `processor.py` holds `processor_source`.

    The function answers `answer` (Python source), by default the name of `Processor`.
    """
    answer = answer or repr(f"{name}.processor.Processor")
    modules = {
        f"{name}/__init__.py": f"def register():\n    return {answer}\n",
        f"{name}/processor.py": textwrap.dedent(processor_source),
    }
    overlay = Overlay().add_inline(name, modules, {IO_PROCESSORS: {name: f"{name}:register"}})
    eps = (EntryPointInfo(IO_PROCESSORS, name, f"{name}:register"),)
    return Target(name, "0.1.0", "project", eps, ("vllm>=0.30",), None, overlay)


#: A text processor: `{"text": str}` in, one prompt, the pooled vector's length out.
TEXT_PROCESSOR = """
    from vllm.outputs import PoolingOutput, PoolingRequestOutput
    from vllm.plugins.io_processors.interface import IOProcessor

    class Processor(IOProcessor):
        def parse_data(self, data):
            if not isinstance(data, dict) or not isinstance(data.get("text"), str):
                raise ValueError('expected {"text": "..."}')
            return data["text"]

        def pre_process(self, prompt, request_id=None, **kwargs):
            return {"prompt": prompt}

        def post_process(self, model_output, request_id=None, **kwargs):
            return RESULT

        @classmethod
        def conformance_sample_request(cls):
            return {"text": "hello"}

        @staticmethod
        def conformance_fake_outputs(prompts):
            return [PoolingRequestOutput(request_id=str(i), outputs=PoolingOutput(data=[0.5]),
                                         prompt_token_ids=[1]) for i, _ in enumerate(prompts)]
"""


def text_processor(
    result: str = '{"dims": len(model_output[0].outputs.data)}', **edits: str
) -> str:
    """`TEXT_PROCESSOR` returning `result` from post_process, with source `edits` applied."""
    source = textwrap.dedent(TEXT_PROCESSOR).replace("RESULT", result)
    for old, new in edits.items():
        source = source.replace(old, new)
    return source


# --------------------------------------------------------------------------------------------
# Mutants and fixtures.


#: A constructor that reads what a server's config holds, as real pooling IO processors do.
READS_THE_SERVED_CONFIG = """class Processor(IOProcessor):
    def __init__(self, vllm_config, renderer):
        super().__init__(vllm_config, renderer)
        model_config = vllm_config.model_config
        assert model_config.runner_type == "pooling", model_config.runner_type
        assert model_config.io_processor_plugin == "served_config_reader"
        self.pooling_type = model_config.pooler_config.pooling_type
        self.vocab_size = model_config.hf_config.vocab_size

"""


def test_the_processor_is_built_with_the_full_config_of_a_served_pooling_model():
    source = text_processor(**{"class Processor(IOProcessor):\n": READS_THE_SERVED_CONFIG})
    results = run_group(inline_processor("served_config_reader", source))
    constructs = results["io_processor.constructs"]
    assert constructs.status == "passed", constructs.message
    assert results["io_processor.round-trip"].status == "passed"


#: A constructor that loads the served model's tokenizer from its path, as vllm-factory's do.
LOADS_THE_SERVED_TOKENIZER = """class Processor(IOProcessor):
    def __init__(self, vllm_config, renderer):
        super().__init__(vllm_config, renderer)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(vllm_config.model_config.model)
        assert self.tokenizer("hi").input_ids

"""


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("transformers", "tokenizers")),
    reason="loads a tokenizer: needs transformers and tokenizers",
)
def test_the_served_model_has_a_tokenizer_the_processor_can_load():
    # Found by the corpus: vllm-factory's IO processors load the served model's tokenizer in
    # __init__; the harness served a config.json alone, and every one of them failed.
    source = text_processor(**{"class Processor(IOProcessor):\n": LOADS_THE_SERVED_TOKENIZER})
    results = run_group(inline_processor("tokenizer_loader", source))
    constructs = results["io_processor.constructs"]
    assert constructs.status == "passed", constructs.message


def test_every_io_processor_check_has_a_mutant():
    ids = sorted(k for k, v in load_catalog().items() if v.group == GROUP)
    assert ids == MUTANTS, "each io_processor check needs a mutant named after it"
    assert set(OBSERVED) == set(BLOCKED) == set(MUTANTS)


@pytest.mark.parametrize("check_id", MUTANTS)
def test_the_mutant_fails_its_check_and_blocks_only_what_depends_on_it(check_id):
    for module in ENGINE_RUN_NEEDS.get(check_id, ()):  # without them the check skips
        pytest.importorskip(module)
    results = run_all(resolve_target(check_id))
    assert_mutant_fails(results, check_id, OBSERVED[check_id])
    blocked = {k for k, r in results.items() if r.status == "blocked"}
    assert blocked == BLOCKED[check_id]
    # What needs torch or numpy cannot judge where they are absent: never where torch is here.
    unjudged = {k for k, r in results.items() if r.status == "inconclusive"}
    assert not (HAS_TORCH and unjudged), unjudged
    skipped = {k for k, r in results.items() if r.status == "skipped"}
    assert skipped == SKIPPED.get(check_id, set()) - unjudged
    passed = set(results) - blocked - skipped - unjudged - {check_id}
    assert {results[k].status for k in passed} == {"passed"}, "the rest judge and pass"


def test_the_prithvi_fixture_passes_every_io_processor_check():
    pytest.importorskip("numpy")  # the fixture's declared dependencies
    pytest.importorskip("tifffile")
    # It provides both conformance hooks, so the round trip runs end to end: nothing skipped.
    results = run_group(resolve_target("prithvi_io_processor"))
    assert set(results) == set(FAST)
    for check_id, result in results.items():
        assert result.status == "passed", f"{check_id}: {result.message}"


def test_a_good_text_processor_passes_and_a_garbage_string_is_not_judged():
    # Its sample is an object; a string is of another type, so it is judged and rejected.
    results = run_group(inline_processor("text_proc", text_processor()))
    assert {k: r.status for k, r in results.items()} == dict.fromkeys(FAST, "passed")


def test_a_string_taking_processor_may_accept_a_garbage_string():
    source = text_processor(
        **{
            'if not isinstance(data, dict) or not isinstance(data.get("text"), str):': (
                "if not isinstance(data, str):"
            ),
            'return data["text"]': "return data",
            'return {"text": "hello"}': 'return "hello"',
        }
    )
    results = run_group(inline_processor("str_proc", source))
    assert results["io_processor.rejects-bad-input"].status == "passed"


def test_an_inactive_plugin_skips_its_class_checks_and_passes_the_rest():
    results = run_group(inline_processor("quiet_proc", text_processor(), answer="None"))
    for check_id in CLASS_CHECKS:
        assert results[check_id].status == "skipped"
        assert results[check_id].message == f"capability skip: {checks.INACTIVE}"
    assert results["io_processor.loadable"].status == "passed"
    assert results["io_processor.returns-qualname"].status == "passed"


def test_a_raising_entry_function_is_explained():
    answer = "(_ for _ in ()).throw(RuntimeError('no GDAL'))"
    results = run_group(inline_processor("raising_proc", text_processor(), answer=answer))
    message = results["io_processor.returns-qualname"].message
    assert results["io_processor.returns-qualname"].status == "failed"
    assert "RuntimeError: no GDAL" in message and "Failed to load plugin" in message
    assert results["io_processor.constructs"].status == "blocked"
    assert results["io_processor.constructs"].blocked_by == "io_processor.returns-qualname"


def test_a_name_that_does_not_import_fails_the_qualname_check():
    results = run_group(
        inline_processor("typo_proc", text_processor(), answer="'typo_proc.nope.P'")
    )
    result = results["io_processor.returns-qualname"]
    assert result.status == "failed"
    assert "'typo_proc.nope.P', which does not import" in result.message


def test_without_hooks_the_round_trip_is_skipped_and_only_none_and_42_are_judged():
    source = text_processor()
    source = source[: source.index("    @classmethod")]
    # It accepts anything that is a dict with a str "text"; None and 42 are rejected.
    results = run_group(inline_processor("hookless_proc", source))
    round_trip = results["io_processor.round-trip"]
    assert round_trip.status == "skipped"
    assert "no sample request" in round_trip.message
    assert results["io_processor.rejects-bad-input"].status == "passed"


def test_without_fake_outputs_the_round_trip_stops_after_pre_process():
    source = text_processor()
    source = source[: source.index("    @staticmethod")]
    result = run_group(inline_processor("no_outputs_proc", source))["io_processor.round-trip"]
    assert result.status == "skipped"
    assert "the plugin provides no sample outputs" in result.message


def test_a_result_without_json_form_fails_the_round_trip():
    source = text_processor(result="{1, 2, 3}")
    result = run_group(inline_processor("set_proc", source))["io_processor.round-trip"]
    assert result.status == "failed"
    assert "post_process returned a builtins.set, which has no JSON form" in result.message


def test_a_pydantic_result_passes_the_round_trip():
    pytest.importorskip("pydantic")
    source = "from pydantic import BaseModel\n\nclass Out(BaseModel):\n    dims: int\n\n"
    source += text_processor(result="Out(dims=1)")
    result = run_group(inline_processor("model_proc", source))["io_processor.round-trip"]
    assert result.status == "passed", result.message


def test_outputs_that_do_not_match_the_prompts_are_reported():
    source = text_processor(**{"for i, _ in enumerate(prompts)": "for i in range(2)"})
    result = run_group(inline_processor("count_proc", source))["io_processor.round-trip"]
    assert result.status == "failed"
    assert "pre_process returned 1 prompt(s) but" in result.message


def test_a_processor_with_the_old_method_names_gets_the_rename_hint():
    source = text_processor(**{"def parse_data(self, data):": "def parse_request(self, data):"})
    results = run_group(inline_processor("old_proc", source))
    result = results["io_processor.round-trip"]
    assert result.status == "failed"
    assert "NotImplementedError" in result.message and "`parse_request` became" in result.message


# --------------------------------------------------------------------------------------------
# Helpers.


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (Answer(kind="none", repr="None"), None),
        (Answer(kind="str", value="pkg.mod.Cls", repr="'pkg.mod.Cls'"), None),
        (Answer(kind="str", value="pkg.mod:Cls", repr=""), "write 'pkg.mod.Cls'"),
        (Answer(kind="str", value="Cls", repr="'Cls'"), "not a dotted"),
        (Answer(kind="str", value="", repr="''"), "not a dotted"),
        (
            Answer(kind="other", type="type", repr="<class 'p.C'>", is_class=True),
            "returned the class",
        ),
        (Answer(kind="other", type="int", repr="3", is_class=False), "(a int)"),
        (Answer(kind="raised", repr="OSError: x"), "Failed to load plugin"),
    ],
)
def test_answer_problem_explains_each_wrong_answer(answer, expected):
    problem = checks.answer_problem(answer)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (["self", "vllm_config", "renderer"], ""),
        (["self", "vllm_config"], "v0.10-v0.16 form"),
        (["self", "*args"], ""),
        (None, ""),
    ],
)
def test_init_hint(params, expected):
    hint = checks.init_hint(params)
    assert (expected in hint) if expected else hint == ""


def test_parse_hint_names_only_the_old_methods_present():
    assert checks.parse_hint(["parse_data", "pre_process", "post_process"]) == ""
    hint = checks.parse_hint(["parse_request", "pre_process"])
    assert "`parse_request` became `parse_data`" in hint
    assert "validate_or_generate_params" not in hint
    assert checks.parse_hint(None) == ""


def _rejections() -> list[Rejection]:
    return [Rejection(input=shown, jtype=jtype) for shown, _, jtype in MALFORMED]


@pytest.mark.parametrize(
    ("sample_type", "sample_size", "judged"),
    [
        (None, None, ["null", "number"]),
        ("object", 3, ["null", "number", "object", "string"]),
        ("object", 0, ["null", "number", "string"]),
        ("string", None, ["null", "number", "object"]),
        ("number", None, ["null", "object", "string"]),
        ("array", None, ["null", "number", "object", "string"]),
    ],
)
def test_judged_inputs_follow_the_sample_type(sample_type, sample_size, judged):
    chosen = checks.judged_inputs(_rejections(), sample_type, sample_size)
    assert [r.jtype for r in chosen] == judged


def _raised(kind: str, message: str) -> ExceptionInfo:
    return ExceptionInfo(type=kind, module="builtins", message=message, owner="plugin")


def test_rejection_problems_accept_value_errors_only_and_group_alike_failures():
    judged = [
        Rejection("None", "null", _raised("ValidationError", ""), is_value_error=True),
        Rejection("42", "number", _raised("TypeError", "bad")),
        Rejection("{}", "object", returned="[]"),
        Rejection("'x'", "string", _raised("TypeError", "bad")),
    ]
    assert checks.rejection_problems(judged) == [
        "parse_data(42), parse_data('x') raised TypeError: bad",
        "parse_data({}) returned []: the input was accepted",
    ]
