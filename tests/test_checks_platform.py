"""The `platform.*` checks: each mutant trips its check, good plugins pass or skip them."""

from __future__ import annotations

import textwrap

import pytest

from conformance.checks import load_catalog
from conformance.checks import platform as checks
from conformance.overlay import Overlay
from conformance.runner import CheckResult
from conformance.target import EntryPointInfo, Target, resolve_target
from tests.conftest import assert_mutant_fails, run_check_group

GROUP = "platform"
PLATFORM = "vllm.platform_plugins"
MUTANTS = [
    "platform.loadable",
    "platform.returns-qualname-or-none",
    "platform.deterministic",
    "platform.name-not-builtin",
    "platform.class-valid",
    "platform.worker-cls",
    "platform.attn-backend",
    "platform.communicator",
    "platform.resolves",
    "platform.no-side-effects",
]
#: What the failure message must show, beyond the fix hint.
OBSERVED = {
    "platform.loadable": "cannot import name '_Backend'",
    "platform.returns-qualname-or-none": "the entry-point 'module:Class' form",
    "platform.deterministic": "call 2: None",
    "platform.name-not-builtin": "named 'cpu'",
    "platform.class-valid": "`device_type` is not set",
    "platform.worker-cls": "parallel_config.worker_cls is 'auto'",
    "platform.attn-backend": "the pre-v0.15 positional form",
    "platform.communicator": "No module named 'mutant_platform_communicator.communicator'",
    "platform.resolves": "partially initialized module 'mutant_platform_resolves'",
    "platform.no-side-effects": "os.environ['DUMMY_DEVICE_LOG_LEVEL'] was set",
}
#: Mutants that break more than their own rule, and which other checks they fail (why).
ALSO_FAILS = {
    # Nothing can be examined when the entry point does not load.
    "platform.loadable": set(MUTANTS) - {"platform.loadable", "platform.name-not-builtin"},
    # A 'module:Class' answer names no class, so the class checks have nothing to examine.
    "platform.returns-qualname-or-none": {
        "platform.class-valid",
        "platform.worker-cls",
        "platform.attn-backend",
        "platform.communicator",
        "platform.resolves",
    },
    # The plugin answers None by the time vLLM resolves the platform, so it does not win.
    "platform.deterministic": {"platform.resolves"},
}
CLASS_CHECKS = [
    "platform.class-valid",
    "platform.worker-cls",
    "platform.attn-backend",
    "platform.communicator",
    "platform.resolves",
]


#: Checks that run a real engine: tested (mutant and good fixtures) in test_checks_engine_run.py,
#: and left out of this file's runs, which stay fast.
ENGINE_RUN = ["platform.worker-runs"]


def run_group(target: Target) -> dict[str, CheckResult]:
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
    assert ids == sorted(MUTANTS + ENGINE_RUN), "each platform check needs a mutant named after it"


@pytest.mark.parametrize("check_id", MUTANTS)
def test_the_mutant_fails_its_check_with_the_fix_and_breaks_nothing_unexpected(check_id):
    results = run_group(resolve_target(check_id))
    assert_mutant_fails(results, check_id, OBSERVED[check_id], ALSO_FAILS.get(check_id, set()))


def test_the_dummy_platform_fixture_passes_every_platform_check():
    # It activates unconditionally (being installed is the opt-in), so nothing is skipped.
    results = run_group(resolve_target("vllm_add_dummy_platform"))
    assert set(results) == set(MUTANTS)
    for check_id, result in results.items():
        assert result.status == "passed", f"{check_id}: {result.message}"


def test_an_inactive_plugin_skips_its_class_checks_and_passes_the_rest():
    results = run_group(inline_platform("quiet_npu", "return None"))
    for check_id in CLASS_CHECKS:
        assert results[check_id].status == "skipped"
        assert results[check_id].message == f"capability skip: {checks.INACTIVE}"
    others = set(MUTANTS) - set(CLASS_CHECKS)
    assert {results[k].status for k in others} == {"passed"}


def test_a_subclass_of_a_builtin_platform_may_keep_its_identity():
    target = inline_platform("host_plat", "return 'host_plat.platform.HostPlatform'", GOOD_CLASS)
    results = run_group(target)
    assert {k: r.status for k, r in results.items()} == dict.fromkeys(MUTANTS, "passed")


def test_a_raising_detection_function_fails_the_return_check_and_skips_the_class_checks():
    results = run_group(inline_platform("raising_npu", "raise RuntimeError('no npu driver')"))
    message = results["platform.returns-qualname-or-none"].message
    assert results["platform.returns-qualname-or-none"].status == "failed"
    assert "RuntimeError: no npu driver" in message and "Return None instead" in message
    assert results["platform.class-valid"].status == "skipped"


def test_returning_the_class_object_is_explained():
    body = "from host_obj.platform import HostPlatform\nreturn HostPlatform"
    results = run_group(inline_platform("host_obj", body, GOOD_CLASS))
    result = results["platform.returns-qualname-or-none"]
    assert result.status == "failed"
    assert "returned the class" in result.message and "__qualname__" in result.message


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
        ({"kind": "none", "repr": "None"}, None),
        ({"kind": "str", "value": "pkg.mod.Cls", "repr": "'pkg.mod.Cls'"}, None),
        ({"kind": "str", "value": "pkg.mod:Cls", "repr": ""}, "write 'pkg.mod.Cls'"),
        ({"kind": "str", "value": "", "repr": "''"}, "empty string"),
        ({"kind": "str", "value": "Cls", "repr": "'Cls'"}, "not a dotted"),
        ({"kind": "str", "value": "pkg.mod.Cls ", "repr": ""}, "not a dotted"),
        (
            {"kind": "other", "type": "type", "repr": "<class 'p.C'>", "is_class": True},
            "returned the class",
        ),
        ({"kind": "other", "type": "tuple", "repr": "('a', 'b')", "is_class": False}, "tuple"),
        ({"kind": "raised", "repr": "OSError: x", "exception": True}, "swallows the exception"),
        ({"kind": "raised", "repr": "SystemExit: 1", "exception": False}, "process stops"),
    ],
)
def test_qualname_problem_explains_each_wrong_answer(answer, expected):
    problem = checks.qualname_problem(answer)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem


def test_answer_keys_tell_a_raise_from_a_returned_string():
    raised = {"kind": "raised", "repr": "ValueError: x"}
    returned = {"kind": "str", "value": "ValueError: x", "repr": "'ValueError: x'"}
    assert checks.answer_key(raised) != checks.answer_key(returned)


def _snapshot(environ=None, sys_path=None, vllm_level="DEBUG"):
    return {
        "environ": environ or {"HOME": "/root"},
        "sys_path": sys_path or ["/a"],
        "logging": {"logging.disable": 0, "vllm": {"level": vllm_level, "handlers": []}},
    }


def test_side_effects_lists_each_change_without_quoting_existing_values():
    before = _snapshot({"HOME": "/root", "TOKEN": "secret"}, ["/a", "/b"])
    after = _snapshot({"HOME": "/elsewhere", "NEW": "1"}, ["/b", "/a", "/c"], "WARNING")
    changes = checks.side_effects(before, after)
    assert "os.environ['NEW'] was set to '1'" in changes
    assert "os.environ['TOKEN'] was removed" in changes
    assert "os.environ['HOME'] was changed" in changes
    assert "sys.path gained '/c'" in changes
    assert "the vllm logger's level changed from DEBUG to WARNING" in changes
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
        ({"enum": "OOT", "repr": "", "inherited_from": []}, None),
        ({"enum": "CPU", "repr": "", "inherited_from": ["vllm.platforms.cpu.CpuPlatform"]}, None),
        ({"enum": "CUDA", "repr": "", "inherited_from": []}, "PlatformEnum.OOT"),
        ({"enum": "UNSPECIFIED", "repr": "", "inherited_from": ["x.Base"]}, "PlatformEnum.OOT"),
        ({"repr": "'oot'", "type": "str"}, "not a PlatformEnum member"),
        ({"missing": True}, "not set"),
    ],
)
def test_enum_problem(info, expected):
    problem = checks.enum_problem(info)
    assert problem is None if expected is None else expected in problem


def test_text_problem():
    assert checks.text_problem("device_type", {"value": "npu", "repr": "'npu'"}) is None
    assert "empty" in checks.text_problem("device_type", {"value": "", "repr": "''"})
    assert "not a str" in checks.text_problem("device_name", {"repr": "None", "type": "NoneType"})
    assert "not set" in checks.text_problem("device_name", {"missing": True})


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
