"""IO-processor checks (`vllm.io_processor_plugins`): the entry function's answer, the processor
class, and one request taken through it as vLLM 0.32's pooling server would.

Two probes per entry point feed every check. `io_examine` loads the entry point, calls it as
vLLM does (no arguments) and imports the class it names. `io_drive`, run only for a class,
constructs it as `cls(vllm_config, renderer)`, selects it by name through the engine's
`get_io_processor`, runs the round trip on the plugin's own sample request and feeds
`parse_data` malformed inputs.

A round trip needs a request and model outputs, which only the plugin can make up. It
provides them through two optional methods on the processor class (class or static methods,
or plain methods; they are called on a constructed instance):

- `conformance_sample_request()` returns a valid request's `data`, what a client would send;
- `conformance_fake_outputs(prompts)` returns plausible `PoolingRequestOutput`s, one per prompt
  `pre_process` returned, in order.

`io_processor.engine-run` takes the sample request through a real engine, which needs a
checkpoint of the model the processor feeds. The harness generates one when a checkpoint it
can make names the plugin in its `config.json` (`tiny_segmentation()` names
`prithvi_to_tiff`); any plugin can provide its own through a third optional hook, a class or
static method on the processor class:

- `conformance_checkpoint(workdir)` writes (or finds) a small local checkpoint of the model
  the processor feeds and returns its directory; `workdir` is an empty scratch directory.
  Models the checkpoint names must be registered by the plugin's distribution (a general
  plugin) or built in.
"""

from __future__ import annotations

import json
import re
from typing import Any

from conformance.context import CheckContext
from conformance.framework import check, fail, skip

#: `pkg.module.Class`: what `resolve_obj_by_qualname` can import (it splits on the last dot).
DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")
INACTIVE = "the plugin is inactive on this machine (its function returned None)"
REQUEST_ID = "conformance-0"
SAMPLE_HOOK = "conformance_sample_request"
OUTPUTS_HOOK = "conformance_fake_outputs"
#: Requests no processor should accept: (how it is shown, the value, the JSON type it has).
MALFORMED: tuple[tuple[str, Any, str], ...] = (
    ("None", None, "null"),
    ("42", 42, "number"),
    ("{}", {}, "object"),
    ("'}{ not a request'", "}{ not a request", "string"),
)

IO_EXAMINE = r"""
import importlib, inspect, traceback
R = probe.result



import vllm.plugins.io_processors
from vllm.plugins.io_processors.interface import IOProcessor

try:
    func = target_entry_point(EP_GROUP, EP_NAME).load()
except BaseException as exc:
    R["load_error"] = _err(exc)
else:
    R["describe"] = describe(func)
    R["callable"] = callable(func)
    if callable(func):
        try:
            value = func()
        except BaseException as exc:
            R["answer"] = {"kind": "raised", "repr": f"{type(exc).__name__}: {exc}"[:300],
                           "error": _err(exc)}
        else:
            if value is None:
                R["answer"] = {"kind": "none", "repr": "None"}
            elif type(value) is str:
                R["answer"] = {"kind": "str", "value": value, "repr": repr(value)[:300]}
            else:
                R["answer"] = {"kind": "other", "type": type(value).__qualname__,
                               "repr": repr(value)[:300], "is_class": isinstance(value, type)}
        answer = R["answer"]
        if answer["kind"] == "str" and re.fullmatch(DOTTED, answer["value"]):
            module, _, attr = answer["value"].rpartition(".")
            try:
                cls = getattr(importlib.import_module(module), attr)
            except BaseException as exc:
                R["class_error"] = _err(exc)
            else:
                R["is_class"] = isinstance(cls, type)
                R["class_repr"] = repr(cls)[:300]
                if R["is_class"]:
                    R["is_io"] = issubclass(cls, IOProcessor)
                    R["abstract"] = sorted(getattr(cls, "__abstractmethods__", ()))
                    R["init_params"] = _params(cls.__init__)
                    R["methods"] = sorted(
                        m for m in ("parse_data", "parse_request", "pre_process", "post_process",
                                    "merge_pooling_params", "validate_or_generate_params",
                                    "output_to_response")
                        if callable(getattr(cls, m, None)))
"""

IO_DRIVE = r"""
import dataclasses, importlib, json, traceback
from collections.abc import Mapping
R = probe.result


def _short(value):
    return repr(value)[:200]

def _jtype(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__qualname__

def _json_form(value):
    # What the server can put in the response's `data` field, and how it got there.
    attempts = [("as is", lambda: value)]
    if hasattr(value, "model_dump"):
        attempts.append(("model_dump(mode='json')", lambda: value.model_dump(mode="json")))
        attempts.append(("model_dump()", lambda: value.model_dump()))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        attempts.append(("dataclasses.asdict()", lambda: dataclasses.asdict(value)))
    if callable(getattr(value, "dict", None)):
        attempts.append(("dict()", lambda: value.dict()))
    errors = []
    for how, make in attempts:
        try:
            return {"how": how, "json": json.dumps(make())[:300]}
        except Exception as exc:
            errors.append(f"{how}: {type(exc).__name__}: {exc}"[:300])
    return {"errors": errors}

from vllm.config import VllmConfig
from vllm.plugins.io_processors import get_io_processor
from vllm.renderers import BaseRenderer

def _renderer(config):
    try:
        return BaseRenderer(config)
    except TypeError:
        # An engine whose BaseRenderer is abstract: a stand-in that answers nothing.
        stubs = {name: (lambda *a, **k: None) for name in getattr(
            BaseRenderer, "__abstractmethods__", ())}
        stand_in = type("ConformanceRenderer", (BaseRenderer,), stubs)
        try:
            return stand_in(config)
        except Exception:
            return object.__new__(stand_in)

module, _, attr = QUALNAME.rpartition(".")
cls = getattr(importlib.import_module(module), attr)
config = VllmConfig()
if getattr(config, "model_config", None) is not None:  # vLLM's own default has no model
    config.model_config.runner_type = "pooling"
    config.model_config.io_processor_plugin = EP_NAME
renderer = _renderer(config)

processor = None
try:
    processor = cls(config, renderer)
except BaseException as exc:
    R["construct_error"] = _err(exc)
if processor is not None:
    try:
        selected = get_io_processor(config, renderer, plugin_from_init=EP_NAME)
    except BaseException as exc:
        R["select_error"] = _err(exc)
    else:
        R["selected"] = f"{type(selected).__module__}.{type(selected).__qualname__}"
        R["selected_is_class"] = type(selected) is cls

    # The round trip, as the pooling server runs a request.
    R["has_sample"] = callable(getattr(processor, SAMPLE_HOOK, None))
    R["has_outputs"] = callable(getattr(processor, OUTPUTS_HOOK, None))
    steps = R["steps"] = []

    def step(shown, call):
        try:
            value = call()
        except BaseException as exc:
            R["step_error"] = {"call": shown, "error": _err(exc)}
            raise
        steps.append(shown)
        return value

    if R["has_sample"]:
        try:
            sample = step(f"{SAMPLE_HOOK}()", getattr(processor, SAMPLE_HOOK))
            R["sample_type"] = _jtype(sample)
            R["sample_size"] = len(sample) if isinstance(sample, Mapping) else None
            parsed = step("parse_data(sample)", lambda: processor.parse_data(sample))
            prompts = step(f"pre_process(prompt=parsed, request_id={REQUEST_ID!r})",
                           lambda: processor.pre_process(prompt=parsed, request_id=REQUEST_ID))
            # `PromptType | Sequence[PromptType]`: one prompt is a str or a dict.
            if isinstance(prompts, (str, Mapping)) or not isinstance(prompts, (list, tuple)):
                prompts = [prompts]
            R["prompts"] = {"count": len(prompts), "types": sorted({_jtype(p) for p in prompts})}
            params = step("merge_pooling_params()", processor.merge_pooling_params)
            R["pooling_task"] = repr(getattr(params, "task", "<no task attribute>"))
            if R["has_outputs"]:
                outputs = step(f"{OUTPUTS_HOOK}(prompts)",
                               lambda: getattr(processor, OUTPUTS_HOOK)(list(prompts)))
                outputs = list(outputs)
                R["outputs"] = {"count": len(outputs),
                                "types": sorted({type(o).__qualname__ for o in outputs})}
                result = step(f"post_process(outputs, request_id={REQUEST_ID!r})",
                              lambda: processor.post_process(outputs, request_id=REQUEST_ID))
                R["result_type"] = f"{type(result).__module__}.{type(result).__qualname__}"
                R["result"] = _json_form(result)
        except BaseException:
            pass

    # Malformed requests, on a second processor: the round trip may have left state behind.
    rejections = R["rejections"] = []
    try:
        fresh = cls(config, renderer)
    except BaseException as exc:
        R["second_construct_error"] = _err(exc)
        fresh = None
    for shown, value, jtype in MALFORMED if fresh is not None else ():
        entry = {"input": shown, "jtype": jtype}
        try:
            parsed = fresh.parse_data(value)
        except BaseException as exc:
            entry["raised"] = type(exc).__qualname__
            entry["is_value_error"] = isinstance(exc, ValueError)
            entry["message"] = str(exc)[:200]
        else:
            entry["returned"] = _short(parsed)
        rejections.append(entry)
"""


# --------------------------------------------------------------------------------------------
# Pure helpers (unit-tested): what an observation means.


def answer_problem(answer: dict[str, Any]) -> str | None:
    """Why the entry function's answer is not None or a dotted class name (None if fine)."""
    kind = answer["kind"]
    if kind == "none":
        return None
    if kind == "raised":
        return (
            f"it raised {answer['repr']}; vLLM logs WARNING 'Failed to load plugin' and skips "
            "the plugin, so a model that needs it cannot start. Return None when the plugin "
            "cannot work here."
        )
    if kind == "other":
        if answer.get("is_class"):
            return (
                f"it returned the class {answer['repr']} itself; return its dotted name "
                "(f'{cls.__module__}.{cls.__qualname__}'), which vLLM imports."
            )
        return f"it returned {answer['repr']} (a {answer['type']}), not a str or None."
    value = answer["value"]
    if ":" in value:
        return (
            f"it returned {value!r}, the entry-point 'module:Class' form; vLLM splits the name "
            f"on its last dot, so write {value.replace(':', '.')!r}."
        )
    if not DOTTED_NAME.fullmatch(value):
        return (
            f"it returned {value!r}, which is not a dotted 'package.module.Class' name "
            "(vLLM splits it on its last dot and imports the module part)."
        )
    return None


def init_hint(params: list[str] | None) -> str:
    """A hint naming the older constructor form a parameter list matches, if any."""
    if not params or any(p.startswith("*") for p in params):
        return ""
    if len(params) < 3:
        return (
            f"Its __init__ takes ({', '.join(params)}): the v0.10-v0.16 form. Since ~v0.17 "
            "vLLM passes the renderer as a second positional argument."
        )
    return ""


def parse_hint(methods: list[str] | None) -> str:
    """A hint for a class that still has the pre-v0.17 method names."""
    methods = methods or []
    renames = {
        "parse_request": "`parse_request` became `parse_data`",
        "validate_or_generate_params": "`validate_or_generate_params` was split into "
        "`merge_sampling_params` and `merge_pooling_params`",
    }
    old = [text for name, text in renames.items() if name in methods]
    if not old:
        return ""
    return (
        f"The class still uses the pre-v0.17 interface: {'; '.join(old)}. vLLM no longer "
        "calls the old names (their shims were removed by v0.29)."
    )


def judged_inputs(
    rejections: list[dict[str, Any]], sample_type: str | None, sample_size: int | None = None
) -> list[dict[str, Any]]:
    """The malformed inputs that say something about this plugin.

    `None` is never a request. The others are judged only when they are of another JSON type
    than the plugin's own sample (a text plugin may accept any string), except `{}` against a
    non-empty object sample: it lacks every field the sample has. Without a sample only `None`
    and `42` are judged.
    """
    if sample_type is None:
        return [r for r in rejections if r["jtype"] in ("null", "number")]
    empty_object = sample_type == "object" and bool(sample_size)
    return [
        r
        for r in rejections
        if r["jtype"] in ("null", *(("object",) if empty_object else ()))
        or r["jtype"] != sample_type
    ]


def rejection_problems(judged: list[dict[str, Any]]) -> list[str]:
    """One line per distinct way `parse_data` failed to reject malformed inputs with
    ValueError; inputs that failed the same way share a line."""
    outcomes: dict[str, list[str]] = {}
    for entry in judged:
        if "returned" in entry:
            outcome = f"returned {entry['returned']}: the input was accepted"
        elif not entry["is_value_error"]:
            outcome = f"raised {entry['raised']}: {entry['message']}"
        else:
            continue
        outcomes.setdefault(outcome, []).append(f"parse_data({entry['input']})")
    return [f"{', '.join(calls)} {outcome}" for outcome, calls in outcomes.items()]


# --------------------------------------------------------------------------------------------
# The shared probes.


def io_examine(ctx: CheckContext) -> dict[str, Any]:
    """Observations of loading and calling the entry point; fails the check if the probe died."""
    assert ctx.entry_point is not None
    code = f"import re\nDOTTED = {DOTTED_NAME.pattern!r}\n" + IO_EXAMINE
    result = ctx.session.memo(f"io_examine {ctx.entry_point.key}", lambda: ctx.probe(code))
    if not result.ok:
        fail(f"Loading and calling the entry function in a fresh process {result.describe()}")
    return result.values


def _function(ctx: CheckContext) -> dict[str, Any]:
    """Observations of an entry point that loaded and is callable."""
    run = io_examine(ctx)
    if "load_error" in run:
        fail(
            f"The entry point could not be loaded (see io_processor.loadable):\n{run['load_error']}"
        )
    if not run["callable"]:
        fail(
            f"The entry point resolves to {run['describe']['repr']}, which is not callable; "
            "vLLM calls it with no arguments to get the processor's class name."
        )
    return run


def _class(ctx: CheckContext) -> dict[str, Any]:
    """Observations of the class the entry function names; skips an inactive plugin."""
    run = _function(ctx)
    answer = run["answer"]
    if answer["kind"] == "none":
        skip(INACTIVE)
    problem = answer_problem(answer)
    if problem:
        fail(
            "There is no processor class to examine (see io_processor.returns-qualname): "
            f"when called, {problem}"
        )
    if "class_error" in run:
        fail(
            f"{answer['value']} does not import (see io_processor.returns-qualname):\n"
            f"{run['class_error']}"
        )
    if not run["is_class"]:
        fail(
            f"{answer['value']} is {run['class_repr']}, not a class "
            "(see io_processor.returns-qualname)."
        )
    return run


def io_drive(ctx: CheckContext) -> dict[str, Any]:
    """Observations of constructing the class and taking requests through it."""
    assert ctx.entry_point is not None
    examined = _class(ctx)
    qualname = examined["answer"]["value"]
    constants = {
        "QUALNAME": qualname,
        "REQUEST_ID": REQUEST_ID,
        "SAMPLE_HOOK": SAMPLE_HOOK,
        "OUTPUTS_HOOK": OUTPUTS_HOOK,
    }
    header = "".join(f"{k} = {json.dumps(v)}\n" for k, v in constants.items())
    header += f"MALFORMED = {MALFORMED!r}\n"
    result = ctx.session.memo(
        f"io_drive {ctx.entry_point.key}", lambda: ctx.probe(header + IO_DRIVE)
    )
    if not result.ok:
        fail(f"Constructing and driving {qualname} in a fresh process {result.describe()}")
    return {**result.values, "examined": examined, "qualname": qualname}


def _constructed(ctx: CheckContext) -> dict[str, Any]:
    """Observations of a processor that constructed."""
    run = io_drive(ctx)
    if "construct_error" in run:
        fail(
            f"{run['qualname']}(vllm_config, renderer) raised, so there is no processor to "
            "drive (see io_processor.constructs)."
        )
    return run


# --------------------------------------------------------------------------------------------
# The checks.


@check(
    "io_processor.loadable",
    title="the IO-processor plugin's entry point imports and resolves",
    fix="Make the entry point's module importable with only vLLM and the plugin's declared "
    "dependencies; import heavy or optional libraries inside the processor's module, which "
    "vLLM imports only when a model asks for the plugin.",
)
def check_loadable(ctx: CheckContext) -> None:
    """vLLM loads every installed IO-processor entry point whenever a pooling model asks for
    any IO processor, so one that fails to import is logged and skipped, and a model that
    needs it fails with 'requires the ... IO Processor plugin but it is not installed'. The
    entry point must load in a fresh process."""
    run = io_examine(ctx)
    if "load_error" in run:
        fail(f"Loading {ctx.entry_point.value!r} raised:\n{run['load_error']}")


@check(
    "io_processor.returns-qualname",
    title="the entry function returns the dotted 'pkg.module.Class' name of a class, or None",
    fix="Return the processor class's dotted name as a str (e.g. "
    "'my_plugin.processor.MyProcessor'), or None when the plugin cannot work here; never "
    "raise, return the class itself, or use the 'module:Class' form.",
)
def check_returns_qualname(ctx: CheckContext) -> None:
    """vLLM calls the entry point with no arguments. `None` means the plugin is not available;
    a str is imported with `resolve_obj_by_qualname`, which splits on the last dot, and then
    called as the processor's class. An exception is logged as a WARNING and the plugin is
    skipped. The returned name must import and name a class."""
    run = _function(ctx)
    answer = run["answer"]
    problem = answer_problem(answer)
    if problem:
        error = f"\n{answer['error']}" if answer["kind"] == "raised" else ""
        fail(f"When the entry function was called, {problem}{error}")
    if answer["kind"] == "none":
        return
    if "class_error" in run:
        fail(
            f"The entry function returned {answer['value']!r}, which does not import:\n"
            f"{run['class_error']}"
        )
    if not run["is_class"]:
        fail(
            f"The entry function returned {answer['value']!r}, which is {run['class_repr']}, "
            "not a class."
        )


@check(
    "io_processor.subclass",
    title="the class subclasses vllm.plugins.io_processors.interface.IOProcessor",
    fix="Derive the processor from `vllm.plugins.io_processors.interface.IOProcessor` and "
    "implement `parse_data`, `pre_process` and `post_process`.",
)
def check_subclass(ctx: CheckContext) -> None:
    """vLLM's pooling server calls the processor through the IOProcessor interface, including
    methods the base class provides (`merge_pooling_params`, `merge_sampling_params`, the
    async `pre_process_async` / `post_process_async`). A duck-typed class works only while it
    re-implements each of them and breaks when vLLM adds one; vLLM's own type checks and
    tools assume the base class."""
    run = _class(ctx)
    name = run["answer"]["value"]
    if not run["is_io"]:
        fail(f"{name} does not subclass vllm.plugins.io_processors.interface.IOProcessor.")


@check(
    "io_processor.constructs",
    since="0.18.0",
    title="the class constructs as cls(vllm_config, renderer) and is selected by its "
    "entry-point name",
    fix="Declare `__init__(self, vllm_config, renderer)` and call "
    "`super().__init__(vllm_config, renderer)`; do no model or network work in the "
    "constructor.",
)
def check_constructs(ctx: CheckContext) -> None:
    """vLLM builds the processor in the API server as `cls(vllm_config, renderer)`, two
    positional arguments since ~v0.17 (before, `cls(vllm_config)`), and picks it by the
    entry-point name given as `--io-processor-plugin` or `io_processor_plugin` in the model's
    config.json. The class is built directly and then through the engine's
    `get_io_processor(vllm_config, renderer, plugin_from_init=<entry-point name>)`."""
    run = io_drive(ctx)
    name = run["qualname"]
    if "construct_error" in run:
        hint = init_hint(run["examined"].get("init_params"))
        fail(
            f"{name}(vllm_config, renderer) raised:\n{run['construct_error'].rstrip()}\n"
            f"{hint}".rstrip()
        )
    call = f"get_io_processor(vllm_config, renderer, plugin_from_init={ctx.entry_point.name!r})"
    if "select_error" in run:
        fail(f"Selecting the plugin by name, {call} raised:\n{run['select_error']}")
    if not run.get("selected_is_class"):
        fail(f"{call} returned a {run.get('selected')}, not a {name}.")


@check(
    "io_processor.round-trip",
    since="0.18.0",
    title="the plugin's sample request goes through parse_data, pre_process and post_process "
    "into a JSON-serialisable response",
    fix="Make parse_data, pre_process(prompt=..., request_id=...) and post_process(outputs, "
    "request_id=...) handle a valid request end to end, and return from post_process plain "
    "JSON data (or a pydantic model / dataclass of it).",
)
def check_round_trip(ctx: CheckContext) -> None:
    """The pooling server runs `parse_data(request.data)`, `pre_process(prompt=...,
    request_id=...)`, `merge_pooling_params()`, pools every prompt, then
    `post_process(outputs, request_id=...)`, and sends the result as the response's `data`.
    The plugin provides the request and the model outputs through two optional methods on
    its class: `conformance_sample_request()` (a valid request's data) and
    `conformance_fake_outputs(prompts)` (one PoolingRequestOutput per prompt). Without the
    first the check is skipped; without the second, it is skipped once parse_data and
    pre_process have run."""
    run = _constructed(ctx)
    if not run["has_sample"]:
        skip(f"the plugin provides no sample request (no {SAMPLE_HOOK}() on its class)")
    if "step_error" in run:
        step = run["step_error"]
        done = run["steps"]
        before = f"\nCalls that succeeded before it: {', '.join(done)}." if done else ""
        hint = parse_hint(run["examined"].get("methods")) if "parse_data" in step["call"] else ""
        hint = f"\n{hint}" if hint else ""
        fail(f"{step['call']} raised:\n{step['error'].rstrip()}{hint}{before}")
    if not run["has_outputs"]:
        skip(
            f"the plugin provides no sample outputs (no {OUTPUTS_HOOK}(prompts) on its class); "
            "parse_data and pre_process ran, post_process was not exercised"
        )
    prompts, outputs = run["prompts"]["count"], run["outputs"]["count"]
    if prompts != outputs:
        fail(
            f"pre_process returned {prompts} prompt(s) but {OUTPUTS_HOOK}(prompts) made "
            f"{outputs} output(s); the engine returns exactly one output per prompt."
        )
    result = run["result"]
    if "errors" in result:
        fail(
            f"post_process returned a {run['result_type']}, which has no JSON form; vLLM sends "
            "it as the response's `data`. Tried:\n  " + "\n  ".join(result["errors"])
        )


@check(
    "io_processor.rejects-bad-input",
    level="recommended",
    since="0.18.0",
    title="parse_data rejects malformed request data with ValueError",
    fix="Validate the request in parse_data and raise ValueError (a pydantic ValidationError "
    "is one) whose message says what is wrong, for any data of the wrong type or shape.",
)
def check_rejects_bad_input(ctx: CheckContext) -> None:
    """`parse_data` is the first code to see a client's `data`, and vLLM documents that it
    does not validate that data itself: the plugin must. vLLM's serving code reports a
    ValueError to the client as a bad request with its message; any other exception is an
    internal server error, and data accepted unchecked fails later, deep in pre_process or on
    the engine. `None`, `42`, `{}` and a garbage
    string are offered to a second instance. Only inputs of another JSON type than the plugin's
    own sample (from `conformance_sample_request()`) are judged, plus `{}` when the sample is
    an object with fields; without a sample only `None` and `42` are."""
    run = _constructed(ctx)
    if "second_construct_error" in run:
        fail(
            f"{run['qualname']}(vllm_config, renderer) worked once but raised the second time, "
            f"so no processor was left to take malformed data:\n{run['second_construct_error']}"
        )
    judged = judged_inputs(run["rejections"], run.get("sample_type"), run.get("sample_size"))
    problems = rejection_problems(judged)
    if problems:
        hint = parse_hint(run["examined"].get("methods"))
        fail(
            "Malformed data was not rejected with ValueError:\n  "
            + "\n  ".join(problems)
            + (f"\n{hint}" if hint else "")
        )


# --------------------------------------------------------------------------------------------
# Engine run: the sample request through a real engine.

CHECKPOINT_HOOK = "conformance_checkpoint"

IO_ENGINE_RUN = r"""
import importlib, json, tempfile
R = probe.result

def _generated(name):
    # Checkpoints the harness can make, keyed by the IO processor their config.json names.
    from conformance.fixtures.generators import segmentation
    if name == segmentation.IO_PROCESSOR_PLUGIN:
        return str(segmentation.tiny_segmentation())
    return None

if not ENGINE_MISSING:
    module, _, attr = QUALNAME.rpartition(".")
    cls = getattr(importlib.import_module(module), attr)
    R["has_sample"] = hasattr(cls, SAMPLE_HOOK)
    R["has_checkpoint_hook"] = hasattr(cls, CHECKPOINT_HOOK)
    stage = None
    try:
        if R["has_sample"]:
            if R["has_checkpoint_hook"]:
                stage = f"{CHECKPOINT_HOOK}(workdir)"
                model = str(getattr(cls, CHECKPOINT_HOOK)(tempfile.mkdtemp(prefix="ckpt-")))
            else:
                stage = "generating the checkpoint"
                model = _generated(EP_NAME)
            R["model"] = model
        if R["has_sample"] and R["model"]:
            from vllm import LLM
            stage = f"LLM(model=..., io_processor_plugin={EP_NAME!r})"
            llm = LLM(model=model, io_processor_plugin=EP_NAME, max_num_seqs=2, **SMALL_ENGINE)
            processor = getattr(llm, "io_processor", None)
            R["processor"] = None if processor is None else type(processor).__qualname__
            stage = f"{SAMPLE_HOOK}()"
            request = getattr(processor if processor is not None else cls, SAMPLE_HOOK)()
            stage = "LLM.encode(sample, pooling_task='plugin')"
            outs = llm.encode(request, pooling_task="plugin")
            R["count"] = len(outs)
            R["result_type"] = type(outs[0].outputs).__qualname__ if outs else None
            R["result_none"] = bool(outs) and outs[0].outputs is None
            shut(llm)
    except BaseException as exc:
        R["engine_error"] = {"stage": stage, "error": _err(exc)}
"""


#: What an engine says when it cannot build a checkpoint's model at all: transformers does not
#: know its `model_type`, or no registered class serves its architecture.
UNSERVABLE_MODEL = ("does not recognize this architecture", "are not supported for now")


def model_unservable(stage: str | None, error: str) -> str | None:
    """The engine's refusal of the model itself while `LLM(...)` was being built, if that is
    what `error` is (not an error of the processor, which runs later)."""
    if not (stage or "").startswith("LLM("):
        return None
    for line in error.splitlines():
        if any(marker in line for marker in UNSERVABLE_MODEL):
            return line.strip()[:200]
    return None


@check(
    "io_processor.engine-run",
    title="the plugin's sample request runs end to end through LLM.encode in a real engine",
    fix="Make pre_process build prompts the model accepts and post_process read the outputs "
    "the engine really returns (`output.outputs.data`: the shape the model's pooler gives), "
    "and check them against a real model, not only hand-made outputs.",
)
def check_engine_run(ctx: CheckContext) -> None:
    """Hand-made outputs (`conformance_fake_outputs`) only show that post_process agrees with
    the plugin's own idea of the model. Here the plugin's sample request goes through a real
    engine: `LLM(model=<checkpoint>, io_processor_plugin=<entry point name>)` and
    `encode(sample, pooling_task="plugin")`, which runs parse_data, merge_pooling_params,
    pre_process, the model on every prompt and post_process on its real outputs. The
    checkpoint comes from the plugin's `conformance_checkpoint(workdir)` class method, else
    from the harness's generators when one names the plugin in its config.json; the check is
    skipped without a sample request or a checkpoint, and where the engine cannot build that
    checkpoint's model at all (real vLLM serves image-input pooling models only through its
    multimodal registry, so the fixture's reference-only segmentation model does not load
    there)."""
    from conformance.checks.general import (
        ENGINE_RUN_TIMEOUT_S,
        engine_run_code,
        skip_if_engine_missing,
    )

    assert ctx.entry_point is not None
    examined = _class(ctx)
    qualname = examined["answer"]["value"]
    constants = {
        "QUALNAME": qualname,
        "SAMPLE_HOOK": SAMPLE_HOOK,
        "CHECKPOINT_HOOK": CHECKPOINT_HOOK,
    }
    header = "".join(f"{k} = {json.dumps(v)}\n" for k, v in constants.items())
    result = ctx.session.memo(
        f"io_engine_run {ctx.entry_point.key}",
        lambda: ctx.probe(engine_run_code(header + IO_ENGINE_RUN), timeout=ENGINE_RUN_TIMEOUT_S),
    )
    if not result.ok:
        fail(f"Running {qualname} in an engine in a fresh process {result.describe()}")
    run = result.values
    skip_if_engine_missing(run)
    if "engine_error" in run:
        error = run["engine_error"]
        unservable = model_unservable(error["stage"], error["error"])
        if unservable:
            skip(
                f"this engine cannot build the checkpoint's model ({unservable}), so no request "
                "can reach the processor here; the processor was judged without a model "
                "(io_processor.round-trip). Give `conformance_checkpoint(workdir)` a checkpoint "
                "whose architecture this engine serves."
            )
        fail(f"{error['stage']} raised:\n{error['error'].rstrip()}")
    if not run["has_sample"]:
        skip(f"the plugin provides no sample request (no {SAMPLE_HOOK}() on its class)")
    if not run.get("model"):
        skip(
            f"no checkpoint for the model the plugin feeds: the harness generates none that "
            f"names {ctx.entry_point.name!r}, and the class has no {CHECKPOINT_HOOK}(workdir)"
        )
    if run["count"] != 1 or run["result_none"]:
        fail(
            f"encode(sample, pooling_task='plugin') returned {run['count']} output(s) "
            f"(result {run['result_type']}); the engine returns one output holding "
            "post_process's result."
        )
