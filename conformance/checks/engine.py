"""Engine checks (`engine.*`): does an engine implement vLLM 0.32's plugin contract?

They certify an engine — the reference, or the real vLLM with `--engine vllm` — by running
contract scenarios with small plugins made on the spot (and the bundled fixtures) in probes.
The scenarios are the functions of `conformance.probes.engine`; each check writes the plugins
of its scenarios into overlays and judges the typed observations.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from conformance.checks.logits import v1_removed
from conformance.context import CheckContext, observation, probe_name
from conformance.framework import check, fail, fail_on, inconclusive, skip
from conformance.overlay import Overlay
from conformance.probe import run_probe
from conformance.probes import engine as scenarios
from conformance.probes import worker_extension as worker_probe
from conformance.probes.data import ExceptionInfo

T = TypeVar("T")

GENERAL = "vllm.general_plugins"
PLATFORM = "vllm.platform_plugins"
STAT_LOGGER = "vllm.stat_logger_plugins"
IO_PROCESSOR = "vllm.io_processor_plugins"
LOGITS = "vllm.logits_processors"
ENDPOINT = "vllm.endpoint_plugins"

COUNTING = "CALLS = []\ndef register():\n    CALLS.append(1)\n"

Plugin = tuple[str, dict[str, dict[str, str]], dict[str, str]]


ACTIVE = "    return __name__ + '.P'"


def _platform_plugin(name: str, body: str) -> Plugin:
    """Distribution `plat-<name>` with platform entry point `<name>`, `plat_<name>:detect`: a
    detection function that counts its calls in `CALLS`, then runs `body`."""
    module = f"plat_{name}"
    source = (
        "from vllm.platforms.interface import Platform, PlatformEnum\n"
        f"class P(Platform):\n    _enum = PlatformEnum.OOT\n    device_name = {name!r}\n"
        "    device_type = 'cpu'\nCALLS = []\n"
        f"def detect():\n    CALLS.append(1)\n{body}\n"
    )
    return (f"plat-{name}", {PLATFORM: {name: f"{module}:detect"}}, {module: source})


@contextmanager
def _overlays(*plugins: Plugin) -> Iterator[list[Overlay]]:
    """One overlay per plugin, in order, so discovery order is sys.path order."""
    made = []
    try:
        for dist, entry_points, modules in plugins:
            overlay = Overlay()
            files = {f"{m.replace('.', '/')}.py": textwrap.dedent(s) for m, s in modules.items()}
            overlay.add_inline(dist, files, entry_points)
            made.append(overlay)
        yield made
    finally:
        for overlay in made:
            overlay.cleanup()


def _run(
    ctx: CheckContext,
    function: Callable[..., T],
    scenario: str,
    overlays: Any = None,
    *,
    env: dict[str, str | None] | None = None,
    timeout: float | None = None,
    **args: Any,
) -> T:
    """The observation `function(**args)` returns in a probe of the engine under test, with
    `overlays` first on `sys.path` and the session's engine patch applied. A probe that did not
    return fails the check (`ProbeFailed`), or is the harness's error (`HarnessError`)."""
    result = run_probe(
        call=probe_name(function),
        args=args,
        patch=ctx.session.engine_patch,
        engine=ctx.engine,
        overlay=overlays,
        env=env,
        timeout=timeout or ctx.session.timeout,
        coverage=ctx.session.coverage,
        contract=ctx.session.contract,
    )
    return observation(result, function, f"for scenario '{scenario}'")


def _expect(scenario: str, observed: Any, expected: Any) -> None:
    if observed != expected:
        fail(f"Scenario '{scenario}': expected {expected!r}, observed {observed!r}.")


TWO_GENERAL: tuple[Plugin, Plugin] = (
    ("plugin-a", {GENERAL: {"a": "plug_a:register"}}, {"plug_a": COUNTING}),
    ("plugin-b", {GENERAL: {"b": "plug_b:register"}}, {"plug_b": COUNTING}),
)


def _load_general(
    ctx: CheckContext, scenario: str, overlays: list[Overlay], env: dict[str, str | None] | None
) -> scenarios.GeneralLoad:
    return _run(
        ctx,
        scenarios.load_general_group,
        scenario,
        overlays,
        env=env,
        names=["a", "b"],
        modules=["plug_a", "plug_b"],
    )


@check(
    "engine.discovery-per-group",
    title="each entry-point group is discovered on its own",
    fix="Discover entry points with importlib.metadata per group as vLLM does.",
)
def check_discovery_per_group(ctx: CheckContext) -> None:
    """A plugin declaring one entry point in each group is found in each, and only there."""
    eps = {
        GENERAL: {"g1": "multi:f"},
        PLATFORM: {"p1": "multi:none"},
        IO_PROCESSOR: {"io1": "multi:none"},
        STAT_LOGGER: {"s1": "multi:f"},
    }
    module = "def f(): pass\ndef none(): return None\n"
    scenario = "one plugin in four groups"
    with _overlays(("multi-group", eps, {"multi": module})) as overlays:
        found = _run(
            ctx, scenarios.discover_groups, scenario, overlays, names=["g1", "p1", "io1", "s1"]
        )
    _expect(
        scenario,
        found.groups,
        {GENERAL: ["g1"], PLATFORM: ["p1"], IO_PROCESSOR: ["io1"], STAT_LOGGER: ["s1"]},
    )


@check(
    "engine.filter-semantics",
    title="VLLM_PLUGINS is None when unset, else split on ',' with no stripping, matched exactly",
    fix="Parse VLLM_PLUGINS as os.environ['VLLM_PLUGINS'].split(',') and match names exactly.",
)
def check_filter_semantics(ctx: CheckContext) -> None:
    """Unset loads all; "" loads none; "a, b" loads only a (" b" is not "b"); "b,," loads b;
    an unknown name loads nothing; matching is case-sensitive."""
    cases = {
        None: ["a", "b"],
        "a": ["a"],
        "": [],
        "a, b": ["a"],
        "b,,": ["b"],
        "unknown": [],
        "A": [],
    }
    with _overlays(*TWO_GENERAL) as overlays:
        for raw, expected in cases.items():
            scenario = f"VLLM_PLUGINS={raw!r}"
            loaded = _load_general(ctx, scenario, overlays, {"VLLM_PLUGINS": raw})
            _expect(scenario, loaded.loaded, expected)


@check(
    "engine.filter-before-import",
    title="plugins that VLLM_PLUGINS leaves out are never imported",
    fix="Apply the VLLM_PLUGINS filter before ep.load().",
)
def check_filter_before_import(ctx: CheckContext) -> None:
    """Filtering by name happens before loading, so an excluded plugin's module never runs."""
    with _overlays(*TWO_GENERAL) as overlays:
        loaded = _load_general(ctx, "VLLM_PLUGINS=a", overlays, {"VLLM_PLUGINS": "a"})
    _expect("VLLM_PLUGINS=a", loaded.imported, ["plug_a"])


@check(
    "engine.general-once-per-process",
    title="load_general_plugins() runs each general plugin once per process",
    fix="Guard load_general_plugins with a module flag set before the plugins run.",
)
def check_general_once(ctx: CheckContext) -> None:
    """Calling load_general_plugins() twice runs every plugin exactly once."""
    with _overlays(*TWO_GENERAL) as overlays:
        calls = _run(
            ctx, scenarios.load_general_twice, "two calls", overlays, modules=["plug_a", "plug_b"]
        )
    _expect("two calls", calls, [1, 1])


@check(
    "engine.load-error-isolated",
    title="a plugin that fails to load is logged at ERROR and skipped; the others load",
    fix="Catch exceptions from ep.load(), log them with logger.exception, and go on.",
)
def check_load_error_isolated(ctx: CheckContext) -> None:
    """An import error in one plugin costs only that plugin, with its traceback logged."""
    broken: Plugin = (
        "broken",
        {GENERAL: {"broken": "broken_mod:register"}},
        {"broken_mod": "raise ImportError('missing dependency xyz')\n"},
    )
    with _overlays(broken, TWO_GENERAL[0]) as overlays:
        loaded = _load_general(ctx, "one broken plugin", overlays, None)
    _expect("one broken plugin: loaded", loaded.loaded, ["a"])
    _expect(
        "one broken plugin: ERROR records",
        [(r.message, "xyz" in (r.exc or "")) for r in loaded.errors],
        [("Failed to load plugin broken", True)],
    )


@check(
    "engine.register-error-propagates",
    title="an exception raised by a general plugin propagates; later calls are silent no-ops",
    fix="Call general plugins outside any try, after setting the once-per-process flag.",
    # A second call can be a no-op only where the once-per-process guard works.
    requires=("engine.general-once-per-process",),
)
def check_register_error_propagates(ctx: CheckContext) -> None:
    """vLLM does not catch what a plugin raises; the flag is already set, so a second call
    does nothing, and plugins after the raising one never run."""
    raiser: Plugin = (
        "raiser",
        {GENERAL: {"raiser": "raiser:register"}},
        {"raiser": "def register():\n    raise ValueError('bad plugin')\n"},
    )
    scenario = "a raising plugin"
    with _overlays(raiser, TWO_GENERAL[0]) as overlays:
        run = _run(ctx, scenarios.load_general_raising, scenario, overlays, later="plug_a")
    first = run.first
    if first is not None and first.headline != "ValueError: bad plugin":
        fail_on(
            first,
            f"Scenario '{scenario}': expected the plugin's ValueError('bad plugin') to "
            "propagate; load_general_plugins() raised:",
        )
    if run.second is not None:
        fail_on(run.second, f"Scenario '{scenario}': the second load_general_plugins() raised:")
    _expect(
        scenario,
        {
            "first": first.headline if first else None,
            "second_records": run.second_records,
            "a_calls": run.later_calls,
        },
        {"first": "ValueError: bad plugin", "second_records": 0, "a_calls": 0},
    )


ENDPOINT_MODULE = """\
class Always:
    required_tasks = None


class EmbedOnly:
    required_tasks = ("embed",)


def broken():
    raise RuntimeError("no endpoint here")
"""
ENDPOINT_PLUGINS: Plugin = (
    "endpoint-plugins",
    {
        ENDPOINT: {
            "always": "ep_mod:Always",
            "embed_only": "ep_mod:EmbedOnly",
            "broken": "ep_mod:broken",
        }
    },
    {"ep_mod": ENDPOINT_MODULE},
)


@check(
    "engine.endpoint-plugins-opt-in",
    title="endpoint plugins load only when VLLM_PLUGINS names them, and only for tasks served",
    fix="Follow contract §2.3: without VLLM_PLUGINS warn and load none; call each named "
    "factory, log and skip one that raises, and skip a plugin whose required_tasks the server "
    "does not support (or any with required tasks when the supported tasks are None).",
    since="0.26.0",
)
def check_endpoint_opt_in(ctx: CheckContext) -> None:
    """Endpoint plugins add HTTP routes, so they are opt-in: with `VLLM_PLUGINS` unset none is
    imported and a WARNING names them; otherwise each named factory is called (one that raises
    is logged at ERROR and skipped), and a plugin is kept only if its `required_tasks` is None
    or meets the server's supported tasks, in discovery order."""
    named = "always,embed_only,broken"
    # (scenario, VLLM_PLUGINS, the server's supported tasks, the plugins expected, in order)
    cases = [
        ("VLLM_PLUGINS unset", None, ["generate"], []),
        ("all named, serving generate", named, ["generate"], ["Always"]),
        ("all named, serving embed", named, ["embed"], ["Always", "EmbedOnly"]),
        ("all named, no supported tasks", named, None, ["Always"]),
        ("only 'always' named, serving embed", "always", ["embed"], ["Always"]),
    ]
    with _overlays(ENDPOINT_PLUGINS) as overlays:
        for scenario, allowed, tasks, expected in cases:
            run = _run(
                ctx,
                scenarios.load_endpoint_group,
                scenario,
                overlays,
                env={"VLLM_PLUGINS": allowed},
                module="ep_mod",
                supported_tasks=tasks,
            )
            if run.error is not None:
                fail_on(run.error, f"Scenario '{scenario}': load_endpoint_plugins raised:")
            observed = {"loaded": run.loaded, "imported": run.imported}
            _expect(scenario, observed, {"loaded": expected, "imported": allowed is not None})
            records = [
                (r.level, r.message, "no endpoint here" in (r.exc or "")) for r in run.records
            ]
            if allowed is None:
                warned = [m for level, m, _ in records if level == "WARNING"]
                if not any("VLLM_PLUGINS is not set" in m and "always" in m for m in warned):
                    fail(f"Scenario '{scenario}': no WARNING names the plugins: {warned}")
            elif "broken" in allowed:
                failed = [(m, tb) for level, m, tb in records if level == "ERROR"]
                error = ("Failed to instantiate endpoint plugin broken", True)
                _expect(f"{scenario}: ERROR records (message, traceback)", failed, [error])


def _resolve(
    ctx: CheckContext,
    scenario: str,
    overlays: Any = None,
    env: dict[str, str | None] | None = None,
    counted: str | None = None,
) -> scenarios.PlatformResolution:
    """How `current_platform` resolves; fails the check if resolving raised."""
    resolved = _run(ctx, scenarios.resolve_platform, scenario, overlays, env=env, counted=counted)
    if resolved.error is not None:
        fail_on(resolved.error, f"Scenario '{scenario}': resolving current_platform raised:")
    return resolved


#: What resolution gives with no platform plugin: a built-in platform, or where no built-in
#: detector fires (a Python-only build, `vllm X+empty`, on a machine without a device)
#: `UnspecifiedPlatform`.
BUILTIN_PLATFORMS = (
    "CpuPlatform",
    "CudaPlatform",
    "RocmPlatform",
    "TpuPlatform",
    "XPUPlatform",
    "UnspecifiedPlatform",
)


def _builtin(cls: str | None) -> bool:
    return cls is not None and "plat_" not in cls and cls.rsplit(".", 1)[-1] in BUILTIN_PLATFORMS


@check(
    "engine.platform-rules",
    title="platform resolution follows every rule of vLLM 0.32 (contract §4.2)",
    fix="Follow contract §4.2: builtins and OOT plugins detected, one OOT wins, two raise, "
    "exceptions count as inactive, VLLM_TARGET_DEVICE=cpu short-circuits.",
)
def check_platform_rules(ctx: CheckContext) -> None:
    """No plugin gives a built-in (`UnspecifiedPlatform` where no built-in detector fires, as
    in a Python-only build); one active plugin wins and is called twice; a plugin that
    returns None or raises is inactive, as is one VLLM_PLUGINS filters out: each gives what no
    plugin gives; two active raise RuntimeError naming both; VLLM_TARGET_DEVICE=cpu never
    imports plugins."""
    alone = _resolve(ctx, "no platform plugin")
    if not _builtin(alone.cls):
        fail(f"Scenario 'no platform plugin': resolved {alone.cls}, not a built-in.")
    eager = _platform_plugin("eager", ACTIVE)
    other = _platform_plugin("other", ACTIVE)
    with _overlays(eager) as overlays:
        won = _resolve(ctx, "one active plugin", overlays, counted="plat_eager")
        _expect("one active plugin", [won.cls, won.calls], ["plat_eager.P", 2])
        cpu = _resolve(ctx, "VLLM_TARGET_DEVICE=cpu", overlays, {"VLLM_TARGET_DEVICE": "cpu"})
        _expect("VLLM_TARGET_DEVICE=cpu: plugin modules imported", cpu.imported, [])
        filtered = _resolve(
            ctx,
            "VLLM_PLUGINS without the platform plugin",
            overlays,
            {"VLLM_PLUGINS": "nothing"},
        )
        if filtered.cls != alone.cls:
            fail(f"Scenario 'VLLM_PLUGINS without it': resolved {filtered.cls}, not {alone.cls}.")
    for label, body in (
        ("returns None", "    return None"),
        ("raises", "    raise RuntimeError('no device')"),
    ):
        with _overlays(_platform_plugin("quiet", body)) as overlays:
            inactive = _resolve(ctx, f"a plugin that {label}", overlays)
        if inactive.cls != alone.cls:
            fail(f"Scenario 'a plugin that {label}': resolved {inactive.cls}, not {alone.cls}.")
    scenario = "two active plugins"
    with _overlays(eager, other) as overlays:
        both = _run(ctx, scenarios.resolve_platform, scenario, overlays)
    error = both.error
    if error is None:
        fail(f"Scenario '{scenario}': expected RuntimeError, resolved {both.cls}.")
    if error.type != "RuntimeError":
        fail_on(error, f"Scenario '{scenario}': expected RuntimeError, resolving raised:")
    if not error.mentions("Only one platform plugin can be activated") or not (
        error.mentions("eager") and error.mentions("other")
    ):
        fail(f"Scenario '{scenario}': the message names neither rule nor plugins: {error.message}")


@check(
    "engine.platform-lazy",
    title="importing vllm.platforms does not resolve the platform",
    fix="Resolve current_platform in a module __getattr__, on first access only.",
)
def check_platform_lazy(ctx: CheckContext) -> None:
    """Plugins import `vllm.platforms` while resolution is pending, so importing it must not
    call any platform plugin."""
    scenario = "import vllm.platforms"
    with _overlays(_platform_plugin("eager", ACTIVE)) as overlays:
        imported = _run(ctx, scenarios.import_platforms, scenario, overlays, module="plat_eager")
    _expect(f"{scenario}: plugin imported", imported, False)


@check(
    "engine.stat-logger-rules",
    title="stat-logger entry points must be StatLoggerBase subclasses, filtered by VLLM_PLUGINS",
    fix="Raise TypeError for a non-StatLoggerBase entry point; honour VLLM_PLUGINS.",
)
def check_stat_logger_rules(ctx: CheckContext) -> None:
    """The bundled stat logger loads as its class; VLLM_PLUGINS="" gives none; a plugin whose
    entry point is not a StatLoggerBase subclass raises TypeError naming it."""

    def factories(scenario: str, overlay: Any, env: dict[str, str | None] | None) -> list[str]:
        loaded = _run(ctx, scenarios.load_stat_loggers, scenario, overlay, env=env)
        if loaded.error is not None:
            fail_on(loaded.error, f"Scenario '{scenario}': loading the stat loggers raised:")
        return loaded.factories or []

    with Overlay().add_fixture("vllm_add_dummy_stat_logger") as overlay:
        good = factories("the dummy stat logger", overlay, None)
        _expect("the dummy stat logger", good, ["DummyStatLogger"])
        none = factories('VLLM_PLUGINS=""', overlay, {"VLLM_PLUGINS": ""})
        _expect('VLLM_PLUGINS=""', none, [])
    bad: Plugin = (
        "bad-logger",
        {STAT_LOGGER: {"bad": "bad_logger:make"}},
        {"bad_logger": "def make():\n    return None\n"},
    )
    scenario = "a factory function as entry point"
    with _overlays(bad) as overlays:
        wrong = _run(ctx, scenarios.load_stat_loggers, scenario, overlays)
    error = wrong.error
    if error is not None and error.type != "TypeError":
        fail_on(error, f"Scenario '{scenario}': expected TypeError, loading raised:")
    if error is None or not (error.mentions("'bad'") and error.mentions("StatLoggerBase")):
        observed = error.headline if error is not None else f"factories {wrong.factories!r}"
        fail(
            f"Scenario '{scenario}': expected TypeError naming 'bad' and StatLoggerBase, "
            f"observed {observed}"
        )


#: Two IO processors in one module, built from two small ones (the base class apart).
IO_BASE = """
from vllm.plugins.io_processors.interface import IOProcessor
class Proc(IOProcessor):
    def pre_process(self, prompt, request_id=None, **kw):
        return prompt
    def post_process(self, model_output, request_id=None, **kw):
        return type(self).__name__
"""
IO_PAIR = """
from io_pair_base import Proc
class ProcA(Proc): pass
class ProcB(Proc): pass
def a():
    return __name__ + '.ProcA'
def b():
    return __name__ + '.ProcB'
"""


@check(
    "engine.io-processor-selection",
    title="IO processors are chosen by the init argument, else hf_config, with 0.32's errors",
    fix="Follow contract §7.1: plugin_from_init wins, then hf_config['io_processor_plugin']; "
    "ValueError when none is installed or the name is missing.",
)
def check_io_processor_selection(ctx: CheckContext) -> None:
    """With two processors installed, the init argument picks one, the hf_config field picks
    the other, no request gives None, and an unknown name is a ValueError."""
    plugin: Plugin = (
        "io-pair",
        {IO_PROCESSOR: {"proc_a": "io_pair:a", "proc_b": "io_pair:b"}},
        {"io_pair_base": IO_BASE, "io_pair": IO_PAIR},
    )
    scenario = "init arg / hf_config / none / unknown"
    cases = [["proc_a", "proc_b"], [None, "proc_b"], [None, None], ["missing", None]]
    with _overlays(plugin) as overlays:
        picks = _run(ctx, scenarios.pick_io_processors, "two IO processors", overlays, cases=cases)
    observed: list[str | None] = []
    for pick in picks:
        if pick.error is not None and pick.error.type != "ValueError":
            fail_on(pick.error, f"Scenario '{scenario}': get_io_processor raised:")
        observed.append("ValueError" if pick.error is not None else pick.chosen)
    _expect(scenario, observed, ["ProcA", "ProcB", None, "ValueError"])


@check(
    "engine.lora-resolver-registry",
    title="the LoRA resolver registry overwrites with a warning and raises KeyError 'not found'",
    fix="Follow contract §8.1.",
)
def check_lora_resolver_registry(ctx: CheckContext) -> None:
    """Registering a name twice overwrites it (WARNING); an unknown name raises a KeyError
    that says "not found"."""
    scenario = "resolver registry"
    registry = _run(ctx, scenarios.lora_resolver_registry, scenario)
    unknown = registry.unknown
    if unknown is not None and unknown.type != "KeyError":
        fail_on(unknown, f"Scenario '{scenario}': looking up an unknown name raised:")
    _expect(
        scenario,
        {
            "warned": registry.warned,
            "kept_second": registry.kept_second,
            "key_error": unknown is not None and unknown.mentions("not found"),
        },
        {"warned": True, "kept_second": True, "key_error": True},
    )


@check(
    "engine.custom-op-replacement",
    title="an out-of-tree CustomOp registered by a general plugin replaces the in-tree op",
    fix="Dispatch CustomOp construction through op_registry_oot keyed by the in-tree class name.",
)
def check_custom_op_replacement(ctx: CheckContext) -> None:
    """With the dummy platform fixture, after load_general_plugins() a RotaryEmbedding is a
    DummyRotaryEmbedding."""
    scenario = "dummy custom op"
    with Overlay().add_fixture("vllm_add_dummy_platform") as overlay:
        op = _run(ctx, scenarios.build_rotary_embedding, scenario, overlay)
    if not op.has_torch:
        inconclusive("torch is not installed here, so no custom op can be built")
    if op.config_error is not None:
        inconclusive(
            "this engine cannot build the VllmConfig ops are built under on this machine, with "
            f"the dummy platform active ({op.config_error.headline}), so no op was built; "
            "vLLM 0.34's CPU platform, which the dummy platform extends, refuses x86 without "
            "triton-cpu, for one"
        )
    _expect(
        scenario,
        {"class": op.cls, "addition_config": op.addition_config},
        {"class": "DummyRotaryEmbedding", "addition_config": True},
    )


#: The logits plugin of that scenario, per interface: the V2 loader refuses a class that does
#: not subclass its `LogitsProcessor` (ValueError), the V1 loader takes any class.
LOGITS_PLUGIN_SOURCE = {
    "v1": "class LP:\n    pass\n",
    "v2": "from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor\n\n\n"
    "class LP(LogitsProcessor):\n    pass\n",
}


def logits_loader_interface(contract: str) -> str:
    """The logits-processor loader an engine of `contract` has: `v1` (the V1 runner's) before
    0.34, `v2` (Model Runner V2's) from 0.34 on, where the V1 one no longer exists."""
    return "v2" if v1_removed(contract) else "v1"


@check(
    "engine.logits-not-filtered",
    title="logits-processor entry points load whatever VLLM_PLUGINS says",
    fix="Discover vllm.logits_processors with entry_points() directly, without the allowlist.",
)
def check_logits_not_filtered(ctx: CheckContext) -> None:
    """`vllm.logits_processors` does not go through load_plugins_by_group: being installed
    means being loaded, even with VLLM_PLUGINS="". Before 0.34 the V1 runner's loader
    (`vllm.v1.sample.logits_processor._load_logitsprocs_plugins`) is asked, from 0.34 on,
    where that module is gone, Model Runner V2's (`_load_v2_logitsprocs_plugins`, with a V2
    subclass)."""
    interface = logits_loader_interface(ctx.session.contract)
    plugin: Plugin = (
        "logits-x",
        {LOGITS: {"lp": "lp_mod:LP"}},
        {"lp_mod": LOGITS_PLUGIN_SOURCE[interface]},
    )
    scenario = f'VLLM_PLUGINS="" with a logits plugin ({interface} loader)'
    with _overlays(plugin) as overlays:
        loaded = _run(
            ctx,
            scenarios.load_logits_plugins,
            scenario,
            overlays,
            env={"VLLM_PLUGINS": ""},
            interface=interface,
        )
    if loaded is None:
        module, function = scenarios.LOGITS_LOADERS[interface]
        fail(f"The engine exposes no logits-processor plugin loader ({module}.{function}).")
    _expect(f'VLLM_PLUGINS="" ({interface} loader): logits plugins loaded', loaded, ["LP"])


# --------------------------------------------------------------------------------------------
# Worker extensions: `worker_extension_cls` is mixed into the worker, with lifecycle hooks.

#: The module the worker-extension scenario installs as `wx_workers` (see its docstring).
WORKER_EXTENSION_MODULE = (Path(worker_probe.__file__).parent / "wx_workers.py").read_text(
    encoding="utf-8"
)
#: What the worker and its extension must be called for, in order.
WORKER_EXTENSION_CALLS = [
    "worker",
    "device",
    "init_worker_extension(Worker)",
    "its config current",
    "load_model",
    "destroy_worker_extension(Worker)",
    "shutdown",
]


def _worker_extension_plugin() -> Plugin:
    """An active test platform (a plain `Platform`, so a `VllmConfig` builds without a device
    or compiled ops) in a distribution that also holds the `wx_workers` module."""
    dist, entry_points, modules = _platform_plugin("wx", ACTIVE)
    return (dist, entry_points, {**modules, "wx_workers": WORKER_EXTENSION_MODULE})


@check(
    "engine.worker-extension-hooks",
    title="worker_extension_cls is mixed into the worker, and its init/destroy hooks run (0.33+)",
    fix="Mix parallel_config.worker_extension_cls into the worker class; in the worker wrapper "
    "call the extension's init_worker_extension(worker) right after worker.init_device(), with "
    "the worker's config still current, and its destroy_worker_extension(worker) in shutdown() "
    "before worker.shutdown(), logging what the destroy hook raises with logger.exception "
    "instead of raising it.",
    since="0.33.0",
)
def check_worker_extension_hooks(ctx: CheckContext) -> None:
    """From vLLM 0.33 the worker wrapper calls the extension's `init_worker_extension()` once,
    on the worker, after the device is initialised and before the model loads, with the
    worker's config current (`set_current_vllm_config`), and `destroy_worker_extension()` when
    the worker shuts down, before the worker's own shutdown;
    a destroy hook that raises is logged at ERROR with its traceback, and the worker still
    shuts down. The engine's own `WorkerWrapperBase` is driven through `init_worker`,
    `init_device`, `load_model` and `shutdown`, as an executor does, with a device-free worker
    class and the config `EngineArgs(worker_cls=..., worker_extension_cls=...)` builds for a
    tiny model (no weights), under a device-free test platform; where the engine cannot build
    that config on this machine, no worker is started and the check is inconclusive. One
    scenario covers it all (building an engine config costs real vLLM most of a minute)."""
    from conformance.checks.general import ENGINE_RUN_TIMEOUT_S

    scenario = "a worker extension whose destroy hook raises"
    with _overlays(_worker_extension_plugin()) as overlays:
        run = _run(
            ctx,
            worker_probe.run_worker_lifecycle,
            scenario,
            overlays,
            timeout=ENGINE_RUN_TIMEOUT_S,
            module="wx_workers",
            worker="Worker",
            extension="Extension",
        )
    error = run.config_error
    if error is not None:
        inconclusive(
            "this engine cannot build the config of a served model on this machine, even under "
            f"a device-free test platform ({error.headline.splitlines()[0]}), so no worker was "
            "started"
        )
    if run.error is not None:
        fail_on(
            run.error, f"Scenario '{scenario}': the worker wrapper's {run.failed_step}() raised:"
        )
    _expect(f"{scenario}: extension mixed into the worker class", run.mixed_in, True)
    _expect(f"{scenario}: calls", run.events, WORKER_EXTENSION_CALLS)
    logged = [(r.level, "on purpose" in (r.exc or "")) for r in run.shutdown_errors]
    _expect(f"{scenario}: ERROR records with its traceback", logged, [("ERROR", True)])


# --------------------------------------------------------------------------------------------
# Ray workers: plugins load in every Ray actor, with the driver's VLLM_* variables.

RAY_WORKERS_VAR = "VLLM_CONFORMANCE_RAY_VAR"
RAY_WORKERS_TIMEOUT_S = 360.0

#: A general plugin `{func}` that records, per call, its name, process, Ray actor (None outside
#: actors) and the value of RAY_WORKERS_VAR there. The file path is baked into the source, so
#: reaching it needs no variable the engine might fail to forward.
RAY_PLUGIN = """
import json, os, sys
def {func}():
    actor = None
    if "ray" in sys.modules:
        import ray
        if ray.is_initialized():
            actor = ray.get_runtime_context().get_actor_id()
    line = dict(plugin={plugin!r}, pid=os.getpid(), actor=actor, var=os.environ.get({var!r}))
    with open({path!r}, "a") as f:
        f.write(json.dumps(line) + "\\n")
"""


def _ray_plugin(dist: str, module: str, func: str, plugin: str, path: str) -> Plugin:
    source = RAY_PLUGIN.format(func=func, plugin=plugin, var=RAY_WORKERS_VAR, path=path)
    return (dist, {GENERAL: {module: f"{module}:{func}"}}, {module: source})


@check(
    "engine.plugins-in-ray-workers",
    title="with the Ray executor, every Ray worker loads the general plugins that VLLM_PLUGINS "
    "selects in the driver",
    fix="Give each Ray worker the driver's VLLM_* variables (runtime_env env_vars, or "
    "update_environment_variables before init_worker) and call load_general_plugins() in the "
    "worker's init_worker, as vLLM 0.32's Ray executor does.",
)
def check_plugins_in_ray_workers(ctx: CheckContext) -> None:
    """On a local Ray cluster started before the driver sets `VLLM_PLUGINS` (and a probe
    variable `VLLM_CONFORMANCE_RAY_VAR`), `LLM(tensor_parallel_size=2,
    distributed_executor_backend="ray")` runs two Ray workers. A marker general plugin must
    load in the driver and in both workers, each of which sees the driver's variable; a second
    general plugin that `VLLM_PLUGINS` leaves out must load nowhere. A worker that inherits
    only the cluster's environment, or never loads plugins, fails. Capability skip where Ray
    is not installed in the engine's interpreter, or where the engine refuses Ray on its
    platform (vLLM's CPU platform has no `ray_device_key`)."""
    import json
    import tempfile
    from pathlib import Path

    from conformance.checks.general import skip_if_engine_missing

    scenario = "LLM(tensor_parallel_size=2, distributed_executor_backend='ray')"
    with tempfile.TemporaryDirectory(prefix="vllm-ray-marks-") as tmp:
        marks_path = str(Path(tmp, "marks.jsonl"))
        plugins = (
            _ray_plugin("ray-marker", "ray_marker", "mark", "marker", marks_path),
            _ray_plugin("ray-excluded", "ray_excluded", "register", "excluded", marks_path),
        )
        variables = {"VLLM_PLUGINS": "ray_marker", RAY_WORKERS_VAR: "from-the-driver"}
        with _overlays(*plugins) as overlays:
            run = _run(
                ctx,
                scenarios.run_ray_workers,
                scenario,
                overlays,
                timeout=RAY_WORKERS_TIMEOUT_S,
                variables=variables,
            )
        marks_file = Path(marks_path)
        lines = marks_file.read_text().splitlines() if marks_file.is_file() else []
        marks = [json.loads(line) for line in lines]
    if run.no_ray:
        skip(
            "Ray is not installed in the engine's interpreter, so its Ray executor cannot run "
            "(`pip install ray`)"
        )
    skip_if_engine_missing(run.missing)
    error: ExceptionInfo | None = run.engine_error
    if error is not None and error.mentions("does not support ray"):
        skip(
            f"this engine refuses Ray on its platform ({error.headline.splitlines()[0]}); "
            "vLLM's CPU platform has no ray_device_key, so vLLM's Ray executor needs GPUs"
        )
    if error is not None:
        fail_on(error, f"Scenario '{scenario}' raised:")
    if run.generate_error is not None:
        fail_on(run.generate_error, f"Scenario '{scenario}': generate raised:")
    driver = run.driver
    marked = [m for m in marks if m["plugin"] == "marker"]
    if not any(m["pid"] == driver for m in marked):
        fail(f"Scenario '{scenario}': the marker plugin did not load in the driver; marks: {marks}")
    workers = {m["actor"]: m for m in marked if m["actor"] is not None}
    excluded = sorted(
        "driver" if m["pid"] == driver else f"Ray worker pid {m['pid']}"
        for m in marks
        if m["plugin"] == "excluded"
    )
    if excluded:
        fail(
            f"Scenario '{scenario}' with VLLM_PLUGINS=ray_marker set in the driver: the plugin "
            f"it leaves out loaded in {', '.join(excluded)} (the workers did not get the "
            "driver's VLLM_PLUGINS)."
        )
    if len(workers) < 2:
        fail(
            f"Scenario '{scenario}': the marker general plugin loaded in {len(workers)} of 2 Ray "
            f"workers (marks: {marks})."
        )
    seen = sorted({str(m["var"]) for m in workers.values()})
    _expect(f"{scenario}: {RAY_WORKERS_VAR} in the Ray workers", seen, ["from-the-driver"])
