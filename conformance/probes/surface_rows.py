"""The rows of the import-surface fidelity table, as code run inside each engine's interpreter.

`conformance.surface_fidelity` runs every row in one fresh process per engine: the reference
mounted as `vllm`, or an interpreter with real vLLM 0.32. Each row is a function of a few lines
of plugin-like code that imports `vllm.*` and returns a JSON value (a shape, a flag, an error's
type); the table compares the two engines' values. An `import:<module>` row lists which of the
reference's names for that module the engine has (`MODULE_NAMES`).

    python -m conformance.probes.surface_rows --engine reference ROW_ID...

prints `SURFACE-ROWS {"row id": value, ...}` on one line (no row id: every row); a row that
raised reads `"error: Type: message"`. Like every module here, this one imports `vllm` and
`torch` only inside functions: the parent imports it for the row ids and `MODULE_NAMES`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import socket
import sys
from collections.abc import Callable, Iterable
from typing import Any

#: `vllm.distributed.ec_transfer` re-exports its `ec_transfer_state`.
EC_TRANSFER_STATE = (
    "ensure_ec_transfer_initialized",
    "ensure_ec_transfer_shutdown",
    "get_ec_transfer",
    "has_ec_transfer",
)

#: The vLLM paths these rows cover, with the reference names each must have on both engines.
MODULE_NAMES: dict[str, tuple[str, ...]] = {
    "vllm.v1.engine.llm_engine": ("LLMEngine",),
    "vllm.logging_utils": ("ColoredFormatter", "NewLineFormatter"),
    "vllm.model_executor.layers.linear": (
        "ColumnParallelLinear",
        "LinearBase",
        "LinearMethodBase",
        "MergedColumnParallelLinear",
        "QKVParallelLinear",
        "ReplicatedLinear",
        "RowParallelLinear",
        "UnquantizedLinearMethod",
        "set_weight_attrs",
    ),
    "vllm.model_executor.layers.vocab_parallel_embedding": (
        "DEFAULT_VOCAB_PADDING_SIZE",
        "ParallelLMHead",
        "UnquantizedEmbeddingMethod",
        "VocabParallelEmbedding",
        "pad_vocab_size",
    ),
    "vllm.model_executor.layers.logits_processor": ("LogitsProcessor",),
    "vllm.model_executor.layers.utils": ("default_unquantized_gemm", "dispatch_unquantized_gemm"),
    "vllm.model_executor.utils": ("set_weight_attrs",),
    "vllm.model_executor.layers.quantization": (
        "QUANTIZATION_METHODS",
        "QuantizationConfig",
        "QuantizationMethods",
        "get_quantization_config",
        "register_quantization_config",
    ),
    "vllm.model_executor.layers.quantization.base_config": (
        "QuantizationConfig",
        "QuantizeMethodBase",
        "method_has_implemented_embedding",
    ),
    "vllm.model_executor.layers.mamba.mamba_utils": (
        "MambaStateDtypeCalculator",
        "MambaStateShapeCalculator",
        "get_conv_state_layout",
        "get_kv_cache_torch_dtype",
        "is_conv_state_dim_first",
    ),
    "vllm.model_executor.model_loader": (
        "BaseModelLoader",
        "get_model_loader",
        "register_model_loader",
    ),
    "vllm.model_executor.model_loader.base_loader": ("BaseModelLoader",),
    "vllm.model_executor.model_loader.utils": ("initialize_model", "process_weights_after_loading"),
    "vllm.model_executor.model_loader.weight_utils": ("default_weight_loader",),
    "vllm.utils.torch_utils": (
        "STR_DTYPE_TO_TORCH_DTYPE",
        "direct_register_custom_op",
        "get_dtype_size",
        "get_kv_cache_torch_dtype",
        "set_default_torch_dtype",
        "set_random_seed",
        "vllm_lib",
    ),
    "vllm.utils.math_utils": (
        "cdiv",
        "largest_power_of_2_divisor",
        "next_power_of_2",
        "round_down",
        "round_up",
    ),
    "vllm.forward_context": (
        "ForwardContext",
        "create_forward_context",
        "get_forward_context",
        "is_forward_context_available",
        "override_forward_context",
        "set_forward_context",
    ),
    "vllm.distributed": (
        "GroupCoordinator",
        "divide",
        "ensure_model_parallel_initialized",
        "get_ep_group",
        "get_pp_group",
        "get_tensor_model_parallel_rank",
        "get_tensor_model_parallel_world_size",
        "get_tp_group",
        "get_world_group",
        "init_distributed_environment",
        "initialize_model_parallel",
        "model_parallel_is_initialized",
        "parallel_state",
        "tensor_model_parallel_all_gather",
        "tensor_model_parallel_all_reduce",
    ),
    "vllm.distributed.parallel_state": (
        "GroupCoordinator",
        "get_pp_group",
        "get_tp_group",
        "get_world_group",
    ),
    "vllm.distributed.communication_op": (
        "tensor_model_parallel_all_gather",
        "tensor_model_parallel_all_reduce",
        "tensor_model_parallel_gather",
    ),
    "vllm.distributed.ec_transfer": EC_TRANSFER_STATE,
    "vllm.distributed.ec_transfer.ec_transfer_state": EC_TRANSFER_STATE,
    "vllm.distributed.ec_transfer.ec_connector.base": (
        "ECConnectorBase",
        "ECConnectorMetadata",
        "ECConnectorRole",
        "ECConnectorWorkerMetadata",
    ),
    "vllm.distributed.ec_transfer.ec_connector.factory": ("ECConnectorFactory",),
    "vllm.v1.sample.sampler": (
        "LogprobsMode",
        "LogprobsTensors",
        "Sampler",
        "SamplerOutput",
        "SamplingMetadata",
    ),
    "vllm.v1.sample.metadata": ("SamplingMetadata",),
    "vllm.v1.outputs": ("LogprobsTensors", "SamplerOutput"),
    "vllm.reasoning": ("ReasoningParser", "ReasoningParserManager"),
    "vllm.tool_parsers": (
        "ToolParser",
        "ToolParserManager",
        "_TOOL_PARSERS_TO_REGISTER",
        "register_lazy_tool_parsers",
    ),
    "vllm.tool_parsers.abstract_tool_parser": ("Tool", "ToolParser", "ToolParserManager"),
    "vllm.tool_parsers.utils": (
        "Tool",
        "extract_intermediate_diff",
        "find_common_prefix",
        "find_common_suffix",
        "find_tool_name",
        "find_tool_properties",
        "iter_response_function_tool_info",
        "partial_tag_overlap",
    ),
    "vllm.transformers_utils.config": ("LazyConfigDict", "_CONFIG_REGISTRY"),
    "vllm.utils.argparse_utils": (
        "FlexibleArgumentParser",
        "SortedHelpFormatter",
        "human_readable_int",
    ),
    "vllm.model_executor.models.utils": (
        "AutoWeightsLoader",
        "PPMissingLayer",
        "WeightsMapper",
        "extract_layer_index",
        "is_pp_missing_parameter",
        "make_empty_intermediate_tensors_factory",
        "make_layers",
        "maybe_prefix",
    ),
    "vllm.config.cache": ("CacheConfig",),
    "vllm.config.compilation": ("CompilationConfig",),
    "vllm.config.device": ("DeviceConfig",),
    "vllm.config.load": ("LoadConfig",),
    "vllm.config.lora": ("LoRAConfig",),
    "vllm.config.model": ("ModelConfig",),
    "vllm.config.observability": ("ObservabilityConfig",),
    "vllm.config.parallel": ("ParallelConfig",),
    "vllm.config.pooler": ("PoolerConfig",),
    "vllm.config.scheduler": ("SchedulerConfig",),
    "vllm.config.vllm": ("VllmConfig", "get_current_vllm_config", "set_current_vllm_config"),
    "vllm.sequence": ("IntermediateTensors",),
    "vllm.model_executor.models.interfaces": (
        "HasInnerState",
        "IsAttentionFree",
        "IsHybrid",
        "MultiModalEmbeddings",
        "SupportsLoRA",
        "SupportsMRoPE",
        "SupportsMultiModal",
        "SupportsPP",
        "SupportsQuant",
        "has_inner_state",
        "is_attention_free",
        "is_hybrid",
        "supports_lora",
        "supports_mrope",
        "supports_multimodal",
        "supports_pp",
    ),
}

#: The prefix of the line that carries the values back to the parent.
MARKER = "SURFACE-ROWS "

#: Kept entered for the whole process: leaving it would unset the current config.
_config_context: Any = None


def setup() -> None:
    """Give the process what a plugin's worker has before any row runs: a current config and
    a one-rank distributed world (real vLLM's layers ask the tensor-parallel group for their
    rank at construction, and assert that a config is current)."""
    global _config_context
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel

    _config_context = set_current_vllm_config(VllmConfig())
    _config_context.__enter__()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    init_distributed_environment(
        world_size=1,
        rank=0,
        local_rank=0,
        backend="gloo",
        distributed_init_method=f"tcp://127.0.0.1:{port}",
    )
    initialize_model_parallel(1, 1)


def seeded(*shape: int, seed: int = 0) -> Any:
    """A reproducible random tensor of `shape`, the same on both engines."""
    import torch

    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def close(a: Any, b: Any) -> bool:
    """Whether two tensors are equal within float tolerance (compared in the process, so
    that a row's value stays a flag)."""
    import torch

    return bool(torch.allclose(a, b, atol=1e-5))


def error_type(call: Callable[[], Any], expected: type[BaseException]) -> str | None:
    """The name of the `expected` exception type that `call` raised, or None if it returned;
    any other exception propagates (and becomes the row's `error:` value)."""
    try:
        call()
    except expected as exc:
        return type(exc).__name__
    return None


def publish(cls: type) -> type:
    """Make a class defined inside a row findable as `<its module>.<its name>`, as a plugin's
    module-level class is: registries that record a class lazily import it back by name."""
    setattr(sys.modules[cls.__module__], cls.__name__, cls)
    return cls


def import_row(module: str) -> list[str]:
    """`import:<module>`: which of the reference's names for `module` the engine has."""
    m = importlib.import_module(module)
    return sorted(n for n in MODULE_NAMES[module] if hasattr(m, n))


# --- behaviour rows -------------------------------------------------------------------------
# A layer's weights are processed after loading (`process_weights_after_loading`), as a model
# loader does, before its first forward: vLLM's CPU build prepares its matmul kernel there.


def linear_replicated() -> list[Any]:
    """ReplicatedLinear: parameter shape and its output/input dims, and that the forward is
    x @ W.T + b with no separate bias returned."""
    from vllm.model_executor.layers.linear import ReplicatedLinear

    layer = ReplicatedLinear(4, 3, bias=True)
    w, b, x = seeded(3, 4), seeded(3, seed=1), seeded(2, 4, seed=2)
    layer.weight.weight_loader(layer.weight, w)
    layer.bias.weight_loader(layer.bias, b)
    shape = [list(layer.weight.shape), layer.weight.output_dim, layer.weight.input_dim]
    layer.quant_method.process_weights_after_loading(layer)
    out, out_bias = layer(x)
    return [*shape, close(out, x @ w.T + b), out_bias is None]


def linear_skip_bias_add() -> list[Any]:
    """Column/RowParallelLinear: `skip_bias_add` returns the bias beside the un-biased output;
    `return_bias=False` returns the output alone."""
    from vllm.model_executor.layers.linear import ColumnParallelLinear, RowParallelLinear

    col = ColumnParallelLinear(4, 6, bias=True, skip_bias_add=True)
    w, b, x = seeded(6, 4), seeded(6, seed=1), seeded(2, 4, seed=2)
    col.weight.weight_loader(col.weight, w)
    col.bias.weight_loader(col.bias, b)
    col.quant_method.process_weights_after_loading(col)
    out, bias = col(x)
    row = RowParallelLinear(6, 2, bias=False, return_bias=False)
    row.weight.weight_loader(row.weight, seeded(2, 6, seed=3))
    row.quant_method.process_weights_after_loading(row)
    y = row(out)
    return [close(out, x @ w.T), close(bias, b), list(y.shape), row.bias is None]


def linear_fused_shards() -> list[Any]:
    """MergedColumnParallelLinear and QKVParallelLinear: each shard id loads into its rows of
    the fused weight; the head counts."""
    import torch
    from vllm.model_executor.layers.linear import MergedColumnParallelLinear, QKVParallelLinear

    merged = MergedColumnParallelLinear(4, [3, 5], bias=False)
    g, u = seeded(3, 4), seeded(5, 4, seed=1)
    merged.weight.weight_loader(merged.weight, g, 0)
    merged.weight.weight_loader(merged.weight, u, 1)
    qkv = QKVParallelLinear(8, 2, 4, 2, bias=False)
    q, k, v = seeded(8, 8), seeded(4, 8, seed=1), seeded(4, 8, seed=2)
    for shard, t in (("q", q), ("k", k), ("v", v)):
        qkv.weight.weight_loader(qkv.weight, t, shard)
    return [
        list(merged.weight.shape),
        close(merged.weight, torch.cat([g, u])),
        list(qkv.weight.shape),
        close(qkv.weight, torch.cat([q, k, v])),
        qkv.num_heads,
        qkv.num_kv_heads,
    ]


def vocab_padded() -> list[Any]:
    """VocabParallelEmbedding pads the vocabulary (zero rows) and looks ids up; a
    ParallelLMHead refuses to be called as an embedding."""
    import torch
    from vllm.model_executor.layers.vocab_parallel_embedding import (
        ParallelLMHead,
        VocabParallelEmbedding,
        pad_vocab_size,
    )

    emb = VocabParallelEmbedding(100, 8)
    w = seeded(100, 8)
    emb.weight.weight_loader(emb.weight, w)
    ids = torch.tensor([0, 5, 99])
    head = ParallelLMHead(100, 8)
    refused = error_type(lambda: head(ids), RuntimeError)
    return [
        list(emb.weight.shape),
        close(emb(ids), w[ids]),
        float(emb.weight[100:].abs().sum()),
        pad_vocab_size(100),
        refused,
        emb.org_vocab_size,
        emb.num_embeddings_padded,
    ]


def logits_processor() -> list[Any]:
    """LogitsProcessor: the head's logits with soft cap and scale applied, the padding cut
    off, and plain logits without either."""
    import torch
    from vllm.model_executor.layers.logits_processor import LogitsProcessor
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

    head = ParallelLMHead(100, 8)
    w = seeded(100, 8)
    head.weight.weight_loader(head.weight, w)
    head.quant_method.process_weights_after_loading(head)
    h = seeded(3, 8, seed=1)
    logits = LogitsProcessor(100, soft_cap=5.0, scale=0.5)(head, h)
    expected = torch.tanh((h @ w.T) / 5.0) * 5.0 * 0.5
    plain = LogitsProcessor(100)(head, h)
    return [list(logits.shape), close(logits, expected), close(plain, h @ w.T)]


def quantization_registry() -> list[Any]:
    """register_quantization_config / get_quantization_config: a registered config is found
    and listed; a non-config class and an unknown name are refused; the key helpers."""
    from vllm.model_executor.layers.quantization import (
        QUANTIZATION_METHODS,
        get_quantization_config,
        register_quantization_config,
    )
    from vllm.model_executor.layers.quantization.base_config import QuantizationConfig

    @register_quantization_config("h4_surface_quant")
    class MyQuant(QuantizationConfig):
        pass

    bad = error_type(lambda: register_quantization_config("h4_not_a_config")(int), ValueError)
    unknown = error_type(lambda: get_quantization_config("h4_never_registered"), ValueError)
    return [
        get_quantization_config("h4_surface_quant") is MyQuant,
        "h4_surface_quant" in QUANTIZATION_METHODS,
        bad,
        unknown,
        QuantizationConfig.get_from_keys({"b": 2}, ["a", "b"]),
        QuantizationConfig.get_from_keys_or({}, ["a"], 7),
    ]


def model_loader_registry() -> list[Any]:
    """register_model_loader / get_model_loader: a load format picks the registered loader,
    which keeps the load config; a non-loader class is refused."""
    from vllm.config import LoadConfig
    from vllm.model_executor.model_loader import get_model_loader, register_model_loader
    from vllm.model_executor.model_loader.base_loader import BaseModelLoader

    @register_model_loader("h4_surface_format")
    class MyLoader(BaseModelLoader):
        def download_model(self, model_config: Any) -> None:
            pass

        def load_weights(self, model: Any, model_config: Any) -> None:
            pass

    loader = get_model_loader(LoadConfig(load_format="h4_surface_format"))
    bad = error_type(lambda: register_model_loader("h4_bad")(int), ValueError)
    return [type(loader).__name__, loader.load_config.load_format, bad]


def weight_utils() -> list[Any]:
    """default_weight_loader copies the tensor; set_weight_attrs sets an attribute once and
    refuses to overwrite it."""
    import torch
    from vllm.model_executor.model_loader.weight_utils import default_weight_loader
    from vllm.model_executor.utils import set_weight_attrs

    p = torch.nn.Parameter(torch.zeros(2, 3), requires_grad=False)
    default_weight_loader(p, torch.ones(2, 3))
    set_weight_attrs(p, {"output_dim": 0})
    again = error_type(lambda: set_weight_attrs(p, {"output_dim": 1}), AssertionError)
    return [float(p.sum()), p.output_dim, again]


def torch_utils() -> list[Any]:
    """direct_register_custom_op makes `torch.ops.vllm.<name>` callable; the default-dtype
    context restores the dtype; the KV-cache dtype of "auto" and of "fp8"."""
    import torch
    from vllm.utils.torch_utils import (
        direct_register_custom_op,
        get_kv_cache_torch_dtype,
        set_default_torch_dtype,
    )

    def h4_scaled_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + 2 * y

    # The op's schema is inferred from the annotations, which this module's
    # `from __future__ import annotations` leaves as strings naming a local `torch`.
    h4_scaled_add.__annotations__ = {"x": torch.Tensor, "y": torch.Tensor, "return": torch.Tensor}
    direct_register_custom_op(
        "h4_scaled_add", h4_scaled_add, fake_impl=lambda x, y: torch.empty_like(x)
    )
    out = torch.ops.vllm.h4_scaled_add(torch.ones(3), torch.ones(3))
    with set_default_torch_dtype(torch.bfloat16):
        inside = str(torch.get_default_dtype())
    return [
        out.tolist(),
        inside,
        str(torch.get_default_dtype()),
        str(get_kv_cache_torch_dtype("auto", "bfloat16")),
        str(get_kv_cache_torch_dtype("fp8", torch.float16)),
    ]


def mamba_state() -> list[Any]:
    """MambaStateShapeCalculator's shapes for each state kind and MambaStateDtypeCalculator's
    dtypes (tuples read as JSON lists)."""
    import torch
    from vllm.model_executor.layers.mamba.mamba_utils import MambaStateDtypeCalculator as D
    from vllm.model_executor.layers.mamba.mamba_utils import MambaStateShapeCalculator as S

    value = [
        S.mamba1_state_shape(1, 64, 16, 4),
        S.mamba2_state_shape(1, 128, 1, 4, 32, 16, 4),
        S.mamba2_state_shape(2, 128, 1, 4, 32, 16, 4, num_spec=2),
        S.short_conv_state_shape(1, 32, 3),
        S.gated_delta_net_state_shape(1, 2, 4, 8, 16, 4),
        S.kda_state_shape(1, 2, 8),
        S.linear_attention_state_shape(4, 2, 8),
        [str(t) for t in D.mamba2_state_dtype("bfloat16", "auto", "float32")],
        [str(t) for t in D.kda_state_dtype(torch.float16, "auto")],
    ]
    return json.loads(json.dumps(value))


def distributed_one_rank() -> list[Any]:
    """The one-rank world of `setup`: sizes, ranks, first/last pipeline rank, collectives that
    return their input, `divide`, and that model parallelism is initialized."""
    import vllm.distributed as dist
    from vllm.distributed import parallel_state

    t = seeded(2, 3)
    pp = parallel_state.get_pp_group()
    return [
        dist.get_tensor_model_parallel_world_size(),
        dist.get_tensor_model_parallel_rank(),
        pp.world_size,
        pp.rank_in_group,
        pp.is_first_rank,
        pp.is_last_rank,
        close(dist.tensor_model_parallel_all_reduce(t), t),
        close(dist.tensor_model_parallel_all_gather(t), t),
        dist.divide(12, 4),
        dist.model_parallel_is_initialized(),
    ]


def forward_context() -> list[Any]:
    """set_forward_context: no context before (get refuses), the attention metadata inside,
    none after."""
    from vllm.config import VllmConfig
    from vllm.forward_context import (
        get_forward_context,
        is_forward_context_available,
        set_forward_context,
    )

    before = is_forward_context_available()
    outside = error_type(get_forward_context, AssertionError)
    with set_forward_context({"layer": "meta"}, VllmConfig()):
        inside = [is_forward_context_available(), get_forward_context().attn_metadata]
    return [before, outside, inside, is_forward_context_available()]


def reasoning_registry() -> list[Any]:
    """ReasoningParserManager: registering records the class lazily (module, name) and finds
    it again, under several names too; a duplicate without force and an unknown name are
    refused; a parser's vocab and helpers."""
    from vllm.reasoning import ReasoningParser
    from vllm.reasoning import ReasoningParserManager as M

    @M.register_module("h4-think")
    @publish
    class Think(ReasoningParser):
        def is_reasoning_end(self, input_ids: list[int]) -> bool:
            return 2 in input_ids

        def extract_content_ids(self, input_ids: list[int]) -> list[int]:
            return input_ids[input_ids.index(2) + 1 :]

        def extract_reasoning(self, model_output: str, request: Any) -> Any:
            return model_output.partition("</think>")[::2]

        def extract_reasoning_streaming(self, *args: Any) -> None:
            return None

    lazy = M.lazy_parsers.get("h4-think")
    found = M.get_reasoning_parser("h4-think")
    M.register_module(["h4-a", "h4-b"], module=Think)
    dup = error_type(lambda: M.register_module("h4-a", force=False, module=Think), KeyError)
    missing = error_type(lambda: M.get_reasoning_parser("h4-missing"), KeyError)

    class Tok:
        def get_vocab(self) -> dict[str, int]:
            return {"a": 1}

    parser = found(Tok())
    return [
        found is Think,
        lazy == (Think.__module__, "Think"),
        M.get_reasoning_parser("h4-b") is Think,
        dup,
        missing,
        parser.vocab,
        parser.extract_content_ids([1, 2, 3]),
        list(parser.extract_reasoning("abc</think>xyz", None)),
        parser.is_reasoning_end_streaming([1, 2], [2]),
    ]


def interfaces() -> list[Any]:
    """The model interface predicates: supports_pp needs `intermediate_tensors` in forward;
    LoRA, inner-state, hybrid and multimodal flags; LoRA's default mappings."""
    import torch
    from vllm.model_executor.models.interfaces import (
        HasInnerState,
        IsHybrid,
        SupportsLoRA,
        SupportsMultiModal,
        SupportsPP,
        has_inner_state,
        is_hybrid,
        supports_lora,
        supports_multimodal,
        supports_pp,
    )

    class PP(torch.nn.Module, SupportsPP):
        def forward(self, input_ids: Any, positions: Any, intermediate_tensors: Any = None) -> Any:
            return input_ids

    class NoTensors(torch.nn.Module, SupportsPP):
        def forward(self, input_ids: Any, positions: Any) -> Any:
            return input_ids

    class Lora(torch.nn.Module, SupportsLoRA):
        pass

    class Hybrid(torch.nn.Module, HasInnerState, IsHybrid):
        pass

    return [
        supports_pp(PP),
        supports_pp(NoTensors),
        supports_lora(Lora),
        supports_lora(PP),
        bool(has_inner_state(Hybrid)),
        bool(is_hybrid(Hybrid)),
        bool(supports_multimodal(Lora)),
        SupportsMultiModal.supports_multimodal,
        Lora.packed_modules_mapping,
        Lora.embedding_modules,
    ]


def models_utils() -> list[Any]:
    """AutoWeightsLoader with a WeightsMapper loads a small model (tied head, rotary buffers
    skipped) and refuses an unknown weight; make_layers, extract_layer_index,
    is_pp_missing_parameter, PPMissingLayer and the empty intermediate tensors factory."""
    import torch
    from vllm.model_executor.layers.linear import ReplicatedLinear
    from vllm.model_executor.layers.vocab_parallel_embedding import (
        ParallelLMHead,
        VocabParallelEmbedding,
    )
    from vllm.model_executor.models.utils import (
        AutoWeightsLoader,
        PPMissingLayer,
        WeightsMapper,
        extract_layer_index,
        is_pp_missing_parameter,
        make_empty_intermediate_tensors_factory,
        make_layers,
    )

    class Block(torch.nn.Module):
        def __init__(self, prefix: str = "") -> None:
            super().__init__()
            self.proj = ReplicatedLinear(4, 4, bias=False)
            self.norm = torch.nn.LayerNorm(4)

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed_tokens = VocabParallelEmbedding(64, 4)
            self.start, self.end, self.layers = make_layers(2, Block, "model.layers")
            self.lm_head = ParallelLMHead(64, 4)
            self.lm_head.tie_weights(self.embed_tokens)

    model = Model()
    weights = [
        ("model.embed_tokens.weight", seeded(64, 4)),
        ("model.layers.0.proj.weight", seeded(4, 4, seed=1)),
        ("model.layers.0.norm.weight", torch.ones(4)),
        ("model.layers.0.norm.bias", torch.zeros(4)),
        ("model.layers.1.proj.weight", seeded(4, 4, seed=2)),
        ("model.layers.1.norm.weight", torch.ones(4)),
        ("model.layers.1.rotary_emb.inv_freq", torch.ones(2)),
        ("lm_head.weight", seeded(64, 4, seed=3)),
    ]
    mapper = WeightsMapper(orig_to_new_prefix={"model.": ""})
    loaded = AutoWeightsLoader(model).load_weights(weights, mapper=mapper)
    unknown = error_type(
        lambda: AutoWeightsLoader(model).load_weights([("nowhere.weight", torch.ones(1))]),
        ValueError,
    )
    factory = make_empty_intermediate_tensors_factory(["hidden_states"], 4)
    empty = factory(2, torch.float32, torch.device("cpu"))
    return [
        sorted(loaded),
        close(model.layers[1].proj.weight, seeded(4, 4, seed=2)),
        model.lm_head.weight is model.embed_tokens.weight,
        unknown,
        [model.start, model.end],
        extract_layer_index("model.layers.3.self_attn"),
        is_pp_missing_parameter("layers.0.proj.weight", model),
        PPMissingLayer()(7),
        list(empty["hidden_states"].shape),
    ]


def logging_config() -> list[Any]:
    """vllm.logger.DEFAULT_LOGGING_CONFIG as plugins extend it (sendnn-inference copies its
    vllm formatter, handler and logger for its own logger): its shape, and that dictConfig
    accepts the copy; NewLineFormatter repeats the header on each line of a message."""
    import copy
    import logging
    import logging.config

    from vllm.logger import DEFAULT_LOGGING_CONFIG, logger
    from vllm.logging_utils import NewLineFormatter

    config = copy.deepcopy(DEFAULT_LOGGING_CONFIG)
    shape = [
        sorted(config),
        sorted(config["formatters"]),
        sorted(config["handlers"]),
        config["handlers"]["vllm"]["class"],
        config["loggers"]["vllm"]["propagate"],
        config["version"],
        config["disable_existing_loggers"],
    ]
    config["formatters"]["h4_plugin"] = config["formatters"]["vllm"]
    config["handlers"]["h4_plugin"] = {**config["handlers"]["vllm"], "formatter": "h4_plugin"}
    config["loggers"]["h4_plugin"] = {**config["loggers"]["vllm"], "handlers": ["h4_plugin"]}
    config["handlers"]["h4_plugin"]["stream"] = "ext://sys.stderr"
    logging.config.dictConfig(config)
    formatter = NewLineFormatter("%(levelname)s [%(filename)s] %(message)s", log_level="INFO")
    record = logging.LogRecord("x", logging.WARNING, "/a/b.py", 1, "one\ntwo", None, None)
    lines = formatter.format(record).split("\r\n")
    return [*shape, logger.name, lines]


def intermediate_tensors() -> list[Any]:
    """IntermediateTensors: length, slicing, item assignment, items and equality."""
    import torch
    from vllm.sequence import IntermediateTensors

    a = IntermediateTensors({"hidden_states": torch.arange(6.0).reshape(3, 2)})
    b = a[1:]
    a["residual"] = torch.zeros(3, 2)
    return [
        len(a),
        list(b["hidden_states"].shape),
        sorted(k for k, _ in a.items()),
        a == IntermediateTensors(dict(a.tensors)),
        a == b,
    ]


def math_utils() -> list[Any]:
    """cdiv, next_power_of_2, round_up/round_down and largest_power_of_2_divisor on small
    integers (0 and exact multiples included)."""
    from vllm.utils.math_utils import (
        cdiv,
        largest_power_of_2_divisor,
        next_power_of_2,
        round_down,
        round_up,
    )

    return [
        cdiv(7, 2),
        cdiv(8, 2),
        next_power_of_2(0),
        next_power_of_2(17),
        round_up(17, 16),
        round_down(17, 16),
        largest_power_of_2_divisor(24),
    ]


def tool_parser_registry() -> list[Any]:
    """ToolParserManager: the decorator records the class lazily and finds it, the call form
    registers it under several names, register_lazy_module defers the import; a duplicate
    without force, a class that is no ToolParser (eager or lazy) and an unknown name are
    refused."""
    from vllm.tool_parsers import ToolParser
    from vllm.tool_parsers import ToolParserManager as M

    @M.register_module("h2-calls")
    @publish
    class Calls(ToolParser):
        def extract_tool_calls(self, model_output: str, request: Any) -> Any:
            return model_output.count("<call>")

    @publish
    class NotAParser:
        pass

    lazy = M.lazy_parsers.get("h2-calls")
    found = M.get_tool_parser("h2-calls")
    M.register_module(["h2-a", "h2-b"], module=Calls)
    M.register_lazy_module("h2-lazy", Calls.__module__, "Calls")
    M.register_lazy_module("h2-wrong", NotAParser.__module__, "NotAParser")
    return [
        found is Calls,
        lazy == (Calls.__module__, "Calls"),
        M.get_tool_parser("h2-b") is Calls,
        "h2-lazy" in M.tool_parsers,
        M.get_tool_parser("h2-lazy") is Calls,
        "h2-lazy" in M.tool_parsers,
        error_type(lambda: M.register_module("h2-a", force=False, module=Calls), KeyError),
        error_type(lambda: M.register_module("h2-c", module=NotAParser), TypeError),  # type: ignore[arg-type]
        error_type(lambda: M.register_module("h2-d", force="yes"), TypeError),  # type: ignore[arg-type]
        error_type(lambda: M.get_tool_parser("h2-wrong"), TypeError),
        error_type(lambda: M.get_tool_parser("h2-missing"), KeyError),
        {"h2-calls", "h2-a", "h2-b", "h2-lazy"} <= set(M.list_registered()),
        found("tok").extract_tool_calls("<call><call>", None),
    ]


def tool_parser_base() -> list[Any]:
    """ToolParser: its state after construction, its vocab, the unstreamed rest of the last
    call's arguments, the extractors a subclass must implement, a structural-tag parser
    opting out of forced JSON calls, and adjust_request leaving a request without tools."""
    import types

    from vllm.tool_parsers import ToolParser

    class Tok:
        def get_vocab(self) -> dict[str, int]:
            return {"a": 1}

    class Plain(ToolParser):
        pass

    class Tagged(ToolParser):
        structural_tag_model = "h2-model"

    parser = Plain(Tok())
    state = [
        parser.prev_tool_call_arr,
        parser.current_tool_id,
        parser.current_tool_name_sent,
        parser.streamed_args_for_tool,
        parser.tools,
        parser.vocab,
    ]
    parser.prev_tool_call_arr = [{"name": "f", "arguments": {"x": 1, "y": "é"}}]
    parser.streamed_args_for_tool = ['{"x": 1']
    rest = parser.get_remaining_unstreamed_args()
    parser.streamed_args_for_tool = ["zzz"]
    diverged = parser.get_remaining_unstreamed_args()
    request = types.SimpleNamespace(tools=None)
    return [
        *state,
        rest,
        diverged,
        error_type(lambda: parser.extract_tool_calls("x", None), NotImplementedError),
        error_type(
            lambda: parser.extract_tool_calls_streaming("", "", "", [], [], [], None),
            NotImplementedError,
        ),
        Plain.supports_required_and_named,
        Tagged.supports_required_and_named,
        parser.adjust_request(request) is request,
    ]


def tool_parser_helpers() -> list[Any]:
    """partial_tag_overlap, find_common_prefix/suffix and extract_intermediate_diff on tags
    and partial JSON; find_tool_name and find_tool_properties without tools."""
    from vllm.tool_parsers.utils import (
        extract_intermediate_diff,
        find_common_prefix,
        find_common_suffix,
        find_tool_name,
        find_tool_properties,
        partial_tag_overlap,
    )

    return [
        partial_tag_overlap("abc<tool_", "<tool_call>"),
        partial_tag_overlap("abc", "<tool_call>"),
        partial_tag_overlap("x<tool_call>", "<tool_call>"),
        partial_tag_overlap("x", ""),
        find_common_prefix('{"fruit": "ap"}', '{"fruit": "apple"}'),
        find_common_suffix('{"fruit": "ap"}', '{"fruit": "apple"}'),
        extract_intermediate_diff('{"fruit": "apple"}', '{"fruit": "ap"}'),
        extract_intermediate_diff('{"a": 1, "b": "xy"}', '{"a": 1}'),
        extract_intermediate_diff('{"a": [1, 2]}', '{"a": [1]}'),
        find_tool_name(None, "f"),
        find_tool_name([], "f"),
        find_tool_properties(None, "f"),
    ]


def config_registry() -> list[Any]:
    """_CONFIG_REGISTRY as a model plugin fills it: a config class registered by model_type
    is found again (item, `in`, get), an unknown type is a KeyError; a LazyConfigDict of
    classes returns them."""
    from vllm.transformers_utils.config import _CONFIG_REGISTRY as registry
    from vllm.transformers_utils.config import LazyConfigDict

    class H2Config:
        model_type = "h2_model"

    registry["h2_model"] = H2Config
    own = LazyConfigDict(h2_lazy=H2Config)
    return [
        registry["h2_model"] is H2Config,
        "h2_model" in registry,
        registry.get("h2_model") is H2Config,
        isinstance(registry, dict),
        type(registry).__name__,
        error_type(lambda: registry["h2-unknown"], KeyError),
        own["h2_lazy"] is H2Config,
    ]


def flexible_argument_parser() -> list[Any]:
    """FlexibleArgumentParser as a plugin subclasses it: underscores for dashes, dotted JSON
    options merged (`+` lists, human-readable numbers), -O3, a YAML --config that the command
    line overrides, a deprecated argument in a group, check_port and human_readable_int."""
    import argparse
    import json
    import os
    import tempfile

    from vllm.utils.argparse_utils import FlexibleArgumentParser, human_readable_int

    class PluginParser(FlexibleArgumentParser):
        pass

    parser = PluginParser(prog="h2")
    parser.add_argument("--max-num-seqs", type=int, default=1)
    parser.add_argument("--compilation-config", type=json.loads, default=None)
    parser.add_argument("--optimization-level", default=None)
    parser.add_argument("--port", type=parser.check_port, default=8000)
    parser.add_argument("--enforce-eager", action="store_true")
    group = parser.add_argument_group("h2 options")
    group.add_argument("--old-flag", type=int, default=0, deprecated=True)
    flexible = parser.parse_args(
        [
            "--max_num_seqs",
            "4",
            "--compilation-config.level",
            "3",
            "--compilation-config.sizes+",
            "1,2",
            "--compilation_config.cache=2k",
            "-O3",
            "--old_flag=2",
        ]
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "h2.yaml")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("max-num-seqs: 8\nenforce-eager: true\nport: 9000\n")
        from_file = parser.parse_args(["--config", path, "--max-num-seqs", "5"])
    return [
        sorted(vars(flexible).items()),
        sorted(vars(from_file).items()),
        error_type(lambda: parser.check_port("80"), argparse.ArgumentTypeError),
        human_readable_int("25.6k"),
        human_readable_int("1K"),
        error_type(lambda: human_readable_int("1.5K"), argparse.ArgumentTypeError),
    ]


def _sampling_metadata(rows: int, **fields: Any) -> Any:
    """A greedy `SamplingMetadata` for `rows` rows without penalties, with `fields` changed."""
    import torch
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.metadata import SamplingMetadata

    values: dict[str, Any] = {
        "temperature": torch.zeros(rows),
        "all_greedy": True,
        "all_random": False,
        "top_p": None,
        "top_k": None,
        "generators": {},
        "max_num_logprobs": None,
        "no_penalties": True,
        "prompt_token_ids": None,
        "frequency_penalties": torch.zeros(rows),
        "presence_penalties": torch.zeros(rows),
        "repetition_penalties": torch.ones(rows),
        "output_token_ids": [[] for _ in range(rows)],
        "allowed_token_ids_mask": None,
        "bad_words_token_ids": {},
        "logitsprocs": LogitsProcessors(),
    }
    values.update(fields)
    return SamplingMetadata(**values)


def v1_sampler() -> list[Any]:
    """Sampler: greedy ids as [n, 1] int32, logprobs (sampled token first, its rank), the
    allowed-token mask, bad words, penalties, top-k 1 and greedy rows in a random batch."""
    import torch
    from vllm.v1.sample.sampler import Sampler

    logits = seeded(3, 12)
    top = logits.argmax(-1)
    sampler = Sampler()

    def ids(**fields: Any) -> list[int]:
        out = sampler(logits.clone(), _sampling_metadata(3, **fields))
        return out.sampled_token_ids.view(-1).tolist()

    greedy = sampler(logits.clone(), _sampling_metadata(3))
    with_logprobs = sampler(logits.clone(), _sampling_metadata(3, max_num_logprobs=2))
    lp = with_logprobs.logprobs_tensors
    mask = torch.zeros(3, 12, dtype=torch.bool)
    mask[0, int(top[0])] = True
    prompts = torch.tensor([[int(top[0]), 12], [12, 12], [12, 12]])
    generators = {i: torch.Generator().manual_seed(i) for i in range(3)}
    return [
        list(greedy.sampled_token_ids.shape),
        str(greedy.sampled_token_ids.dtype),
        greedy.sampled_token_ids.view(-1).tolist() == top.tolist(),
        greedy.logprobs_tensors,
        lp.logprob_token_ids.tolist(),
        str(lp.logprob_token_ids.dtype),
        [round(v, 4) for v in lp.logprobs.view(-1).tolist()],
        lp.selected_token_ranks.tolist(),
        ids(allowed_token_ids_mask=mask)[0] != int(top[0]),
        ids(bad_words_token_ids={1: [[int(top[1])], [99, 5]]})[1] != int(top[1]),
        ids(
            no_penalties=False,
            prompt_token_ids=prompts,
            repetition_penalties=torch.full((3,), 50.0),
        )[0]
        != int(top[0]),
        ids(
            temperature=torch.tensor([1.0, 0.0, 0.7]),
            all_greedy=False,
            top_k=torch.tensor([1, 12, 1]),
            generators=generators,
        )
        == top.tolist(),
    ]


def ec_transfer_one_instance() -> list[Any]:
    """EC transfer without a config: nothing initialised, the factory's names and its
    refusals, the connector's abstract methods and roles."""
    from vllm.config import VllmConfig
    from vllm.distributed.ec_transfer import (
        ensure_ec_transfer_initialized,
        ensure_ec_transfer_shutdown,
        get_ec_transfer,
        has_ec_transfer,
    )
    from vllm.distributed.ec_transfer.ec_connector.base import ECConnectorBase, ECConnectorRole
    from vllm.distributed.ec_transfer.ec_connector.factory import ECConnectorFactory

    config = VllmConfig()
    ensure_ec_transfer_initialized(config)
    ensure_ec_transfer_shutdown()
    ECConnectorFactory.register_connector("RowConnector", "row_connector", "RowConnector")

    class Minimal(ECConnectorBase):
        def start_load_caches(self, encoder_cache, **kwargs): ...
        def save_caches(self, encoder_cache, mm_hash, **kwargs): ...
        def has_cache_item(self, identifier):
            return False

        def update_state_after_alloc(self, request, index): ...
        def build_connector_meta(self, scheduler_output): ...

    return [
        has_ec_transfer(),
        config.ec_transfer_config,
        error_type(get_ec_transfer, AssertionError),
        error_type(
            lambda: ECConnectorFactory.register_connector("RowConnector", "m", "C"), ValueError
        ),
        sorted(
            n
            for n in ("ECExampleConnector", "ECCPUConnector", "ECMooncakeConnector")
            if n in ECConnectorFactory._registry
        ),
        sorted(ECConnectorBase.__abstractmethods__),
        [(role.name, role.value) for role in ECConnectorRole],
        error_type(lambda: Minimal(config, ECConnectorRole.WORKER), ValueError),
        error_type(
            lambda: ECConnectorFactory.create_connector(config, ECConnectorRole.WORKER), ValueError
        ),
    ]


#: The behaviour rows, by row id (the ids of docs/fidelity-surface.md).
def llm_engine_class() -> list[Any]:
    """LLMEngine as a plugin wraps it: `from_engine_args` is a class method with vLLM's
    parameters, and `LLM.__init__` builds its engine through it (its source calls it by the
    class), so a wrapper installed by a general plugin sees every offline engine start."""
    import inspect

    from vllm import LLM
    from vllm.v1.engine.llm_engine import LLMEngine

    return [
        isinstance(vars(LLMEngine)["from_engine_args"], classmethod),
        list(inspect.signature(LLMEngine.from_engine_args).parameters),
        "LLMEngine.from_engine_args(" in inspect.getsource(LLM.__init__),
    ]


BEHAVIOUR: dict[str, Callable[[], Any]] = {
    "linear.replicated-computes-xWt+b": linear_replicated,
    "linear.skip-bias-add-and-return-bias": linear_skip_bias_add,
    "linear.fused-shards-load-into-their-rows": linear_fused_shards,
    "vocab.padded-embedding-and-lm-head": vocab_padded,
    "logits.head-softcap-scale-and-unpadding": logits_processor,
    "quantization.register-and-look-up": quantization_registry,
    "model-loader.register-and-get": model_loader_registry,
    "weights.default-loader-and-attrs": weight_utils,
    "torch-utils.custom-op-and-dtypes": torch_utils,
    "mamba.state-shapes-and-dtypes": mamba_state,
    "distributed.one-rank-world": distributed_one_rank,
    "forward-context.set-and-get": forward_context,
    "reasoning.register-and-look-up": reasoning_registry,
    "interfaces.flags-and-predicates": interfaces,
    "models-utils.auto-weights-loader-and-layers": models_utils,
    "sequence.intermediate-tensors": intermediate_tensors,
    "math-utils.rounding": math_utils,
    "logging.default-config-and-formatter": logging_config,
    "tool-parsers.register-and-look-up": tool_parser_registry,
    "tool-parsers.base-class": tool_parser_base,
    "tool-parsers.string-and-tool-helpers": tool_parser_helpers,
    "transformers-utils.config-registry": config_registry,
    "argparse.flexible-argument-parser": flexible_argument_parser,
    "sampler.v1-greedy-logprobs-and-processing": v1_sampler,
    "ec-transfer.one-instance-without-config": ec_transfer_one_instance,
    "llm-engine.from-engine-args-is-what-llm-calls": llm_engine_class,
}


def row_ids() -> list[str]:
    """Every row id: the `import:` rows, then the behaviour rows."""
    return [f"import:{m}" for m in MODULE_NAMES] + list(BEHAVIOUR)


def row_doc(row_id: str) -> str:
    """What a row observes: the first line of its function's docstring."""
    if row_id.startswith("import:"):
        return f"which of the reference's names `{row_id.removeprefix('import:')}` has"
    return (BEHAVIOUR[row_id].__doc__ or "").strip().split("\n")[0]


def run_row(row_id: str) -> Any:
    """One row's value (raises what the row raised)."""
    if row_id.startswith("import:"):
        return import_row(row_id.removeprefix("import:"))
    return BEHAVIOUR[row_id]()


def _failure(exc: BaseException) -> str:
    return f"error: {type(exc).__name__}: {str(exc)[:300]}"


def run_rows(ids: Iterable[str]) -> dict[str, Any]:
    """The value of each row in `ids`, after `setup`, in this process; a row that raised, or
    whose value is not JSON, reads `error: Type: message`; a failed setup reads as the
    `(setup)` row and every row still runs."""
    results: dict[str, Any] = {}
    try:
        setup()
    except Exception as exc:
        results["(setup)"] = _failure(exc)
    for row_id in ids:
        try:
            value = run_row(row_id)
            json.dumps(value)
            results[row_id] = value
        except Exception as exc:
            results[row_id] = _failure(exc)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("reference", "vllm"), default="vllm")
    parser.add_argument("rows", nargs="*", help="row ids (default: every row)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.rows) - set(row_ids()))
    if unknown:
        parser.error(f"unknown row ids: {', '.join(unknown)}")
    if args.engine == "reference":
        from reference._version import CONTRACT_ENV
        from reference.surface import mount

        # The rows stand beside vLLM 0.32: model that release unless one is chosen (its
        # V1 sampler modules are gone from the 0.34 contract, the reference's default).
        os.environ.setdefault(CONTRACT_ENV, "0.32.0")
        mount()
    print(MARKER + json.dumps(run_rows(args.rows or row_ids())), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
