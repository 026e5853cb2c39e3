"""Platform-plugin checks (`vllm.platform_plugins`): detection, the platform class, resolution.

Two probes per entry point feed every check. `platform_detect` loads the entry point, calls it
three times (watching the process for side effects) and, when it answers with a class name,
lets the engine resolve `current_platform` as it would at startup. `platform_class`, run only
for an active plugin, resolves the platform with the plugin filtered out (the built-in must
win) and then examines the plugin's class and calls its hooks as vLLM 0.32 calls them.
"""

from __future__ import annotations

import json
import re
from typing import Any

from conformance.context import CheckContext
from conformance.framework import check, fail, skip

#: Names of vLLM 0.32's built-in platform detectors, which share a namespace with plugins.
BUILTIN_PLATFORMS = ("tpu", "cuda", "rocm", "xpu", "cpu")
#: `pkg.module.Class`: what `resolve_obj_by_qualname` can import (it splits on the last dot).
DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")
#: A `VLLM_PLUGINS` value that admits no installed plugin, so the built-in platform resolves.
NO_PLUGIN = "vllm-conformance-no-such-plugin"
INACTIVE = "the plugin is inactive on this machine (returned None)"
#: How many times the detection function is called in a row (vLLM calls it twice per process).
CALLS = 3

PLATFORM_DETECT = r"""
import logging, os, re, sys, traceback
R = probe.result


def _answer(func):
    try:
        value = func()
    except BaseException as exc:
        return {"kind": "raised", "repr": f"{type(exc).__name__}: {exc}"[:300],
                "exception": isinstance(exc, Exception), "error": _err(exc)}
    if value is None:
        return {"kind": "none", "repr": "None"}
    if type(value) is str:
        return {"kind": "str", "value": value, "repr": repr(value)[:300]}
    return {"kind": "other", "type": type(value).__qualname__, "repr": repr(value)[:300],
            "is_class": isinstance(value, type)}

def _logging():
    state = {"logging.disable": logging.root.manager.disable}
    for name, lg in (("root", logging.getLogger()), ("vllm", logging.getLogger("vllm"))):
        state[name] = {
            "level": logging.getLevelName(lg.level), "propagate": lg.propagate,
            "disabled": lg.disabled,
            "handlers": [f"{type(h).__module__}.{type(h).__qualname__}#{id(h)}"
                         f" level={logging.getLevelName(h.level)}" for h in lg.handlers]}
    return state

def _snapshot():
    return {"environ": dict(os.environ), "sys_path": list(sys.path), "logging": _logging()}

def _name(cls):
    return f"{cls.__module__}.{cls.__qualname__}"

import vllm.platforms  # the engine's surface, without resolving the platform
mark = probe.mark()
try:
    func = target_entry_point(EP_GROUP, EP_NAME).load()
except BaseException as exc:
    R["load_error"] = _err(exc)
else:
    R["callable"] = callable(func)
    R["describe"] = describe(func)
    if callable(func):
        R["before"] = _snapshot()
        R["answers"] = [_answer(func) for _ in range(CALLS)]
        R["after"] = _snapshot()
        # Keep only what the checks need of the user's environment: values the plugin set.
        import hashlib
        before_env, after_env = R["before"]["environ"], R["after"]["environ"]
        for key in set(before_env) | set(after_env):
            for env in (before_env, after_env):
                if key in before_env and key in env:
                    env[key] = hashlib.sha256(env[key].encode()).hexdigest()[:16]
        first = R["answers"][0]
        if first["kind"] == "str" and re.fullmatch(DOTTED, first["value"]):
            try:
                current = vllm.platforms.current_platform
            except BaseException as exc:
                R["resolve_error"] = _err(exc)
            else:
                R["current"] = _name(type(current))
                module, _, attr = first["value"].rpartition(".")
                try:
                    import importlib
                    cls = getattr(importlib.import_module(module), attr)
                    R["current_is_plugin"] = isinstance(cls, type) and isinstance(current, cls)
                except BaseException as exc:
                    R["class_error"] = _err(exc)
            # Where the platform was resolved, from the probe's own line on.
            lines = str(getattr(vllm.platforms, "_init_trace", "") or "").splitlines()
            probe_lines = [i for i, line in enumerate(lines) if '"<probe>"' in line]
            # Resolved while `import vllm` ran, before this code (vLLM 0.26-0.31 do that).
            R["resolved_at_import"] = bool(lines) and not probe_lines
            lines = lines[probe_lines[0]:] if probe_lines else lines
            R["init_trace"] = "\n".join(lines[-30:])
R["records"] = [
    r for r in probe.records(since=mark)
    if r["level"] != "DEBUG" or "failed during detection" in r["message"]
][:40]
"""

PLATFORM_CLASS = r"""
import importlib, importlib.util, inspect, sys, traceback
R = probe.result
MISSING = object()


def _resolve(qualname):
    module, _, attr = qualname.rpartition(".")
    return getattr(importlib.import_module(module), attr)

def _name(cls):
    return f"{cls.__module__}.{cls.__qualname__}"

def _value(value):
    out = {"repr": repr(value)[:300], "type": type(value).__qualname__}
    if type(value) is str:
        out["value"] = value
    return out


import vllm.platforms
from vllm.platforms.interface import Platform, PlatformEnum

# With the plugin filtered out by VLLM_PLUGINS, the built-in platform must win.
current = None
try:
    current = vllm.platforms.current_platform
    R["fallback"] = _name(type(current))
except BaseException as exc:
    R["fallback_error"] = _err(exc)

cls = target = None
try:
    cls = _resolve(QUALNAME)
except BaseException as exc:
    R["class_error"] = _err(exc)
if cls is not None:
    R["fallback_is_plugin"] = isinstance(cls, type) and isinstance(current, cls)
    R["is_class"] = isinstance(cls, type)
    R["class_repr"] = repr(cls)[:300]
if R.get("is_class"):
    R["is_platform"] = issubclass(cls, Platform)
    attrs = {}
    for name in ("_enum", "device_name", "device_type"):
        value = getattr(cls, name, MISSING)
        attrs[name] = {"missing": True} if value is MISSING else _value(value)
    enum = getattr(cls, "_enum", None)
    if isinstance(enum, PlatformEnum):
        attrs["_enum"]["enum"] = enum.name
        # A class derived from a built-in platform may keep that platform's identity.
        attrs["_enum"]["inherited_from"] = [
            _name(base) for base in cls.__mro__[1:]
            if base is not Platform and base.__dict__.get("_enum") is enum]
    R["attrs"] = attrs
    try:
        target = cls()
    except BaseException as exc:
        R["init_error"] = _err(exc)
        target = cls
    else:
        R["instantiated"] = True

if target is not None:
    # vLLM calls every hook through the `current_platform` instance.
    try:
        from vllm.config import VllmConfig
        config = VllmConfig()  # runs the built-in platform's check_and_update_config
    except BaseException as exc:
        R["config_error"] = _err(exc)
    else:
        config.parallel_config.worker_cls = "auto"
        try:
            target.check_and_update_config(config)
        except BaseException as exc:
            R["worker_error"] = _err(exc)
        else:
            R["worker_cls"] = _value(config.parallel_config.worker_cls)

    def _selector(dtype):
        from vllm.v1.attention.selector import AttentionSelectorConfig
        selector = AttentionSelectorConfig(
            head_size=128, dtype=dtype, kv_cache_dtype="auto", block_size=16)
        kwargs = {"attn_selector_config": selector}
        # num_heads arrived after the keyword form (~v0.20): pass it where the engine does.
        if "num_heads" in (_params(Platform.get_attn_backend_cls) or ()):
            kwargs["num_heads"] = 8
        return kwargs

    def _ask(kwargs):
        selector = kwargs["attn_selector_config"]
        shown = [f"attn_selector_config=AttentionSelectorConfig(head_size=128, "
                 f"dtype={selector.dtype!r}, kv_cache_dtype='auto', block_size=16)"]
        shown += [f"{k}={v!r}" for k, v in kwargs.items() if k != "attn_selector_config"]
        R["attn_call"] = f"get_attn_backend_cls(None, {', '.join(shown)})"
        R.pop("attn_error", None)
        try:
            return target.get_attn_backend_cls(None, **kwargs)
        except BaseException as exc:
            R["attn_error"] = _err(exc)

    # vLLM passes a torch dtype, and real vLLM has always imported torch by now. The
    # reference may not have, and importing torch only to ask costs seconds: a str stands in,
    # and the question is asked again with a torch dtype if the hook raises with it.
    try:
        kwargs = _selector(sys.modules["torch"].bfloat16 if "torch" in sys.modules else "bfloat16")
    except BaseException as exc:
        R["attn_setup_error"] = _err(exc)
    else:
        R["attn_params"] = _params(getattr(target, "get_attn_backend_cls", None))
        backend = _ask(kwargs)
        try:
            inspect.signature(target.get_attn_backend_cls).bind(None, **kwargs)
            binds = True
        except TypeError:
            binds = False  # the call itself does not fit: no dtype can change that
        except (AttributeError, ValueError):
            binds = True
        retry = "attn_error" in R and binds and "torch" not in sys.modules
        if retry and importlib.util.find_spec("torch"):
            import torch
            backend = _ask(_selector(torch.bfloat16))
        if "attn_error" not in R:
            R["attn"] = _value(backend)
            if type(backend) is str and "." in backend:
                try:
                    R["attn"]["resolved"] = repr(_resolve(backend))[:200]
                except BaseException as exc:
                    R["attn"]["import_error"] = _err(exc)

    try:
        communicator = target.get_device_communicator_cls()
    except BaseException as exc:
        R["comm_error"] = _err(exc)
    else:
        R["comm"] = _value(communicator)
        if type(communicator) is str and "." in communicator:
            try:
                obj = _resolve(communicator)
            except BaseException as exc:
                R["comm"]["import_error"] = _err(exc)
            else:
                R["comm"]["is_class"] = isinstance(obj, type)
                try:
                    from vllm.distributed.device_communicators.base_device_communicator import (
                        DeviceCommunicatorBase)
                except ImportError:
                    pass
                else:
                    R["comm"]["is_base"] = isinstance(obj, type) and issubclass(
                        obj, DeviceCommunicatorBase)
"""


# --------------------------------------------------------------------------------------------
# Pure helpers (unit-tested): what an observation means.


def qualname_problem(answer: dict[str, Any]) -> str | None:
    """Why one answer of the detection function is not `None` or a dotted name (None if fine)."""
    kind = answer["kind"]
    if kind == "none":
        return None
    if kind == "raised":
        if not answer.get("exception", True):
            return (
                f"it raised {answer['repr']}, which is not an Exception: vLLM does not catch it "
                "and the process stops. Return None when the platform is not present."
            )
        return (
            f"it raised {answer['repr']}; vLLM swallows the exception (logged at DEBUG only) "
            "and silently treats the plugin as inactive. Return None instead of raising."
        )
    if kind == "other":
        if answer.get("is_class"):
            return (
                f"it returned the class {answer['repr']} itself; return its dotted name "
                "(f'{cls.__module__}.{cls.__qualname__}'), which vLLM imports lazily."
            )
        return f"it returned {answer['repr']} (a {answer['type']}), not a str or None."
    value = answer["value"]
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


def answer_key(answer: dict[str, Any]) -> str:
    """What one call answered, in words comparable between calls."""
    return f"raised {answer['repr']}" if answer["kind"] == "raised" else answer["repr"]


def side_effects(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What changed in `os.environ`, `sys.path` and the logging setup between two snapshots.

    Values of variables that existed before are not quoted: they may hold the user's secrets.
    """
    changes = []
    env_b, env_a = before["environ"], after["environ"]
    for key in sorted(set(env_a) - set(env_b)):
        changes.append(f"os.environ[{key!r}] was set to {env_a[key][:80]!r}")
    changes += [f"os.environ[{key!r}] was removed" for key in sorted(set(env_b) - set(env_a))]
    changes += [
        f"os.environ[{key!r}] was changed"
        for key in sorted(set(env_a) & set(env_b))
        if env_a[key] != env_b[key]
    ]
    path_b, path_a = before["sys_path"], after["sys_path"]
    changes += [f"sys.path gained {p!r}" for p in path_a if p not in path_b]
    changes += [f"sys.path lost {p!r}" for p in path_b if p not in path_a]
    if path_a != path_b and set(path_a) == set(path_b):
        changes.append("sys.path was reordered")
    log_b, log_a = before["logging"], after["logging"]
    for key in sorted(set(log_a) | set(log_b)):
        if log_a.get(key) == log_b.get(key):
            continue
        if isinstance(log_a.get(key), dict) and isinstance(log_b.get(key), dict):
            for field in sorted(set(log_a[key]) | set(log_b[key])):
                old, new = log_b[key].get(field), log_a[key].get(field)
                if old != new:
                    changes.append(f"the {key} logger's {field} changed from {old} to {new}")
        else:
            changes.append(f"{key} changed from {log_b.get(key)} to {log_a.get(key)}")
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


def enum_problem(info: dict[str, Any]) -> str | None:
    """Why the class's `_enum` is wrong for an out-of-tree platform (None if fine)."""
    if info.get("missing"):
        return "`_enum` is not set"
    if "enum" not in info:
        return f"`_enum` is {info['repr']}, not a PlatformEnum member"
    if info["enum"] == "OOT":
        return None
    if info["enum"] != "UNSPECIFIED" and info.get("inherited_from"):
        # Derived from a built-in platform and keeping its identity: a deliberate choice.
        return None
    return (
        f"`_enum` is PlatformEnum.{info['enum']}; an out-of-tree platform uses PlatformEnum.OOT "
        "(a built-in member makes vLLM take that built-in's code paths: is_cuda(), is_cpu() ...)"
    )


def text_problem(name: str, info: dict[str, Any]) -> str | None:
    """Why a `device_name` / `device_type` class attribute is not a non-empty str (or None)."""
    if info.get("missing"):
        return f"`{name}` is not set"
    if "value" not in info:
        return f"`{name}` is {info['repr']} (a {info['type']}), not a str"
    if not info["value"]:
        return f"`{name}` is an empty string"
    return None


# --------------------------------------------------------------------------------------------
# The shared probes.


def platform_detect(ctx: CheckContext) -> dict[str, Any]:
    """Observations of loading and calling the entry point; fails the check if the probe died."""
    assert ctx.entry_point is not None
    code = f"DOTTED = {DOTTED_NAME.pattern!r}\nCALLS = {CALLS}\n" + PLATFORM_DETECT
    result = ctx.session.memo(f"platform_detect {ctx.entry_point.key}", lambda: ctx.probe(code))
    if not result.ok:
        fail(f"Loading and calling the detection function in a fresh process {result.describe()}")
    return result.values


def _function(ctx: CheckContext) -> dict[str, Any]:
    """Observations of an entry point that loaded and is callable."""
    run = platform_detect(ctx)
    if "load_error" in run:
        fail(f"The entry point could not be loaded (see platform.loadable):\n{run['load_error']}")
    if not run["callable"]:
        fail(
            f"The entry point resolves to {run['describe']['repr']}, which is not callable; "
            "vLLM asserts that it is, and the AssertionError stops platform resolution."
        )
    return run


def active_qualname(ctx: CheckContext) -> str:
    """The class name the plugin answers on this machine; skips an inactive plugin."""
    first = _function(ctx)["answers"][0]
    if first["kind"] == "none":
        skip(INACTIVE)
    if first["kind"] == "raised" and first.get("exception"):
        skip(
            "the detection function raised on this machine, so vLLM treats the plugin as "
            "inactive (see platform.returns-qualname-or-none)"
        )
    problem = qualname_problem(first)
    if problem:
        fail(
            "There is no platform class to examine: when called, "
            f"{problem} (see platform.returns-qualname-or-none)"
        )
    return str(first["value"])


def platform_class(ctx: CheckContext) -> dict[str, Any]:
    """Observations of the active plugin's class and hooks; skips an inactive plugin."""
    assert ctx.entry_point is not None
    qualname = active_qualname(ctx)
    code = f"QUALNAME = {json.dumps(qualname)}\n" + PLATFORM_CLASS
    result = ctx.session.memo(
        f"platform_class {ctx.entry_point.key}",
        lambda: ctx.probe(code, env={"VLLM_PLUGINS": NO_PLUGIN}),
    )
    if not result.ok:
        fail(f"Examining the platform class {qualname} in a fresh process {result.describe()}")
    return {"qualname": qualname, **result.values}


def _class_target(ctx: CheckContext) -> dict[str, Any]:
    """Observations of a class that imported, for the checks that call its hooks."""
    run = platform_class(ctx)
    if "class_error" in run:
        fail(f"{run['qualname']} does not import (see platform.class-valid):\n{run['class_error']}")
    return run


# --------------------------------------------------------------------------------------------
# The checks.


@check(
    "platform.loadable",
    title="the platform plugin's entry point imports and resolves",
    fix="Make the entry point's module importable with only vLLM and the plugin's declared "
    "dependencies (no imports of names vLLM no longer has), and point it at a function that "
    "exists.",
)
def check_loadable(ctx: CheckContext) -> None:
    """vLLM loads platform plugins while it resolves `current_platform`, the first thing every
    process does. An entry point that fails to load is logged and skipped: vLLM silently runs
    on a built-in platform instead. The entry point must load in a fresh process."""
    run = platform_detect(ctx)
    if "load_error" in run:
        fail(f"Loading {ctx.entry_point.value!r} raised:\n{run['load_error']}")


@check(
    "platform.returns-qualname-or-none",
    title="the detection function returns a dotted 'pkg.module.Class' name or None",
    fix="Return the platform class's dotted name as a str (e.g. 'my_plugin.platform.MyPlatform') "
    "when the device is present and None otherwise; never raise, return a class, or use the "
    "'module:Class' form.",
)
def check_returns_qualname_or_none(ctx: CheckContext) -> None:
    """vLLM calls the entry point with no arguments. `None` means inactive; anything else
    means active and is imported with `resolve_obj_by_qualname`, which splits on the last
    dot, so a class object, a tuple or a 'module:Class' string crashes platform resolution in
    every process. An exception is swallowed at DEBUG and hides the plugin silently."""
    run = _function(ctx)
    problems = []
    for i, answer in enumerate(run["answers"], 1):
        problem = qualname_problem(answer)
        if problem and problem not in problems:
            problems.append(problem)
            if answer["kind"] == "raised":
                problems.append(answer["error"])
            if i > 1:
                problems[-1] = f"(call {i}) {problems[-1]}"
    if problems:
        fail("When the detection function was called, " + "\n".join(problems))


@check(
    "platform.deterministic",
    title="the detection function gives the same answer on every call",
    fix="Compute the answer from the machine alone (devices present, an opt-in variable) and "
    "keep no state between calls: no 'already activated' flags, no randomness.",
)
def check_deterministic(ctx: CheckContext) -> None:
    """vLLM calls the active plugin's function twice in every process: once to detect, once
    to fetch the class name. If the second answer differs, vLLM imports another class than
    the one it detected, or crashes on None. The function is called three times in a row."""
    run = _function(ctx)
    answers = [answer_key(a) for a in run["answers"]]
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
    assert ctx.entry_point is not None
    if ctx.entry_point.name in BUILTIN_PLATFORMS:
        fail(
            f"The entry point is named {ctx.entry_point.name!r}, the name of vLLM's built-in "
            f"{ctx.entry_point.name} platform detector."
        )


@check(
    "platform.class-valid",
    title="the platform class imports, subclasses Platform, instantiates with no arguments and "
    "sets _enum, device_name and device_type",
    fix="Subclass vllm.platforms.interface.Platform, keep __init__ argument-free, and set the "
    "class attributes `_enum = PlatformEnum.OOT`, `device_name` and `device_type` (the torch "
    "device string) to non-empty values.",
)
def check_class_valid(ctx: CheckContext) -> None:
    """vLLM imports the class by name and makes `current_platform` with `cls()`. The base
    class only annotates `_enum`, `device_name` and `device_type`; a missing one is not an
    error at startup but surfaces deep inside the engine (in vLLM, without `device_type`
    every attribute lookup the platform falls back on recurses until RecursionError).
    `_enum` must be PlatformEnum.OOT, unless the class derives from a built-in platform and
    keeps its member."""
    run = platform_class(ctx)
    name = run["qualname"]
    if "class_error" in run:
        fail(f"{name} does not import:\n{run['class_error']}")
    if not run["is_class"]:
        fail(f"{name} is {run['class_repr']}, not a class.")
    if not run["is_platform"]:
        fail(f"{name} does not subclass vllm.platforms.interface.Platform.")
    problems = [enum_problem(run["attrs"]["_enum"])]
    problems += [text_problem(attr, run["attrs"][attr]) for attr in ("device_name", "device_type")]
    if "init_error" in run:
        problems.append(f"`{name}()` raised:\n{run['init_error']}")
    problems = [p for p in problems if p]
    if problems:
        fail(f"On {name}: " + "; ".join(problems))


@check(
    "platform.worker-cls",
    title="check_and_update_config sets parallel_config.worker_cls to a dotted class name",
    fix="In `check_and_update_config(cls, vllm_config)`, replace "
    "`vllm_config.parallel_config.worker_cls` when it is 'auto' with the dotted name of the "
    "platform's worker class.",
)
def check_worker_cls(ctx: CheckContext) -> None:
    """`ParallelConfig.worker_cls` defaults to 'auto', and only the platform replaces it: a
    platform that leaves 'auto' makes every worker fail in `init_worker` when it imports
    'auto'. The hook is called on a fresh `VllmConfig()` whose worker_cls is reset to 'auto'
    (the probe filters the plugin out, so building the config runs only the built-in's hook)."""
    run = _class_target(ctx)
    if "config_error" in run:
        fail(
            f"The engine could not build a VllmConfig() to pass to the hook:\n{run['config_error']}"
        )
    if "worker_error" in run:
        fail(f"check_and_update_config(vllm_config) raised:\n{run['worker_error']}")
    worker = run["worker_cls"]
    value = worker.get("value")
    if value is None:
        fail(f"worker_cls was set to {worker['repr']} (a {worker['type']}); vLLM needs a str.")
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
    run = _class_target(ctx)
    if "attn_setup_error" in run:
        fail(f"The engine's AttentionSelectorConfig could not be built:\n{run['attn_setup_error']}")
    call = run["attn_call"]
    if "attn_error" in run:
        hint = attn_signature_hint(run.get("attn_params"))
        fail(f"{call} raised:\n{run['attn_error'].rstrip()}\n{hint.strip()}".rstrip())
    backend = run["attn"]
    value = backend.get("value")
    if value is None:
        fail(f"{call} returned {backend['repr']} (a {backend['type']}), not a str.")
    if not value:
        fail(f"{call} returned an empty string; vLLM raises 'Invalid attention backend'.")
    if not DOTTED_NAME.fullmatch(value):
        fail(f"{call} returned {value!r}, which is not a dotted 'package.module.Class' name.")
    if "import_error" in backend:
        fail(f"{call} returned {value!r}, which does not import:\n{backend['import_error']}")


@check(
    "platform.communicator",
    title="get_device_communicator_cls returns the dotted name of a device communicator class",
    fix="Return the dotted name of a DeviceCommunicatorBase subclass that imports (or keep the "
    "base class's default).",
)
def check_communicator(ctx: CheckContext) -> None:
    """Each worker imports the class `get_device_communicator_cls()` names and builds its
    collective operations from it; a name that does not import fails every worker at
    start-up, on any world size."""
    run = _class_target(ctx)
    if "comm_error" in run:
        fail(f"get_device_communicator_cls() raised:\n{run['comm_error']}")
    comm = run["comm"]
    value = comm.get("value")
    if value is None:
        fail(f"get_device_communicator_cls() returned {comm['repr']}, not a str.")
    if not DOTTED_NAME.fullmatch(value):
        fail(f"get_device_communicator_cls() returned {value!r}, not a dotted class name.")
    if "import_error" in comm:
        fail(
            f"get_device_communicator_cls() returned {value!r}, which does not import:\n"
            f"{comm['import_error']}"
        )
    if not comm.get("is_class"):
        fail(f"get_device_communicator_cls() returned {value!r}, which is not a class.")
    if comm.get("is_base") is False:
        fail(f"{value} does not subclass vLLM's DeviceCommunicatorBase.")


@check(
    "platform.resolves",
    title="installed alone, the plugin becomes vLLM's current_platform; filtered out by "
    "VLLM_PLUGINS, the built-in does",
    fix="Do not touch `vllm.platforms.current_platform` while the plugin's modules import or "
    "while it detects (that resolves the platform before the plugin is loaded), and make the "
    "class instantiate; ship one active platform plugin per distribution.",
)
def check_resolves(ctx: CheckContext) -> None:
    """An active plugin must win platform resolution: `current_platform` is an instance of
    its class and vLLM logs INFO 'Platform plugin <name> is activated'. A plugin whose module
    reads `current_platform` at import resolves the platform before it is itself loaded and
    leaves a built-in cached for the whole process. With `VLLM_PLUGINS` naming another
    plugin, the built-in platform must resolve instead."""
    assert ctx.entry_point is not None
    run = platform_class(ctx)
    detect = platform_detect(ctx)
    name = ctx.entry_point.name
    notes = [
        f"  {r['level']} {r['logger']}: {r['message']}" + (f"\n{r['exc']}" if r.get("exc") else "")
        for r in detect["records"]
        if r["level"] != "INFO"
    ]
    logged = "\nThe engine logged:\n" + "\n".join(notes) if notes else ""
    activated = f"Platform plugin {name} is activated"
    if "resolve_error" in detect:
        fail(
            f"Resolving vllm.platforms.current_platform raised:\n{detect['resolve_error']}{logged}"
        )
    if not detect.get("current_is_plugin"):
        trace = detect.get("init_trace", "")
        # A trace of only the probe's own access and the engine's resolver says nothing.
        frames = trace.count('  File "')
        where = f"\nThe platform was first resolved from:\n{trace}" if frames > 2 else ""
        fail(
            f"current_platform is a {detect.get('current')}, not the plugin's "
            f"{run['qualname']}, and vLLM did not log {activated!r}.{logged}{where}"
        )
    logged_activation = any(
        r["level"] == "INFO" and r["message"] == activated for r in detect["records"]
    )
    # vLLM 0.26-0.31 resolve the platform while `import vllm` runs, before their logging is
    # configured, so the INFO line is never emitted there: the class decides alone.
    if not logged_activation and not detect.get("resolved_at_import"):
        fail(f"current_platform is the plugin's class, but vLLM did not log {activated!r}.")
    if "fallback_error" in run:
        fail(f"With VLLM_PLUGINS={NO_PLUGIN!r}, resolving raised:\n{run['fallback_error']}")
    if run.get("fallback_is_plugin"):
        fail(
            f"With VLLM_PLUGINS={NO_PLUGIN!r} (the plugin filtered out), current_platform is "
            f"still the plugin's {run['fallback']}."
        )


@check(
    "platform.no-side-effects",
    level="recommended",
    title="the detection function leaves os.environ, sys.path and the logging setup unchanged",
    fix="Only decide and return in the detection function; set environment variables, import "
    "paths and loggers where the platform is really used (its class's hooks or its worker).",
)
def check_no_side_effects(ctx: CheckContext) -> None:
    """The detection function runs in every vLLM process, twice, and for an installed plugin
    even when another platform wins. Changing the environment, the import path or the
    logging setup there changes every vLLM run on the machine, whether or not the plugin's
    device is used. The function is called three times between two snapshots."""
    run = _function(ctx)
    changes = side_effects(run["before"], run["after"])
    if changes:
        fail(f"Calling the detection function {CALLS} times changed:\n  " + "\n  ".join(changes))


# --------------------------------------------------------------------------------------------
# Engine run: the platform's worker running a model.

PLATFORM_WORKER_RUN = r"""
R = probe.result

if not ENGINE_MISSING:
    stage = "resolving current_platform"
    try:
        import vllm.platforms
        platform = vllm.platforms.current_platform
        R["platform"] = f"{type(platform).__module__}.{type(platform).__qualname__}"
        from vllm import LLM, SamplingParams
        stage = "LLM(model=tiny_llama, distributed_executor_backend='uni')"
        # Built as every engine run is (see SMALL_ENGINE: real vLLM's CPU worker otherwise
        # insists that 92% of the host's memory be free).
        llm = LLM(model=tiny_checkpoint("llama"), max_num_seqs=2, max_model_len=128,
                  distributed_executor_backend="uni", **SMALL_ENGINE)
        R["worker_cls"] = str(llm.llm_engine.vllm_config.parallel_config.worker_cls)
        stage = "LLM.generate(2 prompts, max_tokens=2)"
        params = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
        outs = llm.generate(["Hello", "abc"], params)
        R["tokens"] = [len(o.outputs[0].token_ids) for o in outs]
        shut(llm)
    except BaseException as exc:
        R["engine_error"] = {"stage": stage, "error": _err(exc)}
"""


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
    assert ctx.entry_point is not None
    names = [ctx.entry_point.name] + [
        ep.name for ep in ctx.target.vllm_entry_points if ep.group == "vllm.general_plugins"
    ]
    return {"VLLM_PLUGINS": ",".join(dict.fromkeys(names))}


@check(
    "platform.worker-runs",
    level="recommended",
    title="a CPU platform's worker class initialises, loads a model and runs a step",
    fix="Derive a CPU platform from `vllm.platforms.cpu.CpuPlatform` and call "
    "super().check_and_update_config(); with PlatformEnum.OOT keep `device_name` a torch "
    "device type ('cpu'); point worker_cls at a subclass of "
    "`vllm.v1.worker.cpu_worker.CPUWorker` that calls super() and reads only configuration "
    "the engine passes or that has a default.",
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
    from conformance.checks.general import (
        ENGINE_RUN_TIMEOUT_S,
        engine_run_code,
        skip_if_engine_missing,
    )

    assert ctx.entry_point is not None
    run = _class_target(ctx)
    device = (run.get("attrs") or {}).get("device_type", {}).get("value")
    if device != "cpu":
        skip(
            f"the platform's device_type is {device!r}, not 'cpu': only CPU platforms are run "
            "by the harness"
        )
    result = ctx.session.memo(
        f"platform_worker_run {ctx.entry_point.key}",
        lambda: ctx.probe(
            engine_run_code(PLATFORM_WORKER_RUN),
            env=platform_worker_env(ctx),
            timeout=ENGINE_RUN_TIMEOUT_S,
        ),
    )
    if not result.ok:
        fail(f"Running a model on {run['qualname']} in a fresh process {result.describe()}")
    engine = result.values
    skip_if_engine_missing(engine)
    if "engine_error" in engine:
        error = engine["engine_error"]
        worker = engine.get("worker_cls")
        shown = f" (worker_cls {worker!r})" if worker else ""
        message = f"{error['stage']}{shown} raised:\n{error['error'].rstrip()}"
        causes = engine_root_causes(result.stdout_tail + "\n" + result.stderr_tail)
        if causes:
            # An engine process's failure reaches the LLM only as 'see root cause above'.
            message += "\nThe engine's processes reported:\n  " + "\n  ".join(causes)
        fail(message)
    if engine.get("platform") != run["qualname"]:
        fail(
            f"The engine resolved {engine.get('platform')}, not {run['qualname']}, so the "
            "platform's worker did not run (see platform.resolves)."
        )
    if engine["tokens"] != [2, 2]:
        fail(f"2 tokens were asked for each of 2 prompts; the worker produced {engine['tokens']}.")
