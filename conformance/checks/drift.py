"""Drift checks: the plugin's vLLM imports and overrides against the vLLM API index.

They read the plugin's source and the shipped index only: no plugin code runs, no probe starts,
and neither torch nor an engine is needed. `vllm-conformance drift DIST` shows the same
findings as a release x import table.
"""

from __future__ import annotations

import functools
from importlib import metadata

from conformance.checks.packaging import _vllm_requirements
from conformance.context import VLLM_DISTRIBUTIONS, CheckContext
from conformance.drift.analysis import (
    DriftReport,
    ImportFinding,
    admitted_releases,
    analyse,
    describe_releases,
)
from conformance.drift.index import ApiIndex
from conformance.drift.scan import scan_target
from conformance.framework import check, fail, inconclusive, skip


@functools.lru_cache(maxsize=1)
def api_index() -> ApiIndex:
    """The shipped index, read once per process."""
    return ApiIndex.load()


def _report(ctx: CheckContext) -> DriftReport:
    """The plugin's scan against every indexed release (milliseconds: no caching needed)."""
    scan = scan_target(ctx.target)
    if not scan.files:
        skip(f"no Python source of {ctx.target.name} was found to read")
    return analyse(scan, api_index())


def _engine_version(ctx: CheckContext) -> str:
    """The vLLM version being certified, found without starting a probe."""
    if ctx.engine == "reference":
        return ctx.session.contract
    for name in VLLM_DISTRIBUTIONS:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    inconclusive(f"the {ctx.engine} engine's vLLM is not installed here, so its version is unknown")


def _release(ctx: CheckContext) -> str:
    """The indexed release that stands for the engine: the newest at or below its version."""
    index = api_index()
    version = _engine_version(ctx)
    release = index.release_for(version)
    if release is None:
        skip(f"vLLM {version} is older than the oldest indexed release, {index.releases[0]}")
    return release


def _where_present(findings: list[ImportFinding], report: DriftReport) -> list[str]:
    """One line per import: what it is, where the plugin has it, which releases have it."""
    return [
        f"{f.label} ({f.where}): exists in "
        + (describe_releases(f.present_in, report.releases) or "no indexed release")
        for f in findings
    ]


@check(
    "drift.imports-exist",
    title="every vllm module and name the plugin imports exists in the release under test",
    fix="Import each name from where this release defines it (`vllm-conformance drift DIST` "
    "shows the releases of every import), or guard the import with try/except ImportError.",
)
def check_imports_exist(ctx: CheckContext) -> None:
    """A plugin that imports a vLLM module or name the release does not have fails with
    ImportError when vLLM loads it: the commonest breakage across vLLM releases. Imports under
    `if TYPE_CHECKING:` or guarded by `except ImportError` cannot raise and are not judged."""
    report, release = _report(ctx), _release(ctx)
    missing = [f for f in report.imports if f.runtime and release in f.missing_in]
    if missing:
        lines = _where_present(missing, report)
        version = _engine_version(ctx)
        mapped = "" if version.startswith(release) else f" (judged as {release}, the nearest)"
        fail(
            f"{ctx.target.name} imports what vLLM {version}{mapped} does not have:\n  "
            + "\n  ".join(lines)
        )


@check(
    "drift.declared-range",
    level="recommended",
    title="every release the declared vllm requirement admits has all the plugin's imports",
    fix="Narrow the vllm requirement to the releases that have every import (for example add "
    "an upper bound such as `<0.34`), or guard the import with try/except ImportError.",
)
def check_declared_range(ctx: CheckContext) -> None:
    """A requirement such as `vllm>=0.30` promises users that the plugin works on every later
    release; an import that a release in that range lacks breaks that promise at install time,
    before anyone runs the plugin. Imports missing in the release under test are left to
    drift.imports-exist, so one root cause fails one check."""
    requirements = _vllm_requirements(ctx)
    if not requirements:
        skip("the distribution declares no vllm requirement")
    report = _report(ctx)
    admitted = admitted_releases(api_index(), requirements)
    declared = ", ".join(str(r) for r in requirements)
    if not admitted:
        skip(f"{declared} admits no indexed release ({describe_releases(report.releases)})")
    under_test = _release(ctx)
    lines = []
    for finding in report.imports:
        broken = [r for r in admitted if r in finding.missing_in]
        if finding.runtime and broken and under_test not in finding.missing_in:
            lines.append(
                f"{finding.label} ({finding.where}): first breaks in {broken[0]} "
                f"(missing in {describe_releases(broken, report.releases)})"
            )
    if lines:
        fail(
            f"{ctx.target.name} declares {declared}, which admits "
            f"{describe_releases(admitted, report.releases)}; these imports break on some of "
            "them:\n  " + "\n  ".join(lines)
        )


@check(
    "drift.override-signatures",
    title="each method that overrides a vLLM method accepts the parameters vLLM passes it",
    fix="Give the override the base method's parameters (same names and kinds), or take "
    "*args/**kwargs and pass them on to super().",
)
def check_override_signatures(ctx: CheckContext) -> None:
    """vLLM calls an overridden method (a platform hook, a worker method, a layer's forward)
    with the base class's parameters of its release. An override that lacks one, takes it in
    another kind, or requires one vLLM does not pass raises TypeError when vLLM calls it, often
    long after start-up. Constructors are left out: subclasses may narrow them."""
    report, release = _report(ctx), _release(ctx)
    lines = [f.describe(release) for f in report.overrides if release in f.problems]
    if lines:
        fail(
            f"{ctx.target.name} overrides vLLM {release} methods with signatures that do not "
            "fit:\n  " + "\n  ".join(lines)
        )


@check(
    "drift.private-names",
    level="recommended",
    title="the plugin imports no private (underscore) vLLM modules or names",
    fix="Use vLLM's public API; where there is none, guard the import and pin the vllm "
    "requirement to the releases listed, and ask upstream for a public name.",
)
def check_private_names(ctx: CheckContext) -> None:
    """Underscore modules and names are vLLM's internals: they move, change or vanish in any
    release without notice, so a plugin that imports them breaks without warning. Typing-only
    imports are not counted."""
    report = _report(ctx)
    private = [f for f in report.imports if f.private and not f.typing_only]
    if private:
        lines = _where_present(private, report)
        fail(f"{ctx.target.name} imports private vLLM names:\n  " + "\n  ".join(lines))
