"""Poolers (`vllm.model_executor.layers.pooler`): how a pooling model turns hidden states into
its outputs.

A pooling model (`is_pooling_model = True`) holds a `pooler`; after `forward`, the engine calls
`pooler(hidden_states, pooling_metadata)`. `hidden_states` holds the tokens of every sequence
in the call back to back (`[num_tokens, hidden]`); `pooling_metadata` says how long each
sequence is and which task it asks for. The result is one tensor per sequence.

Tasks: "embed" (one vector per sequence: its LAST, MEAN or CLS token, L2-normalised) and
"token_embed" (every token's vector, each normalised). `DispatchPooler` routes each sequence to
the pooler for its task; `DispatchPooler.for_embedding(pooler_config)` serves both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

SEQ_POOLING_TYPES = ("LAST", "MEAN", "CLS")
#: The task a request gets when it names none: the first one its model's pooler supports
#: (vLLM's order of preference).
TASK_PREFERENCE = ("embed", "classify", "token_embed", "token_classify", "plugin")


@dataclass
class PoolingMetadata:
    """The sequences of one pooler call: their lengths (in `hidden_states` order) and tasks."""

    prompt_lens: Sequence[int]
    tasks: Sequence[str]

    def __post_init__(self) -> None:
        if len(self.prompt_lens) != len(self.tasks):
            raise ValueError(
                f"PoolingMetadata has {len(self.prompt_lens)} prompt lengths but "
                f"{len(self.tasks)} tasks; give one task per sequence."
            )

    def __getitem__(self, index: slice) -> PoolingMetadata:
        return PoolingMetadata(list(self.prompt_lens[index]), list(self.tasks[index]))

    def split(self, hidden_states: torch.Tensor) -> list[torch.Tensor]:
        """`[num_tokens, hidden]` → one `[prompt_len, hidden]` tensor per sequence."""
        total = sum(self.prompt_lens)
        if hidden_states.shape[0] != total:
            raise ValueError(
                f"The model returned hidden states for {hidden_states.shape[0]} tokens, but the "
                f"pooled sequences have {total}; `forward` must return one row per input token."
            )
        return list(torch.split(hidden_states, list(self.prompt_lens)))


def default_pooling_task(supported: Set[str]) -> str:
    """The task for a request that names none, given what the model's pooler supports."""
    for task in TASK_PREFERENCE:
        if task in supported:
            return task
    raise ValueError(
        f"The model's pooler supports no pooling task the engine knows ({sorted(supported)}); "
        f"its `get_supported_tasks()` should return some of {list(TASK_PREFERENCE)}."
    )


def _use_activation(pooler_config: Any) -> bool:
    """vLLM's `use_activation` (older configs: `normalize`); unset means normalise."""
    for name in ("use_activation", "normalize"):
        if getattr(pooler_config, name, None) is False:
            return False
    return True


def _seq_pooling_type(pooler_config: Any) -> str:
    for name in ("seq_pooling_type", "pooling_type"):
        value = getattr(pooler_config, name, None)
        if value in SEQ_POOLING_TYPES:
            return value
    return "LAST"


class Pooler(nn.Module, ABC):
    """What every pooler offers: the tasks it serves, and `forward` (see the module doc)."""

    @abstractmethod
    def get_supported_tasks(self) -> Set[str]:
        """The pooling tasks this pooler can serve."""

    @abstractmethod
    def forward(
        self, hidden_states: torch.Tensor, pooling_metadata: PoolingMetadata
    ) -> list[torch.Tensor]:
        """One output tensor per sequence of `pooling_metadata`."""


class SequencePooler(Pooler):
    """Task "embed": one vector per sequence, from its LAST, MEAN or CLS (first) token."""

    def __init__(self, pooling_type: str = "LAST", normalize: bool = True) -> None:
        super().__init__()
        if pooling_type not in SEQ_POOLING_TYPES:
            raise ValueError(
                f"Unknown sequence pooling type {pooling_type!r}; use one of {SEQ_POOLING_TYPES}."
            )
        self.pooling_type = pooling_type
        self.normalize = normalize

    def get_supported_tasks(self) -> Set[str]:
        return {"embed"}

    def forward(
        self, hidden_states: torch.Tensor, pooling_metadata: PoolingMetadata
    ) -> list[torch.Tensor]:
        return [self.pool_padded(seq) for seq in pooling_metadata.split(hidden_states)]

    def pool_padded(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`[T, H]` → `[H]`, or a padded batch `[B, T, H]` (mask `[B, T]`, 1 = real token) →
        `[B, H]`; left- and right-padded rows alike."""
        flat = hidden_states.dim() == 2
        hidden = hidden_states[None] if flat else hidden_states
        if attention_mask is None:
            mask = torch.ones(hidden.shape[:2], device=hidden.device)
        else:
            mask = attention_mask.to(hidden.device, torch.float32)
        if self.pooling_type == "MEAN":
            summed = (hidden * mask[..., None].to(hidden.dtype)).sum(dim=1)
            pooled = summed / mask.sum(dim=1, keepdim=True).clamp(min=1).to(hidden.dtype)
        else:
            # The last (or first) real token: the largest (or smallest) masked-in step.
            steps = torch.arange(hidden.shape[1], device=hidden.device, dtype=torch.float32)
            index = (mask * steps).argmax(dim=1) if self.pooling_type == "LAST" else mask.argmax(1)
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
        if self.normalize:
            pooled = F.normalize(pooled, p=2, dim=-1)
        return pooled[0] if flat else pooled

    def extra_repr(self) -> str:
        return f"pooling_type={self.pooling_type}, normalize={self.normalize}"


class TokenPooler(Pooler):
    """Task "token_embed": every token's vector (`[T, H]` per sequence), each normalised."""

    def __init__(self, normalize: bool = True) -> None:
        super().__init__()
        self.normalize = normalize

    def get_supported_tasks(self) -> Set[str]:
        return {"token_embed"}

    def forward(
        self, hidden_states: torch.Tensor, pooling_metadata: PoolingMetadata
    ) -> list[torch.Tensor]:
        sequences = pooling_metadata.split(hidden_states)
        if self.normalize:
            sequences = [F.normalize(seq, p=2, dim=-1) for seq in sequences]
        return sequences


def pooler_for_embed(pooler_config: Any) -> SequencePooler:
    """The "embed" pooler `pooler_config` describes (None: LAST token, normalised)."""
    return SequencePooler(_seq_pooling_type(pooler_config), _use_activation(pooler_config))


def pooler_for_token_embed(pooler_config: Any) -> TokenPooler:
    """The "token_embed" pooler `pooler_config` describes (None: normalised)."""
    return TokenPooler(_use_activation(pooler_config))


class DispatchPooler(Pooler):
    """Routes each sequence to the pooler registered for its task."""

    def __init__(self, poolers_by_task: Mapping[str, Pooler]) -> None:
        super().__init__()
        for task, pooler in poolers_by_task.items():
            if task not in pooler.get_supported_tasks():
                raise ValueError(
                    f"{type(pooler).__name__} is registered for task {task!r} but supports only "
                    f"{sorted(pooler.get_supported_tasks())}; register it under one of those."
                )
        # A ModuleDict, so sub-poolers with weights move with the model.
        self.poolers_by_task = nn.ModuleDict(dict(poolers_by_task))

    @classmethod
    def for_embedding(cls, pooler_config: Any) -> DispatchPooler:
        """The "embed" and "token_embed" poolers, as `pooler_config` describes them."""
        return cls(
            {
                "token_embed": pooler_for_token_embed(pooler_config),
                "embed": pooler_for_embed(pooler_config),
            }
        )

    def get_supported_tasks(self) -> Set[str]:
        return set(self.poolers_by_task.keys())

    def forward(
        self, hidden_states: torch.Tensor, pooling_metadata: PoolingMetadata
    ) -> list[torch.Tensor]:
        outputs: list[torch.Tensor] = []
        seq_start = token_start = 0
        # Consecutive sequences of one task go to their pooler in one call.
        for task, group in groupby(pooling_metadata.tasks):
            if task not in self.poolers_by_task:
                raise ValueError(
                    f"Pooling task {task!r} is not supported by this model; it supports "
                    f"{sorted(self.get_supported_tasks())}."
                )
            count = len(list(group))
            group_meta = pooling_metadata[seq_start : seq_start + count]
            num_tokens = sum(group_meta.prompt_lens)
            group_hidden = hidden_states[token_start : token_start + num_tokens]
            outputs.extend(self.poolers_by_task[task](group_hidden, group_meta))
            seq_start += count
            token_start += num_tokens
        return outputs

    def extra_repr(self) -> str:
        return f"supported_tasks={sorted(self.get_supported_tasks())}"


__all__ = [
    "DispatchPooler",
    "Pooler",
    "PoolingMetadata",
    "SequencePooler",
    "TokenPooler",
    "default_pooling_task",
    "pooler_for_embed",
    "pooler_for_token_embed",
]
