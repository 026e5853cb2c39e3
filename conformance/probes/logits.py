"""Probes of logits processors (`vllm.logits_processors`): the class, its interface, and
driving it as the engine does.

`observe_logits` loads the class, decides which interface it implements (V1 or Model Runner
V2, from its MRO), calls `validate_params` on many parameter sets and then, where torch is
installed, builds the processor as the engine does and drives it through requests, random
batch changes and `apply` calls on random logits (a simulated engine, `V1Runner` or
`V2Runner`). `observe_engine_run` lets a real engine drive it instead.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import random
import re
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from conformance.probes import engine_run, runtime
from conformance.probes.data import ExceptionInfo

#: Where each interface's `LogitsProcessor` base class lives.
BASE_MODULES = {
    "v1": "vllm.v1.sample.logits_processor",
    "v2": "vllm.v1.worker.gpu.sample.logits_processor",
}

# Sizes of the simulated engine: small, so that driving a processor takes a fraction of a second.
VOCAB = 64
BATCH = 4
MAX_LEN = 48
STEPS = 40
MAX_REQS = 12
SEED = 20260
#: At most this many `extra_args` keys are guessed from the processor's code.
MAX_KEYS = 12

#: Parameter sets every processor is given, before those using the keys it seems to read.
BASE_KWARGS: list[dict[str, Any]] = [
    {},
    {"temperature": 0.0},
    {"seed": 7, "top_k": 5, "top_p": 0.9},
    {"min_p": 0.1},
    {"logit_bias": {1: 2.0}, "min_tokens": 2, "stop_token_ids": [3]},
    {"extra_args": {}},
]
#: Values a request may plausibly give a key the processor reads.
USE_VALUES: list[Any] = [1, [1, 2, 3], 0.5, True]
#: Values `validate_params` must reject with ValueError (or accept), never raise on otherwise.
ODD_VALUES: list[Any] = ["abc", "", -1, 10**12, 1.5, True, None, [1, "a"], [], {"nested": 1}]
UNKNOWN_KEY = "conformance_unknown_arg"
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{1,63}")


# --------------------------------------------------------------------------------------------
# Observations.


@dataclass
class ValidateOutcome:
    """One `validate_params` call: what it raised or returned."""

    params: str
    raised: ExceptionInfo | None = None
    #: Whether what it raised is a ValueError (or a subclass): a rejection the engine expects.
    value_error: bool = False
    #: `repr` of what it returned, if not None.
    returned: str | None = None


@dataclass
class ValidateObservation:
    #: Whether the plugin defines its own `validate_params` (not the base class's).
    custom: bool = False
    #: The class that defines it.
    owner: str = ""
    #: Whether it is a classmethod or staticmethod (vLLM calls it on the class).
    bound: bool = False
    #: The call with default `SamplingParams()`.
    default: ValidateOutcome | None = None
    #: Calls that raised something other than ValueError (the first few).
    problems: list[ValidateOutcome] = field(default_factory=list)
    #: Parameter sets for which it returned False (the first few).
    false_returns: list[str] = field(default_factory=list)


@dataclass
class ConstructObservation:
    """The processor built as the engine builds it."""

    #: How it was called, in words.
    call: str
    #: Its `__init__`'s parameters (`*args` and `**kwargs` marked), if it has a signature.
    init_params: list[str] | None = None
    error: ExceptionInfo | None = None
    #: `VllmConfig()` could not be built, so the processor was given None.
    config_error: ExceptionInfo | None = None


@dataclass
class ShapeProblem:
    """One `apply` call that raised or returned something other than the logits' shape."""

    scenario: str
    shape: list[int]
    error: ExceptionInfo | None = None
    #: What it returned instead, in words.
    problem: str | None = None


@dataclass
class ArgmaxChange:
    draw: int
    row: int
    before: int
    after: int
    params: str


@dataclass
class ArgmaxObservation:
    """V1 only: whether the processor claims argmax invariance, and whether it keeps it."""

    claims: bool | None = None
    #: What raised before the claim was known (loading the batch or `is_argmax_invariant()`).
    claim_stage: str | None = None
    claim_error: ExceptionInfo | None = None
    apply_error: ExceptionInfo | None = None
    changed: list[ArgmaxChange] = field(default_factory=list)


@dataclass
class BatchObservation:
    """The seeded random sequence of batch changes, and where it stopped if something raised."""

    steps: int = 0
    #: What raised at the last step ("the update", "apply() on 3 rows after it").
    during: str | None = None
    error: ExceptionInfo | None = None
    #: The last few steps, in words.
    history: list[str] = field(default_factory=list)


@dataclass
class LogitsObservation:
    has_torch: bool = False
    load_error: ExceptionInfo | None = None
    is_class: bool = False
    repr: str = ""
    #: The engine's base classes that could not be imported, by interface ("v1", "v2").
    base_errors: dict[str, ExceptionInfo] = field(default_factory=dict)
    mro: list[str] = field(default_factory=list)
    #: Interface -> whether the class subclasses that interface's base.
    implements: dict[str, bool] = field(default_factory=dict)
    #: The interface it is judged by ("v1" or "v2"; "" if it is no class).
    interface: str = ""
    #: It subclasses neither base: the interface was guessed from its methods.
    guessed: bool = False
    #: The `extra_args` keys the processor seems to read.
    keys: list[str] = field(default_factory=list)
    validate: ValidateObservation | None = None
    #: Labels of the parameter sets requests were driven with (those `validate_params` admits).
    admitted: list[str] = field(default_factory=list)
    construct: ConstructObservation | None = None
    #: Whether the processor was driven (a class, torch installed, and it constructed).
    driven: bool = False
    shape: list[ShapeProblem] = field(default_factory=list)
    argmax: ArgmaxObservation | None = None
    batch: BatchObservation | None = None


# --------------------------------------------------------------------------------------------
# The class and its interface (no torch needed).


def engine_bases(obs: LogitsObservation, v1: bool = True) -> dict[str, type]:
    """The engine's `LogitsProcessor` base of each interface (import errors recorded); the V1
    one only where `v1` says the engine's contract still has it."""
    bases = {}
    for key, module in BASE_MODULES.items():
        if key == "v1" and not v1:
            continue
        try:
            bases[key] = importlib.import_module(module).LogitsProcessor
        except BaseException as exc:
            obs.base_errors[key] = runtime.capture(exc)
    return bases


def judge_interface(
    obs: LogitsObservation, cls: type, bases: dict[str, type], v1: bool = True
) -> None:
    """Which interface the class implements; with neither base, the one its methods follow
    (only V2 where `v1` says the engine's contract has no V1 interface)."""
    obs.mro = [f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__]
    obs.implements = {key: issubclass(cls, base) for key, base in bases.items()}
    if obs.implements.get("v2"):
        obs.interface = "v2"
    elif obs.implements.get("v1"):
        obs.interface = "v1"
    else:
        obs.guessed = True
        obs.interface = "v1" if v1 and hasattr(cls, "update_state") else "v2"


# --------------------------------------------------------------------------------------------
# The `extra_args` keys a processor may read, and the parameter sets it is given.


def _strings(code: types.CodeType, out: list[str]) -> None:
    for const in code.co_consts:
        if isinstance(const, str):
            out.append(const)
        elif isinstance(const, types.CodeType):
            _strings(const, out)


def _package(obj: Any) -> str:
    return str(getattr(obj, "__module__", None) or "").split(".")[0]


def is_own(obj: Any, package: str) -> bool:
    """Defined by the plugin's own top-level `package` (not by vLLM or a library it imports)."""
    return _package(obj) == package and package not in ("vllm", "reference")


def _module_strings(own: list[type], package: str, found: list[str]) -> None:
    """String constants of the modules defining `own`; classes found there join `own`."""
    for module in {sys.modules.get(c.__module__) for c in own} - {None}:
        for name, value in vars(module).items():
            if name.startswith("__"):
                continue
            if isinstance(value, str):
                found.append(value)
            elif isinstance(value, types.FunctionType) and is_own(value, package):
                _strings(value.__code__, found)
            elif isinstance(value, type) and value.__module__ == module.__name__:
                own.append(value)


def _class_strings(own: list[type], found: list[str]) -> None:
    """String constants of the methods and class attributes of `own`."""
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


def arg_keys(cls: type) -> list[str]:
    """The `extra_args` keys a processor may read: the identifier-like string constants of
    its own classes and modules (e.g. TARGET_TOKEN_ARG = "target_token")."""
    package = _package(cls)
    own = [c for c in cls.__mro__ if c is not object and is_own(c, package)]
    found: list[str] = []
    _module_strings(own, package, found)
    _class_strings(own, found)
    keys: list[str] = []
    for text in found:
        if IDENT.fullmatch(text) and not text.startswith("__") and text not in keys:
            keys.append(text)
    return keys[:MAX_KEYS]


def label(kwargs: dict[str, Any]) -> str:
    return "SamplingParams(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"


def sampling_params(kwargs: dict[str, Any]) -> Any:
    from vllm.sampling_params import SamplingParams

    return SamplingParams(**copy.deepcopy(kwargs))


def buildable(kwargs: dict[str, Any]) -> bool:
    """Whether the engine's `SamplingParams` accepts `kwargs` at all."""
    try:
        sampling_params(kwargs)
    except Exception:
        return False
    return True


def parameter_sets(keys: list[str]) -> list[dict[str, Any]]:
    """The base parameter sets and, for each key, `extra_args` using it (those that build)."""
    using = [{"extra_args": {k: v}} for k in keys for v in USE_VALUES]
    if len(keys) > 1:
        using += [{"extra_args": dict.fromkeys(keys, v)} for v in USE_VALUES[:2]]
    return [kw for kw in BASE_KWARGS + using if buildable(kw)]


def odd_parameter_sets(keys: list[str]) -> list[dict[str, Any]]:
    """`extra_args` of None, and odd values for every key (and one the processor ignores)."""
    odd: list[dict[str, Any]] = [{"extra_args": None}]
    odd += [{"extra_args": {k: v}} for k in [*keys, UNKNOWN_KEY] for v in ODD_VALUES]
    return [kw for kw in odd if buildable(kw)]


# --------------------------------------------------------------------------------------------
# validate_params (no torch needed).


def validate_once(cls: type, kwargs: dict[str, Any]) -> ValidateOutcome:
    """`cls.validate_params(SamplingParams(**kwargs))`, as the frontend calls it."""
    outcome = ValidateOutcome(params=label(kwargs))
    params = sampling_params(kwargs)
    try:
        value = runtime.call_method(cls, "validate_params", params)
    except BaseException as exc:
        outcome.raised = runtime.capture(exc)
        outcome.value_error = isinstance(exc, ValueError)
        return outcome
    outcome.returned = None if value is None else repr(value)[:100]
    return outcome


def observe_validate(
    cls: type, keys: list[str], variants: list[dict[str, Any]]
) -> tuple[ValidateObservation, list[dict[str, Any]]]:
    """Call the plugin's own `validate_params` (if any) on every parameter set and odd ones;
    return what happened and the parameter sets it admits (what the engine lets through)."""
    owner = next((c for c in cls.__mro__ if "validate_params" in vars(c)), None)
    obs = ValidateObservation(custom=owner is not None and is_own(owner, _package(cls)))
    if owner is None or not obs.custom:
        return obs, variants
    raw = vars(owner)["validate_params"]
    obs.owner = f"{owner.__module__}.{owner.__qualname__}"
    obs.bound = isinstance(raw, (classmethod, staticmethod))
    obs.default = validate_once(cls, {})
    outcomes = [validate_once(cls, kw) for kw in variants + odd_parameter_sets(keys)]
    obs.problems = [o for o in outcomes if o.raised is not None and not o.value_error][:3]
    obs.false_returns = [o.params for o in outcomes if o.returned == "False"][:3]
    # The engine rejects (HTTP 400) what validate_params rejects: such requests never reach
    # the processor. If it rejects everything (see logits.validate-params), drive it with the
    # defaults.
    rejected = {o.params for o in outcomes if o.raised is not None}
    admitted = [kw for kw in variants if label(kw) not in rejected] or [{}]
    return obs, admitted


# --------------------------------------------------------------------------------------------
# The simulated engine (torch): builds the processor as a model runner does and drives it.


@dataclass
class Step:
    """One change of the batch: `run()` applies it; `apply` then sees `rows`."""

    desc: str
    run: Callable[[], None]
    #: V1: the batch size after it; V2: the active slots.
    rows: Any


class SimulatedRunner:
    """What both interfaces' simulations share: the class, the config, the seeded random
    source and the parameter sets requests are drawn from."""

    #: How the processor is constructed, in words.
    call = ""

    def __init__(self, cls: type, config: Any, admitted: list[dict[str, Any]]) -> None:
        self.cls = cls
        self.config = config
        self.admitted = admitted
        self.rng = random.Random(SEED)
        self.slots = max(MAX_REQS, len(admitted), BATCH)

    def new(self) -> Any:
        raise NotImplementedError

    def load(self, kwargs_list: list[dict[str, Any]]) -> tuple[Any, Any]:
        """A fresh processor holding one request per parameter set, in rows 0..n-1; returns
        it and the context `apply` needs."""
        raise NotImplementedError

    def apply(self, proc: Any, ctx: Any, logits: Any) -> Any:
        raise NotImplementedError

    def steps(self, proc: Any) -> Iterator[Step]:
        """A seeded random sequence of batch changes."""
        raise NotImplementedError

    def step_rows(self, proc: Any, rows: Any) -> tuple[int, Any]:
        """After a step: how many logits rows `apply` gets, and its context."""
        raise NotImplementedError


class V1Runner(SimulatedRunner):
    """The V1 runner: `cls(vllm_config, device, is_pin_memory)`, `update_state(BatchUpdate)`
    with requests removed, added, moved one way to fill holes and swapped, and `apply(logits)`."""

    call = "cls(vllm_config, torch.device('cpu'), False)"

    def new(self) -> Any:
        import torch

        return runtime.call_plugin(self.cls, self.config, torch.device("cpu"), False)

    def load(self, kwargs_list: list[dict[str, Any]]) -> tuple[Any, Any]:
        from vllm.v1.sample.logits_processor import BatchUpdate

        proc = self.new()
        added = [(i, sampling_params(kw), [5, 6, 7], []) for i, kw in enumerate(kwargs_list)]
        update = BatchUpdate(batch_size=len(added), removed=[], added=added, moved=[])
        runtime.call_method(proc, "update_state", update)
        return proc, None

    def apply(self, proc: Any, ctx: Any, logits: Any) -> Any:
        return runtime.call_method(proc, "apply", logits)

    def step_rows(self, proc: Any, rows: Any) -> tuple[int, Any]:
        return rows, None

    def steps(self, proc: Any) -> Iterator[Step]:
        batch: dict[int, tuple[str, list[int]]] = {}  # index -> (params label, live output)
        for step in range(1, STEPS + 1):
            for _, output in batch.values():
                output.append(self.rng.randrange(VOCAB))  # decoding grows the live outputs
            if step > 1 and self.rng.random() < 0.15:
                desc = "update_state(None)  # the batch did not change"
                yield Step(
                    desc, lambda: runtime.call_method(proc, "update_state", None), len(batch)
                )
                continue
            yield self._change(proc, batch, step)

    def _change(self, proc: Any, batch: dict[int, tuple[str, list[int]]], step: int) -> Step:
        """Remove, add, condense and swap requests at random: one `BatchUpdate`."""
        from vllm.v1.sample.logits_processor import BatchUpdate

        rng = self.rng
        removed = rng.sample(sorted(batch), k=min(len(batch), rng.randint(0, 2)))
        for index in removed:
            del batch[index]
        holes = sorted(removed)
        added, labels = self._add(batch, holes, step)
        moved = self._move(batch, holes)
        # An index refilled by an addition is reported as added, not removed.
        removed = sorted(set(removed) - {a[0] for a in added})
        update = BatchUpdate(batch_size=len(batch), removed=removed, added=added, moved=moved)
        moves = ", ".join(f"({a}, {b}, {d.name})" for a, b, d in moved)
        desc = (
            f"update_state(BatchUpdate(batch_size={len(batch)}, removed={removed}, "
            f"added=[{', '.join(labels)}], moved=[{moves}]))"
        )
        return Step(desc, lambda: runtime.call_method(proc, "update_state", update), len(batch))

    def _add(
        self, batch: dict[int, tuple[str, list[int]]], holes: list[int], step: int
    ) -> tuple[list[Any], list[str]]:
        """New requests, into the holes first (at least one at the first step)."""
        added, labels = [], []
        for _ in range(self.rng.randint(1 if step == 1 else 0, 3)):
            if len(batch) >= MAX_REQS:
                break
            index = holes.pop(0) if holes else len(batch) + len(holes)
            kw = self.rng.choice(self.admitted)
            output: list[int] = []
            added.append((index, sampling_params(kw), [5, 6, 7], output))
            labels.append(f"({index}, {label(kw)}, ...)")
            batch[index] = (label(kw), output)
        return added, labels

    def _move(self, batch: dict[int, tuple[str, list[int]]], holes: list[int]) -> list[Any]:
        """Condense (the last request into the first hole), then maybe swap two requests."""
        from vllm.v1.sample.logits_processor import MoveDirectionality

        moved = []
        while holes and batch and max(batch) > holes[0]:
            src, dst = max(batch), holes.pop(0)
            batch[dst] = batch.pop(src)
            holes.append(src)
            holes.sort()
            moved.append((src, dst, MoveDirectionality.UNIDIRECTIONAL))
        if len(batch) >= 2 and self.rng.random() < 0.6:
            a, b = self.rng.sample(sorted(batch), 2)
            batch[a], batch[b] = batch[b], batch[a]
            moved.append((a, b, MoveDirectionality.SWAP))
        return moved


class _Buffer:
    """What a processor reads of a per-slot buffer: `.gpu`, `.cpu` and `.np` (for engines
    whose request state has no `create`, real vLLM's)."""

    def __init__(self, tensor: Any) -> None:
        self.cpu = self.gpu = tensor

    @property
    def np(self) -> Any:
        return self.cpu.numpy()


def _publish(buffer: Any) -> None:
    publish = getattr(buffer, "copy_to_device", None)
    if publish is not None:
        publish()


class V2Runner(SimulatedRunner):
    """Model Runner V2: `cls(vllm_config, req_states)` with a `LogitsProcRequestState`, slots
    recycled through `add_request` and `apply_staged_writes`, and rows reordered every step
    (`apply(logits, ctx)` with a `LogitsContext`)."""

    call = "cls(vllm_config, LogitsProcRequestState(...))"

    def __init__(self, cls: type, config: Any, admitted: list[dict[str, Any]]) -> None:
        super().__init__(cls, config, admitted)
        #: id(processor) -> the request state it was built with
        self.states: dict[int, Any] = {}

    def request_state(self) -> Any:
        import torch
        from vllm.v1.worker.gpu.sample import logits_processor as v2

        state_type = v2.LogitsProcRequestState
        if hasattr(state_type, "create"):
            return state_type.create(
                max_num_reqs=self.slots, vocab_size=VOCAB, max_model_len=MAX_LEN, device="cpu"
            )

        def zeros(*shape: int) -> _Buffer:
            return _Buffer(torch.zeros(shape, dtype=torch.int32))

        return state_type(
            device=torch.device("cpu"),
            max_num_reqs=self.slots,
            vocab_size=VOCAB,
            all_token_ids=zeros(self.slots, MAX_LEN),
            prompt_len=zeros(self.slots),
            prefill_len=zeros(self.slots),
            total_len=zeros(self.slots),
        )

    def context(self, slots: list[int], state: Any) -> Any:
        """The `LogitsContext` of a step whose row i samples for `slots[i]`."""
        import torch
        from vllm.v1.worker.gpu.sample import logits_processor as v2

        pos = [int(state.total_len.cpu[s]) - 1 for s in slots]
        tokens = [int(state.all_token_ids.cpu[s, p]) for s, p in zip(slots, pos, strict=True)]
        context_type = v2.LogitsContext
        if hasattr(context_type, "for_slots"):
            return context_type.for_slots(slots, input_ids=tokens, pos=pos)
        import numpy as np

        mapping = torch.tensor(slots, dtype=torch.int32)
        return context_type(
            expanded_idx_mapping=mapping,
            idx_mapping=mapping.clone(),
            idx_mapping_np=np.asarray(slots, dtype=np.int32),
            expanded_local_pos=torch.zeros(len(slots), dtype=torch.int32),
            input_ids=torch.tensor(tokens, dtype=torch.int32),
            pos=torch.tensor(pos, dtype=torch.int64),
            seq_lens_upper_bound_np=np.asarray(pos, dtype=np.int32) + 1,
        )

    def fill(self, state: Any, slot: int) -> None:
        """Record a new request's prompt in its slot, as the runner does before the processors
        hear of it."""
        import torch

        prompt = self.rng.randint(2, 6)
        state.all_token_ids.cpu[slot] = 0
        state.all_token_ids.cpu[slot, :prompt] = torch.randint(0, VOCAB, (prompt,))
        for buffer in (state.prompt_len, state.prefill_len, state.total_len):
            buffer.cpu[slot] = prompt
        for buffer in (state.all_token_ids, state.prompt_len, state.prefill_len, state.total_len):
            _publish(buffer)

    def decode(self, state: Any, slot: int) -> None:
        """One more token in the slot's sequence."""
        total = int(state.total_len.cpu[slot])
        state.all_token_ids.cpu[slot, total] = self.rng.randrange(VOCAB)
        state.total_len.cpu[slot] = total + 1
        _publish(state.all_token_ids)
        _publish(state.total_len)

    def new(self) -> Any:
        state = self.request_state()
        proc = runtime.call_plugin(self.cls, self.config, state)
        self.states[id(proc)] = state
        return proc

    def add(self, proc: Any, calls: list[tuple[int, dict[str, Any]]]) -> None:
        """Put a request of each parameter set in its slot, then publish the staged writes."""
        state = self.states[id(proc)]
        for slot, kw in calls:
            self.fill(state, slot)
            runtime.call_method(proc, "add_request", slot, sampling_params(kw))
        runtime.call_method(proc, "apply_staged_writes")

    def load(self, kwargs_list: list[dict[str, Any]]) -> tuple[Any, Any]:
        proc = self.new()
        slots = list(range(len(kwargs_list)))
        self.add(proc, list(zip(slots, kwargs_list, strict=True)))
        self.rng.shuffle(slots)  # rows are reordered every step
        return proc, self.context(slots, self.states[id(proc)])

    def apply(self, proc: Any, ctx: Any, logits: Any) -> Any:
        return runtime.call_method(proc, "apply", logits, ctx)

    def step_rows(self, proc: Any, rows: Any) -> tuple[int, Any]:
        slots = list(rows)
        self.rng.shuffle(slots)
        return len(slots), self.context(slots, self.states[id(proc)]) if slots else None

    def steps(self, proc: Any) -> Iterator[Step]:
        state = self.states[id(proc)]
        active: list[int] = []
        used: list[int] = []
        for step in range(1, STEPS + 1):
            for slot in list(active):
                if int(state.total_len.cpu[slot]) >= MAX_LEN - 1:
                    active.remove(slot)  # finished: its slot is free for reuse
            for slot in self.rng.sample(active, k=min(len(active), self.rng.randint(0, 2))):
                active.remove(slot)
            calls = self._admit(active, used, step)
            shown = "; ".join(f"add_request({s}, {label(kw)})" for s, kw in calls)
            desc = (shown + "; " if shown else "") + "apply_staged_writes()"
            yield Step(desc, lambda calls=calls: self.add(proc, calls), list(active))
            for slot in active:
                self.decode(state, slot)

    def _admit(
        self, active: list[int], used: list[int], step: int
    ) -> list[tuple[int, dict[str, Any]]]:
        """New requests for free slots, recycled slots first (at least one at the first step)."""
        free = [s for s in range(self.slots) if s not in active]
        recycled = [s for s in used if s in free]
        calls = []
        for _ in range(self.rng.randint(1 if step == 1 else 0, 3)):
            if len(active) >= MAX_REQS or not free:
                break
            slot = recycled.pop(0) if recycled else free[0]
            free.remove(slot)
            kw = self.rng.choice(self.admitted)
            calls.append((slot, kw))
            active.append(slot)
            if slot not in used:
                used.append(slot)
        return calls


def random_logits(rows: int) -> Any:
    import torch

    return torch.randn(rows, VOCAB, dtype=torch.float32)


def shape_problem(out: Any, logits: Any) -> str | None:
    """What is wrong with what `apply` returned for `logits`, or None."""
    import torch

    if not isinstance(out, torch.Tensor):
        return f"returned {repr(out)[:100]} (a {type(out).__qualname__}), not a tensor"
    if tuple(out.shape) != tuple(logits.shape):
        return f"returned a tensor of shape {tuple(out.shape)}"
    if out.dtype != logits.dtype:
        return f"returned a tensor of dtype {out.dtype}"
    return None


def observe_construct(
    runner: SimulatedRunner, config_error: ExceptionInfo | None
) -> ConstructObservation:
    """Build the processor once, as the engine does."""
    construct = ConstructObservation(
        call=runner.call,
        init_params=runtime.params(runner.cls.__init__),
        config_error=config_error,
    )
    try:
        runner.new()
    except BaseException as exc:
        construct.error = runtime.capture(exc)
    return construct


def observe_shapes(runner: SimulatedRunner) -> list[ShapeProblem]:
    """`apply` with requests that do not use the processor, then with every admitted kind."""
    scenarios = [
        ("requests with default SamplingParams", [{}] * BATCH),
        (f"{len(runner.admitted)} requests, one per parameter set", runner.admitted),
    ]
    problems = []
    for name, kwargs_list in scenarios:
        logits = random_logits(len(kwargs_list))
        shape = list(logits.shape)
        try:
            proc, ctx = runner.load(kwargs_list)
            out = runner.apply(proc, ctx, logits)
        except BaseException as exc:
            problems.append(ShapeProblem(name, shape, error=runtime.capture(exc)))
            continue
        problem = shape_problem(out, logits)
        if problem:
            problems.append(ShapeProblem(name, shape, problem=problem))
    return problems


def observe_argmax(runner: SimulatedRunner) -> ArgmaxObservation:
    """V1: whether the processor claims argmax invariance and, if so, whether three random
    draws of logits keep each row's argmax."""
    obs = ArgmaxObservation()
    obs.claim_stage = "adding a request of every parameter set (update_state)"
    try:
        proc, ctx = runner.load(runner.admitted)
        obs.claim_stage = "is_argmax_invariant()"
        obs.claims = runtime.call_method(proc, "is_argmax_invariant")
    except BaseException as exc:
        obs.claim_error = runtime.capture(exc)
        return obs
    obs.claim_stage = None
    if obs.claims is not True:
        return obs
    for draw in range(1, 4):
        logits = random_logits(len(runner.admitted))
        before = logits.argmax(dim=-1).tolist()
        try:
            out = runner.apply(proc, ctx, logits.clone())
            after = out.argmax(dim=-1).tolist()
        except BaseException as exc:
            obs.apply_error = runtime.capture(exc)
            break
        for row, (a, b) in enumerate(zip(before, after, strict=False)):
            if a != b and len(obs.changed) < 4:
                params = label(runner.admitted[row])
                obs.changed.append(ArgmaxChange(draw, row, a, b, params))
    return obs


def observe_batch(runner: SimulatedRunner) -> BatchObservation:
    """The seeded random sequence of batch changes, `apply` after each."""
    obs = BatchObservation()
    try:
        proc = runner.new()
    except BaseException as exc:  # it constructed once already: a second time may differ
        obs.error, obs.during = runtime.capture(exc), f"constructing it ({runner.call})"
        return obs
    history: list[str] = []
    for step in runner.steps(proc):
        obs.steps += 1
        history.append(f"step {obs.steps}: {step.desc}")
        try:
            step.run()
        except BaseException as exc:
            obs.error, obs.during = runtime.capture(exc), "the update"
            break
        n, ctx = runner.step_rows(proc, step.rows)
        if n == 0:
            continue
        try:
            runner.apply(proc, ctx, random_logits(n))
        except BaseException as exc:
            obs.error, obs.during = runtime.capture(exc), f"apply() on {n} rows after it"
            break
    obs.history = history[-4:]
    return obs


def default_config() -> tuple[Any, ExceptionInfo | None]:
    """The config an engine hands the processor (a served tiny Llama's, two slots), or None and
    why it could not be built."""
    try:
        return engine_run.served_config(max_num_seqs=2, max_model_len=128), None
    except BaseException as exc:
        return None, runtime.capture(exc)


def drive(obs: LogitsObservation, cls: type, admitted: list[dict[str, Any]]) -> None:
    """Build the processor as the engine does and, if that works, drive it."""
    import torch

    torch.manual_seed(SEED)
    config, config_error = default_config()
    runner = (V1Runner if obs.interface == "v1" else V2Runner)(cls, config, admitted)
    obs.construct = observe_construct(runner, config_error)
    if obs.construct.error is not None:
        return
    obs.driven = True
    obs.shape = observe_shapes(runner)
    if obs.interface == "v1":
        obs.argmax = observe_argmax(runner)
    obs.batch = observe_batch(runner)


def observe_logits(group: str, name: str, v1: bool = True) -> LogitsObservation:
    """Load the processor class, judge its interface, call `validate_params` on many
    parameter sets and, where torch is installed, build it and drive it. `v1`: whether the
    engine's contract has the V1 interface (False from vLLM 0.34 on)."""
    obs = LogitsObservation(has_torch=importlib.util.find_spec("torch") is not None)
    entry_point = runtime.target_entry_point(group, name)
    cls, obs.load_error = runtime.attempt(entry_point.load)
    obs.is_class = isinstance(cls, type)
    obs.repr = repr(cls)[:200]
    bases = engine_bases(obs, v1)
    if not isinstance(cls, type):
        return obs
    judge_interface(obs, cls, bases, v1)
    obs.keys = arg_keys(cls)
    obs.validate, admitted = observe_validate(cls, obs.keys, parameter_sets(obs.keys))
    obs.admitted = [label(kw) for kw in admitted]
    if obs.has_torch:
        drive(obs, cls, admitted)
    return obs


# --------------------------------------------------------------------------------------------
# Engine run: the processor inside a real engine's batches.


@dataclass
class EngineRunObservation:
    #: Model-stack modules not installed here (no engine could run).
    missing: list[str] = field(default_factory=list)
    #: The engine's own reason it cannot run the processor's model runner here, if so.
    runner_unavailable: str | None = None
    #: The `extra_args` requests carried (values the processor's `validate_params` accepts).
    extra_args: list[dict[str, Any]] = field(default_factory=list)
    #: Whether the engine ran Model Runner V2 (None if it does not say).
    v2_runner: bool | None = None
    #: The requests, in words.
    requests: list[str] = field(default_factory=list)
    #: The step that raised ("LLM(model=tiny_llama, max_num_seqs=2)", "LLM.generate(...)").
    stage: str | None = None
    error: ExceptionInfo | None = None
    #: How many tokens each request got.
    tokens: list[int] = field(default_factory=list)


def runner_unavailable(interface: str) -> str | None:
    """Why the engine will not run `interface`'s model runner on this machine, by its own
    rule, or None. vLLM 0.32 refuses Model Runner V2 where it has no usable Triton (its CPU
    build, without a Triton CPU backend): `VllmConfig` raises "Model Runner V2 requires
    Triton." when `vllm.triton_utils.HAS_TRITON` is False. The reference runs it anywhere."""
    if interface != "v2":
        return None
    try:
        from vllm.triton_utils import HAS_TRITON
    except Exception:
        return None  # an engine without the module has no such rule
    if HAS_TRITON:
        return None
    return "Model Runner V2 requires Triton, and the engine found no usable Triton"


def accepted_extra_args(cls: Any, keys: list[str]) -> list[dict[str, Any]]:
    """For each key, the first plausible value the processor's own validator accepts (a
    rejection is no failure here)."""
    from vllm import SamplingParams

    validate = getattr(cls, "validate_params", None)
    chosen = []
    for key in keys:
        for value in USE_VALUES:
            try:
                params = SamplingParams(max_tokens=1, extra_args={key: value})
            except Exception:
                continue
            if callable(validate):
                _, error = runtime.attempt(validate, params)
                if error is not None:
                    continue
            chosen.append({key: value})
            break
    return chosen


def _generate(obs: EngineRunObservation, lengths: list[int], prompts: list[str]) -> None:
    from vllm import LLM, SamplingParams

    obs.stage = "generating the checkpoint"
    model = engine_run.tiny_checkpoint("llama")
    # vLLM's engine core never shares the frontend's process (where validate_params runs):
    # the reference's worker is spawned apart too, so that state the plugin left in the
    # frontend's process cannot reach the processors.
    apart = {"distributed_executor_backend": "mp"} if runtime.on_reference() else {}
    obs.stage = "LLM(model=tiny_llama, max_num_seqs=2)"
    llm = runtime.call_plugin(
        LLM, model=model, max_num_seqs=2, max_model_len=128, **apart, **engine_run.SMALL_ENGINE
    )
    obs.v2_runner = getattr(llm.llm_engine.vllm_config, "use_v2_model_runner", None)
    chosen = obs.extra_args
    params = []
    for i, n in enumerate(lengths):
        extra = chosen[(i // 2) % len(chosen)] if chosen and i % 2 == 0 else None
        params.append(
            SamplingParams(max_tokens=n, temperature=0, ignore_eos=True, extra_args=extra)
        )
    obs.requests = [
        f"SamplingParams(max_tokens={p.max_tokens}, extra_args={p.extra_args!r})" for p in params
    ]
    obs.stage = f"LLM.generate({len(prompts)} prompts)"
    outs = runtime.call_plugin(llm.generate, list(prompts), params)
    obs.tokens = [len(o.outputs[0].token_ids) for o in outs]
    obs.stage = None
    engine_run.shut(llm)


@runtime.warm
def observe_engine_run(
    group: str,
    name: str,
    interface: str,
    keys: list[str],
    lengths: list[int],
    prompts: list[str],
    choose_runner: bool = True,
) -> EngineRunObservation:
    """With the plugin installed and `interface`'s model runner in force (the caller sets
    `VLLM_USE_V2_MODEL_RUNNER`), generate for requests of the given lengths on a tiny Llama
    with two slots, every other one carrying `extra_args` the processor seems to read.
    `choose_runner`: whether the engine has a runner to choose (before 0.34); if not, its rule
    for refusing one is no reason to stop, since it has no other: starting it tells."""
    obs = EngineRunObservation(missing=engine_run.missing_engine_deps())
    if obs.missing:
        return obs
    if choose_runner:
        obs.runner_unavailable = runner_unavailable(interface)
    if obs.runner_unavailable is not None:
        return obs
    cls = runtime.load_entry_point(group, name)
    obs.extra_args = accepted_extra_args(cls, keys)
    try:
        _generate(obs, lengths, prompts)
    except BaseException as exc:
        obs.error = runtime.capture(exc)
    return obs
