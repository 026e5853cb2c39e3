"""Serving LoRA adapters on the reference Llama: results match peft's merged model, rows of a
batch use their own adapter, slots are reused and evicted LRU-first, bad adapters are refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from fixtures.generators.checkpoint import tiny_llama  # noqa: E402
from fixtures.generators.lora_adapter import tiny_llama_lora  # noqa: E402
from reference.lora.apply import LoRAModelManager, LoRASlot  # noqa: E402
from reference.lora.request import LoRARequest  # noqa: E402
from reference.models.llama import LlamaForCausalLM  # noqa: E402

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
#: "<s>Hello, w" in the tiny byte tokenizer's ids.
PROMPT = torch.tensor([1, 75, 104, 111, 111, 114, 47, 35, 122])
POSITIONS = torch.arange(len(PROMPT))


@pytest.fixture(scope="module")
def llama_dir() -> Path:
    return tiny_llama()


@pytest.fixture(scope="module")
def adapter_a(llama_dir) -> Path:
    """Rank 8 on q_proj and v_proj (the generator's default)."""
    return tiny_llama_lora(llama_dir, seed=1)


@pytest.fixture(scope="module")
def adapter_b(llama_dir) -> Path:
    """Rank 4 on every projection, with rsLoRA off and a different alpha/r."""
    return tiny_llama_lora(llama_dir, seed=2, r=4, alpha=12, target_modules=ALL_PROJECTIONS)


@pytest.fixture(scope="module")
def adapter_rslora(adapter_a, tmp_path_factory) -> Path:
    """Adapter A with rsLoRA scaling (alpha / sqrt(r))."""
    return copy_adapter(adapter_a, tmp_path_factory.mktemp("rslora") / "a", use_rslora=True)


@pytest.fixture
def model(llama_dir) -> LlamaForCausalLM:
    return LlamaForCausalLM.from_checkpoint(llama_dir)


@pytest.fixture
def manager(model) -> LoRAModelManager:
    return LoRAModelManager(model, max_loras=4, max_lora_rank=16)


def lora_request(path: Path, lora_int_id: int, name: str | None = None) -> LoRARequest:
    return LoRARequest(name or f"adapter-{lora_int_id}", lora_int_id, str(path))


def logits(model, ids: torch.Tensor = PROMPT) -> torch.Tensor:
    positions = torch.arange(ids.shape[-1]).expand(ids.shape)
    with torch.inference_mode():
        return model.compute_logits(model(ids, positions))


def copy_adapter(source: Path, target: Path, **config_changes) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".complete", "params.json"))
    config_path = target / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config.update(config_changes)
    config_path.write_text(json.dumps(config))
    return target


# --- results ----------------------------------------------------------------------------------


# peft calls a transformers API that transformers 5 deprecates; not ours to fix.
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
@pytest.mark.parametrize("which", ["adapter_a", "adapter_b", "adapter_rslora"])
def test_an_adapter_gives_the_logits_of_the_peft_merged_model(which, llama_dir, model, request):
    peft = pytest.importorskip("peft")
    import transformers

    adapter = request.getfixturevalue(which)
    base = transformers.LlamaForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)
    merged = peft.PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().eval()
    with torch.inference_mode():
        expected = merged(PROMPT[None]).logits[0]
    manager = LoRAModelManager(model, max_loras=2, max_lora_rank=16)
    slot = manager.activate(LoRARequest("adapter", 1, str(adapter)))
    with manager.batch(slot):
        got = logits(model)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_without_an_adapter_the_model_is_unchanged_bit_for_bit(llama_dir, adapter_a):
    model = LlamaForCausalLM.from_checkpoint(llama_dir)
    before = logits(model)
    manager = LoRAModelManager(model, max_loras=2, max_lora_rank=16)
    manager.activate(lora_request(adapter_a, 1))
    outside = logits(model)
    with manager.batch(None):
        no_adapter = logits(model)
    with manager.batch([None]):
        no_adapter_row = logits(model)
    for result in (outside, no_adapter, no_adapter_row):
        assert torch.equal(result, before), "no adapter must mean exactly the base model"


def test_wrapping_keeps_parameter_names_and_leaves_the_lm_head_alone(llama_dir, model):
    names_before = [name for name, _ in model.named_parameters()]
    manager = LoRAModelManager(model)
    assert [name for name, _ in model.named_parameters()] == names_before
    assert "model.layers.0.self_attn.q_proj" in manager.layers
    assert "model.layers.1.mlp.down_proj" in manager.layers
    assert "lm_head" not in manager.layers
    assert set(model.state_dict()) == set(names_before), "LoRA buffers are not persistent"


def test_a_mixed_batch_equals_each_row_run_alone(model, manager, adapter_a, adapter_b):
    slot_a = manager.activate(lora_request(adapter_a, 1))
    slot_b = manager.activate(lora_request(adapter_b, 2))
    rows = torch.stack([PROMPT, PROMPT.flip(0), PROMPT.roll(3)])
    with manager.batch([slot_a, None, slot_b]):
        batched = logits(model, rows)
    singles = []
    for row, slot in zip(rows, [slot_a, None, slot_b], strict=True):
        with manager.batch(slot):
            singles.append(logits(model, row))
    for i, single in enumerate(singles):
        torch.testing.assert_close(batched[i], single, atol=1e-5, rtol=0, msg=f"row {i}")
    assert not torch.allclose(batched[0], logits(model, rows[0]), atol=1e-3), "row 0 uses A"


def test_a_batch_accepts_lora_requests_and_loads_them(model, manager, adapter_a):
    slot = manager.activate(lora_request(adapter_a, 1))
    with manager.batch(slot):
        expected = logits(model)
    manager.remove(1)
    with manager.batch([lora_request(adapter_a, 1)]):
        got = logits(model, PROMPT[None])[0]
    assert manager.list_loras() == {1}
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_the_adapter_changes_the_greedy_tokens(model, manager, adapter_a):
    base_tokens = logits(model).argmax(-1)
    with manager.batch(manager.activate(lora_request(adapter_a, 1))):
        lora_tokens = logits(model).argmax(-1)
    assert not torch.equal(lora_tokens, base_tokens), "a non-zero B must change greedy picks"


def test_incremental_decode_with_an_adapter_matches_a_full_recompute(model, manager, adapter_b):
    slot = manager.activate(lora_request(adapter_b, 2))
    with manager.batch(slot):
        full = logits(model)
    cache = model.new_kv_cache()
    steps = []
    with torch.inference_mode():
        with manager.batch(slot):
            hidden = model(PROMPT[:4], POSITIONS[:4], kv_cache=cache)
        steps.append(model.compute_logits(hidden)[-1])
        for i in range(4, len(PROMPT)):
            with manager.batch(slot):
                hidden = model(PROMPT[i : i + 1], POSITIONS[i : i + 1], kv_cache=cache)
            steps.append(model.compute_logits(hidden)[-1])
    torch.testing.assert_close(torch.stack(steps), full[3:], atol=1e-5, rtol=1e-5)


# --- slots ------------------------------------------------------------------------------------


def test_activating_the_same_adapter_twice_reuses_its_slot(manager, adapter_a):
    first = manager.activate(lora_request(adapter_a, 7))
    again = manager.activate(lora_request(adapter_a, 7))
    assert again == first and isinstance(again, LoRASlot)
    assert manager.list_loras() == {7}
    assert manager.get_request(7) == lora_request(adapter_a, 7)


def test_the_least_recently_used_adapter_is_evicted_first(model, adapter_a, adapter_b):
    manager = LoRAModelManager(model, max_loras=2, max_lora_rank=16)
    slot_1 = manager.activate(lora_request(adapter_a, 1))
    slot_2 = manager.activate(lora_request(adapter_b, 2))
    manager.activate(lora_request(adapter_a, 1))  # 1 is now the most recently used
    slot_3 = manager.activate(lora_request(adapter_a, 3))
    assert manager.list_loras() == {1, 3}, "adapter 2 was the least recently used"
    assert slot_3 == slot_2 and manager.slot_of(1) == slot_1
    assert manager.slot_of(2) is None


def test_no_more_than_max_loras_adapters_are_loaded(model, adapter_a):
    manager = LoRAModelManager(model, max_loras=2, max_lora_rank=16)
    for lora_id in range(1, 6):
        manager.activate(lora_request(adapter_a, lora_id))
        assert len(manager.list_loras()) == min(lora_id, 2)
    assert manager.list_loras() == {4, 5}


def test_adapters_in_the_running_batch_or_pinned_are_not_evicted(model, adapter_a, adapter_b):
    manager = LoRAModelManager(model, max_loras=2, max_lora_rank=16)
    slot_1 = manager.activate(lora_request(adapter_a, 1))
    slot_2 = manager.activate(lora_request(adapter_b, 2))
    with manager.batch([slot_1, slot_2]):
        with pytest.raises(RuntimeError, match="max_loras=2"):
            manager.activate(lora_request(adapter_a, 3))
    manager.pin(1)
    manager.activate(lora_request(adapter_a, 1))
    manager.activate(lora_request(adapter_a, 3))  # 1 is pinned, so 2 goes even though 1 is older
    assert manager.list_loras() == {1, 3}


def test_a_batch_with_more_distinct_adapters_than_slots_is_refused(model, adapter_a):
    manager = LoRAModelManager(model, max_loras=2, max_lora_rank=16)
    rows = [lora_request(adapter_a, 1), lora_request(adapter_a, 2), lora_request(adapter_a, 3)]
    with pytest.raises(RuntimeError, match="fewer distinct adapters"):
        with manager.batch(rows):
            pass
    with manager.batch(None):
        pass  # the failed block left no state behind


def test_a_slot_whose_adapter_was_evicted_is_refused(model, adapter_a):
    manager = LoRAModelManager(model, max_loras=1, max_lora_rank=16)
    stale = manager.activate(lora_request(adapter_a, 1))
    manager.activate(lora_request(adapter_a, 2))
    with pytest.raises(RuntimeError, match="evicted"):
        with manager.batch(stale):
            pass


def test_remove_unloads_an_adapter(model, manager, adapter_a):
    slot = manager.activate(lora_request(adapter_a, 1))
    with manager.batch(slot), pytest.raises(RuntimeError, match="used by the batch"):
        manager.remove(1)
    assert manager.remove(1) is True
    assert manager.remove(1) is False
    assert manager.list_loras() == set()
    with pytest.raises(ValueError, match="holds no adapter"):
        with manager.batch(slot):
            pass


def test_a_batch_must_give_one_slot_per_row(model, manager, adapter_a):
    slot = manager.activate(lora_request(adapter_a, 1))
    rows = torch.stack([PROMPT, PROMPT])
    with manager.batch([slot, None, slot]), pytest.raises(ValueError, match="3 row slot"):
        logits(model, rows)


def test_a_model_takes_one_manager(model, manager):
    with pytest.raises(ValueError, match="already LoRA-wrapped"):
        LoRAModelManager(model)


# --- bad adapters -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"peft_type": "PREFIX_TUNING"}, "peft_type is 'PREFIX_TUNING'"),
        ({"r": 32}, "r=32 exceeds max_lora_rank=16"),
        ({"target_modules": ["q_proj", "qkv_proj"]}, "'qkv_proj' does not exist"),
        ({"target_modules": ["lm_head"]}, "'lm_head' is not LoRA-capable"),
        ({"use_dora": True}, "DoRA"),
        ({"bias": "all"}, "bias='all'"),
    ],
)
def test_a_bad_adapter_config_is_refused(tmp_path, manager, adapter_a, changes, message):
    bad = copy_adapter(adapter_a, tmp_path / "bad", **changes)
    with pytest.raises(ValueError, match=message) as error:
        manager.activate(lora_request(bad, 1))
    assert "adapter_config.json" in str(error.value), "the error names the file"
    assert manager.list_loras() == set(), "nothing was loaded"


def test_a_missing_weights_file_is_refused(tmp_path, manager, adapter_a):
    bad = copy_adapter(adapter_a, tmp_path / "bad")
    (bad / "adapter_model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors do not exist"):
        manager.activate(lora_request(bad, 1))


def test_a_missing_or_malformed_config_is_refused(tmp_path, manager, adapter_a):
    bad = copy_adapter(adapter_a, tmp_path / "bad")
    (bad / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        manager.activate(lora_request(bad, 1))
    (bad / "adapter_config.json").unlink()
    with pytest.raises(ValueError, match=r"adapter_config\.json does not exist"):
        manager.activate(lora_request(bad, 1))


@pytest.mark.parametrize("targets", ["all-linear", r"model\.layers\.\d+\.self_attn\.(q|v)_proj"])
def test_string_target_modules_are_accepted(tmp_path, model, manager, adapter_a, targets):
    slot = manager.activate(lora_request(adapter_a, 1))
    with manager.batch(slot):
        expected = logits(model)
    other = copy_adapter(adapter_a, tmp_path / "other", target_modules=targets)
    with manager.batch(manager.activate(lora_request(other, 2))):
        torch.testing.assert_close(logits(model), expected, atol=0, rtol=0)


def test_a_target_regex_matching_nothing_is_refused(tmp_path, manager, adapter_a):
    bad = copy_adapter(adapter_a, tmp_path / "bad", target_modules=r".*\.qkv")
    with pytest.raises(ValueError, match="matches no LoRA-capable layer"):
        manager.activate(lora_request(bad, 1))


def test_weights_of_the_wrong_shape_are_refused(tmp_path, manager, adapter_a):
    bad = copy_adapter(adapter_a, tmp_path / "bad", r=4)
    with pytest.raises(ValueError, match="expected"):
        manager.activate(lora_request(bad, 1))


def test_a_failed_load_evicts_nothing(tmp_path, model, adapter_a):
    manager = LoRAModelManager(model, max_loras=1, max_lora_rank=16)
    manager.activate(lora_request(adapter_a, 1))
    bad = copy_adapter(adapter_a, tmp_path / "bad", peft_type="IA3")
    with pytest.raises(ValueError):
        manager.activate(lora_request(bad, 2))
    assert manager.list_loras() == {1}


def test_importing_the_module_does_not_import_torch():
    code = "import sys, reference.lora.apply; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
