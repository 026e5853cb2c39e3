"""`AsyncLLM` in process: streamed cumulative outputs, pooling, abort, and LLM parity."""

from __future__ import annotations

import asyncio

import pytest

torch = pytest.importorskip("torch")

from fixtures.generators.checkpoint import tiny_llama, with_architecture  # noqa: E402
from reference.engine.args import AsyncEngineArgs  # noqa: E402
from reference.engine.async_llm import AsyncLLM  # noqa: E402
from reference.engine.llm import LLM  # noqa: E402
from reference.sampling_params import SamplingParams  # noqa: E402


def test_async_generate_streams_and_matches_llm():
    model = str(tiny_llama())
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    llm = LLM(model=model)
    expected = llm.generate("Hello", params)[0].outputs[0].token_ids
    llm.shutdown()

    async def main():
        engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model=model, disable_log_stats=True))
        try:
            seen = [
                list(out.outputs[0].token_ids)
                async for out in engine.generate("Hello", params, request_id="x")
            ]
            # Closing the stream early (as a cancelled server request does) aborts the request.
            stream = engine.generate("Hello", params, request_id="y")
            await stream.__anext__()
            await stream.aclose()
            sched = engine.engine_core.scheduler
            left = [r.request_id for r in [*sched.running, *sched.waiting]]
            return seen, left
        finally:
            engine.shutdown()

    seen, left = asyncio.run(main())
    assert seen == [expected[:i] for i in range(1, 5)]
    assert not left


def test_async_encode_pools_and_n_above_one_is_refused():
    model = str(with_architecture(tiny_llama(), "LlamaModel"))

    async def main():
        engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model=model, disable_log_stats=True))
        try:
            outs = [out async for out in engine.encode({"prompt_token_ids": [1, 4, 5]})]
            return outs
        finally:
            engine.shutdown()

    (out,) = asyncio.run(main())
    assert out.finished and out.outputs.data.shape == (128,)
    assert float(out.outputs.data.norm()) == pytest.approx(1.0, abs=1e-5)
    llm = LLM(model=str(tiny_llama()))
    try:
        with pytest.raises(ValueError, match="n=2"):
            llm.generate("a", SamplingParams(n=2))
    finally:
        llm.shutdown()
