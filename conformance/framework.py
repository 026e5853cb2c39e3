"""The check framework: `@check`, `fail`, `skip` and the catalog they fill.

A check is registered with `@check(...)`; its id (`group.what`) is stable API that appears in
reports and expected-failure files. Checks run plugin code only inside probes, through the
`CheckContext` they receive (`ctx.observe(probe_function, ...)` returns a typed observation),
and end by returning (passed), `fail(...)` or `skip(...)`. A check that needs another one to
have passed first declares it with `requires=(...)`: when that one fails, the dependent is
`blocked` instead of failing again.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from conformance.probes.data import ExceptionInfo

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
    "endpoint": "vllm.endpoint_plugins",
    "engine": None,
    "drift": None,
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
    "endpoint",
    "engine",
    "drift",
)

#: A check function: it receives a `conformance.context.CheckContext` (not imported here, so
#: that the framework does not depend on the context that depends on it).
CheckFunc = Callable[[Any], None]


class CheckFailed(Exception):
    """The plugin breaks the check's rule; the message says what was observed.

    `entry_points` narrows a target-level failure to the entry points it concerns: checks of
    other entry points that require this one are not blocked by it.
    """

    def __init__(
        self,
        message: str,
        entry_points: tuple[str, ...] = (),
        exception: ExceptionInfo | None = None,
    ) -> None:
        super().__init__(message)
        self.entry_points = entry_points
        #: The exception caught in a probe that this failure reports, if any: the runner reads
        #: it (a dependency the plugin declares but this environment lacks is no failure).
        self.exception = exception


class CapabilitySkip(Exception):
    """The check does not apply: the plugin does not claim the capability it examines."""


class Inconclusive(Exception):
    """The check cannot judge the plugin here (torch or the model stack is absent, the engine's
    version is unknown): the message says why and what would let it judge."""


class RunAgain(Exception):
    """The check's engine run failed in code that is not the plugin's: the runner runs the
    check once more with fresh probes (`CheckContext.run_again`) before anything is blamed on
    the plugin, since an engine can fail on its own now and then (a worker that dies in a
    native kernel). The message says how the first attempt failed."""


class HarnessError(Exception):
    """The suite itself failed (its own code raised, or it could not set up the engine): the
    check's status is `error`, never `failed`, and no plugin author is told to fix anything."""

    def __init__(self, message: str, exception: ExceptionInfo | None = None) -> None:
        super().__init__(message)
        self.exception = exception


def fail(message: str, *, entry_points: tuple[str, ...] = ()) -> NoReturn:
    """End the running check as failed; the catalog appends the check's fix hint."""
    __tracebackhide__ = True
    raise CheckFailed(message, entry_points)


def fail_on(exception: ExceptionInfo, message: str, after: str = "") -> NoReturn:
    """Fail because of `exception`, caught in a probe — unless the harness's own code raised
    it, which is the suite's failure (`HarnessError`), not the plugin's. `after` follows the
    exception's traceback in the message."""
    __tracebackhide__ = True
    text = f"{message.rstrip()}\n{exception.render()}{after}"
    if exception.owner == "harness":
        raise HarnessError(text, exception)
    raise CheckFailed(text, exception=exception)


def inconclusive(reason: str) -> NoReturn:
    """End the running check as inconclusive: it could not judge the plugin in this
    environment (never a pass: a certification run with one is `incomplete`)."""
    __tracebackhide__ = True
    raise Inconclusive(reason)


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
    #: Checks that must pass (for the same entry point, or the whole target) before this one
    #: can judge anything; if one did not, this check is `blocked` by it.
    requires: tuple[str, ...] = ()
    #: For a check whose verdict rests on one engine run: the probe it runs, given the check's
    #: context (a `conformance.context.EngineRun`), so that a run of checks can start it
    #: ahead (`conformance.context.Session.prefetch`).
    engine_run: Callable[[Any], Any] | None = None

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
    requires: tuple[str, ...] = (),
    engine_run: Callable[[Any], Any] | None = None,
) -> Callable[[CheckFunc], CheckFunc]:
    """Register the decorated function as the check `id` (`<group>.<what>`); see `Check` for
    the rest."""
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
        CATALOG[id] = Check(
            id, group, level, title, fix, doc, func, since, until, requires, engine_run
        )
        return func

    return register


def load_catalog() -> dict[str, Check]:
    """Import every check module and return the catalog sorted by id.

    Raises ValueError if a check requires an id that is not in the catalog, or if
    prerequisites form a cycle.
    """
    for module in MODULES:
        importlib.import_module(f"conformance.checks.{module}")
    for c in CATALOG.values():
        unknown = [r for r in c.requires if r not in CATALOG]
        if unknown:
            raise ValueError(f"Check {c.id!r} requires unknown check(s) {unknown}.")
        if c.id in prerequisites(c.id):
            raise ValueError(f"Check {c.id!r} requires itself through {prerequisites(c.id)}.")
    return dict(sorted(CATALOG.items()))


def prerequisites(check_id: str) -> list[str]:
    """Every check `check_id` requires, directly or through others, nearest first."""
    seen: list[str] = []
    queue = list(CATALOG[check_id].requires) if check_id in CATALOG else []
    while queue:
        current = queue.pop(0)
        if current in seen:
            continue
        seen.append(current)
        queue.extend(CATALOG[current].requires if current in CATALOG else ())
    return seen
