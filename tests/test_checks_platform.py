"""The `platform.*` checks: each mutant trips its check, good plugins pass or skip them."""

from __future__ import annotations

import importlib.util
import textwrap

import pytest

from conformance.checks import platform as checks
from conformance.framework import load_catalog
from conformance.overlay import Overlay, fixtures_root
from conformance.probes.engine_run import ENGINE_RUN_DEPS
from conformance.probes.platform import Answer, LoggerState, Snapshot, Value
from conformance.runner import CheckResult
from conformance.target import EntryPointInfo, Target, resolve_target
from tests.conftest import assert_mutant_fails, run_check_group

GROUP = "platform"
PLATFORM = "vllm.platform_plugins"
#: Every mutant of the group: fixtures/mutants/platform.<check>, each named after its check.
MUTANTS = sorted(
    p.name for p in (fixtures_root() / "mutants").iterdir() if p.name.startswith(GROUP + ".")
)
#: What the failure message must show, beyond the fix hint.
OBSERVED = {
    "platform.loadable": "KeyError: 'DUMMY_DEVICE_DRIVER_PATH'",
    "platform.returns-qualname-or-none": "the entry-point 'module:Class' form",
    "platform.deterministic": "call 2: None",
    "platform.name-not-builtin": "named 'cpu'",
    "platform.class-valid": "`device_type` is not set",
    "platform.worker-cls": "parallel_config.worker_cls is 'auto'",
    "platform.attn-backend": "'mutant_platform_attn_backend.attention.DummyAttnBackend', which",
    "platform.communicator": "No module named 'mutant_platform_communicator.communicator'",
    "platform.resolves": "partially initialized module 'mutant_platform_resolves'",
    "platform.no-side-effects": "os.environ['DUMMY_DEVICE_LOG_LEVEL'] was set",
    "platform.worker-runs": "KeyError: 'PINNED_CPU_CORES'",
}
CLASS_CHECKS = [
    "platform.class-valid",
    "platform.worker-cls",
    "platform.attn-backend",
    "platform.communicator",
    "platform.resolves",
]
#: Checks that run a real engine: their mutant needs the model stack; the good fixtures are
#: run through them in test_checks_engine_run.py, and the other tests here leave them out.
ENGINE_RUN = ["platform.worker-runs"]
HAS_ENGINE = all(importlib.util.find_spec(m) is not None for m in ENGINE_RUN_DEPS)
#: The group's checks that the fast tests run.
FAST = sorted(set(MUTANTS) - set(ENGINE_RUN))


def run_group(target: Target) -> dict[str, CheckResult]:
    """The group's checks but the engine run."""
    return run_check_group(target, GROUP, ENGINE_RUN)


def inline_platform(name: str, detect_body: str, platform_source: str = "") -> Target:
    """A platform plugin `name:detect` written on the spot; `platform.py` holds its class."""
    source = "def detect():\n" + textwrap.indent(textwrap.dedent(detect_body), "    ")
    modules = {f"{name}/__init__.py": source}
    if platform_source:
        modules[f"{name}/platform.py"] = textwrap.dedent(platform_source)
    overlay = Overlay().add_inline(name, modules, {PLATFORM: {name: f"{name}:detect"}})
    eps = (EntryPointInfo(PLATFORM, name, f"{name}:detect"),)
    return Target(name, "0.1.0", "project", eps, ("vllm>=0.30",), None, overlay)


GOOD_CLASS = """
    from vllm.platforms.cpu import CpuPlatform
    from vllm.platforms.interface import PlatformEnum

    class HostPlatform(CpuPlatform):
        # Derived from the built-in CPU platform, it keeps the CPU identity on purpose.
        device_name = "host"
"""


# --------------------------------------------------------------------------------------------
# Mutants and fixtures.


def test_every_platform_check_has_a_mutant():
    ids = sorted(k for k, v in load_catalog().items() if v.group == GROUP)
    assert ids == MUTANTS, "each platform check needs a mutant named after it"
    assert sorted(OBSERVED) == MUTANTS, "each mutant says what its failure must show"


@pytest.mark.parametrize("check_id", MUTANTS)
def test_the_mutant_fails_its_check_and_only_it(check_id):
    if check_id in ENGINE_RUN and not HAS_ENGINE:
        pytest.skip(f"{check_id} runs a model: needs {', '.join(ENGINE_RUN_DEPS)}")
    # Every check of the group, the engine run included, and the package checks.
    results = run_check_group(resolve_target(check_id), (GROUP, "package"))
    assert set(MUTANTS) <= set(results), "every platform check judged the mutant"
    assert_mutant_fails(results, check_id, OBSERVED[check_id])


def test_the_dummy_platform_fixture_passes_every_platform_check():
    # It activates unconditionally (being installed is the opt-in), so nothing is skipped.
    results = run_group(resolve_target("vllm_add_dummy_platform"))
    assert set(results) == set(FAST)
    for check_id, result in results.items():
        assert result.status == "passed", f"{check_id}: {result.message}"


def test_an_inactive_plugin_skips_its_class_checks_and_passes_the_rest():
    results = run_group(inline_platform("quiet_npu", "return None"))
    for check_id in CLASS_CHECKS:
        assert results[check_id].status == "skipped"
        assert results[check_id].message == f"capability skip: {checks.INACTIVE}"
    others = set(FAST) - set(CLASS_CHECKS)
    assert {results[k].status for k in others} == {"passed"}


def test_a_subclass_of_a_builtin_platform_may_keep_its_identity():
    target = inline_platform("host_plat", "return 'host_plat.platform.HostPlatform'", GOOD_CLASS)
    results = run_group(target)
    assert {k: r.status for k, r in results.items()} == dict.fromkeys(FAST, "passed")


def test_a_raising_detection_function_fails_the_return_check_and_blocks_the_class_checks():
    results = run_group(inline_platform("raising_npu", "raise RuntimeError('no npu driver')"))
    message = results["platform.returns-qualname-or-none"].message
    assert results["platform.returns-qualname-or-none"].status == "failed"
    assert "RuntimeError: no npu driver" in message and "Return None instead" in message
    for check_id in CLASS_CHECKS:
        assert results[check_id].status == "blocked", f"{check_id}: {results[check_id].message}"
        assert results[check_id].blocked_by == "platform.returns-qualname-or-none"
    assert results["platform.deterministic"].status == "passed", "it raises the same each time"


def test_returning_the_class_object_is_explained():
    body = "from host_obj.platform import HostPlatform\nreturn HostPlatform"
    results = run_group(inline_platform("host_obj", body, GOOD_CLASS))
    result = results["platform.returns-qualname-or-none"]
    assert result.status == "failed"
    assert "returned the class" in result.message and "__qualname__" in result.message


def test_a_pre_v015_positional_attention_signature_fails_with_the_hint():
    source = (
        GOOD_CLASS
        + """
        @classmethod
        def get_attn_backend_cls(
            cls, selected_backend, head_size, dtype, kv_cache_dtype, block_size, use_mla
        ):
            return "vllm.v1.attention.backends.cpu_attn.CPUAttentionBackend"
    """
    )
    body = "return 'old_attn.platform.HostPlatform'"
    result = run_group(inline_platform("old_attn", body, source))["platform.attn-backend"]
    assert result.status == "failed", result.message
    assert "the pre-v0.15 positional form" in result.message


def test_the_attention_check_applies_from_the_keyword_signature_on():
    check = load_catalog()["platform.attn-backend"]
    assert check.since == "0.15.0"
    assert not check.applies_to_contract("0.14.1")
    assert check.applies_to_contract("0.32.0")


# --------------------------------------------------------------------------------------------
# Helpers.


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (Answer("none", "None"), None),
        (Answer("str", "'pkg.mod.Cls'", value="pkg.mod.Cls"), None),
        (Answer("str", "", value="pkg.mod:Cls"), "write 'pkg.mod.Cls'"),
        (Answer("str", "''", value=""), "empty string"),
        (Answer("str", "'Cls'", value="Cls"), "not a dotted"),
        (Answer("str", "", value="pkg.mod.Cls "), "not a dotted"),
        (Answer("other", "<class 'p.C'>", type="type", is_class=True), "returned the class"),
        (Answer("other", "('a', 'b')", type="tuple"), "tuple"),
        (Answer("raised", "OSError: x", exception=True), "swallows the exception"),
        (Answer("raised", "SystemExit: 1", exception=False), "process stops"),
    ],
)
def test_qualname_problem_explains_each_wrong_answer(answer, expected):
    problem = checks.qualname_problem(answer, "0.32.0")
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem


@pytest.mark.parametrize(
    ("contract", "expected"),
    [
        ("0.32.0", "logged at DEBUG only"),
        ("0.33.0", "at WARNING with its traceback"),
        ("0.34.0+reference.0.1.0", "at WARNING with its traceback"),
    ],
)
def test_a_raising_detector_is_explained_by_the_contract_release(contract, expected):
    problem = checks.qualname_problem(Answer("raised", "OSError: x", exception=True), contract)
    assert problem is not None and expected in problem


def test_answer_keys_tell_a_raise_from_a_returned_string():
    raised = Answer("raised", "ValueError: x")
    returned = Answer("str", "'ValueError: x'", value="ValueError: x")
    assert checks.answer_key(raised) != checks.answer_key(returned)


def _snapshot(environ=None, sys_path=None, vllm_level="DEBUG"):
    return Snapshot(
        environ=environ or {"HOME": "/root"},
        sys_path=sys_path or ["/a"],
        disable=0,
        loggers={"vllm": LoggerState(level=vllm_level, propagate=True, disabled=False)},
    )


def test_side_effects_lists_each_change_without_quoting_existing_values():
    before = _snapshot({"HOME": "/root", "TOKEN": "secret"}, ["/a", "/b"])
    after = _snapshot({"HOME": "/elsewhere", "NEW": "1"}, ["/b", "/a", "/c"], "WARNING")
    after.disable = 50
    changes = checks.side_effects(before, after)
    assert "os.environ['NEW'] was set to '1'" in changes
    assert "os.environ['TOKEN'] was removed" in changes
    assert "os.environ['HOME'] was changed" in changes
    assert "sys.path gained '/c'" in changes
    assert "the vllm logger's level changed from DEBUG to WARNING" in changes
    assert "logging.disable changed from 0 to 50" in changes
    assert not any("secret" in c or "/elsewhere" in c for c in changes)


def test_side_effects_notices_a_reordered_path_and_nothing_else():
    assert checks.side_effects(_snapshot(), _snapshot()) == []
    reordered = checks.side_effects(
        _snapshot(sys_path=["/a", "/b"]), _snapshot(sys_path=["/b", "/a"])
    )
    assert reordered == ["sys.path was reordered"]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (["selected_backend", "attn_selector_config", "num_heads"], ""),
        (["selected_backend", "*args", "**kwargs"], ""),
        (["backend", "head_size", "dtype", "kv_cache_dtype", "block_size", "use_v1"], "pre-v0.13"),
        (["backend", "head_size", "dtype", "kv_cache_dtype", "block_size", "use_mla"], "pre-v0.15"),
        (["backend", "selector"], "none is `attn_selector_config`"),
        (None, ""),
    ],
)
def test_attn_signature_hint_names_the_old_form(params, expected):
    hint = checks.attn_signature_hint(params)
    assert (expected in hint) if expected else hint == ""


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        (Value(enum="OOT"), None),
        (Value(enum="CPU", inherited_from=["vllm.platforms.cpu.CpuPlatform"]), None),
        (Value(enum="CUDA"), "PlatformEnum.OOT"),
        (Value(enum="UNSPECIFIED", inherited_from=["x.Base"]), "PlatformEnum.OOT"),
        (Value(repr="'oot'", type="str", value="oot"), "not a PlatformEnum member"),
        (Value(missing=True), "not set"),
    ],
)
def test_enum_problem(info, expected):
    problem = checks.enum_problem(info)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem


def test_text_problem():
    assert checks.text_problem("device_type", Value(repr="'npu'", type="str", value="npu")) is None
    assert "empty" in checks.text_problem("device_type", Value(repr="''", type="str", value=""))
    assert "not a str" in checks.text_problem("device_name", Value(repr="None", type="NoneType"))
    assert "not set" in checks.text_problem("device_name", Value(missing=True))


#: What real vLLM 0.32 prints when a worker fails in an engine process: the cause in the
#: worker's log lines and the front end's relays, which never name it.
ENGINE_OUTPUT = """\
(Worker pid=27961) ERROR 11-22 19:15:38 [multiproc_executor.py:953] WorkerProc failed to start.
(Worker pid=27961) ERROR 11-22 19:15:38 [multiproc_executor.py:953] Traceback (most recent call last):
(Worker pid=27961) ERROR 11-22 19:15:38 [multiproc_executor.py:953] KeyError: 'PINNED_CPU_CORES'
(EngineCore pid=27870) ERROR 11-22 19:15:41 [core.py:1510] Exception: WorkerProc initialization failed due to an exception in a background process. See stack trace for root cause.
KeyError: 'PINNED_CPU_CORES'
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
torch.AcceleratorError: no device
"""


def test_engine_root_causes_skip_the_relays_and_repeat_nothing():
    assert checks.engine_root_causes(ENGINE_OUTPUT) == [
        "KeyError: 'PINNED_CPU_CORES'",
        "torch.AcceleratorError: no device",
    ]
    assert checks.engine_root_causes(ENGINE_OUTPUT, limit=1) == ["KeyError: 'PINNED_CPU_CORES'"]
    assert checks.engine_root_causes("Traceback (most recent call last):\n  File 'x'\n") == []


@pytest.mark.parametrize(
    ("owner", "raised"), [("engine", "Inconclusive"), ("plugin", "CheckFailed")]
)
def test_a_config_the_engine_cannot_build_leaves_worker_cls_inconclusive(
    monkeypatch, owner, raised
):
    # Found on vLLM 0.34 Python-only: VllmConfig() raises 'Failed to infer device type' with the
    # plugin filtered out, which says nothing about the plugin's check_and_update_config.
    from conformance import framework
    from conformance.probes.data import ExceptionInfo
    from conformance.probes.platform import ClassObservation

    error = ExceptionInfo("RuntimeError", "builtins", "Failed to infer device type", owner=owner)
    run = ClassObservation(is_class=True, config_error=error)
    monkeypatch.setattr(checks, "platform_class", lambda ctx: ("plug.Platform", run))
    with pytest.raises(getattr(framework, raised)) as caught:
        checks.check_worker_cls(object())  # type: ignore[arg-type]
    assert "Failed to infer device type" in str(caught.value)


def test_a_hook_that_reads_the_model_config_unguarded_fails_worker_cls_as_on_vllm():
    # vllm-spyre-next's check_and_update_config logs vllm_config.model_config.model; the check
    # hands the hook a bare VllmConfig(), whose model_config is None on vLLM 0.32 and, since
    # deviation 47 was fixed, on the reference too.
    source = (
        GOOD_CLASS
        + """
        @classmethod
        def check_and_update_config(cls, vllm_config):
            print("serving", vllm_config.model_config.model)
            vllm_config.parallel_config.worker_cls = "host_plat.platform.Worker"
    """
    )
    target = inline_platform("host_plat", "return 'host_plat.platform.HostPlatform'", source)
    result = run_group(target)["platform.worker-cls"]
    assert result.status == "failed", result.message
    assert "'NoneType' object has no attribute 'model'" in result.message
