"""The weight-loading and layer-stacking helpers of `vllm.model_executor.models.utils` that
need torch (answered through `reference.models.utils`, which imports this module lazily).

`AutoWeightsLoader(model).load_weights(weights)` walks the checkpoint's names once, dotted
part by dotted part: a child module with its own `load_weights` gets its share of the weights,
a parameter is filled by its `weight_loader` attribute (else a plain copy), and a name that
matches nothing raises ValueError unless an ignored prefix or suffix covers it (`.bias` always
is, and rotary-embedding caches are dropped). It returns the qualified names it loaded.
Tied word embeddings are skipped, as in vLLM. Quantization configs' weight renames are not
applied (the reference ships no quantization methods that have them).

With one pipeline stage, `make_layers` builds every layer and `PPMissingLayer` never appears
unless a model places one itself.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from reference.distributed import get_pp_group
from reference.logger import init_logger
from reference.model_loader import default_weight_loader
from reference.models.utils import WeightsMapper, maybe_prefix
from reference.sequence import IntermediateTensors

logger = init_logger("vllm.model_executor.models.utils")

__all__ = [
    "AutoWeightsLoader",
    "PPMissingLayer",
    "extract_layer_index",
    "get_pp_missing_layer_names",
    "is_pp_missing_parameter",
    "make_empty_intermediate_tensors_factory",
    "make_layers",
]

_Weights = Iterable[tuple[str, torch.Tensor]]


class PPMissingLayer(nn.Identity):
    """Stands for a layer another pipeline stage holds: passes its first input through."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return args[0] if args else next(iter(kwargs.values()))


def make_layers(
    num_hidden_layers: int, layer_fn: Callable[..., nn.Module], prefix: str
) -> tuple[int, int, nn.ModuleList]:
    """(start, end, layers): this stage's layers built by `layer_fn(prefix=f"{prefix}.{i}")`,
    the others `PPMissingLayer`s; with one stage, all of them."""
    pp = get_pp_group()
    per_stage = num_hidden_layers // pp.world_size
    start = pp.rank_in_group * per_stage
    end = num_hidden_layers if pp.is_last_rank else start + per_stage
    modules = nn.ModuleList(
        [PPMissingLayer() for _ in range(start)]
        + [layer_fn(prefix=f"{prefix}.{i}") for i in range(start, end)]
        + [PPMissingLayer() for _ in range(end, num_hidden_layers)]
    )
    return start, end, modules


def get_pp_missing_layer_names(model: nn.Module) -> list[str]:
    """The qualified names (with a trailing dot) of the model's `PPMissingLayer`s."""
    return [name + "." for name, m in model.named_modules() if isinstance(m, PPMissingLayer)]


def is_pp_missing_parameter(name: str, model: nn.Module) -> bool:
    """Whether parameter `name` belongs to a layer this stage does not hold."""
    if isinstance(model, PPMissingLayer):
        return True
    return any(name.startswith(missing) for missing in get_pp_missing_layer_names(model))


def make_empty_intermediate_tensors_factory(
    keys: list[str], hidden_size: int
) -> Callable[[int, torch.dtype, torch.device], IntermediateTensors]:
    """A `make_empty_intermediate_tensors(batch_size, dtype, device)`: zeros per key."""

    def make_empty_intermediate_tensors(
        batch_size: int, dtype: torch.dtype, device: torch.device
    ) -> IntermediateTensors:
        return IntermediateTensors(
            {k: torch.zeros((batch_size, hidden_size), dtype=dtype, device=device) for k in keys}
        )

    return make_empty_intermediate_tensors


def extract_layer_index(layer_name: str, num_attn_module: int = 1) -> int:
    """The layer number in a module name (`model.layers.3.self_attn` → 3); with several
    attention modules per layer, `layer * num_attn_module + module`."""
    numbers = [int(part) for part in layer_name.split(".") if part.isdigit()]
    if num_attn_module == 1 or "attn" not in layer_name:
        assert len(numbers) == 1, f"layer name {layer_name} should only contain one integer"
        return numbers[0]
    assert len(numbers) <= 2, f"layer name {layer_name} should contain most two integers"
    return numbers[0] * num_attn_module + numbers[1] if len(numbers) == 2 else numbers[0]


def _tied_embedding_params(module: nn.Module) -> dict[str, str]:
    """Each embedding parameter that shares its tensor with an earlier one → that one's name."""
    from reference.layers.vocab_parallel_embedding import VocabParallelEmbedding

    first: dict[int, str] = {}
    aliased: dict[str, str] = {}
    for prefix, sub in module.named_modules(remove_duplicate=False):
        if not isinstance(sub, VocabParallelEmbedding):
            continue
        for name, param in sub.named_parameters(remove_duplicate=False):
            qualname = f"{prefix}.{name}" if prefix else name
            if (canonical := first.setdefault(id(param), qualname)) != qualname:
                aliased[qualname] = canonical
    return aliased


def _join(prefix: str, rest: str) -> str:
    return rest if not prefix else prefix if not rest else f"{prefix}.{rest}"


class AutoWeightsLoader:
    """Loads checkpoint weights into `module` by walking its children (see module doc)."""

    ROTARY_CACHES = WeightsMapper(
        orig_to_new_substr={
            "rotary_pos_emb.inv_freq": None,
            "rotary_emb.inv_freq": None,
            "rotary_emb.cos_cached": None,
            "rotary_emb.sin_cached": None,
        }
    )

    def __init__(
        self,
        module: nn.Module,
        *,
        ignore_unexpected_prefixes: list[str] | None = None,
        ignore_unexpected_suffixes: list[str] | None = None,
    ) -> None:
        self.module = module
        self.ignore_unexpected_prefixes = ignore_unexpected_prefixes or []
        self.ignore_unexpected_suffixes = ignore_unexpected_suffixes or []
        self.aliased_params = _tied_embedding_params(module)
        self._skipped_aliases: dict[str, str] = {}
        self._complete = True

    def _can_skip(self, qualname: str) -> bool:
        """A tied embedding's second name: its tensor is loaded under the first."""
        return qualname in self.aliased_params

    def _can_ignore_unexpected(self, qualname: str) -> bool:
        return any(qualname.startswith(p) for p in self.ignore_unexpected_prefixes) or any(
            qualname.endswith(s) for s in self.ignore_unexpected_suffixes
        )

    @staticmethod
    def _groupby_prefix(weights: _Weights) -> Iterator[tuple[str, _Weights]]:
        parts = ((name.split(".", 1), data) for name, data in weights)
        for prefix, group in itertools.groupby(parts, key=lambda item: item[0][0]):
            yield prefix, (("" if len(p) == 1 else p[1], data) for p, data in group)

    def _load_param(self, prefix: str, param: nn.Parameter, weights: _Weights) -> Iterator[str]:
        for name, data in weights:
            qualname = _join(prefix, name)
            if self._can_skip(qualname):
                continue
            if name != "":
                if self._can_ignore_unexpected(qualname):
                    continue
                raise ValueError(
                    f"Attempted to load nested weight {qualname!r} into a single parameter "
                    f"{prefix!r}"
                )
            getattr(param, "weight_loader", default_weight_loader)(param, data)
            yield qualname

    def _load_module(self, prefix: str, module: nn.Module, weights: _Weights) -> Iterator[str]:
        if isinstance(module, PPMissingLayer):
            return
        if module is not self.module:
            own_loader = getattr(module, "load_weights", None)
            if callable(own_loader):
                loaded = own_loader(weights)
                if loaded is None:
                    logger.warning("Unable to collect loaded parameters for module %s", module)
                    self._complete = False
                else:
                    yield from (_join(prefix, name) for name in loaded)
        children = dict(module.named_children())
        params: dict[str, Any] = dict(module.named_parameters(recurse=False))
        persistent_skip = getattr(module, "_non_persistent_buffers_set", set())
        for name, buf in module.named_buffers(recurse=False):
            if name not in params and name not in persistent_skip:
                params[name] = buf
        for child, child_weights in self._groupby_prefix(weights):
            qualname = _join(prefix, child)
            if child in children:
                yield from self._load_module(qualname, children[child], child_weights)
            elif child in params:
                if not self._can_skip(qualname):
                    yield from self._load_param(qualname, params[child], child_weights)
            elif self._can_skip(qualname) or self._can_ignore_unexpected(qualname + "."):
                continue
            elif self._can_ignore_unexpected(qualname):
                continue
            else:
                known = {maybe_prefix(prefix, k) for k, _ in module.named_parameters()}
                raise ValueError(
                    f"There is no module or parameter named {qualname!r} in "
                    f"{self.module._get_name()}. The available parameters belonging to "
                    f"{prefix} ({module._get_name()}) are: {known}"
                )

    def load_weights(self, weights: _Weights, *, mapper: WeightsMapper | None = None) -> set[str]:
        """Load `weights` (renamed by `mapper` first); the qualified names loaded."""
        self.ignore_unexpected_suffixes.append(".bias")
        mapper = (mapper or WeightsMapper()) | self.ROTARY_CACHES
        loaded = set(self._load_module("", self.module, self._filter(mapper.apply(weights))))
        if self._complete:
            for alias, canonical in self._skipped_aliases.items():
                if canonical not in loaded:
                    raise ValueError(
                        f"{alias!r} was skipped because it is tied to {canonical!r} in "
                        f"{self.module._get_name()}, but {canonical!r} was not found in the "
                        "checkpoint, so the tied weight is uninitialized."
                    )
        return loaded

    def _filter(self, weights: _Weights) -> _Weights:
        for name, weight in weights:
            if name in self.aliased_params:
                self._skipped_aliases[name] = self.aliased_params[name]
                continue
            yield name, weight
