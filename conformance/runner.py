"""Run the catalog on a target: plan which checks apply, run them, and classify outcomes.

The CLI calls `run_checks` directly; the pytest plugin runs the same planned items one by
one through `run_planned`, so both fronts judge a plugin identically.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from conformance.checks import CapabilitySkip, Check, CheckFailed, load_catalog
from conformance.context import CheckContext, Session
from conformance.target import EntryPointInfo, Target

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STATUSES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")


@dataclass(frozen=True)
class Planned:
    """One check applied to one entry point (or to the whole target)."""

    check: Check
    entry_point: EntryPointInfo | None

    @property
    def item_id(self) -> str:
        """Stable, sorted, junit-safe id: `check.id[group:name]` or just `check.id`."""
        return f"{self.check.id}[{self.entry_point.key}]" if self.entry_point else self.check.id


@dataclass
class CheckResult:
    id: str
    group: str
    entry_point: str | None
    level: str
    status: str
    message: str
    duration_s: float

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def plan(
    target: Target, contract: str, catalog: Mapping[str, Check] | None = None
) -> list[Planned]:
    """Every (check, entry point) pair that judges `target` on an engine of `contract`."""
    catalog = load_catalog() if catalog is None else catalog
    planned: list[Planned] = []
    for check in catalog.values():
        if check.group == "engine" or not check.applies_to_contract(contract):
            continue
        if check.per_entry_point:
            for ep in target.entry_points_of(check.entry_point_group or ""):
                planned.append(Planned(check, ep))
        else:
            planned.append(Planned(check, None))
    return sorted(planned, key=lambda p: p.item_id)


def selected(
    items: list[Planned], only: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[Planned]:
    """The items whose check id matches one of `only` (all if empty) and none of `exclude`
    (shell-style patterns such as `logits.*` or `*.engine-run`)."""

    def matches(item: Planned, patterns: Sequence[str]) -> bool:
        return any(fnmatch.fnmatchcase(item.check.id, p) for p in patterns)

    return [i for i in items if (not only or matches(i, only)) and not matches(i, exclude)]


def check_patterns_problem(patterns: Sequence[str], catalog: Mapping[str, Check]) -> str | None:
    """A message naming the patterns that match no check in `catalog`, or None."""
    unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(c, p) for c in catalog)]
    if not unknown:
        return None
    return (
        f"no check matches {', '.join(repr(p) for p in unknown)}; "
        "`vllm-conformance checks` lists the ids (patterns like 'logits.*' work)."
    )


def _with_fix(check: Check, message: str) -> str:
    return f"[{check.id}] {message.rstrip()}\nRule: {check.title}.\nFix: {check.fix}"


def run_planned(
    session: Session, item: Planned, expected_failures: Mapping[str, str] | None = None
) -> CheckResult:
    """Run one planned check and classify its outcome (expected failures applied)."""
    check = item.check
    started = time.perf_counter()
    try:
        check.func(CheckContext(session, check, item.entry_point))
        status, message = "passed", ""
    except CheckFailed as exc:
        status, message = "failed", _with_fix(check, str(exc))
    except CapabilitySkip as exc:
        status, message = "skipped", f"capability skip: {exc}"
    except Exception:
        status = "error"
        message = f"[{check.id}] the check itself crashed:\n{traceback.format_exc()}"
    missing = (
        _missing_dependency(message, session.target) if status in ("failed", "error") else None
    )
    if missing is not None:
        status = "skipped"
        message = (
            f"capability skip: the plugin needs {missing}, which is not installed here (install "
            "the plugin's dependencies, or vllm-plugin-conformance[engine] for torch, to run "
            "this check)"
        )
    reason = _expected_reason(item, expected_failures or {})
    if reason is not None:
        if status in ("failed", "error"):
            status, message = "xfailed", f"expected failure ({reason}): {message}"
        elif status == "passed":
            status, message = "xpassed", f"listed as an expected failure ({reason}) but passed"
    return CheckResult(
        id=check.id,
        group=check.group,
        entry_point=item.entry_point.key if item.entry_point else None,
        level=check.level,
        status=status,
        message=message,
        duration_s=round(time.perf_counter() - started, 4),
    )


_NO_MODULE = re.compile(r"No module named '([A-Za-z0-9_]+)")


def _missing_dependency(message: str, target: Target) -> str | None:
    """The module whose absence alone caused a failure, if the plugin may rightly expect it.

    torch (vLLM's own dependency) and the plugin's declared requirements count; an import of
    anything else that fails is the plugin's fault. Overlays do not install dependencies.
    """
    declared = {"torch"}
    for raw in target.requires:
        name = re.split(r"[\s;<>=!~\[(]", raw.strip(), maxsplit=1)[0]
        declared.add(name.lower().replace("-", "_"))
    for module in _NO_MODULE.findall(message):
        if module.lower() in declared and importlib.util.find_spec(module) is None:
            return module
    return None


def _expected_reason(item: Planned, expected: Mapping[str, str]) -> str | None:
    return expected.get(item.item_id, expected.get(item.check.id))


def engine_target(engine: str) -> Target:
    """The subject of an engine run: no distribution, no entry points of its own."""
    return Target(f"{engine} engine", None, "engine", ())


def plan_engine(contract: str, catalog: Mapping[str, Check] | None = None) -> list[Planned]:
    """The engine checks that apply to an engine implementing `contract`."""
    catalog = load_catalog() if catalog is None else catalog
    return [
        Planned(c, None)
        for c in catalog.values()
        if c.group == "engine" and c.applies_to_contract(contract)
    ]


def run_engine_checks(
    engine: str = "reference",
    engine_patch: str = "",
    on_result: Callable[[CheckResult], None] | None = None,
    only: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> list[CheckResult]:
    """Certify an engine: run every `engine.*` check against it with the bundled scenarios."""
    session = Session(engine_target(engine), engine, engine_patch=engine_patch)
    results = []
    for item in selected(plan_engine(session.contract), only, exclude):
        result = run_planned(session, item)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def run_checks(
    target: Target,
    engine: str = "reference",
    expected_failures: Mapping[str, str] | None = None,
    on_result: Callable[[CheckResult], None] | None = None,
    timeout: float | None = None,
    only: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> list[CheckResult]:
    """Run every applicable check on `target` (those `only`/`exclude` select, see
    `selected`) and return the results in plan order."""
    session = Session(target, engine)
    if timeout is not None:
        session.timeout = timeout
    results = []
    with target:
        for item in selected(plan(target, session.contract), only, exclude):
            result = run_planned(session, item, expected_failures)
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results


def verdict(results: Iterable[CheckResult], strict: bool = False) -> str:
    """`certified` unless a required check failed, errored, or is an expected failure.

    With `strict`, recommended checks count as required.
    """
    for r in results:
        counts = strict or r.level == "required"
        if counts and r.status in ("failed", "error", "xfailed", "xpassed"):
            return "not-certified"
    return "certified"


def read_expected_failures(path: str | Path | None) -> dict[str, str]:
    """Read `"check.id" = "reason"` (or `"check.id[group:name]"`) from a TOML or JSON file.

    Raises ValueError naming the file and the problem; every entry needs a non-empty reason.
    """
    if not path:
        return {}
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
        data = json.loads(text) if file.suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {file}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file} must hold a table of check id -> reason.")
    bad = sorted(k for k, v in data.items() if not isinstance(v, str) or not v.strip())
    if bad:
        raise ValueError(f"{file}: every entry needs a reason string; fix {bad}.")
    return dict(data)
