"""The engine on a CUDA device: the CUDA platform, a GPU worker, and transformers' greedy output."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

from fixtures.generators.checkpoint import tiny_llama  # noqa: E402
from reference.engine.llm import LLM  # noqa: E402
from reference.sampling_params import SamplingParams  # noqa: E402


def test_the_engine_runs_on_cuda_and_matches_transformers_greedy():
    import transformers

    model_dir = str(tiny_llama())
    llm = LLM(model=model_dir)
    try:
        model = llm.collective_rpc("get_model")[0]
        assert next(model.parameters()).device.type == "cuda", "the model must live on the GPU"
        worker_cls = llm.vllm_config.parallel_config.worker_cls
        assert worker_cls.endswith("GPUWorker"), worker_cls
        ids = [1, 70, 80, 90, 100]
        out = llm.generate({"prompt_token_ids": ids}, SamplingParams(max_tokens=12, temperature=0))
    finally:
        llm.shutdown()
    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir).to("cuda")
    ref = hf.generate(
        torch.tensor([ids], device="cuda"),
        max_new_tokens=12,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    assert out[0].outputs[0].token_ids == ref[0, len(ids) :].tolist()
