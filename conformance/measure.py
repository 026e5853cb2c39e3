"""Line coverage of what the checks run: the plugin's own code (`certify --coverage`) or the
engine's plugin-contract code (`engine --coverage`), measured with coverage.py inside every probe
and in the Python processes a probe starts, then combined into one summary.

Nothing here imports coverage.py until a measurement starts: the default path never loads it.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: What `--coverage` needs: `[run] patch = subprocess, _exit` (measured probe children, and data
#: saved by the `os._exit` that ends every probe) came with coverage.py 7.10.
MIN_VERSION = (7, 10)
INSTALL_HINT = "pip install coverage  (or: pip install 'vllm-plugin-conformance[coverage]')"
#: How many functions the console and the reports name as the least covered.
LEAST_COVERED = 5


class CoverageUnavailable(RuntimeError):
    """coverage.py (7.10 or newer) is not installed here: a usage error naming the install."""


def require_coverage() -> None:
    """Raise `CoverageUnavailable` unless coverage.py 7.10 or newer can be imported."""
    try:
        import coverage
    except ImportError:
        raise CoverageUnavailable(
            f"measuring coverage needs coverage.py, which is not installed here: {INSTALL_HINT}"
        ) from None
    if tuple(coverage.version_info[:2]) < MIN_VERSION:
        raise CoverageUnavailable(
            f"measuring coverage needs coverage.py {'.'.join(map(str, MIN_VERSION))} or newer "
            f"(found {coverage.__version__}): pip install -U coverage"
        )


@dataclass(frozen=True)
class Root:
    """Code to measure: a directory (every `.py` file under it) or one `.py` file, of which
    only the functions named in `only` (qualified names such as `CustomOp.register_oot`) count
    when given. Reported paths are relative to `base`."""

    path: str
    base: str
    only: tuple[str, ...] = ()

    def files(self) -> Iterator[Path]:
        path = Path(self.path)
        if path.is_file():
            yield path
        elif path.is_dir():
            yield from sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)

    @property
    def pattern(self) -> str:
        """The coverage.py `include` pattern of this root."""
        return self.path if self.path.endswith(".py") else os.path.join(self.path, "*")


@dataclass(frozen=True)
class Scope:
    """What one measurement covers, and how the console names it ("the plugin's lines")."""

    label: str
    roots: tuple[Root, ...]


def _root(path: Path, base: Path, only: Sequence[str] = ()) -> Root:
    return Root(os.path.realpath(path), os.path.realpath(base), tuple(only))


def plugin_scope(target: Any) -> Scope:
    """The plugin distribution's own packages and modules: those of its overlay (a project,
    fixture or mutant), or, for an installed distribution, its installed top-level packages and
    the packages its entry points name (found without importing them, so an editable install
    counts its source tree)."""
    overlay = target.overlay_root()
    if overlay is not None:
        children = sorted(Path(overlay).iterdir())
        roots = [
            _root(c, overlay)
            for c in children
            if (c.is_dir() and not c.name.endswith(".dist-info") and c.name != "__pycache__")
            or c.suffix == ".py"
        ]
        return Scope("the plugin's lines", tuple(roots))
    from conformance.target import installed_roots

    found = {
        Path(p)
        for p in installed_roots(target.name)
        if Path(p).suffix in ("", ".py") and not Path(p).name.startswith("__editable__")
    }
    for ep in target.vllm_entry_points:
        top = ep.value.partition(":")[0].strip().partition(".")[0]
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.submodule_search_locations:
            found.update(Path(p) for p in spec.submodule_search_locations)
        elif spec is not None and spec.origin and spec.origin.endswith(".py"):
            found.add(Path(spec.origin))
    roots = [_root(p, p.parent) for p in sorted(found) if p.name != "__pycache__" and p.exists()]
    return Scope("the plugin's lines", tuple(roots))


#: vLLM's plugin-contract code (0.32's layout): whole files, or the named functions of a file
#: that holds more than the contract.
VLLM_CONTRACT: tuple[tuple[str, tuple[str, ...]], ...] = (
    # The loader: discovery, VLLM_PLUGINS, the once-per-process guard, endpoint plugins.
    ("vllm/plugins/__init__.py", ()),
    # Platform resolution: built-in detectors, out-of-tree plugins, the lazy current_platform.
    ("vllm/platforms/__init__.py", ()),
    ("vllm/plugins/io_processors/__init__.py", ()),
    ("vllm/plugins/lora_resolvers/filesystem_resolver.py", ()),
    ("vllm/lora/resolver.py", ()),
    ("vllm/v1/metrics/loggers.py", ("load_stat_logger_plugin_factories",)),
    (
        "vllm/v1/sample/logits_processor/__init__.py",
        (
            "_load_logitsprocs_plugins",
            "_load_logitsprocs_by_fqcns",
            "_load_custom_logitsprocs",
            "build_logitsprocs",
            "validate_logits_processors_parameters",
        ),
    ),
    (
        "vllm/model_executor/custom_op.py",
        (
            "maybe_get_oot_by_class",
            "PluggableLayer.__new__",
            "PluggableLayer.register_oot",
            "CustomOp.__new__",
            "CustomOp.register_oot",
        ),
    ),
)


def engine_scope(engine: str) -> Scope:
    """The engine's plugin-contract code: all of `reference/`, or the parts of the installed
    vLLM in `VLLM_CONTRACT` (located without importing vLLM)."""
    if engine == "reference":
        import reference

        package = Path(reference.__file__).resolve().parent
        return Scope("the reference engine's lines", (_root(package, package.parent),))
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return Scope("vLLM's plugin-contract lines", ())
    base = Path(next(iter(spec.submodule_search_locations))).parent
    roots = [
        _root(base / path, base, only) for path, only in VLLM_CONTRACT if (base / path).is_file()
    ]
    return Scope("vLLM's plugin-contract lines", tuple(roots))


# --------------------------------------------------------------------------------------------
# What one file's measurement holds, and the summary built from them.


@dataclass
class FunctionLines:
    name: str
    lines: list[int]


@dataclass
class FileLines:
    """One file's statements (within its root's functions, if restricted) and those run."""

    path: str
    statements: list[int]
    executed: list[int]
    functions: list[FunctionLines] = field(default_factory=list)
    only: list[str] = field(default_factory=list)

    def merge(self, other: FileLines) -> None:
        """Add what another process measured of the same file."""
        self.statements = sorted(set(self.statements) | set(other.statements))
        self.executed = sorted(set(self.executed) | set(other.executed))


def percent(executed: int, total: int) -> float:
    """Executed share of `total` lines, in percent (100 for a file without statements)."""
    return round(100.0 * executed / total, 2) if total else 100.0


def line_ranges(missing: Iterable[int], statements: Iterable[int]) -> str:
    """`3-7, 12`: runs of missing statements, uninterrupted by an executed one (blank and
    comment lines in between do not split a run), as coverage.py prints them."""
    missing_set = set(missing)
    runs: list[list[int]] = []
    previous_missing = False
    for line in sorted(statements):
        if line in missing_set:
            if previous_missing:
                runs[-1][1] = line
            else:
                runs.append([line, line])
        previous_missing = line in missing_set
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


def summarize(label: str, files: Iterable[FileLines]) -> dict[str, Any]:
    """The report's `coverage` object: overall percent, each file with its missing lines, and
    the least-covered functions."""
    rows, functions = [], []
    total = executed = 0
    for f in sorted(files, key=lambda f: f.path):
        done = set(f.executed) & set(f.statements)
        missing = sorted(set(f.statements) - done)
        total += len(f.statements)
        executed += len(done)
        row: dict[str, Any] = {
            "path": f.path,
            "percent": percent(len(done), len(f.statements)),
            "lines": len(f.statements),
            "executed": len(done),
            "missing_lines": missing,
            "missing": line_ranges(missing, f.statements),
        }
        if f.only:
            row["only"] = list(f.only)
        rows.append(row)
        for fn in f.functions:
            run = set(fn.lines) & done
            if fn.lines and len(run) < len(fn.lines):
                gaps = sorted(set(fn.lines) - run)
                functions.append(
                    {
                        "path": f.path,
                        "function": fn.name,
                        "percent": percent(len(run), len(fn.lines)),
                        "missing_lines": gaps,
                        "missing": line_ranges(gaps, f.statements),
                    }
                )
    functions.sort(key=lambda r: (r["percent"], -len(r["missing_lines"]), r["path"], r["function"]))
    return {
        "scope": label,
        "percent": percent(executed, total),
        "lines": total,
        "executed": executed,
        "files": rows,
        "least_covered": functions[:LEAST_COVERED],
    }


def _functions(tree: ast.AST) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every function and method with its qualified name (`Class.method`, `outer.inner`)."""

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, Any]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{prefix}{child.name}", child
                yield from walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
            else:
                yield from walk(child, prefix)

    yield from walk(tree, "")


def _span(node: ast.AST) -> range:
    """The lines of a definition, decorators included."""
    decorators = getattr(node, "decorator_list", [])
    first = min([node.lineno, *(d.lineno for d in decorators)])  # type: ignore[attr-defined]
    return range(first, (node.end_lineno or node.lineno) + 1)  # type: ignore[attr-defined]


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef, statements: set[int]) -> list[int]:
    """A function's own statements: its body, less the definitions nested in it."""
    body = set(range(node.body[0].lineno, (node.end_lineno or node.lineno) + 1))
    for inner in ast.walk(node):
        if inner is not node and isinstance(
            inner, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        ):
            body -= set(_span(inner))
    return sorted(body & statements)


def owners(source: str, lines: Iterable[int]) -> dict[str, list[int]]:
    """`lines` grouped by the outermost function that holds each (`<module>` for none): a
    closure's lines belong to the function that defines it."""
    spans = [(name, _span(node)) for name, node in _functions(ast.parse(source))]
    grouped: dict[str, list[int]] = {}
    for line in sorted(lines):
        holders = [(len(span), name) for name, span in spans if line in span]
        grouped.setdefault(max(holders)[1] if holders else "<module>", []).append(line)
    return grouped


def file_lines(
    path: Path, relpath: str, statements: set[int], missing: set[int], only: Sequence[str]
) -> FileLines:
    """What coverage.py found of one file, restricted to the functions in `only` if given."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        tree = ast.Module(body=[], type_ignores=[])
    defined = dict(_functions(tree))
    if only:
        region = set().union(*(set(_span(defined[n])) for n in only if n in defined))
        statements = statements & region
        defined = {n: f for n, f in defined.items() if set(_span(f)) <= region}
    return FileLines(
        path=relpath,
        statements=sorted(statements),
        executed=sorted(statements - missing),
        functions=[FunctionLines(n, _body_lines(f, statements)) for n, f in defined.items()],
        only=list(only),
    )


# --------------------------------------------------------------------------------------------
# A measurement: its directory, its configuration for the probes, and the summary.

RCFILE = """\
# Written by vllm-plugin-conformance: what a probe (and every Python process it starts) measures.
[run]
data_file = {data_file}
parallel = true
include =
{include}
# subprocess: processes a probe starts (engine cores, workers) measure too; _exit: every probe
# ends with os._exit, which would otherwise lose the data; sigterm: a child stopped with SIGTERM
# saves its data as well.
patch =
    subprocess
    _exit
sigterm = true
disable_warnings =
    no-data-collected
    module-not-measured
    couldnt-parse
"""


class Measurement:
    """One coverage measurement of a run of checks. `start(scope)` writes this process's
    coverage.py configuration (the probes take its path); `collect()` turns this process's data
    into per-file lines (written beside the others); `summary()` merges what every process
    collected. Processes that run checks in parallel (pytest-xdist workers) share `directory`;
    without one, a temporary directory is made on first use and removed by `cleanup()`."""

    def __init__(self, directory: str | Path | None = None) -> None:
        require_coverage()
        self._directory = None if directory is None else Path(directory)
        self._owned = directory is None
        self.scope: Scope | None = None
        self.config: str | None = None

    @property
    def directory(self) -> Path:
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="vllm-conformance-coverage-"))
        self._directory.mkdir(parents=True, exist_ok=True)
        return self._directory

    @property
    def _own(self) -> Path:
        return self.directory / f"process-{os.getpid()}"

    def start(self, scope: Scope) -> str:
        """Write this process's configuration for `scope`; returns its path (for `run_probe`)."""
        self.scope = scope
        own = self._own
        own.mkdir(parents=True, exist_ok=True)
        patterns = [r.pattern for r in scope.roots] or [str(own / "nothing")]
        include = "\n".join(f"    {p}" for p in patterns)
        config = own / "coveragerc"
        config.write_text(
            RCFILE.format(data_file=own / ".coverage", include=include), encoding="utf-8"
        )
        self.config = str(config)
        return self.config

    def collect(self) -> None:
        """Combine this process's data and write its per-file lines; call it while the measured
        files still exist (before the target's overlay is cleaned up)."""
        if self.scope is None or self.config is None:
            return
        import coverage
        from coverage.exceptions import CoverageException, NoDataError

        own = self._own
        cov = coverage.Coverage(data_file=str(own / ".coverage"), config_file=self.config)
        try:
            cov.combine([str(own)], keep=False)
        except NoDataError:
            pass  # no probe saved anything (each crashed or timed out): nothing ran
        files = []
        for root in self.scope.roots:
            for path in root.files():
                try:
                    _, statements, _, missing, _ = cov.analysis2(str(path))
                except CoverageException:
                    continue  # not Python source coverage.py can read
                relpath = os.path.relpath(path, root.base)
                measured = file_lines(path, relpath, set(statements), set(missing), root.only)
                files.append(asdict(measured))
        data = {"label": self.scope.label, "files": files}
        out = self.directory / f"lines-{os.getpid()}.json"
        out.write_text(json.dumps(data), encoding="utf-8")
        self.scope = self.config = None

    def summary(self) -> dict[str, Any] | None:
        """The report's `coverage` object, merged from every process that collected; None if
        none did."""
        merged: dict[str, FileLines] = {}
        label = None
        if self._directory is None:
            return None
        for part in sorted(self._directory.glob("lines-*.json")):
            data = json.loads(part.read_text(encoding="utf-8"))
            label = data["label"]
            for raw in data["files"]:
                lines = FileLines(
                    raw["path"],
                    raw["statements"],
                    raw["executed"],
                    [FunctionLines(**f) for f in raw["functions"]],
                    raw["only"],
                )
                if lines.path in merged:
                    merged[lines.path].merge(lines)
                else:
                    merged[lines.path] = lines
        return None if label is None else summarize(label, merged.values())

    def cleanup(self) -> None:
        if self._owned and self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None


# --------------------------------------------------------------------------------------------
# How a summary reads.


def _lines(ranges: str) -> str:
    """`line 7` or `lines 3-5, 9`."""
    return f"line{'s' * any(c in ranges for c in ',-')} {ranges}"


def render_console(summary: dict[str, Any]) -> list[str]:
    """Two to seven lines: the figure, then the least-covered functions."""
    files = len(summary["files"])
    if not summary["lines"]:
        return [f"Coverage: found no Python statement to measure among {summary['scope']}."]
    lines = [
        f"Coverage: the checks executed {summary['percent']:.1f} % of {summary['scope']} "
        f"({summary['executed']} of {summary['lines']} in {files} file{'s' * (files != 1)})."
    ]
    if summary["least_covered"]:
        lines.append("  least covered:")
        lines += [
            f"    {f['function']} ({f['path']}) {f['percent']:.0f} %: "
            f"{_lines(f['missing'])} not run"
            for f in summary["least_covered"]
        ]
    return lines


def render_files(summary: dict[str, Any]) -> list[str]:
    """A Markdown table: each measured file with its figures and missing lines."""
    lines = ["| file | lines | executed | % | missing lines |", "|---|---:|---:|---:|---|"]
    for f in summary["files"]:
        only = f" (only {', '.join(f'`{n}`' for n in f['only'])})" if f.get("only") else ""
        lines.append(
            f"| `{f['path']}`{only} | {f['lines']} | {f['executed']} | {f['percent']:.1f} | "
            f"{f['missing'] or '—'} |"
        )
    return lines


def render_markdown(summary: dict[str, Any]) -> list[str]:
    """The report's `## Coverage` section: the figure, each file with its missing lines, and
    the least-covered functions."""
    lines = [
        "## Coverage",
        "",
        f"The checks executed **{summary['percent']:.1f} %** of {summary['scope']} "
        f"({summary['executed']} of {summary['lines']}).",
        "",
        *render_files(summary),
    ]
    if summary["least_covered"]:
        lines += ["", "Least covered functions:", ""]
        lines += [
            f"- `{f['function']}` in `{f['path']}`: {f['percent']:.0f} %, "
            f"{_lines(f['missing'])} not run"
            for f in summary["least_covered"]
        ]
    return [*lines, ""]
