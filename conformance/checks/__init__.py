"""The check catalog: every conformance check as a small function with metadata.

A check is registered with `@check(...)`; its id (`group.what`) is stable API that appears in
reports and expected-failure files. Checks run plugin code only inside probes, through the
`CheckContext` they receive, and end by returning (passed), `fail(...)` or `skip(...)`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from conformance.context import CheckContext

LEVELS = ("required", "recommended")
#: check group → the entry-point group whose entry points it examines (None: the whole target)
GROUPS: dict[str, str | None] = {
    "package": None,
    "general": "vllm.general_plugins",
    "lora_resolver": "vllm.general_plugins",
    "platform": "vllm.platform_plugins",
    "stat_logger": "vllm.stat_logger_plugins",
    "io_processor": "vllm.io_processor_plugins",
    "logits": "vllm.logits_processors",
    "engine": None,
}
#: modules of this package, one per check group
MODULES = (
    "packaging",
    "general",
    "lora_resolver",
    "platform",
    "stat_logger",
    "io_processor",
    "logits",
    "engine",
)

CheckFunc = Callable[["CheckContext"], None]


class CheckFailed(Exception):
    """The plugin breaks the check's rule; the message says what was observed."""


class CapabilitySkip(Exception):
    """The check does not apply: the plugin does not claim the capability it examines."""


def fail(message: str) -> NoReturn:
    """End the running check as failed; the catalog appends the check's fix hint."""
    __tracebackhide__ = True
    raise CheckFailed(message)


def skip(reason: str) -> NoReturn:
    """End the running check as a capability skip with `reason` (shown in reports)."""
    __tracebackhide__ = True
    raise CapabilitySkip(reason)


@dataclass(frozen=True)
class Check:
    id: str
    group: str
    level: str
    title: str
    fix: str
    doc: str
    func: CheckFunc
    since: str | None = None
    until: str | None = None

    @property
    def entry_point_group(self) -> str | None:
        return GROUPS[self.group]

    @property
    def per_entry_point(self) -> bool:
        return self.entry_point_group is not None

    def applies_to_contract(self, contract: str) -> bool:
        """Whether an engine implementing `contract` (e.g. "0.32.0") is judged by this check."""
        version = _version_tuple(contract)
        if self.since is not None and version < _version_tuple(self.since):
            return False
        return not (self.until is not None and version >= _version_tuple(self.until))


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


CATALOG: dict[str, Check] = {}


def check(
    id: str,
    *,
    title: str,
    fix: str,
    level: str = "required",
    since: str | None = None,
    until: str | None = None,
) -> Callable[[CheckFunc], CheckFunc]:
    """Register the decorated function as the check `id` (`<group>.<what>`)."""
    group = id.split(".", 1)[0]
    if group not in GROUPS:
        raise ValueError(f"Check {id!r}: unknown group {group!r}; known: {', '.join(GROUPS)}.")
    if level not in LEVELS:
        raise ValueError(f"Check {id!r}: level must be one of {LEVELS}, not {level!r}.")

    def register(func: CheckFunc) -> CheckFunc:
        if id in CATALOG and CATALOG[id].func is not func:
            raise ValueError(f"Duplicate check id {id!r}.")
        doc = " ".join((func.__doc__ or "").split())
        if not doc:
            raise ValueError(f"Check {id!r} needs a docstring that explains its rule.")
        CATALOG[id] = Check(id, group, level, title, fix, doc, func, since, until)
        return func

    return register


def load_catalog() -> dict[str, Check]:
    """Import every check module and return the catalog sorted by id."""
    for module in MODULES:
        importlib.import_module(f"conformance.checks.{module}")
    return dict(sorted(CATALOG.items()))
