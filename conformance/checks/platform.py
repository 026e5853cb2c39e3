"""Platform-plugin checks (`vllm.platform_plugins`): detection, the platform class, resolution.

Two probes per entry point feed every check (conformance/probes/platform.py). `observe_detection`
loads the entry point, calls it three times (watching the process for side effects) and, when
it answers with a class name, lets the engine resolve `current_platform` as it would at
startup. `observe_class`, run only for an active plugin, resolves the platform with the plugin
filtered out (the built-in must win) and then examines the plugin's class and calls its hooks
as vLLM 0.32 calls them.
"""

from __future__ import annotations

import re
from dataclasses import fields

from packaging.version import Version

from conformance.checks.general import (
    ENGINE_RUN_TIMEOUT_S,
    fail_engine_run,
    skip_if_engine_missing,
)
from conformance.context import CheckContext, EngineRun, observation
from conformance.framework import check, fail, fail_on, inconclusive, skip
from conformance.probes.platform import (
    CALLS,
    ClassObservation,
    DetectionObservation,
    LoggerState,
    Snapshot,
    Value,
    observe_class,
    observe_detection,
    observe_worker_run,
)
from conformance.probes.runtime import DOTTED_NAME, Answer

#: Names of vLLM 0.32's built-in platform detectors, which share a namespace with plugins.
BUILTIN_PLATFORMS = ("tpu", "cuda", "rocm", "xpu", "cpu")
#: A `VLLM_PLUGINS` value that admits no installed plugin, so the built-in platform resolves.
NO_PLUGIN = "vllm-conformance-no-such-plugin"
INACTIVE = "the plugin is inactive on this machine (returned None)"
#: The check that loads the entry point, which every check that calls the function requires.
LOADED = ("platform.loadable",)
#: The check that judges the class, which every check that calls its hooks requires.
CLASS_VALID = ("platform.class-valid",)


# --------------------------------------------------------------------------------------------
# Pure helpers (unit-tested): what an observation means.


def _swallowed(contract: str) -> str:
    """What vLLM does with an exception from an out-of-tree detector, by contract release."""
    if Version(contract.split("+")[0]) < Version("0.33.0"):
        return "vLLM swallows the exception (logged at DEBUG only) and silently treats"
    return (
        "vLLM logs it at WARNING with its traceback wherever the platform is resolved (in "
        "every process) and treats"
    )


def qualname_problem(answer: Answer, contract: str) -> str | None:
    """Why one answer of the detection function is not `None` or a dotted name (None if fine),
    worded for an engine of the `contract` release."""
    if answer.kind == "none":
        return None
    if answer.kind == "raised":
        if not answer.exception:
            return (
                f"it raised {answer.repr}, which is not an Exception: vLLM does not catch it "
                "and the process stops. Return None when the platform is not present."
            )
        return (
            f"it raised {answer.repr}; {_swallowed(contract)} the plugin as inactive. Return "
            "None instead of raising."
        )
    if answer.kind == "other":
        if answer.is_class:
            return (
                f"it returned the class {answer.repr} itself; return its dotted name "
                "(f'{cls.__module__}.{cls.__qualname__}'), which vLLM imports lazily."
            )
        return f"it returned {answer.repr} (a {answer.type}), not a str or None."
    value = answer.value or ""
    if value == "":
        return (
            "it returned an empty string, which vLLM counts as active (only None is inactive) "
            "and then cannot import; return None when the platform is not present."
        )
    if ":" in value:
        dotted = value.replace(":", ".")
        return (
            f"it returned {value!r}, the entry-point 'module:Class' form; vLLM splits the name "
            f"on its last dot, so write {dotted!r}."
        )
    if not DOTTED_NAME.fullmatch(value):
        return (
            f"it returned {value!r}, which is not a dotted 'package.module.Class' name "
            "(vLLM splits it on its last dot and imports the module part)."
        )
    return None


def answer_key(answer: Answer) -> str:
    """What one call answered, in words comparable between calls."""
    return f"raised {answer.repr}" if answer.kind == "raised" else answer.repr


def side_effects(before: Snapshot, after: Snapshot) -> list[str]:
    """What changed in `os.environ`, `sys.path` and the logging setup between two snapshots.

    Values of variables that existed before are not quoted: they may hold the user's secrets.
    """
    changes = []
    env_b, env_a = before.environ, after.environ
    for key in sorted(set(env_a) - set(env_b)):
        changes.append(f"os.environ[{key!r}] was set to {env_a[key][:80]!r}")
    changes += [f"os.environ[{key!r}] was removed" for key in sorted(set(env_b) - set(env_a))]
    changes += [
        f"os.environ[{key!r}] was changed"
        for key in sorted(set(env_a) & set(env_b))
        if env_a[key] != env_b[key]
    ]
    path_b, path_a = before.sys_path, after.sys_path
    changes += [f"sys.path gained {p!r}" for p in path_a if p not in path_b]
    changes += [f"sys.path lost {p!r}" for p in path_b if p not in path_a]
    if path_a != path_b and set(path_a) == set(path_b):
        changes.append("sys.path was reordered")
    if before.disable != after.disable:
        changes.append(f"logging.disable changed from {before.disable} to {after.disable}")
    for name in sorted(set(before.loggers) | set(after.loggers)):
        old, new = before.loggers.get(name), after.loggers.get(name)
        if old == new:
            continue
        if old is None or new is None:
            changes.append(f"the {name} logger changed from {old} to {new}")
            continue
        for attr in sorted(f.name for f in fields(LoggerState)):
            if getattr(old, attr) != getattr(new, attr):
                was, now = getattr(old, attr), getattr(new, attr)
                changes.append(f"the {name} logger's {attr} changed from {was} to {now}")
    return changes


def attn_signature_hint(params: list[str] | None) -> str:
    """A hint naming the older `get_attn_backend_cls` form a parameter list matches, if any."""
    if not params:
        return ""
    if "use_v1" in params:
        return (
            f"Its parameters ({', '.join(params)}) are the pre-v0.13 positional form with "
            "`use_v1`, removed in v0.13.0."
        )
    if "head_size" in params and "attn_selector_config" not in params:
        return (
            f"Its parameters ({', '.join(params)}) are the pre-v0.15 positional form; since "
            "v0.15 the layer's properties arrive as one `attn_selector_config` keyword."
        )
    if "attn_selector_config" not in params and not any(p.startswith("**") for p in params):
        return f"Its parameters are ({', '.join(params)}); none is `attn_selector_config`."
    return ""


def enum_problem(info: Value) -> str | None:
    """Why the class's `_enum` is wrong for an out-of-tree platform (None if fine)."""
    if info.missing:
        return "`_enum` is not set"
    if info.enum is None:
        return f"`_enum` is {info.repr}, not a PlatformEnum member"
    if info.enum == "OOT":
        return None
    if info.enum != "UNSPECIFIED" and info.inherited_from:
        # Derived from a built-in platform and keeping its identity: a deliberate choice.
        return None
    return (
        f"`_enum` is PlatformEnum.{info.enum}; an out-of-tree platform uses PlatformEnum.OOT "
        "(a built-in member makes vLLM take that built-in's code paths: is_cuda(), is_cpu() ...)"
    )


def text_problem(name: str, info: Value) -> str | None:
    """Why a `device_name` / `device_type` class attribute is not a non-empty str (or None)."""
    if info.missing:
        return f"`{name}` is not set"
    if info.value is None:
        return f"`{name}` is {info.repr} (a {info.type}), not a str"
    if not info.value:
        return f"`{name}` is an empty string"
    return None


# --------------------------------------------------------------------------------------------
# The shared probes.


def detection(ctx: CheckContext) -> DetectionObservation:
    """Observations of loading and calling the entry point (one probe per entry point)."""
    return ctx.observe(observe_detection, purpose="that loads and calls the detection function")


def _function(ctx: CheckContext) -> DetectionObservation:
    """Observations of an entry point that loaded and is callable (see platform.loadable)."""
    run = detection(ctx)
    if run.load_error is not None:
        fail_on(run.load_error, "The entry point could not be loaded (see platform.loadable):")
    if not run.callable:
        fail(_not_callable(run))
    return run


def _not_callable(run: DetectionObservation) -> str:
    """The failure message for an entry point that loaded but is not a function."""
    shown = run.loaded.repr if run.loaded is not None else "an object"
    return (
        f"The entry point resolves to {shown}, which is not callable; vLLM asserts that it "
        "is, and the AssertionError stops platform resolution."
    )


def active_qualname(ctx: CheckContext) -> str:
    """The class name the plugin answers on this machine; skips an inactive plugin."""
    first = _function(ctx).answers[0]
    if first.kind == "none":
        skip(INACTIVE)
    if first.kind == "raised" and first.exception:
        skip(
            "the detection function raised on this machine, so vLLM treats the plugin as "
            "inactive (see platform.returns-qualname-or-none)"
        )
    problem = qualname_problem(first, ctx.session.contract)
    if problem:
        fail(
            "There is no platform class to examine: when called, "
            f"{problem} (see platform.returns-qualname-or-none)"
        )
    return str(first.value)


def platform_class(ctx: CheckContext) -> tuple[str, ClassObservation]:
    """The active plugin's class name and observations of it; skips an inactive plugin."""
    qualname = active_qualname(ctx)
    run = ctx.observe(
        observe_class,
        qualname=qualname,
        env={"VLLM_PLUGINS": NO_PLUGIN},
        purpose=f"that examines the platform class {qualname}",
    )
    return qualname, run


def _class_target(ctx: CheckContext) -> tuple[str, ClassObservation]:
    """Observations of a class that imported and whose hooks were called."""
    name, run = platform_class(ctx)
    if run.class_error is not None:
        fail_on(run.class_error, f"{name} does not import (see platform.class-valid):")
    if not run.is_class:
        fail(f"{name} is {run.class_repr}, not a class (see platform.class-valid).")
    return name, run


# --------------------------------------------------------------------------------------------
# The checks.


@check(
    "platform.loadable",
    title="the platform plugin's entry point imports and resolves",
    fix="Make the entry point's module importable with only vLLM and the plugin's declared "
    "dependencies (no imports of names vLLM no longer has), and point it at a function that "
    "exists.",
    requires=("package.entry-points-resolve",),
)
def check_loadable(ctx: CheckContext) -> None:
    """vLLM loads platform plugins while it resolves `current_platform`, the first thing every
    process does. An entry point that fails to load is logged and skipped: vLLM silently runs
    on a built-in platform instead. The entry point must load in a fresh process."""
    run = detection(ctx)
    if run.load_error is not None:
        fail_on(run.load_error, f"Loading {ctx.ep.value!r} raised:")
    if not run.callable:
        fail(_not_callable(run))


@check(
    "platform.returns-qualname-or-none",
    title="the detection function returns a dotted 'pkg.module.Class' name or None",
    fix="Return the platform class's dotted name as a str (e.g. 'my_plugin.platform.MyPlatform') "
    "when the device is present and None otherwise; never raise, return a class, or use the "
    "'module:Class' form.",
    requires=LOADED,
)
def check_returns_qualname_or_none(ctx: CheckContext) -> None:
    """vLLM calls the entry point with no arguments. `None` means inactive; anything else
    means active and is imported with `resolve_obj_by_qualname`, which splits on the last
    dot, so a class object, a tuple or a 'module:Class' string crashes platform resolution in
    every process. An exception hides the plugin: vLLM logs it at DEBUG only (up to 0.32) or
    prints its traceback at WARNING in every process (from 0.33)."""
    run = _function(ctx)
    seen: list[str] = []
    problems = []
    raised = None
    for i, answer in enumerate(run.answers, 1):
        problem = qualname_problem(answer, ctx.session.contract)
        if problem is None or problem in seen:
            continue
        seen.append(problem)
        problems.append(problem if i == 1 else f"(call {i}) {problem}")
        raised = raised or answer.error
    if not problems:
        return
    message = "When the detection function was called, " + "\n".join(problems)
    if raised is not None:
        fail_on(raised, message)
    fail(message)


@check(
    "platform.deterministic",
    title="the detection function gives the same answer on every call",
    fix="Compute the answer from the machine alone (devices present, an opt-in variable) and "
    "keep no state between calls: no 'already activated' flags, no randomness.",
    requires=LOADED,
)
def check_deterministic(ctx: CheckContext) -> None:
    """vLLM calls the active plugin's function twice in every process: once to detect, once
    to fetch the class name. If the second answer differs, vLLM imports another class than
    the one it detected, or crashes on None. The function is called three times in a row."""
    answers = [answer_key(a) for a in _function(ctx).answers]
    if len(set(answers)) > 1:
        listed = "\n".join(f"  call {i}: {a}" for i, a in enumerate(answers, 1))
        fail(f"The detection function answered differently on {len(answers)} calls:\n{listed}")


@check(
    "platform.name-not-builtin",
    title="the entry-point name is not one of vLLM's built-in platform names",
    fix="Rename the entry point after the device or vendor (e.g. 'my_npu'); "
    f"{', '.join(BUILTIN_PLATFORMS)} are taken by vLLM's built-in detectors.",
)
def check_name_not_builtin(ctx: CheckContext) -> None:
    """vLLM sorts active platforms into built-in and out-of-tree by name. A plugin named like
    a built-in lands in both sets: when only the built-in is active, vLLM calls the plugin's
    function for the class name, gets None and crashes; otherwise the built-in is hidden. The
    names are also ambiguous in `VLLM_PLUGINS`, logs and error messages."""
    if ctx.ep.name in BUILTIN_PLATFORMS:
        fail(
            f"The entry point is named {ctx.ep.name!r}, the name of vLLM's built-in "
            f"{ctx.ep.name} platform detector."
        )


@check(
    "platform.class-valid",
    title="the platform class imports, subclasses Platform, instantiates with no arguments and "
    "sets _enum, device_name and device_type",
    fix="Subclass vllm.platforms.interface.Platform, keep __init__ argument-free, and set the "
    "class attributes `_enum = PlatformEnum.OOT`, `device_name` and `device_type` (the torch "
    "device string) to non-empty values.",
    requires=("platform.returns-qualname-or-none",),
)
def check_class_valid(ctx: CheckContext) -> None:
    """vLLM imports the class by name and makes `current_platform` with `cls()`. The base
    class only annotates `_enum`, `device_name` and `device_type`; a missing one is not an
    error at startup but surfaces deep inside the engine (in vLLM, without `device_type`
    every attribute lookup the platform falls back on recurses until RecursionError).
    `_enum` must be PlatformEnum.OOT, unless the class derives from a built-in platform and
    keeps its member."""
    name, run = platform_class(ctx)
    if run.class_error is not None:
        fail_on(run.class_error, f"{name} does not import:")
    if not run.is_class:
        fail(f"{name} is {run.class_repr}, not a class.")
    if not run.is_platform:
        fail(f"{name} does not subclass vllm.platforms.interface.Platform.")
    problems = [enum_problem(run.attrs["_enum"])]
    problems += [text_problem(attr, run.attrs[attr]) for attr in ("device_name", "device_type")]
    found = [p for p in problems if p]
    if run.init_error is not None:
        fail_on(run.init_error, f"On {name}: " + "; ".join([*found, f"`{name}()` raised:"]))
    if found:
        fail(f"On {name}: " + "; ".join(found))


@check(
    "platform.worker-cls",
    title="check_and_update_config sets parallel_config.worker_cls to a dotted class name",
    fix="In `check_and_update_config(cls, vllm_config)`, replace "
    "`vllm_config.parallel_config.worker_cls` when it is 'auto' with the dotted name of the "
    "platform's worker class.",
    requires=CLASS_VALID,
)
def check_worker_cls(ctx: CheckContext) -> None:
    """`ParallelConfig.worker_cls` defaults to 'auto', and only the platform replaces it: a
    platform that leaves 'auto' makes every worker fail in `init_worker` when it imports
    'auto'. The hook is called on a fresh `VllmConfig()` whose worker_cls is reset to 'auto'
    (the probe filters the plugin out, so building the config runs only the built-in's hook)."""
    _, run = _class_target(ctx)
    if run.config_error is not None:
        if run.config_error.owner == "plugin":
            fail_on(run.config_error, "Building the VllmConfig() to pass to the hook raised:")
        # The probe filtered the plugin out while the config was built: an engine that cannot
        # build one here (a Python-only vLLM, vLLM 0.34's CPU platform without triton-cpu)
        # says nothing about the plugin's hook.
        inconclusive(
            "The engine could not build a VllmConfig() here to pass to the hook "
            f"({run.config_error.headline}); judge it on an engine that can (a vLLM build with "
            "its compiled ops, or the reference)."
        )
    if run.worker_error is not None:
        fail_on(run.worker_error, "check_and_update_config(vllm_config) raised:")
    worker = run.worker_cls
    assert worker is not None, "the hook returned, so the probe read worker_cls"
    value = worker.value
    if value is None:
        fail(f"worker_cls was set to {worker.repr} (a {worker.type}); vLLM needs a str.")
    if value == "auto":
        fail("After check_and_update_config(vllm_config), parallel_config.worker_cls is 'auto'.")
    if not DOTTED_NAME.fullmatch(value):
        fail(f"worker_cls was set to {value!r}, which is not a dotted 'package.module.Class' name.")


@check(
    "platform.attn-backend",
    since="0.15.0",
    title="get_attn_backend_cls accepts vLLM's keyword call and returns an importable dotted name",
    fix="Declare `get_attn_backend_cls(cls, selected_backend, attn_selector_config, "
    "num_heads=None, **kwargs)` as a classmethod and return the dotted name of an attention "
    "backend class that imports.",
    requires=CLASS_VALID,
)
def check_attn_backend(ctx: CheckContext) -> None:
    """vLLM 0.32 asks the platform for an attention backend as
    `get_attn_backend_cls(selected_backend, attn_selector_config=cfg, num_heads=n)` (the
    keyword names matter; `selected_backend` is None when the user chose none) and imports
    the answer; an empty answer is a ValueError. Older engines called it positionally:
    `(selected_backend, head_size, dtype, kv_cache_dtype, block_size, use_v1[, use_mla,
    has_sink, use_sparse])` up to v0.12, the same without `use_v1` in v0.13-v0.14; the
    keyword form arrived by v0.15 and `num_heads` by ~v0.20 (passed here only where the
    engine's base class has it). Accepting `**kwargs` survives new keywords."""
    _, run = _class_target(ctx)
    if run.attn_setup_error is not None:
        fail_on(run.attn_setup_error, "The engine's AttentionSelectorConfig could not be built:")
    call = run.attn_call
    if run.attn_error is not None:
        hint = attn_signature_hint(run.attn_params)
        fail_on(
            run.attn_error, f"{call} raised. {hint}\nWhat it raised:" if hint else f"{call} raised:"
        )
    backend = run.attn
    assert backend is not None, "the hook returned, so the probe kept its answer"
    value = backend.value
    if value is None:
        fail(f"{call} returned {backend.repr} (a {backend.type}), not a str.")
    if not value:
        fail(f"{call} returned an empty string; vLLM raises 'Invalid attention backend'.")
    if not DOTTED_NAME.fullmatch(value):
        fail(f"{call} returned {value!r}, which is not a dotted 'package.module.Class' name.")
    if backend.import_error is not None:
        fail_on(backend.import_error, f"{call} returned {value!r}, which does not import:")


@check(
    "platform.communicator",
    title="get_device_communicator_cls returns the dotted name of a device communicator class",
    fix="Return the dotted name of a DeviceCommunicatorBase subclass that imports (or keep the "
    "base class's default).",
    requires=CLASS_VALID,
)
def check_communicator(ctx: CheckContext) -> None:
    """Each worker imports the class `get_device_communicator_cls()` names and builds its
    collective operations from it; a name that does not import fails every worker at
    start-up, on any world size."""
    _, run = _class_target(ctx)
    if run.comm_error is not None:
        fail_on(run.comm_error, "get_device_communicator_cls() raised:")
    comm = run.comm
    assert comm is not None, "the hook returned, so the probe kept its answer"
    value = comm.value
    if value is None:
        fail(f"get_device_communicator_cls() returned {comm.repr}, not a str.")
    if not DOTTED_NAME.fullmatch(value):
        fail(f"get_device_communicator_cls() returned {value!r}, not a dotted class name.")
    if comm.import_error is not None:
        fail_on(
            comm.import_error,
            f"get_device_communicator_cls() returned {value!r}, which does not import:",
        )
    if not comm.is_class:
        fail(f"get_device_communicator_cls() returned {value!r}, which is not a class.")
    if comm.is_base is False:
        fail(f"{value} does not subclass vLLM's DeviceCommunicatorBase.")


@check(
    "platform.resolves",
    title="installed alone, the plugin becomes vLLM's current_platform; filtered out by "
    "VLLM_PLUGINS, the built-in does",
    fix="Do not touch `vllm.platforms.current_platform` while the plugin's modules import or "
    "while it detects (that resolves the platform before the plugin is loaded), and make the "
    "class instantiate; ship one active platform plugin per distribution.",
    requires=("platform.deterministic", "platform.class-valid"),
)
def check_resolves(ctx: CheckContext) -> None:
    """An active plugin must win platform resolution: `current_platform` is an instance of
    its class and vLLM logs INFO 'Platform plugin <name> is activated'. A plugin whose module
    reads `current_platform` at import resolves the platform before it is itself loaded and
    leaves a built-in cached for the whole process. With `VLLM_PLUGINS` naming another
    plugin, the built-in platform must resolve instead."""
    name, run = platform_class(ctx)
    detect = detection(ctx)
    notes = [
        f"  {r.level} {r.logger}: {r.message}" + (f"\n{r.exc}" if r.exc else "")
        for r in detect.records
        if r.level != "INFO"
    ]
    logged = "\nThe engine logged:\n" + "\n".join(notes) if notes else ""
    activated = f"Platform plugin {ctx.ep.name} is activated"
    if detect.resolve_error is not None:
        head = "Resolving vllm.platforms.current_platform raised:"
        fail_on(detect.resolve_error, f"{logged.lstrip()}\n{head}" if logged else head)
    if not detect.current_is_plugin:
        trace = detect.init_trace
        # A trace of only the probe's own access and the engine's resolver says nothing.
        frames = trace.count('  File "')
        where = f"\nThe platform was first resolved from:\n{trace}" if frames > 2 else ""
        fail(
            f"current_platform is a {detect.current}, not the plugin's "
            f"{name}, and vLLM did not log {activated!r}.{logged}{where}"
        )
    logged_activation = any(r.level == "INFO" and r.message == activated for r in detect.records)
    # vLLM 0.26-0.31 resolve the platform while `import vllm` runs, before their logging is
    # configured, so the INFO line is never emitted there: the class decides alone.
    if not logged_activation and not detect.resolved_at_import:
        fail(f"current_platform is the plugin's class, but vLLM did not log {activated!r}.")
    if run.fallback_error is not None:
        fail_on(run.fallback_error, f"With VLLM_PLUGINS={NO_PLUGIN!r}, resolving raised:")
    if run.fallback_is_plugin:
        fail(
            f"With VLLM_PLUGINS={NO_PLUGIN!r} (the plugin filtered out), current_platform is "
            f"still the plugin's {run.fallback}."
        )


@check(
    "platform.no-side-effects",
    level="recommended",
    title="the detection function leaves os.environ, sys.path and the logging setup unchanged",
    fix="Only decide and return in the detection function; set environment variables, import "
    "paths and loggers where the platform is really used (its class's hooks or its worker).",
    requires=LOADED,
)
def check_no_side_effects(ctx: CheckContext) -> None:
    """The detection function runs in every vLLM process, twice, and for an installed plugin
    even when another platform wins. Changing the environment, the import path or the
    logging setup there changes every vLLM run on the machine, whether or not the plugin's
    device is used. The function is called three times between two snapshots."""
    run = _function(ctx)
    assert run.before is not None and run.after is not None, "a callable is snapshotted"
    changes = side_effects(run.before, run.after)
    if changes:
        fail(f"Calling the detection function {CALLS} times changed:\n  " + "\n  ".join(changes))


# --------------------------------------------------------------------------------------------
# Engine run: the platform's worker running a model.

#: An exception line in an engine process's output, after vLLM's optional log prefix
#: ("(Worker pid=7) ERROR 11-22 19:15:38 [file.py:953] ").
_EXCEPTION_LINE = re.compile(
    r"^(?:\([^)]*\) )?(?:[A-Z]+ \S+ \S+ \[[^\]]*\] )?"
    r"((?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception): \S.*)$"
)
#: What vLLM's front-end processes raise about a child that failed: never the cause itself.
_RELAYED = ("See root cause", "See stack trace for root cause", "initialization failed")


def engine_root_causes(output: str, limit: int = 2) -> list[str]:
    """The first distinct exceptions an engine's child processes printed (`output` is the
    probe's stdout and stderr), leaving out the front end's 'see root cause above' relays."""
    causes: list[str] = []
    for line in output.splitlines():
        match = _EXCEPTION_LINE.match(line.strip())
        if not match or any(relay in match.group(1) for relay in _RELAYED):
            continue
        cause = match.group(1)[:400]
        if cause not in causes:
            causes.append(cause)
        if len(causes) == limit:
            break
    return causes


def platform_worker_env(ctx: CheckContext) -> dict[str, str | None]:
    """Admit this platform entry point and the target's general plugins (which may register
    what the platform relies on, e.g. custom ops), and no other platform."""
    names = [ctx.ep.name] + [
        ep.name for ep in ctx.target.vllm_entry_points if ep.group == "vllm.general_plugins"
    ]
    return {"VLLM_PLUGINS": ",".join(dict.fromkeys(names))}


def worker_run(ctx: CheckContext) -> EngineRun:
    """platform.worker-runs' engine run (declared, so that a run can start it ahead)."""
    return EngineRun(observe_worker_run, env=platform_worker_env(ctx), timeout=ENGINE_RUN_TIMEOUT_S)


@check(
    "platform.worker-runs",
    level="recommended",
    title="a CPU platform's worker class initialises, loads a model and runs a step",
    fix="Derive a CPU platform from `vllm.platforms.cpu.CpuPlatform` and call "
    "super().check_and_update_config(); with PlatformEnum.OOT keep `device_name` a torch "
    "device type ('cpu'); point worker_cls at a subclass of "
    "`vllm.v1.worker.cpu_worker.CPUWorker` that calls super() and reads only configuration "
    "the engine passes or that has a default.",
    requires=("platform.resolves", "platform.worker-cls", "platform.communicator"),
    engine_run=worker_run,
)
def check_worker_runs(ctx: CheckContext) -> None:
    """`check_and_update_config` names the worker class, but nothing imports or builds it
    until an engine starts: `init_device`, `load_model` and `execute_model` run only then.
    For an active platform whose `device_type` is 'cpu' (the only device the harness can
    count on), `LLM` on a tiny generated Llama, with this platform and the distribution's
    general plugins admitted and the uniprocess executor, must generate 2 tokens for each of
    2 prompts. Other device types are skipped. What vLLM 0.32 needs of such a platform: the
    CPU worker relies on `CpuPlatform.check_and_update_config` (KV-cache sizing, executor,
    block size); an out-of-tree platform's `device_name` becomes the process groups'
    torch device; and the worker's `load_model` uses a sleep-mode memory pool for every
    platform but CUDA, XPU and the built-in CPU, which a CPU-backed out-of-tree worker must
    replace with a null context (see the vllm_add_dummy_platform fixture)."""
    name, run = _class_target(ctx)
    device_type = run.attrs.get("device_type")
    device = device_type.value if device_type is not None else None
    if device != "cpu":
        skip(
            f"the platform's device_type is {device!r}, not 'cpu': only CPU platforms are run "
            "by the harness"
        )
    result = ctx.engine_run()
    engine = observation(result, observe_worker_run, f"that runs a model on {name}")
    skip_if_engine_missing(engine.missing)
    if engine.error is not None:
        shown = f" (worker_cls {engine.worker_cls!r})" if engine.worker_cls else ""
        head = f"{engine.stage}{shown} raised:"
        causes = engine_root_causes(result.stdout_tail + "\n" + result.stderr_tail)
        if causes:
            # An engine process's failure reaches the LLM only as 'see root cause above'.
            reported = "\n  ".join(causes)
            head = f"The engine's processes reported:\n  {reported}\n{head}"
        fail_engine_run(ctx, engine.error, head)
    if engine.platform != name:
        fail(
            f"The engine resolved {engine.platform}, not {name}, so the "
            "platform's worker did not run (see platform.resolves)."
        )
    if engine.tokens != [2, 2]:
        fail(f"2 tokens were asked for each of 2 prompts; the worker produced {engine.tokens}.")
