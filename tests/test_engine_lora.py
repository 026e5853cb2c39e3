"""The serving path of `AsyncLLM`: unknown model names are resolved to LoRA adapters through
the registered resolvers only when `VLLM_ALLOW_RUNTIME_LORA_UPDATING` is on (contract §8.4)."""

from __future__ import annotations

import shutil

import pytest

torch = pytest.importorskip("torch")

from conformance.probe import run_probe  # noqa: E402
from fixtures.generators.checkpoint import tiny_llama  # noqa: E402
from fixtures.generators.lora_adapter import tiny_llama_lora  # noqa: E402
from tests.conftest import code  # noqa: E402

SCENARIO = """
import asyncio
from vllm import AsyncEngineArgs, SamplingParams
from vllm.v1.engine.async_llm import AsyncLLM
from reference.engine.async_llm import LoRAResolutionError

async def main():
    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model={model!r}, enable_lora=True))
    serving = engine.serving_models
    params = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
    async def run(lora):
        async for out in engine.generate("Hi", params, lora_request=lora):
            last = out
        return last.outputs[0].token_ids
    result = {{"resolvers": [type(r).__name__ for r in serving.lora_resolvers]}}
    result["base"] = await run(await serving.resolve({model!r}))
    for name in ("my-adapter", "missing"):
        try:
            lora = await serving.resolve(name)
            result[name] = [lora.lora_name, lora.lora_int_id, await run(lora)]
        except LoRAResolutionError as exc:
            result[name] = [exc.status_code, str(exc)]
    engine.shutdown()
    return result

probe.result.update(asyncio.run(main()))
"""


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-cache")
    shutil.copytree(tiny_llama_lora(tiny_llama(), seed=1), root / "my-adapter")
    return root


@pytest.mark.parametrize("allow", ["1", "0"])
def test_unknown_names_resolve_through_the_registry_only_when_allowed(cache_dir, allow):
    model = str(tiny_llama().resolve())
    env = {
        "VLLM_LORA_RESOLVER_CACHE_DIR": str(cache_dir),
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": allow,
    }
    result = run_probe(code(SCENARIO.format(model=model)), env=env, timeout=180)
    assert result.ok, result.describe()
    values = result.values
    assert values["resolvers"] == ["FilesystemResolver"]
    if allow == "1":
        name, lora_id, ids = values["my-adapter"]
        assert name == "my-adapter" and lora_id == 1  # the server's counter, not the hash
        assert ids != values["base"]
        assert values["missing"] == [404, "LoRA adapter missing does not exist"]
        assert any("Resolved and loaded LoRA adapter" in r["message"] for r in result.records)
    else:
        assert values["my-adapter"][0] == 404
