"""Data that crosses the probe boundary: exceptions as structured records, and JSON round trips.

A probe function returns a dataclass (its *observation*); the probe process writes it as JSON
and the parent rebuilds the same dataclass with `from_json`, so checks read typed fields. What
a probe catches is kept as an `ExceptionInfo`: type, message, the frames, and who owns the
innermost frame of interest — the plugin, the engine, or the harness itself — so the runner can
tell a plugin's defect from the suite's own failure without reading messages.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

#: Who a frame (and so an exception) belongs to. `python` (the standard library, frozen import
#: machinery) and `library` (other installed packages: torch, transformers) are never blamed on
#: their own: an exception's owner is that of its innermost frame of interest. `boundary` is
#: the harness's `call_plugin` frame: what fails right below it was done for the plugin.
Owner = Literal["plugin", "engine", "harness", "boundary", "python", "library", "unknown"]
OF_INTEREST = ("plugin", "engine", "harness")

T = TypeVar("T")


@dataclass
class Frame:
    file: str
    line: int
    function: str
    source: str
    owner: str

    def render(self) -> str:
        text = f'  File "{self.file}", line {self.line}, in {self.function}'
        return text + (f"\n    {self.source}" if self.source else "")


@dataclass
class ExceptionInfo:
    """One exception a probe caught (or that ended it), as data."""

    type: str
    module: str
    message: str
    #: Outermost first, as in a traceback.
    frames: list[Frame] = field(default_factory=list)
    #: The owner of the innermost frame of interest (see `Owner`).
    owner: str = "unknown"
    #: `__cause__` / `__context__` chain, innermost cause first, rendered (bounded).
    causes: list[str] = field(default_factory=list)
    #: The module a `ModuleNotFoundError` (this one, or one it was raised from) could not find.
    missing_module: str | None = None
    #: `module:Name` that an `ImportError` ("cannot import name ...") could not import.
    missing_name: str | None = None

    @property
    def qualified_type(self) -> str:
        builtin = self.module in ("builtins", "")
        return self.type if builtin else f"{self.module}.{self.type}"

    @property
    def headline(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type

    def frames_of_interest(self) -> list[Frame]:
        """The frames worth showing: the plugin's and the engine's, and the harness's own only
        when the harness is to blame (a plugin author cannot act on the harness's frames)."""
        shown = OF_INTEREST if self.owner == "harness" else ("plugin", "engine")
        return [f for f in self.frames if f.owner in shown]

    def render(self, limit: int = 4) -> str:
        """The headline and the innermost `limit` frames of interest (all frames if none)."""
        shown = self.frames_of_interest()
        lines = [self.headline]
        if shown:
            lines.insert(0, "Traceback (innermost frames of interest):")
            lines[1:1] = [f.render() for f in shown[-limit:]]
        for cause in self.causes[:2]:
            lines.append(f"(caused by {cause})")
        return "\n".join(lines)

    def mentions(self, text: str) -> bool:
        return text in self.message or any(text in c for c in self.causes)


def to_json(value: Any) -> Any:
    """A JSON-able copy of an observation (dataclasses become dicts)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


def from_json(kind: Any, data: Any) -> Any:
    """Rebuild a value of type `kind` (a dataclass, list/dict/tuple of them, optional) from
    what `to_json` made. Unknown keys are an error: the two sides share one definition."""
    if data is None or kind is Any:
        return data
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(options) == 1:
            return from_json(options[0], data)
        return data
    if origin is Literal:
        return data
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        names = {f.name for f in dataclasses.fields(kind)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"{kind.__name__} has no field(s) {sorted(unknown)}")
        return kind(**{k: from_json(hints[k], v) for k, v in data.items()})
    if origin in (list, typing.List):  # noqa: UP006
        (item,) = typing.get_args(kind) or (Any,)
        return [from_json(item, v) for v in data]
    if origin is tuple:
        args = typing.get_args(kind)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_json(args[0], v) for v in data)
        return tuple(from_json(a, v) for a, v in zip(args, data, strict=False))
    if origin in (dict, typing.Dict):  # noqa: UP006
        _, value_kind = typing.get_args(kind) or (str, Any)
        return {k: from_json(value_kind, v) for k, v in data.items()}
    return data
