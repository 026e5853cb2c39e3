"""What probe functions use inside the probe interpreter: log capture, the plugin boundary,
exception capture with owners, and small helpers to reach the target's entry points.

Nothing here imports `vllm` at module level: the parent process imports the probe modules too,
to know their observation types, and it has no engine mounted.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
import sysconfig
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint
from importlib.metadata import entry_points as _entry_points
from pathlib import Path
from typing import Any, TypeVar

from conformance.probes.data import ExceptionInfo, Frame

T = TypeVar("T")

_HARNESS_ROOT = Path(__file__).resolve().parents[1]  # conformance/
#: The harness's own code: the package, and its fixtures' generators (in a checkout
#: `conformance/fixtures` is a link to `./fixtures`, so its real path is outside the package).
_HARNESS_ROOTS = [str(_HARNESS_ROOT), str((_HARNESS_ROOT / "fixtures").resolve())]
_REFERENCE_ROOT = str(Path(__file__).resolve().parents[2] / "reference")


@dataclass
class Roots:
    """Where each owner's files live, as absolute directory prefixes."""

    plugin: list[str] = field(default_factory=list)
    harness: list[str] = field(default_factory=lambda: list(_HARNESS_ROOTS))
    engine: list[str] = field(default_factory=lambda: [_REFERENCE_ROOT])
    python: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.python:
            paths = sysconfig.get_paths()
            self.python = sorted({os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib")})


ROOTS = Roots()


def configure(plugin_roots: Sequence[str]) -> None:
    """Tell the capture where the plugin's files are (overlay paths, installed packages)."""
    ROOTS.plugin = [os.path.realpath(p) for p in plugin_roots]


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def _engine_roots() -> list[str]:
    roots = list(ROOTS.engine)
    vllm = sys.modules.get("vllm")
    file = getattr(vllm, "__file__", None)
    if file:
        roots.append(os.path.dirname(os.path.realpath(file)))
    return roots


def owner_of(filename: str) -> str:
    """Who `filename` belongs to: plugin, engine, harness, python or library."""
    if filename == "<probe>":
        return "plugin"  # a `run_probe(code)` body: the test's or user's own scenario
    if filename.startswith("<frozen") or not filename or filename.startswith("<"):
        return "python"
    path = os.path.realpath(filename)
    if _under(path, ROOTS.plugin):
        return "plugin"
    if _under(path, ROOTS.harness):
        # The fixtures ship inside the harness package; a plugin staged from them is the
        # plugin's, which `ROOTS.plugin` already answered above.
        return "harness"
    if _under(path, _engine_roots()):
        return "engine"
    if _under(path, ROOTS.python) and "site-packages" not in path:
        return "python"
    return "library"


def _boundary_code() -> Any:
    return call_plugin.__code__


def capture(exc: BaseException) -> ExceptionInfo:
    """`exc` as an `ExceptionInfo`, its owner decided by the innermost frame of interest.

    Frames below `call_plugin` that are only the standard library's (the import machinery
    failing to find the module an entry point names) make the plugin the owner: the call was
    made on the plugin's behalf, with the plugin's own metadata.
    """
    frames: list[Frame] = []
    boundary = _boundary_code()
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        summary = traceback.extract_tb(tb, limit=1)[0]
        owner = "boundary" if code is boundary else owner_of(code.co_filename)
        frames.append(
            Frame(code.co_filename, tb.tb_lineno, code.co_name, (summary.line or "").strip(), owner)
        )
        tb = tb.tb_next
    deciding = ("plugin", "engine", "harness", "boundary")
    owner = next((f.owner for f in reversed(frames) if f.owner in deciding), "unknown")
    owner = "plugin" if owner == "boundary" else owner
    filename = getattr(exc, "filename", None)
    if isinstance(exc, SyntaxError) and isinstance(filename, str):
        owner = owner_of(filename) if owner_of(filename) in ("plugin", "engine") else owner
    causes = []
    seen = {id(exc)}
    missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
    missing_name = _missing_name(exc)
    link = exc.__cause__ or exc.__context__
    while link is not None and id(link) not in seen and len(causes) < 3:
        seen.add(id(link))
        causes.append(f"{type(link).__name__}: {link}")
        if missing is None and isinstance(link, ModuleNotFoundError):
            missing = link.name
        # As for a missing module: an error raised from a failed `from module import name`
        # (the engine's ModelRegistry wraps the one resolving a model class) still names it.
        missing_name = missing_name or _missing_name(link)
        link = link.__cause__ or link.__context__
    return ExceptionInfo(
        type=type(exc).__qualname__,
        module=type(exc).__module__,
        message=str(exc),
        frames=frames,
        owner=owner,
        causes=causes,
        missing_module=missing,
        missing_name=missing_name,
    )


def _missing_name(exc: BaseException) -> str | None:
    """`module:Name` for `from module import Name` that failed because the name is absent."""
    if not isinstance(exc, ImportError) or isinstance(exc, ModuleNotFoundError):
        return None
    name = getattr(exc, "name_from", None)  # Python 3.12+
    if name is None:
        # Before 3.12 the name is only in the message: "cannot import name 'X' from 'm' (...)".
        text = str(exc)
        if text.startswith("cannot import name '"):
            name = text[len("cannot import name '") :].split("'", 1)[0]
    return f"{exc.name}:{name}" if exc.name and name else None


def call_plugin(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call plugin code, or resolve something the plugin supplied (load its entry point,
    import the module it registered, look up the class it named). Exceptions pass through
    unchanged; `capture` treats this frame as the plugin's, so a failure in the standard
    machinery it drives directly is the plugin's. Wrap each such step on its own: harness
    code around it stays the harness's."""
    return func(*args, **kwargs)


def call_method(obj: Any, name: str, *args: Any, **kwargs: Any) -> Any:
    """`obj.name(*args, **kwargs)` as plugin code, the lookup included: a plugin object that
    lacks a method of its interface is the plugin's failure, not the harness's."""
    method = call_plugin(getattr, obj, name)
    return call_plugin(method, *args, **kwargs)


def attempt(
    func: Callable[..., T], *args: Any, **kwargs: Any
) -> tuple[T | None, ExceptionInfo | None]:
    """`(call_plugin(func, ...), None)`, or `(None, capture(exc))` if it raised anything."""
    try:
        return call_plugin(func, *args, **kwargs), None
    except BaseException as exc:  # SystemExit and KeyboardInterrupt are plugin failures too
        return None, capture(exc)


def target_entry_point(group: str, name: str) -> EntryPoint:
    """The target's entry point `name` of `group`, found as the engine would find it."""
    found = [ep for ep in _entry_points(group=group) if ep.name == name]
    if not found:
        raise LookupError(f"entry point {group}:{name} is not discoverable")
    return found[-1]


def load_entry_point(group: str, name: str) -> Any:
    """Load the target's entry point through the plugin boundary (raises what loading raises)."""
    return call_plugin(target_entry_point(group, name).load)


def params(func: Any) -> list[str] | None:
    """Parameter names of `func` (`*args`, `**kwargs` marked), or None if it has no signature."""
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return None
    star = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}
    return [star.get(p.kind, "") + p.name for p in parameters]


def qualname(obj: Any) -> str:
    """`module.QualName` of a class or function (of its class for other objects)."""
    kind = obj if inspect.isclass(obj) or inspect.isroutine(obj) else type(obj)
    return f"{getattr(kind, '__module__', '?')}.{getattr(kind, '__qualname__', '?')}"


@dataclass
class ObjectSketch:
    """What a loaded object is, enough for the checks that only need its shape."""

    kind: str  # "class" | "function" | "other"
    repr: str
    qualname: str
    required_params: list[str] | None = None
    mro: list[str] = field(default_factory=list)


def describe(obj: Any) -> ObjectSketch:
    kind = "class" if inspect.isclass(obj) else "function" if callable(obj) else "other"
    name = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}"
    sketch = ObjectSketch(kind=kind, repr=repr(obj)[:200], qualname=name)
    if callable(obj):
        try:
            signature = inspect.signature(obj)
        except (TypeError, ValueError):
            sketch.required_params = None
        else:
            kinds = (
                inspect.Parameter.POSITIONAL_ONLY,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                inspect.Parameter.KEYWORD_ONLY,
            )
            sketch.required_params = [
                p.name
                for p in signature.parameters.values()
                if p.default is p.empty and p.kind in kinds
            ]
    if kind == "class":
        sketch.mro = [f"{c.__module__}.{c.__qualname__}" for c in obj.__mro__]
    return sketch


#: `pkg.module.Class`: what `resolve_obj_by_qualname` can import (it splits on the last dot).
DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")


@dataclass
class Answer:
    """What an entry function returned (or raised) when called with no arguments, as vLLM
    calls the functions of the platform and IO-processor groups."""

    kind: str  # "none" | "str" | "other" | "raised"
    repr: str
    #: The str it returned.
    value: str | None = None
    #: The type of anything else it returned, and whether that was a class.
    type: str | None = None
    is_class: bool = False
    #: For `raised`: whether it is an `Exception` (vLLM catches those, not a `SystemExit`).
    exception: bool = True
    error: ExceptionInfo | None = None


def call_entry_function(func: Callable[[], Any]) -> Answer:
    """Call `func()` through the plugin boundary and keep what it answered."""
    try:
        value = call_plugin(func)
    except BaseException as exc:  # vLLM catches Exception only: the rest stops the process
        error = capture(exc)
        return Answer(
            kind="raised",
            repr=error.headline[:300],
            exception=isinstance(exc, Exception),
            error=error,
        )
    if value is None:
        return Answer(kind="none", repr="None")
    if type(value) is str:
        return Answer(kind="str", repr=repr(value)[:300], value=value)
    return Answer(
        kind="other",
        repr=repr(value)[:300],
        type=type(value).__qualname__,
        is_class=isinstance(value, type),
    )


def registered_model_class(arch: str) -> Any:
    """The class the engine's ModelRegistry holds for `arch`, importing a lazy entry."""
    import importlib

    from vllm import ModelRegistry

    entry = ModelRegistry.models[arch]
    if getattr(entry, "module_name", None):
        # Both steps resolve what the plugin registered: their failures are the plugin's.
        module = call_plugin(importlib.import_module, entry.module_name)
        return call_plugin(getattr, module, entry.class_name)
    return getattr(entry, "model_cls", entry)


F = TypeVar("F", bound=Callable[..., Any])


def warm(function: F) -> F:
    """Mark a probe function that may run in an interpreter that has already imported the
    engine's model stack (`conformance.probe.WARM_MODULES`: torch, transformers, vLLM's `LLM`
    and `AsyncLLM`), resolving the platform on the way. For a function that imports them
    itself before the plugin's code runs, and whose observation does not time imports or
    look at `sys.modules`: the engine-run probes. The harness then forks it from such an
    interpreter, shared by the session, instead of importing all that again."""
    function.warm = True  # type: ignore[attr-defined]
    return function


class ProbeContext:
    """The probe's log capture: `mark()` and `records(since=mark)` bracket a step."""

    def __init__(self, capture_handler: Any = None) -> None:
        self.result: dict[str, Any] = {}
        self._capture = capture_handler

    def mark(self) -> int:
        return len(self._capture.records) if self._capture is not None else 0

    def records(self, since: int = 0) -> list[dict[str, Any]]:
        if self._capture is None:
            return []
        return list(self._capture.records[since:])


#: Set by the probe process before it calls the probe function.
PROBE = ProbeContext()


def records(since: int = 0) -> list[dict[str, Any]]:
    """The `vllm` log records captured in this probe so far (from index `since`)."""
    return PROBE.records(since)


def mark() -> int:
    return PROBE.mark()


def on_reference() -> bool:
    """Whether the engine mounted as `vllm` in this probe is the reference."""
    import vllm.platforms  # noqa: F401  (the mounted engine's module, whatever its package)

    return sys.modules["vllm.platforms"].__name__.partition(".")[0] == "reference"
