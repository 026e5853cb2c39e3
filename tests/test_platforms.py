"""Platform resolution in probes: built-in detection, out-of-tree plugins, every rule of §4.2."""

from __future__ import annotations

import pytest

from conformance.probe import run_probe
from reference.platforms.cuda import cuda_device_count
from tests.conftest import GENERAL, PLATFORM, add_plugin, code

BUILTIN = (
    "reference.platforms.cuda.CudaPlatform"
    if cuda_device_count() > 0
    else "reference.platforms.cpu.CpuPlatform"
)

RESOLVE = code(
    """
    import sys
    from vllm.platforms import current_platform
    probe.result["class"] = f"{type(current_platform).__module__}.{type(current_platform).__qualname__}"
    probe.result["device_name"] = current_platform.device_name
    probe.result["get_device_name"] = current_platform.get_device_name()
    probe.result["imported"] = sorted(m for m in sys.modules if m.startswith("plat_"))
    """
)


def platform_plugin(overlay, name, body, dist=None):
    """A platform plugin `name` whose module `plat_<name>` has `body` and a `Platform` class."""
    module = f"plat_{name}"
    source = (
        "from vllm.platforms.interface import Platform, PlatformEnum\n"
        f"class P(Platform):\n    _enum = PlatformEnum.OOT\n    device_name = {name!r}\n"
        "    device_type = 'cpu'\n"
        "CALLS = []\n"
        f"def detect():\n    CALLS.append(1)\n{body}\n"
    )
    return add_plugin(
        overlay, dist or f"plat-{name}", {PLATFORM: {name: f"{module}:detect"}}, **{module: source}
    )


ACTIVE = "    return __name__ + '.P'"


def test_no_platform_plugin_gives_the_builtin_platform():
    result = run_probe(RESOLVE)
    assert result.ok, result.describe()
    assert result.values["class"] == BUILTIN


def test_the_dummy_platform_fixture_wins(overlay):
    overlay.add_fixture("vllm_add_dummy_platform")
    result = run_probe(RESOLVE, overlay=overlay)
    assert result.ok, result.describe()
    assert result.values["class"] == "vllm_add_dummy_platform.dummy_platform.DummyPlatform"
    # vLLM 0.32 makes an out-of-tree platform's device_name its process groups' torch device,
    # so a CPU-backed one says 'cpu' there and its own name in get_device_name().
    assert result.values["device_name"] == "cpu"
    assert result.values["get_device_name"] == "DummyDevice"
    assert "Platform plugin dummy_platform_plugin is activated" in [
        r["message"] for r in result.records_at("INFO")
    ]


@pytest.mark.parametrize(
    "body", ["    return None", "    raise RuntimeError('no device here')"], ids=["none", "raises"]
)
def test_an_inactive_or_raising_platform_plugin_leaves_the_builtin(overlay, body):
    platform_plugin(overlay, "quiet", body)
    result = run_probe(RESOLVE, overlay=overlay)
    assert result.ok, result.describe()
    assert result.values["class"] == BUILTIN


@pytest.mark.parametrize(
    ("contract", "level"), [("0.32.0", "DEBUG"), ("0.33.0", "WARNING"), ("0.34.0", "WARNING")]
)
def test_an_oot_detection_exception_is_logged_with_its_traceback(overlay, contract, level):
    # At DEBUG up to 0.32; from 0.33 an out-of-tree detector's exception is a WARNING.
    platform_plugin(overlay, "quiet", "    raise RuntimeError('no device here')")
    result = run_probe(RESOLVE, overlay=overlay, contract=contract)
    [record] = [r for r in result.records if "failed during detection" in r["message"]]
    assert record["level"] == level
    assert record["message"] == "Platform plugin quiet failed during detection."
    assert "no device here" in record["exc"]


#: Makes the built-in TPU detector raise, once the engine is mounted.
RAISING_BUILTIN = """
import vllm.platforms as platforms

def tpu_platform_plugin():
    raise RuntimeError("no TPU runtime")

platforms.builtin_platform_plugins["tpu"] = tpu_platform_plugin
"""


@pytest.mark.parametrize("contract", ["0.32.0", "0.34.0"])
def test_a_builtin_detection_exception_stays_at_debug(contract):
    result = run_probe(RESOLVE, patch=RAISING_BUILTIN, contract=contract)
    assert result.ok, result.describe()
    [record] = [r for r in result.records if "failed during detection" in r["message"]]
    assert (record["level"], record["message"]) == (
        "DEBUG",
        "Platform plugin tpu failed during detection.",
    )


def test_two_active_platform_plugins_raise_naming_both(tmp_path):
    from conformance.overlay import Overlay

    first = platform_plugin(Overlay(tmp_path / "one"), "alpha", ACTIVE)
    second = platform_plugin(Overlay(tmp_path / "two"), "beta", ACTIVE)
    result = run_probe(RESOLVE, overlay=[first, second])
    assert result.status == "raised"
    assert result.exception.type == "RuntimeError"
    assert result.exception.message == (
        "Only one platform plugin can be activated, but got: ['alpha', 'beta']"
    )


def test_target_device_cpu_short_circuits_without_importing_plugins(overlay):
    platform_plugin(overlay, "eager", ACTIVE)
    result = run_probe(RESOLVE, overlay=overlay, env={"VLLM_TARGET_DEVICE": "cpu"})
    assert result.ok, result.describe()
    assert result.values["class"] == "reference.platforms.cpu.CpuPlatform"
    assert result.values["imported"] == [], "platform plugins must not even be imported"


def test_vllm_plugins_without_the_platform_plugin_gives_the_builtin(overlay):
    platform_plugin(overlay, "eager", ACTIVE)
    add_plugin(
        overlay, "general-only", {GENERAL: {"other": "other_mod:f"}}, other_mod="def f(): pass\n"
    )
    result = run_probe(RESOLVE, overlay=overlay, env={"VLLM_PLUGINS": "other"})
    assert result.ok, result.describe()
    assert result.values["class"] == BUILTIN
    assert result.values["imported"] == []


def test_importing_vllm_platforms_does_not_resolve_the_platform(overlay):
    platform_plugin(overlay, "eager", ACTIVE)
    result = run_probe(
        code(
            """
            import sys
            import vllm.platforms
            from vllm.platforms import Platform, PlatformEnum
            probe.result["resolved"] = vllm.platforms._current_platform is not None
            probe.result["imported"] = "plat_eager" in sys.modules
            """
        ),
        overlay=overlay,
    )
    assert result.values == {"resolved": False, "imported": False}


def test_an_active_plugin_is_called_twice_and_resolution_happens_once(overlay):
    platform_plugin(overlay, "eager", ACTIVE)
    result = run_probe(
        code(
            """
            import sys
            import vllm.platforms as platforms
            first = platforms.current_platform
            second = platforms.current_platform
            probe.result["same"] = first is second
            probe.result["calls"] = len(sys.modules["plat_eager"].CALLS)
            probe.result["trace"] = bool(platforms._init_trace)
            """
        ),
        overlay=overlay,
    )
    assert result.values == {"same": True, "calls": 2, "trace": True}


def test_a_plugin_named_like_a_builtin_that_flips_gives_a_clear_error(overlay):
    # Active during detection, None when called again: the name collides with "cpu".
    platform_plugin(overlay, "cpu", "    return None if len(CALLS) > 1 else __name__ + '.P'")
    result = run_probe(RESOLVE, overlay=overlay)
    assert result.status == "raised"
    assert "returned None when called again" in result.exception.message


def test_unknown_module_attribute_raises_attribute_error():
    result = run_probe(
        "import vllm.platforms as p\ntry:\n    p.nope\nexcept AttributeError as e:\n"
        "    probe.result['msg'] = str(e)\n"
    )
    assert result.values["msg"] == "No attribute named 'nope' exists in vllm.platforms."
