"""The logits head (`vllm.model_executor.layers.logits_processor.LogitsProcessor`): hidden
states → logits over the vocabulary, through an LM head's weight.

`forward(lm_head, hidden_states)` computes `hidden_states @ lm_head.weight.T` (plus
`embedding_bias`), drops the vocabulary padding (keeps the first `org_vocab_size` columns),
then applies the soft cap (`tanh(logits / cap) * cap`) and the scale, in vLLM's order. With
`logits_as_input=True` the hidden states are the logits already. This is a model layer, not
the sampling-time logits processors of `vllm.v1.sample.logits_processor`.
"""

from __future__ import annotations

import torch

from reference.config import get_current_vllm_config
from reference.ops.custom_op import PluggableLayer

__all__ = ["LogitsProcessor"]


@PluggableLayer.register("logits_processor")
class LogitsProcessor(PluggableLayer):
    def __init__(
        self,
        vocab_size: int,
        org_vocab_size: int | None = None,
        scale: float = 1.0,
        logits_as_input: bool = False,
        soft_cap: float | None = None,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.vocab_size = vocab_size
        self.logits_as_input = logits_as_input
        self.org_vocab_size = org_vocab_size or vocab_size
        self.soft_cap = soft_cap
        self.use_all_gather = True
        model_config = get_current_vllm_config().model_config
        self.head_dtype = getattr(model_config, "head_dtype", None)

    def forward(
        self,
        lm_head: torch.nn.Module,
        hidden_states: torch.Tensor,
        embedding_bias: torch.Tensor | None = None,
        skip_gather: bool = False,
    ) -> torch.Tensor | None:
        if self.logits_as_input:
            logits = hidden_states
        else:
            logits = self._get_logits(hidden_states, lm_head, embedding_bias, skip_gather)
        if logits is not None:
            if self.soft_cap is not None:
                logits = torch.tanh(logits / self.soft_cap) * self.soft_cap
            if self.scale != 1.0:
                logits = logits * self.scale
        return logits

    def _gather_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits of every rank's vocabulary shard: with one rank, these."""
        return logits

    def _get_logits(
        self,
        hidden_states: torch.Tensor,
        lm_head: torch.nn.Module,
        embedding_bias: torch.Tensor | None,
        skip_gather: bool = False,
    ) -> torch.Tensor | None:
        if self.head_dtype is None or self.head_dtype == hidden_states.dtype:
            logits = lm_head.quant_method.apply(lm_head, hidden_states, bias=embedding_bias)
        else:  # the model asks for logits in another dtype than its hidden states
            bias = None if embedding_bias is None else embedding_bias.to(self.head_dtype)
            logits = torch.nn.functional.linear(
                hidden_states.to(self.head_dtype), lm_head.weight.to(self.head_dtype), bias
            )
        if skip_gather:
            return logits
        return logits[..., : self.org_vocab_size]

    def extra_repr(self) -> str:
        return (
            f"vocab_size={self.vocab_size}, org_vocab_size={self.org_vocab_size}, "
            f"scale={self.scale}, logits_as_input={self.logits_as_input}"
        )
