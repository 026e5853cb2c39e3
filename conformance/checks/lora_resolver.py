"""LoRA-resolver checks: the resolvers a general plugin registers, asked for adapters in a probe.

One shared probe per entry point (`lora_run`) configures resolvers the way a server would
(`VLLM_LORA_RESOLVER_CACHE_DIR`, `VLLM_ALLOW_RUNTIME_LORA_UPDATING=1`, and the plugin's own
`conformance_setup(workdir)` hook when its entry-point module defines one), runs the plugin,
and asks every resolver it added for unknown and out-of-root adapters.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from conformance.context import CheckContext
from conformance.framework import check, fail, skip

#: The served model's name the probe passes as `base_model_name`; the planted adapter names it.
BASE_MODEL = "conformance-org/base-model"
#: The optional hook a plugin's entry-point module may define to configure its resolver.
SETUP_HOOK = "conformance_setup"
#: Seconds one `resolve_lora` call may take before the probe gives up on it.
RESOLVE_TIMEOUT_S = 5.0

LORA_RUN = r"""
import asyncio, importlib, inspect, json, os, traceback
R = probe.result
W = os.environ["CONFORMANCE_LORA_WORKDIR"]
CACHE = os.environ["VLLM_LORA_RESOLVER_CACHE_DIR"]
PLUGIN_DIR = os.path.join(W, "plugin")
OUTSIDE = os.path.join(W, "outside", "escapee")


def _name(obj):
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"

def _inside(path, root):
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root + os.sep)

def _roots(resolver):
    # vLLM's FilesystemResolver keeps its root in `lora_cache_dir`; other resolvers are asked
    # for any directory they hold. Only directories inside the check's workdir are kept, so
    # the probe never plants links in a real user's directory.
    found = []
    attrs = vars(resolver) if hasattr(resolver, "__dict__") else {}
    values = [getattr(resolver, "lora_cache_dir", None), *attrs.values()]
    for value in values:
        if isinstance(value, (str, os.PathLike)):
            path = os.fspath(value)
            if os.path.isdir(path) and _inside(path, W) and path not in found:
                found.append(path)
    return found

stalled = set()

def _plant_outside_adapter():
    # A valid adapter for the served model, outside every root: only an escape reaches it.
    os.makedirs(OUTSIDE, exist_ok=True)
    with open(os.path.join(OUTSIDE, "adapter_config.json"), "w", encoding="utf-8") as f:
        json.dump({"peft_type": "LORA", "base_model_name_or_path": BASE, "r": 8,
                   "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}, f)

async def _ask(resolver, name):
    if id(resolver) in stalled:
        return {"error": "not asked: an earlier call did not answer in time"}
    try:
        answer = resolver.resolve_lora(BASE, name)
        if inspect.isawaitable(answer):
            answer = await asyncio.wait_for(answer, TIMEOUT)
    except asyncio.TimeoutError:
        # One stall per resolver is enough to report; waiting on every name would outlast
        # the probe's own time limit.
        stalled.add(id(resolver))
        return {"error": f"no answer within {TIMEOUT:g} s (the probe stopped waiting)"}
    except BaseException as exc:
        return {"error": "raised " + _err(exc)}
    if answer is None:
        return {"none": True}
    return {"none": False, "repr": repr(answer)[:300], "path": getattr(answer, "lora_path", None)}

async def _judge(resolver):
    out = {"type": _name(resolver)}
    method = getattr(resolver, "resolve_lora", None)
    out["has_method"] = callable(method)
    if not callable(method):
        return out
    out["is_async"] = inspect.iscoroutinefunction(method)
    try:
        inspect.signature(method).bind(BASE, "adapter")
        out["binds"] = None
    except TypeError as exc:
        out["binds"] = f"{exc}"
    except ValueError:
        out["binds"] = None  # no signature to read (a builtin): judge by calling it
    if out["binds"] is not None:
        return out
    unknown = ["conformance-unknown-adapter-7f3a", "conformance-org/unknown-adapter"]
    out["unknown"] = {n: await _ask(resolver, n) for n in unknown}
    roots = _roots(resolver)
    out["roots"] = roots
    depth = max([len(os.path.realpath(p).split(os.sep)) for p in [CACHE, *roots]] + [64]) + 1
    rest = OUTSIDE.lstrip(os.sep)
    names = [("an absolute path", OUTSIDE, repr(OUTSIDE)),
             ("a '..' chain", "../" * depth + rest, f"'../' * {depth} + {rest!r}")]
    where = {CACHE: "VLLM_LORA_RESOLVER_CACHE_DIR"}
    where.update({r: f"the resolver's directory {r}" for r in roots if r != CACHE})
    for root, root_label in where.items():
        relative = os.path.relpath(OUTSIDE, root)
        names.append((f"a relative path from {root_label}", relative, repr(relative)))
        for link, dest, ask in (("conformance-escape-link", OUTSIDE, ""),
                                ("conformance-escape-dir", os.path.dirname(OUTSIDE), "/escapee")):
            try:
                os.symlink(dest, os.path.join(root, link))
            except FileExistsError:
                pass
            except OSError as exc:
                out.setdefault("link_errors", []).append(f"{root}/{link}: {exc}")
                continue
            label = f"a symbolic link in {root_label} to {dest}"
            names.append((label, link + ask, repr(link + ask)))
    out["escapes"] = []
    for label, name, shown in names:
        answer = await _ask(resolver, name)
        if not answer.get("none", True) and isinstance(answer["path"], str):
            answer["real"] = os.path.realpath(answer["path"])
        out["escapes"].append({"label": label, "shown": shown, **answer})
    return out

async def _main():
    added = {k: v for k, v in LoRAResolverRegistry.resolvers.items() if before.get(k) != id(v)}
    R["resolvers"] = {k: _name(v) for k, v in added.items()}
    R["outside"] = OUTSIDE
    if added:
        _plant_outside_adapter()
    return {k: await _judge(v) for k, v in added.items()}

def _register():
    # The hook runs after the module is imported and before the plugin function is called.
    module = importlib.import_module(ep.module)
    hook = getattr(module, HOOK, None)
    if hook is not None:
        R["hook"] = True
        os.makedirs(PLUGIN_DIR, exist_ok=True)
        try:
            hook(PLUGIN_DIR)
        except BaseException as exc:
            return "conformance_setup", _err(exc)
    try:
        ep.load()()
    except BaseException as exc:
        return "plugin", _err(exc)
    return None, None

from vllm.lora.resolver import LoRAResolverRegistry
before = {k: id(v) for k, v in LoRAResolverRegistry.resolvers.items()}
ep = target_entry_point(EP_GROUP, EP_NAME)
try:
    R["stage"], error = _register()
except BaseException as exc:  # importing the entry point's module raised
    R["stage"], error = "plugin", _err(exc)
if error is not None:
    R["setup_error"] = error
else:
    R["judged"] = asyncio.run(_main())
"""


def lora_run(ctx: CheckContext) -> dict[str, Any]:
    """The shared probe's observations; fails the check if the probe or the plugin died."""
    assert ctx.entry_point is not None
    result = ctx.session.memo(f"lora_run {ctx.entry_point.key}", lambda: _run_probe(ctx))
    if not result.ok:
        fail(f"Configuring and calling the plugin in a fresh process {result.describe()}")
    run = result.values
    if "setup_error" in run:
        where = (
            f"The plugin's {SETUP_HOOK}(workdir) hook"
            if run["stage"] == SETUP_HOOK
            else "Loading and calling the plugin with a LoRA resolver configured"
        )
        fail(f"{where} raised:\n{run['setup_error']}")
    if not run["resolvers"]:
        hook = "its" if run.get("hook") else "no (its entry-point module defines none)"
        skip(
            "the plugin registers no LoRA resolver (tried with VLLM_LORA_RESOLVER_CACHE_DIR "
            f"set, VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 and {hook} {SETUP_HOOK}(workdir) hook)"
        )
    return run


def _run_probe(ctx: CheckContext) -> Any:
    # The harness makes the directories (no plugin code runs here); the probe plants the
    # adapter and the links once it knows where the plugin's resolver looks.
    workdir = Path(tempfile.mkdtemp(prefix="vllm-lora-check-"))
    try:
        cache = workdir / "cache"
        cache.mkdir()
        env = {
            "CONFORMANCE_LORA_WORKDIR": str(workdir),
            "VLLM_LORA_RESOLVER_CACHE_DIR": str(cache),
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1",
        }
        header = f"BASE, HOOK, TIMEOUT = {BASE_MODEL!r}, {SETUP_HOOK!r}, {RESOLVE_TIMEOUT_S!r}\n"
        return ctx.probe(header + LORA_RUN, env=env)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _callable_resolvers(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Resolvers whose `resolve_lora` could be called as the server calls it."""
    return {k: v for k, v in run["judged"].items() if v["has_method"] and v["binds"] is None}


def _label(name: str, info: dict[str, Any]) -> str:
    return f"resolver {name!r} ({info['type']})"


@check(
    "lora_resolver.async",
    title="every LoRA resolver the plugin registers has `async def resolve_lora(base_model_name, "
    "lora_name)`",
    fix="Subclass vllm.lora.resolver.LoRAResolver and define `async def resolve_lora(self, "
    "base_model_name, lora_name) -> LoRARequest | None`; run blocking I/O with "
    "`await asyncio.to_thread(...)`.",
)
def check_async(ctx: CheckContext) -> None:
    """The server awaits `resolver.resolve_lora(model_name, lora_name)` on its event loop for
    every request naming an unknown adapter; a plain `def` returns a value that cannot be
    awaited, and the request fails with a server error. The probe judges the resolvers the
    plugin adds to `LoRAResolverRegistry`, configured through `VLLM_LORA_RESOLVER_CACHE_DIR`
    (a temporary directory), `VLLM_ALLOW_RUNTIME_LORA_UPDATING=1`, and, when the plugin's
    entry-point module defines `conformance_setup(workdir: str) -> None`, that hook, called
    with a fresh directory before the plugin function so the plugin can point its own
    settings (e.g. its environment variable) at a directory under `workdir`."""
    run = lora_run(ctx)
    problems = []
    for name, info in sorted(run["judged"].items()):
        if not info["has_method"]:
            problems.append(f"{_label(name, info)} has no resolve_lora method.")
        elif not info["is_async"]:
            problems.append(f"{_label(name, info)}: resolve_lora is not an `async def`.")
        elif info["binds"] is not None:
            problems.append(
                f"{_label(name, info)}: resolve_lora cannot be called as "
                f"resolve_lora(base_model_name, lora_name): {info['binds']}."
            )
    if problems:
        fail("\n".join(problems))


@check(
    "lora_resolver.unknown-is-none",
    title="a LoRA resolver answers None for an adapter it does not have",
    fix="Return None from resolve_lora when the adapter is not found (missing directory, "
    "missing config, another base model); raise nothing.",
)
def check_unknown_is_none(ctx: CheckContext) -> None:
    """The server asks each resolver in turn and moves on when one answers None; an exception
    raised inside `resolve_lora` is not caught, so the request fails with a server error
    instead of a 404, and the resolvers after it are never asked. The probe asks for names
    that no configured directory holds (plain and `org/name`). Resolvers are configured as
    for `lora_resolver.async`, including the optional `conformance_setup(workdir)` hook."""
    run = lora_run(ctx)
    problems = []
    for name, info in sorted(_callable_resolvers(run).items()):
        for lora_name, answer in info["unknown"].items():
            call = f"{_label(name, info)}: resolve_lora({BASE_MODEL!r}, {lora_name!r})"
            if "error" in answer:
                # The first traceback says where; later ones would only repeat it.
                error = answer["error"] if not problems else answer["error"].splitlines()[0]
                problems.append(f"{call} {error.rstrip()}")
            elif not answer["none"]:
                problems.append(f"{call} answered {answer['repr']} for an adapter nobody made.")
    if problems:
        fail("\n".join(problems))


@check(
    "lora_resolver.no-path-escape",
    title="a LoRA resolver never resolves a name to an adapter outside its directory",
    fix="Join the name to the root, take os.path.realpath of both, and return None unless the "
    "result lies strictly inside the root (reject absolute names, '..' and links that lead "
    "out).",
)
def check_no_path_escape(ctx: CheckContext) -> None:
    """The adapter name comes from the request's `model` field, so any client picks it: a
    resolver that follows absolute names, `..` or symbolic links out of its directory loads
    whatever adapter (and whatever files) the server can read (vllm#46287). The probe plants
    a valid adapter for the served model outside every root, then asks for it by absolute
    path, by a `..` chain long enough to reach `/` from any root, by a relative path from
    each root, and through symbolic links it plants inside `VLLM_LORA_RESOLVER_CACHE_DIR`
    and inside the resolver's own directory (its `lora_cache_dir`, or any directory it holds,
    when that lies in the check's workdir). Any request returned is an escape; an exception
    is not (`lora_resolver.unknown-is-none` covers those). A plugin points its resolver at a
    directory under the check's workdir with the optional `conformance_setup(workdir)` hook."""
    run = lora_run(ctx)
    problems = []
    for name, info in sorted(_callable_resolvers(run).items()):
        escapes = [a for a in info["escapes"] if "error" not in a and not a["none"]]
        if escapes:
            lines = [
                f"  {a['label']}: asked for {a['shown']}, got lora_path "
                f"{a.get('real', a['path'])!r}"
                for a in escapes
            ]
            problems.append(
                f"{_label(name, info)} answered a request for {len(escapes)} name(s) that lead "
                f"out of its directory (to the valid adapter the check planted at "
                f"{run['outside']}):\n" + "\n".join(lines)
            )
    if problems:
        fail("\n".join(problems))
