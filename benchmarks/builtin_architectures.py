"""Record the model architectures vLLM ships, per release, for the reference's ModelRegistry.

    python benchmarks/builtin_architectures.py SOURCE [SOURCE ...] [--release X.Y.Z]

Run by hand (not by CI or the tests), once per vLLM release the reference models. A SOURCE is
an installed vLLM (a `site-packages` folder, or the `vllm` package folder in it), vLLM's
`vllm/model_executor/models/registry.py` itself, or a vLLM sdist (`.tar.gz`) or wheel
(`.whl`). Nothing of vLLM is imported: its registry module is parsed, and the architecture
tables its `_VLLM_MODELS` merges (`_TEXT_GENERATION_MODELS`, `_EMBEDDING_MODELS`, ...: name →
(module, class)) are evaluated from their syntax alone. A module name that does not start
with `vllm.` is relative to `vllm.model_executor.models`, as vLLM resolves it.

The release is read from the source (`vllm/_version.py`, else the distribution's metadata)
unless `--release` names it. Each release's table is merged into
`reference/data/builtin_architectures.json` (`{"releases": {release: {arch:
"module:Class"}}}`), which ships in the wheel: `reference.models.registry` lists those names
as built-ins of the modelled contract.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "reference" / "data" / "builtin_architectures.json"
REGISTRY = "vllm/model_executor/models/registry.py"
#: The table vLLM builds its `ModelRegistry` from: a merge (`**name`) of the tables by kind.
MERGED_TABLE = "_VLLM_MODELS"
#: Where a module name that is not absolute (`vllm.`...) lives, as vLLM resolves it.
MODELS_PACKAGE = "vllm.model_executor.models"
ABOUT = (
    "vLLM's built-in model architectures per release (architecture -> module:Class), read "
    "from vLLM's model_executor/models/registry.py by benchmarks/builtin_architectures.py."
)

#: The syntax a table may use: literals, names of earlier tables, `**` merges and dict
#: comprehensions over `table.items()` filtered by comparisons (and subscripts). Anything
#: else is refused, so evaluating a table runs no code of vLLM's.
_ALLOWED_NODES = (
    ast.Expression,
    ast.Dict,
    ast.DictComp,
    ast.comprehension,
    ast.Tuple,
    ast.Constant,
    ast.Name,
    ast.Load,
    ast.Store,
    ast.Compare,
    ast.Eq,
    ast.NotEq,
    ast.In,
    ast.NotIn,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.UnaryOp,
    ast.Not,
    ast.Call,
    ast.Attribute,
    ast.Subscript,
)


class SourceError(Exception):
    """A source that holds no readable vLLM model registry."""


def _check_syntax(node: ast.expr, where: str) -> None:
    for child in ast.walk(node):
        if not isinstance(child, _ALLOWED_NODES):
            raise SourceError(f"{where}: unsupported syntax {type(child).__name__}")
        if isinstance(child, ast.Call):
            func = child.func
            plain = isinstance(func, ast.Attribute) and func.attr == "items"
            if not plain or child.args or child.keywords:
                raise SourceError(f"{where}: only `table.items()` may be called")


def model_tables(source: str) -> dict[str, dict[str, Any]]:
    """Every module-level `*_MODELS` dict of a registry module's source, by name, evaluated
    in order (a later table may merge or filter an earlier one)."""
    tables: dict[str, dict[str, Any]] = {}
    for statement in ast.parse(source).body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target, value = statement.targets[0], statement.value
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            target, value = statement.target, statement.value
        else:
            continue
        if not (isinstance(target, ast.Name) and target.id.endswith("_MODELS")):
            continue
        if not isinstance(value, ast.Dict):
            continue
        _check_syntax(value, target.id)
        code = compile(ast.Expression(value), f"<{target.id}>", "eval")
        tables[target.id] = eval(code, {"__builtins__": {}}, dict(tables))
    return tables


def builtin_architectures(source: str) -> dict[str, str]:
    """Architecture → `module:Class` for every entry of vLLM's `ModelRegistry` as built from
    a registry module's source, sorted by architecture."""
    tables = model_tables(source)
    if MERGED_TABLE not in tables:
        raise SourceError(f"no {MERGED_TABLE} table in the registry module")
    found: dict[str, str] = {}
    for arch, entry in tables[MERGED_TABLE].items():
        shaped = isinstance(entry, tuple) and len(entry) == 2
        if not (shaped and all(isinstance(part, str) for part in entry)):
            raise SourceError(f"{arch}: expected (module, class), found {entry!r}")
        module, class_name = entry
        if not module.startswith("vllm."):
            module = f"{MODELS_PACKAGE}.{module}"
        found[arch] = f"{module}:{class_name}"
    return dict(sorted(found.items()))


def _version_of(text: str) -> str | None:
    """`__version__` of a `_version.py`, or `Version:` of a METADATA / PKG-INFO file."""
    match = re.search(r"^__version__\s*=\s*(?:version\s*=\s*)?['\"]([^'\"]+)", text, re.M)
    match = match or re.search(r"^Version:\s*(\S+)", text, re.M)
    return match.group(1).split("+")[0] if match else None


def _archive_members(path: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of an sdist's or wheel's registry, version and metadata files."""
    wanted = (REGISTRY, "vllm/_version.py", "/PKG-INFO", "/METADATA")
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if name.endswith(wanted):
                    yield name, archive.read(name)
        return
    with tarfile.open(path) as archive:
        for member in archive:
            if member.isfile() and member.name.endswith(wanted):
                handle = archive.extractfile(member)
                if handle is not None:
                    yield member.name, handle.read()


def read_source(path: Path) -> tuple[str, str | None]:
    """(registry module source, release or None) of a SOURCE given on the command line."""
    if path.is_file() and path.name == "registry.py":
        version_file = path.parents[2] / "_version.py"
        version = _version_of(version_file.read_text()) if version_file.is_file() else None
        return path.read_text(encoding="utf-8"), version
    if path.is_file():
        registry, version = None, None
        for name, data in _archive_members(path):
            text = data.decode("utf-8", errors="replace")
            if name.endswith(REGISTRY) and name.count("/") <= REGISTRY.count("/") + 1:
                registry = text
            elif version is None or name.endswith("_version.py"):
                version = _version_of(text) or version
        if registry is None:
            raise SourceError(f"{path}: no {REGISTRY} inside")
        return registry, version
    package = path if (path / "model_executor").is_dir() else path / "vllm"
    registry_file = package / "model_executor" / "models" / "registry.py"
    if not registry_file.is_file():
        raise SourceError(f"{path}: neither a vLLM installation nor vLLM's registry.py")
    return read_source(registry_file)


def merge(data_file: Path, release: str, table: dict[str, str]) -> None:
    """Write `table` as `release`'s entry of the data file, keeping the other releases."""
    data: dict[str, Any] = {"about": ABOUT, "releases": {}}
    if data_file.is_file():
        data = json.loads(data_file.read_text(encoding="utf-8"))
    data["about"] = ABOUT
    data["releases"][release] = table
    data["releases"] = dict(sorted(data["releases"].items()))
    data_file.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1, sort_keys=False) + "\n"
    data_file.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", type=Path, help="installed vLLM, sdist or wheel")
    parser.add_argument("--release", help="the release (only with one SOURCE)")
    parser.add_argument("--output", type=Path, default=DATA, help=f"default: {DATA}")
    args = parser.parse_args(argv)
    if args.release and len(args.sources) > 1:
        parser.error("--release names the release of one SOURCE only")
    for path in args.sources:
        try:
            source, version = read_source(path)
            table = builtin_architectures(source)
        except (OSError, SyntaxError, SourceError, tarfile.TarError, zipfile.BadZipFile) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            return 1
        release = args.release or version
        if not release:
            print(f"{path}: cannot tell its release; give --release", file=sys.stderr)
            return 1
        merge(args.output, release, table)
        print(f"{release}: {len(table)} architectures from {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
