"""How the target's entry points load: one probe shared by the package and `*.loadable` checks."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field

from conformance.probes.data import ExceptionInfo
from conformance.probes.runtime import ObjectSketch, attempt, capture, describe


@dataclass
class EntryPointFact:
    """One entry point, loaded in a process with the engine mounted and nothing else run."""

    group: str
    name: str
    value: str
    #: The module the entry point names could not be found (the name of the missing module).
    missing_module: str | None = None
    #: The module imported, but has no such attribute (the dotted attribute path).
    missing_attribute: str | None = None
    #: Importing the module raised (for any reason but the module itself being absent).
    import_error: ExceptionInfo | None = None
    #: What the entry point resolved to, if it loaded.
    loaded: ObjectSketch | None = None

    @property
    def key(self) -> str:
        return f"{self.group}:{self.name}"

    @property
    def unresolved(self) -> str | None:
        """Why the metadata points at nothing (missing module or attribute), or None."""
        if self.missing_module is not None:
            return f"no module named {self.missing_module!r}"
        if self.missing_attribute is not None:
            module = self.value.partition(":")[0].strip()
            return f"module {module!r} has no attribute {self.missing_attribute!r}"
        return None


@dataclass
class EntryPointFacts:
    entry_points: list[EntryPointFact] = field(default_factory=list)

    def get(self, key: str) -> EntryPointFact | None:
        return next((f for f in self.entry_points if f.key == key), None)


def _missing(exc: BaseException, module: str) -> str | None:
    """The module (or parent package) that `module`'s lookup found absent, if that is why."""
    name = getattr(exc, "name", None)
    if isinstance(exc, ModuleNotFoundError) and name and (module + ".").startswith(name + "."):
        return name
    return None


def load_one(group: str, name: str, value: str) -> EntryPointFact:
    fact = EntryPointFact(group, name, value)
    module, _, attribute = (part.strip() for part in value.partition(":"))
    attribute = attribute.split("[", 1)[0].strip()  # extras, as `EntryPoint.load` ignores them
    try:
        spec = importlib.util.find_spec(module)
    except BaseException as exc:  # a parent package that fails to import
        fact.missing_module = _missing(exc, module)
        if fact.missing_module is None:
            fact.import_error = capture(exc)
        return fact
    if spec is None:
        fact.missing_module = module
        return fact
    loaded, error = attempt(importlib.import_module, module)
    if error is not None:
        fact.import_error = error
        return fact
    obj = loaded
    for part in filter(None, attribute.split(".")):
        if not hasattr(obj, part):
            fact.missing_attribute = attribute
            return fact
        obj = getattr(obj, part)
    fact.loaded = describe(obj)
    return fact


def observe_entry_points(entry_points: list[dict[str, str]]) -> EntryPointFacts:
    """Load each of the target's `vllm.*` entry points (given as group/name/value)."""
    facts = EntryPointFacts()
    for ep in entry_points:
        facts.entry_points.append(load_one(ep["group"], ep["name"], ep["value"]))
    return facts


def engine_version() -> str:
    """The version the mounted engine reports (`vllm.__version__`)."""
    import vllm

    return str(vllm.__version__)
