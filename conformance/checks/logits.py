"""Logits-processor checks (`vllm.logits_processors`): the class, its interface, and driving it.

One shared probe per entry point (`logits_run`, running `observe_logits`) loads the class,
decides which interface it implements (V1 or Model Runner V2, from its MRO), calls
`validate_params` on many parameter sets and then, where torch is installed, builds the
processor as the engine does and drives it through requests, random batch changes and `apply`
calls on random logits.
"""

from __future__ import annotations

from packaging.version import InvalidVersion, Version

from conformance.checks.general import (
    ENGINE_RUN_TIMEOUT_S,
    fail_engine_run,
    skip_if_engine_missing,
)
from conformance.context import CheckContext
from conformance.framework import check, fail, fail_on, inconclusive, skip
from conformance.probes.logits import (
    EngineRunObservation,
    LogitsObservation,
    ShapeProblem,
    observe_engine_run,
    observe_logits,
)

V1_BASE = "vllm.v1.sample.logits_processor.LogitsProcessor"
V2_BASE = "vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor"
#: The first release whose default model runner is Model Runner V2 (PR #44443, ~v0.26/0.27),
#: whose loader accepts only V2-interface entry points.
MRV2_DEFAULT_SINCE = (0, 27)
#: The first release without Model Runner V1: its logits-processor interface and loader are
#: gone, and `VLLM_USE_V2_MODEL_RUNNER` is an error unless it is "1".
V1_REMOVED_SINCE = (0, 34)
#: `until` of the checks that judge only the V1 interface.
V1_UNTIL = "0.34.0"
NO_TORCH = "torch is not installed, so the processor cannot be built or driven"
NO_ARGMAX_CLAIM_V2 = "the V2 interface makes no argmax-invariance claim"
NO_ARGMAX_CLAIM_V1 = (
    "the processor does not claim argmax invariance (is_argmax_invariant() is False)"
)
#: Every logits check but these needs the entry point to be a class first.
A_CLASS = ("logits.is-class",)
#: ... and these need it constructed as the engine constructs it.
CONSTRUCTED = ("logits.constructs",)


# --------------------------------------------------------------------------------------------
# Pure helpers (unit-tested).


def v1_removed(contract: str) -> bool:
    """Whether the engine of `contract` no longer has Model Runner V1 and its logits-processor
    interface (`vllm.v1.sample.logits_processor`, deleted in 0.34: contract 0.33-0.34 row 2)."""
    try:
        release = Version(contract).release
    except InvalidVersion:
        return True  # an unreadable version is taken to be a current one
    return release[:2] >= V1_REMOVED_SINCE


def mrv2_is_default(contract: str) -> bool:
    """Whether the engine of `contract` runs Model Runner V2 (and its interface) by default."""
    try:
        release = Version(contract).release
    except InvalidVersion:
        return True  # an unreadable version is taken to be a current one
    return release[:2] >= MRV2_DEFAULT_SINCE


def interface_name(interface: str) -> str:
    """The interface `v1`/`v2` in words, with its base class."""
    if interface == "v2":
        return f"the Model Runner V2 interface ({V2_BASE})"
    return f"the V1 interface ({V1_BASE})"


def init_hint(interface: str, params: list[str] | None) -> str:
    """A hint on the constructor's parameters when construction failed."""
    expected = (
        ["self", "vllm_config", "req_states"]
        if interface == "v2"
        else ["self", "vllm_config", "device", "is_pin_memory"]
    )
    if not params or any(p.startswith("*") for p in params) or params == expected:
        return ""
    return (
        f"Its __init__ takes ({', '.join(params)}); {interface_name(interface)} constructs it "
        f"as ({', '.join(expected)})."
    )


# --------------------------------------------------------------------------------------------
# The shared probe.


def logits_run(ctx: CheckContext) -> LogitsObservation:
    """The shared probe's observation for this entry point; from 0.34 on the probe neither
    looks for the V1 interface nor takes a class for one (the engine has only Model Runner
    V2)."""
    return ctx.observe(
        observe_logits,
        purpose="that loads and drives the logits processor",
        v1=not v1_removed(ctx.session.contract),
    )


def _class(ctx: CheckContext) -> LogitsObservation:
    """Observations of an entry point that loaded as a class."""
    run = logits_run(ctx)
    if run.load_error is not None:
        fail_on(run.load_error, "The entry point could not be loaded:")
    if not run.is_class:
        fail(f"The entry point resolves to {run.repr}, not a class (see logits.is-class).")
    return run


def _constructed(ctx: CheckContext) -> LogitsObservation:
    """Observations of a class that was built as the engine builds it; skips without torch."""
    run = _class(ctx)
    if not run.has_torch:
        inconclusive(NO_TORCH)
    construct = run.construct
    if construct is not None and construct.error is not None:
        fail_on(construct.error, f"{construct.call} raised (see logits.constructs):")
    if not run.driven:
        fail("The processor was not driven, for no reason the probe could see.")
    return run


# --------------------------------------------------------------------------------------------
# The checks.


@check(
    "logits.is-class",
    title="the entry point is a class",
    fix="Point the entry point at the processor class itself ('my_plugin.procs:MyProcessor'), "
    "not at a factory function or an instance.",
    requires=("package.entry-points-resolve",),
)
def check_is_class(ctx: CheckContext) -> None:
    """vLLM loads every `vllm.logits_processors` entry point (`VLLM_PLUGINS` does not apply)
    and treats what it gets as a class: the Model Runner V2 loader checks `issubclass` and
    refuses anything else with a ValueError at startup, and the V1 runner sorts processors by
    calling methods of what it constructs. A factory function fails on vLLM 0.32's default
    runner."""
    fact = ctx.loaded()
    if fact.kind != "class":
        kind = "a function" if fact.kind == "function" else "an object, not a class"
        fail(
            f"The entry point {ctx.ep.value!r} resolves to {fact.repr}, "
            f"{kind}. Model Runner V2 (vLLM 0.32's default) refuses it at startup: "
            f"ValueError: LogitsProcessor plugin {ctx.ep.name} is not a subclass of "
            f"{V2_BASE}."
        )


@check(
    "logits.subclass",
    title="the class subclasses the logits-processor interface of the engine's default runner",
    fix=f"On vLLM >= 0.27 (Model Runner V2 by default) subclass {V2_BASE} and implement "
    "`__init__(vllm_config, req_states)`, `add_request(req_idx, sampling_params)` and "
    f"`apply(logits, ctx)`; on older engines subclass {V1_BASE}. Ship a V1 variant, loadable "
    "by 'module:Class' name, for users of the legacy runner.",
    requires=A_CLASS,
)
def check_subclass(ctx: CheckContext) -> None:
    """Which interface an entry-point class must implement depends on the engine's default
    model runner. Since ~v0.27 (and in vLLM 0.32) that is Model Runner V2, whose loader
    refuses a class that does not subclass its `LogitsProcessor`: a V1-only plugin makes
    every GPU install fail at startup ('V1-interface plugins are not supported by the V2
    model runner'). Older engines use the V1 interface. The check judges by the contract's
    documented default, not by the machine it runs on: without Triton, vLLM 0.32 (and the
    reference's `default_use_v2_model_runner`) falls back to the V1 runner, as a CPU-only
    machine does, but real deployments run on GPUs."""
    run = _class(ctx)
    contract = ctx.session.contract
    wanted = "v2" if mrv2_is_default(contract) else "v1"
    implements = run.implements
    if implements.get(wanted):
        return
    base = V2_BASE if wanted == "v2" else V1_BASE
    base_error = run.base_errors.get(wanted)
    if base_error is not None:
        fail_on(base_error, f"The engine's {base} could not be imported:")
    name = run.repr
    if wanted == "v2" and implements.get("v1"):
        fail(
            f"{name} implements only the V1 interface ({V1_BASE}). vLLM {contract} runs Model "
            "Runner V2 by default, whose loader rejects it at startup: ValueError: "
            f"LogitsProcessor plugin {ctx.ep.name} is not a subclass of {V2_BASE}; "
            "V1-interface plugins are not supported by the V2 model runner."
        )
    if wanted == "v1" and implements.get("v2"):
        fail(
            f"{name} implements Model Runner V2's interface, which vLLM {contract} does not "
            f"run by default (it arrived around v0.27); subclass {V1_BASE}."
        )
    fail(f"{name} subclasses neither {V2_BASE} nor {V1_BASE} (its MRO: {', '.join(run.mro)}).")


@check(
    "logits.constructs",
    title="the class constructs with the arguments the engine passes",
    fix="Keep the interface's constructor signature: V2 `__init__(self, vllm_config, "
    "req_states)` (call super().__init__), V1 `__init__(self, vllm_config, device, "
    "is_pin_memory)`; read sizes from `req_states` or `vllm_config` and allocate on the given "
    "device.",
    requires=A_CLASS,
)
def check_constructs(ctx: CheckContext) -> None:
    """The engine builds each processor once per model runner: Model Runner V2 as
    `cls(vllm_config, req_states)` with a `LogitsProcRequestState` (slot count, vocabulary
    size, per-slot token buffers), the V1 runner as `cls(vllm_config, device,
    is_pin_memory)`. The class is built by the interface it implements, on the CPU (V1:
    `torch.device('cpu')`, False), with a default `VllmConfig()`. A constructor that raises
    aborts the engine's startup."""
    run = _class(ctx)
    if not run.has_torch:
        inconclusive(NO_TORCH)
    construct = run.construct
    if construct is None:
        fail("The processor was not constructed, for no reason the probe could see.")
    if construct.error is not None:
        if construct.config_error is not None:
            inconclusive(
                "this engine could not build the config an engine hands the processor, so it "
                f"was given None ({construct.config_error.headline}), and then raised"
            )
        hint = init_hint(run.interface, construct.init_params)
        shown = f"{hint}\n" if hint else ""
        fail_on(construct.error, f"{shown}{construct.call} raised:")


@check(
    "logits.apply-preserves-shape",
    title="apply returns a tensor of the logits' shape and dtype",
    fix="Edit the whole [num_rows, vocab_size] logits tensor (in place is best) and return it; "
    "never return a slice, only the rows you changed, or a reduced tensor.",
    requires=CONSTRUCTED,
)
def check_apply_preserves_shape(ctx: CheckContext) -> None:
    """The sampler hands every processor the whole batch's logits and uses what `apply`
    returns as the logits of every row; a tensor of another shape or dtype breaks the next
    step of sampling for the whole batch. `apply` is called on random float32 logits,
    once with requests that do not use the processor and once with one request per
    parameter set (including `extra_args` values the processor seems to read)."""
    run = _constructed(ctx)

    def head(s: ShapeProblem) -> str:
        return f"With {s.scenario}, apply() on logits of shape {tuple(s.shape)}"

    lines = [f"{head(s)} {s.problem}." for s in run.shape if s.error is None]
    raised = [(s, s.error) for s in run.shape if s.error is not None]
    if raised:
        # The first exception is shown in full, last.
        (first, error), *others = raised
        lines += [f"{head(s)} raised {e.headline}." for s, e in others]
        lines.append(f"{head(first)} raised:")
        fail_on(error, "\n".join(lines))
    if lines:
        fail("\n".join(lines))


@check(
    "logits.argmax-invariance-honest",
    title="a processor that claims argmax invariance keeps every row's argmax",
    fix="Return False from is_argmax_invariant() if apply() can change which token has the "
    "highest logit (masking, forcing or biasing tokens does); True is only for processors "
    "that never change the greedy choice.",
    requires=CONSTRUCTED,
    # The claim belongs to the V1 interface, which 0.34 deleted.
    until=V1_UNTIL,
)
def check_argmax_invariance_honest(ctx: CheckContext) -> None:
    """The V1 sampler takes greedy tokens before it runs the processors that claim argmax
    invariance (they only shape the distribution of random sampling): a processor that
    claims invariance but changes the argmax is silently ignored for greedy requests
    (temperature 0) and gives different tokens for greedy and sampled ones. Logits are drawn
    at random (three draws) for a batch of one request per parameter set, and each row's
    argmax is compared before and after `apply`. The V2 interface makes no such claim."""
    if _class(ctx).interface != "v1":
        skip(NO_ARGMAX_CLAIM_V2)
    argmax = _constructed(ctx).argmax
    if argmax is None:
        fail("The argmax-invariance claim was not examined, for no reason the probe could see.")
    if argmax.claim_error is not None:
        fail_on(argmax.claim_error, f"{argmax.claim_stage} raised:")
    if argmax.claims is not True:
        skip(NO_ARGMAX_CLAIM_V1)
    if argmax.apply_error is not None:
        fail_on(argmax.apply_error, "apply() raised on the batch of every parameter set:")
    if argmax.changed:
        rows = "\n".join(
            f"  draw {c.draw}, row {c.row} ({c.params}): argmax {c.before} -> {c.after}"
            for c in argmax.changed
        )
        fail(f"is_argmax_invariant() returns True, but apply() changed the argmax of:\n{rows}")


@check(
    "logits.batch-updates",
    title="the processor follows random batch changes without raising",
    fix="V1: apply each BatchUpdate in the order removed, added, moved, and handle every move "
    "(UNIDIRECTIONAL and SWAP) including indices whose request holds no state (e.g. use "
    "dict.pop(i, None)); update_state(None) means no change. V2: let add_request fully "
    "re-initialise a recycled slot.",
    requires=CONSTRUCTED,
)
def check_batch_updates(ctx: CheckContext) -> None:
    """The engine's persistent batch changes every step: V1 reports requests removed,
    added (at freed or new indices), moved one way to fill holes and swapped, through
    `update_state`; Model Runner V2 recycles slots through `add_request` and reorders rows
    every step. A seeded random sequence of a few dozen steps, with requests of every
    parameter set, is applied; `apply` is called after each step. Any exception would
    abort the engine's step."""
    batch = _constructed(ctx).batch
    if batch is None:
        fail("The random batch sequence was not run, for no reason the probe could see.")
    if batch.error is not None:
        if not batch.history:
            fail_on(batch.error, f"Before the random sequence, {batch.during} raised:")
        history = "\n".join(f"  {h}" for h in batch.history)
        fail_on(
            batch.error,
            f"The last steps of the random sequence were:\n{history}\n"
            f"At step {batch.steps}, {batch.during} raised:",
        )


@check(
    "logits.validate-params",
    title="validate_params accepts default parameters and rejects others only with ValueError",
    fix="Declare `validate_params` as a @classmethod that returns None for parameters it "
    "accepts and raises ValueError (not TypeError, KeyError ...) with a clear message for "
    "those it rejects, including odd `extra_args` values.",
    requires=A_CLASS,
)
def check_validate_params(ctx: CheckContext) -> None:
    """The frontend calls each processor class's `validate_params(sampling_params)` when a
    request arrives (the V1 runner always; Model Runner V2 in 0.32 only when
    `--logits-processors` names some processor, see vllm#57728) and turns a ValueError into a
    VLLMValidationError (HTTP 400). Any
    other exception escapes as a server error, and a rejection of default parameters
    rejects every request. Returning False rejects nothing: the return value is ignored. It
    is called with default parameters and with `extra_args` holding odd values (strings,
    negative and huge numbers, lists, None) for every key the processor seems to read. A
    processor that keeps the base class's `validate_params` passes."""
    validate = _class(ctx).validate
    if validate is None or not validate.custom:
        return
    hint = (
        ""
        if validate.bound
        else "It is not a classmethod: vLLM calls it on the class, as cls.validate_params(...).\n"
    )
    default = validate.default
    if default is not None and default.raised is not None:
        fail_on(default.raised, f"{hint}validate_params(SamplingParams()) raised:")
    lines = [
        f"validate_params({p}) returned False, which rejects nothing"
        for p in validate.false_returns
    ]
    raised = [(p.params, p.raised) for p in validate.problems if p.raised is not None]
    if raised:
        # The first exception is shown in full, last.
        (params, error), *others = raised
        others_lines = [f"validate_params({q}) raised {e.type}, not ValueError" for q, e in others]
        lines = [*others_lines, *lines]
        lines.append(f"validate_params({params}) raised {error.type}, not ValueError:")
        fail_on(error, hint + "\n".join(lines))
    if lines:
        fail(hint + "\n".join(lines))


# --------------------------------------------------------------------------------------------
# Engine run: the processor inside a real engine's batches.

#: Requests of different lengths through two slots, so the batch grows and shrinks between
#: steps; every other one carries the `extra_args` the processor seems to read.
ENGINE_LENGTHS = (2, 5, 3, 4, 1, 8)
ENGINE_PROMPTS = ("a", "bb", "ccc", "dddd", "e", "ff")


@check(
    "logits.engine-run",
    title="in a real engine the processor survives batches that grow and shrink, and every "
    "request gets its tokens",
    fix="Size per-step buffers from the logits `apply` receives (or from max_num_reqs), never "
    "from an earlier step's batch; key request state by batch index (V1) or slot (V2) as the "
    "engine's updates say; and derive it from the request itself, never from what "
    "validate_params saw: the frontend validates in another process.",
    # The engine samples from what `apply` returns (a wrong shape fails there too) and drives
    # the batches that were simulated: a processor that already broke on them is not run again.
    requires=(*CONSTRUCTED, "logits.apply-preserves-shape", "logits.batch-updates"),
)
def check_engine_run(ctx: CheckContext) -> None:
    """The simulated batches above are the harness's reading of the interface; here the
    engine drives the processor. With the plugin installed (its entry point, as a user
    installs it) and the interface it implements in force (`VLLM_USE_V2_MODEL_RUNNER=1` for
    Model Runner V2 processors, `0` for V1), `LLM` on a tiny generated Llama with two slots
    generates for six requests of different lengths, every other one carrying `extra_args`
    the processor appears to read (values its `validate_params` accepts). Requests finish and
    join between steps, so the batch grows and shrinks. Nothing may raise, and each request
    must get exactly the tokens it asked for (EOS ignored). As in vLLM, whose engine core
    runs apart from the frontend, the processor lives in another process than the one that
    validated the requests (on the reference, a spawned worker). Where the engine refuses to
    run the processor's model runner on this machine (vLLM's CPU build runs Model Runner V2
    only with a Triton that has a CPU backend), the check is a capability skip. From 0.34 on
    there is only Model Runner V2 and the variable is gone (any value but "1" is an error), so
    none is set; an engine that cannot start a model here makes the check inconclusive."""
    run = _constructed(ctx)
    interface = run.interface
    only_v2 = v1_removed(ctx.session.contract)
    flag = None if only_v2 else "1" if interface == "v2" else "0"
    engine: EngineRunObservation = ctx.observe(
        observe_engine_run,
        interface=interface,
        keys=list(run.keys),
        lengths=list(ENGINE_LENGTHS),
        prompts=list(ENGINE_PROMPTS),
        choose_runner=not only_v2,
        env={"VLLM_USE_V2_MODEL_RUNNER": flag},
        timeout=ENGINE_RUN_TIMEOUT_S,
        purpose="that generates with the processor in a fresh process",
    )
    skip_if_engine_missing(engine.missing)
    if engine.runner_unavailable is not None:
        skip(
            f"this engine cannot run {interface_name(interface)} on this machine "
            f"({engine.runner_unavailable}); the processor was judged on simulated batches "
            "only (logits.batch-updates). vLLM's CPU build runs Model Runner V2 only with a "
            "Triton that has a CPU backend; on GPUs it is the default."
        )
    where = f"under {interface_name(interface)}" + (
        f" (VLLM_USE_V2_MODEL_RUNNER={flag})" if flag is not None else ""
    )
    if engine.error is not None:
        requests = "\n  ".join(engine.requests)
        shown = f"Requests (two slots):\n  {requests}\n" if requests else ""
        fail_engine_run(ctx, engine.error, f"{shown}{engine.stage} {where} raised:")
    if engine.tokens != list(ENGINE_LENGTHS):
        fail(
            f"Requests asked for {list(ENGINE_LENGTHS)} tokens (EOS ignored) {where} and got "
            f"{engine.tokens}."
        )
