"""Where logits-processor classes come from, for both interfaces' loaders: the
`vllm.logits_processors` entry points (never filtered by `VLLM_PLUGINS`) and `module:Qualname`
strings; and how a processor's `validate_params` failure reaches the caller.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from reference.logits.errors import VLLMValidationError
from reference.plugins import LOGITSPROCS_GROUP, discover_entry_points

if TYPE_CHECKING:
    from reference.sampling_params import SamplingParams

#: What callers name custom processors with: classes or `module:Qualname` strings.
CustomLogitsProcs = Sequence["str | type"]


def load_entry_point_classes(log: Any) -> list[tuple[str, Any]]:
    """Load every `vllm.logits_processors` entry point; any failure aborts startup."""
    entry_points = discover_entry_points(LOGITSPROCS_GROUP)
    if not entry_points:
        log.debug("No logitsprocs plugins installed (group %s).", LOGITSPROCS_GROUP)
        return []
    log.debug("Loading installed logitsprocs plugins (group %s):", LOGITSPROCS_GROUP)
    loaded = []
    for entrypoint in entry_points:
        try:
            log.debug(
                "- Loading logitproc plugin entrypoint=%s target=%s",
                entrypoint.name,
                entrypoint.value,
            )
            loaded.append((entrypoint.name, entrypoint.load()))
        except Exception as e:
            log.error("Failed to load LogitsProcessor plugin %s: %s", entrypoint, e)
            raise RuntimeError(f"Failed to load LogitsProcessor plugin {entrypoint}") from e
    return loaded


def import_fqcn(ldx: int, fqcn: str, log: Any) -> Any:
    """Resolve `module:Qualname`; the dotted `module.Qualname` form is not accepted."""
    if not isinstance(fqcn, str):
        raise TypeError(
            f"Logits processor #{ldx} is {fqcn!r}; expected a LogitsProcessor subclass or a "
            "'<module>:<type>' string."
        )
    log.debug("- Loading logits processor %s", fqcn)
    parts = fqcn.split(":")
    if len(parts) != 2:
        raise ValueError(
            f"Invalid logits processor FQCN {fqcn!r}. Expected format: '<module>:<type>'"
        )
    module_path, qualname = parts
    try:
        module = importlib.import_module(module_path)
    except Exception as e:
        log.error("Failed to load %sth LogitsProcessor plugin %s: %s", ldx, fqcn, e)
        raise RuntimeError(f"Failed to load {ldx}th LogitsProcessor plugin {fqcn}") from e
    obj: Any = module
    for attr in qualname.split("."):
        obj = getattr(obj, attr)
    if not isinstance(obj, type):
        raise ValueError("Loaded logit processor must be a type.")
    return obj


def run_validate_params(cls: type, sampling_params: SamplingParams) -> None:
    """Call `cls.validate_params`; a plain ValueError becomes a VLLMValidationError (HTTP 400)."""
    try:
        cls.validate_params(sampling_params)
    except VLLMValidationError:
        raise
    except ValueError as e:
        raise VLLMValidationError(str(e)) from e
