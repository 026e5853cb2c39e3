"""General-plugin checks (`vllm.general_plugins`): load, call, call again, and what it changed.

All of them read one shared probe per entry point (`general_run`), which snapshots the
engine's registries and the attributes of every `vllm.*` module before the plugin runs,
after its first call and after a second call in the same process.
"""

from __future__ import annotations

from typing import Any

from conformance.checks import check, fail, skip
from conformance.context import CheckContext

#: Seconds that loading and calling one general plugin may take, not counting the engine's own
#: imports: its surface (torch included) is imported before the clock starts, and the `vllm.*`
#: modules the plugin imports are timed per module and subtracted.
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

# general.fast-import: loading the engine's own modules (and all they pull in) is the
# engine's cost, not the plugin's. Each outermost load of an engine module is timed, as
# `-X importtime` would, by wrapping the import system's per-module loader; modules loaded
# inside it are the engine's too. Main thread only: the plugin loads there.
import threading
_bootstrap = sys.modules.get("_frozen_importlib")
_plain_load = getattr(_bootstrap, "_load_unlocked", None)
ENGINE_ROOTS = {"vllm", sys.modules["vllm.platforms"].__name__.partition(".")[0]}
engine_imports, _engine_stack, _main = {}, [], threading.get_ident()

def _engine_load(spec):
    if (_engine_stack or threading.get_ident() != _main
            or spec.name.partition(".")[0] not in ENGINE_ROOTS):
        return _plain_load(spec)
    _engine_stack.append(spec.name)
    start = time.perf_counter()
    try:
        return _plain_load(spec)
    finally:
        engine_imports[spec.name] = engine_imports.get(spec.name, 0.0) + (
            time.perf_counter() - start)
        _engine_stack.pop()

def _accounting(on):
    if _plain_load is not None:
        _bootstrap._load_unlocked = _engine_load if on else _plain_load

R["engine_accounting"] = _plain_load is not None
_accounting(True)
t0 = time.perf_counter()
try:
    func = ep.load()
except BaseException as exc:
    _accounting(False)
    R["load_error"] = _err(exc)
else:
    R["load_s"] = time.perf_counter() - t0
    R["load_engine_s"] = sum(engine_imports.values())
    R["callable"] = callable(func)
    t1 = time.perf_counter()
    try:
        func()
        R["first"] = None
    except BaseException as exc:
        R["first"] = _err(exc)
    R["call_s"] = time.perf_counter() - t1
    _accounting(False)
    R["call_engine_s"] = sum(engine_imports.values()) - R["load_engine_s"]
    R["engine_imports"] = sorted(engine_imports.items(), key=lambda kv: -kv[1])[:5]
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
            cls = registered_model_class(arch)
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
    title=f"loading and calling the plugin takes under {FAST_IMPORT_BUDGET_S:g} s, not counting "
    "the engine's own modules it imports",
    fix="Import heavy dependencies inside the functions that need them, not at module level "
    "of the entry point's module.",
)
def check_fast_import(ctx: CheckContext) -> None:
    """General plugins run in every vLLM process, so their import cost multiplies. The
    budget counts only the plugin's own work: loading the entry point and calling it once,
    less the time spent loading the engine's own modules (`vllm.*`, and everything those
    pull in), which are timed per module as `-X importtime` does. The engine's surface
    (torch included) is imported before the clock starts. A third-party dependency the
    plugin imports, and whatever its module does at import, count."""
    problem = fast_import_problem(_called(ctx))
    if problem:
        fail(problem)


def fast_import_problem(run: dict[str, Any]) -> str | None:
    """Why the plugin's own load-and-call time is over budget, engine imports set apart
    (None if within it)."""
    timed = f"Loading took {run['load_s']:.2f} s and the call {run['call_s']:.2f} s"
    engine = run.get("load_engine_s", 0.0) + run.get("call_engine_s", 0.0)
    own = run["load_s"] + run["call_s"] - engine
    over = f"{own:.2f} s > {FAST_IMPORT_BUDGET_S:g} s"
    if own <= FAST_IMPORT_BUDGET_S:
        return None
    if not run.get("engine_accounting", False):
        return f"{timed} ({over}); imports could not be timed per module here, so all counts."
    if engine < 0.005:
        return f"{timed} ({over}), none of it importing the engine's modules."
    modules = ", ".join(f"{name} {secs:.2f} s" for name, secs in run.get("engine_imports", []))
    return (
        f"{timed}; {engine:.2f} s of it was the engine importing its own modules ({modules}), "
        f"which does not count. The plugin's own time: {over}."
    )


# --------------------------------------------------------------------------------------------
# Engine runs: the plugin's models built and run by a real engine on generated checkpoints.

#: Seconds an engine-run probe may take: importing torch and transformers, generating a tiny
#: checkpoint the first time (cached afterwards) and a few engine steps, with room to spare
#: for real vLLM, whose CPU engine takes 30-60 s to start on a loaded 2-core machine and
#: starts once per architecture in general.models-run.
ENGINE_RUN_TIMEOUT_S = 360.0
#: What an engine run needs besides the engine: the model stack and the checkpoint generators.
ENGINE_RUN_DEPS = ("torch", "transformers", "safetensors", "tokenizers")

#: Prepended to engine-run probes: which dependencies are missing, and tiny checkpoints.
ENGINE_RUN_PRELUDE = r"""
import importlib.util as _ilu
ENGINE_MISSING = [m for m in ENGINE_RUN_DEPS if _ilu.find_spec(m) is None]
probe.result["missing"] = ENGINE_MISSING

def tiny_checkpoint(family, architecture=None):
    # The harness's seeded generators (cached on disk), shipped as conformance.fixtures.
    from conformance.fixtures.generators.checkpoint import tiny_checkpoint as _tiny
    from conformance.fixtures.generators.checkpoint import with_architecture
    path = _tiny(family)
    return str(with_architecture(path, architecture) if architecture else path)

#: What every engine-run engine is built with. A KV cache of a given size: a tiny model needs
#: little, and with the size given real vLLM's CPU worker does not insist that 92% of the NUMA
#: node's memory be free at startup (it is not on a shared machine). Eager mode: real vLLM
#: starts in ~30 s instead of ~75 s without compiling (the reference is always eager).
SMALL_ENGINE = {"kv_cache_memory_bytes": 64 << 20, "enforce_eager": True}

def shut(llm):
    try:
        llm.shutdown()
    except Exception:
        pass
"""


def engine_run_code(code: str) -> str:
    """`code` preceded by the engine-run prelude (dependency check, checkpoint helpers)."""
    return f"ENGINE_RUN_DEPS = {ENGINE_RUN_DEPS!r}\n" + ENGINE_RUN_PRELUDE + code


def skip_if_engine_missing(values: dict[str, Any]) -> None:
    """Capability-skip an engine-run check whose probe found the model stack missing."""
    if values.get("missing"):
        skip(
            f"{', '.join(values['missing'])} not installed here, so no engine can run a model "
            "(install the engine extra: torch, transformers, safetensors, tokenizers)"
        )


MODELS_RUN = r"""
import importlib
R = probe.result
#: Family by the module a class of the MRO comes from (vllm.model_executor.models.<family>),
#: else by its name's prefix.
FAMILIES = {"opt": ("OPT",), "llama": ("Llama",), "gpt2": ("GPT2",)}

def _family(cls):
    for klass in cls.__mro__:
        last = klass.__module__.rsplit(".", 1)[-1]
        if last in FAMILIES:
            return last
    for klass in cls.__mro__:
        for family, prefixes in FAMILIES.items():
            if klass.__name__.startswith(prefixes):
                return family
    # A wrapper (an nn.Module holding the backbone, as vLLM's pooling models are written)
    # has no family class in its MRO: judge by the engine model modules its module imports.
    for value in vars(importlib.import_module(cls.__module__)).values():
        module = getattr(value, "__module__", None) or ""
        last = module.rsplit(".", 1)[-1]
        engine_owned = module.startswith(("vllm.", "reference."))  # the mounted reference
        if isinstance(value, type) and engine_owned and last in FAMILIES:
            return last
    return None

#: The pooling task asked of a pooling model: the first of these the engine supports.
POOLING_TASKS = ("embed", "token_embed", "classify", "token_classify", "score")

def _watch_forward(cls, shapes):
    # Records the shape of what `forward` returns. Real vLLM's CPU GEMM does not check shapes,
    # so hidden states of the wrong width can still "generate" garbage there.
    forward = cls.forward
    def watched(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        if len(shapes) < 4 and hasattr(out, "shape"):
            shapes.append(list(out.shape))
        return out
    cls.forward = watched

if not ENGINE_MISSING:
    import os
    # The model runs in this process (no engine-core process), where forward is watched.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import ModelRegistry
    before = set(ModelRegistry.get_supported_archs())
    try:
        target_entry_point(EP_GROUP, EP_NAME).load()()
    except BaseException as exc:
        R["plugin_error"] = _err(exc)
    new = sorted(set(ModelRegistry.get_supported_archs()) - before)
    R["new"] = new
    runs = {}
    for arch in new if "plugin_error" not in R else ():
        info = runs[arch] = {}
        try:
            cls = registered_model_class(arch)
            info["mro"] = [f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__][:6]
            info["family"] = _family(cls)
        except BaseException as exc:
            info["error"] = {"stage": "resolving the class", "error": _err(exc)}
            continue
        if info["family"] is None or (RUN is not None and arch not in RUN):
            continue
        info["shapes"] = []
        _watch_forward(cls, info["shapes"])
        stage = "generating the checkpoint"
        try:
            model = tiny_checkpoint(info["family"], arch)
            from vllm import LLM, SamplingParams
            stage = "building LLM(model=...)"
            llm = LLM(model=model, max_num_seqs=2, max_model_len=128,
                      distributed_executor_backend="uni", **SMALL_ENGINE)
            prompts = ["Hello", {"prompt_token_ids": [1, 5, 6]}]
            model_config = llm.llm_engine.vllm_config.model_config
            info["hidden"] = getattr(model_config.hf_config, "hidden_size", None)
            pooling = (getattr(model_config, "runner_type", None) == "pooling"
                       or bool(getattr(model_config, "is_pooling_model", False)))
            if pooling:
                supported = list(getattr(llm, "supported_tasks", None) or POOLING_TASKS)
                task = next((t for t in POOLING_TASKS if t in supported), supported[0])
                info["task"] = f"encode ({task})"
                stage = f"LLM.encode(2 prompts, pooling_task={task!r})"
                outs = llm.encode(prompts, pooling_task=task)
                info["outputs"] = [o.outputs.data is not None for o in outs]
            else:
                info["task"] = "generate"
                stage = "LLM.generate(2 prompts, max_tokens=2)"
                params = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
                outs = llm.generate(prompts, params)
                info["outputs"] = [list(o.outputs[0].token_ids) for o in outs]
                hf_config = model_config.hf_config
                info["vocab"] = getattr(hf_config, "vocab_size", None)
            shut(llm)
        except BaseException as exc:
            info["error"] = {"stage": stage, "error": _err(exc)}
    R["runs"] = runs
"""


def run_problem(arch: str, info: dict[str, Any]) -> str | None:
    """What is wrong with one architecture's engine run, or None if it ran as it should."""
    if "error" in info:
        return (
            f"{arch} ({info.get('family') or '?'} family): {info['error']['stage']} raised:\n"
            + (info["error"]["error"].rstrip())
        )
    if info.get("family") is None:
        return None
    hidden, shapes = info.get("hidden"), info.get("shapes") or []
    wrong = [shape for shape in shapes if hidden and shape and shape[-1] != hidden]
    if wrong:
        return (
            f"{arch}: forward returned hidden states of shape {wrong[0]}; the checkpoint's "
            f"hidden_size is {hidden}, so they must be [num_tokens, {hidden}]."
        )
    outputs = info.get("outputs") or []
    if len(outputs) != 2:
        return f"{arch}: {info['task']} returned {len(outputs)} output(s) for 2 prompts."
    if info["task"].startswith("encode"):
        if not all(outputs):
            return f"{arch}: encode returned outputs without data."
        return None
    vocab = info.get("vocab")
    for tokens in outputs:
        if len(tokens) != 2:
            return f"{arch}: generate asked for 2 tokens and produced {tokens}."
        if vocab and any(not 0 <= t < vocab for t in tokens):
            return f"{arch}: generate produced token ids {tokens}, outside 0..{vocab - 1}."
    return None


@check(
    "general.models-run",
    title="every architecture the plugin registers builds and runs a forward pass in the engine",
    fix="Make each registered model class construct from `vllm_config`, load its checkpoint's "
    "weights and return hidden states of shape [num_tokens, hidden_size] from `forward` and "
    "logits of shape [num_tokens, vocab_size] from `compute_logits` (pooling models: `pool`).",
)
def check_models_run(ctx: CheckContext) -> None:
    """Registering an architecture proves nothing about the model: a constructor that reads a
    config field the checkpoint lacks, or a `forward` that returns the wrong shape, only shows
    when a user serves it. For every architecture the plugin registers whose class derives
    from a family the harness can generate a checkpoint for (OPT, Llama, GPT-2, judged by the
    MRO), the probe writes a tiny seeded checkpoint naming that architecture, builds
    `LLM(model=...)` and generates 2 tokens for 2 prompts (`encode` for pooling models)."""
    assert ctx.entry_point is not None
    # The shared probe already knows whether there is anything to run: no engine otherwise.
    if not _called(ctx)["new_models"]:
        skip("the plugin registers no model architectures")
    # The engine runs in the probe's own process, so that `forward` can be watched. Real vLLM
    # cannot build a second engine in a process after the first: there, one probe lists the
    # architectures and one more runs each; the reference runs them all in the first.
    per_arch = ctx.engine != "reference"
    first = "RUN = []\n" if per_arch else "RUN = None\n"
    listed = ctx.session.memo(
        f"models_list {ctx.entry_point.key}",
        lambda: ctx.probe(engine_run_code(first + MODELS_RUN), timeout=ENGINE_RUN_TIMEOUT_S),
    )
    if not listed.ok:
        fail(f"Registering the plugin's models in a fresh process {listed.describe()}")
    run = listed.values
    skip_if_engine_missing(run)
    if "plugin_error" in run:
        fail(f"The plugin raised when called (see general.runs):\n{run['plugin_error']}")
    if not run["new"]:
        skip("the plugin registers no model architectures")
    runs = dict(run["runs"])
    for arch, info in sorted(runs.items()):
        if not per_arch or info.get("family") is None or "error" in info:
            continue
        one = ctx.session.memo(
            f"models_run {ctx.entry_point.key} {arch}",
            lambda arch=arch: ctx.probe(
                engine_run_code(f"RUN = [{arch!r}]\n" + MODELS_RUN), timeout=ENGINE_RUN_TIMEOUT_S
            ),
        )
        if not one.ok:
            fail(f"Running {arch} in a fresh process {one.describe()}")
        runs[arch] = one.values["runs"].get(arch, info)
    problems = [p for arch, info in sorted(runs.items()) if (p := run_problem(arch, info))]
    if problems:
        fail("\n".join(problems))
    if all(info.get("family") is None for info in runs.values()):
        shown = "; ".join(f"{a} ({' < '.join(i.get('mro', [])[:3])})" for a, i in runs.items())
        skip(
            "no registered architecture derives from a family the harness can generate a "
            f"checkpoint for (OPT, Llama, GPT-2): {shown}"
        )
