"""What a check sees: the target, the engine, its entry point, and probes that run its code.

A `Session` holds what checks of one (target, engine) run share: the staged overlay, the
engine's contract version, and the result of the shared facts probe, each computed once.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field
from typing import Any

from conformance.checks import Check, fail
from conformance.probe import ProbeResult, run_probe
from conformance.target import EntryPointInfo, Target
from reference._version import CONTRACT_VERSION

#: Prepended to every check probe: helpers to reach the target's entry points.
PRELUDE = '''
from importlib.metadata import entry_points as _entry_points

def target_entry_point(group, name):
    """The target's entry point `name` of `group`, found as the engine would find it."""
    found = [ep for ep in _entry_points(group=group) if ep.name == name]
    if not found:
        raise LookupError(f"entry point {group}:{name} is not discoverable")
    return found[-1]

def _err(exc):
    """An exception as text: its type, message and the last frames of its traceback."""
    import traceback
    return f"{type(exc).__name__}: {exc}\\n" + "".join(traceback.format_exception(exc)[-6:])

def _params(func):
    """Parameter names of `func` (`*args`, `**kwargs` marked), or None if it has no signature."""
    import inspect
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return None
    star = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}
    return [star.get(p.kind, "") + p.name for p in params]

def registered_model_class(arch):
    """The class the engine's ModelRegistry holds for `arch`, importing a lazy entry."""
    import importlib
    from vllm import ModelRegistry
    entry = ModelRegistry.models[arch]
    if getattr(entry, "module_name", None):
        return getattr(importlib.import_module(entry.module_name), entry.class_name)
    return getattr(entry, "model_cls", entry)

def describe(obj):
    """A JSON-able sketch of a loaded object."""
    import inspect
    kind = "class" if inspect.isclass(obj) else "function" if callable(obj) else "other"
    out = {"kind": kind, "repr": repr(obj)[:200],
           "qualname": f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}"}
    if callable(obj):
        try:
            sig = inspect.signature(obj)
            out["required_params"] = [
                p.name for p in sig.parameters.values()
                if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD,
                                                       p.KEYWORD_ONLY)]
        except (TypeError, ValueError):
            out["required_params"] = None
    if kind == "class":
        out["mro"] = [f"{c.__module__}.{c.__qualname__}" for c in obj.__mro__]
    return out
'''

DEFAULT_CHECK_TIMEOUT_S = 60.0


@dataclass
class Session:
    """The shared state of one run of checks on one target and engine."""

    target: Target
    engine: str = "reference"
    timeout: float = DEFAULT_CHECK_TIMEOUT_S
    #: Code run after the engine is mounted and before each engine scenario: how the harness's
    #: own tests break an engine on purpose (the engine mutants).
    engine_patch: str = ""
    _contract: str | None = field(default=None, repr=False)
    _facts: dict[str, Any] | None = field(default=None, repr=False)
    _memo: dict[str, Any] = field(default_factory=dict, repr=False)
    #: Entry points whose code already hung a probe: later probes of them fail at once, so a
    #: hanging plugin costs one timeout, not one per check.
    _hung: dict[str, ProbeResult] = field(default_factory=dict, repr=False)

    def memo(self, key: str, compute: Any) -> Any:
        """`compute()` once per session for `key` (probes that several checks read)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def probe(
        self, code: str, *, env: dict[str, str | None] | None = None, timeout: float | None = None
    ) -> ProbeResult:
        body = PRELUDE + "\n" + textwrap.dedent(code)
        return run_probe(
            body,
            engine=self.engine,
            env=env,
            timeout=timeout or self.timeout,
            **self.target.probe_settings(),  # type: ignore[arg-type]
        )

    @property
    def contract(self) -> str:
        """The plugin-contract version the engine implements (vLLM's version for real vLLM)."""
        if self._contract is None:
            if self.engine == "reference":
                self._contract = CONTRACT_VERSION
            else:
                result = run_probe(
                    "import vllm\nprobe.result['v'] = vllm.__version__\n", engine=self.engine
                )
                self._contract = str(result.values.get("v", "0"))
        return self._contract

    def facts(self) -> dict[str, Any]:
        """How each of the target's entry points loads, from one shared probe."""
        if self._facts is None:
            eps = [ep.to_json() for ep in self.target.vllm_entry_points]
            code = f"""
            facts = {{}}
            for ep in {json.dumps(eps)}:
                key = ep["group"] + ":" + ep["name"]
                try:
                    obj = target_entry_point(ep["group"], ep["name"]).load()
                except BaseException as exc:
                    facts[key] = {{"loaded": False, "error": f"{{type(exc).__name__}}: {{exc}}"}}
                else:
                    facts[key] = {{"loaded": True, **describe(obj)}}
            probe.result["entry_points"] = facts
            """
            result = self.probe(code)
            if result.status == "timeout":
                self._hung["<target>"] = result
            self._facts = {"probe": result, **result.values}
        return self._facts


@dataclass
class CheckContext:
    """Handed to each check function."""

    session: Session
    check: Check
    entry_point: EntryPointInfo | None = None

    @property
    def target(self) -> Target:
        return self.session.target

    @property
    def engine(self) -> str:
        return self.session.engine

    def probe(self, code: str, **kwargs: Any) -> ProbeResult:
        """Run `code` in a fresh interpreter with the target visible (see `Session.probe`).

        `EP_GROUP`, `EP_NAME` and `EP_VALUE` name this check's entry point, and
        `target_entry_point(group, name)` / `describe(obj)` are in scope.
        """
        header, key = "", "<target>"
        if self.entry_point is not None:
            ep = self.entry_point
            header = f"EP_GROUP, EP_NAME, EP_VALUE = {ep.group!r}, {ep.name!r}, {ep.value!r}\n"
            key = ep.key
        if key in self.session._hung:
            return self.session._hung[key]
        result = self.session.probe(header + textwrap.dedent(code), **kwargs)
        if result.status == "timeout":
            self.session._hung[key] = result
        return result

    def fact(self) -> dict[str, Any]:
        """The shared facts of this check's entry point (`loaded`, `kind`, `mro`, …)."""
        assert self.entry_point is not None, f"{self.check.id} is not an entry-point check"
        return self.session.facts().get("entry_points", {}).get(self.entry_point.key, {})

    def loaded(self) -> dict[str, Any]:
        """The entry point's facts; fails the check if the probe died or the load failed."""
        fact = self.fact()
        if not fact:
            probe = self.session.facts()["probe"]
            fail(f"The probe that loads the plugin's entry points {probe.describe()}")
        if not fact["loaded"]:
            ep = self.entry_point
            assert ep is not None
            fail(f"Entry point {ep.key} = {ep.value!r} could not be loaded: {fact['error']}")
        return fact
