"""The distribution under test: where it comes from, its entry points, version and requirements.

A target is named by the user (`--plugin-under-test=DIST`, `certify DIST`) and resolved, in
order, as a project directory path, an installed distribution, or a bundled fixture or mutant.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from conformance.overlay import (
    Overlay,
    OverlayError,
    fixture_names,
    fixtures_root,
    normalize_dist_name,
    read_project,
)


class TargetError(ValueError):
    """The named distribution cannot be found or read: a usage error (exit code 2)."""


@dataclass(frozen=True, order=True)
class EntryPointInfo:
    group: str
    name: str
    value: str

    @property
    def key(self) -> str:
        """`group:name`, the form used in check ids and reports."""
        return f"{self.group}:{self.name}"

    def to_json(self) -> dict[str, str]:
        return {"group": self.group, "name": self.name, "value": self.value}


@dataclass
class Target:
    name: str
    version: str | None
    source: str  # "installed" | "fixture" | "mutant" | "project"
    entry_points: tuple[EntryPointInfo, ...]
    requires: tuple[str, ...] = ()
    project_dir: Path | None = None
    _overlay: Overlay | None = field(default=None, repr=False)

    @property
    def vllm_entry_points(self) -> tuple[EntryPointInfo, ...]:
        return tuple(ep for ep in self.entry_points if ep.group.startswith("vllm."))

    def entry_points_of(self, group: str) -> tuple[EntryPointInfo, ...]:
        return tuple(ep for ep in self.entry_points if ep.group == group)

    def stage(self) -> None:
        """Build the overlay that makes a not-installed target visible to probes."""
        if self.project_dir is not None and self._overlay is None:
            self._overlay = Overlay().add_project(self.project_dir)

    def overlay_root(self) -> Path | None:
        """The directory of the overlay that makes this target visible, if it has one."""
        self.stage()
        return None if self._overlay is None else Path(self._overlay.root)

    def cleanup(self) -> None:
        if self._overlay is not None:
            self._overlay.cleanup()
            self._overlay = None

    def probe_settings(self) -> dict[str, object]:
        """Keyword arguments for `run_probe` that make exactly this target visible."""
        self.stage()
        if self._overlay is not None:
            return {"overlay": self._overlay}
        return {"visible": [self.name], "plugin_roots": installed_roots(self.name)}

    def __enter__(self) -> Target:
        self.stage()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def installed_roots(name: str) -> list[str]:
    """The top-level directories and modules of an installed distribution's files."""
    dist = _installed(name)
    if dist is None:
        return []
    roots = set()
    for file in dist.files or ():
        top = file.parts[0] if file.parts else ""
        if top and top != ".." and not top.endswith((".dist-info", ".egg-info", ".data")):
            roots.add(str(dist.locate_file(top)))
    return sorted(roots)


def mutant_names() -> list[str]:
    """The bundled broken plugins, one per check, named after the check they must fail."""
    return sorted(p.parent.name for p in (fixtures_root() / "mutants").glob("*/pyproject.toml"))


def _from_project(project_dir: Path, source: str) -> Target:
    try:
        name, version, requires, entry_points = read_project(project_dir)
    except OverlayError as exc:
        raise TargetError(str(exc)) from exc
    eps = tuple(
        sorted(
            EntryPointInfo(group, ep_name, value)
            for group, group_eps in entry_points.items()
            for ep_name, value in group_eps.items()
        )
    )
    return Target(name, version, source, eps, tuple(requires), project_dir)


def _from_installed(dist: metadata.Distribution) -> Target:
    eps = tuple(sorted(EntryPointInfo(ep.group, ep.name, ep.value) for ep in dist.entry_points))
    return Target(dist.metadata["Name"], dist.version, "installed", eps, tuple(dist.requires or ()))


def _installed(name: str) -> metadata.Distribution | None:
    wanted = normalize_dist_name(name)
    for dist in metadata.distributions():
        if normalize_dist_name(dist.metadata["Name"] or "") == wanted:
            return dist
    return None


def resolve_target(spec: str) -> Target:
    """Find the distribution `spec` names; raise `TargetError` saying how to fix it if none."""
    path = Path(spec)
    if (path / "pyproject.toml").is_file():
        return _from_project(path.resolve(), "project")
    dist = _installed(spec)
    if dist is not None:
        return _from_installed(dist)
    wanted = normalize_dist_name(spec)
    for name in fixture_names():
        if normalize_dist_name(name) == wanted:
            return _from_project(fixtures_root() / name, "fixture")
    for name in mutant_names():
        if normalize_dist_name(name) == wanted or name == spec:
            return _from_project(fixtures_root() / "mutants" / name, "mutant")
    raise TargetError(
        f"No distribution named {spec!r} is installed in this environment ({sys.prefix}), and "
        "it is neither a project directory nor a bundled fixture. Install the plugin "
        f"(`pip install {spec}` or `pip install -e PATH`), or pass the path of its project "
        "directory (the one with pyproject.toml). Bundled fixtures: "
        f"{', '.join(fixture_names())}."
    )
