"""Seeded tiny checkpoints and LoRA adapters, and the reference's model wrappers running them."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fixtures.generators.checkpoint import (  # noqa: E402
    BOS,
    tiny_checkpoint,
    tiny_llama,
    with_architecture,
)
from fixtures.generators.lora_adapter import tiny_llama_lora  # noqa: E402
from reference.models.registry import ModelRegistry  # noqa: E402

FAMILIES = {"llama": "LlamaForCausalLM", "opt": "OPTForCausalLM", "gpt2": "GPT2LMHeadModel"}
PROMPT = torch.tensor([1, 75, 104, 111, 111, 114, 47, 35, 90, 44])


@pytest.fixture(scope="module")
def llama_dir():
    return tiny_llama()


def hf_model(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path).eval()


def reference_model(arch, path):
    model_cls, _ = ModelRegistry.resolve_model_cls([arch])
    return model_cls.from_checkpoint(path)


# --- checkpoints -----------------------------------------------------------------------------


def test_tiny_llama_has_the_documented_shape(llama_dir):
    config = transformers.AutoConfig.from_pretrained(llama_dir)
    assert config.architectures == ["LlamaForCausalLM"]
    assert (config.hidden_size, config.num_attention_heads, config.head_dim) == (128, 2, 64)
    assert (config.num_hidden_layers, config.intermediate_size) == (2, 256)
    assert hf_model(llama_dir).dtype == torch.float32
    for name in ("model.safetensors", "generation_config.json", "tokenizer.json"):
        assert (llama_dir / name).is_file(), f"{name} is part of the checkpoint"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_loads_with_transformers(family):
    model = hf_model(tiny_checkpoint(family))
    assert type(model).__name__ == FAMILIES[family]
    logits = model(PROMPT[None]).logits
    assert logits.shape == (1, len(PROMPT), 260)


def test_the_tokenizer_round_trips_text_offline(llama_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer = transformers.AutoTokenizer.from_pretrained(llama_dir)
    text = "Hello, wörld! 你好\n  tabs\tand spaces"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids(BOS), "prompts start with <s>"
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert (tokenizer.bos_token, tokenizer.eos_token_id, tokenizer.pad_token_id) == ("<s>", 2, 259)


def test_the_same_seed_gives_identical_bytes(tmp_path, monkeypatch):
    built = []
    for root in ("first", "second"):
        monkeypatch.setenv("VLLM_CONFORMANCE_CACHE", str(tmp_path / root))
        built.append(tiny_llama(seed=3))
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (built[0] / name).read_bytes() == (built[1] / name).read_bytes(), name


def test_different_seeds_give_different_weights():
    from safetensors.torch import load_file

    first = load_file(tiny_llama(seed=0) / "model.safetensors")
    second = load_file(tiny_llama(seed=1) / "model.safetensors")
    assert first.keys() == second.keys()
    assert not torch.equal(first["lm_head.weight"], second["lm_head.weight"])


def test_with_architecture_changes_only_the_architecture(llama_dir):
    renamed = with_architecture(llama_dir, "MyLlamaEmbedding")
    original = json.loads((llama_dir / "config.json").read_text())
    changed = json.loads((renamed / "config.json").read_text())
    assert changed.pop("architectures") == ["MyLlamaEmbedding"]
    original.pop("architectures")
    assert changed == original
    weights = (renamed / "model.safetensors").read_bytes()
    assert weights == (llama_dir / "model.safetensors").read_bytes()


# --- LoRA adapters ---------------------------------------------------------------------------


def test_the_lora_adapter_is_a_peft_lora_for_its_base(llama_dir):
    from safetensors.torch import load_file

    adapter = tiny_llama_lora(llama_dir)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert config["task_type"] == "CAUSAL_LM"
    assert config["base_model_name_or_path"] == str(llama_dir.resolve())
    assert (config["r"], config["lora_alpha"]) == (8, 16)
    assert config["target_modules"] == ["q_proj", "v_proj"]
    weights = load_file(adapter / "adapter_model.safetensors")
    prefix = "base_model.model.model.layers.1.self_attn.v_proj"
    assert weights[f"{prefix}.lora_A.weight"].shape == (8, 128)
    assert weights[f"{prefix}.lora_B.weight"].shape == (128, 8)
    assert all(w.abs().sum() > 0 for w in weights.values()), "B is non-zero, so outputs change"
    assert len(weights) == 2 * 2 * 2, "A and B for 2 targets in 2 layers"


# peft calls a transformers API that transformers 5 deprecates; not ours to fix.
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_the_lora_adapter_loads_with_peft_and_changes_the_logits(llama_dir):
    peft = pytest.importorskip("peft")
    adapter = tiny_llama_lora(llama_dir)
    base_logits = hf_model(llama_dir)(PROMPT[None]).logits
    with_lora = peft.PeftModel.from_pretrained(hf_model(llama_dir), str(adapter)).eval()
    lora_logits = with_lora(PROMPT[None]).logits
    assert not torch.allclose(base_logits, lora_logits, atol=1e-3)


# --- the reference's model wrappers -----------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_reference_model_picks_the_same_greedy_token_as_transformers(family):
    path = tiny_checkpoint(family)
    model = reference_model(FAMILIES[family], path)
    with torch.inference_mode():
        expected = hf_model(path)(PROMPT[None]).logits[0]
        logits = model.compute_logits(model(PROMPT, torch.arange(len(PROMPT))))
    assert logits.argmax(-1).tolist() == expected.argmax(-1).tolist()
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_prefill_then_incremental_decode_matches_a_full_recompute(family):
    model = reference_model(FAMILIES[family], tiny_checkpoint(family))
    with torch.inference_mode():
        full = model.compute_logits(model(PROMPT, torch.arange(len(PROMPT))))
        cache = model.new_kv_cache()
        prefix = 4
        steps = [model.compute_logits(model(PROMPT[:prefix], torch.arange(prefix), cache))[-1]]
        for i in range(prefix, len(PROMPT)):
            hidden = model(PROMPT[i : i + 1], torch.tensor([i]), kv_cache=cache)
            steps.append(model.compute_logits(hidden)[-1])
    assert cache.get_seq_length() == len(PROMPT), "each step extends the cache"
    torch.testing.assert_close(torch.stack(steps), full[prefix - 1 :], atol=1e-4, rtol=1e-4)


def test_a_batch_shares_one_cache_row_per_sequence(llama_dir):
    model = reference_model("LlamaForCausalLM", llama_dir)
    batch = torch.stack([PROMPT, PROMPT.flip(0)])
    positions = torch.arange(len(PROMPT)).expand(2, -1)
    with torch.inference_mode():
        full = model.compute_logits(model(batch, positions))
        cache = model.new_kv_cache()
        model(batch[:, :-1], positions[:, :-1], kv_cache=cache)
        last = model.compute_logits(model(batch[:, -1:], positions[:, -1:], kv_cache=cache))
    torch.testing.assert_close(last[:, 0], full[:, -1], atol=1e-4, rtol=1e-4)


def test_inputs_embeds_stand_in_for_input_ids(llama_dir):
    model = reference_model("LlamaForCausalLM", llama_dir)
    positions = torch.arange(len(PROMPT))
    with torch.inference_mode():
        by_ids = model(PROMPT, positions)
        by_embeds = model(None, positions, inputs_embeds=model.embed_input_ids(PROMPT))
    torch.testing.assert_close(by_embeds, by_ids)


def test_the_reference_embedding_model_gives_unit_vectors(llama_dir):
    model = reference_model("LlamaModel", llama_dir)
    with torch.inference_mode():
        single = model.pool(model(PROMPT, torch.arange(len(PROMPT))))
        batch = model.pool(model(PROMPT.expand(2, -1), torch.arange(len(PROMPT)).expand(2, -1)))
    assert single.shape == (128,)
    torch.testing.assert_close(single.norm(), torch.tensor(1.0))
    torch.testing.assert_close(batch, single.expand(2, -1))


def test_a_checkpoint_missing_a_weight_is_rejected(llama_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    for item in llama_dir.iterdir():
        shutil.copy2(item, tmp_path / item.name)
    weights = load_file(llama_dir / "model.safetensors")
    del weights["model.norm.weight"]
    save_file(weights, str(tmp_path / "model.safetensors"))
    model_cls, _ = ModelRegistry.resolve_model_cls(["LlamaForCausalLM"])
    with pytest.raises(
        ValueError, match=r"not initialized from checkpoint .*'model\.norm\.weight'"
    ):
        model_cls.from_checkpoint(tmp_path)


def test_loading_a_checkpoint_of_another_family_names_the_mismatch():
    model_cls, _ = ModelRegistry.resolve_model_cls(["LlamaForCausalLM"])
    with pytest.raises(ValueError, match="model_type 'opt'"):
        model_cls.from_checkpoint(tiny_checkpoint("opt"))
