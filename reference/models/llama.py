"""Llama: the generating `LlamaForCausalLM`, the backbone `LlamaModel` and the embedding
model `LlamaEmbeddingModel`.

As in vLLM, `LlamaModel` is the bare backbone (embeddings, decoder layers, final norm) that a
model wraps; the *architecture* name "LlamaModel" (a checkpoint without LM head) is served as
an embedding model by `LlamaEmbeddingModel` (vLLM adapts `LlamaForCausalLM` for it instead).

Their RMSNorm layers are the reference's `RMSNorm` custom op, so platform dispatch (and any
kernel a platform brings for it) applies inside a real model.
"""

from __future__ import annotations

from torch import nn

from reference.models.hf import HfBackbone, HfForCausalLM, HfPoolingModel
from reference.ops.layernorm import RMSNorm


def _use_reference_rms_norm(root: nn.Module) -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    for parent in list(root.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, LlamaRMSNorm):
                # Same parameter name (`weight`) and formula, so checkpoints load unchanged.
                norm = RMSNorm(
                    child.weight.shape[0], eps=child.variance_epsilon, dtype=child.weight.dtype
                )
                setattr(parent, child_name, norm)


class LlamaForCausalLM(HfForCausalLM):
    hf_model_class = "LlamaForCausalLM"
    hf_config_class = "LlamaConfig"

    def _adapt_modules(self) -> None:
        _use_reference_rms_norm(self.backbone)


class LlamaModel(HfBackbone):
    """The Llama backbone: `LlamaModel(vllm_config=..., prefix=...)`, `forward(input_ids,
    positions, intermediate_tensors=None, inputs_embeds=None)` → hidden states `[T, hidden]`;
    `load_weights` takes names without the `model.` prefix."""

    hf_model_class = "LlamaModel"
    hf_config_class = "LlamaConfig"

    def _adapt_modules(self, hf_model: nn.Module) -> None:
        _use_reference_rms_norm(hf_model)


class LlamaEmbeddingModel(HfPoolingModel):
    """A Llama checkpoint served as an embedding model (its LM head, if any, is ignored)."""

    hf_model_class = "LlamaModel"
    hf_config_class = "LlamaConfig"

    def _adapt_modules(self) -> None:
        _use_reference_rms_norm(self.backbone)
