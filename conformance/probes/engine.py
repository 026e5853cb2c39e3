"""Probes of an engine (the `engine.*` checks): contract scenarios run against the engine itself.

Each function runs one scenario in a probe whose overlay holds the small plugins the check
wrote for it, and returns what the engine did. The engine is what is judged here: every call
into it goes through `runtime.call_plugin`/`runtime.attempt`, so what it raises (or what an
engine patch makes it raise) is blamed on the engine, never on the harness.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from conformance.probes import engine_run, runtime
from conformance.probes.data import ExceptionInfo


def _plugins() -> Any:
    return runtime.call_plugin(importlib.import_module, "vllm.plugins")


# --------------------------------------------------------------------------------------------
# Discovery and VLLM_PLUGINS.


@dataclass
class Discovery:
    #: Entry-point group -> the names (of those asked about) its loader returned, in order.
    groups: dict[str, list[str]] = field(default_factory=dict)


def discover_groups(names: list[str]) -> Discovery:
    """`load_plugins_by_group` for the general, platform, IO-processor and stat-logger groups,
    keeping the entry points in `names`."""
    plugins = _plugins()
    groups = [
        plugins.DEFAULT_PLUGINS_GROUP,
        plugins.PLATFORM_PLUGINS_GROUP,
        plugins.IO_PROCESSOR_PLUGINS_GROUP,
        plugins.STAT_LOGGER_PLUGINS_GROUP,
    ]
    obs = Discovery()
    for group in groups:
        loaded = runtime.call_plugin(plugins.load_plugins_by_group, group)
        obs.groups[group] = [n for n in loaded if n in names]
    return obs


@dataclass
class LogRecord:
    """A captured `vllm.*` log record."""

    level: str
    message: str
    #: The traceback logged with it (`logger.exception`), if any.
    exc: str | None = None


@dataclass
class GeneralLoad:
    #: The general plugins (of those asked about) that `load_plugins_by_group` returned.
    loaded: list[str] = field(default_factory=list)
    #: The modules (of those asked about) imported afterwards.
    imported: list[str] = field(default_factory=list)
    #: ERROR records logged while loading.
    errors: list[LogRecord] = field(default_factory=list)


def load_general_group(names: list[str], modules: list[str]) -> GeneralLoad:
    """Load the general group (without calling the plugins), as the engine does."""
    plugins = _plugins()
    mark = runtime.mark()
    loaded = runtime.call_plugin(plugins.load_plugins_by_group, plugins.DEFAULT_PLUGINS_GROUP)
    return GeneralLoad(
        loaded=[n for n in loaded if n in names],
        imported=sorted(m for m in modules if m in sys.modules),
        errors=[
            LogRecord(r["level"], r["message"], r["exc"])
            for r in runtime.records(since=mark)
            if r["level"] == "ERROR"
        ],
    )


def _calls(module: str) -> int:
    """How many times the counting plugin `module` was called (0 if never imported)."""
    found = sys.modules.get(module)
    return len(found.CALLS) if found is not None else 0


def load_general_twice(modules: list[str]) -> list[int]:
    """Call `load_general_plugins()` twice; how often each counting plugin ran."""
    plugins = _plugins()
    runtime.call_plugin(plugins.load_general_plugins)
    runtime.call_plugin(plugins.load_general_plugins)
    return [_calls(m) for m in modules]


@dataclass
class RaisingLoad:
    #: What the first `load_general_plugins()` raised.
    first: ExceptionInfo | None = None
    #: What the second call raised (it should do nothing at all).
    second: ExceptionInfo | None = None
    #: `vllm.*` log records of the second call.
    second_records: int = 0
    #: Calls of the counting plugin discovered after the raising one.
    later_calls: int = 0


def load_general_raising(later: str) -> RaisingLoad:
    """Call `load_general_plugins()` with a plugin that raises, then call it again."""
    plugins = _plugins()
    obs = RaisingLoad()
    _, obs.first = runtime.attempt(plugins.load_general_plugins)
    mark = runtime.mark()
    _, obs.second = runtime.attempt(plugins.load_general_plugins)
    obs.second_records = len(runtime.records(since=mark))
    obs.later_calls = _calls(later)
    return obs


@dataclass
class EndpointLoad:
    #: The class name of each plugin `load_endpoint_plugins` returned, in order; None if it
    #: raised.
    loaded: list[str] | None = None
    error: ExceptionInfo | None = None
    #: Whether the scenario's plugin module was imported.
    imported: bool = False
    #: WARNING and ERROR records logged while loading.
    records: list[LogRecord] = field(default_factory=list)


def load_endpoint_group(module: str, supported_tasks: list[str] | None) -> EndpointLoad:
    """`load_endpoint_plugins(supported_tasks)`, as the API server calls it at start-up."""
    plugins = _plugins()
    mark = runtime.mark()
    tasks = None if supported_tasks is None else tuple(supported_tasks)
    obs = EndpointLoad()
    found, obs.error = runtime.attempt(plugins.load_endpoint_plugins, tasks)
    if obs.error is None:
        obs.loaded = [type(p).__name__ for p in found]
    obs.imported = module in sys.modules
    obs.records = [
        LogRecord(r["level"], r["message"], r["exc"])
        for r in runtime.records(since=mark)
        if r["level"] in ("WARNING", "ERROR")
    ]
    return obs


# --------------------------------------------------------------------------------------------
# Platforms.


@dataclass
class PlatformResolution:
    #: `module.QualName` of `type(current_platform)`; None if resolving raised.
    cls: str | None = None
    error: ExceptionInfo | None = None
    #: Scenario modules (`plat_*`) imported once resolved.
    imported: list[str] = field(default_factory=list)
    #: Calls of `counted`'s detection function.
    calls: int = 0


def resolve_platform(counted: str | None = None) -> PlatformResolution:
    """Resolve `vllm.platforms.current_platform` (and count `counted`'s detection calls)."""
    platforms = runtime.call_plugin(importlib.import_module, "vllm.platforms")
    obs = PlatformResolution()
    current, obs.error = runtime.attempt(getattr, platforms, "current_platform")
    if obs.error is None:
        cls = type(current)
        obs.cls = f"{cls.__module__}.{cls.__qualname__}"
    obs.imported = sorted(m for m in sys.modules if m.startswith("plat_"))
    if counted is not None:
        obs.calls = _calls(counted)
    return obs


def import_platforms(module: str) -> bool:
    """Import `vllm.platforms` and its Platform classes; whether `module` got imported."""
    platforms = runtime.call_plugin(importlib.import_module, "vllm.platforms")
    runtime.call_plugin(getattr, platforms, "Platform")
    runtime.call_plugin(getattr, platforms, "PlatformEnum")
    return module in sys.modules


# --------------------------------------------------------------------------------------------
# Stat loggers, IO processors, LoRA resolvers, custom ops, logits processors.


@dataclass
class StatLoggerFactories:
    #: `__name__` of each factory the engine loaded; None if loading raised.
    factories: list[str] | None = None
    error: ExceptionInfo | None = None


def load_stat_loggers() -> StatLoggerFactories:
    """`load_stat_logger_plugin_factories()`."""
    loggers = runtime.call_plugin(importlib.import_module, "vllm.v1.metrics.loggers")
    obs = StatLoggerFactories()
    found, obs.error = runtime.attempt(loggers.load_stat_logger_plugin_factories)
    if obs.error is None:
        obs.factories = [getattr(f, "__name__", repr(f)) for f in found]
    return obs


@dataclass
class IOPick:
    #: The class name of the processor chosen (None: none).
    chosen: str | None = None
    error: ExceptionInfo | None = None


def _stand_in_config(field_value: str | None) -> Any:
    """Only the attributes selection reads: the same stand-in works on every engine."""
    fields = {"io_processor_plugin": field_value} if field_value else {}
    hf_config = SimpleNamespace(to_dict=lambda: dict(fields), **fields)
    return SimpleNamespace(model_config=SimpleNamespace(hf_config=hf_config))


def pick_io_processors(cases: list[list[str | None]]) -> list[IOPick]:
    """`get_io_processor(config, None, init)` for each `[init, hf_config field]` case."""
    io = runtime.call_plugin(importlib.import_module, "vllm.plugins.io_processors")
    picks = []
    for init, field_value in cases:
        pick = IOPick()
        proc, pick.error = runtime.attempt(
            io.get_io_processor, _stand_in_config(field_value), None, init
        )
        if pick.error is None and proc is not None:
            pick.chosen = type(proc).__name__
        picks.append(pick)
    return picks


@dataclass
class ResolverRegistry:
    #: Whether registering a name a second time logged a WARNING.
    warned: bool = False
    #: Whether the second registration replaced the first.
    kept_second: bool = False
    #: What looking up an unknown name raised.
    unknown: ExceptionInfo | None = None


def lora_resolver_registry() -> ResolverRegistry:
    """Register one name twice, then look up a name never registered."""
    resolver = runtime.call_plugin(importlib.import_module, "vllm.lora.resolver")
    registry = resolver.LoRAResolverRegistry

    class Resolver(resolver.LoRAResolver):  # type: ignore[name-defined,misc]
        async def resolve_lora(self, base_model_name: str, lora_name: str) -> None:
            return None

    first, second = Resolver(), Resolver()
    runtime.call_plugin(registry.register_resolver, "conformance", first)
    mark = runtime.mark()
    runtime.call_plugin(registry.register_resolver, "conformance", second)
    obs = ResolverRegistry()
    obs.warned = any(r["level"] == "WARNING" for r in runtime.records(since=mark))
    obs.kept_second = runtime.call_plugin(registry.get_resolver, "conformance") is second
    _, obs.unknown = runtime.attempt(registry.get_resolver, "no-such-resolver")
    return obs


@dataclass
class CustomOp:
    has_torch: bool = False
    #: The class a `RotaryEmbedding(...)` built after `load_general_plugins()` is.
    cls: str | None = None
    #: Its `addition_config` attribute (the dummy out-of-tree op sets it to True).
    addition_config: Any = False
    #: What building the `VllmConfig` ops are built under raised (no op was built then): the
    #: engine refuses this machine (vLLM 0.34's CPU platform on x86 without triton-cpu).
    config_error: ExceptionInfo | None = None


def build_rotary_embedding() -> CustomOp:
    """Load the general plugins, then build an in-tree RotaryEmbedding (under a default
    `VllmConfig`; if that cannot be built, say why and build nothing)."""
    obs = CustomOp(has_torch=importlib.util.find_spec("torch") is not None)
    if not obs.has_torch:
        return obs
    import torch

    runtime.call_plugin(_plugins().load_general_plugins)
    config = runtime.call_plugin(importlib.import_module, "vllm.config")
    rotary = runtime.call_plugin(
        importlib.import_module, "vllm.model_executor.layers.rotary_embedding"
    )
    # Ops are built while an engine config is current (real vLLM asserts it).
    vllm_config, obs.config_error = runtime.attempt(config.VllmConfig)
    if obs.config_error is not None:
        return obs
    with runtime.call_plugin(config.set_current_vllm_config, vllm_config):
        op = runtime.call_plugin(rotary.RotaryEmbedding, 16, 16, 16, 10000, True, torch.float32)
    obs.cls = type(op).__name__
    obs.addition_config = getattr(op, "addition_config", False)
    return obs


#: The logits-processor plugin loader of each interface, (module, function): the V1 runner's
#: (deleted in vLLM 0.34 with the runner) and Model Runner V2's.
LOGITS_LOADERS = {
    "v1": ("vllm.v1.sample.logits_processor", "_load_logitsprocs_plugins"),
    "v2": ("vllm.v1.worker.gpu.sample.logits_processor.loader", "_load_v2_logitsprocs_plugins"),
}


def load_logits_plugins(interface: str = "v1") -> list[str] | None:
    """`__name__` of each class `interface`'s logits-processor plugin loader returns (None: the
    engine has no such loader)."""
    module_name, function = LOGITS_LOADERS[interface]
    module = runtime.call_plugin(importlib.import_module, module_name)
    loader = getattr(module, function, None)
    if loader is None:
        return None
    return [c.__name__ for c in runtime.call_plugin(loader)]


# --------------------------------------------------------------------------------------------
# Ray workers.


@dataclass
class RayRun:
    #: Model-stack modules not installed (no engine can run a model without them).
    missing: list[str] = field(default_factory=list)
    no_ray: bool = False
    #: The driver's pid.
    driver: int | None = None
    #: What building the engine raised.
    engine_error: ExceptionInfo | None = None
    #: What generating raised.
    generate_error: ExceptionInfo | None = None
    tokens: int | None = None


def run_ray_workers(variables: dict[str, str]) -> RayRun:
    """Start a local Ray cluster, then set `variables` and build a tensor-parallel (2) engine
    with the Ray executor in this process, and generate 2 tokens."""
    obs = RayRun(
        missing=engine_run.missing_engine_deps(), no_ray=importlib.util.find_spec("ray") is None
    )
    if obs.no_ray or obs.missing:
        return obs
    import ray

    # Started before the variables are set: the workers can get them only from the executor.
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        os.environ.update(variables)
        # The executor in this process, where Ray is initialized (vLLM: no engine-core process).
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        vllm = runtime.call_plugin(importlib.import_module, "vllm")
        obs.driver = os.getpid()
        llm, obs.engine_error = runtime.attempt(
            vllm.LLM,
            model=engine_run.tiny_checkpoint("llama"),
            tensor_parallel_size=2,
            distributed_executor_backend="ray",
            max_model_len=128,
            max_num_seqs=2,
            **engine_run.SMALL_ENGINE,
        )
        if llm is not None:
            try:
                params = vllm.SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
                outputs, obs.generate_error = runtime.attempt(llm.generate, "Hello", params)
                if outputs is not None:
                    obs.tokens = len(outputs[0].outputs[0].token_ids)
            finally:
                engine_run.shut(llm)
    finally:
        ray.shutdown()
    return obs
