"""The V1 logits-processor interface (`vllm.v1.sample.logits_processor`) and its built-ins.

Importable without torch: tensors are made inside methods only. The loading functions that
vLLM exports from the same module are defined here too.
"""

from __future__ import annotations

import enum
import functools
import inspect
import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from reference.logger import init_logger
from reference.logits.sources import (
    CustomLogitsProcs,
    import_fqcn,
    load_entry_point_classes,
    run_validate_params,
)
from reference.plugins import LOGITSPROCS_GROUP
from reference.sampling_params import SamplingParams

if TYPE_CHECKING:
    import torch

    from reference.config import VllmConfig

logger = init_logger("vllm.v1.sample.logits_processor")

T = TypeVar("T")

#: Raised (as a ValueError) when a pooling model is given custom logits processors.
STR_POOLING_REJECTS_LOGITSPROCS = "Pooling models do not support custom logits processors."
#: Raised (as a ValueError) when custom logits processors meet speculative decoding (V1 runner).
STR_SPEC_DEC_REJECTS_LOGITSPROCS = (
    "Custom logits processors are not supported when speculative decoding is enabled."
)


class MoveDirectionality(enum.Enum):
    """How a moved request travels: one way (a -> b, a left empty) or a swap (a <-> b)."""

    UNIDIRECTIONAL = enum.auto()
    SWAP = enum.auto()


#: The batch index of a request that left the batch.
RemovedRequest = int
#: `(index, params, prompt_tok_ids, output_tok_ids)`; `output_tok_ids` is the live list that
#: grows as the request decodes.
AddedRequest = tuple[int, SamplingParams, list[int] | None, list[int]]
#: `(from_index, to_index, directionality)`.
MovedRequest = tuple[int, int, MoveDirectionality]


@dataclass(frozen=True)
class BatchUpdate:
    """The changes to the persistent batch since the last `update_state` call.

    Consumers apply them in the order removed, added, moved. The positional order of the
    fields has changed across vLLM releases, so build it with keywords.
    """

    batch_size: int
    removed: Sequence[RemovedRequest]
    added: Sequence[AddedRequest]
    moved: Sequence[MovedRequest]


class BatchUpdateBuilder:
    """Collects one step's batch changes and hands them out as a `BatchUpdate`.

    Record the step as consumers replay it: removals, then additions, then moves. An index
    is never reported both removed and added (an addition cancels the removal of its slot),
    so processors that apply additions before removals, as vLLM's built-ins do, agree.
    """

    _REMOVE, _ADD, _MOVE = range(3)
    _PHASE_NAMES = ("a removal", "an addition", "a move")

    def __init__(self) -> None:
        self._removed: list[int] = []
        self.added: list[AddedRequest] = []
        self.moved: list[MovedRequest] = []
        self._phase = self._REMOVE

    def _enter(self, phase: int) -> None:
        if phase < self._phase:
            raise RuntimeError(
                f"BatchUpdateBuilder: {self._PHASE_NAMES[phase]} was recorded after "
                f"{self._PHASE_NAMES[self._phase]} in the same step; processors replay a "
                "step as removals, then additions, then moves, so record it in that order "
                "(or call get_and_reset() to start the next step)."
            )
        self._phase = phase

    @property
    def removed(self) -> list[int]:
        """Indices removed this step and not yet reused, lowest first."""
        return sorted(self._removed)

    def removed_append(self, index: int) -> None:
        """Record that the request at `index` left the batch."""
        self._enter(self._REMOVE)
        if index in self._removed:
            raise ValueError(f"Batch index {index} was already removed in this step.")
        self._removed.append(index)

    def has_removed(self) -> bool:
        return bool(self._removed)

    def peek_removed(self) -> int | None:
        """The lowest freed index, without taking it."""
        return min(self._removed) if self._removed else None

    def pop_removed(self) -> int | None:
        """Take the lowest freed index, for a new request to reuse (None if none is free)."""
        if not self._removed:
            return None
        index = min(self._removed)
        self._removed.remove(index)
        return index

    def add(
        self,
        index: int,
        params: SamplingParams,
        prompt_tok_ids: list[int] | None,
        output_tok_ids: list[int],
    ) -> None:
        """Record a request entering the batch at `index` (possibly replacing its occupant)."""
        self._enter(self._ADD)
        if index in self._removed:
            self._removed.remove(index)
        self.added.append((index, params, prompt_tok_ids, output_tok_ids))

    def move(
        self,
        from_index: int,
        to_index: int,
        directionality: MoveDirectionality = MoveDirectionality.UNIDIRECTIONAL,
    ) -> None:
        """Record a move; a unidirectional move leaves `from_index` empty."""
        self._enter(self._MOVE)
        if from_index == to_index:
            raise ValueError(f"A move needs two different indices, got {from_index} twice.")
        self.moved.append((from_index, to_index, directionality))

    def swap(self, a: int, b: int) -> None:
        """Record that the requests at `a` and `b` exchanged places."""
        self.move(a, b, MoveDirectionality.SWAP)

    @property
    def batch_changed(self) -> bool:
        return bool(self._removed or self.added or self.moved)

    def reset(self) -> bool:
        """Forget the recorded step; returns whether anything had been recorded."""
        changed = self.batch_changed
        self._removed, self.added, self.moved = [], [], []
        self._phase = self._REMOVE
        return changed

    def get_and_reset(self, batch_size: int) -> BatchUpdate | None:
        """The step's `BatchUpdate` (None if the batch did not change), then start afresh."""
        if not self.batch_changed:
            self._phase = self._REMOVE
            return None
        update = BatchUpdate(
            batch_size=batch_size,
            removed=self.removed,
            added=list(self.added),
            moved=list(self.moved),
        )
        self.reset()
        return update


def process_dict_updates(
    req_entries: dict[int, T],
    batch_update: BatchUpdate | None,
    new_state: Callable[[SamplingParams, list[int] | None, list[int]], T | None],
) -> bool:
    """Replay `batch_update` on per-index state `req_entries`; returns whether it changed.

    `new_state(params, prompt_tok_ids, output_tok_ids)` gives an added request's state, or
    None when the processor does not apply to it (any previous occupant's state is dropped).
    """
    if not batch_update:
        return False
    changed = False
    for index in batch_update.removed:
        changed |= req_entries.pop(index, None) is not None
    for index, params, prompt_tok_ids, output_tok_ids in batch_update.added:
        state = new_state(params, prompt_tok_ids, output_tok_ids)
        if state is not None:
            req_entries[index] = state
            changed = True
        else:
            changed |= req_entries.pop(index, None) is not None
    for a, b, directionality in batch_update.moved:
        a_state = req_entries.pop(a, None)
        b_state = req_entries.pop(b, None)
        if a_state is not None:
            req_entries[b] = a_state
        if b_state is not None and directionality is MoveDirectionality.SWAP:
            req_entries[a] = b_state
        changed |= a_state is not None or b_state is not None
    return changed


class LogitsProcessor(ABC):
    """A batch-level logits processor for the V1 model runner.

    It keeps per-request state keyed by batch index, updated from each step's `BatchUpdate`,
    and `apply` edits the `[batch_size, vocab_size]` logits (in place is preferred).
    """

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Raise ValueError to reject a request's parameters at admission (HTTP 400)."""
        return None

    @abstractmethod
    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        raise NotImplementedError

    @abstractmethod
    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @abstractmethod
    def is_argmax_invariant(self) -> bool:
        """True if the processor never changes which token greedy sampling picks."""
        raise NotImplementedError

    @abstractmethod
    def update_state(self, batch_update: BatchUpdate | None) -> None:
        """Apply the batch changes (None: the batch did not change this step)."""
        raise NotImplementedError


class _IndexedTensors:
    """Helpers for built-ins that keep per-index state on the host and build tensors lazily."""

    device: Any

    def _tensor(self, data: list, dtype: Any, like: torch.Tensor) -> torch.Tensor:
        import torch

        # The logits' own device wins: it is where the indices and values must live.
        return torch.tensor(data, dtype=dtype, device=like.device)


class MinTokensLogitsProcessor(_IndexedTensors, LogitsProcessor):
    """Bans a request's stop tokens until it has produced `min_tokens` tokens."""

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        self.device = device
        self.pin_memory = is_pin_memory
        #: index -> (min_tokens, live output token ids, stop token ids)
        self.min_toks: dict[int, tuple[int, Sequence[int], set[int]]] = {}

    def is_argmax_invariant(self) -> bool:
        return False

    @staticmethod
    def add_request(
        params: SamplingParams, _prompt_tok_ids: list[int] | None, output_tok_ids: list[int]
    ) -> tuple[int, Sequence[int], set[int]] | None:
        min_tokens = params.min_tokens
        if not min_tokens or len(output_tok_ids) >= min_tokens:
            return None
        stop_ids = getattr(params, "all_stop_token_ids", None)
        if stop_ids is None:
            stop_ids = set(params.stop_token_ids or ())
        return min_tokens, output_tok_ids, set(stop_ids)

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.min_toks, batch_update, self.add_request)
        # Output lists grow between steps, so a request can reach its minimum on a step
        # whose update is None; the check therefore runs on every call.
        for index in [i for i, (n, out, _) in self.min_toks.items() if len(out) >= n]:
            del self.min_toks[index]

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.min_toks:
            return logits
        import torch

        rows: list[int] = []
        cols: list[int] = []
        for index, (_, _, stop_ids) in self.min_toks.items():
            rows.extend([index] * len(stop_ids))
            cols.extend(stop_ids)
        if rows:
            logits[
                self._tensor(rows, torch.long, logits), self._tensor(cols, torch.long, logits)
            ] = float("-inf")
        return logits


class LogitBiasLogitsProcessor(_IndexedTensors, LogitsProcessor):
    """Adds each request's `logit_bias` to the named tokens' logits."""

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        self.device = device
        self.pin_memory = is_pin_memory
        #: index -> {token id: bias}
        self.biases: dict[int, dict[int, float]] = {}

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(
            self.biases, batch_update, lambda params, _p, _o: dict(params.logit_bias or {}) or None
        )

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.biases:
            return logits
        import torch

        rows: list[int] = []
        cols: list[int] = []
        values: list[float] = []
        for index, bias in self.biases.items():
            rows.extend([index] * len(bias))
            cols.extend(int(token) for token in bias)
            values.extend(float(v) for v in bias.values())
        # Within one row the token ids are distinct, so `+=` through an index is exact.
        at = (self._tensor(rows, torch.long, logits), self._tensor(cols, torch.long, logits))
        logits[at] += self._tensor(values, logits.dtype, logits)
        return logits


class MinPLogitsProcessor(_IndexedTensors, LogitsProcessor):
    """Masks tokens whose probability is below `min_p` times the row's top probability."""

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        self.device = device
        self.pin_memory = is_pin_memory
        #: index -> min_p, for the requests that use min-p
        self._min_p: dict[int, float] = {}

    def is_argmax_invariant(self) -> bool:
        # The top token always survives its own threshold.
        return True

    @property
    def min_p_count(self) -> int:
        """How many requests in the batch use min-p."""
        return len(self._min_p)

    def get_min_p_by_index(self, index: int) -> float:
        return self._min_p.get(index, 0.0)

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(
            self._min_p, batch_update, lambda params, _p, _o: float(params.min_p) or None
        )

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self._min_p:
            return logits
        import torch

        min_p = torch.zeros((logits.shape[0], 1), dtype=logits.dtype, device=logits.device)
        indices = list(self._min_p)
        min_p[self._tensor(indices, torch.long, logits), 0] = self._tensor(
            [self._min_p[i] for i in indices], logits.dtype, logits
        )
        probs = torch.softmax(logits, dim=-1)
        threshold = probs.amax(dim=-1, keepdim=True) * min_p
        logits.masked_fill_(probs < threshold, float("-inf"))
        return logits


#: Always instantiated first, in this order, before any custom processor.
BUILTIN_LOGITS_PROCESSORS: list[type[LogitsProcessor]] = [
    MinTokensLogitsProcessor,
    LogitBiasLogitsProcessor,
    MinPLogitsProcessor,
]


class LogitsProcessors:
    """The processors of one model runner, split by whether they are argmax-invariant."""

    def __init__(self, logitsprocs: Iterable[LogitsProcessor] | None = None) -> None:
        self.argmax_invariant: list[LogitsProcessor] = []
        self.non_argmax_invariant: list[LogitsProcessor] = []
        for proc in logitsprocs or ():
            group = (
                self.argmax_invariant if proc.is_argmax_invariant() else self.non_argmax_invariant
            )
            group.append(proc)

    @property
    def all(self) -> Iterator[LogitsProcessor]:
        """Every processor: the argmax-invariant ones first (an iterator, as in vLLM)."""
        return itertools.chain(self.argmax_invariant, self.non_argmax_invariant)

    def get_logitsprocs_by_cls(self, cls: type[T]) -> list[T]:
        return [proc for proc in self.all if isinstance(proc, cls)]

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        """Give every processor this step's update (vLLM's runner does this every step)."""
        for proc in self.all:
            proc.update_state(batch_update)


#: A per-request callable: `(output_ids, logits_row)` or `(prompt_ids, output_ids, logits_row)`.
RequestLogitsProcessor = (
    Callable[[list[int], "torch.Tensor"], "torch.Tensor"]
    | Callable[[list[int], list[int], "torch.Tensor"], "torch.Tensor"]
)


class AdapterLogitsProcessor(LogitsProcessor):
    """Turns per-request callables into a batch-level processor.

    Subclasses implement `is_argmax_invariant()` and `new_req_logits_processor(params)`;
    an overriding `__init__` must call `super().__init__(vllm_config, device, is_pin_memory)`.
    """

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        #: index -> the request's callable with its token-id arguments bound. The output ids
        #: are bound by reference, so the callable always sees the list as it is now.
        self.req_info: dict[int, partial[torch.Tensor]] = {}

    @abstractmethod
    def new_req_logits_processor(self, params: SamplingParams) -> RequestLogitsProcessor | None:
        """The callable for a request, or None if the processor does not apply to it."""
        raise NotImplementedError

    def _new_state(
        self, params: SamplingParams, prompt_ids: list[int] | None, output_ids: list[int]
    ) -> partial[torch.Tensor] | None:
        req_lp = self.new_req_logits_processor(params)
        if not req_lp:
            return None
        if len(inspect.signature(req_lp).parameters) == 3:
            if prompt_ids is None:
                raise ValueError(
                    "Prompt token ids are required for this logits processor but were not provided."
                )
            return partial(req_lp, prompt_ids, output_ids)
        return partial(req_lp, output_ids)

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.req_info, batch_update, self._new_state)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for index, req_lp in self.req_info.items():
            row = logits[index]
            new_row = req_lp(row)
            if new_row is not row:
                logits[index] = new_row
        return logits


# --------------------------------------------------------------------------------------------
# Loading: vLLM exports these from the same module as the interface.


def _load_logitsprocs_plugins() -> list[type[LogitsProcessor]]:
    """Every installed entry-point class, unchecked: V1 does not verify the base class."""
    return [cls for _, cls in load_entry_point_classes(logger)]


def _load_logitsprocs_by_fqcns(
    logits_processors: CustomLogitsProcs | None,
) -> list[type[LogitsProcessor]]:
    """Turn a mixed list of V1 classes and `module:Qualname` strings into classes."""
    if not logits_processors:
        return []
    logger.debug(
        "%s additional custom logits processors specified, checking whether they need to be "
        "loaded.",
        len(logits_processors),
    )
    classes: list[type[LogitsProcessor]] = []
    for ldx, item in enumerate(logits_processors):
        if isinstance(item, type):
            logger.debug(" - Already-loaded logit processor: %s", item.__name__)
            if not issubclass(item, LogitsProcessor):
                raise ValueError(f"{item.__name__} is not a subclass of LogitsProcessor")
            classes.append(item)
            continue
        obj = import_fqcn(ldx, item, logger)
        if not issubclass(obj, LogitsProcessor):
            raise ValueError(f"{obj.__name__} must be a subclass of LogitsProcessor")
        classes.append(obj)
    return classes


def _load_custom_logitsprocs(
    logits_processors: CustomLogitsProcs | None,
) -> list[type[LogitsProcessor]]:
    """Installed plugins first, then the caller's list (nothing at all on TPU)."""
    from reference.platforms import current_platform

    if current_platform.is_tpu():
        return []
    return _load_logitsprocs_plugins() + _load_logitsprocs_by_fqcns(logits_processors)


#: The frontend's loader: called with a tuple (or None) so the result can be cached.
cached_load_custom_logitsprocs = functools.lru_cache(_load_custom_logitsprocs)


def build_logitsprocs(
    vllm_config: Any,
    device: torch.device | str,
    is_pin_memory: bool,
    is_pooling_model: bool,
    custom_logitsprocs: CustomLogitsProcs = (),
) -> LogitsProcessors:
    """The V1 runner's processors: the built-ins, then plugins, then `custom_logitsprocs`.

    Pooling models get none, and with speculative decoding only min-tokens runs; in both
    cases installed plugins are not even imported, and a custom list is an error.
    """
    if is_pooling_model:
        if custom_logitsprocs:
            raise ValueError(STR_POOLING_REJECTS_LOGITSPROCS)
        logger.debug(
            "Skipping logits processor loading because pooling models do not support logits "
            "processors."
        )
        return LogitsProcessors()
    if getattr(vllm_config, "speculative_config", None):
        if custom_logitsprocs:
            raise ValueError(STR_SPEC_DEC_REJECTS_LOGITSPROCS)
        logger.warning("min_p and logit_bias parameters won't work with speculative decoding.")
        return LogitsProcessors([MinTokensLogitsProcessor(vllm_config, device, is_pin_memory)])
    classes = _load_custom_logitsprocs(custom_logitsprocs)
    return LogitsProcessors(
        ctor(vllm_config, device, is_pin_memory)
        for ctor in itertools.chain(BUILTIN_LOGITS_PROCESSORS, classes)
    )


def validate_logits_processors_parameters(
    logits_processors: CustomLogitsProcs | None, sampling_params: SamplingParams
) -> None:
    """Run every custom processor's `validate_params` on a request (frontend, V1 runner)."""
    key = tuple(logits_processors) if logits_processors is not None else None
    for cls in cached_load_custom_logitsprocs(key):
        run_validate_params(cls, sampling_params)


__all__ = [
    "BUILTIN_LOGITS_PROCESSORS",
    "LOGITSPROCS_GROUP",
    "STR_POOLING_REJECTS_LOGITSPROCS",
    "STR_SPEC_DEC_REJECTS_LOGITSPROCS",
    "AdapterLogitsProcessor",
    "AddedRequest",
    "BatchUpdate",
    "BatchUpdateBuilder",
    "LogitBiasLogitsProcessor",
    "LogitsProcessor",
    "LogitsProcessors",
    "MinPLogitsProcessor",
    "MinTokensLogitsProcessor",
    "MoveDirectionality",
    "MovedRequest",
    "RemovedRequest",
    "RequestLogitsProcessor",
    "build_logitsprocs",
    "process_dict_updates",
    "validate_logits_processors_parameters",
]
