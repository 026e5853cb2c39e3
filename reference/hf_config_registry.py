"""`vllm.transformers_utils.config`'s registry of Hugging Face config classes by `model_type`,
into which model plugins put the config class of an architecture transformers lacks.

vLLM 0.32 consults it when it reads a checkpoint's `config.json` (`get_config`): a registered
`model_type` is parsed with the registered class, which is also registered with
`transformers.AutoConfig`. The reference keeps the registry (a plugin's registration and its
look-ups behave as on vLLM) but reads `config.json` itself, without consulting it; it ships
none of vLLM's own entries.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["_CONFIG_REGISTRY", "LazyConfigDict"]


class LazyConfigDict(dict):
    """A dict of config classes whose values may also be class *names*, looked up in
    `vllm.transformers_utils.configs` when read (how vLLM lists its own entries without
    importing them)."""

    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key)
        if isinstance(value, type):
            return value
        return getattr(importlib.import_module("vllm.transformers_utils.configs"), value)


#: `model_type` → config class (or its name in `vllm.transformers_utils.configs`).
_CONFIG_REGISTRY: dict[str, Any] = LazyConfigDict()
