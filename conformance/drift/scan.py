"""Read a plugin's source without running it: its vllm imports, and the vLLM classes it extends.

Every `.py` file of the plugin's packages is parsed with `ast`: `import vllm.x.y [as z]`,
`from vllm.x import Y` (at module level or inside functions), `importlib.import_module("vllm.x")`
with a literal name, and each class whose bases lead (through the plugin's own classes) to a
`vllm.*` class, with the methods it defines and their parameters. Imports under
`if TYPE_CHECKING:` are marked typing-only; imports inside `try` blocks that catch ImportError,
under `contextlib.suppress(ImportError)` or under an `if` that tests a version are marked guarded.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

from conformance.drift.signatures import (
    KEYWORD_ONLY,
    POSITIONAL_ONLY,
    POSITIONAL_OR_KEYWORD,
    VAR_KEYWORD,
    VAR_POSITIONAL,
    Param,
    Signature,
)
from conformance.target import Target

#: top-level directories of a project that hold no shipped code
_NOT_SHIPPED = {"tests", "test", "docs", "examples", "benchmarks", "build", "dist"}
_IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


@dataclass(frozen=True)
class ImportRef:
    """One import of a vllm module (name None, or "*") or of a name from one."""

    module: str
    name: str | None
    file: str
    line: int
    typing_only: bool = False
    guarded: bool = False
    #: inside a function body: it runs when the function is called, not at import
    nested: bool = False

    @property
    def runtime(self) -> bool:
        """Whether a missing module or name raises when the plugin runs."""
        return not (self.typing_only or self.guarded)

    @property
    def private(self) -> bool:
        """Whether it reaches a `_private` module or name of vLLM (dunders are public)."""
        parts = self.module.split(".")[1:] + ([self.name] if self.name else [])
        return any(p.startswith("_") and not p.endswith("__") for p in parts)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def __str__(self) -> str:
        return self.module if self.name is None else f"{self.module}:{self.name}"


@dataclass(frozen=True)
class MethodDef:
    name: str
    signature: Signature
    line: int


@dataclass(frozen=True)
class ClassDef:
    """A class of the plugin: its dotted name, resolved bases and the methods it defines."""

    qualname: str
    file: str
    line: int
    bases: tuple[str, ...]
    methods: tuple[MethodDef, ...]


@dataclass
class PluginScan:
    files: list[str] = field(default_factory=list)
    imports: list[ImportRef] = field(default_factory=list)
    classes: list[ClassDef] = field(default_factory=list)
    #: files that could not be parsed, with the reason
    unreadable: dict[str, str] = field(default_factory=dict)

    def vllm_bases(self, cls: ClassDef) -> list[str]:
        """The `vllm.*` classes `cls` extends, directly or through the plugin's own classes."""
        own = {c.qualname: c for c in self.classes}
        found: list[str] = []
        queue, seen = list(cls.bases), set()
        while queue:
            base = queue.pop(0)
            if base in seen:
                continue
            seen.add(base)
            if base.startswith("vllm."):
                found.append(base)
            elif base in own:
                queue.extend(own[base].bases)
        return found

    def subclasses(self) -> list[ClassDef]:
        """The plugin's classes that extend a vLLM class."""
        return [c for c in self.classes if self.vllm_bases(c)]


def scan_target(target: Target) -> PluginScan:
    """Scan the source of `target` (a project directory or an installed distribution)."""
    return scan_files(source_files(target))


def source_files(target: Target) -> dict[str, Path]:
    """Module name → file for every Python file the target ships."""
    if target.project_dir is not None:
        return project_files(target.project_dir)
    overlay = target.overlay_root()
    if overlay is not None:
        # A plugin written on the spot: the overlay holds its packages and modules, and only it.
        found = project_files(overlay)
        for file in sorted(overlay.glob("*.py")):
            found[file.stem] = file
        return found
    dist = metadata.distribution(target.name)
    project = _editable_project(dist)
    if project is not None:
        return project_files(project)
    found = {}
    for file in dist.files or ():
        parts = file.parts
        if file.suffix != ".py" or ".." in parts or parts[0].endswith(".dist-info"):
            continue
        found[_module_name(parts)] = Path(str(file.locate()))
    return found


def _editable_project(dist: metadata.Distribution) -> Path | None:
    """The project directory of an editable install (its `direct_url.json` says where): its
    RECORD lists only a path hook, not the sources."""
    try:
        info = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        return None
    if not info.get("dir_info", {}).get("editable") or not info.get("url", "").startswith("file:"):
        return None
    path = Path(unquote(urlparse(info["url"]).path))
    return path if path.is_dir() else None


def project_files(project_dir: Path) -> dict[str, Path]:
    """The packages of a project directory (beside pyproject.toml or under src/)."""
    found = {}
    for root in (project_dir, project_dir / "src"):
        if not root.is_dir():
            continue
        for package in sorted(root.iterdir()):
            if package.name in _NOT_SHIPPED or not (package / "__init__.py").is_file():
                continue
            for file in sorted(package.rglob("*.py")):
                if "__pycache__" not in file.parts:
                    found[_module_name(file.relative_to(root).parts)] = file
    return found


def _module_name(parts: tuple[str, ...]) -> str:
    names = list(parts[:-1])
    stem = parts[-1][: -len(".py")]
    return ".".join(names if stem == "__init__" else [*names, stem])


def scan_files(files: dict[str, Path]) -> PluginScan:
    scan = PluginScan()
    for module, path in sorted(files.items()):
        shown = "/".join(module.split(".")) + ("/__init__.py" if path.stem == "__init__" else ".py")
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError) as exc:
            scan.unreadable[shown] = f"{type(exc).__name__}: {exc}"
            continue
        scan.files.append(shown)
        visitor = _Visitor(module, shown, is_package=path.stem == "__init__")
        visitor.visit(tree)
        scan.imports.extend(visitor.imports)
        scan.classes.extend(visitor.classes(tree))
    return scan


class _Visitor(ast.NodeVisitor):
    """Collects imports (with their typing/guarded context) and the names they bind."""

    def __init__(self, module: str, file: str, *, is_package: bool) -> None:
        self.module, self.file = module, file
        self.package = module if is_package else module.rpartition(".")[0]
        self.imports: list[ImportRef] = []
        self.bindings: dict[str, str] = {}
        self._typing = self._guarded = self._nested = 0

    def _add(self, module: str, name: str | None, node: ast.stmt | ast.expr) -> None:
        if module == "vllm" or module.startswith("vllm."):
            self.imports.append(
                ImportRef(
                    module,
                    name,
                    self.file,
                    node.lineno,
                    self._typing > 0,
                    self._guarded > 0,
                    self._nested > 0,
                )
            )

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, None, node)
            if alias.asname:
                self.bindings[alias.asname] = alias.name
            else:
                head = alias.name.partition(".")[0]
                self.bindings[head] = head

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = self._absolute(node)
        for alias in node.names:
            self._add(module, alias.name, node)
            if alias.name != "*":
                self.bindings[alias.asname or alias.name] = f"{module}.{alias.name}"

    def _absolute(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        parts = self.package.split(".") if self.package else []
        base = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
        return ".".join([*base, *([node.module] if node.module else [])])

    def visit_Call(self, node: ast.Call) -> None:
        callee = node.func
        name = callee.attr if isinstance(callee, ast.Attribute) else getattr(callee, "id", "")
        if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant):
            if isinstance(node.args[0].value, str):
                self._add(node.args[0].value, None, node)
        self.generic_visit(node)

    def visit_If(self, node: ast.If) -> None:
        typing = _is_type_checking(node.test)
        guard = not typing and _mentions_version(node.test)
        self._typing += typing
        self._guarded += guard
        for statement in node.body:
            self.visit(statement)
        self._typing -= typing
        for statement in node.orelse:
            self.visit(statement)
        self._guarded -= guard

    def visit_Try(self, node: ast.Try) -> None:
        guard = any(_catches_import_error(h.type) for h in node.handlers)
        self._guarded += guard
        for statement in [*node.body, *node.handlers, *node.orelse]:
            self.visit(statement)
        self._guarded -= guard
        for statement in node.finalbody:
            self.visit(statement)

    visit_TryStar = visit_Try

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        # Decorators, defaults and annotations run at definition time; the body when called.
        for child in [*node.decorator_list, node.args, *filter(None, [node.returns])]:
            self.visit(child)
        self._nested += 1
        for statement in node.body:
            self.visit(statement)
        self._nested -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self.visit(node.args)
        self._nested += 1
        self.visit(node.body)
        self._nested -= 1

    def visit_With(self, node: ast.With) -> None:
        guard = any(_suppresses_import_error(item.context_expr) for item in node.items)
        self._guarded += guard
        self.generic_visit(node)
        self._guarded -= guard

    def classes(self, tree: ast.Module) -> list[ClassDef]:
        """The classes defined at module level (through if/try blocks), bases resolved."""
        found = []
        for node in module_level(tree.body):
            if isinstance(node, ast.ClassDef):
                bases = tuple(filter(None, (self._resolve(b) for b in node.bases)))
                methods = tuple(filter(None, (_method(s) for s in node.body)))
                qualname = f"{self.module}.{node.name}"
                found.append(ClassDef(qualname, self.file, node.lineno, bases, methods))
        return found

    def _resolve(self, expression: ast.expr) -> str | None:
        if isinstance(expression, ast.Subscript):  # Generic[T], Base[Config]
            return self._resolve(expression.value)
        if isinstance(expression, ast.Attribute):
            head = self._resolve(expression.value)
            return f"{head}.{expression.attr}" if head else None
        if isinstance(expression, ast.Name):
            return self.bindings.get(expression.id, f"{self.module}.{expression.id}")
        return None


def module_level(body: list[ast.stmt], *, typing_blocks: bool = True) -> Iterator[ast.stmt]:
    """Statements run at import time, through `if`/`else`, `try` and `with` blocks (and the
    bodies of `if TYPE_CHECKING:`, which never run, unless `typing_blocks` is false)."""
    for node in body:
        yield node
        if not isinstance(node, (ast.If, ast.Try, ast.With)):
            continue
        blocks = [node.body, getattr(node, "orelse", []), getattr(node, "finalbody", [])]
        blocks += [handler.body for handler in getattr(node, "handlers", [])]
        if not typing_blocks and isinstance(node, ast.If) and _is_type_checking(node.test):
            blocks.pop(0)
        for block in blocks:
            yield from module_level(block, typing_blocks=typing_blocks)


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _mentions_version(test: ast.expr) -> bool:
    for node in ast.walk(test):
        text = getattr(node, "id", None) or getattr(node, "attr", None)
        if isinstance(text, str) and "version" in text.lower():
            return True
    return False


def _catches_import_error(handler_type: ast.expr | None) -> bool:
    if handler_type is None:
        return True
    names = handler_type.elts if isinstance(handler_type, ast.Tuple) else [handler_type]
    return any(_dotted_tail(n) in _IMPORT_ERRORS for n in names)


def _suppresses_import_error(expression: ast.expr) -> bool:
    if not isinstance(expression, ast.Call) or _dotted_tail(expression.func) != "suppress":
        return False
    return any(_dotted_tail(a) in _IMPORT_ERRORS for a in expression.args)


def _dotted_tail(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def _method(node: ast.stmt) -> MethodDef | None:
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    decorators = {_dotted_tail(d) for d in node.decorator_list}
    if decorators & {"property", "setter", "getter", "deleter", "overload", "cached_property"}:
        return None
    binding = "static" if "staticmethod" in decorators else "instance"
    binding = "class" if "classmethod" in decorators else binding
    return MethodDef(node.name, Signature(parameters(node.args), binding), node.lineno)


def parameters(args: ast.arguments) -> tuple[Param, ...]:
    """The parameters of a `def`, in order, with their kinds and whether they have defaults."""
    positional = [*args.posonlyargs, *args.args]
    first_default = len(positional) - len(args.defaults)
    params = [
        Param(
            a.arg,
            POSITIONAL_ONLY if i < len(args.posonlyargs) else POSITIONAL_OR_KEYWORD,
            i >= first_default,
        )
        for i, a in enumerate(positional)
    ]
    if args.vararg:
        params.append(Param(args.vararg.arg, VAR_POSITIONAL))
    params += [
        Param(a.arg, KEYWORD_ONLY, d is not None)
        for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)
    ]
    if args.kwarg:
        params.append(Param(args.kwarg.arg, VAR_KEYWORD))
    return tuple(params)
