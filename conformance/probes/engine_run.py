"""Helpers for probes that build an engine and run a model (the `*.engine-run` checks)."""

from __future__ import annotations

import importlib.util
from typing import Any

#: What an engine run needs besides the engine: the model stack and the checkpoint generators.
ENGINE_RUN_DEPS = ("torch", "transformers", "safetensors", "tokenizers")

#: What every engine-run engine is built with. A KV cache of a given size: a tiny model needs
#: little, and with the size given real vLLM's CPU worker does not insist that 92% of the NUMA
#: node's memory be free at startup (it is not on a shared machine). Eager mode: real vLLM
#: starts in ~30 s instead of ~75 s without compiling (the reference is always eager).
SMALL_ENGINE: dict[str, Any] = {"kv_cache_memory_bytes": 64 << 20, "enforce_eager": True}
#: `SMALL_ENGINE` for two sequences of up to 128 tokens, with one worker in the engine core's
#: process (the uniprocess executor).
UNIPROCESS_ENGINE: dict[str, Any] = {
    "max_num_seqs": 2,
    "max_model_len": 128,
    "distributed_executor_backend": "uni",
    **SMALL_ENGINE,
}


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
