"""Small helpers that vLLM exposes under `vllm.utils` and plugins rely on."""

from __future__ import annotations

import importlib
from typing import Any


def resolve_obj_by_qualname(qualname: str) -> Any:
    """Import `pkg.module.Name` (the dotted form, not `module:Name`) and return `Name`."""
    if not isinstance(qualname, str) or "." not in qualname:
        raise ValueError(
            f"Expected a dotted qualified name such as 'pkg.module.Class', got {qualname!r}."
        )
    module_name, obj_name = qualname.rsplit(".", 1)
    module = importlib.import_module(module_name)
    return getattr(module, obj_name)
