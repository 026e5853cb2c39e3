"""Loading logits processors: FQCN rules, entry points (never filtered), and the interface in force."""

from __future__ import annotations

import logging

import pytest

from conformance.probe import run_probe
from reference.logits import loader
from reference.logits.v1 import (
    STR_POOLING_REJECTS_LOGITSPROCS,
    STR_SPEC_DEC_REJECTS_LOGITSPROCS,
    MinPLogitsProcessor,
)
from reference.logits.v2 import LogitsProcessor as V2LogitsProcessor
from tests.conftest import add_plugin, code

#: vLLM 0.32's loading (V1 and V2 interfaces, chosen by VLLM_USE_V2_MODEL_RUNNER); what 0.34
#: changed is in tests/test_contract_versions.py.
pytestmark = pytest.mark.contract("0.32.0")

LOGITSPROCS = "vllm.logits_processors"
V2_BASE = "vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor"
V1_FQCN_LOADERS = [loader._load_logitsprocs_by_fqcns, loader._load_v2_logitsprocs_by_fqcns]
LOADER_IDS = ["v1", "v2"]


class _Holder:
    """Gives the FQCN walk a nested qualname to resolve."""

    class Nested(MinPLogitsProcessor):
        pass


class _V2Processor(V2LogitsProcessor):
    def apply(self, logits, ctx):
        return logits


@pytest.fixture
def loader_errors():
    """ERROR records of both loaders' loggers (the `vllm` tree does not propagate to root)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append
    names = ["vllm.v1.sample.logits_processor", "vllm.v1.worker.gpu.sample.logits_processor.loader"]
    for name in names:
        logging.getLogger(name).addHandler(handler)
    yield records
    for name in names:
        logging.getLogger(name).removeHandler(handler)


# --- FQCN strings and classes (in process: nothing here reads the installed plugins) ---------


@pytest.mark.parametrize("load", V1_FQCN_LOADERS, ids=LOADER_IDS)
@pytest.mark.parametrize("fqcn", ["no_colon", "a:b:c", "reference.logits.v1.MinPLogitsProcessor"])
def test_an_fqcn_must_be_module_colon_qualname(load, fqcn):
    with pytest.raises(ValueError) as excinfo:
        load([fqcn])
    assert str(excinfo.value) == (
        f"Invalid logits processor FQCN {fqcn!r}. Expected format: '<module>:<type>'"
    )


@pytest.mark.parametrize("load", V1_FQCN_LOADERS, ids=LOADER_IDS)
def test_an_fqcn_that_names_a_function_is_refused(load):
    with pytest.raises(ValueError, match=r"^Loaded logit processor must be a type\.$"):
        load(["math:gcd"])


def test_v1_refuses_an_fqcn_class_that_is_not_a_v1_processor():
    with pytest.raises(ValueError, match=r"^OrderedDict must be a subclass of LogitsProcessor$"):
        loader._load_logitsprocs_by_fqcns(["collections:OrderedDict"])


def test_v1_refuses_a_class_object_that_is_not_a_v1_processor():
    with pytest.raises(ValueError, match=r"^dict is not a subclass of LogitsProcessor$"):
        loader._load_logitsprocs_by_fqcns([dict])


@pytest.mark.parametrize(
    "item", ["collections:OrderedDict", MinPLogitsProcessor], ids=["fqcn", "class"]
)
def test_v2_refuses_anything_that_is_not_a_v2_processor(item):
    name = "OrderedDict" if isinstance(item, str) else item.__name__
    with pytest.raises(ValueError) as excinfo:
        loader._load_v2_logitsprocs_by_fqcns([item])
    assert str(excinfo.value) == f"{name} is not a subclass of {V2_BASE}"


@pytest.mark.parametrize(
    ("load", "first"),
    [
        (loader._load_logitsprocs_by_fqcns, MinPLogitsProcessor),
        (loader._load_v2_logitsprocs_by_fqcns, _V2Processor),
    ],
    ids=LOADER_IDS,
)
def test_an_fqcn_whose_module_fails_to_import_is_a_runtime_error_naming_its_position(
    load, first, loader_errors
):
    with pytest.raises(RuntimeError) as excinfo:
        load([first, "no_such_module_xyz:P"])
    assert str(excinfo.value) == "Failed to load 1th LogitsProcessor plugin no_such_module_xyz:P"
    assert isinstance(excinfo.value.__cause__, ModuleNotFoundError)
    assert [r.getMessage() for r in loader_errors] == [
        "Failed to load 1th LogitsProcessor plugin no_such_module_xyz:P: "
        "No module named 'no_such_module_xyz'"
    ]


def test_v1_resolves_a_nested_qualname_and_keeps_the_given_order():
    loaded = loader._load_logitsprocs_by_fqcns(
        [
            f"{__name__}:_Holder.Nested",
            MinPLogitsProcessor,
            "reference.logits.v1:MinPLogitsProcessor",
        ]
    )
    assert loaded == [_Holder.Nested, MinPLogitsProcessor, MinPLogitsProcessor]


def test_v2_loads_a_v2_processor_by_fqcn_and_by_class():
    loaded = loader._load_v2_logitsprocs_by_fqcns([f"{__name__}:_V2Processor", _V2Processor])
    assert loaded == [_V2Processor, _V2Processor]


def test_an_empty_custom_list_loads_nothing():
    assert loader._load_logitsprocs_by_fqcns(None) == []
    assert loader._load_v2_logitsprocs_by_fqcns(()) == []


# --- pooling and speculative decoding with a custom list (rejected before any loading) ------


@pytest.mark.parametrize(
    "build",
    [
        lambda custom: loader.build_logitsprocs(None, "cpu", False, True, custom),
        lambda custom: loader.build_custom_logits_processors(None, None, True, custom),
    ],
    ids=LOADER_IDS,
)
def test_a_pooling_model_with_custom_processors_is_refused(build):
    with pytest.raises(ValueError) as excinfo:
        build(["never_imported:Proc"])
    assert str(excinfo.value) == STR_POOLING_REJECTS_LOGITSPROCS


def test_v1_refuses_custom_processors_under_speculative_decoding():
    class SpecConfig:
        speculative_config = {"method": "ngram"}

    with pytest.raises(ValueError) as excinfo:
        loader.build_logitsprocs(SpecConfig(), "cpu", False, False, ["never_imported:Proc"])
    assert str(excinfo.value) == STR_SPEC_DEC_REJECTS_LOGITSPROCS


# --- entry points and the interface in force (probes: fresh interpreters, exact plugin sets) -

V1_PLUGIN = """
from vllm.v1.sample.logits_processor import LogitsProcessor

class V1Proc(LogitsProcessor):
    def __init__(self, vllm_config, device, is_pin_memory):
        pass
    def apply(self, logits):
        return logits
    def is_argmax_invariant(self):
        return True
    def update_state(self, batch_update):
        pass
"""

V2_PLUGIN = """
from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor

class V2Proc(LogitsProcessor):
    def __init__(self, vllm_config, req_states):
        self.req_states = req_states
    def apply(self, logits, ctx):
        return logits
"""


@pytest.fixture
def v1_plugin(overlay):
    return add_plugin(
        overlay, "v1-proc", {LOGITSPROCS: {"v1_proc": "v1_proc:V1Proc"}}, v1_proc=V1_PLUGIN
    )


@pytest.fixture
def v2_plugin(overlay):
    return add_plugin(
        overlay, "v2-proc", {LOGITSPROCS: {"v2_proc": "v2_proc:V2Proc"}}, v2_proc=V2_PLUGIN
    )


@pytest.fixture
def broken_plugin(overlay):
    return add_plugin(
        overlay,
        "broken-proc",
        {LOGITSPROCS: {"broken": "broken_proc:Proc"}},
        broken_proc="raise ImportError('missing dependency xyz')\n",
    )


@pytest.fixture
def fixture_plugin(overlay):
    return overlay.add_fixture("dummy_logits_processor")


def runner(v2: bool | None) -> dict[str, str | None]:
    return {"VLLM_USE_V2_MODEL_RUNNER": None if v2 is None else str(int(v2))}


@pytest.mark.parametrize(
    "vllm_plugins", [None, "", "some_other_plugin"], ids=["unset", "empty", "other"]
)
def test_the_fixture_plugin_loads_whatever_vllm_plugins_says(fixture_plugin, vllm_plugins):
    result = run_probe(
        code(
            """
            import vllm.v1.worker.gpu.sample.logits_processor as v2
            probe.result["loaded"] = [c.__name__ for c in v2._load_v2_logitsprocs_plugins()]
            """
        ),
        overlay=fixture_plugin,
        env={"VLLM_PLUGINS": vllm_plugins, **runner(True)},
    )
    assert result.ok, result.describe()
    assert result.values["loaded"] == ["DummyLogitsProcessor"], "VLLM_PLUGINS must not filter it"


def test_v1_loads_entry_points_without_checking_their_base_class(fixture_plugin):
    result = run_probe(
        code(
            """
            import vllm.v1.sample.logits_processor as v1
            probe.result["loaded"] = [c.__name__ for c in v1._load_logitsprocs_plugins()]
            """
        ),
        overlay=fixture_plugin,
        env={"VLLM_PLUGINS": ""},
    )
    assert result.ok, result.describe()
    assert result.values["loaded"] == ["DummyLogitsProcessor"], "the V2 class loads, unchecked"


@pytest.mark.parametrize("v2", [False, True], ids=LOADER_IDS)
def test_an_entry_point_that_fails_to_import_aborts_with_a_runtime_error(broken_plugin, v2):
    result = run_probe(
        code(
            """
            from vllm.config import VllmConfig
            from reference.logits.loader import load_custom_logitsprocs_for
            load_custom_logitsprocs_for(VllmConfig())
            """
        ),
        overlay=broken_plugin,
        env=runner(v2),
    )
    entry = "EntryPoint(name='broken', value='broken_proc:Proc', group='vllm.logits_processors')"
    assert result.status == "raised", result.describe()
    assert result.exception.type == "RuntimeError"
    assert result.exception.message == f"Failed to load LogitsProcessor plugin {entry}"
    errors = [r["message"] for r in result.records_at("ERROR")]
    assert errors == [f"Failed to load LogitsProcessor plugin {entry}: missing dependency xyz"]


def test_the_v2_runner_refuses_a_v1_interface_entry_point(v1_plugin):
    result = run_probe(
        code(
            """
            from vllm.config import VllmConfig
            from reference.logits.loader import load_custom_logitsprocs_for
            load_custom_logitsprocs_for(VllmConfig())
            """
        ),
        overlay=v1_plugin,
        env=runner(True),
    )
    assert result.status == "raised", result.describe()
    assert result.exception.type == "ValueError"
    assert result.exception.message == (
        f"LogitsProcessor plugin v1_proc is not a subclass of {V2_BASE}; V1-interface plugins "
        "are not supported by the V2 model runner."
    )


def test_the_v1_runner_builds_a_v1_interface_entry_point_after_the_built_ins(v1_plugin):
    result = run_probe(
        code(
            """
            from vllm.config import VllmConfig
            from reference.logits.loader import build_logits_processors_for
            procs = build_logits_processors_for(VllmConfig())
            probe.result["built"] = sorted(type(p).__name__ for p in procs.all)
            probe.result["invariant"] = [type(p).__name__ for p in procs.argmax_invariant]
            """
        ),
        overlay=v1_plugin,
        env=runner(False),
    )
    assert result.ok, result.describe()
    assert result.values["built"] == [
        "LogitBiasLogitsProcessor",
        "MinPLogitsProcessor",
        "MinTokensLogitsProcessor",
        "V1Proc",
    ]
    assert result.values["invariant"] == ["MinPLogitsProcessor", "V1Proc"]


def test_the_v2_runner_builds_a_v2_entry_point_with_the_request_state(v2_plugin):
    pytest.importorskip("torch")  # empty request-state buffers are tensors
    result = run_probe(
        code(
            """
            from vllm.config import ModelConfig, VllmConfig
            from reference.config import HfConfig
            from reference.logits.loader import build_logits_processors_for
            cfg = VllmConfig(model_config=ModelConfig(hf_config=HfConfig(vocab_size=11)))
            procs = build_logits_processors_for(cfg)
            probe.result["built"] = [type(p).__name__ for p in procs]
            probe.result["vocab"] = procs[0].req_states.vocab_size
            probe.result["slots"] = procs[0].req_states.max_num_reqs
            """
        ),
        overlay=v2_plugin,
        env=runner(True),
    )
    assert result.ok, result.describe()
    assert result.values == {"built": ["V2Proc"], "vocab": 11, "slots": 16}


def test_the_v1_runner_cannot_build_the_v2_fixture_plugin_as_in_vllm(fixture_plugin):
    result = run_probe(
        code(
            """
            from vllm.config import VllmConfig
            from reference.logits.loader import build_logits_processors_for
            build_logits_processors_for(VllmConfig())
            """
        ),
        overlay=fixture_plugin,
        env=runner(False),
    )
    assert result.status == "raised", result.describe()
    assert result.exception.type == "TypeError", "V1 calls ctor(vllm_config, device, pin)"
    assert "DummyLogitsProcessor.__init__()" in result.exception.message


@pytest.mark.parametrize("v2", [False, True], ids=["0", "1"])
def test_the_interface_in_force_follows_vllm_use_v2_model_runner(v2_plugin, v2):
    result = run_probe(
        code(
            """
            from vllm.config import VllmConfig
            from reference.logits.loader import load_custom_logitsprocs_for, uses_v2_interface
            cfg = VllmConfig()
            probe.result["flag"] = cfg.use_v2_model_runner
            probe.result["v2"] = uses_v2_interface(cfg)
            probe.result["loaded"] = [c.__name__ for c in load_custom_logitsprocs_for(cfg)]
            """
        ),
        overlay=v2_plugin,
        env=runner(v2),
    )
    assert result.ok, result.describe()
    assert result.values == {"flag": v2, "v2": v2, "loaded": ["V2Proc"]}


def test_without_the_variable_the_interface_follows_default_use_v2_model_runner():
    result = run_probe(
        code(
            """
            import importlib.util
            from vllm.config import VllmConfig
            from reference.logits import default_use_v2_model_runner
            from reference.logits.loader import uses_v2_interface
            cfg = VllmConfig()
            probe.result["in_force"] = uses_v2_interface(cfg)
            probe.result["default"] = default_use_v2_model_runner(cfg)
            probe.result["triton"] = importlib.util.find_spec("triton") is not None
            """
        ),
        env=runner(None),
    )
    assert result.ok, result.describe()
    values = result.values
    assert values["in_force"] == values["default"] == values["triton"], (
        "with no VLLM_USE_V2_MODEL_RUNNER and no speculative decoding, MRV2 is in force "
        "exactly where Triton is available"
    )


def test_speculative_decoding_selects_the_v1_runner_by_default():
    result = run_probe(
        code(
            """
            from vllm.config import VllmConfig
            from reference.logits.loader import uses_v2_interface
            probe.result["v2"] = uses_v2_interface(VllmConfig(speculative_config={"method": "ngram"}))
            """
        ),
        env=runner(None),
    )
    assert result.ok, result.describe()
    assert result.values["v2"] is False


@pytest.mark.parametrize("v2", [False, True], ids=LOADER_IDS)
def test_a_pooling_model_never_imports_installed_plugins(broken_plugin, v2):
    result = run_probe(
        code(
            """
            import sys
            from vllm.config import ModelConfig, VllmConfig
            from reference.logits.loader import build_logits_processors_for
            procs = build_logits_processors_for(VllmConfig(model_config=ModelConfig(runner_type="pooling")))
            probe.result["count"] = len(list(getattr(procs, "all", procs)))
            probe.result["imported"] = "broken_proc" in sys.modules
            """
        ),
        overlay=broken_plugin,
        env=runner(v2),
    )
    assert result.ok, result.describe()
    assert result.values == {"count": 0, "imported": False}


def test_v1_speculative_decoding_runs_only_min_tokens_and_never_imports_plugins(broken_plugin):
    result = run_probe(
        code(
            """
            import sys
            import vllm.v1.sample.logits_processor as v1
            from vllm.config import VllmConfig
            cfg = VllmConfig(speculative_config={"method": "ngram"})
            procs = v1.build_logitsprocs(cfg, "cpu", False, False)
            probe.result["built"] = [type(p).__name__ for p in procs.all]
            probe.result["imported"] = "broken_proc" in sys.modules
            """
        ),
        overlay=broken_plugin,
    )
    assert result.ok, result.describe()
    assert result.values == {"built": ["MinTokensLogitsProcessor"], "imported": False}
    warnings = [r["message"] for r in result.records_at("WARNING")]
    assert "min_p and logit_bias parameters won't work with speculative decoding." in warnings


def test_v2_keeps_custom_processors_under_speculative_decoding(v2_plugin):
    result = run_probe(
        code(
            """
            import vllm.v1.worker.gpu.sample.logits_processor as v2
            from vllm.config import VllmConfig
            cfg = VllmConfig(speculative_config={"method": "ngram"})
            state = v2.LogitsProcRequestState(
                device="cpu", max_num_reqs=2, vocab_size=4, all_token_ids=None,
                prompt_len=None, prefill_len=None, total_len=None,
            )
            procs = v2.build_custom_logits_processors(cfg, state, False, ["v2_proc:V2Proc"])
            probe.result["built"] = [type(p).__name__ for p in procs]
            """
        ),
        overlay=v2_plugin,
        env=runner(True),
    )
    assert result.ok, result.describe()
    assert result.values["built"] == ["V2Proc", "V2Proc"], "entry point first, then the FQCN"


def test_the_v1_fixture_variant_loads_by_fqcn_under_v1(overlay):
    overlay.add_fixture("dummy_logits_processor")
    result = run_probe(
        code(
            """
            import vllm.v1.sample.logits_processor as v1
            loaded = v1._load_logitsprocs_by_fqcns(["dummy_logits_processor:DummyLogitsProcessorV1"])
            probe.result["loaded"] = [c.__name__ for c in loaded]
            """
        ),
        overlay=overlay,
    )
    assert result.ok, result.describe()
    assert result.values["loaded"] == ["DummyLogitsProcessorV1"]


def test_v2_refuses_the_v1_fixture_variant_by_fqcn(overlay):
    overlay.add_fixture("dummy_logits_processor")
    result = run_probe(
        code(
            """
            import vllm.v1.worker.gpu.sample.logits_processor as v2
            v2._load_v2_logitsprocs_by_fqcns(["dummy_logits_processor:DummyLogitsProcessorV1"])
            """
        ),
        overlay=overlay,
    )
    assert result.status == "raised", result.describe()
    assert result.exception.message == f"DummyLogitsProcessorV1 is not a subclass of {V2_BASE}"


# --- frontend validation --------------------------------------------------------------------

VALIDATE = """
import vllm.v1.sample.logits_processor as v1
import vllm.v1.worker.gpu.sample.logits_processor as v2
from vllm.sampling_params import SamplingParams
from reference.logits.errors import VLLMValidationError
V1_FQCN = ["dummy_logits_processor:DummyLogitsProcessorV1"]
bad = SamplingParams(extra_args={"target_token": "x"})
good = SamplingParams(extra_args={"target_token": 3})

def outcome(check, params):
    try:
        check(params)
    except Exception as exc:
        return [type(exc).__name__, str(exc), isinstance(exc, ValueError)]
    return "accepted"
"""


def test_v1_frontend_validation_turns_value_error_into_a_validation_error(fixture_plugin):
    result = run_probe(
        code(VALIDATE)
        + code(
            """
            check = lambda p: v1.validate_logits_processors_parameters(V1_FQCN, p)
            probe.result["bad"] = outcome(check, bad)
            probe.result["good"] = outcome(check, good)
            """
        ),
        overlay=fixture_plugin,
        env=runner(False),
    )
    assert result.ok, result.describe()
    assert result.values["bad"] == ["VLLMValidationError", "target_token value x is not int", True]
    assert result.values["good"] == "accepted"


def test_v2_frontend_validation_runs_the_custom_processors_validate_params(overlay):
    overlay.add_fixture("dummy_logits_processor")
    result = run_probe(
        code(VALIDATE)
        + code(
            """
            check = v2.build_custom_logits_processors_params_validator(
                ["dummy_logits_processor:DummyLogitsProcessor"]
            )
            probe.result["bad"] = outcome(check, bad)
            probe.result["good"] = outcome(check, good)
            """
        ),
        overlay=overlay,
        env=runner(True),
    )
    assert result.ok, result.describe()
    assert result.values["bad"] == ["VLLMValidationError", "target_token value x is not int", True]
    assert result.values["good"] == "accepted"


def test_v2_frontend_validation_is_skipped_without_a_custom_list(fixture_plugin):
    result = run_probe(
        code(VALIDATE)
        + code(
            """
            check = v2.build_custom_logits_processors_params_validator(None)
            probe.result["bad"] = outcome(check, bad)
            """
        ),
        overlay=fixture_plugin,
        env=runner(True),
    )
    assert result.ok, result.describe()
    assert result.values["bad"] == "accepted", (
        "vLLM 0.32 validates only the --logits-processors list"
    )


def test_the_interfaces_and_loaders_import_without_torch():
    result = run_probe(
        code(
            """
            import sys
            import vllm.v1.sample.logits_processor as v1
            import vllm.v1.sample.logits_processor.interface
            import vllm.v1.sample.logits_processor.builtin
            import vllm.v1.worker.gpu.sample.logits_processor as v2
            v1.build_logitsprocs, v2.build_custom_logits_processors
            probe.result["torch"] = "torch" in sys.modules
            """
        )
    )
    assert result.ok, result.describe()
    assert result.values == {"torch": False}
