"""Vocabulary embeddings and the LM head (`vllm.model_executor.layers.vocab_parallel_embedding`)
as one tensor-parallel rank holds them: the whole vocabulary, padded.

As in vLLM, the vocabulary is padded to a multiple of `padding_size` (64): the weight is
`(num_embeddings_padded, embedding_dim)`, the checkpoint's `org_vocab_size` rows load into
its first rows and the padding rows are zeroed. `ParallelLMHead` holds the output
projection; its `forward` refuses to run (the `LogitsProcessor` computes logits from its
weight), and `tie_weights` shares the input embedding's weight.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.nn import Parameter

from reference.distributed import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
)
from reference.layers.quantization import (
    QuantizationConfig,
    QuantizeMethodBase,
    method_has_implemented_embedding,
)
from reference.layers.utils import dispatch_unquantized_gemm, set_weight_attrs
from reference.ops.custom_op import PluggableLayer

__all__ = [
    "DEFAULT_VOCAB_PADDING_SIZE",
    "ParallelLMHead",
    "UnquantizedEmbeddingMethod",
    "VocabParallelEmbedding",
    "pad_vocab_size",
]

DEFAULT_VOCAB_PADDING_SIZE = 64


def pad_vocab_size(vocab_size: int, pad_to: int = DEFAULT_VOCAB_PADDING_SIZE) -> int:
    """`vocab_size` rounded up to a multiple of `pad_to`."""
    return ((vocab_size + pad_to - 1) // pad_to) * pad_to


class UnquantizedEmbeddingMethod(QuantizeMethodBase):
    """Full-precision embedding weights: a row look-up, or `x @ W.T + b` as an LM head."""

    supports_pre_processed_weights = True

    def create_weights(  # type: ignore[override]
        self,
        layer: torch.nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        input_size: int,
        output_size: int,
        params_dtype: torch.dtype,
        **extra_weight_attrs: Any,
    ):
        weight = Parameter(
            torch.empty(sum(output_partition_sizes), input_size_per_partition, dtype=params_dtype),
            requires_grad=False,
        )
        set_weight_attrs(weight, {"input_dim": 1, "output_dim": 0})
        layer.register_parameter("weight", weight)
        set_weight_attrs(weight, extra_weight_attrs)

    def apply(  # type: ignore[override]
        self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        return dispatch_unquantized_gemm()(layer, x, layer.weight, bias)

    def embedding(self, layer: torch.nn.Module, input_: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return F.embedding(input_, layer.weight)


@PluggableLayer.register("vocab_parallel_embedding")
class VocabParallelEmbedding(PluggableLayer):
    """The token embedding: `forward(ids)` looks up rows of the padded weight."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        params_dtype: torch.dtype | None = None,
        org_num_embeddings: int | None = None,
        padding_size: int = DEFAULT_VOCAB_PADDING_SIZE,
        quant_config: QuantizationConfig | None = None,
        prefix: str = "",
        *,
        disable_tp: bool = False,
        reduce_results: bool = True,
        quant_method: QuantizeMethodBase | None = None,
        parallel_group: Any = None,
    ) -> None:
        super().__init__()
        self.tp_rank = 0 if disable_tp else get_tensor_model_parallel_rank()
        self.tp_size = 1 if disable_tp else get_tensor_model_parallel_world_size()
        self.reduce_results = reduce_results
        self.parallel_group = parallel_group
        self.num_embeddings = num_embeddings
        self.padding_size = padding_size
        self.org_vocab_size = org_num_embeddings or num_embeddings
        self.num_added_embeddings = num_embeddings - self.org_vocab_size
        self.org_vocab_size_padded = pad_vocab_size(self.org_vocab_size, padding_size)
        self.num_embeddings_padded = pad_vocab_size(
            self.org_vocab_size_padded + self.num_added_embeddings, padding_size
        )
        self.num_embeddings_per_partition = self.num_embeddings_padded
        self.embedding_dim = embedding_dim
        self.params_dtype = params_dtype if params_dtype is not None else torch.get_default_dtype()
        if quant_method is None:
            quant_method = (
                quant_config.get_quant_method(self, prefix=prefix) if quant_config else None
            ) or UnquantizedEmbeddingMethod()
        if type(self) is VocabParallelEmbedding and not method_has_implemented_embedding(
            type(quant_method)
        ):
            raise NotImplementedError(
                f"The class {type(quant_method).__name__} must implement the 'embedding' "
                "method, see UnquantizedEmbeddingMethod."
            )
        self.quant_method: QuantizeMethodBase = quant_method
        self.quant_method.create_weights(
            self,
            self.embedding_dim,
            [self.num_embeddings_per_partition],
            self.embedding_dim,
            self.num_embeddings_padded,
            params_dtype=self.params_dtype,
            weight_loader=self.weight_loader,
        )

    def weight_loader(self, param: Parameter, loaded_weight: torch.Tensor) -> None:
        """Copy the checkpoint's `org_vocab_size` rows in and zero the padding rows."""
        output_dim = getattr(param, "output_dim", None)
        if output_dim is None:
            if loaded_weight.ndim == 0 and param.data.ndim == 1 and param.data.numel() == 1:
                loaded_weight = loaded_weight.reshape(1)
            assert param.data.shape == loaded_weight.shape
            param.data.copy_(loaded_weight)
            return
        assert loaded_weight.shape[output_dim] == self.org_vocab_size
        param[: loaded_weight.shape[0]].data.copy_(loaded_weight)
        param[loaded_weight.shape[0] :].data.fill_(0)

    def get_sharded_to_full_mapping(self) -> list[int] | None:
        """None: with one rank the weight's rows are already in vocabulary order."""
        return None

    def forward(self, input_: torch.Tensor) -> torch.Tensor:
        return self.quant_method.embedding(self, input_.long())

    def extra_repr(self) -> str:
        return (
            f"num_embeddings={self.num_embeddings}, "
            f"num_embeddings_per_partition={self.num_embeddings_per_partition}, "
            f"embedding_dim={self.embedding_dim}, org_vocab_size={self.org_vocab_size}, "
            f"num_embeddings_padded={self.num_embeddings_padded}, tp_size={self.tp_size}"
        )


@PluggableLayer.register("parallel_lm_head")
class ParallelLMHead(VocabParallelEmbedding):
    """The output projection to the (padded) vocabulary, read by `LogitsProcessor`."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        bias: bool = False,
        params_dtype: torch.dtype | None = None,
        org_num_embeddings: int | None = None,
        padding_size: int = DEFAULT_VOCAB_PADDING_SIZE,
        quant_config: QuantizationConfig | None = None,
        prefix: str = "",
        *,
        disable_tp: bool = False,
    ) -> None:
        self.has_bias = bias
        super().__init__(
            num_embeddings,
            embedding_dim,
            params_dtype,
            org_num_embeddings,
            padding_size,
            quant_config,
            prefix,
            disable_tp=disable_tp,
        )
        self.quant_config = quant_config
        if bias:
            self.bias = Parameter(
                torch.empty(self.num_embeddings_per_partition, dtype=self.params_dtype),
                requires_grad=False,
            )
            set_weight_attrs(self.bias, {"output_dim": 0, "weight_loader": self.weight_loader})
        else:
            self.register_parameter("bias", None)

    def tie_weights(self, embed_tokens: VocabParallelEmbedding) -> Any:
        """Share `embed_tokens`' weight (tied word embeddings)."""
        return self.quant_method.tie_weights(self, embed_tokens)

    def forward(self, input_: torch.Tensor) -> torch.Tensor:
        del input_
        raise RuntimeError("LMHead's weights should be used in the sampler.")
