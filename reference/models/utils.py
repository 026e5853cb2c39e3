"""Helpers model classes use to name and load weights (`vllm.model_executor.models.utils`).

Only what a plugin model needs to wrap a backbone: `WeightsMapper`, which renames checkpoint
weights (e.g. strips a `model.` prefix before handing them to the backbone), and
`maybe_prefix`, which builds a child's prefix.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

_T = TypeVar("_T")

if TYPE_CHECKING:  # answered lazily by `__getattr__` below (they need torch)
    from reference.models.loading import (
        AutoWeightsLoader,
        PPMissingLayer,
        extract_layer_index,
        get_pp_missing_layer_names,
        is_pp_missing_parameter,
        make_empty_intermediate_tensors_factory,
        make_layers,
    )

__all__ = [
    "AutoWeightsLoader",
    "PPMissingLayer",
    "WeightsMapper",
    "extract_layer_index",
    "get_pp_missing_layer_names",
    "is_pp_missing_parameter",
    "make_empty_intermediate_tensors_factory",
    "make_layers",
    "maybe_prefix",
]


@dataclass
class WeightsMapper:
    """Renames checkpoint weights; a rule that maps to None drops the weight.

    Rules apply in this order, each at most once per name: substrings (first occurrence),
    then prefixes, then suffixes.
    """

    orig_to_new_substr: Mapping[str, str | None] = field(default_factory=dict)
    orig_to_new_prefix: Mapping[str, str | None] = field(default_factory=dict)
    orig_to_new_suffix: Mapping[str, str | None] = field(default_factory=dict)

    def __or__(self, other: WeightsMapper) -> WeightsMapper:
        """Both mappers' rules; `other`'s win where both map the same pattern."""
        return WeightsMapper(
            orig_to_new_substr={**self.orig_to_new_substr, **other.orig_to_new_substr},
            orig_to_new_prefix={**self.orig_to_new_prefix, **other.orig_to_new_prefix},
            orig_to_new_suffix={**self.orig_to_new_suffix, **other.orig_to_new_suffix},
        )

    def map_name(self, name: str) -> str | None:
        """The new name of checkpoint weight `name`, or None if the weight is dropped."""
        for old, new in self.orig_to_new_substr.items():
            if old in name:
                if new is None:
                    return None
                name = name.replace(old, new, 1)
        for old, new in self.orig_to_new_prefix.items():
            if name.startswith(old):
                if new is None:
                    return None
                name = new + name[len(old) :]
        for old, new in self.orig_to_new_suffix.items():
            if name.endswith(old):
                if new is None:
                    return None
                name = name[: len(name) - len(old)] + new
        return name

    def apply(self, weights: Iterable[tuple[str, _T]]) -> Iterator[tuple[str, _T]]:
        """`weights` renamed, lazily (checkpoints are streamed), dropped ones left out."""
        for name, tensor in weights:
            new_name = self.map_name(name)
            if new_name is not None:
                yield new_name, tensor

    def apply_list(self, names: Iterable[str]) -> list[str]:
        return [new for name in names if (new := self.map_name(name)) is not None]

    def apply_dict(self, values: Mapping[str, _T]) -> dict[str, _T]:
        return {new: v for name, v in values.items() if (new := self.map_name(name)) is not None}


def maybe_prefix(prefix: str, name: str) -> str:
    """`prefix.name`, or `name` alone at the top (an empty prefix)."""
    return f"{prefix}.{name}" if prefix else name


#: Names of `vllm.model_executor.models.utils` that need torch: imported on first use, so that
#: importing this module stays torch-free.
_TORCH_HELPERS = {
    "AutoWeightsLoader",
    "PPMissingLayer",
    "extract_layer_index",
    "get_pp_missing_layer_names",
    "is_pp_missing_parameter",
    "make_empty_intermediate_tensors_factory",
    "make_layers",
}


def __getattr__(name: str) -> object:
    if name in _TORCH_HELPERS:
        from reference.models import loading

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
