"""A census of real plugins, read without running them: the `vllm.*` modules and names each one
imports, the entry-point groups it declares, and whether the reference engine (and vLLM 0.32,
by the API index) answers those imports.

The input is downloaded distributions, wheels or sdists (`benchmarks/corpus.py fetch` leaves
them in a cache); nothing here uses the network or imports a plugin's code. The imports are
read by the drift scan (`conformance.drift.scan`) and judged by the preflight's notion of what
the reference provides (`conformance.preflight.reference_modules`).
"""

from __future__ import annotations

import configparser
import importlib
import json
import shutil
import sys
import tarfile
import zipfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.utils import parse_sdist_filename, parse_wheel_filename

from conformance.drift.index import ApiIndex, IndexFileError
from conformance.drift.scan import ImportRef, project_files, scan_files
from conformance.preflight import provides, reference_modules
from conformance.target import EntryPointInfo

SCHEMA = 1
#: Top-level directories of an archive that hold no plugin code (as the drift scan skips them).
NOT_SHIPPED = {"tests", "test", "docs", "examples", "benchmarks", "build", "dist"}


class ArchiveError(ValueError):
    """A file that is not a wheel or sdist this census can read."""


# -- archives ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Archive:
    """A downloaded distribution, unpacked: where its files are and what it declares."""

    path: Path
    root: Path
    kind: str  # "wheel" | "sdist"
    name: str
    version: str
    entry_points: tuple[EntryPointInfo, ...]

    @property
    def vllm_entry_points(self) -> tuple[EntryPointInfo, ...]:
        return tuple(ep for ep in self.entry_points if ep.group.startswith("vllm."))

    @property
    def groups(self) -> list[str]:
        """The `vllm.*` entry-point groups it declares plugins in, sorted."""
        return sorted({ep.group for ep in self.vllm_entry_points})


def name_and_version(path: Path) -> tuple[str, str, str]:
    """(kind, canonical name, version) read from a wheel or sdist file name."""
    try:
        if path.name.endswith(".whl"):
            name, version, _build, _tags = parse_wheel_filename(path.name)
            return "wheel", str(name), str(version)
        if path.name.endswith((".tar.gz", ".zip")):
            name, version = parse_sdist_filename(path.name)
            return "sdist", str(name), str(version)
    except ValueError as exc:
        raise ArchiveError(f"{path.name}: not a wheel or sdist file name ({exc})") from exc
    raise ArchiveError(f"{path.name}: not a wheel (.whl) or an sdist (.tar.gz, .zip)")


def open_archive(path: Path, unpack_root: Path) -> Archive:
    """Unpack `path` under `unpack_root` (once) and read its declared entry points."""
    kind, name, version = name_and_version(path)
    root = unpack(path, unpack_root / path.name)
    return Archive(path, root, kind, name, version, declared_entry_points(root, kind))


def unpack(path: Path, dest: Path) -> Path:
    """Extract `path` into `dest`, reusing a finished extraction, and return the directory
    that holds the distribution (an sdist's single top-level folder)."""
    done = dest / ".unpacked"
    if not done.is_file():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        if path.name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(path) as archive:
                archive.extractall(dest)  # ZipFile drops absolute and `..` parts itself
        else:
            _extract_tar(path, dest)
        done.write_text(path.name, encoding="utf-8")
    if path.name.endswith(".whl"):
        return dest
    tops = [p for p in dest.iterdir() if p.is_dir()]
    return tops[0] if len(tops) == 1 else dest


def _extract_tar(path: Path, dest: Path) -> None:
    """Regular files and folders only, each inside `dest` (an sdist is untrusted input)."""
    inside = dest.resolve()
    with tarfile.open(path) as archive:
        members = [
            m
            for m in archive.getmembers()
            if (m.isfile() or m.isdir()) and (inside / m.name).resolve().is_relative_to(inside)
        ]
        if hasattr(tarfile, "data_filter"):
            archive.extractall(dest, members=members, filter="data")
        else:  # Python 3.10 before 3.10.12
            archive.extractall(dest, members=members)  # the members were checked above


def read_entry_points(text: str) -> tuple[EntryPointInfo, ...]:
    """The entries of an `entry_points.txt` (INI: `[group]` then `name = value` lines)."""
    parser = configparser.ConfigParser(delimiters=("=",), interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep names' case
    parser.read_string(text)
    return tuple(
        sorted(
            EntryPointInfo(group, name.strip(), value.strip())
            for group in parser.sections()
            for name, value in parser.items(group)
        )
    )


def declared_entry_points(root: Path, kind: str) -> tuple[EntryPointInfo, ...]:
    """A wheel's `*.dist-info/entry_points.txt`; an sdist's `*.egg-info/entry_points.txt`, else
    the `[project.entry-points]` of its pyproject.toml."""
    pattern = "*.dist-info/entry_points.txt" if kind == "wheel" else "*.egg-info/entry_points.txt"
    for where in (root, root / "src"):
        found = sorted(where.glob(pattern))
        if found:
            return read_entry_points(found[0].read_text(encoding="utf-8"))
    if kind == "sdist" and (root / "pyproject.toml").is_file():
        from conformance.overlay import read_project

        _name, _version, _requires, groups = read_project(root)
        return tuple(
            sorted(EntryPointInfo(g, n, v) for g, eps in groups.items() for n, v in eps.items())
        )
    return ()


def shipped_files(root: Path, kind: str) -> dict[str, Path]:
    """Module name → file for the Python code the distribution installs."""
    if kind == "wheel":
        return _wheel_files(root)
    for where in (root, root / "src"):
        found = sorted(where.glob("*.egg-info/top_level.txt"))
        if found:
            names = found[0].read_text(encoding="utf-8").split()
            return _top_level_files(where, [n for n in names if n not in NOT_SHIPPED])
    return project_files(root)


def _wheel_files(root: Path) -> dict[str, Path]:
    found = {}
    for file in sorted(root.rglob("*.py")):
        parts = file.relative_to(root).parts
        if parts[0].endswith(".data"):  # `name.data/purelib/...` installs like the root
            if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                continue
            parts = parts[2:]
        if parts[0].endswith(".dist-info") or parts[0] in NOT_SHIPPED:
            continue
        found[module_name(parts)] = file
    return found


def _top_level_files(where: Path, names: list[str]) -> dict[str, Path]:
    found = {}
    for name in names:
        if (where / name).is_dir():
            for file in sorted((where / name).rglob("*.py")):
                found[module_name(file.relative_to(where).parts)] = file
        elif (where / f"{name}.py").is_file():
            found[name] = where / f"{name}.py"
    return found


def module_name(parts: Sequence[str]) -> str:
    """`("pkg", "sub", "__init__.py")` → `pkg.sub`; `("pkg", "mod.py")` → `pkg.mod`."""
    stem = parts[-1].removesuffix(".py")
    return ".".join([*parts[:-1]] if stem == "__init__" else [*parts[:-1], stem])


# -- what answers an import ----------------------------------------------------------------


class ReferenceAnswers:
    """Whether the reference engine answers an import: the module by the preflight's rule,
    and a name by looking it up on the reference module that answers the path."""

    def __init__(self, table: dict[str, str] | None = None) -> None:
        """`table` (vLLM path → module) stands in for the reference's surface table."""
        from reference.surface import SURFACE, _intermediate_packages

        if table is None:
            table, self.modules = SURFACE, reference_modules()
        else:
            self.modules = set(table) | _intermediate_packages(table) | {"vllm"}
        self.table_size = len(table)
        self._targets = {"vllm": "reference", **table}
        self._names: dict[tuple[str, str], bool | None] = {}

    def module(self, ref: ImportRef) -> bool:
        return provides(self.modules, ref)

    def answer(self, module: str) -> str | None:
        """How the mounted reference answers `import module`: with a module of its own
        ("module"), with an empty package above its table's paths ("package"), or not."""
        if module in self._targets:
            return "module"
        return "package" if module in self.modules else None

    def name(self, module: str, name: str) -> bool | None:
        """Whether `from module import name` works once the module is answered; None when
        this environment cannot tell (the reference module needs torch, say)."""
        key = (module, name)
        if key not in self._names:
            self._names[key] = self._lookup(module, name)
        return self._names[key]

    def _lookup(self, module: str, name: str) -> bool | None:
        if f"{module}.{name}" in self.modules:
            return True
        target = self._targets.get(module)
        if target is None:  # a package above the table's paths holds only its submodules
            return False
        try:
            return hasattr(importlib.import_module(target), name)
        except Exception:  # an optional dependency of the reference module is missing
            return None


class VllmAnswers:
    """Whether one vLLM release has a module or name, by the drift API index."""

    def __init__(self, index: ApiIndex, release: str) -> None:
        self.index, self.release = index, release
        self._bit = 1 << index.releases.index(release)

    @classmethod
    def load(cls, release: str) -> VllmAnswers | None:
        """The answers of `release` from the shipped index (None when it is not indexed)."""
        try:
            index = ApiIndex.load()
        except IndexFileError:
            return None
        return cls(index, release) if release in index.releases else None

    def module(self, module: str) -> bool:
        return bool(self.index.module_mask(module) & self._bit)

    def imports(self, ref: ImportRef) -> bool:
        return bool(self.index.import_mask(ref.module, ref.name) & self._bit)


# -- one plugin ----------------------------------------------------------------------------


@dataclass
class ModuleUse:
    """Everything one plugin imports from one `vllm.*` module."""

    module: str
    names: set[str] = field(default_factory=set)
    statements: int = 0
    at_import: bool = False  # at module (or class) level: runs when the module is imported
    in_function: bool = False  # inside a function: runs when it is called
    # (neither, for an import only under `if TYPE_CHECKING:`: it never runs)
    runtime: bool = False  # some import of it is neither typing-only nor guarded
    where: str = ""
    reference: bool = True
    reference_missing: set[str] = field(default_factory=set)
    reference_unchecked: set[str] = field(default_factory=set)
    vllm: bool | None = None
    vllm_missing: set[str] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "names": sorted(self.names),
            "statements": self.statements,
            "scope": _scope(self.at_import, self.in_function),
            "runtime": self.runtime,
            "where": self.where,
            "reference": self.reference,
            "reference_missing_names": sorted(self.reference_missing),
            "reference_unchecked_names": sorted(self.reference_unchecked),
            "vllm": self.vllm,
            "vllm_missing_names": sorted(self.vllm_missing),
        }


def _scope(at_import: bool, in_function: bool) -> str:
    """When the imports of a module run: "import", "function", "both", or "typing" (never)."""
    if at_import and in_function:
        return "both"
    return "import" if at_import else "function" if in_function else "typing"


def census_plugin(
    archive: Archive,
    reference: ReferenceAnswers,
    vllm: VllmAnswers | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The census record of one unpacked distribution (`meta` is copied in: why, file)."""
    scan = scan_files(shipped_files(archive.root, archive.kind))
    uses: dict[str, ModuleUse] = {}
    for ref in scan.imports:
        _record(uses.setdefault(ref.module, ModuleUse(ref.module)), ref, reference, vllm)
    modules = [uses[m] for m in sorted(uses)]
    return {
        "name": archive.name,
        "version": archive.version,
        "kind": archive.kind,
        **(meta or {}),
        "groups": archive.groups,
        "entry_points": [ep.to_json() for ep in archive.vllm_entry_points],
        "files": len(scan.files),
        "unreadable": scan.unreadable,
        "imports": [use.to_json() for use in modules],
        "reference": _reference_verdict(modules),
        "vllm": None if vllm is None else _vllm_verdict(modules, vllm.release),
    }


def _record(
    use: ModuleUse,
    ref: ImportRef,
    reference: ReferenceAnswers,
    vllm: VllmAnswers | None,
) -> None:
    use.statements += 1
    use.where = use.where or ref.where
    if not ref.typing_only:
        use.at_import |= not ref.nested
        use.in_function |= ref.nested
    if ref.name not in (None, "*"):
        use.names.add(ref.name)
    use.reference &= reference.module(ref)
    if vllm is not None and use.vllm is None:
        use.vllm = vllm.module(ref.module)
    if not ref.runtime:
        return
    use.runtime = True
    named = ref.name not in (None, "*")
    if use.reference and named:
        found = reference.name(ref.module, ref.name)
        if found is None:
            use.reference_unchecked.add(ref.name)
        elif not found:
            use.reference_missing.add(ref.name)
    if vllm is not None and use.vllm and named and not vllm.imports(ref):
        use.vllm_missing.add(ref.name)


def _reference_verdict(modules: list[ModuleUse]) -> dict[str, Any]:
    """Whether every import that runs resolves on the reference engine."""
    runtime = [m for m in modules if m.runtime]
    absent = [m.module for m in runtime if not m.reference]
    missing = [
        f"{m.module}:{n}" for m in runtime if m.reference for n in sorted(m.reference_missing)
    ]
    return {
        "importable": not absent,
        "names_importable": not absent and not missing,
        "unanswered_modules": absent,
        "missing_names": missing,
        "unchecked_names": sum(len(m.reference_unchecked) for m in runtime),
    }


def _vllm_verdict(modules: list[ModuleUse], release: str) -> dict[str, Any]:
    """Whether every import that runs resolves on vLLM `release`, by the API index."""
    runtime = [m for m in modules if m.runtime]
    absent = [m.module for m in runtime if m.vllm is False]
    missing = [f"{m.module}:{n}" for m in runtime if m.vllm for n in sorted(m.vllm_missing)]
    return {
        "release": release,
        "importable": not absent,
        "names_importable": not absent and not missing,
        "unanswered_modules": absent,
        "missing_names": missing,
    }


# -- the corpus ----------------------------------------------------------------------------


def census(plugins: list[dict[str, Any]], reference: ReferenceAnswers) -> dict[str, Any]:
    """The whole census from plugin records: per-module tallies, and shares."""
    total = len(plugins)
    groups = Counter(g for p in plugins for g in p["groups"])
    return {
        "schema": SCHEMA,
        "plugins": plugins,
        "groups": dict(sorted(groups.items())),
        "modules": _module_table(plugins, reference),
        "summary": _summary(plugins, total),
    }


def _module_table(
    plugins: list[dict[str, Any]], reference: ReferenceAnswers
) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for plugin in plugins:
        for use in plugin["imports"]:
            row = rows.setdefault(
                use["module"],
                {
                    "module": use["module"],
                    "plugins": 0,
                    "at_import": 0,
                    "runtime": 0,
                    "reference": reference.answer(use["module"]),
                    "vllm": use["vllm"],
                    "importers": [],
                },
            )
            row["plugins"] += 1
            row["at_import"] += use["scope"] in ("import", "both")
            row["runtime"] += use["runtime"]
            row["importers"].append(plugin["name"])
    return sorted(rows.values(), key=lambda r: (-r["plugins"], r["module"]))


def name_table(plugins: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`module:name` imports with how many plugins import each, and who answers them."""
    counts: Counter[str] = Counter()
    status: dict[str, dict[str, Any]] = {}
    for plugin in plugins:
        for use in plugin["imports"]:
            for name in use["names"]:
                key = f"{use['module']}:{name}"
                counts[key] += 1
                status[key] = {
                    "reference": _name_status(use, name, "reference"),
                    "vllm": _name_status(use, name, "vllm"),
                }
    rows = [{"import": k, "plugins": n, **status[k]} for k, n in counts.items()]
    return sorted(rows, key=lambda r: (-r["plugins"], r["import"]))


def _name_status(use: dict[str, Any], name: str, engine: str) -> bool | None:
    """True, False, or None: not judged (the module is imported only where it never runs or
    may fail, or the reference module cannot be imported here)."""
    if not use["runtime"]:
        return None
    if engine == "reference":
        if not use["reference"] or name in use["reference_missing_names"]:
            return False
        return None if name in use["reference_unchecked_names"] else True
    if use["vllm"] is None:
        return None
    return bool(use["vllm"]) and name not in use["vllm_missing_names"]


def _summary(plugins: list[dict[str, Any]], total: int) -> dict[str, Any]:
    def share(count: int) -> float:
        return round(count / total, 3) if total else 0.0

    on_reference = sum(p["reference"]["importable"] for p in plugins)
    names_on_reference = sum(p["reference"]["names_importable"] for p in plugins)
    judged = [p for p in plugins if p["vllm"] is not None]
    on_vllm = sum(p["vllm"]["importable"] for p in judged)
    names_on_vllm = sum(p["vllm"]["names_importable"] for p in judged)
    return {
        "plugins": total,
        "importing_vllm": sum(bool(p["imports"]) for p in plugins),
        "reference_importable": on_reference,
        "reference_importable_share": share(on_reference),
        "reference_names_importable": names_on_reference,
        "reference_names_importable_share": share(names_on_reference),
        "vllm_release": judged[0]["vllm"]["release"] if judged else None,
        "vllm_importable": on_vllm,
        "vllm_names_importable": names_on_vllm,
    }


def corpus_census(
    archives: Iterable[tuple[Archive, dict[str, Any]]], vllm_release: str | None = None
) -> dict[str, Any]:
    """The census of `(archive, meta)` pairs; `vllm_release` adds that release's answers."""
    reference = ReferenceAnswers()
    vllm = VllmAnswers.load(vllm_release) if vllm_release else None
    plugins = [census_plugin(a, reference, vllm, meta) for a, meta in archives]
    result = census(plugins, reference)
    result["reference_surface"] = reference.table_size
    return result


def dumps(data: Any) -> str:
    """JSON with one line per record (a dict or list holding no dict or list of dicts): the
    census stays diffable without one line per name."""
    return _dumps(data, 0) + "\n"


def _dumps(value: Any, depth: int) -> str:
    if not _nests(value):
        return json.dumps(value, ensure_ascii=False)
    pad, inner = "  " * depth, "  " * (depth + 1)
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(k)}: {_dumps(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    items = [inner + _dumps(v, depth + 1) for v in value]
    return "[\n" + ",\n".join(items) + f"\n{pad}]"


def _nests(value: Any) -> bool:
    values = value.values() if isinstance(value, dict) else value
    if not isinstance(value, (dict, list)) or not value:
        return False
    return any(isinstance(v, dict) or (isinstance(v, list) and _nests(v)) for v in values)


# -- docs/ecosystem.md ---------------------------------------------------------------------

GROUP_LABELS = {
    "vllm.general_plugins": "general",
    "vllm.platform_plugins": "platform",
    "vllm.io_processor_plugins": "IO processor",
    "vllm.stat_logger_plugins": "stat logger",
    "vllm.logits_processors": "logits processor",
    "vllm.endpoint_plugins": "endpoint",
}
#: How many `module:name` imports the page lists (the JSON has them all).
TOP_NAMES = 40
#: The module table lists modules imported by at least this many plugins.
MIN_IMPORTERS = 2
ANSWER_LABELS = {"module": "yes", "package": "empty package", None: "**no**"}


def render_markdown(data: dict[str, Any]) -> str:
    """docs/ecosystem.md from a census (`corpus_census` plus `skipped` and `generated`)."""
    sections = [
        _intro(data),
        _headline(data),
        _groups_section(data),
        _corpus_section(data),
        _modules_section(data),
        _names_section(data),
        _unanswered_section(data, load_unanswered()),
        _plugins_section(data),
        _skipped_section(data),
        _reproduce_section(data),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def _table(headers: list[str], rows: Iterable[Iterable[Any]], align: str) -> str:
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _yes(value: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "?"}[value]


def _share(count: int, total: int) -> str:
    return f"{count} of {total} ({100 * count / total:.0f}%)" if total else "0 of 0"


def _groups(groups: Iterable[str]) -> str:
    return ", ".join(GROUP_LABELS.get(g, g) for g in groups)


def _release(data: dict[str, Any]) -> str:
    return data["summary"].get("vllm_release") or "?"


def _intro(data: dict[str, Any]) -> str:
    made = data.get("generated", {})
    return (
        "# Ecosystem: real plugins on PyPI\n\n"
        "A corpus of third-party vLLM plugins published on PyPI, pinned in "
        "`benchmarks/corpus.toml`, and a census of what they import from vLLM, read from "
        "their source without running it (the drift scan, `conformance/drift/scan.py`). The "
        "census says which of those imports the reference engine answers, by the rule the "
        "preflight uses (the table in `reference/surface.py`), and which vLLM "
        f"{_release(data)} has, by the API index: the share of real plugins the embedded "
        "engine can import at all. The census also chose what the reference answers: the "
        "first one found 4 of the 38 importable; the modules added from it since are listed "
        "in `reference/surface.py`, each with a row beside vLLM's own result in "
        "[surface fidelity](fidelity-surface.md), and the most-imported ones still left out "
        "are under [Left unanswered](#left-unanswered), with the reason.\n\n"
        f"Generated by `{made.get('command', 'python benchmarks/corpus.py census --render')}` "
        f"on {made.get('date', '?')} with the reference {made.get('reference', '?')} "
        f"({data.get('reference_surface', '?')} module paths in its table); do not edit by "
        "hand. Every figure, and every module and name each plugin imports, is in "
        "`benchmarks/results/census.json`."
    )


def _headline(data: dict[str, Any]) -> str:
    s, total = data["summary"], data["summary"]["plugins"]
    answers = Counter(row["reference"] for row in data["modules"])
    return "\n".join(
        [
            "## Headline",
            "",
            f"- **{total} plugins** from PyPI, in {len(data['groups'])} of vLLM's "
            f"{len(GROUP_LABELS)} entry-point groups{_absent_groups(data)}.",
            f"- **{_share(s['reference_importable'], total)} import only `vllm.*` modules "
            "the reference answers**: every import that runs when the plugin is imported or "
            "called, typing-only and ImportError-guarded imports aside. This is the "
            "preflight's rule; on the reference, the checks that import the others end "
            "`inconclusive`.",
            f"- {_share(s['reference_names_importable'], total)} also find there every name "
            "they import from those modules.",
            *_vllm_bullet(data),
            f"- The corpus imports {len(data['modules'])} distinct `vllm.*` modules; the "
            f"reference answers {answers['module']} of them with a module and "
            f"{answers['package']} more only as an empty package (a parent of its table's "
            "paths, with none of vLLM's names in it).",
        ]
    )


def _vllm_bullet(data: dict[str, Any]) -> list[str]:
    s = data["summary"]
    if not s.get("vllm_release"):
        return []
    return [
        f"- On vLLM {_release(data)}, by the API index, "
        f"{_share(s['vllm_importable'], s['plugins'])} import only modules it has, and "
        f"{_share(s['vllm_names_importable'], s['plugins'])} every name too: the rest were "
        "written for other releases."
    ]


def _absent_groups(data: dict[str, Any]) -> str:
    absent = [label for group, label in GROUP_LABELS.items() if group not in data["groups"]]
    return f" (none in: {', '.join(absent)}; see [Left out](#left-out))" if absent else ""


def _groups_section(data: dict[str, Any]) -> str:
    rows = []
    for group, label in GROUP_LABELS.items():
        members = [p for p in data["plugins"] if group in p["groups"]]
        on_ref = sum(p["reference"]["importable"] for p in members)
        on_vllm = sum(bool(p["vllm"] and p["vllm"]["importable"]) for p in members)
        rows.append((f"{label} (`{group}`)", len(members), on_ref, on_vllm))
    return "## By group\n\nA plugin in several groups counts in each.\n\n" + _table(
        ["group", "plugins", "importable on the reference", f"on vLLM {_release(data)}"],
        rows,
        "lrrr",
    )


def _corpus_section(data: dict[str, Any]) -> str:
    rows = [
        (
            f"`{p['name']}`",
            p["version"],
            _groups(p["groups"]),
            len(p["entry_points"]),
            p["kind"],
            p.get("why", ""),
        )
        for p in sorted(data["plugins"], key=lambda p: p["name"])
    ]
    return "## The corpus\n\n" + _table(
        ["plugin", "version", "groups", "entry points", "file", "why it is here"], rows, "lllrll"
    )


def _modules_section(data: dict[str, Any]) -> str:
    shown = [r for r in data["modules"] if r["plugins"] >= MIN_IMPORTERS]
    rest = [r for r in data["modules"] if r["plugins"] < MIN_IMPORTERS]
    rows = [
        (
            f"`{r['module']}`",
            r["plugins"],
            r["at_import"],
            ANSWER_LABELS[r["reference"]],
            _yes(r["vllm"]),
        )
        for r in shown
    ]
    answered = sum(r["reference"] is not None for r in rest)
    return (
        "## What they import\n\n"
        f"Every `vllm.*` module that at least {MIN_IMPORTERS} plugins import, by how many "
        "do; *at import*: how many of them import it at module level, so that it runs as "
        "soon as the plugin is imported, not only when a function is called (an import "
        "under `if TYPE_CHECKING:` never runs). *reference*: "
        "the mounted reference answers the path with a module (`yes`) or only with an empty "
        f"package; *vLLM {_release(data)}*: that release has the module. {len(rest)} more "
        f"modules are imported by one plugin each ({answered} of them answered by the "
        "reference); `census.json` lists them.\n\n"
        + _table(
            ["module", "plugins", "at import", "reference", f"vLLM {_release(data)}"],
            rows,
            "lrrll",
        )
    )


def _names_section(data: dict[str, Any]) -> str:
    rows = [
        (f"`{r['import']}`", r["plugins"], _yes(r["reference"]), _yes(r["vllm"]))
        for r in name_table(data["plugins"])[:TOP_NAMES]
    ]
    return (
        f"## The names most imported\n\nThe {TOP_NAMES} `from vllm.x import name` imports "
        "that the most plugins make; `?`: not judged (every such import is typing-only or "
        "guarded, or the reference module needs torch where the census ran).\n\n"
        + _table(["import", "plugins", "reference", f"vLLM {_release(data)}"], rows, "lrll")
    )


#: The most-imported modules the reference does not answer that need a reason in
#: docs/ecosystem-unanswered.toml (the "Left unanswered" section lists them all).
TOP_UNANSWERED = 30
UNANSWERED_FILE = Path(__file__).resolve().parent.parent / "docs" / "ecosystem-unanswered.toml"
UNANSWERED_REASONS = ("engine internals", "GPU-only", "too big", "not a plugin contract")


def load_unanswered(path: Path = UNANSWERED_FILE) -> dict[str, dict[str, str]]:
    """Module → {"reason", "why"} from the reasons file ({} where it is not shipped);
    ValueError for an entry without a known reason or an explanation."""
    if not path.is_file():
        return {}
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    modules = tomllib.loads(path.read_text(encoding="utf-8")).get("modules", {})
    bad = sorted(
        m
        for m, e in modules.items()
        if e.get("reason") not in UNANSWERED_REASONS or not str(e.get("why", "")).strip()
    )
    if bad:
        raise ValueError(
            f"{path}: each module needs a reason in {UNANSWERED_REASONS} and a why: {bad}"
        )
    return modules


def most_demanded_unanswered(data: dict[str, Any], top: int = TOP_UNANSWERED) -> list[dict]:
    """The module rows the reference does not answer, most importers first (the first `top`)."""
    return [r for r in data["modules"] if r["reference"] is None][:top]


def _unanswered_section(data: dict[str, Any], reasons: dict[str, dict[str, str]]) -> str:
    rows = most_demanded_unanswered(data)
    if not reasons or not rows:
        return ""
    table = [
        (
            f"`{r['module']}`",
            r["plugins"],
            _yes(r["vllm"]),
            reasons.get(r["module"], {}).get("reason", "**no reason given**"),
            reasons.get(r["module"], {}).get("why", ""),
        )
        for r in rows
    ]
    counts = Counter(reasons.get(r["module"], {}).get("reason", "?") for r in rows)
    summary = ", ".join(f"{n} {reason}" for reason, n in counts.most_common())
    return (
        "## Left unanswered\n\n"
        f"The {len(rows)} `vllm.*` modules the most plugins import that the reference still "
        f"does not answer ({summary}), with the reason, from "
        "`docs/ecosystem-unanswered.toml`. The reference answers a module where a faithful "
        "copy is small and part of what plugins are promised: configuration classes, "
        "registration helpers, the base classes and layers plugin models are built from "
        "(one tensor-parallel rank), single-rank distributed helpers; each of those has a "
        "row in [surface fidelity](fidelity-surface.md), beside vLLM's own result. What is "
        "left is mostly the engine's own machinery (scheduler, KV cache, model runner), "
        "which platform plugins replace wholesale and the reference does not share, GPU "
        "kernels, and whole subsystems (multimodal, the OpenAI server). Most of it is "
        "imported by the platform plugins (ascend, kunlun, rbln, omni, tpu), which "
        "import hundreds of such modules each.\n\n"
        + _table(["module", "plugins", f"vLLM {_release(data)}", "reason", "why"], table, "lrlll")
    )


def _plugins_section(data: dict[str, Any]) -> str:
    rows = []
    for p in sorted(data["plugins"], key=lambda p: p["name"]):
        ref, vllm = p["reference"], p["vllm"] or {}
        gaps = ref["unanswered_modules"] + ref["missing_names"]
        first = ", ".join(f"`{g}`" for g in gaps[:3])
        more = f" and {len(gaps) - 3} more" if len(gaps) > 3 else ""
        rows.append(
            (
                f"`{p['name']}`",
                len(p["imports"]),
                len(ref["unanswered_modules"]),
                len(ref["missing_names"]),
                _yes(ref["names_importable"]),
                _yes(vllm.get("names_importable")),
                (first + more) or "—",
            )
        )
    return (
        "## Plugin by plugin\n\n*modules*: the distinct `vllm.*` modules it imports; "
        "*unanswered*: those of them, imported where it runs, that the reference does not "
        "answer; *missing names*: names it imports from answered modules that the "
        "reference lacks; *importable*: every import that runs resolves, modules and "
        "names.\n\n"
        + _table(
            [
                "plugin",
                "modules",
                "unanswered",
                "missing names",
                "importable on the reference",
                f"on vLLM {_release(data)}",
                "first gaps on the reference",
            ],
            rows,
            "lrrrlll",
        )
    )


def _skipped_section(data: dict[str, Any]) -> str:
    skipped = data.get("skipped", [])
    if not skipped:
        return ""
    rows = [(f"`{s['name']}`", s.get("version", "—"), s["why"]) for s in skipped]
    return "## Left out\n\nCandidates looked at and not pinned.\n\n" + _table(
        ["candidate", "version", "why"], rows, "lll"
    )


def _reproduce_section(data: dict[str, Any]) -> str:
    sdists = ", ".join(sorted(p["name"] for p in data["plugins"] if p["kind"] == "sdist"))
    return (
        "## Reproduce\n\n"
        "Fetching needs the network; nothing else does, and CI runs none of it.\n\n"
        "```bash\n"
        "python benchmarks/corpus.py fetch              # pip download --no-deps each pin, "
        "check sha256 and entry points\n"
        "python benchmarks/corpus.py census --render    # benchmarks/results/census.json "
        "and this page\n"
        "python benchmarks/corpus.py render             # this page again from census.json\n"
        "python benchmarks/corpus.py pin NAME==VERSION  # a new [[plugin]] stanza for "
        "corpus.toml\n"
        "```\n\n"
        "The downloads go to `$VLLM_CONFORMANCE_CACHE/corpus` (default "
        "`~/.cache/vllm-plugin-conformance/corpus`, or `--cache DIR`): `files/` as "
        "downloaded, `unpacked/<file>/` unpacked (an unpacked wheel is a site directory, "
        "dist-info included). Wheels come down with `pip download --no-deps` for the pinned "
        "file's own platform and Python tags, so the macOS-only and cp311-only ones are "
        f"fetched on any machine. The sdists ({sdists or 'none'}) are fetched from the file "
        "URL that PyPI's JSON API lists: `pip download` would build an sdist to read its "
        "metadata, running its setup.py."
    )
