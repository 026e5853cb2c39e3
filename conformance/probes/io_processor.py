"""Probes of IO-processor plugins (`vllm.io_processor_plugins`): the entry function's answer, the
processor class built and driven as vLLM 0.32's pooling server drives it, and a request taken
through a real engine.

`observe_io_processor` loads the entry point, calls it as vLLM does (no arguments) and imports
the class it names; `drive_io_processor` constructs the class as `cls(vllm_config, renderer)`,
selects it by name through the engine's `get_io_processor`, runs the round trip on the plugin's
own sample request and feeds `parse_data` malformed inputs; `run_io_processor_engine` sends the
sample request through `LLM.encode` on a checkpoint of the model the processor feeds.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conformance.probes import engine_run, runtime
from conformance.probes.data import ExceptionInfo
from conformance.probes.runtime import DOTTED_NAME, Answer, ObjectSketch

REQUEST_ID = "conformance-0"
SAMPLE_HOOK = "conformance_sample_request"
OUTPUTS_HOOK = "conformance_fake_outputs"
CHECKPOINT_HOOK = "conformance_checkpoint"
#: Requests no processor should accept: (how it is shown, the value, the JSON type it has).
MALFORMED: tuple[tuple[str, Any, str], ...] = (
    ("None", None, "null"),
    ("42", 42, "number"),
    ("{}", {}, "object"),
    ("'}{ not a request'", "}{ not a request", "string"),
)
#: The methods of the IOProcessor interface, the current ones and those renamed before v0.17.
METHODS = (
    "parse_data",
    "parse_request",
    "pre_process",
    "post_process",
    "merge_pooling_params",
    "validate_or_generate_params",
    "output_to_response",
)


@dataclass
class ProcessorClass:
    """The class the entry function names."""

    is_io: bool = False
    abstract: list[str] = field(default_factory=list)
    init_params: list[str] | None = None
    #: Which of `METHODS` it has.
    methods: list[str] = field(default_factory=list)


@dataclass
class IOProcessorObservation:
    load_error: ExceptionInfo | None = None
    loaded: ObjectSketch | None = None
    callable: bool = False
    answer: Answer | None = None
    #: Importing the named module, or finding the class in it, raised.
    class_error: ExceptionInfo | None = None
    #: What the name resolved to, and its shape if it is a class.
    class_repr: str = ""
    cls: ProcessorClass | None = None


def resolve_class(qualname: str) -> Any:
    """What `resolve_obj_by_qualname` gives for the plugin's answer (raises what it raises)."""
    module, _, attr = qualname.rpartition(".")
    imported = runtime.call_plugin(importlib.import_module, module)
    return runtime.call_plugin(getattr, imported, attr)


@runtime.warm
def observe_io_processor(group: str, name: str) -> IOProcessorObservation:
    """Load the entry point, call it as vLLM does and import the class it names."""
    import vllm.plugins.io_processors  # noqa: F401  (the engine's side, before the plugin)
    from vllm.plugins.io_processors.interface import IOProcessor

    obs = IOProcessorObservation()
    func, obs.load_error = runtime.attempt(runtime.target_entry_point(group, name).load)
    if obs.load_error is not None:
        return obs
    obs.loaded = runtime.describe(func)
    obs.callable = callable(func)
    if not obs.callable:
        return obs
    obs.answer = runtime.call_entry_function(func)
    value = obs.answer.value
    if value is None or not DOTTED_NAME.fullmatch(value):
        return obs
    cls, obs.class_error = runtime.attempt(resolve_class, value)
    if obs.class_error is not None:
        return obs
    obs.class_repr = repr(cls)[:300]
    if isinstance(cls, type):
        obs.cls = ProcessorClass(
            is_io=issubclass(cls, IOProcessor),
            abstract=sorted(getattr(cls, "__abstractmethods__", ())),
            init_params=runtime.params(cls.__init__),
            methods=sorted(m for m in METHODS if callable(getattr(cls, m, None))),
        )
    return obs


# --------------------------------------------------------------------------------------------
# Driving the class as the pooling server does, on the plugin's own sample request.


@dataclass
class StepError:
    """A call of the round trip, and what it raised."""

    call: str
    error: ExceptionInfo


@dataclass
class Tried:
    """One way of putting the result in a JSON response that failed."""

    how: str
    error: ExceptionInfo


@dataclass
class JsonForm:
    """What the server can put in the response's `data` field, and how it got there."""

    how: str | None = None
    json: str | None = None
    #: The ways that failed, when none worked.
    tried: list[Tried] = field(default_factory=list)


@dataclass
class Rejection:
    """One malformed request offered to `parse_data`."""

    input: str
    jtype: str
    #: What it raised, and whether that is a ValueError (a pydantic ValidationError is one).
    error: ExceptionInfo | None = None
    is_value_error: bool = False
    #: What it returned instead, if it raised nothing.
    returned: str | None = None


@dataclass
class IOProcessorDrive:
    #: The model whose full config the processor was built with, in words.
    served_model: str = ""
    #: What building that config raised (the harness's problem: nothing else was done).
    config_error: ExceptionInfo | None = None
    construct_error: ExceptionInfo | None = None
    select_error: ExceptionInfo | None = None
    #: The type `get_io_processor` returned, and whether it is the class itself.
    selected: str | None = None
    selected_is_class: bool = False
    has_sample: bool = False
    has_outputs: bool = False
    #: The round trip's calls that returned, in order, and the one that raised.
    steps: list[str] = field(default_factory=list)
    step_error: StepError | None = None
    sample_type: str | None = None
    sample_size: int | None = None
    prompt_count: int = 0
    prompt_types: list[str] = field(default_factory=list)
    pooling_task: str = ""
    output_count: int = 0
    output_types: list[str] = field(default_factory=list)
    result_type: str | None = None
    result: JsonForm | None = None
    second_construct_error: ExceptionInfo | None = None
    rejections: list[Rejection] = field(default_factory=list)


class _Stopped(Exception):
    """A step of the round trip raised (kept in `IOProcessorDrive.step_error`)."""


def json_type(value: Any) -> str:
    """The JSON type of `value` (its Python type's name when it has none)."""
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


def _dumps(make: Callable[[], Any]) -> str:
    return json.dumps(make())[:300]


def json_form(value: Any) -> JsonForm:
    """The first way of turning the plugin's result into JSON that works, as the server might."""
    attempts: list[tuple[str, Callable[[], Any]]] = [("as is", lambda: value)]
    if hasattr(value, "model_dump"):
        attempts.append(("model_dump(mode='json')", lambda: value.model_dump(mode="json")))
        attempts.append(("model_dump()", lambda: value.model_dump()))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        attempts.append(("dataclasses.asdict()", lambda: dataclasses.asdict(value)))
    if callable(getattr(value, "dict", None)):
        attempts.append(("dict()", lambda: value.dict()))
    form = JsonForm()
    for how, make in attempts:
        dumped, error = runtime.attempt(_dumps, make)
        if error is None:
            return JsonForm(how=how, json=dumped)
        form.tried.append(Tried(how, error))
    return form


def _renderer(config: Any) -> Any:
    """The engine's renderer for `config`, or a stand-in that answers nothing where the
    engine's `BaseRenderer` is abstract."""
    from vllm.renderers import BaseRenderer

    try:
        return BaseRenderer(config)
    except TypeError:
        stubs = {
            name: (lambda *a, **k: None)
            for name in getattr(BaseRenderer, "__abstractmethods__", ())
        }
        stand_in = type("ConformanceRenderer", (BaseRenderer,), stubs)
        try:
            return stand_in(config)
        except Exception:
            return object.__new__(stand_in)


def _listed(func: Callable[..., Any], *args: Any) -> list[Any]:
    # `list()` inside the boundary: an answer that is not iterable is the plugin's fault.
    return runtime.call_plugin(list, runtime.call_plugin(func, *args))


def _round_trip(obs: IOProcessorDrive, processor: Any) -> None:
    """The request as the pooling server runs it; stops at the first call that raises."""

    def step(shown: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        value, error = runtime.attempt(func, *args, **kwargs)
        if error is not None:
            obs.step_error = StepError(shown, error)
            raise _Stopped
        obs.steps.append(shown)
        return value

    sample = step(f"{SAMPLE_HOOK}()", getattr(processor, SAMPLE_HOOK))
    obs.sample_type = json_type(sample)
    obs.sample_size = len(sample) if isinstance(sample, Mapping) else None
    parsed = step("parse_data(sample)", processor.parse_data, sample)
    shown = f"pre_process(prompt=parsed, request_id={REQUEST_ID!r})"
    prompts = step(shown, processor.pre_process, prompt=parsed, request_id=REQUEST_ID)
    # `PromptType | Sequence[PromptType]`: one prompt is a str or a dict.
    if isinstance(prompts, (str, Mapping)) or not isinstance(prompts, (list, tuple)):
        prompts = [prompts]
    obs.prompt_count = len(prompts)
    obs.prompt_types = sorted({json_type(p) for p in prompts})
    params = step("merge_pooling_params()", processor.merge_pooling_params)
    obs.pooling_task = repr(getattr(params, "task", "<no task attribute>"))
    if not obs.has_outputs:
        return
    hook = getattr(processor, OUTPUTS_HOOK)
    outputs = step(f"{OUTPUTS_HOOK}(prompts)", _listed, hook, list(prompts))
    obs.output_count = len(outputs)
    obs.output_types = sorted({type(o).__qualname__ for o in outputs})
    shown = f"post_process(outputs, request_id={REQUEST_ID!r})"
    result = step(shown, processor.post_process, outputs, request_id=REQUEST_ID)
    obs.result_type = runtime.qualname(type(result))
    obs.result = json_form(result)


def _reject(processor: Any, shown: str, value: Any, jtype: str) -> Rejection:
    entry = Rejection(input=shown, jtype=jtype)
    try:
        parsed = runtime.call_method(processor, "parse_data", value)
    except BaseException as exc:
        entry.error = runtime.capture(exc)
        entry.is_value_error = isinstance(exc, ValueError)
    else:
        entry.returned = repr(parsed)[:200]
    return entry


def served_config(name: str) -> tuple[Any, str]:
    """The `VllmConfig` a server builds before it constructs the IO processor `name`: the
    full config of the pooling model it serves (its pooler config included), with
    `io_processor_plugin` set. The model is the one the harness generates for this plugin
    where it has one that this engine serves, else the tiny Llama's. Returns the
    config and the model in words."""
    from vllm.plugins import load_general_plugins

    load_general_plugins()  # as a server does first: they may register the model's class
    model = None
    try:
        model = generated_checkpoint(name)
    except Exception:
        model = None  # e.g. no torch to write the weights: its config.json alone cannot be had
    if model is not None and unservable(model) is None:
        words = f"the harness's checkpoint for {name!r}"
    else:
        # The plugin's own model cannot be made or served here (real vLLM reads no config of
        # a model type it does not know): a generic pooling model stands in.
        model = None
        words = "a tiny Llama served as a pooling model (--runner pooling)"
    config = engine_run.served_config(model, runner="pooling", io_processor_plugin=name)
    return config, words


@runtime.warm
def drive_io_processor(group: str, name: str, qualname: str) -> IOProcessorDrive:
    """Build the class `qualname` (the entry function's answer) as the server does, select it
    by name, take the plugin's sample request through it and offer it malformed requests."""
    from vllm.plugins.io_processors import get_io_processor

    cls = resolve_class(qualname)
    obs = IOProcessorDrive()
    try:
        config, obs.served_model = served_config(name)
    except Exception as exc:
        # The harness could not build the config a server would: nothing can be judged.
        obs.config_error = runtime.capture(exc)
        return obs
    renderer = _renderer(config)
    processor, obs.construct_error = runtime.attempt(cls, config, renderer)
    if obs.construct_error is not None:
        return obs
    selected, obs.select_error = runtime.attempt(
        get_io_processor, config, renderer, plugin_from_init=name
    )
    if obs.select_error is None:
        obs.selected = runtime.qualname(type(selected))
        obs.selected_is_class = type(selected) is cls
    obs.has_sample = callable(getattr(processor, SAMPLE_HOOK, None))
    obs.has_outputs = callable(getattr(processor, OUTPUTS_HOOK, None))
    if obs.has_sample:
        try:
            _round_trip(obs, processor)
        except _Stopped:
            pass
    # Malformed requests, on a second processor: the round trip may have left state behind.
    fresh, obs.second_construct_error = runtime.attempt(cls, config, renderer)
    if obs.second_construct_error is None:
        obs.rejections = [_reject(fresh, *malformed) for malformed in MALFORMED]
    return obs


# --------------------------------------------------------------------------------------------
# Engine run: the sample request through a real engine.


@dataclass
class IOProcessorEngineRun:
    #: The model stack's modules not installed here (nothing else was done).
    missing: list[str] = field(default_factory=list)
    has_sample: bool = False
    has_checkpoint_hook: bool = False
    #: The checkpoint's directory (None: neither the plugin nor the harness has one).
    model: str | None = None
    #: Why the engine cannot build the checkpoint's model at all (nothing was run then).
    unservable: str | None = None
    #: The step that raised, and what it raised.
    stage: str | None = None
    error: ExceptionInfo | None = None
    #: The processor the engine built, by class name.
    processor: str | None = None
    count: int = 0
    result_type: str | None = None
    result_none: bool = False


def generated_checkpoint(plugin: str) -> str | None:
    """A checkpoint the harness can make whose config.json names the IO processor `plugin`."""
    from conformance.fixtures.generators import segmentation

    if plugin == segmentation.IO_PROCESSOR_PLUGIN:
        return str(segmentation.tiny_segmentation())
    return None


def _model_type_known(model_type: Any) -> bool:
    """Whether real vLLM reads a config.json of `model_type`: transformers knows it, or vLLM
    ships its own config class for it."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        from vllm.transformers_utils.config import _CONFIG_REGISTRY as own
    except ImportError:
        own = {}
    return isinstance(model_type, str) and (model_type in CONFIG_MAPPING or model_type in own)


def unservable(model: str) -> str | None:
    """Why the engine cannot build the model of the checkpoint at `model` at all (None if it
    can): no registered class serves any of its architectures, or (real vLLM) its config's
    `model_type` is unknown. The plugin's general plugins are loaded first, as `LLM` does."""
    from vllm import ModelRegistry
    from vllm.plugins import load_general_plugins

    load_general_plugins()
    try:
        config = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # no readable config.json: building `LLM` says what is wrong with it
    if not isinstance(config, dict):
        return None
    architectures = list(config.get("architectures") or [])
    if not any(arch in ModelRegistry.get_supported_archs() for arch in architectures):
        return f"no registered model class serves its architectures {architectures}"
    model_type = config.get("model_type")
    if (
        not runtime.on_reference()
        and "auto_map" not in config
        and not _model_type_known(model_type)
    ):
        return f"its model type {model_type!r} is unknown to transformers and to vLLM"
    return None


def _checkpoint(obs: IOProcessorEngineRun, cls: Any, name: str) -> None:
    if obs.has_checkpoint_hook:
        obs.stage = f"{CHECKPOINT_HOOK}(workdir)"
        workdir = tempfile.mkdtemp(prefix="ckpt-")
        obs.model = str(runtime.call_plugin(getattr(cls, CHECKPOINT_HOOK), workdir))
    else:
        obs.stage = "generating the checkpoint"
        obs.model = generated_checkpoint(name)


def _encode(obs: IOProcessorEngineRun, cls: Any, name: str) -> None:
    from vllm import LLM

    assert obs.model is not None
    obs.stage = f"LLM(model=..., io_processor_plugin={name!r})"
    llm = runtime.call_plugin(
        LLM, model=obs.model, io_processor_plugin=name, max_num_seqs=2, **engine_run.SMALL_ENGINE
    )
    processor = getattr(llm, "io_processor", None)
    obs.processor = None if processor is None else type(processor).__qualname__
    obs.stage = f"{SAMPLE_HOOK}()"
    request = runtime.call_plugin(getattr(processor if processor is not None else cls, SAMPLE_HOOK))
    obs.stage = "LLM.encode(sample, pooling_task='plugin')"
    outs = runtime.call_plugin(llm.encode, request, pooling_task="plugin")
    obs.count = len(outs)
    obs.result_type = type(outs[0].outputs).__qualname__ if outs else None
    obs.result_none = bool(outs) and outs[0].outputs is None
    obs.stage = None
    engine_run.shut(llm)


@runtime.warm
def run_io_processor_engine(group: str, name: str, qualname: str) -> IOProcessorEngineRun:
    """Take the plugin's sample request through `LLM.encode` on a checkpoint of the model the
    processor feeds: the plugin's `conformance_checkpoint(workdir)`, else a generated one."""
    obs = IOProcessorEngineRun(missing=engine_run.missing_engine_deps())
    if obs.missing:
        return obs
    cls = resolve_class(qualname)
    obs.has_sample = hasattr(cls, SAMPLE_HOOK)
    obs.has_checkpoint_hook = hasattr(cls, CHECKPOINT_HOOK)
    if not obs.has_sample:
        return obs
    try:
        _checkpoint(obs, cls, name)
        if obs.model is None:
            return obs
        obs.stage = "checking that the engine serves the checkpoint's model"
        obs.unservable = unservable(obs.model)
        if obs.unservable is None:
            _encode(obs, cls, name)
    except BaseException as exc:
        obs.error = runtime.capture(exc)
    return obs
