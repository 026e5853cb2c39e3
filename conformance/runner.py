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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from conformance.context import CheckContext, Session, reference_contract_for
from conformance.framework import (
    CATALOG,
    CapabilitySkip,
    Check,
    CheckFailed,
    HarnessError,
    Inconclusive,
    RunAgain,
    load_catalog,
)
from conformance.measure import Measurement, engine_scope, plugin_scope
from conformance.preflight import DISTRIBUTION_OF, VLLM_REQUIREMENTS, missing_requirements
from conformance.probes.data import ExceptionInfo
from conformance.target import EntryPointInfo, Target

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: `blocked`: a prerequisite (`requires`) did not pass, so the check could not judge anything.
#: `error`: the suite itself failed (its own code raised): nobody's verdict.
#: `inconclusive`: the check could not judge the plugin *here* (the engine lacks a `vllm.*`
#: module or name the plugin imports, a dependency it declares is not installed, ...): the
#: message names the cause and the command that would judge it.
#: `skipped`: not applicable — the rule does not apply to this plugin here.
STATUSES = (
    "passed",
    "failed",
    "error",
    "blocked",
    "inconclusive",
    "skipped",
    "xfailed",
    "xpassed",
)
#: Exit codes, the same from the CLI and from pytest on the same run.
EXIT_CERTIFIED, EXIT_NOT_CERTIFIED, EXIT_USAGE, EXIT_INCOMPLETE, EXIT_SUITE_FAILED = 0, 1, 2, 3, 4
VERDICT_EXIT = {
    "certified": EXIT_CERTIFIED,
    "not-certified": EXIT_NOT_CERTIFIED,
    "incomplete": EXIT_INCOMPLETE,
    "suite-failed": EXIT_SUITE_FAILED,
}
SUITE_FAILED = (
    "the suite itself failed (an exception in vllm-plugin-conformance's own code); this says "
    "nothing about the plugin. Please report it with the traceback below."
)


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
    #: Whose fault a non-passing outcome is: `plugin` (failed), `harness` (error), `engine`
    #: (an engine check failed); None when it passed or was skipped.
    owner: str | None = None
    requires: list[str] = field(default_factory=list)
    #: For `blocked`: the check whose failure (the root cause) blocked this one.
    blocked_by: str | None = None
    #: For a target-level failure: the entry points it concerns (empty: the whole target).
    entry_points: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @property
    def item_id(self) -> str:
        return f"{self.id}[{self.entry_point}]" if self.entry_point else self.id


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
    # Prerequisites before their dependents (by depth), so that a root cause is reported
    # before what it blocks; by id within a depth.
    return sorted(planned, key=lambda p: (depth(p.check.id, catalog), p.item_id))


def depth(check_id: str, catalog: Mapping[str, Check]) -> int:
    """0 for a check that requires nothing, else one more than its deepest prerequisite."""
    requires = catalog[check_id].requires if check_id in catalog else ()
    known = [r for r in requires if r in catalog]
    return 1 + max(depth(r, catalog) for r in known) if known else 0


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
    hints = [
        f" (did you mean {close[0]!r}?)" if (close := did_you_mean(p, catalog)) else ""
        for p in unknown
    ]
    return (
        f"no check matches {', '.join(repr(p) + h for p, h in zip(unknown, hints, strict=True))}; "
        "`vllm-conformance checks` lists the ids (patterns like 'logits.*' work)."
    )


def did_you_mean(word: str, catalog: Mapping[str, Check]) -> list[str]:
    """The catalog ids closest to a mistyped `word` (at most one)."""
    import difflib

    return difflib.get_close_matches(word, list(catalog), n=1, cutoff=0.6)


def _with_fix(check: Check, message: str) -> str:
    return f"[{check.id}] {message.rstrip()}\nRule: {check.title}.\nFix: {check.fix}"


def _prerequisite_item(item: Planned, required: Check) -> Planned:
    """The item of `required` that `item` depends on: the same entry point when both judge
    entry points of one group, else the target as a whole."""
    ep = item.entry_point
    if required.per_entry_point and ep is not None and required.entry_point_group == ep.group:
        return Planned(required, ep)
    return Planned(required, None)


def _blocker(session: Session, item: Planned) -> CheckResult | None:
    """The first prerequisite of `item` that did not pass (computing it if needed): one that
    failed, errored or was blocked blocks `item`; one that was inconclusive makes it
    inconclusive too (it cannot judge what its prerequisite could not)."""
    # The item's check came from the loaded catalog, whose prerequisites `load_catalog` has
    # validated: read it as it is rather than import, sort and validate it again per check.
    for required_id in item.check.requires:
        required = CATALOG[required_id]
        if not required.applies_to_contract(session.contract):
            continue  # a rule this engine's contract does not have cannot block anything
        result = outcome(session, _prerequisite_item(item, required))
        if result.status not in ("failed", "error", "blocked", "inconclusive"):
            continue
        concerns = result.entry_points
        if item.entry_point is not None and concerns and item.entry_point.key not in concerns:
            continue
        return result
    return None


def _run_check(check: Check, ctx: CheckContext) -> str:
    """Run the check's function, a second time if its first engine run failed in code that is
    not the plugin's (`RunAgain`); what a pass needs said ("" for a plain pass)."""
    try:
        check.func(ctx)
        return ""
    except RunAgain as first:
        ctx.run_again()
        check.func(ctx)
        return (
            "passed on its second attempt; the first engine run failed in code that is not "
            f"the plugin's, and is not held against it: {first}"
        )


def outcome(session: Session, item: Planned) -> CheckResult:
    """Run one planned check once per session and classify its outcome (before expected
    failures): prerequisites first, then the check, whose exception decides the status."""
    if item.item_id in session.outcomes:
        return session.outcomes[item.item_id]
    check = item.check
    started = time.perf_counter()
    owner = blocked_by = None
    concerns: tuple[str, ...] = ()
    blocker = _blocker(session, item)
    if blocker is not None and blocker.status == "inconclusive":
        status = "inconclusive"
        blocked_by = blocker.blocked_by or blocker.id
        message = f"inconclusive: it needs {blocked_by}, which could not judge the plugin here"
    elif blocker is not None:
        status = "blocked"
        blocked_by = blocker.blocked_by or blocker.id
        owner = blocker.owner
        message = f"blocked by {blocked_by}: it did not pass, so this check could not judge"
    else:
        try:
            ctx = CheckContext(session, check, item.entry_point)
            status, message = "passed", _run_check(check, ctx)
        except CheckFailed as exc:
            status, message = "failed", _with_fix(check, str(exc))
            owner = "engine" if check.group == "engine" else "plugin"
            concerns = exc.entry_points
            cause = inconclusive_cause(exc.exception, session)
            if cause is not None:
                status, owner, concerns = "inconclusive", None, ()
                message = f"inconclusive: {cause}"
        except CapabilitySkip as exc:
            status, message = "skipped", f"capability skip: {exc}"
        except Inconclusive as exc:
            status, message = "inconclusive", f"inconclusive: {exc}"
        except HarnessError as exc:
            status, owner = "error", "harness"
            message = f"[{check.id}] {SUITE_FAILED}\n{str(exc).rstrip()}"
        except Exception:
            status, owner = "error", "harness"
            message = f"[{check.id}] {SUITE_FAILED}\n{traceback.format_exc().rstrip()}"
    result = CheckResult(
        id=check.id,
        group=check.group,
        entry_point=item.entry_point.key if item.entry_point else None,
        level=check.level,
        status=status,
        message=message,
        duration_s=round(time.perf_counter() - started, 4),
        owner=owner,
        requires=list(check.requires),
        blocked_by=blocked_by,
        entry_points=list(concerns),
    )
    session.outcomes[item.item_id] = result
    return result


def run_planned(
    session: Session, item: Planned, expected_failures: Mapping[str, str] | None = None
) -> CheckResult:
    """Run one planned check (see `outcome`) and apply the expected failures."""
    result = replace(outcome(session, item))
    reason = _expected_reason(item, expected_failures or {})
    if reason is not None:
        if result.status in ("failed", "error", "blocked"):
            result.status = "xfailed"
            result.message = f"expected failure ({reason}): {result.message}"
        elif result.status == "passed":
            result.status = "xpassed"
            result.message = (
                f"[{item.check.id}] listed as an expected failure ({reason}) but passed"
            )
    return result


def _declared(target: Target) -> set[str]:
    """Import names the plugin may rightly expect: its declared requirements, and torch."""
    declared = {"torch"}
    for raw in target.requires:
        try:
            declared.add(canonicalize_name(Requirement(raw).name).replace("-", "_"))
        except InvalidRequirement:
            continue
    return declared


def certify_command(target: Target, *options: str) -> str:
    """The command that certifies `target` with `options`, as the user would type it."""
    spec = str(target.project_dir) if target.source == "project" and target.project_dir else None
    return " ".join(["vllm-conformance certify", spec or target.name, *options])


def on_real_vllm(target: Target) -> str:
    """The commands that judge `target` on real vLLM, for a message (one wording everywhere).
    A managed environment (`--vllm`) can only take a project directory or a bundled fixture,
    so an installed distribution is pointed at an environment with vLLM installed. The
    release offered is the one the reference judges the target by (`reference_contract_for`)."""
    engine = f"`{certify_command(target, '--engine vllm')}` where vLLM is installed"
    if target.project_dir is None:
        return engine
    managed = certify_command(target, "--vllm", reference_contract_for(target))
    return f"`{managed}` (a managed environment) or {engine}"


def inconclusive_cause(exception: ExceptionInfo | None, session: Session) -> str | None:
    """Why a failure says nothing about the plugin here, with the command that would judge it:
    the engine under test lacks a `vllm.*` module or name the plugin imports (the reference
    answers only its surface), or a dependency the plugin declares (or torch) is not installed.
    None: the failure is the plugin's."""
    if exception is None:
        return None
    target = session.target
    missing = exception.missing_module or ""
    on_reference = session.engine == "reference"
    if (
        on_reference
        and missing.startswith("vllm.")
        and absent_from_release(missing, None, session.contract)
    ):
        return None  # vLLM at the contract lacks it too: the plugin's import is broken there
    if on_reference and (missing == "vllm" or missing.startswith("vllm.")):
        return (
            f"the plugin imports {missing}, which the embedded reference engine does not "
            "provide (it answers vLLM's plugin surface only); judge it on real vLLM: "
            f"{on_real_vllm(target)}"
        )
    module, _, attribute = (exception.missing_name or "").partition(":")
    if on_reference and (
        module in ("vllm", "reference") or module.startswith(("vllm.", "reference."))
    ):
        # The mounted reference's modules carry their own names, and ImportError names the
        # module by its own name: find the vLLM paths it answers.
        present = [
            p
            for p in vllm_paths_of(module)
            if not absent_from_release(p, attribute, session.contract)
        ]
        if not present:
            return None  # vLLM at the contract lacks the name too: the plugin's failure
        return (
            f"the plugin imports {attribute} from {present[0]}, which the embedded reference "
            f"engine does not provide; judge it on real vLLM: {on_real_vllm(target)}"
        )
    top = missing.partition(".")[0]
    if top and top.lower() in _declared(target) and importlib.util.find_spec(top) is None:
        install = "vllm-plugin-conformance[engine]" if top == "torch" else top
        return (
            f"the plugin needs {top}, which is not installed here; install it "
            f"(`pip install {install}`) and run `{certify_command(target)}` again"
        )
    if top and _vllm_brings(top) and importlib.util.find_spec(top) is None:
        # vLLM installs it (one of its own requirements), so a plugin may rely on it; here it
        # is absent (beside the reference, or in a vLLM installed without its dependencies).
        judge = f" or judge it on real vLLM: {on_real_vllm(target)}" if on_reference else ""
        return (
            f"the plugin needs {top}, which vLLM installs with itself but which is not installed "
            f"here; install it (`pip install {DISTRIBUTION_OF.get(top, top)}`){judge}"
        )
    provider = _absent_provider(target, top) if top else None
    if provider and importlib.util.find_spec(top) is None:
        return (
            f"the plugin imports {top}, which no installed distribution provides; it declares "
            f"{provider}, which is not installed here and by its name provides {top}; install "
            f"it (`pip install '{provider}'`) and run `{certify_command(target)}` again"
        )
    named = _named_absent_requirement(target, exception)
    if named:
        # Libraries that probe for optional backends say so in words, not ModuleNotFoundError
        # ("You need to have sentencepiece or tiktoken installed").
        return (
            f"the failure names {named}, which the plugin declares but which is not installed "
            f"here; install it (`pip install '{named}'`) and run `{certify_command(target)}` again"
        )
    return None


def vllm_paths_of(module: str) -> list[str]:
    """The `vllm.*` paths a module of the mounted reference answers (`reference/surface.py`'s
    table: `reference.hf_config_registry` answers `vllm.transformers_utils.config`); a `vllm.*`
    path itself; a reference module outside the table as the same path under `vllm`."""
    if not module.startswith("reference"):
        return [module]
    from reference.surface import SURFACE

    paths = [path for path, answer in SURFACE.items() if answer == module]
    return paths or ["vllm" + module[len("reference") :]]


def _named_absent_requirement(target: Target, exception: ExceptionInfo) -> str | None:
    """A declared requirement, not installed here, that the exception's message (or a cause's)
    names as a whole word."""
    text = " ".join([exception.message, *exception.causes]).lower()
    for requirement in missing_requirements(target):
        name = canonicalize_name(Requirement(requirement).name)
        spellings = {name, name.replace("-", "_")}
        if any(re.search(rf"(?<![\w.-]){re.escape(s)}(?![\w-])", text) for s in spellings):
            return requirement
    return None


def _absent_provider(target: Target, module: str) -> str | None:
    """A declared requirement, not installed here, whose name says it provides `module`
    (`raif-format` for `raif`): the import name of a distribution is unknown until it is
    installed, so its name's words are all there is to go on."""
    wanted = module.lower().replace("_", "-")
    for requirement in missing_requirements(target):
        name = canonicalize_name(Requirement(requirement).name)
        if f"-{wanted}-" in f"-{name}-":  # whole words of the name: raif in raif-format
            return requirement
    return None


def absent_from_release(module: str, name: str | None, release: str) -> bool:
    """Whether vLLM `release` lacks `module` (or `name` in it), by the API index: then the
    reference lacking it too is no gap of the reference, and the import fails on vLLM alike.
    False where the index cannot say (no index, a release it does not hold)."""
    from conformance.checks.drift import api_index
    from conformance.drift.index import IndexFileError

    try:
        index = api_index()
    except (IndexFileError, OSError, ValueError):
        return False
    if release not in index.releases:
        return False
    return not index.import_mask(module, name) & (1 << index.releases.index(release))


def _vllm_brings(module: str) -> bool:
    """Whether `module` (a top-level import name) is provided by one of vLLM's requirements."""
    return canonicalize_name(DISTRIBUTION_OF.get(module, module)) in VLLM_REQUIREMENTS


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
    measurement: Measurement | None = None,
    timeout: float | None = None,
) -> list[CheckResult]:
    """Certify an engine: run every `engine.*` check against it with the bundled scenarios
    (with a `measurement`, the probes measure the engine's plugin-contract code; `timeout`:
    seconds one probe may run, the session's default if None)."""
    session = Session(engine_target(engine), engine, engine_patch=engine_patch)
    if timeout is not None:
        session.timeout = timeout
    if measurement is not None:
        session.coverage = measurement.start(engine_scope(engine))
    results = []
    for item in selected(plan_engine(session.contract), only, exclude):
        result = run_planned(session, item)
        results.append(result)
        if on_result is not None:
            on_result(result)
    if measurement is not None:
        measurement.collect()
    return results


def run_checks(
    target: Target,
    engine: str = "reference",
    expected_failures: Mapping[str, str] | None = None,
    on_result: Callable[[CheckResult], None] | None = None,
    timeout: float | None = None,
    only: Sequence[str] = (),
    exclude: Sequence[str] = (),
    contract: str | None = None,
    measurement: Measurement | None = None,
) -> list[CheckResult]:
    """Run every applicable check on `target` (those `only`/`exclude` select, see
    `selected`) by the rules of `contract` (default: the engine's own) and return the results
    in plan order. With a `measurement`, the probes measure the plugin's own lines (coverage
    never changes an outcome)."""
    session = Session(target, engine, contract_version=contract)
    if timeout is not None:
        session.timeout = timeout
    results = []
    with target:
        if measurement is not None:
            session.coverage = measurement.start(plugin_scope(target))
        items = selected(plan(target, session.contract), only, exclude)
        try:
            prefetch_engine_runs(session, items)
            for item in items:
                result = run_planned(session, item, expected_failures)
                results.append(result)
                if on_result is not None:
                    on_result(result)
        finally:
            session.close()  # an engine run started ahead for a check that never ran
        if measurement is not None:
            measurement.collect()  # while the overlay, and so the measured files, still exist
    return results


#: At most this many engine runs start ahead of their checks: each is a process beside the
#: run's own probes (two cores: one more keeps both busy) and holds a model stack in memory.
PREFETCHED_ENGINE_RUNS = 1


def prefetch_engine_runs(session: Session, items: Sequence[Planned]) -> None:
    """Start the first engine runs that `items` declare (`Check.engine_run`) now, beside the
    checks before them (`Session.prefetch`): an engine run costs about a bare engine start,
    and most of a certification's other probes then fit inside it."""
    for item in [i for i in items if i.check.engine_run is not None][:PREFETCHED_ENGINE_RUNS]:
        CheckContext(session, item.check, item.entry_point).prefetch_engine_run()


def verdict(results: Iterable[CheckResult], strict: bool = False) -> str:
    """`suite-failed` if any check errored (the suite's own failure: no verdict on the plugin
    can be trusted); else `not-certified` if a required check failed, was blocked, or is an
    expected failure (xfailed or xpassed); else `incomplete` if a required check was
    inconclusive (it could not judge the plugin here); else `certified`. With `strict`,
    recommended checks count as required."""
    results = list(results)
    if any(r.status == "error" for r in results):
        return "suite-failed"
    counted = [r for r in results if strict or r.level == "required"]
    if any(r.status in ("failed", "blocked", "xfailed", "xpassed") for r in counted):
        return "not-certified"
    if any(r.status == "inconclusive" for r in counted):
        return "incomplete"
    return "certified"


def exit_code(results: Iterable[CheckResult], strict: bool = False) -> int:
    """The exit code of a run with these results (`VERDICT_EXIT` of its verdict)."""
    return VERDICT_EXIT[verdict(results, strict)]


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
