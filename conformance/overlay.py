"""Overlays: throw-away site directories that hold exactly the named plugin distributions.

An overlay is a directory with each plugin's packages and a minimal `*.dist-info`
(METADATA + entry_points.txt). Put first on a probe's `sys.path`, it makes
`importlib.metadata` discover exactly those plugins: no pip, nothing installed.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

#: entry-point group → {name: value}
EntryPoints = Mapping[str, Mapping[str, str]]


class OverlayError(ValueError):
    """A plugin project that cannot be put in an overlay (missing or malformed metadata)."""


def fixtures_root() -> Path:
    """Where the bundled fixture plugins live (`conformance/fixtures`, a link in a checkout)."""
    root = Path(__file__).resolve().parent / "fixtures"
    if not (root / "__init__.py").is_file():
        raise FileNotFoundError(
            f"The bundled fixture plugins were not found at {root}; reinstall "
            "vllm-plugin-conformance."
        )
    return root


def fixture_names() -> list[str]:
    """The good fixture plugins that ship with the harness (directories with a pyproject)."""
    root = fixtures_root()
    return sorted(p.parent.name for p in root.glob("*/pyproject.toml"))


def normalize_dist_name(name: str) -> str:
    """PEP 503 normalisation, in the underscore form used by `*.dist-info` directories."""
    return re.sub(r"[-_.]+", "_", name).lower()


def read_project(project_dir: Path) -> tuple[str, str, list[str], dict[str, dict[str, str]]]:
    pyproject = project_dir / "pyproject.toml"
    if not pyproject.is_file():
        raise OverlayError(f"{project_dir} has no pyproject.toml; a plugin project needs one.")
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise OverlayError(f"{pyproject} is not valid TOML: {exc}") from exc
    project = data.get("project")
    if not isinstance(project, dict) or "name" not in project:
        raise OverlayError(f"{pyproject} has no [project] table with a `name`.")
    version = str(project.get("version", "0.0.0"))
    requires = [str(r) for r in project.get("dependencies", [])]
    entry_points = {
        str(group): {str(k): str(v) for k, v in eps.items()}
        for group, eps in project.get("entry-points", {}).items()
    }
    return str(project["name"]), version, requires, entry_points


class Overlay:
    """A directory of plugin distributions to put first on a probe's `sys.path`."""

    def __init__(self, root: str | Path | None = None) -> None:
        self._owned = root is None
        self.root = Path(tempfile.mkdtemp(prefix="vllm-overlay-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.distributions: list[str] = []

    @property
    def path(self) -> str:
        return str(self.root)

    def add_fixture(self, name: str) -> Overlay:
        """Add a bundled fixture plugin by its directory name under `fixtures/`."""
        project = fixtures_root() / name
        if not project.is_dir():
            raise OverlayError(
                f"No bundled fixture named {name!r}; available: {', '.join(fixture_names())}."
            )
        return self.add_project(project)

    def add_project(self, project_dir: str | Path) -> Overlay:
        """Add a plugin project (a pyproject.toml beside its top-level packages)."""
        project_dir = Path(project_dir)
        name, version, requires, entry_points = read_project(project_dir)
        # Flat layout (packages beside pyproject.toml) or src layout (under src/); top-level
        # modules that an entry point names (a single-file plugin) come along too.
        named = {
            value.partition(":")[0].strip().partition(".")[0]
            for group in entry_points.values()
            for value in group.values()
        }
        copied = False
        for source in (project_dir, project_dir / "src"):
            if not source.is_dir():
                continue
            for child in sorted(source.iterdir()):
                if child.is_dir() and (child / "__init__.py").is_file():
                    shutil.copytree(
                        child,
                        self.root / child.name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                        dirs_exist_ok=True,
                    )
                    copied = True
                elif child.suffix == ".py" and child.stem in named:
                    shutil.copy2(child, self.root / child.name)
                    copied = True
        if not copied:
            raise OverlayError(
                f"{project_dir} holds no package (a directory with __init__.py, beside "
                "pyproject.toml or under src/) and no module an entry point names."
            )
        self._write_dist_info(name, version, entry_points, requires)
        return self

    def add_inline(
        self,
        name: str,
        modules: Mapping[str, str],
        entry_points: EntryPoints,
        version: str = "0.1.0",
        requires: Iterable[str] = (),
    ) -> Overlay:
        """Add a plugin written on the spot: `modules` maps relative file paths to source."""
        for relpath, source in modules.items():
            target = self.root / relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(source, encoding="utf-8")
        self._write_dist_info(name, version, entry_points, list(requires))
        return self

    def _write_dist_info(
        self, name: str, version: str, entry_points: EntryPoints, requires: list[str]
    ) -> None:
        dist_info = self.root / f"{normalize_dist_name(name)}-{version}.dist-info"
        if dist_info.exists():
            raise OverlayError(f"Distribution {name!r} is already in the overlay at {self.root}.")
        dist_info.mkdir()
        metadata = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
        metadata += [f"Requires-Dist: {req}" for req in requires]
        (dist_info / "METADATA").write_text("\n".join(metadata) + "\n", encoding="utf-8")
        sections = []
        for group, eps in entry_points.items():
            lines = [f"[{group}]", *(f"{ep_name} = {value}" for ep_name, value in eps.items())]
            sections.append("\n".join(lines))
        (dist_info / "entry_points.txt").write_text("\n\n".join(sections) + "\n", encoding="utf-8")
        (dist_info / "INSTALLER").write_text("vllm-conformance-overlay\n", encoding="utf-8")
        self.distributions.append(name)

    def cleanup(self) -> None:
        """Remove the overlay directory if this object created it."""
        if self._owned:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Overlay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"Overlay({self.path!r}, distributions={self.distributions!r})"
