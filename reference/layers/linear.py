"""Linear layers (`vllm.model_executor.layers.linear`) as one tensor-parallel rank computes
them: every "parallel" layer holds the whole weight, and the collectives are no-ops.

Each layer's weight is `(output_size, input_size)` and its output `x @ W.T + b`, computed by
its quantize method (`UnquantizedLinearMethod` unless a `quant_config` gives another). As in
vLLM, `forward` returns `(output, bias)` where `bias` is the bias left for the caller to add
(only with `skip_bias_add=True`), or `output` alone with `return_bias=False`. The fused
layers (`MergedColumnParallelLinear`, `QKVParallelLinear`) load each checkpoint shard into
its rows through `weight_loader(param, loaded_weight, loaded_shard_id)`.

Weights are plain `torch.nn.Parameter`s with vLLM's attributes (`weight_loader`,
`input_dim`, `output_dim`), not vLLM's `ModelWeightParameter` subclasses.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import Parameter

from reference.distributed import (
    divide,
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
)
from reference.layers.quantization import QuantizationConfig, QuantizeMethodBase
from reference.layers.utils import dispatch_unquantized_gemm, set_weight_attrs
from reference.ops.custom_op import PluggableLayer

__all__ = [
    "ColumnParallelLinear",
    "LinearBase",
    "LinearMethodBase",
    "MergedColumnParallelLinear",
    "QKVParallelLinear",
    "ReplicatedLinear",
    "RowParallelLinear",
    "UnquantizedLinearMethod",
    "set_weight_attrs",
]


class LinearMethodBase(QuantizeMethodBase):
    """The quantize method of a linear layer."""

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
        """Create `layer`'s weights for an input of `input_size_per_partition` and outputs of
        `output_partition_sizes` (several for a fused layer)."""
        raise NotImplementedError

    def apply(  # type: ignore[override]
        self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        raise NotImplementedError


class UnquantizedLinearMethod(LinearMethodBase):
    """Full-precision weights: one `(sum(outputs), input)` weight, output `x @ W.T + b`."""

    supports_pre_processed_weights = True

    def __init__(self) -> None:
        self._gemm_impl = dispatch_unquantized_gemm()

    def create_weights(
        self,
        layer: torch.nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        input_size: int,
        output_size: int,
        params_dtype: torch.dtype,
        **extra_weight_attrs: Any,
    ):
        weight_loader = extra_weight_attrs.pop("weight_loader")
        weight = Parameter(
            torch.empty(sum(output_partition_sizes), input_size_per_partition, dtype=params_dtype),
            requires_grad=False,
        )
        set_weight_attrs(weight, {"input_dim": 1, "output_dim": 0, "weight_loader": weight_loader})
        layer.register_parameter("weight", weight)
        set_weight_attrs(weight, extra_weight_attrs)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        """Nothing to transform (vLLM's CPU build may re-pack the weight for its kernels)."""

    def apply(
        self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self._gemm_impl(layer, x, layer.weight, bias)


class LinearBase(PluggableLayer):
    """What every linear layer shares: sizes, dtype, quantize method, and its rank."""

    requires_unquantized_input = False

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = False,
        skip_bias_add: bool = False,
        params_dtype: torch.dtype | None = None,
        quant_config: QuantizationConfig | None = None,
        prefix: str = "",
        *,
        return_bias: bool = True,
        disable_tp: bool = False,
        tp_rank: int | None = None,
        tp_size: int | None = None,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.has_bias = bias
        self.skip_bias_add = skip_bias_add
        self.params_dtype = params_dtype if params_dtype is not None else torch.get_default_dtype()
        self.quant_config = quant_config
        self.prefix = prefix
        self.quant_method: QuantizeMethodBase
        if quant_config is None:
            self.quant_method = UnquantizedLinearMethod()
        else:
            method = quant_config.get_quant_method(self, prefix=prefix)
            if method is None:
                raise ValueError("All linear layers should support quant method.")
            self.quant_method = method
        self.return_bias = return_bias
        self.disable_tp = disable_tp
        if disable_tp:
            self.tp_rank, self.tp_size = 0, 1
        else:
            self.tp_rank = tp_rank if tp_rank is not None else get_tensor_model_parallel_rank()
            self.tp_size = (
                tp_size if tp_size is not None else get_tensor_model_parallel_world_size()
            )

    def update_param_tp_status(self) -> None:
        for param in self.parameters():
            if hasattr(param, "tp_rank"):
                param.tp_rank, param.tp_size = self.tp_rank, self.tp_size

    def _create(self, output_sizes: list[int], weight_loader: Any) -> None:
        """Create the weight (by the quantize method) and the bias parameter."""
        self.quant_method.create_weights(
            self,
            self.input_size_per_partition,
            output_sizes,
            self.input_size,
            self.output_size,
            self.params_dtype,
            weight_loader=weight_loader,
        )
        if self.has_bias:
            self.bias = Parameter(
                torch.empty(sum(output_sizes), dtype=self.params_dtype), requires_grad=False
            )
            set_weight_attrs(self.bias, {"output_dim": 0, "weight_loader": weight_loader})
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> Any:
        bias = self.bias if not self.skip_bias_add else None
        output = self.quant_method.apply(self, x, bias)
        if not self.return_bias:
            return output
        return output, (self.bias if self.skip_bias_add else None)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.input_size}, output_features={self.output_size}, "
            f"bias={self.bias is not None}"
        )


def _copy(param: torch.Tensor, loaded_weight: torch.Tensor) -> None:
    if loaded_weight.dim() == 0:
        loaded_weight = loaded_weight.reshape(1)
    assert param.size() == loaded_weight.size(), (
        f"Tried to load weights of size {loaded_weight.size()} to a parameter of size "
        f"{param.size()}"
    )
    param.data.copy_(loaded_weight)


@PluggableLayer.register("replicated_linear")
class ReplicatedLinear(LinearBase):
    """A linear layer every rank holds whole."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = True,
        skip_bias_add: bool = False,
        params_dtype: torch.dtype | None = None,
        quant_config: QuantizationConfig | None = None,
        prefix: str = "",
        *,
        return_bias: bool = True,
        disable_tp: bool = False,
    ) -> None:
        output_sizes = list(getattr(self, "output_sizes", [output_size]))
        super().__init__(
            input_size,
            output_size,
            bias,
            skip_bias_add,
            params_dtype,
            quant_config,
            prefix=prefix,
            return_bias=return_bias,
            disable_tp=disable_tp,
        )
        self.input_size_per_partition = input_size
        self.output_partition_sizes = output_sizes
        self._create(output_sizes, self.weight_loader)

    def weight_loader(self, param: Parameter, loaded_weight: torch.Tensor) -> None:
        _copy(param, loaded_weight)

    def forward(self, x: torch.Tensor) -> Any:
        return super().forward(x)


@PluggableLayer.register("column_parallel_linear")
class ColumnParallelLinear(LinearBase):
    """A linear layer split by output columns across ranks; one rank holds all of them."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = True,
        gather_output: bool = False,
        skip_bias_add: bool = False,
        params_dtype: torch.dtype | None = None,
        quant_config: QuantizationConfig | None = None,
        prefix: str = "",
        *,
        return_bias: bool = True,
        disable_tp: bool = False,
        tp_rank: int | None = None,
        tp_size: int | None = None,
    ) -> None:
        super().__init__(
            input_size,
            output_size,
            bias,
            skip_bias_add,
            params_dtype,
            quant_config,
            prefix,
            return_bias=return_bias,
            disable_tp=disable_tp,
            tp_rank=tp_rank,
            tp_size=tp_size,
        )
        self.gather_output = gather_output
        self.input_size_per_partition = input_size
        self.output_size_per_partition = divide(output_size, self.tp_size)
        # A fused subclass sets `output_sizes` before calling this constructor.
        self.output_sizes = list(getattr(self, "output_sizes", [output_size]))
        self.output_partition_sizes = [divide(size, self.tp_size) for size in self.output_sizes]
        self._create(self.output_partition_sizes, self.weight_loader)

    def weight_loader(self, param: Parameter, loaded_weight: torch.Tensor) -> None:
        _copy(param, loaded_weight)

    def weight_loader_v2(self, param: Parameter, loaded_weight: torch.Tensor) -> None:
        _copy(param, loaded_weight)

    def forward(self, input_: torch.Tensor) -> Any:
        return super().forward(input_)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column layers fused into one weight (e.g. gate and up projections); shard
    `i` of the checkpoint loads into rows `sum(output_sizes[:i])` onwards."""

    def __init__(
        self,
        input_size: int,
        output_sizes: list[int],
        bias: bool = True,
        gather_output: bool = False,
        skip_bias_add: bool = False,
        params_dtype: torch.dtype | None = None,
        quant_config: QuantizationConfig | None = None,
        prefix: str = "",
        *,
        return_bias: bool = True,
        disable_tp: bool = False,
    ) -> None:
        self.output_sizes = list(output_sizes)
        super().__init__(
            input_size,
            sum(output_sizes),
            bias,
            gather_output,
            skip_bias_add,
            params_dtype,
            quant_config,
            prefix=prefix,
            return_bias=return_bias,
            disable_tp=disable_tp,
        )

    def _shard_offsets(self) -> dict[Any, tuple[int, int]]:
        offsets, start = {}, 0
        for index, size in enumerate(self.output_sizes):
            offsets[index] = (start, size)
            start += size
        return offsets

    def weight_loader(
        self, param: Parameter, loaded_weight: torch.Tensor, loaded_shard_id: Any = None
    ) -> None:
        """Load the whole fused weight (`loaded_shard_id` None) or one shard's rows."""
        if loaded_shard_id is None:
            _copy(param, loaded_weight)
            return
        start, size = self._shard_offsets()[loaded_shard_id]
        output_dim = getattr(param, "output_dim", 0)
        _copy(param.data.narrow(output_dim, start, size), loaded_weight)


class QKVParallelLinear(ColumnParallelLinear):
    """The query, key and value projections fused into one weight, loaded by shard id
    `"q"`, `"k"` or `"v"`; `total_num_kv_heads` defaults to `total_num_heads`."""

    def __init__(
        self,
        hidden_size: int,
        head_size: int,
        total_num_heads: int,
        total_num_kv_heads: int | None = None,
        bias: bool = True,
        skip_bias_add: bool = False,
        params_dtype: torch.dtype | None = None,
        quant_config: QuantizationConfig | None = None,
        prefix: str = "",
        *,
        return_bias: bool = True,
        disable_tp: bool = False,
        v_head_size: int | None = None,
    ) -> None:
        self.hidden_size = hidden_size
        self.head_size = head_size
        self.v_head_size = v_head_size if v_head_size is not None else head_size
        self.total_num_heads = total_num_heads
        self.total_num_kv_heads = (
            total_num_kv_heads if total_num_kv_heads is not None else total_num_heads
        )
        self.num_heads = total_num_heads
        self.num_kv_heads = self.total_num_kv_heads
        self.num_kv_head_replicas = 1
        self.output_sizes = [
            self.num_heads * head_size,
            self.num_kv_heads * head_size,
            self.num_kv_heads * self.v_head_size,
        ]
        super().__init__(
            hidden_size,
            sum(self.output_sizes),
            bias,
            False,
            skip_bias_add,
            params_dtype,
            quant_config,
            prefix=prefix,
            return_bias=return_bias,
            disable_tp=disable_tp,
        )

    def _shard_offsets(self) -> dict[Any, tuple[int, int]]:
        q, k, v = self.output_sizes
        return {"q": (0, q), "k": (q, k), "v": (q + k, v)}

    def weight_loader(
        self, param: Parameter, loaded_weight: torch.Tensor, loaded_shard_id: str | None = None
    ) -> None:
        """Load the whole fused weight (`loaded_shard_id` None) or the `"q"`, `"k"` or `"v"`
        rows."""
        if loaded_shard_id is None:
            _copy(param, loaded_weight)
            return
        start, size = self._shard_offsets()[loaded_shard_id]
        output_dim = getattr(param, "output_dim", 0)
        _copy(param.data.narrow(output_dim, start, size), loaded_weight)


@PluggableLayer.register("row_parallel_linear")
class RowParallelLinear(LinearBase):
    """A linear layer split by input rows across ranks; one rank holds all of them, and the
    all-reduce of the partial outputs is the output itself."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = True,
        input_is_parallel: bool = True,
        skip_bias_add: bool = False,
        params_dtype: torch.dtype | None = None,
        reduce_results: bool = True,
        quant_config: QuantizationConfig | None = None,
        prefix: str = "",
        *,
        return_bias: bool = True,
        disable_tp: bool = False,
    ) -> None:
        super().__init__(
            input_size,
            output_size,
            bias,
            skip_bias_add,
            params_dtype,
            quant_config,
            prefix,
            return_bias=return_bias,
            disable_tp=disable_tp,
        )
        self.input_is_parallel = input_is_parallel
        self.reduce_results = reduce_results
        self.input_size_per_partition = divide(input_size, self.tp_size)
        self.output_size_per_partition = output_size
        self.output_partition_sizes = [output_size]
        self._create(self.output_partition_sizes, self.weight_loader)

    def weight_loader(self, param: Parameter, loaded_weight: torch.Tensor) -> None:
        _copy(param, loaded_weight)

    def forward(self, input_: torch.Tensor) -> Any:
        return super().forward(input_)
