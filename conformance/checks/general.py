"""General-plugin checks (`vllm.general_plugins`): load, call, call again, and what it changed.

All of them read one shared probe per entry point (`general_run`), which snapshots the
engine's registries and the attributes of every `vllm.*` module before the plugin runs,
after its first call and after a second call in the same process.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NoReturn

from conformance.context import CheckContext, observation
from conformance.framework import RunAgain, check, fail, fail_on, inconclusive, skip
from conformance.probes.data import ExceptionInfo
from conformance.probes.engine_run import ENGINE_RUN_DEPS, start_bare_engine
from conformance.probes.general import (
    GeneralObservation,
    ModelRun,
    ModelsObservation,
    observe_general,
    observe_models,
)

#: Seconds that loading and calling one general plugin may take, not counting the engine's own
#: imports: its surface (torch included) is imported before the clock starts, and the `vllm.*`
#: modules the plugin imports are timed per module and subtracted.
FAST_IMPORT_BUDGET_S = 1.0
#: Every general check but these needs the entry point to load first.
LOADED = ("general.loadable",)
#: ... and these need it called once without raising.
CALLED = ("general.runs",)


def general_run(ctx: CheckContext) -> GeneralObservation:
    """The shared probe's observation for this entry point."""
    return ctx.observe(observe_general, purpose="that loads and calls the plugin")


def _called(ctx: CheckContext) -> GeneralObservation:
    """Observations of a plugin that loaded and whose first call returned."""
    run = general_run(ctx)
    if run.load_error is not None:
        fail_on(run.load_error, "The entry point could not be loaded:")
    if not run.called:
        fail("The entry point is not callable, so it could not be run.")
    if run.first is not None:
        fail_on(run.first, "The plugin raised when called:")
    return run


@check(
    "general.loadable",
    title="the general plugin's entry point imports and resolves",
    fix="Make the entry point's module importable with only its declared dependencies, and "
    "point the entry point at an attribute that exists.",
    requires=("package.entry-points-resolve",),
)
def check_loadable(ctx: CheckContext) -> None:
    """vLLM logs a general plugin that fails to load at ERROR and starts without it: the
    feature silently disappears. The entry point must load in a fresh process (the shared
    probe that loads every entry point of the distribution, nothing called)."""
    ctx.loaded()


@check(
    "general.callable",
    title="the general plugin is a callable that takes no arguments",
    fix="Point the entry point at a function such as `def register() -> None:` with no "
    "required parameters.",
    requires=LOADED,
)
def check_callable(ctx: CheckContext) -> None:
    """vLLM calls every general plugin as `func()`, with no arguments, in every process."""
    fact = ctx.loaded()
    if fact.kind == "other":
        fail(f"The entry point resolves to {fact.repr}, which is not callable.")
    if fact.required_params:
        fail(
            f"{fact.qualname} requires argument(s) {', '.join(fact.required_params)}; "
            "vLLM calls it with none."
        )


@check(
    "general.runs",
    title="calling the general plugin raises nothing",
    fix="Catch and log what can go wrong inside the plugin; an exception aborts vLLM's startup "
    "and the general plugins after it never run.",
    requires=("general.callable",),
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
    requires=CALLED,
)
def check_reentrant(ctx: CheckContext) -> None:
    """vLLM documents that general plugins must be re-entrant: they run in every process and
    can run more than once in one. A second call must not raise, log a warning or replace
    anything in the engine's registries or `vllm.*` modules."""
    run = _called(ctx)
    if run.second is not None:
        fail_on(run.second, "The second call raised:")
    if run.second_warnings:
        fail("The second call warned:\n  " + "\n  ".join(run.second_warnings))
    if run.state_changes:
        fail("The second call changed engine state:\n  " + "\n  ".join(run.state_changes))


@check(
    "general.no-cuda-init",
    title="importing and running the plugin does not initialise CUDA",
    fix="Defer anything that touches a device (tensors on 'cuda', torch.cuda.* queries that "
    "initialise it) until a worker runs; register lazily.",
    requires=LOADED,
)
def check_no_cuda_init(ctx: CheckContext) -> None:
    """General plugins run in the API server and before workers are forked; a plugin that
    initialises CUDA there breaks forked workers and wastes GPU memory. The probe watches
    torch.cuda's lazy initialisation, so the check means something on a CPU-only torch too."""
    run = general_run(ctx)
    if not run.has_torch:
        inconclusive(
            "torch is not installed here, so the plugin could not be watched initialising CUDA "
            "(install vllm-plugin-conformance[engine] with torch 2.13.0 to judge it)"
        )
    if run.cuda_calls:
        fail(
            f"CUDA initialisation was requested {len(run.cuda_calls)} time(s); first from:\n"
            + run.cuda_calls[0]
        )


@check(
    "general.lazy-model-registration",
    level="recommended",
    title="model architectures are registered as lazy 'module:Class' strings",
    fix='Register with `ModelRegistry.register_model("Arch", "pkg.module:Class")` so that '
    "nothing is imported until an engine needs the model.",
    requires=CALLED,
)
def check_lazy_model_registration(ctx: CheckContext) -> None:
    """Registering a class imports the model code (and torch, and sometimes CUDA) in every
    process that loads plugins; a lazy string defers it to the one process that needs it."""
    run = _called(ctx)
    if not run.new_models:
        skip("the plugin registers no model architectures")
    eager = [a for a, info in sorted(run.new_models.items()) if not info.lazy]
    imported = [a for a, info in sorted(run.new_models.items()) if info.lazy and info.imported]
    if eager:
        fail(f"Registered as classes rather than lazy strings: {', '.join(eager)}.")
    if imported:
        fail(f"Registered lazily, but imported at registration: {', '.join(imported)}.")


@check(
    "general.registered-models-resolve",
    title="every architecture the plugin registers imports and is a model class",
    fix="Make each registered 'module:Class' importable and a torch.nn.Module subclass.",
    requires=CALLED,
)
def check_registered_models_resolve(ctx: CheckContext) -> None:
    """A lazy registration is only checked when a user loads that model, long after the plugin
    shipped. Each architecture the plugin registers must resolve to a model class now."""
    run = _called(ctx)
    if not run.new_models:
        skip("the plugin registers no model architectures")
    for arch, error in sorted(run.resolve_errors.items()):
        fail_on(error, f"{arch}: resolving its registered class raised:")
    if run.resolve_problems:
        fail("\n".join(f"{a}: {p}" for a, p in sorted(run.resolve_problems.items())))


@check(
    "general.no-builtin-overwrite",
    level="recommended",
    title="the plugin does not replace the engine's built-in model architectures",
    fix="Register under a new architecture name, or document that the plugin replaces the "
    "built-in and why.",
    requires=CALLED,
)
def check_no_builtin_overwrite(ctx: CheckContext) -> None:
    """Overwriting a built-in architecture changes every user's model of that name as soon
    as the plugin is installed, with only a DEBUG log to show for it."""
    run = _called(ctx)
    if run.overwritten:
        fail(f"The plugin replaced built-in architecture(s): {', '.join(run.overwritten)}.")


@check(
    "general.fast-import",
    level="recommended",
    title=f"loading and calling the plugin takes under {FAST_IMPORT_BUDGET_S:g} s, not counting "
    "the engine's own modules it imports",
    fix="Import heavy dependencies inside the functions that need them, not at module level "
    "of the entry point's module.",
    requires=CALLED,
)
def check_fast_import(ctx: CheckContext) -> None:
    """General plugins run in every vLLM process, so their import cost multiplies. The
    budget counts only the plugin's own work: loading the entry point and calling it once,
    less the time spent loading the engine's own modules (`vllm.*`, and everything those
    pull in), which are timed per module as `-X importtime` does. The engine's surface
    (torch and transformers included: vLLM imports both before any plugin) is imported before
    the clock starts. A third-party dependency the
    plugin imports, and whatever its module does at import, count."""
    problem = fast_import_problem(_called(ctx))
    if problem:
        fail(problem)


#: Bytes a general plugin may print (stdout and stderr together) while it is loaded and called
#: twice; the engine's own start-up output in the same probe is a few KiB.
QUIET_LIMIT_BYTES = 1 << 20


@check(
    "general.quiet",
    level="recommended",
    title="loading and calling the plugin prints under 1 MiB to stdout and stderr",
    fix="Log through the `logging` module at DEBUG (vLLM's `init_logger(__name__)`) instead of "
    "printing, and never dump data to stdout.",
    requires=CALLED,
)
def check_quiet(ctx: CheckContext) -> None:
    """vLLM runs general plugins in every process (API server, engine core, each worker), so
    whatever one prints is repeated in every server log. Printing is no failure of any other
    rule — the probe keeps only a tail and lets the plugin go on — but megabytes of it are a
    finding of their own."""
    _called(ctx)
    result = ctx.run(observe_general)
    if result.output_bytes > QUIET_LIMIT_BYTES:
        mib = result.output_bytes / (1 << 20)
        tail = result.stdout_tail.strip()[-160:] or result.stderr_tail.strip()[-160:]
        fail(
            f"Loading and calling the plugin (twice) printed {mib:.1f} MiB; it ends with: {tail!r}"
        )


def fast_import_problem(run: GeneralObservation) -> str | None:
    """Why the plugin's own load-and-call time is over budget, engine imports set apart
    (None if within it)."""
    timed = f"Loading took {run.load_s:.2f} s and the call {run.call_s:.2f} s"
    engine = run.load_engine_s + run.call_engine_s
    own = run.load_s + run.call_s - engine
    over = f"{own:.2f} s > {FAST_IMPORT_BUDGET_S:g} s"
    if own <= FAST_IMPORT_BUDGET_S:
        return None
    if not run.engine_accounting:
        return f"{timed} ({over}); imports could not be timed per module here, so all counts."
    if engine < 0.005:
        return f"{timed} ({over}), none of it importing the engine's modules."
    modules = ", ".join(f"{name} {secs:.2f} s" for name, secs in run.engine_imports.items())
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


def skip_if_engine_missing(missing: list[str]) -> None:
    """Capability-skip an engine-run check whose probe found the model stack missing."""
    if missing:
        inconclusive(
            f"{', '.join(missing)} not installed here, so no engine can run a model "
            f"(install the engine extra: {', '.join(ENGINE_RUN_DEPS)})"
        )


def fail_engine_run(ctx: CheckContext, error: ExceptionInfo, head: str) -> NoReturn:
    """An engine run with the plugin raised: the plugin's failure, unless the exception is not
    in the plugin's code and this engine cannot start a model here even with no plugin
    installed (a Python-only build, a machine it does not run on): then inconclusive. Where the
    engine alone runs, such a failure is not yet held against the plugin: the check runs once
    more (`RunAgain`), and only a second failure fails it (an engine can fail on its own now
    and then: a worker that dies in a native kernel). Where an engine process died of a fatal
    signal, what it printed says where."""
    crashes = "".join(f"\nAn engine process died: {line}" for line in ctx.crash_summaries())
    if error.owner != "plugin":
        result = ctx.session.run(start_bare_engine, timeout=ENGINE_RUN_TIMEOUT_S, bare=True)
        bare = observation(result, start_bare_engine, "that starts the engine with no plugin")
        if bare.error is not None:
            inconclusive(
                "this engine cannot start a model in this build or on this machine, even with "
                f"no plugin installed ({bare.stage} raised {bare.error.headline}); judge the "
                "engine run where vLLM runs models (e.g. `--vllm VERSION` on a CPU build)"
            )
        if not ctx.ran_again:
            raise RunAgain(f"{head} {error.headline}{crashes}")
        crashes += (
            "\nIt failed on two attempts; the exception is not in the plugin's code, but the "
            "engine with no plugin installed starts and generates here."
        )
    fail_on(error, head, crashes)


def run_problem(arch: str, info: ModelRun) -> str | None:
    """What is wrong with one architecture's engine run, or None if it ran as it should
    (an exception it raised is reported with `fail_on` by the check)."""
    if info.family is None:
        return None
    hidden, shapes = info.hidden, info.shapes
    wrong = [shape for shape in shapes if hidden and shape and shape[-1] != hidden]
    if wrong:
        return (
            f"{arch}: forward returned hidden states of shape {wrong[0]}; the checkpoint's "
            f"hidden_size is {hidden}, so they must be [num_tokens, {hidden}]."
        )
    outputs = info.outputs
    if len(outputs) != 2:
        return f"{arch}: {info.task} returned {len(outputs)} output(s) for 2 prompts."
    if info.task.startswith("encode"):
        if not all(outputs):
            return f"{arch}: encode returned outputs without data."
        return None
    vocab = info.vocab
    for tokens in outputs:
        if len(tokens) != 2:
            return f"{arch}: generate asked for 2 tokens and produced {tokens}."
        if vocab and any(not 0 <= t < vocab for t in tokens):
            return f"{arch}: generate produced token ids {tokens}, outside 0..{vocab - 1}."
    return None


#: What the engines say when a model has parameters the checkpoint has no tensor for.
NOT_LOADED = "weights were not initialized from checkpoint"


def weights_the_checkpoint_lacks(message: str, family: str) -> set[str]:
    """The path parts, in the parameter names the engine could not load, that no tensor of the
    harness's generated `family` checkpoint has (a subclass's added layers: `mamba` in
    `model.layers.0.mamba.A`). Empty when any unloaded parameter is made only of parts the
    checkpoint has: then the checkpoint offered it and the model did not take it, which is
    the plugin's failure."""
    if NOT_LOADED not in message or "{" not in message:
        return set()
    names = re.findall(r"'([^']+)'", message[message.index("{") :])
    known = checkpoint_parts(family)
    if not names or not known:
        return set()
    added = [{part for part in name.split(".") if not part.isdigit()} - known for name in names]
    if not all(added):
        return set()
    return set().union(*added)


def checkpoint_parts(family: str) -> set[str]:
    """Every dotted part of the tensor names in the generated `family` checkpoint (read from
    its safetensors header), with the engines' fused names for them; empty when it is not
    there (it is written by the probe that ran the model)."""
    from conformance.fixtures.generators.checkpoint import tiny_checkpoint

    try:
        path = Path(tiny_checkpoint(family)) / "model.safetensors"
        with path.open("rb") as file:
            header = json.loads(file.read(int.from_bytes(file.read(8), "little")))
    except (OSError, ValueError, ImportError, KeyError):
        return set()
    parts = {part for name in header if name != "__metadata__" for part in name.split(".")}
    fused = {"qkv_proj": {"q_proj", "k_proj", "v_proj"}, "gate_up_proj": {"gate_proj", "up_proj"}}
    parts |= {name for name, pieces in fused.items() if pieces & parts}
    return {part for part in parts if not part.isdigit()}


@check(
    "general.models-run",
    title="every architecture the plugin registers builds and runs a forward pass in the engine",
    fix="Make each registered model class construct from `vllm_config`, load its checkpoint's "
    "weights and return hidden states of shape [num_tokens, hidden_size] from `forward` and "
    "logits of shape [num_tokens, vocab_size] from `compute_logits` (pooling models: `pool`).",
    requires=("general.registered-models-resolve",),
)
def check_models_run(ctx: CheckContext) -> None:
    """Registering an architecture proves nothing about the model: a constructor that reads a
    config field the checkpoint lacks, or a `forward` that returns the wrong shape, only shows
    when a user serves it. For every architecture the plugin registers whose class derives
    from a family the harness can generate a checkpoint for (OPT, Llama, GPT-2, judged by the
    MRO), the probe writes a tiny seeded checkpoint naming that architecture, builds
    `LLM(model=...)` and generates 2 tokens for 2 prompts (`encode` for pooling models)."""
    # The shared probe already knows whether there is anything to run: no engine otherwise.
    if not _called(ctx).new_models:
        skip("the plugin registers no model architectures")
    # The engine runs in the probe's own process, so that `forward` can be watched. Real vLLM
    # cannot build a second engine in a process after the first: there, one probe lists the
    # architectures and one more runs each; the reference runs them all in the first.
    per_arch = ctx.engine != "reference"
    listed: ModelsObservation = ctx.observe(
        observe_models,
        run=[] if per_arch else None,
        timeout=ENGINE_RUN_TIMEOUT_S,
        purpose="that registers the plugin's models in a fresh process",
    )
    skip_if_engine_missing(listed.missing)
    if listed.plugin_error is not None:
        fail_on(listed.plugin_error, "The plugin raised when called (see general.runs):")
    if not listed.new:
        skip("the plugin registers no model architectures")
    runs = dict(listed.runs)
    for arch, info in sorted(runs.items()):
        if not per_arch or info.family is None or info.error is not None:
            continue
        one: ModelsObservation = ctx.observe(
            observe_models,
            run=[arch],
            timeout=ENGINE_RUN_TIMEOUT_S,
            purpose=f"that runs {arch} in a fresh process",
        )
        runs[arch] = one.runs.get(arch, info)
    for arch, info in sorted(runs.items()):
        if info.error is not None:
            family = info.family or "?"
            added = weights_the_checkpoint_lacks(info.error.message, family)
            if added:
                inconclusive(
                    f"{arch} adds parameters a {family} checkpoint has no tensors for "
                    f"({', '.join(sorted(added)[:4])}), so the harness's generated {family} "
                    "checkpoint cannot load it; the engine said: "
                    f"{info.error.headline}. Judge it with a checkpoint of its own."
                )
            fail_engine_run(ctx, info.error, f"{arch} ({family} family): {info.stage} raised:")
    problems = [p for arch, info in sorted(runs.items()) if (p := run_problem(arch, info))]
    if problems:
        fail("\n".join(problems))
    if all(info.family is None for info in runs.values()):
        shown = "; ".join(f"{a} ({' < '.join(i.mro[:3])})" for a, i in runs.items())
        skip(
            "no registered architecture derives from a family the harness can generate a "
            f"checkpoint for (OPT, Llama, GPT-2): {shown}"
        )
