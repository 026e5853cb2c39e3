"""Logits-processor checks (`vllm.logits_processors`): the class, its interface, and driving it.

One shared probe per entry point (`logits_run`) loads the class, decides which interface it
implements (V1 or Model Runner V2, from its MRO), calls `validate_params` on many parameter
sets and then, where torch is installed, builds the processor as the engine does and drives
it through requests, random batch changes and `apply` calls on random logits.
"""

from __future__ import annotations

from typing import Any

from packaging.version import InvalidVersion, Version

from conformance.context import CheckContext
from conformance.framework import check, fail, skip

V1_BASE = "vllm.v1.sample.logits_processor.LogitsProcessor"
V2_BASE = "vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor"
#: The first release whose default model runner is Model Runner V2 (PR #44443, ~v0.26/0.27),
#: whose loader accepts only V2-interface entry points.
MRV2_DEFAULT_SINCE = (0, 27)
NO_TORCH = "torch is not installed, so the processor cannot be built or driven"
NO_ARGMAX_CLAIM_V2 = "the V2 interface makes no argmax-invariance claim"
NO_ARGMAX_CLAIM_V1 = (
    "the processor does not claim argmax invariance (is_argmax_invariant() is False)"
)
#: Sizes of the simulated engine: small, so that driving a processor takes a fraction of a second.
SIZES = {"VOCAB": 64, "BATCH": 4, "MAX_LEN": 48, "STEPS": 40, "MAX_REQS": 12, "SEED": 20260}

LOGITS_RUN = r"""
import copy, importlib, importlib.util, inspect, random, re, sys, traceback, types
R = probe.result


def _short(exc):
    return f"{type(exc).__name__}: {exc}"[:300]

# ---- the class and its interface (no torch needed) ------------------------------------------
R["torch"] = importlib.util.find_spec("torch") is not None
cls = None
try:
    cls = target_entry_point(EP_GROUP, EP_NAME).load()
except BaseException as exc:
    R["load_error"] = _err(exc)
R["is_class"] = isinstance(cls, type)
R["repr"] = repr(cls)[:200]
BASES = {}
for key, module in (("v1", "vllm.v1.sample.logits_processor"),
                    ("v2", "vllm.v1.worker.gpu.sample.logits_processor")):
    try:
        BASES[key] = importlib.import_module(module).LogitsProcessor
    except BaseException as exc:
        R[f"{key}_base_error"] = _short(exc)
if R["is_class"]:
    R["mro"] = [f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__]
    R["implements"] = {key: issubclass(cls, base) for key, base in BASES.items()}
    if R["implements"].get("v2"):
        R["interface"] = "v2"
    elif R["implements"].get("v1"):
        R["interface"] = "v1"
    else:
        # Neither base: judge its behaviour by the interface its methods follow.
        R["guessed"] = True
        R["interface"] = "v1" if hasattr(cls, "update_state") else "v2"

# ---- parameter sets ------------------------------------------------------------------------
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{1,63}")

def _strings(code, out):
    for const in code.co_consts:
        if isinstance(const, str):
            out.append(const)
        elif isinstance(const, types.CodeType):
            _strings(const, out)

def _package(obj):
    return str(getattr(obj, "__module__", None) or "").split(".")[0]

PACKAGE = _package(cls)

def _own(obj):
    # Defined by the plugin's own top-level package (not by vLLM or a library it imports).
    return _package(obj) == PACKAGE and PACKAGE not in ("vllm", "reference")

def _arg_keys(cls):
    # The `extra_args` keys a processor may read: the identifier-like string constants of
    # its own classes and modules (e.g. TARGET_TOKEN_ARG = "target_token").
    found = []
    own = [c for c in cls.__mro__ if c is not object and _own(c)]
    for module in {sys.modules.get(c.__module__) for c in own} - {None}:
        for name, value in vars(module).items():
            if name.startswith("__"):
                continue
            if isinstance(value, str):
                found.append(value)
            elif isinstance(value, types.FunctionType) and _own(value):
                _strings(value.__code__, found)
            elif isinstance(value, type) and value.__module__ == module.__name__:
                own.append(value)
    for klass in own:
        for name, attr in vars(klass).items():
            try:
                func = getattr(attr, "__func__", getattr(attr, "fget", attr))
            except Exception:
                continue
            if isinstance(func, types.FunctionType):
                _strings(func.__code__, found)
            elif isinstance(attr, str) and not name.startswith("__"):
                found.append(attr)
    keys = []
    for text in found:
        if IDENT.fullmatch(text) and not text.startswith("__") and text not in keys:
            keys.append(text)
    return keys[:MAX_KEYS]

BASE_KWARGS = [{}, {"temperature": 0.0}, {"seed": 7, "top_k": 5, "top_p": 0.9},
               {"min_p": 0.1}, {"logit_bias": {1: 2.0}, "min_tokens": 2, "stop_token_ids": [3]},
               {"extra_args": {}}]
USE_VALUES = [1, [1, 2, 3], 0.5, True]
ODD_VALUES = ["abc", "", -1, 10**12, 1.5, True, None, [1, "a"], [], {"nested": 1}]

from vllm.sampling_params import SamplingParams

def _label(kwargs):
    return "SamplingParams(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"

def _params(kwargs):
    return SamplingParams(**copy.deepcopy(kwargs))

def _buildable(kwargs):
    try:
        _params(kwargs)
    except Exception:
        return False
    return True

if R["is_class"]:
    keys = _arg_keys(cls)
    R["keys"] = keys
    using = [{"extra_args": {k: v}} for k in keys for v in USE_VALUES]
    if len(keys) > 1:
        using += [{"extra_args": {k: v for k in keys}} for v in USE_VALUES[:2]]
    VARIANTS = [kw for kw in BASE_KWARGS + using if _buildable(kw)]

# ---- validate_params (no torch needed) -----------------------------------------------------
def _validate(kwargs):
    try:
        value = cls.validate_params(_params(kwargs))
    except BaseException as exc:
        return {"params": _label(kwargs), "raised": type(exc).__name__, "error": _err(exc),
                "value_error": isinstance(exc, ValueError)}
    return {"params": _label(kwargs), "returned": None if value is None else repr(value)[:100]}

if R["is_class"]:
    owner = next((c for c in cls.__mro__ if "validate_params" in vars(c)), None)
    V = R["validate"] = {"custom": owner is not None and _own(owner)}
    ADMITTED = VARIANTS
    if V["custom"]:
        raw = vars(owner)["validate_params"]
        V["owner"] = f"{owner.__module__}.{owner.__qualname__}"
        V["bound"] = isinstance(raw, (classmethod, staticmethod))
        V["default"] = _validate({})
        odd = [{"extra_args": None}] + [
            {"extra_args": {k: v}} for k in keys + ["conformance_unknown_arg"] for v in ODD_VALUES]
        outcomes = [_validate(kw) for kw in VARIANTS + odd if _buildable(kw)]
        V["problems"] = [o for o in outcomes if "raised" in o and not o["value_error"]][:3]
        V["false_returns"] = [o["params"] for o in outcomes if o.get("returned") == "False"][:3]
        # The engine rejects (HTTP 400) what validate_params rejects: such requests never
        # reach the processor.
        rejected = {o["params"] for o in outcomes if "raised" in o}
        # If it rejects everything (see logits.validate-params), drive it with the defaults.
        ADMITTED = [kw for kw in VARIANTS if _label(kw) not in rejected] or [{}]
    R["admitted"] = [_label(kw) for kw in ADMITTED]

# ---- building and driving it (torch) -------------------------------------------------------
if R["is_class"] and R["torch"]:
    import torch
    torch.manual_seed(SEED)
    rng = random.Random(SEED)
    try:
        from vllm.config import VllmConfig
        CONFIG = VllmConfig()
    except BaseException as exc:
        R["config_error"] = _err(exc)
        CONFIG = None
    SLOTS = max(MAX_REQS, len(ADMITTED), BATCH)
    INTERFACE = R["interface"]

    def _init_params():
        try:
            return [p.name for p in inspect.signature(cls.__init__).parameters.values()]
        except (TypeError, ValueError):
            return None

    if INTERFACE == "v1":
        from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
        CALL = "cls(vllm_config, torch.device('cpu'), False)"

        def _new():
            return cls(CONFIG, torch.device("cpu"), False)
    else:
        from vllm.v1.worker.gpu.sample import logits_processor as v2

        class _Buffer:
            # What a processor reads of a per-slot buffer: `.gpu`, `.cpu` and `.np`.
            def __init__(self, tensor):
                self.cpu = self.gpu = tensor
            @property
            def np(self):
                return self.cpu.numpy()

        def _state():
            State = v2.LogitsProcRequestState
            if hasattr(State, "create"):
                return State.create(max_num_reqs=SLOTS, vocab_size=VOCAB, max_model_len=MAX_LEN,
                                    device="cpu")
            zeros = lambda *shape: _Buffer(torch.zeros(shape, dtype=torch.int32))
            return State(device=torch.device("cpu"), max_num_reqs=SLOTS, vocab_size=VOCAB,
                         all_token_ids=zeros(SLOTS, MAX_LEN), prompt_len=zeros(SLOTS),
                         prefill_len=zeros(SLOTS), total_len=zeros(SLOTS))

        def _context(slots, state):
            pos = [int(state.total_len.cpu[s]) - 1 for s in slots]
            tokens = [int(state.all_token_ids.cpu[s, p]) for s, p in zip(slots, pos)]
            Context = v2.LogitsContext
            if hasattr(Context, "for_slots"):
                return Context.for_slots(slots, input_ids=tokens, pos=pos)
            import numpy as np
            mapping = torch.tensor(slots, dtype=torch.int32)
            return Context(expanded_idx_mapping=mapping, idx_mapping=mapping.clone(),
                           idx_mapping_np=np.asarray(slots, dtype=np.int32),
                           expanded_local_pos=torch.zeros(len(slots), dtype=torch.int32),
                           input_ids=torch.tensor(tokens, dtype=torch.int32),
                           pos=torch.tensor(pos, dtype=torch.int64),
                           seq_lens_upper_bound_np=np.asarray(pos, dtype=np.int32) + 1)

        def _publish(buffer):
            publish = getattr(buffer, "copy_to_device", None)
            if publish is not None:
                publish()

        def _fill(state, slot):
            # The runner records a new request's prompt in its slot before the processors
            # hear of it.
            prompt = rng.randint(2, 6)
            state.all_token_ids.cpu[slot] = 0
            state.all_token_ids.cpu[slot, :prompt] = torch.randint(0, VOCAB, (prompt,))
            for buffer in (state.prompt_len, state.prefill_len, state.total_len):
                buffer.cpu[slot] = prompt
            for buffer in (state.all_token_ids, state.prompt_len, state.prefill_len,
                           state.total_len):
                _publish(buffer)

        def _decode(state, slot):
            total = int(state.total_len.cpu[slot])
            state.all_token_ids.cpu[slot, total] = rng.randrange(VOCAB)
            state.total_len.cpu[slot] = total + 1
            _publish(state.all_token_ids)
            _publish(state.total_len)

        CALL = "cls(vllm_config, LogitsProcRequestState(...))"
        STATES = {}

        def _new():
            state = _state()
            proc = cls(CONFIG, state)
            STATES[id(proc)] = state
            return proc

    R["construct"] = {"call": CALL, "init_params": _init_params()}
    try:
        _new()
    except BaseException as exc:
        R["construct"]["error"] = _err(exc)

def _shape_problem(out, logits):
    if not isinstance(out, torch.Tensor):
        return f"returned {repr(out)[:100]} (a {type(out).__qualname__}), not a tensor"
    if tuple(out.shape) != tuple(logits.shape):
        return f"returned a tensor of shape {tuple(out.shape)}"
    if out.dtype != logits.dtype:
        return f"returned a tensor of dtype {out.dtype}"
    return None

def _logits(rows):
    return torch.randn(rows, VOCAB, dtype=torch.float32)

def _load(kwargs_list):
    # A fresh processor holding one request per parameter set, in batch rows 0..n-1.
    proc = _new()
    if INTERFACE == "v1":
        added = [(i, _params(kw), [5, 6, 7], []) for i, kw in enumerate(kwargs_list)]
        proc.update_state(BatchUpdate(batch_size=len(added), removed=[], added=added, moved=[]))
        return proc, None
    state = STATES[id(proc)]
    slots = list(range(len(kwargs_list)))
    for slot, kw in zip(slots, kwargs_list):
        _fill(state, slot)
        proc.add_request(slot, _params(kw))
    proc.apply_staged_writes()
    rng.shuffle(slots)  # rows are reordered every step
    return proc, _context(slots, state)

def _apply(proc, ctx, logits):
    return proc.apply(logits) if INTERFACE == "v1" else proc.apply(logits, ctx)

DRIVE = R["is_class"] and R["torch"] and "error" not in R.get("construct", {"error": 1})

# apply-preserves-shape: requests that do not use the processor, then every admitted kind.
if DRIVE:
    scenarios = [("requests with default SamplingParams", [{}] * BATCH),
                 (f"{len(ADMITTED)} requests, one per parameter set", ADMITTED)]
    R["shape"] = []
    for name, kwargs_list in scenarios:
        logits = _logits(len(kwargs_list))
        shape = tuple(logits.shape)
        try:
            proc, ctx = _load(kwargs_list)
            out = _apply(proc, ctx, logits)
        except BaseException as exc:
            R["shape"].append({"scenario": name, "shape": shape, "error": _err(exc)})
            continue
        problem = _shape_problem(out, logits)
        if problem:
            R["shape"].append({"scenario": name, "shape": shape, "problem": problem})

# argmax-invariance-honest: V1 only.
if DRIVE and INTERFACE == "v1":
    A = R["argmax"] = {}
    try:
        proc, ctx = _load(ADMITTED)
        A["claims"] = proc.is_argmax_invariant()
    except BaseException as exc:
        A["error"] = _err(exc)
    if A.get("claims") is True:
        A["changed"] = []
        for draw in range(3):
            logits = _logits(len(ADMITTED))
            before = logits.argmax(dim=-1).tolist()
            try:
                out = _apply(proc, ctx, logits.clone())
                after = out.argmax(dim=-1).tolist()
            except BaseException as exc:
                A["error"] = _err(exc)
                break
            for row, (a, b) in enumerate(zip(before, after)):
                if a != b and len(A["changed"]) < 4:
                    A["changed"].append({"draw": draw + 1, "row": row, "before": a, "after": b,
                                         "params": _label(ADMITTED[row])})

# batch-updates: a seeded random sequence of steps.
def _v1_steps(proc):
    batch = {}  # index -> (params label, live output list)
    for step in range(1, STEPS + 1):
        for _, output in batch.values():
            output.append(rng.randrange(VOCAB))  # decoding grows the live output lists
        if step > 1 and rng.random() < 0.15:
            desc = "update_state(None)  # the batch did not change"
            yield desc, (lambda: proc.update_state(None)), len(batch)
            continue
        removed = rng.sample(sorted(batch), k=min(len(batch), rng.randint(0, 2)))
        for index in removed:
            del batch[index]
        holes = sorted(removed)
        added, labels = [], []
        for _ in range(rng.randint(1 if step == 1 else 0, 3)):
            if len(batch) >= MAX_REQS:
                break
            index = holes.pop(0) if holes else len(batch) + len(holes)
            kw = rng.choice(ADMITTED)
            output = []
            added.append((index, _params(kw), [5, 6, 7], output))
            labels.append(f"({index}, {_label(kw)}, ...)")
            batch[index] = (_label(kw), output)
        moved = []
        while holes and batch and max(batch) > holes[0]:  # condense: last into first hole
            src, dst = max(batch), holes.pop(0)
            batch[dst] = batch.pop(src)
            holes.append(src)
            holes.sort()
            moved.append((src, dst, MoveDirectionality.UNIDIRECTIONAL))
        if len(batch) >= 2 and rng.random() < 0.6:
            a, b = rng.sample(sorted(batch), 2)
            batch[a], batch[b] = batch[b], batch[a]
            moved.append((a, b, MoveDirectionality.SWAP))
        # An index refilled by an addition is reported as added, not removed.
        removed = sorted(set(removed) - {a[0] for a in added})
        update = BatchUpdate(batch_size=len(batch), removed=removed, added=added, moved=moved)
        shown = ", ".join(labels)
        moves = ", ".join(f"({a}, {b}, {d.name})" for a, b, d in moved)
        desc = (f"update_state(BatchUpdate(batch_size={len(batch)}, removed={removed}, "
                f"added=[{shown}], moved=[{moves}]))")
        yield desc, (lambda u=update: proc.update_state(u)), len(batch)

def _v2_steps(proc):
    state = STATES[id(proc)]
    active, used = [], []
    for step in range(1, STEPS + 1):
        for slot in list(active):
            if int(state.total_len.cpu[slot]) >= MAX_LEN - 1:
                active.remove(slot)  # finished: its slot is free for reuse
        for slot in rng.sample(active, k=min(len(active), rng.randint(0, 2))):
            active.remove(slot)
        free = [s for s in range(SLOTS) if s not in active]
        recycled = [s for s in used if s in free]
        calls = []
        for _ in range(rng.randint(1 if step == 1 else 0, 3)):
            if len(active) >= MAX_REQS or not free:
                break
            slot = recycled.pop(0) if recycled else free[0]
            free.remove(slot)
            kw = rng.choice(ADMITTED)
            calls.append((slot, kw))
            active.append(slot)
            if slot not in used:
                used.append(slot)

        def run(calls=calls):
            for slot, kw in calls:
                _fill(state, slot)
                proc.add_request(slot, _params(kw))
            proc.apply_staged_writes()
        shown = "; ".join(f"add_request({s}, {_label(kw)})" for s, kw in calls)
        yield (shown + "; " if shown else "") + "apply_staged_writes()", run, list(active)
        for slot in active:
            _decode(state, slot)

if DRIVE:
    B = R["batch"] = {"steps": 0}
    proc = _new()
    steps = _v1_steps(proc) if INTERFACE == "v1" else _v2_steps(proc)
    history = []
    for desc, run, rows in steps:
        B["steps"] += 1
        history.append(f"step {B['steps']}: {desc}")
        try:
            run()
        except BaseException as exc:
            B["error"], B["during"] = _err(exc), "the update"
            break
        if INTERFACE == "v1":
            n, ctx = rows, None
        else:
            slots = list(rows)
            rng.shuffle(slots)
            n, ctx = len(slots), _context(slots, STATES[id(proc)]) if slots else None
        if n == 0:
            continue
        try:
            _apply(proc, ctx, _logits(n))
        except BaseException as exc:
            B["error"], B["during"] = _err(exc), f"apply() on {n} rows after it"
            break
    B["history"] = history[-4:]
"""


# --------------------------------------------------------------------------------------------
# Pure helpers (unit-tested).


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


#: What an engine says when the model runner a processor needs cannot run on this machine
#: (vLLM 0.32's config validation with `VLLM_USE_V2_MODEL_RUNNER=1` and no usable Triton).
RUNNER_UNAVAILABLE = ("Model Runner V2 requires Triton",)


def _runner_unavailable(interface: str, error: str) -> str | None:
    """The engine's own refusal to run `interface`'s model runner here, if that is the error."""
    if interface != "v2":
        return None
    for line in error.splitlines():
        if any(marker in line for marker in RUNNER_UNAVAILABLE):
            return line.strip()
    return None


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


def logits_run(ctx: CheckContext) -> dict[str, Any]:
    """The shared probe's observations for this entry point; fails the check if it died."""
    assert ctx.entry_point is not None
    sizes = "".join(f"{k} = {v}\n" for k, v in SIZES.items()) + "MAX_KEYS = 12\n"
    result = ctx.session.memo(
        f"logits_run {ctx.entry_point.key}", lambda: ctx.probe(sizes + LOGITS_RUN)
    )
    if not result.ok:
        fail(f"Loading and driving the logits processor in a fresh process {result.describe()}")
    return result.values


def _class(ctx: CheckContext) -> dict[str, Any]:
    """Observations of an entry point that loaded as a class."""
    run = logits_run(ctx)
    if "load_error" in run:
        fail(f"The entry point could not be loaded:\n{run['load_error']}")
    if not run["is_class"]:
        fail(f"The entry point resolves to {run['repr']}, not a class (see logits.is-class).")
    return run


def _constructed(ctx: CheckContext) -> dict[str, Any]:
    """Observations of a class that was built as the engine builds it; skips without torch."""
    run = _class(ctx)
    if not run["torch"]:
        skip(NO_TORCH)
    error = run["construct"].get("error")
    if error:
        first = error.splitlines()[0]
        fail(f"{run['construct']['call']} raised {first} (see logits.constructs).")
    return run


# --------------------------------------------------------------------------------------------
# The checks.


@check(
    "logits.is-class",
    title="the entry point is a class",
    fix="Point the entry point at the processor class itself ('my_plugin.procs:MyProcessor'), "
    "not at a factory function or an instance.",
)
def check_is_class(ctx: CheckContext) -> None:
    """vLLM loads every `vllm.logits_processors` entry point (`VLLM_PLUGINS` does not apply)
    and treats what it gets as a class: the Model Runner V2 loader checks `issubclass` and
    refuses anything else with a ValueError at startup, and the V1 runner sorts processors by
    calling methods of what it constructs. A factory function fails on vLLM 0.32's default
    runner."""
    fact = ctx.loaded()
    if fact["kind"] != "class":
        kind = "a function" if fact["kind"] == "function" else "an object, not a class"
        fail(
            f"The entry point {ctx.entry_point.value!r} resolves to {fact['repr']}, "
            f"{kind}. Model Runner V2 (vLLM 0.32's default) refuses it at startup: "
            f"ValueError: LogitsProcessor plugin {ctx.entry_point.name} is not a subclass of "
            f"{V2_BASE}."
        )


@check(
    "logits.subclass",
    title="the class subclasses the logits-processor interface of the engine's default runner",
    fix=f"On vLLM >= 0.27 (Model Runner V2 by default) subclass {V2_BASE} and implement "
    "`__init__(vllm_config, req_states)`, `add_request(req_idx, sampling_params)` and "
    f"`apply(logits, ctx)`; on older engines subclass {V1_BASE}. Ship a V1 variant, loadable "
    "by 'module:Class' name, for users of the legacy runner.",
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
    assert ctx.entry_point is not None
    run = _class(ctx)
    contract = ctx.session.contract
    wanted = "v2" if mrv2_is_default(contract) else "v1"
    implements = run["implements"]
    if implements.get(wanted):
        return
    base = V2_BASE if wanted == "v2" else V1_BASE
    if f"{wanted}_base_error" in run:
        fail(f"The engine's {base} could not be imported: {run[f'{wanted}_base_error']}")
    name = run["repr"]
    if wanted == "v2" and implements.get("v1"):
        fail(
            f"{name} implements only the V1 interface ({V1_BASE}). vLLM {contract} runs Model "
            "Runner V2 by default, whose loader rejects it at startup: ValueError: "
            f"LogitsProcessor plugin {ctx.entry_point.name} is not a subclass of {V2_BASE}; "
            "V1-interface plugins are not supported by the V2 model runner."
        )
    if wanted == "v1" and implements.get("v2"):
        fail(
            f"{name} implements Model Runner V2's interface, which vLLM {contract} does not "
            f"run by default (it arrived around v0.27); subclass {V1_BASE}."
        )
    fail(f"{name} subclasses neither {V2_BASE} nor {V1_BASE} (its MRO: {', '.join(run['mro'])}).")


@check(
    "logits.constructs",
    title="the class constructs with the arguments the engine passes",
    fix="Keep the interface's constructor signature: V2 `__init__(self, vllm_config, "
    "req_states)` (call super().__init__), V1 `__init__(self, vllm_config, device, "
    "is_pin_memory)`; read sizes from `req_states` or `vllm_config` and allocate on the given "
    "device.",
)
def check_constructs(ctx: CheckContext) -> None:
    """The engine builds each processor once per model runner: Model Runner V2 as
    `cls(vllm_config, req_states)` with a `LogitsProcRequestState` (slot count, vocabulary
    size, per-slot token buffers), the V1 runner as `cls(vllm_config, device,
    is_pin_memory)`. The class is built by the interface it implements, on the CPU (V1:
    `torch.device('cpu')`, False), with a default `VllmConfig()`. A constructor that raises
    aborts the engine's startup."""
    run = _class(ctx)
    if not run["torch"]:
        skip(NO_TORCH)
    construct = run["construct"]
    if "error" in construct:
        hint = init_hint(run["interface"], construct.get("init_params"))
        if "config_error" in run:
            hint += (
                "\n(The harness could not build a VllmConfig(), so the processor was given None:"
                f"\n{run['config_error'].rstrip()})"
            )
        fail(f"{construct['call']} raised:\n{construct['error'].rstrip()}\n{hint}".rstrip())


@check(
    "logits.apply-preserves-shape",
    title="apply returns a tensor of the logits' shape and dtype",
    fix="Edit the whole [num_rows, vocab_size] logits tensor (in place is best) and return it; "
    "never return a slice, only the rows you changed, or a reduced tensor.",
)
def check_apply_preserves_shape(ctx: CheckContext) -> None:
    """The sampler hands every processor the whole batch's logits and uses what `apply`
    returns as the logits of every row; a tensor of another shape or dtype breaks the next
    step of sampling for the whole batch. `apply` is called on random float32 logits,
    once with requests that do not use the processor and once with one request per
    parameter set (including `extra_args` values the processor seems to read)."""
    run = _constructed(ctx)
    problems = [
        f"With {s['scenario']}, apply() on logits of shape {tuple(s['shape'])} "
        + (f"raised:\n{s['error']}" if "error" in s else f"{s['problem']}.")
        for s in run["shape"]
    ]
    if problems:
        fail("\n".join(problems))


@check(
    "logits.argmax-invariance-honest",
    title="a processor that claims argmax invariance keeps every row's argmax",
    fix="Return False from is_argmax_invariant() if apply() can change which token has the "
    "highest logit (masking, forcing or biasing tokens does); True is only for processors "
    "that never change the greedy choice.",
)
def check_argmax_invariance_honest(ctx: CheckContext) -> None:
    """The V1 sampler takes greedy tokens before it runs the processors that claim argmax
    invariance (they only shape the distribution of random sampling): a processor that
    claims invariance but changes the argmax is silently ignored for greedy requests
    (temperature 0) and gives different tokens for greedy and sampled ones. Logits are drawn
    at random (three draws) for a batch of one request per parameter set, and each row's
    argmax is compared before and after `apply`. The V2 interface makes no such claim."""
    if _class(ctx)["interface"] != "v1":
        skip(NO_ARGMAX_CLAIM_V2)
    run = _constructed(ctx)
    argmax = run["argmax"]
    if "error" in argmax and "claims" not in argmax:
        fail(f"is_argmax_invariant() raised:\n{argmax['error']}")
    if argmax["claims"] is not True:
        skip(NO_ARGMAX_CLAIM_V1)
    if "error" in argmax:
        fail(f"apply() raised on the batch of every parameter set:\n{argmax['error']}")
    if argmax["changed"]:
        rows = "\n".join(
            f"  draw {c['draw']}, row {c['row']} ({c['params']}): argmax {c['before']} -> "
            f"{c['after']}"
            for c in argmax["changed"]
        )
        fail(f"is_argmax_invariant() returns True, but apply() changed the argmax of:\n{rows}")


@check(
    "logits.batch-updates",
    title="the processor follows random batch changes without raising",
    fix="V1: apply each BatchUpdate in the order removed, added, moved, and handle every move "
    "(UNIDIRECTIONAL and SWAP) including indices whose request holds no state (e.g. use "
    "dict.pop(i, None)); update_state(None) means no change. V2: let add_request fully "
    "re-initialise a recycled slot.",
)
def check_batch_updates(ctx: CheckContext) -> None:
    """The engine's persistent batch changes every step: V1 reports requests removed,
    added (at freed or new indices), moved one way to fill holes and swapped, through
    `update_state`; Model Runner V2 recycles slots through `add_request` and reorders rows
    every step. A seeded random sequence of a few dozen steps, with requests of every
    parameter set, is applied; `apply` is called after each step. Any exception would
    abort the engine's step."""
    run = _constructed(ctx)
    batch = run["batch"]
    if "error" in batch:
        history = "\n".join(f"  {h}" for h in batch["history"])
        fail(
            f"At step {batch['steps']} of the random sequence, {batch['during']} raised:\n"
            f"{batch['error'].rstrip()}\nThe last steps were:\n{history}"
        )


@check(
    "logits.validate-params",
    title="validate_params accepts default parameters and rejects others only with ValueError",
    fix="Declare `validate_params` as a @classmethod that returns None for parameters it "
    "accepts and raises ValueError (not TypeError, KeyError ...) with a clear message for "
    "those it rejects, including odd `extra_args` values.",
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
    run = _class(ctx)
    validate = run["validate"]
    if not validate["custom"]:
        return
    hint = (
        ""
        if validate["bound"]
        else "\nIt is not a classmethod: vLLM calls it on the class, as cls.validate_params(...)."
    )
    default = validate["default"]
    if "raised" in default:
        fail(f"validate_params(SamplingParams()) raised:\n{default['error'].rstrip()}{hint}")
    problems = [
        f"validate_params({p['params']}) raised {p['raised']}, not ValueError"
        + (f":\n{p['error'].rstrip()}" if i == 0 else "")
        for i, p in enumerate(validate["problems"])
    ]
    problems += [
        f"validate_params({p}) returned False, which rejects nothing"
        for p in validate["false_returns"]
    ]
    if problems:
        fail("\n".join(problems).rstrip() + hint)


# --------------------------------------------------------------------------------------------
# Engine run: the processor inside a real engine's batches.

#: Requests of different lengths through two slots, so the batch grows and shrinks between
#: steps; every other one carries the `extra_args` the processor seems to read.
ENGINE_LENGTHS = (2, 5, 3, 4, 1, 8)
ENGINE_PROMPTS = ("a", "bb", "ccc", "dddd", "e", "ff")

LOGITS_ENGINE_RUN = r"""
R = probe.result

if not ENGINE_MISSING:
    from vllm import LLM, SamplingParams
    cls = target_entry_point(EP_GROUP, EP_NAME).load()
    validate = getattr(cls, "validate_params", None)

    def _accepted(extra):
        # Only values the processor's own validator accepts: a rejection is not a failure.
        try:
            params = SamplingParams(max_tokens=1, extra_args=extra)
            if callable(validate):
                validate(params)
        except Exception:
            return False
        return True

    chosen = []
    for key in KEYS:
        for value in USE_VALUES:
            if _accepted({key: value}):
                chosen.append({key: value})
                break
    R["extra_args"] = chosen
    stage = "LLM(model=tiny_llama, max_num_seqs=2)"
    try:
        llm = LLM(model=tiny_checkpoint("llama"), max_num_seqs=2, max_model_len=128,
                  **SMALL_ENGINE)
        R["v2"] = getattr(llm.llm_engine.vllm_config, "use_v2_model_runner", None)
        params = []
        for i, n in enumerate(LENGTHS):
            extra = chosen[(i // 2) % len(chosen)] if chosen and i % 2 == 0 else None
            params.append(SamplingParams(max_tokens=n, temperature=0, ignore_eos=True,
                                         extra_args=extra))
        R["requests"] = [
            f"SamplingParams(max_tokens={p.max_tokens}, extra_args={p.extra_args!r})"
            for p in params]
        stage = f"LLM.generate({len(PROMPTS)} prompts)"
        outs = llm.generate(list(PROMPTS), params)
        R["tokens"] = [len(o.outputs[0].token_ids) for o in outs]
        shut(llm)
    except BaseException as exc:
        R["engine_error"] = {"stage": stage, "error": _err(exc)}
"""


@check(
    "logits.engine-run",
    title="in a real engine the processor survives batches that grow and shrink, and every "
    "request gets its tokens",
    fix="Size per-step buffers from the logits `apply` receives (or from max_num_reqs), never "
    "from an earlier step's batch, and key request state by batch index (V1) or slot (V2) as "
    "the engine's updates say.",
)
def check_engine_run(ctx: CheckContext) -> None:
    """The simulated batches above are the harness's reading of the interface; here the
    engine drives the processor. With the plugin installed (its entry point, as a user
    installs it) and the interface it implements in force (`VLLM_USE_V2_MODEL_RUNNER=1` for
    Model Runner V2 processors, `0` for V1), `LLM` on a tiny generated Llama with two slots
    generates for six requests of different lengths, every other one carrying `extra_args`
    the processor appears to read (values its `validate_params` accepts). Requests finish and
    join between steps, so the batch grows and shrinks. Nothing may raise, and each request
    must get exactly the tokens it asked for (EOS ignored). Where the engine itself refuses to
    run the processor's model runner on this machine (vLLM's CPU build runs Model Runner V2
    only with a Triton that has a CPU backend), the check is a capability skip."""
    from conformance.checks.general import (
        ENGINE_RUN_TIMEOUT_S,
        engine_run_code,
        skip_if_engine_missing,
    )

    assert ctx.entry_point is not None
    run = _constructed(ctx)
    interface = run["interface"]
    header = (
        f"KEYS = {list(run.get('keys') or [])!r}\nUSE_VALUES = [1, [1, 2, 3], 0.5, True]\n"
        f"LENGTHS = {list(ENGINE_LENGTHS)!r}\nPROMPTS = {list(ENGINE_PROMPTS)!r}\n"
    )
    env = {"VLLM_USE_V2_MODEL_RUNNER": "1" if interface == "v2" else "0"}
    result = ctx.session.memo(
        f"logits_engine_run {ctx.entry_point.key}",
        lambda: ctx.probe(
            engine_run_code(header + LOGITS_ENGINE_RUN), env=env, timeout=ENGINE_RUN_TIMEOUT_S
        ),
    )
    if not result.ok:
        fail(f"Generating with the processor in a fresh process {result.describe()}")
    engine = result.values
    skip_if_engine_missing(engine)
    flag = env["VLLM_USE_V2_MODEL_RUNNER"]
    where = f"under {interface_name(interface)} (VLLM_USE_V2_MODEL_RUNNER={flag})"
    if "engine_error" in engine:
        error = engine["engine_error"]
        refusal = _runner_unavailable(interface, error["error"])
        if refusal:
            skip(
                f"this engine cannot run {interface_name(interface)} on this machine ({refusal}); "
                "the processor was judged on simulated batches only (logits.batch-updates). "
                "vLLM's CPU build runs Model Runner V2 only with a Triton that has a CPU "
                "backend; on GPUs it is the default."
            )
        requests = "\n  ".join(engine.get("requests") or [])
        shown = f"\nRequests (two slots):\n  {requests}" if requests else ""
        fail(f"{error['stage']} {where} raised:\n{error['error'].rstrip()}{shown}")
    if engine["tokens"] != list(ENGINE_LENGTHS):
        fail(
            f"Requests asked for {list(ENGINE_LENGTHS)} tokens (EOS ignored) {where} and got "
            f"{engine['tokens']}."
        )
