"""Engine checks (`engine.*`): does an engine implement vLLM 0.32's plugin contract?

They certify an engine — the reference, or the real vLLM with `--engine vllm` — by running
contract scenarios with small plugins made on the spot (and the bundled fixtures) in probes.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from conformance.context import CheckContext
from conformance.framework import check, fail, skip
from conformance.overlay import Overlay
from conformance.probe import ProbeResult, run_probe

GENERAL = "vllm.general_plugins"
PLATFORM = "vllm.platform_plugins"
STAT_LOGGER = "vllm.stat_logger_plugins"
IO_PROCESSOR = "vllm.io_processor_plugins"
LOGITS = "vllm.logits_processors"

COUNTING = "CALLS = []\ndef register():\n    CALLS.append(1)\n"


def _platform_module(name: str, body: str) -> str:
    return (
        "from vllm.platforms.interface import Platform, PlatformEnum\n"
        f"class P(Platform):\n    _enum = PlatformEnum.OOT\n    device_name = {name!r}\n"
        "    device_type = 'cpu'\nCALLS = []\n"
        f"def detect():\n    CALLS.append(1)\n{body}\n"
    )


ACTIVE = "    return __name__ + '.P'"


@contextmanager
def _overlays(*plugins: tuple[str, dict[str, dict[str, str]], dict[str, str]]) -> Iterator[list]:
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


def _run(ctx: CheckContext, code: str, overlays: Any = None, **kwargs: Any) -> ProbeResult:
    patch = getattr(ctx.session, "engine_patch", "") or ""
    body = patch + "\n" + textwrap.dedent(code)
    return run_probe(body, engine=ctx.engine, overlay=overlays, **kwargs)


def _values(result: ProbeResult, scenario: str) -> dict[str, Any]:
    if not result.ok:
        fail(f"Scenario '{scenario}': the probe {result.describe()}")
    return result.values


def _expect(scenario: str, observed: Any, expected: Any) -> None:
    if observed != expected:
        fail(f"Scenario '{scenario}': expected {expected!r}, observed {observed!r}.")


LOAD_GENERAL = """
import sys
import vllm.plugins as plugins
loaded = list(plugins.load_plugins_by_group(plugins.DEFAULT_PLUGINS_GROUP))
probe.result["loaded"] = [n for n in loaded if n in ("a", "b")]
probe.result["imported"] = sorted(m for m in ("plug_a", "plug_b") if m in sys.modules)
"""

TWO_GENERAL = (
    ("plugin-a", {GENERAL: {"a": "plug_a:register"}}, {"plug_a": COUNTING}),
    ("plugin-b", {GENERAL: {"b": "plug_b:register"}}, {"plug_b": COUNTING}),
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
    code = """
    import vllm.plugins as p
    groups = [p.DEFAULT_PLUGINS_GROUP, p.PLATFORM_PLUGINS_GROUP, p.IO_PROCESSOR_PLUGINS_GROUP,
              p.STAT_LOGGER_PLUGINS_GROUP]
    mine = ("g1", "p1", "io1", "s1")
    probe.result["groups"] = {
        g: [n for n in p.load_plugins_by_group(g) if n in mine] for g in groups}
    """
    with _overlays(("multi-group", eps, {"multi": module})) as overlays:
        values = _values(_run(ctx, code, overlays), "one plugin in four groups")
    _expect(
        "one plugin in four groups",
        values["groups"],
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
            values = _values(
                _run(ctx, LOAD_GENERAL, overlays, env={"VLLM_PLUGINS": raw}),
                f"VLLM_PLUGINS={raw!r}",
            )
            _expect(f"VLLM_PLUGINS={raw!r}", values["loaded"], expected)


@check(
    "engine.filter-before-import",
    title="plugins that VLLM_PLUGINS leaves out are never imported",
    fix="Apply the VLLM_PLUGINS filter before ep.load().",
)
def check_filter_before_import(ctx: CheckContext) -> None:
    """Filtering by name happens before loading, so an excluded plugin's module never runs."""
    with _overlays(*TWO_GENERAL) as overlays:
        values = _values(
            _run(ctx, LOAD_GENERAL, overlays, env={"VLLM_PLUGINS": "a"}), "VLLM_PLUGINS=a"
        )
    _expect("VLLM_PLUGINS=a", values["imported"], ["plug_a"])


@check(
    "engine.general-once-per-process",
    title="load_general_plugins() runs each general plugin once per process",
    fix="Guard load_general_plugins with a module flag set before the plugins run.",
)
def check_general_once(ctx: CheckContext) -> None:
    """Calling load_general_plugins() twice runs every plugin exactly once."""
    code = """
    import sys, vllm.plugins as p
    p.load_general_plugins(); p.load_general_plugins()
    probe.result["calls"] = [len(sys.modules[m].CALLS) for m in ("plug_a", "plug_b")]
    """
    with _overlays(*TWO_GENERAL) as overlays:
        values = _values(_run(ctx, code, overlays), "two calls")
    _expect("two calls", values["calls"], [1, 1])


@check(
    "engine.load-error-isolated",
    title="a plugin that fails to load is logged at ERROR and skipped; the others load",
    fix="Catch exceptions from ep.load(), log them with logger.exception, and go on.",
)
def check_load_error_isolated(ctx: CheckContext) -> None:
    """An import error in one plugin costs only that plugin, with its traceback logged."""
    broken = (
        "broken",
        {GENERAL: {"broken": "broken_mod:register"}},
        {"broken_mod": "raise ImportError('missing dependency xyz')\n"},
    )
    code = (
        LOAD_GENERAL
        + """
probe.result["errors"] = [(r["message"], "xyz" in (r["exc"] or "")) for r in probe.records()
                          if r["level"] == "ERROR"]
"""
    )
    with _overlays(broken, TWO_GENERAL[0]) as overlays:
        values = _values(_run(ctx, code, overlays), "one broken plugin")
    _expect("one broken plugin: loaded", values["loaded"], ["a"])
    _expect(
        "one broken plugin: ERROR records",
        values["errors"],
        [["Failed to load plugin broken", True]],
    )


@check(
    "engine.register-error-propagates",
    title="an exception raised by a general plugin propagates; later calls are silent no-ops",
    fix="Call general plugins outside any try, after setting the once-per-process flag.",
)
def check_register_error_propagates(ctx: CheckContext) -> None:
    """vLLM does not catch what a plugin raises; the flag is already set, so a second call
    does nothing, and plugins after the raising one never run."""
    raiser = (
        "raiser",
        {GENERAL: {"raiser": "raiser:register"}},
        {"raiser": "def register():\n    raise ValueError('bad plugin')\n"},
    )
    code = """
    import sys, vllm.plugins as p
    try:
        p.load_general_plugins()
        probe.result["first"] = None
    except ValueError as exc:
        probe.result["first"] = str(exc)
    mark = probe.mark()
    p.load_general_plugins()
    probe.result["second_records"] = len(probe.records(since=mark))
    probe.result["a_calls"] = len(sys.modules["plug_a"].CALLS) if "plug_a" in sys.modules else 0
    """
    with _overlays(raiser, TWO_GENERAL[0]) as overlays:
        values = _values(_run(ctx, code, overlays), "a raising plugin")
    _expect("a raising plugin", values, {"first": "bad plugin", "second_records": 0, "a_calls": 0})


RESOLVE = """
import sys
from vllm.platforms import current_platform
cls = type(current_platform)
probe.result["class"] = cls.__module__ + "." + cls.__qualname__
probe.result["imported"] = sorted(m for m in sys.modules if m.startswith("plat_"))
"""


def _builtin(values: dict[str, Any]) -> bool:
    return "plat_" not in values["class"] and values["class"].rsplit(".", 1)[-1] in (
        "CpuPlatform",
        "CudaPlatform",
    )


@check(
    "engine.platform-rules",
    title="platform resolution follows every rule of vLLM 0.32 (contract §4.2)",
    fix="Follow contract §4.2: builtins and OOT plugins detected, one OOT wins, two raise, "
    "exceptions count as inactive, VLLM_TARGET_DEVICE=cpu short-circuits.",
)
def check_platform_rules(ctx: CheckContext) -> None:
    """No plugin gives a built-in; one active plugin wins and is called twice; a plugin that
    returns None or raises is inactive; two active raise RuntimeError naming both;
    VLLM_TARGET_DEVICE=cpu never imports plugins; VLLM_PLUGINS can filter a plugin out."""
    values = _values(_run(ctx, RESOLVE), "no platform plugin")
    if not _builtin(values):
        fail(f"Scenario 'no platform plugin': resolved {values['class']}, not a built-in.")
    eager = (
        "plat-eager",
        {PLATFORM: {"eager": "plat_eager:detect"}},
        {"plat_eager": _platform_module("eager", ACTIVE)},
    )
    other = (
        "plat-other",
        {PLATFORM: {"other": "plat_other:detect"}},
        {"plat_other": _platform_module("other", ACTIVE)},
    )
    with _overlays(eager) as overlays:
        won = _values(
            _run(
                ctx,
                RESOLVE + "probe.result['calls'] = len(sys.modules['plat_eager'].CALLS)\n",
                overlays,
            ),
            "one active plugin",
        )
        _expect("one active plugin", [won["class"], won["calls"]], ["plat_eager.P", 2])
        cpu = _values(
            _run(ctx, RESOLVE, overlays, env={"VLLM_TARGET_DEVICE": "cpu"}),
            "VLLM_TARGET_DEVICE=cpu",
        )
        _expect("VLLM_TARGET_DEVICE=cpu: plugin modules imported", cpu["imported"], [])
        filtered = _values(
            _run(ctx, RESOLVE, overlays, env={"VLLM_PLUGINS": "nothing"}),
            "VLLM_PLUGINS without the platform plugin",
        )
        if not _builtin(filtered):
            fail(f"Scenario 'VLLM_PLUGINS without it': resolved {filtered['class']}.")
    for label, body in (
        ("returns None", "    return None"),
        ("raises", "    raise RuntimeError('no device')"),
    ):
        quiet = (
            "plat-quiet",
            {PLATFORM: {"quiet": "plat_quiet:detect"}},
            {"plat_quiet": _platform_module("quiet", body)},
        )
        with _overlays(quiet) as overlays:
            inactive = _values(_run(ctx, RESOLVE, overlays), f"a plugin that {label}")
        if not _builtin(inactive):
            fail(f"Scenario 'a plugin that {label}': resolved {inactive['class']}.")
    with _overlays(eager, other) as overlays:
        result = _run(ctx, RESOLVE, overlays)
    if result.status != "raised" or result.exception["type"] != "RuntimeError":
        fail(f"Scenario 'two active plugins': expected RuntimeError, got {result.describe()}")
    message = result.exception["message"]
    if "Only one platform plugin can be activated" not in message or not (
        "eager" in message and "other" in message
    ):
        fail(
            f"Scenario 'two active plugins': the message names neither rule nor plugins: {message}"
        )


@check(
    "engine.platform-lazy",
    title="importing vllm.platforms does not resolve the platform",
    fix="Resolve current_platform in a module __getattr__, on first access only.",
)
def check_platform_lazy(ctx: CheckContext) -> None:
    """Plugins import `vllm.platforms` while resolution is pending, so importing it must not
    call any platform plugin."""
    eager = (
        "plat-eager",
        {PLATFORM: {"eager": "plat_eager:detect"}},
        {"plat_eager": _platform_module("eager", ACTIVE)},
    )
    code = """
    import sys
    import vllm.platforms
    from vllm.platforms import Platform, PlatformEnum
    probe.result["imported"] = "plat_eager" in sys.modules
    """
    with _overlays(eager) as overlays:
        values = _values(_run(ctx, code, overlays), "import vllm.platforms")
    _expect("import vllm.platforms: plugin imported", values["imported"], False)


@check(
    "engine.stat-logger-rules",
    title="stat-logger entry points must be StatLoggerBase subclasses, filtered by VLLM_PLUGINS",
    fix="Raise TypeError for a non-StatLoggerBase entry point; honour VLLM_PLUGINS.",
)
def check_stat_logger_rules(ctx: CheckContext) -> None:
    """The bundled stat logger loads as its class; VLLM_PLUGINS="" gives none; a plugin whose
    entry point is not a StatLoggerBase subclass raises TypeError naming it."""
    code = """
    from vllm.v1.metrics.loggers import load_stat_logger_plugin_factories
    try:
        probe.result["factories"] = [f.__name__ for f in load_stat_logger_plugin_factories()]
    except TypeError as exc:
        probe.result["type_error"] = str(exc)
    """
    overlay = Overlay().add_fixture("vllm_add_dummy_stat_logger")
    try:
        good = _values(_run(ctx, code, overlay), "the dummy stat logger")
        _expect("the dummy stat logger", good.get("factories"), ["DummyStatLogger"])
        none = _values(_run(ctx, code, overlay, env={"VLLM_PLUGINS": ""}), 'VLLM_PLUGINS=""')
        _expect('VLLM_PLUGINS=""', none.get("factories"), [])
    finally:
        overlay.cleanup()
    bad = (
        "bad-logger",
        {STAT_LOGGER: {"bad": "bad_logger:make"}},
        {"bad_logger": "def make():\n    return None\n"},
    )
    with _overlays(bad) as overlays:
        wrong = _values(_run(ctx, code, overlays), "a factory function")
    message = wrong.get("type_error") or ""
    if "'bad'" not in message or "StatLoggerBase" not in message:
        fail(
            f"Scenario 'a factory function as entry point': expected TypeError naming 'bad' "
            f"and StatLoggerBase, observed {wrong!r}"
        )


@check(
    "engine.io-processor-selection",
    title="IO processors are chosen by the init argument, else hf_config, with 0.32's errors",
    fix="Follow contract §7.1: plugin_from_init wins, then hf_config['io_processor_plugin']; "
    "ValueError when none is installed or the name is missing.",
)
def check_io_processor_selection(ctx: CheckContext) -> None:
    """With two processors installed, the init argument picks one, the hf_config field picks
    the other, no request gives None, and an unknown name is a ValueError."""
    module = (
        "from vllm.plugins.io_processors.interface import IOProcessor\n"
        "class Proc(IOProcessor):\n"
        "    def pre_process(self, prompt, request_id=None, **kw):\n        return prompt\n"
        "    def post_process(self, model_output, request_id=None, **kw):\n"
        "        return type(self).__name__\n"
        "class ProcA(Proc): pass\nclass ProcB(Proc): pass\n"
        "def a():\n    return __name__ + '.ProcA'\ndef b():\n    return __name__ + '.ProcB'\n"
    )
    plugin = (
        "io-pair",
        {IO_PROCESSOR: {"proc_a": "io_pair:a", "proc_b": "io_pair:b"}},
        {"io_pair": module},
    )
    code = """
    from types import SimpleNamespace
    from vllm.plugins.io_processors import get_io_processor
    def pick(init, field):
        # Only the attributes selection reads: the same stand-in works on every engine.
        fields = {"io_processor_plugin": field} if field else {}
        hf_config = SimpleNamespace(to_dict=lambda: dict(fields), **fields)
        cfg = SimpleNamespace(model_config=SimpleNamespace(hf_config=hf_config))
        try:
            proc = get_io_processor(cfg, None, init)
        except ValueError as exc:
            return "ValueError"
        return None if proc is None else type(proc).__name__
    probe.result["picks"] = [pick("proc_a", "proc_b"), pick(None, "proc_b"), pick(None, None),
                             pick("missing", None)]
    """
    with _overlays(plugin) as overlays:
        values = _values(_run(ctx, code, overlays), "two IO processors")
    _expect(
        "init arg / hf_config / none / unknown",
        values["picks"],
        ["ProcA", "ProcB", None, "ValueError"],
    )


@check(
    "engine.lora-resolver-registry",
    title="the LoRA resolver registry overwrites with a warning and raises KeyError 'not found'",
    fix="Follow contract §8.1.",
)
def check_lora_resolver_registry(ctx: CheckContext) -> None:
    """Registering a name twice overwrites it (WARNING); an unknown name raises a KeyError
    that says "not found"."""
    code = """
    from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry
    class R(LoRAResolver):
        async def resolve_lora(self, base_model_name, lora_name):
            return None
    first, second = R(), R()
    LoRAResolverRegistry.register_resolver("conformance", first)
    mark = probe.mark()
    LoRAResolverRegistry.register_resolver("conformance", second)
    probe.result["warned"] = any(r["level"] == "WARNING" for r in probe.records(since=mark))
    probe.result["kept_second"] = LoRAResolverRegistry.get_resolver("conformance") is second
    try:
        LoRAResolverRegistry.get_resolver("no-such-resolver")
    except KeyError as exc:
        probe.result["key_error"] = "not found" in str(exc)
    """
    values = _values(_run(ctx, code), "resolver registry")
    _expect("resolver registry", values, {"warned": True, "kept_second": True, "key_error": True})


@check(
    "engine.custom-op-replacement",
    title="an out-of-tree CustomOp registered by a general plugin replaces the in-tree op",
    fix="Dispatch CustomOp construction through op_registry_oot keyed by the in-tree class name.",
)
def check_custom_op_replacement(ctx: CheckContext) -> None:
    """With the dummy platform fixture, after load_general_plugins() a RotaryEmbedding is a
    DummyRotaryEmbedding."""
    code = """
    import importlib.util
    if importlib.util.find_spec("torch") is None:
        probe.result["skip"] = True
    else:
        import torch
        import vllm.plugins
        vllm.plugins.load_general_plugins()
        from vllm.config import VllmConfig, set_current_vllm_config
        from vllm.model_executor.layers.rotary_embedding import RotaryEmbedding
        # Ops are built while an engine config is current (real vLLM asserts it).
        with set_current_vllm_config(VllmConfig()):
            op = RotaryEmbedding(16, 16, 16, 10000, True, torch.float32)
        probe.result["class"] = type(op).__name__
        probe.result["addition_config"] = getattr(op, "addition_config", False)
    """
    overlay = Overlay().add_fixture("vllm_add_dummy_platform")
    try:
        values = _values(_run(ctx, code, overlay), "dummy custom op")
    finally:
        overlay.cleanup()
    if values.get("skip"):
        skip("torch is not installed, so no custom op can be built")
    _expect("dummy custom op", values, {"class": "DummyRotaryEmbedding", "addition_config": True})


@check(
    "engine.logits-not-filtered",
    title="logits-processor entry points load whatever VLLM_PLUGINS says",
    fix="Discover vllm.logits_processors with entry_points() directly, without the allowlist.",
)
def check_logits_not_filtered(ctx: CheckContext) -> None:
    """`vllm.logits_processors` does not go through load_plugins_by_group: being installed
    means being loaded, even with VLLM_PLUGINS=""."""
    plugin = ("logits-x", {LOGITS: {"lp": "lp_mod:LP"}}, {"lp_mod": "class LP:\n    pass\n"})
    code_v = """
    import importlib
    loader = None
    for name in ("vllm.v1.sample.logits_processor",):
        module = importlib.import_module(name)
        loader = getattr(module, "_load_logitsprocs_plugins", None)
    probe.result["loaded"] = [c.__name__ for c in loader()] if loader else None
    """
    with _overlays(plugin) as overlays:
        values = _values(
            _run(ctx, code_v, overlays, env={"VLLM_PLUGINS": ""}),
            'VLLM_PLUGINS="" with a logits plugin',
        )
    if values["loaded"] is None:
        fail(
            "The engine exposes no V1 logits-processor plugin loader "
            "(vllm.v1.sample.logits_processor._load_logitsprocs_plugins)."
        )
    _expect('VLLM_PLUGINS="": logits plugins loaded', values["loaded"], ["LP"])


# --------------------------------------------------------------------------------------------
# Ray workers: plugins load in every Ray actor, with the driver's VLLM_* variables.

RAY_WORKERS_VAR = "VLLM_CONFORMANCE_RAY_VAR"
RAY_WORKERS_TIMEOUT_S = 360.0

#: A general plugin that records, per call, its process, Ray actor (None outside actors) and
#: the value of RAY_WORKERS_VAR there. The file path is baked into the source, so reaching
#: it needs no variable the engine might fail to forward.
RAY_MARKER = """
import json, os, sys

def mark():
    actor = None
    if "ray" in sys.modules:
        import ray
        if ray.is_initialized():
            actor = ray.get_runtime_context().get_actor_id()
    line = {{"plugin": "marker", "pid": os.getpid(), "actor": actor,
             "var": os.environ.get({var!r})}}
    with open({path!r}, "a") as f:
        f.write(json.dumps(line) + "\\n")
"""

RAY_EXCLUDED = """
import json, os, sys

def register():
    actor = None
    if "ray" in sys.modules:
        import ray
        if ray.is_initialized():
            actor = ray.get_runtime_context().get_actor_id()
    with open({path!r}, "a") as f:
        f.write(json.dumps({{"plugin": "excluded", "pid": os.getpid(), "actor": actor}}) + "\\n")
"""

RAY_WORKERS_RUN = r"""
import importlib.util, os
R = probe.result
R["no_ray"] = importlib.util.find_spec("ray") is None
if not R["no_ray"] and not ENGINE_MISSING:
    import ray
    # Started before the variables are set: the workers can get them only from the executor.
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        os.environ.update(VARS)
        # The executor in this process, where Ray is initialized (vLLM: no engine-core process).
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM, SamplingParams
        R["driver"] = os.getpid()
        try:
            llm = LLM(model=tiny_checkpoint("llama"), tensor_parallel_size=2,
                      distributed_executor_backend="ray", max_model_len=128, max_num_seqs=2,
                      **SMALL_ENGINE)
        except Exception as exc:
            R["engine_error"] = f"{type(exc).__name__}: {exc}"
        else:
            try:
                params = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
                R["tokens"] = len(llm.generate("Hello", params)[0].outputs[0].token_ids)
            finally:
                shut(llm)
    finally:
        ray.shutdown()
"""


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

    from conformance.checks.general import engine_run_code, skip_if_engine_missing

    scenario = "LLM(tensor_parallel_size=2, distributed_executor_backend='ray')"
    with tempfile.TemporaryDirectory(prefix="vllm-ray-marks-") as tmp:
        marks_path = str(Path(tmp, "marks.jsonl"))
        plugins = (
            (
                "ray-marker",
                {GENERAL: {"ray_marker": "ray_marker:mark"}},
                {"ray_marker": RAY_MARKER.format(var=RAY_WORKERS_VAR, path=marks_path)},
            ),
            (
                "ray-excluded",
                {GENERAL: {"ray_excluded": "ray_excluded:register"}},
                {"ray_excluded": RAY_EXCLUDED.format(path=marks_path)},
            ),
        )
        variables = {"VLLM_PLUGINS": "ray_marker", RAY_WORKERS_VAR: "from-the-driver"}
        with _overlays(*plugins) as overlays:
            result = _run(
                ctx,
                engine_run_code(f"VARS = {variables!r}\n" + RAY_WORKERS_RUN),
                overlays,
                timeout=RAY_WORKERS_TIMEOUT_S,
            )
        marks_file = Path(marks_path)
        lines = marks_file.read_text().splitlines() if marks_file.is_file() else []
        marks = [json.loads(line) for line in lines]
    values = _values(result, scenario)
    if values.get("no_ray"):
        skip(
            "Ray is not installed in the engine's interpreter, so its Ray executor cannot run "
            "(`pip install ray`)"
        )
    skip_if_engine_missing(values)
    error = values.get("engine_error")
    if error and "does not support ray" in error:
        skip(
            f"this engine refuses Ray on its platform ({error.splitlines()[0]}); vLLM's CPU "
            "platform has no ray_device_key, so vLLM's Ray executor needs GPUs"
        )
    if error:
        fail(f"Scenario '{scenario}' raised: {error}")
    driver = values["driver"]
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
