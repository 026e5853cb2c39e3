"""Probes of the LoRA resolvers a general plugin registers: configured as a server would,
asked for adapters nobody made and for one planted outside every directory they serve.

`observe_resolvers` makes a working directory, points `VLLM_LORA_RESOLVER_CACHE_DIR` at a
directory in it (`VLLM_ALLOW_RUNTIME_LORA_UPDATING=1` comes from the check), calls the plugin's
own `conformance_setup(workdir)` hook when its entry-point module defines one, runs the plugin,
and asks every resolver it added to `LoRAResolverRegistry`.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

from conformance.probes import runtime
from conformance.probes.data import ExceptionInfo

#: The served model's name passed as `base_model_name`; the planted adapter names it.
BASE_MODEL = "conformance-org/base-model"
#: The optional hook a plugin's entry-point module may define to configure its resolver.
SETUP_HOOK = "conformance_setup"
#: Seconds one `resolve_lora` call may take before the probe gives up on it.
RESOLVE_TIMEOUT_S = 5.0
#: Adapter names no configured directory holds (plain and `org/name`).
UNKNOWN_NAMES = ("conformance-unknown-adapter-7f3a", "conformance-org/unknown-adapter")


@dataclass
class Reply:
    """What one `resolve_lora(base_model_name, lora_name)` call gave."""

    #: It answered None.
    none: bool = False
    repr: str = ""
    #: The answer's `lora_path`, and that path with links resolved.
    path: str | None = None
    real: str | None = None
    #: What it raised.
    error: ExceptionInfo | None = None
    #: It did not answer in time, or was not asked because an earlier call stalled.
    stalled: str | None = None

    @property
    def answered(self) -> bool:
        """Whether it returned something other than None."""
        return self.error is None and self.stalled is None and not self.none


@dataclass
class Escape:
    """One request for the adapter planted outside every root."""

    label: str  # how the name leads out ("an absolute path", ...)
    shown: str  # the name asked for, as Python
    reply: Reply = field(default_factory=Reply)


@dataclass
class Judged:
    """One resolver the plugin added, and what it answered."""

    type: str
    has_method: bool = False
    is_async: bool = False
    #: Why `resolve_lora(base_model_name, lora_name)` does not bind (None: it does).
    binds: str | None = None
    unknown: dict[str, Reply] = field(default_factory=dict)
    #: Directories it serves that lie in the probe's workdir.
    roots: list[str] = field(default_factory=list)
    escapes: list[Escape] = field(default_factory=list)
    link_errors: list[str] = field(default_factory=list)

    @property
    def callable(self) -> bool:
        """Whether `resolve_lora` can be called as the server calls it."""
        return self.has_method and self.binds is None


@dataclass
class ResolverObservation:
    #: Whether the entry-point module defines the setup hook.
    hook: bool = False
    #: What raised while setting up: "conformance_setup" (the hook) or "plugin" (loading or
    #: calling the plugin), and the exception.
    stage: str | None = None
    setup_error: ExceptionInfo | None = None
    #: Resolver name -> `module.QualName` of each resolver the plugin added.
    resolvers: dict[str, str] = field(default_factory=dict)
    #: Where the valid adapter only an escape reaches was planted.
    outside: str = ""
    judged: dict[str, Judged] = field(default_factory=dict)


@dataclass
class _Workdir:
    root: str
    cache: str
    plugin: str
    outside: str


def _name(obj: Any) -> str:
    return runtime.qualname(type(obj))


def _inside(path: str, root: str) -> bool:
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root + os.sep)


def _roots(resolver: Any, workdir: str) -> list[str]:
    """The directories `resolver` serves, among those inside the probe's workdir: vLLM's
    FilesystemResolver keeps its root in `lora_cache_dir`, other resolvers are asked for any
    directory they hold. Links are planted only there, never in a real user's directory."""
    attrs = vars(resolver) if hasattr(resolver, "__dict__") else {}
    found: list[str] = []
    for value in (getattr(resolver, "lora_cache_dir", None), *attrs.values()):
        if isinstance(value, (str, os.PathLike)):
            path = os.fspath(value)
            if os.path.isdir(path) and _inside(path, workdir) and path not in found:
                found.append(path)
    return found


def _plant_outside_adapter(outside: str) -> None:
    """A valid adapter for the served model, outside every root: only an escape reaches it."""
    os.makedirs(outside, exist_ok=True)
    config = {
        "peft_type": "LORA",
        "base_model_name_or_path": BASE_MODEL,
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj"],
    }
    with open(os.path.join(outside, "adapter_config.json"), "w", encoding="utf-8") as file:
        json.dump(config, file)


class _Asker:
    """Asks resolvers for names, giving up on a resolver after its first stall: waiting on
    every name would outlast the probe's own time limit."""

    def __init__(self) -> None:
        self.stalled: set[int] = set()

    async def ask(self, resolver: Any, name: str) -> Reply:
        if id(resolver) in self.stalled:
            return Reply(stalled="not asked: an earlier call did not answer in time")
        try:
            answer = runtime.call_method(resolver, "resolve_lora", BASE_MODEL, name)
            if inspect.isawaitable(answer):
                answer = await asyncio.wait_for(answer, RESOLVE_TIMEOUT_S)
        except asyncio.TimeoutError:
            self.stalled.add(id(resolver))
            return Reply(
                stalled=f"no answer within {RESOLVE_TIMEOUT_S:g} s (the probe stopped waiting)"
            )
        except BaseException as exc:  # the server does not catch it either
            return Reply(error=runtime.capture(exc))
        if answer is None:
            return Reply(none=True)
        path = getattr(answer, "lora_path", None)
        real = os.path.realpath(path) if isinstance(path, str) else None
        return Reply(repr=repr(answer)[:300], path=path, real=real)


def _escape_names(work: _Workdir, out: Judged) -> list[tuple[str, str, str]]:
    """(label, name, shown) of every name that leads from a root to the planted adapter,
    planting the links it needs in each root (a link that cannot be made is noted)."""
    roots = [work.cache, *out.roots]
    depth = max([len(os.path.realpath(p).split(os.sep)) for p in roots] + [64]) + 1
    rest = work.outside.lstrip(os.sep)
    names = [
        ("an absolute path", work.outside, repr(work.outside)),
        ("a '..' chain", "../" * depth + rest, f"'../' * {depth} + {rest!r}"),
    ]
    where = {work.cache: "VLLM_LORA_RESOLVER_CACHE_DIR"}
    where.update({r: f"the resolver's directory {r}" for r in out.roots if r != work.cache})
    for root, root_label in where.items():
        relative = os.path.relpath(work.outside, root)
        names.append((f"a relative path from {root_label}", relative, repr(relative)))
        for link, dest, ask in (
            ("conformance-escape-link", work.outside, ""),
            ("conformance-escape-dir", os.path.dirname(work.outside), "/escapee"),
        ):
            try:
                os.symlink(dest, os.path.join(root, link))
            except FileExistsError:
                pass
            except OSError as exc:
                out.link_errors.append(f"{root}/{link}: {exc}")
                continue
            label = f"a symbolic link in {root_label} to {dest}"
            names.append((label, link + ask, repr(link + ask)))
    return names


async def _judge(resolver: Any, work: _Workdir, asker: _Asker) -> Judged:
    out = Judged(type=_name(resolver))
    method = getattr(resolver, "resolve_lora", None)
    out.has_method = callable(method)
    if not out.has_method:
        return out
    out.is_async = inspect.iscoroutinefunction(method)
    try:
        inspect.signature(method).bind(BASE_MODEL, "adapter")
    except TypeError as exc:
        out.binds = str(exc)
        return out
    except ValueError:
        pass  # no signature to read (a builtin): judge by calling it
    out.unknown = {n: await asker.ask(resolver, n) for n in UNKNOWN_NAMES}
    out.roots = _roots(resolver, work.root)
    for label, name, shown in _escape_names(work, out):
        out.escapes.append(Escape(label, shown, await asker.ask(resolver, name)))
    return out


def _setup(obs: ResolverObservation, group: str, name: str, work: _Workdir) -> None:
    """Run the hook (after the module is imported, before the plugin is called), then the
    plugin; record the first step that raised."""
    entry_point = runtime.target_entry_point(group, name)
    obs.stage = "plugin"
    module, obs.setup_error = runtime.attempt(importlib.import_module, entry_point.module)
    if obs.setup_error is not None:
        return
    hook, obs.setup_error = runtime.attempt(getattr, module, SETUP_HOOK, None)
    if obs.setup_error is not None:
        return
    if hook is not None:
        obs.hook = True
        obs.stage = SETUP_HOOK
        os.makedirs(work.plugin, exist_ok=True)
        _, obs.setup_error = runtime.attempt(hook, work.plugin)
        if obs.setup_error is not None:
            return
    obs.stage = "plugin"
    func, obs.setup_error = runtime.attempt(entry_point.load)
    if obs.setup_error is None:
        _, obs.setup_error = runtime.attempt(func)
    if obs.setup_error is None:
        obs.stage = None


async def _judge_all(added: dict[str, Any], work: _Workdir) -> dict[str, Judged]:
    asker = _Asker()
    return {key: await _judge(resolver, work, asker) for key, resolver in added.items()}


def observe_resolvers(group: str, name: str) -> ResolverObservation:
    """Configure, run the plugin, and judge every LoRA resolver it adds."""
    from vllm.lora.resolver import LoRAResolverRegistry

    # The probe's working directory is run_probe's own temporary directory, removed after the
    # probe whatever happens to it; the workdir is removed here too when the probe ends.
    root = tempfile.mkdtemp(prefix="vllm-lora-check-", dir=os.getcwd())
    work = _Workdir(
        root=root,
        cache=os.path.join(root, "cache"),
        plugin=os.path.join(root, "plugin"),
        outside=os.path.join(root, "outside", "escapee"),
    )
    os.makedirs(work.cache)
    os.environ["VLLM_LORA_RESOLVER_CACHE_DIR"] = work.cache
    try:
        obs = ResolverObservation(outside=work.outside)
        before = {k: id(v) for k, v in LoRAResolverRegistry.resolvers.items()}
        _setup(obs, group, name, work)
        if obs.setup_error is not None:
            return obs
        added = {k: v for k, v in LoRAResolverRegistry.resolvers.items() if before.get(k) != id(v)}
        obs.resolvers = {k: _name(v) for k, v in added.items()}
        if added:
            _plant_outside_adapter(work.outside)
            obs.judged = asyncio.run(_judge_all(added, work))
        return obs
    finally:
        shutil.rmtree(root, ignore_errors=True)
