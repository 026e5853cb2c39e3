"""Which indexed vLLM releases a plugin's imports and overrides hold on.

The plugin's scan is compared with the index release by release: an import breaks where its
module or name is absent, an override breaks where the vLLM method it overrides takes
parameters it does not accept (or it requires one vLLM does not pass). Typing-only and guarded
imports are listed but break nothing, since they cannot raise when the plugin runs.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from packaging.requirements import Requirement

from conformance.drift.index import ApiIndex, release_version
from conformance.drift.scan import ClassDef, ImportRef, MethodDef, PluginScan
from conformance.drift.signatures import Signature, incompatibilities

#: Constructors are left out: a subclass may rightly narrow them, and vLLM builds plugin
#: objects through the entry points' own checks, which call them for real.
CONSTRUCTORS = {"__init__", "__new__", "__init_subclass__", "__post_init__"}


@dataclass
class ImportFinding:
    """One distinct vllm module or name the plugin imports, and where it exists."""

    module: str
    name: str | None
    refs: list[ImportRef]
    present_in: list[str]
    missing_in: list[str]

    @property
    def runtime(self) -> bool:
        return any(r.runtime for r in self.refs)

    @property
    def typing_only(self) -> bool:
        return all(r.typing_only for r in self.refs)

    @property
    def private(self) -> bool:
        return self.refs[0].private

    @property
    def label(self) -> str:
        return self.module if self.name is None else f"{self.module}.{self.name}"

    @property
    def where(self) -> str:
        return ", ".join(r.where for r in self.refs)

    def to_json(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "name": self.name,
            "missing_in": self.missing_in,
            "runtime": self.runtime,
            "typing_only": self.typing_only,
            "guarded": not self.runtime and not self.typing_only,
            "private": self.private,
            "where": [r.where for r in self.refs],
        }


@dataclass
class OverrideFinding:
    """A plugin method overriding a vLLM method, and the releases where it no longer fits."""

    cls: ClassDef
    method: MethodDef
    #: release → (the vLLM class whose method it overrides there, that method's signature)
    owners: dict[str, tuple[str, Signature]] = field(default_factory=dict)
    #: release → why the override does not fit there
    problems: dict[str, list[str]] = field(default_factory=dict)

    @property
    def base(self) -> str:
        """The overridden class of the newest release where the method overrides one."""
        return list(self.owners.values())[-1][0]

    @property
    def overrides_in(self) -> list[str]:
        return list(self.owners)

    @property
    def incompatible_in(self) -> list[str]:
        return list(self.problems)

    @property
    def where(self) -> str:
        return f"{self.cls.file}:{self.method.line}"

    def describe(self, release: str) -> str:
        """`pkg.Cls.m (file:line) overrides vllm.B.m(self, x): lacks `x`` for `release`."""
        owner, signature = self.owners[release]
        name = self.method.name
        return (
            f"{self.cls.qualname}.{name} ({self.where}) overrides {owner}.{name}{signature}: "
            + "; ".join(self.problems.get(release, []))
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "class": self.cls.qualname,
            "method": self.method.name,
            "base": self.base,
            "incompatible_in": self.incompatible_in,
            "overrides_in": self.overrides_in,
            "problems": self.problems,
            "where": self.where,
        }


@dataclass
class DriftReport:
    releases: list[str]
    imports: list[ImportFinding]
    overrides: list[OverrideFinding]

    @property
    def holds_on(self) -> list[str]:
        """Releases where no import that runs is missing and every override fits."""
        broken = {r for f in self.imports if f.runtime for r in f.missing_in}
        broken |= {r for f in self.overrides for r in f.incompatible_in}
        return [r for r in self.releases if r not in broken]

    def to_json(self) -> dict[str, Any]:
        return {
            "releases": self.releases,
            "imports": [f.to_json() for f in self.imports],
            "overrides": [f.to_json() for f in self.overrides],
            "holds_on": self.holds_on,
        }


def analyse(scan: PluginScan, index: ApiIndex, releases: list[str] | None = None) -> DriftReport:
    """Compare `scan` with `index` on `releases` (all indexed releases by default)."""
    releases = list(index.releases) if releases is None else releases
    wanted = index.mask_of(releases)
    grouped: dict[tuple[str, str | None], list[ImportRef]] = defaultdict(list)
    for ref in scan.imports:
        grouped[(ref.module, ref.name)].append(ref)
    imports = []
    for (module, name), refs in sorted(grouped.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        present = index.import_mask(module, name) & wanted
        imports.append(
            ImportFinding(
                module, name, refs, index.releases_in(present), index.releases_in(wanted & ~present)
            )
        )
    overrides = [
        finding
        for cls in scan.subclasses()
        for method in cls.methods
        if method.name not in CONSTRUCTORS
        for finding in [_override(scan, index, cls, method, releases)]
        if finding is not None
    ]
    return DriftReport(releases, imports, overrides)


def _override(
    scan: PluginScan, index: ApiIndex, cls: ClassDef, method: MethodDef, releases: list[str]
) -> OverrideFinding | None:
    finding = OverrideFinding(cls, method)
    for release in releases:
        owner = _overridden(scan, index, cls, method.name, release)
        if owner is None:
            continue
        finding.owners[release] = owner
        problems = incompatibilities(owner[1], method.signature)
        if problems:
            finding.problems[release] = problems
    return finding if finding.owners else None


def _overridden(
    scan: PluginScan, index: ApiIndex, cls: ClassDef, name: str, release: str
) -> tuple[str, Signature] | None:
    """The vLLM class and signature that method `name` of `cls` overrides in `release`."""
    for base in scan.vllm_bases(cls):
        found = index.method(base, name, release)
        if found is not None:
            return found
    return None


def describe_releases(subset: list[str], releases: list[str] | None = None) -> str:
    """`subset` as runs of consecutive `releases`: "0.20.0-0.29.0, 0.31.0"."""
    order = releases if releases is not None else subset
    wanted = set(subset)
    runs: list[list[str]] = []
    previous_in = False
    for release in order:
        if release in wanted:
            if previous_in:
                runs[-1].append(release)
            else:
                runs.append([release])
        previous_in = release in wanted
    return ", ".join(run[0] if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)


def admitted_releases(index: ApiIndex, requirements: list[Requirement]) -> list[str]:
    """Indexed releases that satisfy every one of the plugin's vllm `requirements`."""
    return [
        release
        for release in index.releases
        if all(r.specifier.contains(release_version(release), True) for r in requirements)
    ]
