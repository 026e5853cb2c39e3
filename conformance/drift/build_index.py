"""Build the vLLM API index from vLLM's source distributions, by static analysis only.

    python -m conformance.drift.build_index --out conformance/drift/data/index.json.gz \
        [--releases 0.20.0:0.34.0] [--cache DIR]

Each `vllm-<v>.tar.gz` is fetched from PyPI once into the cache, its `vllm/` tree is loaded
with griffe (never imported), and what a plugin can use is kept: every module, the names each
defines or re-exports (lazy `__getattr__` export tables included), the compiled extensions
`setup.py` declares, and each class's bases and method signatures. Patch releases whose API
equals the release before them are left out (listed under `identical`). Needs `griffe`.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import json
import logging
import platform
import sys
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from conformance.drift import signatures as sig
from conformance.drift.index import KIND, SCHEMA, ApiIndex, release_version
from conformance.drift.scan import module_level

PYPI = "https://pypi.org/pypi/vllm"
DEFAULT_RELEASES = "0.20.0:0.34.0"


class BuildError(RuntimeError):
    """A release could not be fetched or read."""


def default_cache() -> Path:
    """`sdists/` under the project's cache (`$VLLM_CONFORMANCE_CACHE` or ~/.cache/...)."""
    from conformance.fixtures.generators import cache_root

    return cache_root() / "sdists"


# -- fetching ---------------------------------------------------------------------------------


def _pypi_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.load(response)


def _sdist_file(files: list[dict[str, Any]], base_url: str) -> tuple[str, str]:
    for info in files:
        if info.get("packagetype") == "sdist" and info["filename"].endswith(".tar.gz"):
            return urllib.parse.urljoin(base_url, info["url"]), info["digests"]["sha256"]
    raise BuildError(f"PyPI lists no .tar.gz source distribution at {base_url}")


def fetch_sdist(version: str, cache: Path) -> Path:
    """`cache/vllm-<version>.tar.gz`, downloaded from PyPI (and its sha256 checked) if absent."""
    path = cache / f"vllm-{version}.tar.gz"
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    url = f"{PYPI}/{version}/json"
    download, digest = _sdist_file(_pypi_json(url)["urls"], url)
    partial = path.with_suffix(".part")
    sha = hashlib.sha256()
    with urllib.request.urlopen(download, timeout=300) as response, partial.open("wb") as out:
        while chunk := response.read(1 << 20):
            sha.update(chunk)
            out.write(chunk)
    if sha.hexdigest() != digest:
        partial.unlink()
        raise BuildError(f"{download}: sha256 {sha.hexdigest()} is not PyPI's {digest}")
    partial.replace(path)
    return path


def parse_releases(spec: str, cache: Path) -> list[str]:
    """Releases named by `spec`: `A:B` (every final release in between, from PyPI, or from the
    cache when offline) or a comma-separated list."""
    if ":" not in spec:
        return sorted({v.strip() for v in spec.split(",") if v.strip()}, key=Version)
    low, _, high = spec.partition(":")
    try:
        available = [v for v, files in _pypi_json(f"{PYPI}/json")["releases"].items() if files]
    except OSError:
        available = [p.name[len("vllm-") : -len(".tar.gz")] for p in cache.glob("vllm-*.tar.gz")]
    chosen = []
    for text in available:
        try:
            version = Version(text)
        except InvalidVersion:
            continue
        if not version.is_prerelease and Version(low) <= version <= Version(high):
            chosen.append(text)
    return sorted(chosen, key=Version)


# -- reading one release ----------------------------------------------------------------------


@dataclass
class ReleaseApi:
    """What one release offers a plugin."""

    version: str
    modules: set[str] = field(default_factory=set)
    extensions: set[str] = field(default_factory=set)
    names: dict[str, set[str]] = field(default_factory=dict)
    #: module → re-exported name → the class it stands for
    aliases: dict[str, dict[str, str]] = field(default_factory=dict)
    #: class path → (bases, {method: encoded signature})
    classes: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)

    def fingerprint(self) -> tuple[Any, ...]:
        return (
            sorted(self.modules),
            sorted(self.extensions),
            sorted((m, sorted(n)) for m, n in self.names.items()),
            sorted((m, sorted(a.items())) for m, a in self.aliases.items()),
            sorted((c, b, sorted(ms.items())) for c, (b, ms) in self.classes.items()),
        )


def unpack_sources(sdist: Path, into: Path) -> Path:
    """Extract `vllm/**.py` and `setup.py` of `sdist` under `into`; return the source root."""
    with tarfile.open(sdist, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and _wanted(m.name)]
        if not any("/vllm/" in m.name for m in members):
            raise BuildError(f"{sdist} holds no vllm/ package")
        for member in members:
            target = into / member.name
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            target.write_bytes(source.read())
    return into / members[0].name.split("/", 1)[0]


def _wanted(name: str) -> bool:
    parts = name.split("/")
    if len(parts) == 2:
        return parts[1] == "setup.py"
    return len(parts) > 2 and parts[1] == "vllm" and name.endswith(".py")


def extract_release(sdist: Path, version: str | None = None) -> ReleaseApi:
    """Read the API of one `vllm-<v>.tar.gz` (version taken from its name if not given)."""
    version = version or sdist.name[len("vllm-") : -len(".tar.gz")]
    with tempfile.TemporaryDirectory(prefix="vllm-sdist-") as tmp:
        root = unpack_sources(sdist, Path(tmp))
        api = read_package(root, version)
        if (root / "setup.py").is_file():
            api.extensions = declared_extensions(root / "setup.py") - api.modules
    return api


def read_package(root: Path, version: str) -> ReleaseApi:
    """The API of the `vllm` package found under `root`, loaded statically with griffe."""
    import griffe

    logging.getLogger("griffe").setLevel(logging.CRITICAL)
    loader = griffe.GriffeLoader(search_paths=[str(root)], allow_inspection=False)
    package = loader.load("vllm", try_relative_path=False)
    api = ReleaseApi(version)
    for module in _walk_modules(package):
        _read_module(module, api)
    return api


def _walk_modules(module: Any) -> Iterator[Any]:
    yield module
    for member in module.members.values():
        if not member.is_alias and member.is_module:
            yield from _walk_modules(member)


def _read_module(module: Any, api: ReleaseApi) -> None:
    path = module.path
    api.modules.add(path)
    names: set[str] = set()
    for name, member in module.members.items():
        if not member.is_alias and member.is_module:
            continue  # a submodule: listed under modules
        if member.runtime:
            names.add(name)
        if member.is_alias:
            target = _final_class_path(member)
            if target is not None:
                api.aliases.setdefault(path, {})[name] = target
        elif member.is_class and member.runtime:
            api.classes[member.path] = (_bases(member), _methods(member))
    if isinstance(module.filepath, Path):  # a namespace package has a list of directories
        tree = ast.parse(module.filepath.read_text(encoding="utf-8", errors="replace"))
        names |= runtime_bindings(tree) | lazy_exports(tree)
    api.names[path] = names


def _final_class_path(alias: Any) -> str | None:
    """The class a `vllm` re-export stands for, or None (not a class, or outside vllm)."""
    if not alias.target_path.startswith("vllm."):
        return None
    try:
        target = alias.final_target
    except Exception:  # griffe's AliasResolutionError, CyclicAliasError and their kin
        return None
    return target.path if target.is_class else None


def _bases(cls: Any) -> list[str]:
    bases = []
    for base in cls.bases:
        expression = getattr(base, "left", base)  # Generic[T] → Generic
        path = getattr(expression, "canonical_path", None) or str(expression)
        bases.append(_final_path(cls, path))
    return bases


def _final_path(cls: Any, path: str) -> str:
    if not path.startswith("vllm."):
        return path
    try:
        found = cls.modules_collection[path]
        return found.final_target.path if found.is_alias else found.path
    except Exception:  # not loaded, unresolvable or cyclic: keep the written path
        return path


#: griffe's parameter kinds → ours
_KINDS = {
    "positional-only": sig.POSITIONAL_ONLY,
    "positional or keyword": sig.POSITIONAL_OR_KEYWORD,
    "variadic positional": sig.VAR_POSITIONAL,
    "keyword-only": sig.KEYWORD_ONLY,
    "variadic keyword": sig.VAR_KEYWORD,
}


def _methods(cls: Any) -> dict[str, str]:
    methods = {}
    for name, member in cls.members.items():
        if member.is_alias or not member.is_function:
            continue
        binding = "static" if "staticmethod" in member.labels else "instance"
        binding = "class" if "classmethod" in member.labels else binding
        params = tuple(_param(p) for p in member.parameters)
        methods[name] = sig.Signature(params, binding).encode()
    return methods


def _param(parameter: Any) -> sig.Param:
    kind = _KINDS[parameter.kind.value]
    variadic = kind in (sig.VAR_POSITIONAL, sig.VAR_KEYWORD)  # griffe defaults them to ()/{}
    return sig.Param(parameter.name, kind, parameter.default is not None and not variadic)


def runtime_bindings(tree: ast.Module) -> set[str]:
    """Names a module binds when it runs, `if TYPE_CHECKING:` bodies aside. griffe keeps one
    object per name, so `if TYPE_CHECKING: from x import C` + `else: C = Any` reads as
    typing-only there; this puts `C` back."""
    found: set[str] = set()
    for node in module_level(tree.body, typing_blocks=False):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found |= {a.asname or a.name.partition(".")[0] for a in node.names if a.name != "*"}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.add(node.name)
        elif isinstance(node, ast.Assign):
            found |= {name for target in node.targets for name in _assigned(target)}
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
            if not isinstance(node, ast.AnnAssign) or node.value is not None:
                found.add(node.target.id)
    return found


def _assigned(target: ast.expr) -> set[str]:
    """Names an assignment target binds (not `obj.attr = ...` or `table[key] = ...`)."""
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, ast.Starred):
        return _assigned(target.value)
    if isinstance(target, (ast.Tuple, ast.List)):
        return {name for element in target.elts for name in _assigned(element)}
    return set()


def lazy_exports(tree: ast.Module) -> set[str]:
    """Names a module serves from a top-level `__getattr__(name)`: those it compares `name`
    with (`name == "X"`, `name in ("X", ...)`, `name in TABLE` for a top-level dict, list,
    tuple or set literal such as vllm's `MODULE_ATTRS`, or `name in __all__`)."""
    tables = _literal_tables(tree)
    found: set[str] = set()
    for node in module_level(tree.body):
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__" and node.args.args:
            argument = node.args.args[0].arg
            for compare in ast.walk(node):
                if isinstance(compare, ast.Compare) and _is_name(compare.left, argument):
                    for op, right in zip(compare.ops, compare.comparators, strict=True):
                        found |= _compared_names(op, right, tables)
    return found


def _is_name(node: ast.AST, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def _literal_tables(tree: ast.Module) -> dict[str, set[str]]:
    tables: dict[str, set[str]] = {}
    for node in module_level(tree.body):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        for target in targets:
            if isinstance(target, ast.Name):
                tables[target.id] = tables.get(target.id, set()) | _strings(value)
        if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            tables[node.target.id] = tables.get(node.target.id, set()) | _strings(node.value)
    return tables


def _strings(value: ast.expr) -> set[str]:
    if isinstance(value, ast.Dict):
        elements = [k for k in value.keys if k is not None]
    elif isinstance(value, (ast.List, ast.Tuple, ast.Set)):
        elements = list(value.elts)
    else:
        return set()
    return {e.value for e in elements if isinstance(e, ast.Constant) and isinstance(e.value, str)}


def _compared_names(op: ast.cmpop, right: ast.expr, tables: dict[str, set[str]]) -> set[str]:
    if isinstance(op, ast.Eq) and isinstance(right, ast.Constant):
        return {right.value} if isinstance(right.value, str) else set()
    if isinstance(op, ast.In):
        if isinstance(right, ast.Name):
            return tables.get(right.id, set())
        return _strings(right)
    return set()


def declared_extensions(setup_py: Path) -> set[str]:
    """Compiled modules `setup.py` declares (`CMakeExtension(name="vllm._C")` and kin)."""
    tree = ast.parse(setup_py.read_text(encoding="utf-8", errors="replace"))
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        callee = node.func.attr if isinstance(node.func, ast.Attribute) else None
        callee = node.func.id if isinstance(node.func, ast.Name) else callee
        if not callee or not callee.endswith("Extension"):
            continue
        named = [k.value for k in node.keywords if k.arg == "name"] + node.args[:1]
        found |= {
            n.value
            for n in named
            if isinstance(n, ast.Constant) and str(n.value).startswith("vllm.")
        }
    return found


# -- merging releases -------------------------------------------------------------------------


def merge(apis: list[ReleaseApi], identical: dict[str, str] | None = None) -> dict[str, Any]:
    """One index document from per-release APIs (in release order)."""
    modules: dict[str, int] = defaultdict(int)
    extensions: dict[str, int] = defaultdict(int)
    names: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    aliases: dict[str, dict[str, dict[str, int]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(int))
    )
    bases: dict[str, dict[tuple[str, ...], int]] = defaultdict(lambda: defaultdict(int))
    methods: dict[str, dict[str, dict[str, int]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(int))
    )
    for position, api in enumerate(apis):
        bit = 1 << position
        for module in api.modules:
            modules[module] |= bit
        for module in api.extensions:
            extensions[module] |= bit
        for module, module_names in api.names.items():
            for name in module_names:
                names[module][name] |= bit
        for module, table in api.aliases.items():
            for name, target in table.items():
                aliases[module][name][target] |= bit
        for path, (class_bases, class_methods) in api.classes.items():
            bases[path][tuple(class_bases)] |= bit
            for name, signature in class_methods.items():
                methods[path][name][signature] |= bit
    signatures = sorted({s for table in methods.values() for sigs in table.values() for s in sigs})
    number = {s: i for i, s in enumerate(signatures)}
    return {
        "schema": SCHEMA,
        "kind": KIND,
        "releases": [api.version for api in apis],
        "identical": identical or {},
        "modules": _sorted(modules),
        "extensions": _sorted(extensions),
        "names": {m: _sorted(n) for m, n in sorted(names.items())},
        "aliases": {
            m: {n: [[mask, t] for t, mask in ts.items()] for n, ts in sorted(table.items())}
            for m, table in sorted(aliases.items())
        },
        "classes": {
            path: {
                "bases": [[mask, list(b)] for b, mask in bases[path].items()],
                "methods": {
                    n: [[mask, number[s]] for s, mask in sigs.items()]
                    for n, sigs in sorted(methods[path].items())
                },
            }
            for path in sorted(bases)
        },
        "signatures": signatures,
    }


def slice_index(document: dict[str, Any], releases: list[str], keep: list[str]) -> dict[str, Any]:
    """A fragment of an index, small enough to commit as test data or attach to a bug: only
    `releases`, and only the modules in `keep` (`vllm.x.*` keeps `vllm.x`'s submodules too)
    with the classes they define."""
    old = document["releases"]
    positions = [(old.index(r), new) for new, r in enumerate(releases)]

    def remap(mask: int) -> int:
        return sum(1 << new for position, new in positions if mask >> position & 1)

    def wanted(module: str) -> bool:
        return any(module == p or (p.endswith(".*") and module.startswith(p[:-1])) for p in keep)

    def versions(entries: list[list[Any]]) -> list[list[Any]]:
        return [[remap(m), value] for m, value in entries if remap(m)]

    classes = {}
    for path, entry in document["classes"].items():
        if wanted(path.rpartition(".")[0]) and versions(entry["bases"]):
            methods = {n: versions(v) for n, v in entry["methods"].items() if versions(v)}
            classes[path] = {"bases": versions(entry["bases"]), "methods": methods}
    used = sorted({n for e in classes.values() for v in e["methods"].values() for _, n in v})
    number = {old_number: new for new, old_number in enumerate(used)}
    for entry in classes.values():
        for table in entry["methods"].values():
            for pair in table:
                pair[1] = number[pair[1]]
    modules = {m: remap(k) for m, k in document["modules"].items() if wanted(m) and remap(k)}
    return {
        **{k: v for k, v in document.items() if k not in ("builder",)},
        "releases": releases,
        "identical": {},
        "modules": modules,
        "extensions": {m: remap(k) for m, k in document["extensions"].items() if remap(k)},
        "names": {
            m: {n: remap(k) for n, k in names.items() if remap(k)}
            for m, names in document["names"].items()
            if m in modules
        },
        "aliases": {
            m: {n: versions(v) for n, v in table.items() if versions(v)}
            for m, table in document["aliases"].items()
            if m in modules
        },
        "classes": classes,
        "signatures": [document["signatures"][n] for n in used],
    }


def _sorted(table: dict[str, int]) -> dict[str, int]:
    return dict(sorted(table.items()))


def write_index(document: dict[str, Any], out: Path) -> int:
    """Write `document` as compact gzip JSON (reproducible: no timestamp in the gzip header),
    or as plain JSON when `out` ends in `.json`; return the file's size."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".json":
        out.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    else:
        text = json.dumps(document, separators=(",", ":")).encode()
        out.write_bytes(gzip.compress(text, compresslevel=9, mtime=0))
    return out.stat().st_size


def build(versions: list[str], cache: Path, log: Any = print) -> dict[str, Any]:
    """Fetch and read each release, drop patch releases identical to their predecessor."""
    apis: list[ReleaseApi] = []
    identical: dict[str, str] = {}
    for version in versions:
        started = time.perf_counter()
        api = extract_release(fetch_sdist(version, cache), version)
        previous = apis[-1] if apis else None
        same = previous is not None and _same_minor(previous.version, version)
        if same and previous is not None and previous.fingerprint() == api.fingerprint():
            identical[version] = previous.version
            verdict = f"identical to {previous.version}, left out"
        else:
            apis.append(api)
            verdict = f"{len(api.modules)} modules, {len(api.classes)} classes"
        log(f"{version}: {verdict} ({time.perf_counter() - started:.1f} s)")
    document = merge(apis, identical)
    document["builder"] = {
        "tool": f"griffe {_griffe_version()}",
        "python": platform.python_version(),
        "built": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    }
    return document


def _same_minor(a: str, b: str) -> bool:
    return release_version(a).release[:2] == release_version(b).release[:2]


def _griffe_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("griffe")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance.drift.build_index")
    parser.add_argument("--out", type=Path, required=True, help="where to write index.json.gz")
    parser.add_argument(
        "--releases",
        default=DEFAULT_RELEASES,
        help=f"A:B (every final release between) or a comma list (default {DEFAULT_RELEASES})",
    )
    parser.add_argument("--cache", type=Path, default=None, help="sdist cache directory")
    parser.add_argument(
        "--slice-of",
        type=Path,
        metavar="INDEX",
        help="instead of building, cut a fragment of INDEX: the --releases listed (a comma "
        "list) and the --keep modules with their classes",
    )
    parser.add_argument(
        "--keep", default="vllm", help="comma-separated modules to keep (`vllm.x.*`: and below)"
    )
    args = parser.parse_args(argv)
    if args.slice_of:
        return _write_slice(args)
    cache = args.cache or default_cache()
    started = time.perf_counter()
    try:
        versions = parse_releases(args.releases, cache)
        if not versions:
            raise BuildError(f"--releases {args.releases!r} names no release")
        document = build(versions, cache)
    except (BuildError, OSError, InvalidVersion) as exc:
        print(f"build_index: {exc}", file=sys.stderr)
        return 1
    size = write_index(document, args.out)
    print(
        f"wrote {args.out}: {len(document['releases'])} releases "
        f"({', '.join(document['releases'])}), {size / 1e6:.2f} MB, "
        f"{time.perf_counter() - started:.0f} s"
    )
    return 0


def _write_slice(args: argparse.Namespace) -> int:
    document = ApiIndex.load(args.slice_of).data
    releases = [r.strip() for r in args.releases.split(",") if r.strip()]
    unknown = [r for r in releases if r not in document["releases"]]
    if unknown:
        print(f"build_index: {args.slice_of} does not index {unknown}", file=sys.stderr)
        return 1
    fragment = slice_index(document, releases, [p.strip() for p in args.keep.split(",")])
    print(f"wrote {args.out}: {write_index(fragment, args.out)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
