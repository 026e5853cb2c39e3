"""The Model Runner V2 logits-processor interface (`vllm.v1.worker.gpu.sample.logits_processor`).

State is per request *slot*; `apply` sees the whole batch and maps rows to slots through
`LogitsContext`. Importable without torch: tensors are made inside methods only. The loading
functions of vLLM's `loader` submodule are defined here too.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reference.logger import init_logger
from reference.logits.sources import (
    CustomLogitsProcs,
    import_fqcn,
    load_entry_point_classes,
    run_validate_params,
)
from reference.logits.v1 import STR_POOLING_REJECTS_LOGITSPROCS
from reference.plugins import LOGITSPROCS_GROUP
from reference.sampling_params import SamplingParams

if TYPE_CHECKING:
    import numpy as np
    import torch

    from reference.config import VllmConfig

logger = init_logger("vllm.v1.worker.gpu.sample.logits_processor.loader")

_V2_BASE = "vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor"


class SlotBuffer:
    """A per-slot buffer that a processor reads as `.gpu` (on the device), `.cpu` or `.np`.

    vLLM wraps these buffers in its own UVA/staged-write types; the reference keeps the
    three views that processors read. On a CPU device `.gpu` and `.cpu` are one tensor.
    """

    def __init__(self, cpu: torch.Tensor, device: torch.device | str = "cpu") -> None:
        self.cpu = cpu
        self.gpu = cpu if cpu.device == _as_device(device) else cpu.to(device)

    @property
    def np(self) -> np.ndarray:
        return self.cpu.numpy()

    def copy_to_device(self) -> None:
        """Publish host-side writes to `.gpu` (nothing to do on a CPU device)."""
        if self.gpu is not self.cpu:
            self.gpu.copy_(self.cpu, non_blocking=True)


def _as_device(device: Any) -> torch.device:
    import torch

    return torch.device(device)


@dataclass(frozen=True)
class LogitsProcRequestState:
    """The model runner's per-slot request state, shared read-only with processors.

    The buffers are updated in place as requests progress, so reads see current values.
    """

    device: torch.device
    max_num_reqs: int
    vocab_size: int
    #: [max_num_reqs, max_model_len] committed token ids per slot (valid up to `total_len`).
    all_token_ids: SlotBuffer
    #: [max_num_reqs] tokens in the user's prompt.
    prompt_len: SlotBuffer
    #: [max_num_reqs] tokens fed at the latest (re)fill: the prompt plus any output kept
    #: across a preemption.
    prefill_len: SlotBuffer
    #: [max_num_reqs] prompt plus output tokens so far.
    total_len: SlotBuffer

    @classmethod
    def create(
        cls,
        *,
        max_num_reqs: int,
        vocab_size: int,
        max_model_len: int,
        device: torch.device | str = "cpu",
    ) -> LogitsProcRequestState:
        """Empty buffers for `max_num_reqs` slots (what a model runner starts from)."""
        import torch

        def zeros(*shape: int) -> SlotBuffer:
            return SlotBuffer(torch.zeros(shape, dtype=torch.int32), device)

        return cls(
            device=_as_device(device),
            max_num_reqs=max_num_reqs,
            vocab_size=vocab_size,
            all_token_ids=zeros(max_num_reqs, max_model_len),
            prompt_len=zeros(max_num_reqs),
            prefill_len=zeros(max_num_reqs),
            total_len=zeros(max_num_reqs),
        )

    @classmethod
    def from_request_state(cls, req_states: Any) -> LogitsProcRequestState:
        """The processor-facing view of a model runner's request state."""
        return cls(
            device=req_states.device,
            max_num_reqs=req_states.max_num_reqs,
            vocab_size=req_states.vocab_size,
            all_token_ids=req_states.all_token_ids,
            prompt_len=req_states.prompt_len,
            prefill_len=req_states.prefill_len,
            total_len=req_states.total_len,
        )


@dataclass(frozen=True)
class LogitsContext:
    """One step's batch layout, passed to every `apply` call.

    A row is a logits row, not a request: rows are reordered every step, and with
    speculative decoding a request owns one row per draft token.
    """

    #: [num_logits_rows] row -> request slot.
    expanded_idx_mapping: torch.Tensor
    #: [num_reqs] batch position -> request slot.
    idx_mapping: torch.Tensor
    #: [num_reqs] the same mapping on the host, to skip work without a device sync.
    idx_mapping_np: np.ndarray
    #: [num_logits_rows] row -> its offset among its own request's rows.
    expanded_local_pos: torch.Tensor
    #: [num_logits_rows] the token fed to the model at each row's position.
    input_ids: torch.Tensor
    #: [num_logits_rows] each row's position in its sequence.
    pos: torch.Tensor
    #: [num_reqs] an upper bound on the tokens visible to the token being sampled.
    seq_lens_upper_bound_np: np.ndarray

    @classmethod
    def for_slots(
        cls,
        slots: Sequence[int],
        *,
        input_ids: Sequence[int] | None = None,
        pos: Sequence[int] | None = None,
        device: torch.device | str = "cpu",
    ) -> LogitsContext:
        """The layout of a step without speculative decoding: row i samples for `slots[i]`."""
        import numpy as np
        import torch

        n = len(slots)
        mapping = torch.tensor(list(slots), dtype=torch.int32, device=device)
        positions = torch.tensor(list(pos) if pos is not None else [0] * n, dtype=torch.int64)
        tokens = list(input_ids) if input_ids is not None else [0] * n
        return cls(
            expanded_idx_mapping=mapping,
            idx_mapping=mapping.clone(),
            idx_mapping_np=np.asarray(slots, dtype=np.int32),
            expanded_local_pos=torch.zeros(n, dtype=torch.int32, device=device),
            input_ids=torch.tensor(tokens, dtype=torch.int32, device=device),
            pos=positions.to(device),
            seq_lens_upper_bound_np=positions.numpy().astype(np.int32) + 1,
        )


class LogitsProcessor(ABC):
    """A custom logits processor for Model Runner V2.

    Per-request state is keyed by slot; slots are recycled, so `add_request` must fully
    (re)initialise a slot. `apply` runs once for the whole batch, after bias, penalties,
    bad-words and grammar and before temperature, min_p and top-k/top-p, and must filter
    rows through `ctx.expanded_idx_mapping`.
    """

    def __init__(self, vllm_config: VllmConfig, req_states: LogitsProcRequestState) -> None:  # noqa: B027
        """Capture what stays constant for the processor's lifetime (`req_states` is read-only)."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Raise ValueError to reject a request's parameters at admission (HTTP 400)."""
        return None

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        """Initialise slot `req_idx` for a new request; returns whether it edits its logits."""
        return True

    def apply_staged_writes(self) -> None:  # noqa: B027
        """Flush host-side writes staged by `add_request` to the device (once per step)."""

    @abstractmethod
    def apply(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
        """Edit `[num_logits_rows, vocab_size]` logits (in place is preferred)."""
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# Loading: vLLM keeps these in a `loader` submodule (`reference.logits.loader`).


def _load_v2_logitsprocs_plugins() -> list[type[LogitsProcessor]]:
    """Every installed entry-point class; a V1-interface class is rejected at load time."""
    classes = []
    for name, cls in load_entry_point_classes(logger):
        if not (isinstance(cls, type) and issubclass(cls, LogitsProcessor)):
            raise ValueError(
                f"LogitsProcessor plugin {name} is not a subclass of {_V2_BASE}; V1-interface "
                "plugins are not supported by the V2 model runner."
            )
        classes.append(cls)
    return classes


def _load_v2_logitsprocs_by_fqcns(
    logits_processors: CustomLogitsProcs,
) -> list[type[LogitsProcessor]]:
    """Turn a mixed list of V2 classes and `module:Qualname` strings into classes."""
    classes: list[type[LogitsProcessor]] = []
    for ldx, item in enumerate(logits_processors):
        if isinstance(item, type):
            logger.debug(" - Already-loaded logit processor: %s", item.__name__)
            obj = item
        else:
            obj = import_fqcn(ldx, item, logger)
        if not issubclass(obj, LogitsProcessor):
            raise ValueError(f"{obj.__name__} is not a subclass of {_V2_BASE}")
        classes.append(obj)
    return classes


def _load_v2_logitsprocs(
    logits_processors: CustomLogitsProcs | None,
) -> list[type[LogitsProcessor]]:
    """Installed plugins first, then the caller's list."""
    return _load_v2_logitsprocs_plugins() + _load_v2_logitsprocs_by_fqcns(logits_processors or ())


@functools.lru_cache
def _cached_load_v2_logitsprocs(
    custom_logitsprocs: tuple[str | type, ...],
) -> list[type[LogitsProcessor]]:
    return _load_v2_logitsprocs(list(custom_logitsprocs))


def build_custom_logits_processors(
    vllm_config: Any,
    req_states: Any,
    is_pooling_model: bool,
    custom_logitsprocs: CustomLogitsProcs = (),
) -> list[LogitsProcessor]:
    """The V2 runner's custom processors, entry-point plugins first.

    Built-ins are not processors under MRV2, and speculative decoding is not rejected.
    `req_states` is a `LogitsProcRequestState` or a runner state it can be made from.
    """
    if is_pooling_model:
        if custom_logitsprocs:
            raise ValueError(STR_POOLING_REJECTS_LOGITSPROCS)
        logger.debug(
            "Skipping logits processor loading because pooling models do not support logits "
            "processors."
        )
        return []
    classes = _load_v2_logitsprocs(custom_logitsprocs)
    if not isinstance(req_states, LogitsProcRequestState):
        req_states = LogitsProcRequestState.from_request_state(req_states)
    return [ctor(vllm_config, req_states) for ctor in classes]


def build_custom_logits_processors_params_validator(
    custom_logitsprocs: CustomLogitsProcs | None,
) -> Callable[[SamplingParams], None]:
    """Load the classes once (at startup) and return the per-request validator.

    As in vLLM, with no custom list nothing is validated at admission, not even the
    entry-point plugins' `validate_params`.
    """
    if not custom_logitsprocs:
        return lambda _sampling_params: None
    classes = _cached_load_v2_logitsprocs(tuple(custom_logitsprocs))

    def validate_params(sampling_params: SamplingParams) -> None:
        for cls in classes:
            run_validate_params(cls, sampling_params)

    return validate_params


__all__ = [
    "LOGITSPROCS_GROUP",
    "LogitsContext",
    "LogitsProcRequestState",
    "LogitsProcessor",
    "SlotBuffer",
]
