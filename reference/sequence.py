"""`vllm.sequence.IntermediateTensors`: the named tensors a pipeline stage hands the next one.

Model classes that declare pipeline-parallel support (`SupportsPP`) accept and return it;
on the reference's single stage a model only ever receives None, but it builds these in
`make_empty_intermediate_tensors` and plugins import the name at module level.
"""

from __future__ import annotations

from collections.abc import ItemsView
from typing import Any

import torch

__all__ = ["IntermediateTensors"]


class IntermediateTensors:
    """A dict of tensors by name (`hidden_states`, `residual`, ...): indexing by name gives
    a tensor, by slice a new `IntermediateTensors` of every tensor's slice."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __getitem__(self, key: str | slice) -> Any:
        if isinstance(key, str):
            return self.tensors[key]
        if isinstance(key, slice):
            return self.__class__({k: v[key] for k, v in self.tensors.items()})
        return None

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        self.tensors[key] = value

    def items(self) -> ItemsView[str, torch.Tensor]:
        return self.tensors.items()

    def __len__(self) -> int:
        return len(self.tensors)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, self.__class__):
            return False
        if self.tensors.keys() != other.tensors.keys():
            return False
        return all(torch.equal(self.tensors[k], other.tensors[k]) for k in self.tensors)

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        return f"IntermediateTensors(tensors={self.tensors})"

    @staticmethod
    def empty_like(intermediate_tensors: IntermediateTensors) -> IntermediateTensors:
        return IntermediateTensors(
            {k: torch.empty_like(v) for k, v in intermediate_tensors.tensors.items()}
        )
