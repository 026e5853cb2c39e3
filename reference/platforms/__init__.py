"""Platform resolution: built-in detectors, out-of-tree platform plugins and `current_platform`.

`current_platform` is resolved lazily, on first attribute access, once per process; importing
this package never resolves it, so plugins can import `Platform` while resolution is pending.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from itertools import chain
from typing import TYPE_CHECKING, Any

from reference import envs
from reference.logger import init_logger
from reference.platforms.interface import CpuArchEnum, Platform, PlatformEnum

if TYPE_CHECKING:
    current_platform: Platform

logger = init_logger("vllm.platforms")

CPU_PLATFORM = "reference.platforms.cpu.CpuPlatform"
CUDA_PLATFORM = "reference.platforms.cuda.CudaPlatform"
UNSPECIFIED_PLATFORM = "reference.platforms.interface.UnspecifiedPlatform"


def tpu_platform_plugin() -> str | None:
    """The reference has no TPU back-end; the name is kept so collisions are detectable."""
    return None


def rocm_platform_plugin() -> str | None:
    """The reference has no ROCm back-end."""
    return None


def xpu_platform_plugin() -> str | None:
    """The reference has no XPU back-end."""
    return None


def cuda_platform_plugin() -> str | None:
    from reference.platforms.cuda import cuda_device_count

    return CUDA_PLATFORM if cuda_device_count() > 0 else None


def cpu_platform_plugin() -> str | None:
    # vLLM's detector is active for CPU builds; the reference is one build for both, so it
    # acts as a CPU build wherever no CUDA device is found (see docs/deviations.md).
    if envs.VLLM_TARGET_DEVICE == "cpu" or sys.platform.startswith("darwin"):
        return CPU_PLATFORM
    return CPU_PLATFORM if cuda_platform_plugin() is None else None


builtin_platform_plugins: dict[str, Callable[[], str | None]] = {
    "tpu": tpu_platform_plugin,
    "cuda": cuda_platform_plugin,
    "rocm": rocm_platform_plugin,
    "xpu": xpu_platform_plugin,
    "cpu": cpu_platform_plugin,
}


def _only_one_error(names: list[str]) -> RuntimeError:
    return RuntimeError(f"Only one platform plugin can be activated, but got: {names}")


def _detector_failed_log(name: str) -> Callable[..., None]:
    """How a detector's exception is logged: at DEBUG up to 0.32; from 0.33 an out-of-tree
    detector's is a WARNING (with its traceback), a built-in one's stays at DEBUG."""
    from reference._version import contract_at_least

    if name in builtin_platform_plugins or not contract_at_least("0.33.0"):
        return logger.debug
    return logger.warning


def resolve_current_platform_cls_qualname() -> str:
    """Decide which platform class this process runs on (vLLM 0.32, contract §4.2; from 0.33
    an out-of-tree detector's exception is logged at WARNING)."""
    if envs.VLLM_TARGET_DEVICE == "cpu":
        # Out-of-tree platform plugins are not even discovered in this case.
        qualname = cpu_platform_plugin()
        assert qualname is not None
        return qualname

    from reference.plugins import PLATFORM_PLUGINS_GROUP, load_plugins_by_group

    platform_plugins = load_plugins_by_group(PLATFORM_PLUGINS_GROUP)
    activated: list[str] = []
    for name, func in chain(builtin_platform_plugins.items(), platform_plugins.items()):
        assert callable(func), f"Platform plugin {name!r} is not callable: {func!r}"
        try:
            if func() is not None:
                activated.append(name)
        except Exception:
            _detector_failed_log(name)(
                "Platform plugin %s failed during detection.", name, exc_info=True
            )

    # vLLM intersects sets here (so its error lists come in arbitrary order); the reference
    # keeps detection order so that messages are reproducible.
    activated = list(dict.fromkeys(activated))
    activated_builtin = [name for name in activated if name in builtin_platform_plugins]
    activated_oot = [name for name in activated if name in platform_plugins]

    if len(activated_oot) >= 2:
        raise _only_one_error(activated_oot)
    if len(activated_oot) == 1:
        name = activated_oot[0]
        # The winning plugin's function is called a second time to fetch the name.
        qualname = platform_plugins[name]()
        if qualname is None:
            raise RuntimeError(
                f"Platform plugin {name!r} was active during detection but returned None "
                "when called again. A platform plugin must give the same answer on every "
                "call, and its name must not collide with a built-in platform "
                f"({sorted(builtin_platform_plugins)})."
            )
        logger.info("Platform plugin %s is activated", name)
        return qualname
    if len(activated_builtin) >= 2:
        raise _only_one_error(activated_builtin)
    if len(activated_builtin) == 1:
        name = activated_builtin[0]
        qualname = builtin_platform_plugins[name]()
        assert qualname is not None
        logger.debug("Automatically detected platform %s.", name)
        return qualname
    logger.debug("No platform detected, vLLM is running on UnspecifiedPlatform")
    return UNSPECIFIED_PLATFORM


_current_platform: Platform | None = None
_init_trace: str = ""


def __getattr__(name: str) -> Any:
    if name == "current_platform":
        global _current_platform, _init_trace
        if _current_platform is None:
            from reference.utils import resolve_obj_by_qualname

            platform_cls = resolve_obj_by_qualname(resolve_current_platform_cls_qualname())
            _current_platform = platform_cls()
            _init_trace = "".join(traceback.format_stack())
        return _current_platform
    if name in globals():
        return globals()[name]
    raise AttributeError(f"No attribute named '{name}' exists in vllm.platforms.")


__all__ = [
    "CpuArchEnum",
    "Platform",
    "PlatformEnum",
    "_init_trace",
    "current_platform",
    "resolve_current_platform_cls_qualname",
]
