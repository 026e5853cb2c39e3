"""Model wrappers around transformers implementations, shaped like vLLM's model classes.

The interface the engine drives (built-in and plugin models alike):

- `Model(*, vllm_config, prefix="")` builds the architecture from `vllm_config.model_config`
  (`hf_config`, else `<model>/config.json`; `dtype`), with untrained weights, in eval mode.
- `load_weights(weights)` copies `(checkpoint name, tensor)` pairs and returns the parameter
  names it set; `load_checkpoint(model, dir)` feeds it a directory's safetensors and checks
  that nothing was left unset. `Model.from_checkpoint(dir)` does both.
- `new_kv_cache()` makes an empty cache. `forward(input_ids, positions, kv_cache=None,
  attention_mask=None)` returns hidden states `[..., T, hidden]` for `input_ids`/`positions`
  of shape `[T]` (one sequence) or `[B, T]`. Successive calls with the same cache extend it:
  prefill the prompt once, then feed one token per step. A cache holds one row per batch
  row; `attention_mask` (`[B, cached + T]`, 1 = real token) covers padded rows.
  `inputs_embeds` (from `embed_input_ids`, or a prompt's own embeddings) may replace ids.
- Generating models: `compute_logits(hidden_states)` → logits `[..., T, vocab]`.
- Pooling models (`is_pooling_model = True`): a `pooler` (`reference.models.pooler`, vLLM's
  interface) that the engine calls as `pooler(hidden_states, pooling_metadata)`; the
  reference's own models also offer `pool(hidden_states, attention_mask=None)`, one
  normalised embedding per (padded) sequence.

`HfBackbone` is the other shape: a bare backbone as vLLM's `LlamaModel` is, built from
`vllm_config` with parameters named without the wrapper's prefix, for plugin models that wrap
it (`forward(input_ids, positions, intermediate_tensors=None, inputs_embeds=None)`).
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
import transformers
from torch import nn

from reference.models.pooler import DispatchPooler, SequencePooler

_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
}


def resolve_dtype(requested: Any, hf_config: Any) -> torch.dtype:
    """`model_config.dtype` as a torch dtype; `"auto"` takes the checkpoint's (else float32)."""
    if requested in (None, "auto"):
        requested = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
        requested = requested or "float32"
    if isinstance(requested, torch.dtype):
        return requested
    name = str(requested).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"Unsupported dtype {requested!r}; use one of {sorted(_DTYPES)}.")
    return _DTYPES[name]


def build_hf_config(model_config: Any, config_class: str) -> Any:
    """A transformers config of class `config_class` from the model config's `hf_config`."""
    hf_config = getattr(model_config, "hf_config", None)
    values = dict(hf_config.to_dict()) if hf_config is not None else {}
    if not values:
        path = Path(model_config.model) / "config.json"
        values = json.loads(path.read_text(encoding="utf-8"))
    config_cls = getattr(transformers, config_class)
    model_type = values.get("model_type")
    if model_type is not None and model_type != config_cls.model_type:
        raise ValueError(
            f"The checkpoint at {model_config.model!r} has model_type {model_type!r}, but its "
            f"architecture is served by a {config_cls.model_type!r} model. Fix `architectures` "
            "in its config.json, or register a model class for this model type."
        )
    return config_cls.from_dict(values)


def iter_checkpoint_weights(model_dir: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a checkpoint directory's `*.safetensors` files, by name."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"{model_dir} holds no *.safetensors file; the reference engine loads "
            "safetensors checkpoints only."
        )
    for file in files:
        with safe_open(str(file), framework="pt") as weights:
            for name in weights.keys():
                yield name, weights.get_tensor(name)


def load_checkpoint(model: nn.Module, model_dir: str | Path) -> None:
    """Load `model_dir`'s weights into `model`; ValueError if a parameter stays unset.

    `model.load_weights` returns the names (relative to `model`) of the parameters it set.
    """
    loaded = model.load_weights(iter_checkpoint_weights(model_dir))
    params = model.named_parameters(remove_duplicate=False)
    loaded_ids = {id(p) for name, p in params if name in loaded}
    missing = [name for name, p in model.named_parameters() if id(p) not in loaded_ids]
    if missing:
        raise ValueError(
            f"Following weights were not initialized from checkpoint {model_dir}: {missing}. "
            f"The checkpoint does not match {type(model).__name__}'s architecture."
        )


def build_from_checkpoint(model_cls: type, model_dir: str | Path, *, dtype: str = "auto") -> Any:
    """Build any model class (built-in or a plugin's) from a local checkpoint and load its
    weights, outside any engine: for tests and tools."""
    from reference.config import HfConfig, ModelConfig, VllmConfig, set_current_vllm_config

    model_config = ModelConfig(
        model=str(model_dir), dtype=dtype, hf_config=HfConfig.from_pretrained(model_dir)
    )
    vllm_config = VllmConfig(model_config=model_config)
    with set_current_vllm_config(vllm_config):
        model = model_cls(vllm_config=vllm_config)
    load_checkpoint(model, model_dir)
    return model


@functools.cache
def _cache_keyword(backbone_class: type) -> str:
    """The keyword a transformers model's `forward` takes its KV cache by: `cache` in the
    releases that renamed it (`past_key_values` warns there, and goes in 5.40), else
    `past_key_values`."""
    params = inspect.signature(backbone_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def run_hf_backbone(
    backbone: nn.Module,
    input_ids: torch.Tensor | None,
    positions: torch.Tensor,
    *,
    kv_cache: Any = None,
    attention_mask: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """A transformers base model's last hidden states for `[T]` or `[B, T]` inputs."""
    flat = positions.dim() == 1
    if flat:
        positions = positions[None]
        input_ids = None if input_ids is None else input_ids[None]
        inputs_embeds = None if inputs_embeds is None else inputs_embeds[None]
        attention_mask = None if attention_mask is None else attention_mask[None]
    out = backbone(
        input_ids=None if inputs_embeds is not None else input_ids,
        inputs_embeds=inputs_embeds,
        position_ids=positions,
        attention_mask=attention_mask,
        use_cache=kv_cache is not None,
        **{_cache_keyword(type(backbone)): kv_cache},
    )
    hidden = out.last_hidden_state
    return hidden[0] if flat else hidden


def _copy_weight(owner: nn.Module, param: torch.Tensor, name: str, tensor: torch.Tensor) -> None:
    """Copy checkpoint tensor `name` into `param`, or say why the shapes do not fit."""
    if param.shape != tensor.shape:
        raise ValueError(
            f"Checkpoint weight {name!r} has shape {tuple(tensor.shape)}, but the "
            f"{type(owner).__name__} parameter it loads into has {tuple(param.shape)}; the "
            "checkpoint's config.json does not describe its weights."
        )
    with torch.no_grad():
        param.copy_(tensor.to(param.dtype))


class HfModel(nn.Module):
    """Common base: a transformers backbone held under its own prefix (`model`,
    `transformer`), so parameter names equal the checkpoint's.

    Subclasses name the transformers classes (`hf_model_class`, `hf_config_class`).
    """

    hf_model_class: ClassVar[str]
    hf_config_class: ClassVar[str]
    is_pooling_model: ClassVar[bool] = False
    #: Checkpoint weights this model has no use for (e.g. a pooling model's LM head).
    ignored_weight_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__()
        model_config = vllm_config.model_config
        self.config = build_hf_config(model_config, self.hf_config_class)
        self.dtype = resolve_dtype(getattr(model_config, "dtype", "auto"), self.config)
        hf_cls = getattr(transformers, self.hf_model_class)
        hf_model = hf_cls._from_config(self.config, dtype=self.dtype)
        self.backbone_prefix: str = hf_model.base_model_prefix
        setattr(self, self.backbone_prefix, hf_model.base_model)
        self._attach_heads(hf_model)
        self._adapt_modules()
        # Inference only, as in vLLM: no dropout, no autograd bookkeeping.
        self.train(False)
        self.requires_grad_(False)

    @classmethod
    def from_checkpoint(cls, model_dir: str | Path, *, dtype: str = "auto") -> HfModel:
        """Build from a local checkpoint and load its weights, outside any engine."""
        return build_from_checkpoint(cls, model_dir, dtype=dtype)

    @property
    def backbone(self) -> nn.Module:
        return getattr(self, self.backbone_prefix)

    def _attach_heads(self, hf_model: nn.Module) -> None:
        """Keep what sits on top of the backbone (the LM head); nothing by default."""

    def _adapt_modules(self) -> None:
        """Hook: swap transformers layers for the reference's custom ops."""

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings, for callers that pass `inputs_embeds` to `forward`."""
        return self.backbone.get_input_embeddings()(input_ids)

    def new_kv_cache(self) -> Any:
        return transformers.DynamicCache(config=self.config)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        kv_cache: Any = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Hidden states of the new tokens; `inputs_embeds` (`[..., T, hidden]`) replaces ids."""
        return run_hf_backbone(
            self.backbone,
            input_ids,
            positions,
            kv_cache=kv_cache,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
        )

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters(remove_duplicate=False))
        buffers = dict(self.named_buffers())
        loaded: set[str] = set()
        for name, tensor in weights:
            if name.startswith(self.ignored_weight_prefixes):
                continue
            # Bare backbone checkpoints (e.g. GPT-2's `h.0...`) lack the backbone prefix.
            target = name if name in params or name in buffers else f"{self.backbone_prefix}.{name}"
            if target in buffers:
                continue  # derived from the config (masks, rotary tables), never loaded
            if target not in params:
                raise ValueError(
                    f"Checkpoint weight {name!r} matches no parameter of {type(self).__name__}; "
                    "the checkpoint was written for a different architecture."
                )
            _copy_weight(self, params[target], name, tensor)
            loaded.add(target)
        return loaded


class HfForCausalLM(HfModel):
    """A generating model: backbone plus LM head."""

    def _attach_heads(self, hf_model: nn.Module) -> None:
        # Tied embeddings stay tied: the head shares the embedding's Parameter.
        self.lm_head = hf_model.get_output_embeddings()

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden_states)


class HfPoolingModel(HfModel):
    """An embedding model: backbone plus a `pooler` for "embed" and "token_embed" (the
    sequence's LAST token, normalised, unless the pooler config says otherwise)."""

    is_pooling_model: ClassVar[bool] = True
    ignored_weight_prefixes: ClassVar[tuple[str, ...]] = ("lm_head.",)

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        pooler_config = getattr(vllm_config.model_config, "pooler_config", None)
        self.pooler = DispatchPooler.for_embedding(pooler_config)

    def pool(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Embeddings of one sequence (`[T, H]` → `[H]`) or a padded batch (`[B, T, H]` with a
        `[B, T]` mask → `[B, H]`), as the "embed" pooler computes them."""
        embed = self.pooler.poolers_by_task["embed"]
        assert isinstance(embed, SequencePooler)
        return embed.pool_padded(hidden_states, attention_mask)


class HfBackbone(nn.Module):
    """A bare transformers base model shaped like vLLM's backbones (`LlamaModel`).

    Built from `vllm_config` as any model is; its parameters are named as the checkpoint
    names them without the wrapper's prefix (`embed_tokens.weight`, `layers.0.mlp...`), so a
    plugin model that holds it as `self.model` strips `model.` before `load_weights`.
    Subclasses name the transformers classes (`hf_model_class`, `hf_config_class`).
    """

    hf_model_class: ClassVar[str]
    hf_config_class: ClassVar[str]

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__()
        model_config = vllm_config.model_config
        self.config = build_hf_config(model_config, self.hf_config_class)
        self.dtype = resolve_dtype(getattr(model_config, "dtype", "auto"), self.config)
        self.prefix = prefix
        hf_cls = getattr(transformers, self.hf_model_class)
        hf_model = hf_cls._from_config(self.config, dtype=self.dtype).base_model
        self._adapt_modules(hf_model)
        hf_model.train(False)
        # The transformers model runs the layers, but its children become this module's
        # children: parameter names carry no extra level, exactly as in vLLM's backbone. It is
        # kept outside the module tree (in __dict__) so it adds no second set of names.
        for name, child in hf_model.named_children():
            self.add_module(name, child)
        self.__dict__["_hf_model"] = hf_model
        self.train(False)
        self.requires_grad_(False)

    def _adapt_modules(self, hf_model: nn.Module) -> None:
        """Hook: swap transformers layers for the reference's custom ops."""

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._hf_model.get_input_embeddings()(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: Any = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states after the final norm: `[T, hidden]` for `[T]` ids and positions.

        `intermediate_tensors` is vLLM's pipeline-parallel hand-off between stages; the
        reference runs the whole model in one stage, so there is never one to take.
        """
        if intermediate_tensors is not None:
            raise NotImplementedError(
                "The reference engine has no pipeline parallelism: pass "
                "intermediate_tensors=None (or run on vLLM for pipeline-parallel stages)."
            )
        return run_hf_backbone(self._hf_model, input_ids, positions, inputs_embeds=inputs_embeds)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load backbone-relative weights (`layers.0...`); returns the names it set."""
        params = dict(self.named_parameters(remove_duplicate=False))
        buffers = dict(self.named_buffers())
        loaded: set[str] = set()
        for name, tensor in weights:
            if name in buffers:
                continue  # derived from the config (rotary tables), never loaded
            if name not in params:
                raise ValueError(
                    f"Checkpoint weight {name!r} matches no parameter of "
                    f"{type(self).__name__}, whose names have no wrapper prefix (e.g. "
                    f"{next(iter(params), '?')!r}). Strip the prefix before loading, e.g. with "
                    "WeightsMapper(orig_to_new_prefix={'model.': ''}), and drop the head's "
                    "weights (lm_head.*)."
                )
            _copy_weight(self, params[name], name, tensor)
            loaded.add(name)
        return loaded
