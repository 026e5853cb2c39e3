"""Probes of general plugins (`vllm.general_plugins`): load, call, call again, and what changed.

`observe_general` snapshots the engine's registries and the attributes of every `vllm.*`
module before the plugin runs, after its first call and after a second call in the same
process; `observe_models` builds an engine for each architecture the plugin registers.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conformance.probes import engine_run, runtime
from conformance.probes.data import ExceptionInfo


@dataclass
class NewModel:
    """An architecture the plugin registered."""

    lazy: bool
    target: str
    #: For a lazy registration: whether its module was imported by registering it.
    imported: bool = False


@dataclass
class GeneralObservation:
    has_torch: bool = False
    #: Whether engine imports could be timed per module (the import system's loader wrapped).
    engine_accounting: bool = False
    load_error: ExceptionInfo | None = None
    load_s: float = 0.0
    load_engine_s: float = 0.0
    callable: bool = False
    #: Whether the first call was made (the entry point loaded and is callable).
    called: bool = False
    first: ExceptionInfo | None = None
    call_s: float = 0.0
    call_engine_s: float = 0.0
    #: The slowest engine modules loaded while the plugin loaded and ran: name -> seconds.
    engine_imports: dict[str, float] = field(default_factory=dict)
    new_models: dict[str, NewModel] = field(default_factory=dict)
    overwritten: list[str] = field(default_factory=list)
    second: ExceptionInfo | None = None
    second_warnings: list[str] = field(default_factory=list)
    state_changes: list[str] = field(default_factory=list)
    #: Stacks from which CUDA's lazy initialisation was requested.
    cuda_calls: list[str] = field(default_factory=list)
    #: Architecture -> why its registered class is unusable (exceptions in `resolve_errors`).
    resolve_problems: dict[str, str] = field(default_factory=dict)
    resolve_errors: dict[str, ExceptionInfo] = field(default_factory=dict)


def _entry(value: Any) -> NewModel:
    module = getattr(value, "module_name", None)
    if module is not None:
        return NewModel(lazy=True, target=f"{module}:{getattr(value, 'class_name', '?')}")
    cls = getattr(value, "model_cls", value)
    name = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls)}"
    return NewModel(lazy=False, target=f"{name}@{id(cls)}")


def registered_models() -> dict[str, NewModel]:
    """Every architecture in the engine's ModelRegistry, with how it is registered."""
    try:
        from vllm import ModelRegistry

        entries = getattr(ModelRegistry, "models", None) or {}
        return {arch: _entry(entries.get(arch)) for arch in ModelRegistry.get_supported_archs()}
    except Exception as exc:
        return {"<unavailable>": NewModel(lazy=False, target=repr(exc))}


def engine_state() -> dict[str, dict[str, Any]]:
    """Identity snapshot of the engine's registries and every `vllm.*` module's attributes."""
    # Registries first: importing them adds modules, which the module scan below then sees.
    state: dict[str, dict[str, Any]] = {}
    try:
        from vllm.lora.resolver import LoRAResolverRegistry

        state["lora resolvers"] = {k: id(v) for k, v in LoRAResolverRegistry.resolvers.items()}
    except Exception:
        pass
    try:
        from vllm.model_executor import custom_op

        for registry in ("op_registry", "op_registry_oot"):
            entries = getattr(custom_op, registry, {})
            state["custom ops " + registry] = {k: id(v) for k, v in entries.items()}
    except Exception:
        pass
    state["model registry"] = {k: v.target for k, v in registered_models().items()}
    for name, module in list(sys.modules.items()):
        if name == "vllm" or name.startswith("vllm."):
            try:
                state["module " + name] = {k: id(v) for k, v in vars(module).items()}
            except TypeError:
                pass
    return state


def state_diff(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> list[str]:
    """What was added, removed or replaced between two `engine_state` snapshots."""
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


class EngineImportClock:
    """Times each outermost load of an engine module (`vllm.*`, and the mounted engine's own
    package), as `-X importtime` would, by wrapping the import system's per-module loader;
    modules loaded inside one count as the engine's too. Main thread only: plugins load there.
    """

    def __init__(self) -> None:
        self._bootstrap = sys.modules.get("_frozen_importlib")
        self._plain = getattr(self._bootstrap, "_load_unlocked", None)
        engine_package = sys.modules["vllm.platforms"].__name__.partition(".")[0]
        self.roots = {"vllm", engine_package}
        self.seconds: dict[str, float] = {}
        self._stack: list[str] = []
        self._main = threading.get_ident()

    @property
    def available(self) -> bool:
        return self._plain is not None

    def total(self) -> float:
        return sum(self.seconds.values())

    def _load(self, spec: Any) -> Any:
        plain = self._plain
        assert plain is not None
        if (
            self._stack
            or threading.get_ident() != self._main
            or spec.name.partition(".")[0] not in self.roots
        ):
            return plain(spec)
        self._stack.append(spec.name)
        start = time.perf_counter()
        try:
            return plain(spec)
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[spec.name] = self.seconds.get(spec.name, 0.0) + elapsed
            self._stack.pop()

    def running(self, on: bool) -> None:
        if self._plain is not None:
            self._bootstrap._load_unlocked = self._load if on else self._plain  # type: ignore[union-attr]


def _watch_cuda(calls: list[str]) -> None:
    """Record the stack of every request to initialise CUDA (works on a CPU-only torch too)."""
    import torch
    import torch.cuda

    lazy_init = torch.cuda._lazy_init

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append("".join(traceback.format_stack(limit=12)[:-1]))
        return lazy_init(*args, **kwargs)

    torch.cuda._lazy_init = spy


def _resolve(obs: GeneralObservation, arch: str, has_torch: bool) -> None:
    cls, error = runtime.attempt(runtime.registered_model_class, arch)
    if error is not None:
        obs.resolve_errors[arch] = error
    elif not isinstance(cls, type):
        obs.resolve_problems[arch] = f"resolves to {cls!r}, which is not a class"
    elif has_torch:
        import torch

        if not issubclass(cls, torch.nn.Module):
            name = f"{cls.__module__}.{cls.__qualname__}"
            obs.resolve_problems[arch] = f"resolves to {name}, not a torch.nn.Module"


def _call_again(obs: GeneralObservation, func: Callable[[], Any]) -> None:
    before = engine_state()
    mark = runtime.mark()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, obs.second = runtime.attempt(func)
    obs.second_warnings = [f"{w.category.__name__}: {w.message}" for w in caught] + [
        f"{r['level']} {r['logger']}: {r['message']}"
        for r in runtime.records(since=mark)
        if r["level"] in ("WARNING", "ERROR", "CRITICAL")
    ]
    obs.state_changes = state_diff(before, engine_state())[:50]


def observe_general(group: str, name: str) -> GeneralObservation:
    """Load the general plugin, call it, call it again; what it registered and changed."""
    obs = GeneralObservation(has_torch=importlib.util.find_spec("torch") is not None)
    if obs.has_torch:
        _watch_cuda(obs.cuda_calls)
    if importlib.util.find_spec("transformers") is not None:
        # vLLM imports transformers in every process before a plugin loads (its configs are
        # built on it); the reference only when it needs it. Imported here, it is the
        # engine's cost on both engines, not the plugin's (general.fast-import).
        import transformers  # noqa: F401
    import vllm.platforms
    import vllm.plugins  # noqa: F401

    engine_state()  # imports the registries the snapshots read, before the plugin runs
    models_before = registered_models()
    entry_point = runtime.target_entry_point(group, name)  # scanning is the harness's cost
    clock = EngineImportClock()
    obs.engine_accounting = clock.available
    clock.running(True)
    started = time.perf_counter()
    func, obs.load_error = runtime.attempt(entry_point.load)
    if obs.load_error is not None:
        clock.running(False)
        return obs
    obs.load_s = time.perf_counter() - started
    obs.load_engine_s = clock.total()
    obs.callable = callable(func)
    if not obs.callable:
        clock.running(False)
        return obs
    obs.called = True
    started = time.perf_counter()
    _, obs.first = runtime.attempt(func)
    obs.call_s = time.perf_counter() - started
    clock.running(False)
    obs.call_engine_s = clock.total() - obs.load_engine_s
    slowest = sorted(clock.seconds.items(), key=lambda kv: -kv[1])[:5]
    obs.engine_imports = dict(slowest)
    models_after = registered_models()
    for arch in sorted(set(models_after) - set(models_before)):
        model = models_after[arch]
        model.imported = model.target.split(":")[0] in sys.modules
        obs.new_models[arch] = model
    obs.overwritten = sorted(
        a for a in models_before if a in models_after and models_after[a] != models_before[a]
    )
    if obs.first is None:
        _call_again(obs, func)
    # Resolving imports the model modules, as a worker would; CUDA is fine there, so only the
    # plugin's own import and calls count.
    cuda_calls = list(obs.cuda_calls)
    for arch in obs.new_models:
        _resolve(obs, arch, obs.has_torch)
    obs.cuda_calls = cuda_calls
    return obs


# --------------------------------------------------------------------------------------------
# Engine runs: the plugin's models built and run by an engine on generated checkpoints.

#: Family by the module a class of the MRO comes from (vllm.model_executor.models.<family>),
#: else by its name's prefix.
FAMILIES = {"opt": ("OPT",), "llama": ("Llama",), "gpt2": ("GPT2",)}
#: The pooling task asked of a pooling model: the first of these the engine supports.
POOLING_TASKS = ("embed", "token_embed", "classify", "token_classify", "score")


@dataclass
class ModelRun:
    """One registered architecture built and run by the engine."""

    mro: list[str] = field(default_factory=list)
    family: str | None = None
    #: The step that raised ("resolving the class", "building LLM(model=...)", ...).
    stage: str | None = None
    error: ExceptionInfo | None = None
    hidden: int | None = None
    vocab: int | None = None
    task: str = ""
    #: Shapes of what `forward` returned (the first few calls).
    shapes: list[list[int]] = field(default_factory=list)
    #: generate: the token ids of each prompt; encode: whether each output had data.
    outputs: list[Any] = field(default_factory=list)


@dataclass
class ModelsObservation:
    missing: list[str] = field(default_factory=list)
    plugin_error: ExceptionInfo | None = None
    new: list[str] = field(default_factory=list)
    runs: dict[str, ModelRun] = field(default_factory=dict)


def model_family(cls: type) -> str | None:
    """Which checkpoint family (opt, llama, gpt2) a model class derives from, if any."""
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


def _watch_forward(cls: Any, shapes: list[list[int]]) -> None:
    # Records the shape of what `forward` returns. Real vLLM's CPU GEMM does not check shapes,
    # so hidden states of the wrong width can still "generate" garbage there.
    forward = cls.forward

    def watched(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = forward(self, *args, **kwargs)
        if len(shapes) < 4 and hasattr(out, "shape"):
            shapes.append(list(out.shape))
        return out

    cls.forward = watched


def _run_model(run: ModelRun, arch: str) -> None:
    from vllm import LLM, SamplingParams

    run.stage = "generating the checkpoint"
    model = engine_run.tiny_checkpoint(run.family or "", arch)
    run.stage = "building LLM(model=...)"
    llm = runtime.call_plugin(LLM, model=model, **engine_run.UNIPROCESS_ENGINE)
    prompts: list[Any] = ["Hello", {"prompt_token_ids": [1, 5, 6]}]
    model_config = llm.llm_engine.vllm_config.model_config
    run.hidden = getattr(model_config.hf_config, "hidden_size", None)
    pooling = getattr(model_config, "runner_type", None) == "pooling" or bool(
        getattr(model_config, "is_pooling_model", False)
    )
    if pooling:
        supported = list(getattr(llm, "supported_tasks", None) or POOLING_TASKS)
        task = next((t for t in POOLING_TASKS if t in supported), supported[0])
        run.task = f"encode ({task})"
        run.stage = f"LLM.encode(2 prompts, pooling_task={task!r})"
        outs = runtime.call_plugin(llm.encode, prompts, pooling_task=task)
        run.outputs = [o.outputs.data is not None for o in outs]
    else:
        run.task = "generate"
        run.stage = "LLM.generate(2 prompts, max_tokens=2)"
        params = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
        outs = runtime.call_plugin(llm.generate, prompts, params)
        run.outputs = [list(o.outputs[0].token_ids) for o in outs]
        run.vocab = getattr(model_config.hf_config, "vocab_size", None)
    run.stage = None
    engine_run.shut(llm)


@runtime.warm
def observe_models(group: str, name: str, run: list[str] | None = None) -> ModelsObservation:
    """Register the plugin's models and build and run each architecture in `run` (all if
    None; none if empty) in this process, where `forward` can be watched."""
    import os

    obs = ModelsObservation(missing=engine_run.missing_engine_deps())
    if obs.missing:
        return obs
    # The model runs in this process (no engine-core process), where forward is watched.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import ModelRegistry

    before = set(ModelRegistry.get_supported_archs())
    _, obs.plugin_error = runtime.attempt(lambda: runtime.load_entry_point(group, name)())
    obs.new = sorted(set(ModelRegistry.get_supported_archs()) - before)
    if obs.plugin_error is not None:
        return obs
    for arch in obs.new:
        info = obs.runs[arch] = ModelRun()
        cls, info.error = runtime.attempt(runtime.registered_model_class, arch)
        if info.error is not None:
            info.stage = "resolving the class"
            continue
        info.mro = [f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__][:6]
        info.family = model_family(cls)
        if info.family is None or (run is not None and arch not in run):
            continue
        _watch_forward(cls, info.shapes)
        try:
            _run_model(info, arch)
        except BaseException as exc:
            info.error = runtime.capture(exc)
    return obs
