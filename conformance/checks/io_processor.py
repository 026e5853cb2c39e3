"""IO-processor checks (`vllm.io_processor_plugins`): the entry function's answer, the processor
class, and one request taken through it as vLLM 0.32's pooling server would.

Two probes per entry point feed every check (conformance/probes/io_processor.py).
`observe_io_processor` loads the entry point, calls it as vLLM does (no arguments) and imports
the class it names. `drive_io_processor`, run only for a class, constructs it as
`cls(vllm_config, renderer)`, selects it by name through the engine's `get_io_processor`, runs
the round trip on the plugin's own sample request and feeds `parse_data` malformed inputs.

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

from conformance.checks.general import (
    ENGINE_RUN_TIMEOUT_S,
    fail_engine_run,
    skip_if_engine_missing,
)
from conformance.context import CheckContext
from conformance.framework import check, fail, fail_on, inconclusive, skip
from conformance.probes.io_processor import (
    CHECKPOINT_HOOK,
    OUTPUTS_HOOK,
    SAMPLE_HOOK,
    IOProcessorDrive,
    IOProcessorObservation,
    ProcessorClass,
    Rejection,
    drive_io_processor,
    observe_io_processor,
    run_io_processor_engine,
)
from conformance.probes.runtime import DOTTED_NAME, Answer

INACTIVE = "the plugin is inactive on this machine (its function returned None)"
#: The check that judges the entry function's answer; the class checks need it to pass.
NAMES_A_CLASS = ("io_processor.returns-qualname",)
#: The round trip and the malformed requests need a processor that constructed.
CONSTRUCTED = ("io_processor.constructs",)


# --------------------------------------------------------------------------------------------
# Pure helpers (unit-tested): what an observation means.


def answer_problem(answer: Answer) -> str | None:
    """Why the entry function's answer is not None or a dotted class name (None if fine)."""
    if answer.kind == "none":
        return None
    if answer.kind == "raised":
        return (
            f"it raised {answer.repr}; vLLM logs WARNING 'Failed to load plugin' and skips "
            "the plugin, so a model that needs it cannot start. Return None when the plugin "
            "cannot work here."
        )
    if answer.kind == "other":
        if answer.is_class:
            return (
                f"it returned the class {answer.repr} itself; return its dotted name "
                "(f'{cls.__module__}.{cls.__qualname__}'), which vLLM imports."
            )
        return f"it returned {answer.repr} (a {answer.type}), not a str or None."
    value = answer.value or ""
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
    rejections: list[Rejection], sample_type: str | None, sample_size: int | None = None
) -> list[Rejection]:
    """The malformed inputs that say something about this plugin.

    `None` is never a request. The others are judged only when they are of another JSON type
    than the plugin's own sample (a text plugin may accept any string), except `{}` against a
    non-empty object sample: it lacks every field the sample has. Without a sample only `None`
    and `42` are judged.
    """
    if sample_type is None:
        return [r for r in rejections if r.jtype in ("null", "number")]
    empty_object = sample_type == "object" and bool(sample_size)
    return [
        r
        for r in rejections
        if r.jtype in ("null", *(("object",) if empty_object else ())) or r.jtype != sample_type
    ]


def rejection_problems(judged: list[Rejection]) -> list[str]:
    """One line per distinct way `parse_data` failed to reject malformed inputs with
    ValueError; inputs that failed the same way share a line."""
    outcomes: dict[str, list[str]] = {}
    for entry in judged:
        if entry.error is None:
            outcome = f"returned {entry.returned}: the input was accepted"
        elif not entry.is_value_error:
            outcome = f"raised {entry.error.headline}"
        else:
            continue
        outcomes.setdefault(outcome, []).append(f"parse_data({entry.input})")
    return [f"{', '.join(calls)} {outcome}" for outcome, calls in outcomes.items()]


# --------------------------------------------------------------------------------------------
# The shared probes.


def _observed(ctx: CheckContext) -> IOProcessorObservation:
    """The entry point loaded, and called, in a fresh process."""
    return ctx.observe(observe_io_processor, purpose="that loads and calls the entry function")


def _function(ctx: CheckContext) -> IOProcessorObservation:
    """The observation of an entry point that loaded and is callable."""
    run = _observed(ctx)
    if run.load_error is not None:
        fail_on(run.load_error, "The entry point could not be loaded (see io_processor.loadable):")
    if run.answer is None:
        assert run.loaded is not None
        fail(
            f"The entry point resolves to {run.loaded.repr}, which is not callable; "
            "vLLM calls it with no arguments to get the processor's class name."
        )
    return run


def _class(ctx: CheckContext) -> tuple[str, ProcessorClass]:
    """The dotted name the entry function returned and the class it names (what
    io_processor.returns-qualname passed); skips an inactive plugin. Where that check could
    not judge, this one fails on the same exception, so it is inconclusive the same way."""
    run = _function(ctx)
    answer = run.answer
    assert answer is not None
    if answer.kind == "none":
        skip(INACTIVE)
    see = "(see io_processor.returns-qualname)"
    if answer.error is not None:
        fail_on(answer.error, f"The entry function raised {see}:")
    if run.class_error is not None:
        fail_on(run.class_error, f"{answer.value!r} does not import {see}:")
    if answer.value is None or run.cls is None:
        fail(f"The entry function names no processor class {see}.")
    return answer.value, run.cls


def _drive(ctx: CheckContext, qualname: str) -> IOProcessorDrive:
    """The class built, selected and driven as the pooling server does: with the full
    config of the pooling model it serves (inconclusive where this engine cannot build one;
    on real vLLM that takes a while, hence the engine-run timeout)."""
    drive = ctx.observe(
        drive_io_processor,
        qualname=qualname,
        timeout=ENGINE_RUN_TIMEOUT_S,
        purpose=f"that builds and drives {qualname}",
    )
    if drive.config_error is not None:
        error = drive.config_error
        inconclusive(
            "this engine could not build the config a server hands the processor (a pooling "
            f"model's, with its pooler config): {error.type}: {error.message}"
        )
    return drive


def _constructed(ctx: CheckContext, qualname: str) -> IOProcessorDrive:
    """The drive of a processor that constructed (what io_processor.constructs passed)."""
    drive = _drive(ctx, qualname)
    if drive.construct_error is not None:
        fail_on(
            drive.construct_error,
            f"{qualname}(vllm_config, renderer) raised, so there is no processor to drive "
            "(see io_processor.constructs):",
        )
    return drive


def _with_hint(hint: str, head: str) -> str:
    return f"{hint}\n{head}" if hint else head


# --------------------------------------------------------------------------------------------
# The checks.


@check(
    "io_processor.loadable",
    title="the IO-processor plugin's entry point imports and resolves",
    fix="Make the entry point's module importable with only vLLM and the plugin's declared "
    "dependencies; import heavy or optional libraries inside the processor's module, which "
    "vLLM imports only when a model asks for the plugin.",
    requires=("package.entry-points-resolve",),
)
def check_loadable(ctx: CheckContext) -> None:
    """vLLM loads every installed IO-processor entry point whenever a pooling model asks for
    any IO processor, so one that fails to import is logged and skipped, and a model that
    needs it fails with 'requires the ... IO Processor plugin but it is not installed'. The
    entry point must load in a fresh process."""
    run = _observed(ctx)
    if run.load_error is not None:
        fail_on(run.load_error, f"Loading {ctx.ep.value!r} raised:")


@check(
    "io_processor.returns-qualname",
    title="the entry function returns the dotted 'pkg.module.Class' name of a class, or None",
    fix="Return the processor class's dotted name as a str (e.g. "
    "'my_plugin.processor.MyProcessor'), or None when the plugin cannot work here; never "
    "raise, return the class itself, or use the 'module:Class' form.",
    requires=("io_processor.loadable",),
)
def check_returns_qualname(ctx: CheckContext) -> None:
    """vLLM calls the entry point with no arguments. `None` means the plugin is not available;
    a str is imported with `resolve_obj_by_qualname`, which splits on the last dot, and then
    called as the processor's class. An exception is logged as a WARNING and the plugin is
    skipped. The returned name must import and name a class."""
    run = _function(ctx)
    answer = run.answer
    assert answer is not None
    problem = answer_problem(answer)
    if problem:
        head = f"When the entry function was called, {problem}"
        if answer.error is not None:
            fail_on(answer.error, head)
        fail(head)
    if answer.kind == "none":
        return
    if run.class_error is not None:
        fail_on(
            run.class_error, f"The entry function returned {answer.value!r}, which does not import:"
        )
    if run.cls is None:
        fail(
            f"The entry function returned {answer.value!r}, which is {run.class_repr}, not a class."
        )


@check(
    "io_processor.subclass",
    title="the class subclasses vllm.plugins.io_processors.interface.IOProcessor",
    fix="Derive the processor from `vllm.plugins.io_processors.interface.IOProcessor` and "
    "implement `parse_data`, `pre_process` and `post_process`.",
    requires=NAMES_A_CLASS,
)
def check_subclass(ctx: CheckContext) -> None:
    """vLLM's pooling server calls the processor through the IOProcessor interface, including
    methods the base class provides (`merge_pooling_params`, `merge_sampling_params`, the
    async `pre_process_async` / `post_process_async`). A duck-typed class works only while it
    re-implements each of them and breaks when vLLM adds one; vLLM's own type checks and
    tools assume the base class."""
    qualname, cls = _class(ctx)
    if not cls.is_io:
        fail(f"{qualname} does not subclass vllm.plugins.io_processors.interface.IOProcessor.")


@check(
    "io_processor.constructs",
    since="0.18.0",
    title="the class constructs as cls(vllm_config, renderer) and is selected by its "
    "entry-point name",
    fix="Declare `__init__(self, vllm_config, renderer)` and call "
    "`super().__init__(vllm_config, renderer)`; do no model or network work in the "
    "constructor.",
    requires=NAMES_A_CLASS,
)
def check_constructs(ctx: CheckContext) -> None:
    """vLLM builds the processor in the API server as `cls(vllm_config, renderer)`, two
    positional arguments since ~v0.17 (before, `cls(vllm_config)`), and picks it by the
    entry-point name given as `--io-processor-plugin` or `io_processor_plugin` in the model's
    config.json. The server hands it the full config of the model it serves: a pooling
    runner, `io_processor_plugin` set and a pooler config (here: the model the harness
    generates for the plugin, else a tiny Llama served with `--runner pooling`). The class is
    built directly and then through the engine's
    `get_io_processor(vllm_config, renderer, plugin_from_init=<entry-point name>)`."""
    qualname, cls = _class(ctx)
    drive = _drive(ctx, qualname)
    if drive.construct_error is not None:
        head = f"{qualname}(vllm_config, renderer) raised (the config of {drive.served_model}):"
        fail_on(drive.construct_error, _with_hint(init_hint(cls.init_params), head))
    call = f"get_io_processor(vllm_config, renderer, plugin_from_init={ctx.ep.name!r})"
    if drive.select_error is not None:
        fail_on(drive.select_error, f"Selecting the plugin by name, {call} raised:")
    if not drive.selected_is_class:
        fail(f"{call} returned a {drive.selected}, not a {qualname}.")


@check(
    "io_processor.round-trip",
    since="0.18.0",
    title="the plugin's sample request goes through parse_data, pre_process and post_process "
    "into a JSON-serialisable response",
    fix="Make parse_data, pre_process(prompt=..., request_id=...) and post_process(outputs, "
    "request_id=...) handle a valid request end to end, and return from post_process plain "
    "JSON data (or a pydantic model / dataclass of it).",
    requires=CONSTRUCTED,
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
    qualname, cls = _class(ctx)
    drive = _constructed(ctx, qualname)
    if not drive.has_sample:
        skip(f"the plugin provides no sample request (no {SAMPLE_HOOK}() on its class)")
    step = drive.step_error
    if step is not None:
        hint = parse_hint(cls.methods) if "parse_data" in step.call else ""
        after = f", after {', '.join(drive.steps)} succeeded" if drive.steps else ""
        fail_on(step.error, _with_hint(hint, f"{step.call} raised{after}:"))
    if not drive.has_outputs:
        skip(
            f"the plugin provides no sample outputs (no {OUTPUTS_HOOK}(prompts) on its class); "
            "parse_data and pre_process ran, post_process was not exercised"
        )
    if drive.prompt_count != drive.output_count:
        fail(
            f"pre_process returned {drive.prompt_count} prompt(s) but {OUTPUTS_HOOK}(prompts) "
            f"made {drive.output_count} output(s); the engine returns exactly one output per "
            "prompt."
        )
    result = drive.result
    if result is not None and result.json is None:
        tried = [f"{t.how}: {t.error.headline}"[:300] for t in result.tried]
        fail(
            f"post_process returned a {drive.result_type}, which has no JSON form; vLLM sends "
            "it as the response's `data`. Tried:\n  " + "\n  ".join(tried)
        )


@check(
    "io_processor.rejects-bad-input",
    level="recommended",
    since="0.18.0",
    title="parse_data rejects malformed request data with ValueError",
    fix="Validate the request in parse_data and raise ValueError (a pydantic ValidationError "
    "is one) whose message says what is wrong, for any data of the wrong type or shape.",
    requires=CONSTRUCTED,
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
    qualname, cls = _class(ctx)
    drive = _constructed(ctx, qualname)
    if drive.second_construct_error is not None:
        fail_on(
            drive.second_construct_error,
            f"{qualname}(vllm_config, renderer) worked once but raised the second time, so no "
            "processor was left to take malformed data:",
        )
    judged = judged_inputs(drive.rejections, drive.sample_type, drive.sample_size)
    problems = rejection_problems(judged)
    if problems:
        hint = parse_hint(cls.methods)
        fail(
            "Malformed data was not rejected with ValueError:\n  "
            + "\n  ".join(problems)
            + (f"\n{hint}" if hint else "")
        )


# --------------------------------------------------------------------------------------------
# Engine run: the sample request through a real engine.


@check(
    "io_processor.engine-run",
    title="the plugin's sample request runs end to end through LLM.encode in a real engine",
    fix="Make pre_process build prompts the model accepts and post_process read the outputs "
    "the engine really returns (`output.outputs.data`: the shape the model's pooler gives), "
    "and check them against a real model, not only hand-made outputs.",
    requires=("io_processor.round-trip",),
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
    qualname, _ = _class(ctx)
    run = ctx.observe(
        run_io_processor_engine,
        qualname=qualname,
        timeout=ENGINE_RUN_TIMEOUT_S,
        purpose=f"that runs {qualname} in an engine",
    )
    skip_if_engine_missing(run.missing)
    if run.error is not None:
        fail_engine_run(ctx, run.error, f"{run.stage} raised:")
    if not run.has_sample:
        skip(f"the plugin provides no sample request (no {SAMPLE_HOOK}() on its class)")
    if run.model is None:
        skip(
            f"no checkpoint for the model the plugin feeds: the harness generates none that "
            f"names {ctx.ep.name!r}, and the class has no {CHECKPOINT_HOOK}(workdir)"
        )
    if run.unservable is not None:
        skip(
            f"this engine cannot build the checkpoint's model ({run.unservable}), so no request "
            "can reach the processor here; the processor was judged without a model "
            "(io_processor.round-trip). Give `conformance_checkpoint(workdir)` a checkpoint "
            "whose architecture this engine serves."
        )
    if run.count != 1 or run.result_none:
        fail(
            f"encode(sample, pooling_task='plugin') returned {run.count} output(s) "
            f"(result {run.result_type}); the engine returns one output holding "
            "post_process's result."
        )
