"""General-plugin checks (`vllm.general_plugins`): load, call, call again, and what it changed.

All of them read one shared probe per entry point (`general_run`), which snapshots the
engine's registries and the attributes of every `vllm.*` module before the plugin runs,
after its first call and after a second call in the same process.
"""

from __future__ import annotations

from typing import Any

from conformance.checks import check, fail, skip
from conformance.context import CheckContext

#: Seconds that loading and calling one general plugin may take once the engine's own imports
#: (torch included, which every vLLM process has imported by then) are done.
FAST_IMPORT_BUDGET_S = 1.0

GENERAL_RUN = r"""
import importlib, importlib.util, sys, time, traceback, warnings
R = probe.result


def _entry(value):
    module = getattr(value, "module_name", None)
    if module is not None:
        return {"lazy": True, "target": f"{module}:{getattr(value, 'class_name', '?')}"}
    cls = getattr(value, "model_cls", value)
    name = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls)}"
    return {"lazy": False, "target": f"{name}@{id(cls)}"}

def _models():
    try:
        from vllm import ModelRegistry
        entries = getattr(ModelRegistry, "models", None) or {}
        return {arch: _entry(entries.get(arch)) for arch in ModelRegistry.get_supported_archs()}
    except Exception as exc:
        return {"<unavailable>": {"lazy": False, "target": repr(exc)}}

def _state():
    # Registries first: importing them adds modules, which the module scan below then sees.
    state = {}
    try:
        from vllm.lora.resolver import LoRAResolverRegistry
        state["lora resolvers"] = {k: id(v) for k, v in LoRAResolverRegistry.resolvers.items()}
    except Exception:
        pass
    try:
        from vllm.model_executor import custom_op
        for reg in ("op_registry", "op_registry_oot"):
            state["custom ops " + reg] = {k: id(v) for k, v in getattr(custom_op, reg, {}).items()}
    except Exception:
        pass
    state["model registry"] = {k: v["target"] for k, v in _models().items()}
    for name, module in list(sys.modules.items()):
        if name == "vllm" or name.startswith("vllm."):
            try:
                state["module " + name] = {k: id(v) for k, v in vars(module).items()}
            except TypeError:
                pass
    return state

def _diff(before, after):
    changes = []
    for area in sorted(set(before) | set(after)):
        b, a = before.get(area, {}), after.get(area, {})
        for key in sorted(set(b) | set(a)):
            if key.startswith("__") and area.startswith("module "):
                continue
            if key not in b:
                changes.append(f"{area}: {key} added")
            elif key not in a:
                changes.append(f"{area}: {key} removed")
            elif a[key] != b[key]:
                changes.append(f"{area}: {key} replaced")
    return changes

has_torch = importlib.util.find_spec("torch") is not None
R["has_torch"] = has_torch
cuda_calls = []
if has_torch:
    import torch, torch.cuda
    _lazy_init = torch.cuda._lazy_init
    def _spy(*args, **kwargs):
        cuda_calls.append("".join(traceback.format_stack(limit=12)[:-1]))
        return _lazy_init(*args, **kwargs)
    torch.cuda._lazy_init = _spy

import vllm.plugins, vllm.platforms  # the engine's surface is imported before plugins run
_state()  # imports the registries the snapshots read, before the plugin runs
models_before = _models()
ep = target_entry_point(EP_GROUP, EP_NAME)  # scanning distributions is the harness's cost
t0 = time.perf_counter()
try:
    func = ep.load()
except BaseException as exc:
    R["load_error"] = _err(exc)
else:
    R["load_s"] = time.perf_counter() - t0
    R["callable"] = callable(func)
    t1 = time.perf_counter()
    try:
        func()
        R["first"] = None
    except BaseException as exc:
        R["first"] = _err(exc)
    R["call_s"] = time.perf_counter() - t1
    models_after = _models()
    new = sorted(set(models_after) - set(models_before))
    R["new_models"] = {
        a: {**models_after[a], "imported": models_after[a]["target"].split(":")[0] in sys.modules}
        for a in new
    }
    R["overwritten"] = sorted(
        a for a in models_before if a in models_after and models_after[a] != models_before[a]
    )
    if R["first"] is None:
        state1 = _state()
        mark = probe.mark()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                func()
                R["second"] = None
            except BaseException as exc:
                R["second"] = _err(exc)
        R["second_warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught] + [
            f"{r['level']} {r['logger']}: {r['message']}" for r in probe.records(since=mark)
            if r["level"] in ("WARNING", "ERROR", "CRITICAL")]
        R["state_changes"] = _diff(state1, _state())[:50]
    # Resolving imports the model modules, as a worker would; CUDA is fine there, so only the
    # plugin's own import and calls count.
    R["cuda_calls"] = list(cuda_calls)
    resolved = {}
    for arch in new:
        try:
            from vllm import ModelRegistry
            entry = ModelRegistry.models[arch]
            if getattr(entry, "module_name", None):
                cls = getattr(importlib.import_module(entry.module_name), entry.class_name)
            else:
                cls = getattr(entry, "model_cls", entry)
            if not isinstance(cls, type):
                resolved[arch] = f"resolves to {cls!r}, which is not a class"
            elif has_torch and not issubclass(cls, torch.nn.Module):
                name = f"{cls.__module__}.{cls.__qualname__}"
                resolved[arch] = f"resolves to {name}, not a torch.nn.Module"
            else:
                resolved[arch] = None
        except BaseException as exc:
            resolved[arch] = _err(exc)
    R["resolved"] = resolved
R.setdefault("cuda_calls", cuda_calls)
"""


def general_run(ctx: CheckContext) -> dict[str, Any]:
    """The shared probe's observations for this entry point; fails the check if it died."""
    assert ctx.entry_point is not None
    result = ctx.session.memo(f"general_run {ctx.entry_point.key}", lambda: ctx.probe(GENERAL_RUN))
    if not result.ok:
        fail(f"Loading and calling the plugin in a fresh process {result.describe()}")
    return result.values


def _called(ctx: CheckContext) -> dict[str, Any]:
    """Observations of a plugin that loaded and whose first call returned."""
    run = general_run(ctx)
    if "load_error" in run:
        fail(f"The entry point could not be loaded:\n{run['load_error']}")
    if not run["callable"]:
        fail("The entry point is not callable, so it could not be run.")
    if run["first"] is not None:
        fail(f"The plugin raised when called:\n{run['first']}")
    return run


@check(
    "general.loadable",
    title="the general plugin's entry point imports and resolves",
    fix="Make the entry point's module importable with only its declared dependencies, and "
    "point the entry point at an attribute that exists.",
)
def check_loadable(ctx: CheckContext) -> None:
    """vLLM logs a general plugin that fails to load at ERROR and starts without it: the
    feature silently disappears. The entry point must load in a fresh process."""
    run = general_run(ctx)
    if "load_error" in run:
        fail(f"Loading {ctx.entry_point.value!r} raised:\n{run['load_error']}")


@check(
    "general.callable",
    title="the general plugin is a callable that takes no arguments",
    fix="Point the entry point at a function such as `def register() -> None:` with no "
    "required parameters.",
)
def check_callable(ctx: CheckContext) -> None:
    """vLLM calls every general plugin as `func()`, with no arguments, in every process."""
    fact = ctx.loaded()
    if fact["kind"] == "other":
        fail(f"The entry point resolves to {fact['repr']}, which is not callable.")
    if fact.get("required_params"):
        fail(
            f"{fact['qualname']} requires argument(s) {', '.join(fact['required_params'])}; "
            "vLLM calls it with none."
        )


@check(
    "general.runs",
    title="calling the general plugin raises nothing",
    fix="Catch and log what can go wrong inside the plugin; an exception aborts vLLM's startup "
    "and the general plugins after it never run.",
)
def check_runs(ctx: CheckContext) -> None:
    """vLLM does not catch exceptions raised by a general plugin: one that raises stops the
    server from starting, in every process that loads plugins."""
    _called(ctx)


@check(
    "general.reentrant",
    title="a second call in the same process raises nothing, warns nothing and changes nothing",
    fix="Guard registrations (`if arch not in ModelRegistry.get_supported_archs()`, a module "
    "flag before monkey-patching, one `register_oot` at module import).",
)
def check_reentrant(ctx: CheckContext) -> None:
    """vLLM documents that general plugins must be re-entrant: they run in every process and
    can run more than once in one. A second call must not raise, log a warning or replace
    anything in the engine's registries or `vllm.*` modules."""
    run = _called(ctx)
    if run["second"] is not None:
        fail(f"The second call raised:\n{run['second']}")
    if run["second_warnings"]:
        fail("The second call warned:\n  " + "\n  ".join(run["second_warnings"]))
    if run["state_changes"]:
        fail("The second call changed engine state:\n  " + "\n  ".join(run["state_changes"]))


@check(
    "general.no-cuda-init",
    title="importing and running the plugin does not initialise CUDA",
    fix="Defer anything that touches a device (tensors on 'cuda', torch.cuda.* queries that "
    "initialise it) until a worker runs; register lazily.",
)
def check_no_cuda_init(ctx: CheckContext) -> None:
    """General plugins run in the API server and before workers are forked; a plugin that
    initialises CUDA there breaks forked workers and wastes GPU memory. The probe watches
    torch.cuda's lazy initialisation, so the check means something on a CPU-only torch too."""
    run = general_run(ctx)
    if not run["has_torch"]:
        skip("torch is not installed, so nothing can initialise CUDA")
    if run["cuda_calls"]:
        fail(
            f"CUDA initialisation was requested {len(run['cuda_calls'])} time(s); first from:\n"
            + run["cuda_calls"][0]
        )


@check(
    "general.lazy-model-registration",
    level="recommended",
    title="model architectures are registered as lazy 'module:Class' strings",
    fix='Register with `ModelRegistry.register_model("Arch", "pkg.module:Class")` so that '
    "nothing is imported until an engine needs the model.",
)
def check_lazy_model_registration(ctx: CheckContext) -> None:
    """Registering a class imports the model code (and torch, and sometimes CUDA) in every
    process that loads plugins; a lazy string defers it to the one process that needs it."""
    run = _called(ctx)
    if not run["new_models"]:
        skip("the plugin registers no model architectures")
    eager = [a for a, info in sorted(run["new_models"].items()) if not info["lazy"]]
    imported = [
        a for a, info in sorted(run["new_models"].items()) if info["lazy"] and info["imported"]
    ]
    if eager:
        fail(f"Registered as classes rather than lazy strings: {', '.join(eager)}.")
    if imported:
        fail(f"Registered lazily, but imported at registration: {', '.join(imported)}.")


@check(
    "general.registered-models-resolve",
    title="every architecture the plugin registers imports and is a model class",
    fix="Make each registered 'module:Class' importable and a torch.nn.Module subclass.",
)
def check_registered_models_resolve(ctx: CheckContext) -> None:
    """A lazy registration is only checked when a user loads that model, long after the plugin
    shipped. Each architecture the plugin registers must resolve to a model class now."""
    run = _called(ctx)
    if not run["new_models"]:
        skip("the plugin registers no model architectures")
    broken = {a: e for a, e in sorted(run["resolved"].items()) if e is not None}
    if broken:
        fail("\n".join(f"{arch}: {error}" for arch, error in broken.items()))


@check(
    "general.no-builtin-overwrite",
    level="recommended",
    title="the plugin does not replace the engine's built-in model architectures",
    fix="Register under a new architecture name, or document that the plugin replaces the "
    "built-in and why.",
)
def check_no_builtin_overwrite(ctx: CheckContext) -> None:
    """Overwriting a built-in architecture changes every user's model of that name as soon
    as the plugin is installed, with only a DEBUG log to show for it."""
    run = _called(ctx)
    if run["overwritten"]:
        fail(f"The plugin replaced built-in architecture(s): {', '.join(run['overwritten'])}.")


@check(
    "general.fast-import",
    level="recommended",
    title=f"loading and calling the plugin takes under {FAST_IMPORT_BUDGET_S:g} s",
    fix="Import heavy dependencies inside the functions that need them, not at module level "
    "of the entry point's module.",
)
def check_fast_import(ctx: CheckContext) -> None:
    """General plugins run in every vLLM process, so their import cost multiplies. The
    budget counts only the plugin's own work: the engine's imports (torch included) are done
    before the clock starts."""
    run = _called(ctx)
    spent = run["load_s"] + run["call_s"]
    if spent > FAST_IMPORT_BUDGET_S:
        fail(
            f"Loading took {run['load_s']:.2f} s and the call {run['call_s']:.2f} s "
            f"({spent:.2f} s > {FAST_IMPORT_BUDGET_S:g} s)."
        )
