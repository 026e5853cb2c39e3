"""The `VLLM_*` environment variables, parsed exactly as vLLM 0.32 parses them.

Like vLLM's `vllm.envs`, every read goes through the module `__getattr__`, so a value is
re-read from `os.environ` on each access until `enable_envs_cache()` freezes it. Under the
0.34 contract (`reference._version`) `VLLM_USE_V2_MODEL_RUNNER` is gone and
`removed_environment_variables` lists variables whose use is a hard error.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any


def _plugins() -> list[str] | None:
    # Unset means "load all"; otherwise the raw value split on "," with no stripping and
    # no removal of empty items: "" gives [""], "a, b" gives ["a", " b"].
    value = os.environ.get("VLLM_PLUGINS")
    return None if value is None else value.split(",")


def _optional_bool(name: str) -> bool | None:
    value = os.environ.get(name)
    return None if value is None else bool(int(value))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true")


environment_variables: dict[str, Callable[[], Any]] = {
    "VLLM_PLUGINS": _plugins,
    "VLLM_TARGET_DEVICE": lambda: os.getenv("VLLM_TARGET_DEVICE", "cuda").lower(),
    "VLLM_LOGGING_LEVEL": lambda: os.getenv("VLLM_LOGGING_LEVEL", "INFO").upper(),
    "VLLM_CONFIGURE_LOGGING": lambda: bool(int(os.getenv("VLLM_CONFIGURE_LOGGING", "1"))),
    "VLLM_LOGGING_CONFIG_PATH": lambda: os.getenv("VLLM_LOGGING_CONFIG_PATH"),
    "VLLM_LORA_RESOLVER_CACHE_DIR": lambda: os.getenv("VLLM_LORA_RESOLVER_CACHE_DIR", None),
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING": lambda: _flag("VLLM_ALLOW_RUNTIME_LORA_UPDATING"),
    "VLLM_USE_V2_MODEL_RUNNER": lambda: _optional_bool("VLLM_USE_V2_MODEL_RUNNER"),
    "VLLM_TPU_USING_PATHWAYS": lambda: "proxy" in os.getenv("JAX_PLATFORMS", "").lower(),
}


#: Variables of the table above that a contract release removed → that release.
REMOVED_IN: dict[str, str] = {"VLLM_USE_V2_MODEL_RUNNER": "0.34.0"}

#: From 0.34: variables whose use `Platform.validate_environ` turns into
#: `ValueError(f"{name} has been removed. {hint}")` (vLLM 0.34 lists only this one; the hint
#: is the reference's own wording).
_REMOVED_ENVIRONMENT_VARIABLES_034: dict[str, str] = {
    "VLLM_MARLIN_INPUT_DTYPE": "The Marlin kernels no longer read it; unset it.",
}


def _present(name: str) -> bool:
    """Whether `name` belongs to `vllm.envs` under the modelled contract."""
    from reference._version import contract_at_least

    removed_in = REMOVED_IN.get(name)
    return removed_in is None or not contract_at_least(removed_in)


def known_variables() -> list[str]:
    """The variables `vllm.envs` defines under the modelled contract."""
    return [name for name in environment_variables if _present(name)]


def __getattr__(name: str) -> Any:
    if name in environment_variables and _present(name):
        return environment_variables[name]()
    if name == "removed_environment_variables":
        from reference._version import contract_at_least

        if contract_at_least("0.34.0"):
            return dict(_REMOVED_ENVIRONMENT_VARIABLES_034)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return known_variables()


def is_set(name: str) -> bool:
    """Whether the variable `name` is present in the environment."""
    if name not in known_variables():
        raise ValueError(f"Unknown vLLM environment variable {name!r}")
    return name in os.environ


def enable_envs_cache() -> None:
    """Freeze every variable at its current value, as vLLM's engine core and workers do."""
    global __getattr__
    __getattr__ = functools.cache(__getattr__)


def disable_envs_cache() -> None:
    """Undo `enable_envs_cache()` (vLLM has no such call; tests need it)."""
    global __getattr__
    wrapped = getattr(__getattr__, "__wrapped__", None)
    if wrapped is not None:
        __getattr__ = wrapped
