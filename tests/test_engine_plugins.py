"""The engine with plugins, each scenario in a probe: out-of-tree models, logits processors
(V2 and V1 interfaces), stat loggers in `AsyncLLM`, IO processors."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from conformance.overlay import Overlay  # noqa: E402
from conformance.probe import run_probe  # noqa: E402
from fixtures.generators.checkpoint import tiny_llama, tiny_opt, with_architecture  # noqa: E402
from reference._version import CONTRACT_ENV  # noqa: E402
from tests.conftest import code  # noqa: E402

TIMEOUT = 180


def _run(src: str, overlay: Overlay | None = None, env: dict | None = None):
    result = run_probe(code(src), overlay=overlay, env=env, timeout=TIMEOUT)
    assert result.ok, result.describe()
    return result.values


def test_dummy_opt_plugin_model_always_emits_token_0(tmp_path):
    model = with_architecture(tiny_opt(), "MyOPTForCausalLM")
    values = _run(
        f"""
        from vllm import LLM, SamplingParams
        llm = LLM(model={str(model)!r})
        outs = llm.generate(["Hello", "abc"], SamplingParams(max_tokens=5, temperature=0))
        probe.result["ids"] = [o.outputs[0].token_ids for o in outs]
        """,
        Overlay(tmp_path / "o").add_fixture("vllm_add_dummy_model"),
    )
    assert values["ids"] == [[0] * 5, [0] * 5]


def test_dummy_embedding_plugin_model_gives_zero_embeddings(tmp_path):
    model = with_architecture(tiny_llama(), "MyLlamaEmbedding")
    values = _run(
        f"""
        from vllm import LLM, PoolingParams
        llm = LLM(model={str(model)!r})
        prompts = ["Hello", {{"prompt_token_ids": [1, 5, 6]}}]
        probe.result["runner"] = llm.vllm_config.model_config.runner_type
        probe.result["emb"] = [o.outputs.data.tolist() for o in llm.encode(prompts)]
        tokens = llm.encode(prompts, PoolingParams(task="token_embed"))
        probe.result["token_emb"] = [o.outputs.data.tolist() for o in tokens]
        """,
        Overlay(tmp_path / "o").add_fixture("vllm_add_dummy_model"),
    )
    assert values["runner"] == "pooling"
    assert len(values["emb"]) == 2
    assert all(len(e) == 128 and not any(e) for e in values["emb"])
    # "token_embed": one zero vector per prompt token (BOS + 5 bytes; 3 ids).
    assert [len(t) for t in values["token_emb"]] == [6, 3]
    assert all(len(v) == 128 and not any(v) for t in values["token_emb"] for v in t)


_TARGET_SCENARIO = """
from vllm import LLM, SamplingParams
llm = LLM(model={model!r}, max_num_seqs=2{extra})
base = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
plain = llm.generate(["a", "bb"], base)
def asking(n):
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True,
                          extra_args={{"target_token": 7}})
# Four requests through two slots: requests finish and others join mid-flight.
params = [asking(2), base, asking(5), SamplingParams(max_tokens=3, temperature=0,
          ignore_eos=True)]
outs = llm.generate(["x", "a", "y", "bb"], params)
probe.result["ids"] = [o.outputs[0].token_ids for o in outs]
probe.result["plain"] = [o.outputs[0].token_ids for o in plain]
probe.result["v2"] = llm.vllm_config.use_v2_model_runner
try:
    llm.generate("x", SamplingParams(extra_args={{"target_token": "no"}}))
except ValueError as exc:
    probe.result["rejected"] = str(exc)
"""


def _check_target(values: dict, v2: bool) -> None:
    assert values["v2"] is v2
    ids, plain = values["ids"], values["plain"]
    assert ids[0] == [7, 7] and ids[2] == [7] * 5
    assert ids[1] == plain[0]
    assert ids[3] == plain[1][:3]
    assert 7 not in plain[0] or plain[0] != [7] * 4
    if v2:
        # As in vLLM 0.32: with no custom list, MRV2 validates nothing at admission.
        assert "rejected" not in values
    else:
        assert "not int" in values["rejected"]


def test_v2_logits_processor_plugin_forces_the_target_only_where_asked(tmp_path):
    model = str(tiny_llama())
    values = _run(
        _TARGET_SCENARIO.format(model=model, extra=""),
        Overlay(tmp_path / "o").add_fixture("dummy_logits_processor"),
        # The fixture supports vllm<0.34 (its V1 variant imports the V1 interface).
        env={"VLLM_USE_V2_MODEL_RUNNER": "1", CONTRACT_ENV: "0.33.0"},
    )
    _check_target(values, v2=True)


def test_v1_logits_processor_by_fqcn_forces_the_target_only_where_asked(tmp_path):
    from conformance.overlay import fixtures_root

    model = str(tiny_llama())
    # On the sys.path, not installed: the V2 entry point would fail under the V1 runner.
    source = str(fixtures_root() / "dummy_logits_processor")
    extra = ', logits_processors=["dummy_logits_processor:DummyLogitsProcessorV1"]'
    values = _run(
        f"import sys\nsys.path.insert(0, {source!r})\n"
        + _TARGET_SCENARIO.format(model=model, extra=extra),
        env={"VLLM_USE_V2_MODEL_RUNNER": "0", CONTRACT_ENV: "0.33.0"},
    )
    _check_target(values, v2=False)


def test_async_llm_feeds_the_stat_logger_plugin(tmp_path):
    model = str(tiny_llama())
    values = _run(
        f"""
        import asyncio
        from vllm import AsyncEngineArgs, SamplingParams
        from vllm.v1.engine.async_llm import AsyncLLM
        from dummy_stat_logger.dummy_stat_logger import DummyStatLogger

        async def main():
            engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model={model!r}))
            params = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)
            async def one(i, prompt):
                last = None
                async for out in engine.generate(prompt, params, request_id=f"r{{i}}"):
                    last = out
                return last.outputs[0].token_ids
            ids = await asyncio.gather(one(0, "a"), one(1, "bc"))
            engine.shutdown()
            return ids

        ids = asyncio.run(main())
        (logger,) = DummyStatLogger.instances
        probe.result["ids"] = ids
        probe.result["initialized"] = logger.initialized
        probe.result["records"] = [
            [type(s).__name__, type(i).__name__, i.num_generation_tokens, e, s.num_running_reqs]
            for s, i, _, e in logger.recorded
        ]
        """,
        Overlay(tmp_path / "o").add_fixture("vllm_add_dummy_stat_logger"),
    )
    assert values["initialized"] == 1
    records = values["records"]
    assert all(r[:2] == ["SchedulerStats", "IterationStats"] and r[3] == 0 for r in records)
    assert sum(r[2] for r in records) == 6  # 2 requests x 3 tokens
    assert len(records) == 3  # both requests decode together: one record per step
    assert [len(i) for i in values["ids"]] == [3, 3]


def test_io_processor_plugin_runs_parse_pre_model_post(tmp_path):
    from fixtures.generators.segmentation import tiny_segmentation

    model = str(tiny_segmentation())
    values = _run(
        f"""
        import base64
        from vllm import LLM
        from prithvi_io_processor.prithvi_processor import PrithviMultimodalDataProcessor as P
        llm = LLM(model={model!r})  # config.json names io_processor_plugin
        request = P.conformance_sample_request()
        out = llm.encode(request, pooling_task="plugin")
        probe.result["n"] = len(out)
        probe.result["keys"] = sorted(out[0].outputs)
        probe.result["tiff"] = len(base64.b64decode(out[0].outputs["data"])) > 0
        probe.result["processor"] = type(llm.io_processor).__name__
        """,
        Overlay(tmp_path / "o").add_fixture("prithvi_io_processor"),
    )
    assert values == {
        "n": 1,
        "keys": ["data", "format", "type"],
        "tiff": True,
        "processor": "PrithviMultimodalDataProcessor",
    }


def test_lora_requests_with_and_without_adapters_share_a_batch():
    from fixtures.generators.lora_adapter import tiny_llama_lora
    from reference.engine.llm import LLM
    from reference.lora.request import LoRARequest
    from reference.sampling_params import SamplingParams

    base = tiny_llama()
    adapter = LoRARequest("a", 1, str(tiny_llama_lora(base, seed=1)))
    other = LoRARequest("b", 2, str(tiny_llama_lora(base, seed=2)))
    llm = LLM(model=str(base), enable_lora=True, max_loras=2)
    try:
        params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
        plain = llm.generate(["Hi"], params)[0].outputs[0].token_ids
        alone = llm.generate(["Hi"], params, lora_request=adapter)[0].outputs[0].token_ids
        mixed = llm.generate(["Hi", "Hi", "Hi"], params, lora_request=[adapter, None, other])
        ids = [o.outputs[0].token_ids for o in mixed]
        assert ids[0] == alone and ids[1] == plain
        assert alone != plain and ids[2] != plain
        assert mixed[0].lora_request is adapter
    finally:
        llm.shutdown()


def test_lora_greedy_output_equals_the_peft_merged_model():
    peft = pytest.importorskip("peft")
    import transformers

    from fixtures.generators.lora_adapter import tiny_llama_lora
    from reference.engine.llm import LLM
    from reference.lora.request import LoRARequest
    from reference.sampling_params import SamplingParams

    base = tiny_llama()
    adapter_dir = tiny_llama_lora(base, seed=3)
    ids = [1, 72, 105, 33, 40]
    llm = LLM(model=str(base), enable_lora=True)
    try:
        params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
        request = LoRARequest("merged", 7, str(adapter_dir))
        out = llm.generate({"prompt_token_ids": ids}, params, lora_request=request)
    finally:
        llm.shutdown()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(base))
    merged = peft.PeftModel.from_pretrained(hf, str(adapter_dir)).merge_and_unload()
    ref = merged.generate(
        torch.tensor([ids]), max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    assert out[0].outputs[0].token_ids == ref[0, len(ids) :].tolist()
