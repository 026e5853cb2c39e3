"""`LLM.generate` on a tiny Llama: greedy equals transformers, real KV caching, continuous
batching, sampling options, stop conditions and the built-in logits processors."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from fixtures.generators.checkpoint import tiny_llama  # noqa: E402
from reference._version import CONTRACT_ENV  # noqa: E402
from reference.engine.llm import LLM  # noqa: E402
from reference.sampling_params import SamplingParams  # noqa: E402

PROMPTS = ["Hello world", "abc", "The quick brown fox"]


@pytest.fixture(scope="module")
def model_dir() -> str:
    return str(tiny_llama())


@pytest.fixture(scope="module")
def llm(model_dir):
    engine = LLM(model=model_dir, max_num_seqs=2)
    yield engine
    engine.shutdown()


def _hf_greedy(model_dir: str, prompt_ids: list[int], n: int) -> list[int]:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    ids = torch.tensor([prompt_ids])
    out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1] :].tolist()


def test_greedy_equals_transformers_for_text_and_token_prompts(llm, model_dir):
    params = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    tokenizer = llm.get_tokenizer()
    outputs = llm.generate([*PROMPTS, {"prompt_token_ids": [1, 70, 80, 90]}], params)
    for prompt, output in zip(PROMPTS, outputs[:3], strict=True):
        ids = tokenizer(prompt).input_ids
        assert output.prompt_token_ids == ids
        assert output.outputs[0].token_ids == _hf_greedy(model_dir, ids, 10)
        assert output.outputs[0].finish_reason == "length"
        assert output.finished
    assert outputs[-1].outputs[0].token_ids == _hf_greedy(model_dir, [1, 70, 80, 90], 10)
    # Deterministic across calls.
    again = llm.generate(PROMPTS, params)
    assert [o.outputs[0].token_ids for o in again] == [o.outputs[0].token_ids for o in outputs[:3]]


def test_kv_cache_prefills_once_then_feeds_one_token_per_step(llm):
    model = llm.collective_rpc("get_model")[0]
    fed: list[int] = []
    handle = model.register_forward_pre_hook(lambda _m, args: fed.append(int(args[0].shape[-1])))
    try:
        llm.generate(
            {"prompt_token_ids": [1, 5, 6, 7, 8]}, SamplingParams(max_tokens=4, temperature=0)
        )
    finally:
        handle.remove()
    assert fed == [5, 1, 1, 1]


def test_continuous_batching_respects_max_num_seqs(llm):
    core = llm.engine_core
    seen: list[tuple[int, int]] = []
    original = core.executor.execute_model

    def spy(scheduler_output):
        running = len(scheduler_output.new_reqs) + len(scheduler_output.cached_reqs)
        seen.append((running, len(scheduler_output.new_reqs)))
        return original(scheduler_output)

    core.executor.execute_model = spy
    try:
        params = [
            SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in (2, 5, 3, 4)
        ]
        outputs = llm.generate(["a", "b", "c", "d"], params)
    finally:
        del core.executor.execute_model
    assert [len(o.outputs[0].token_ids) for o in outputs] == [2, 5, 3, 4]
    assert max(running for running, _ in seen) == 2
    # A request joined while another was still decoding.
    assert any(new and running > new for running, new in seen)


def test_token_budget_delays_a_prompt_that_does_not_fit(model_dir):
    engine = LLM(model=model_dir, max_num_batched_tokens=6, max_num_seqs=4)
    try:
        params = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)
        out = engine.generate([{"prompt_token_ids": [1, 2, 3, 4]}] * 2, params)
        assert [len(o.outputs[0].token_ids) for o in out] == [3, 3]
        with pytest.raises(ValueError, match="max_num_batched_tokens"):
            engine.generate({"prompt_token_ids": list(range(3, 20))}, params)
    finally:
        engine.shutdown()


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy(llm):
    prompt = "Hello"
    seeded = SamplingParams(max_tokens=8, temperature=1.0, seed=7, ignore_eos=True)
    a, b = llm.generate([prompt, prompt], [seeded, seeded])
    assert a.outputs[0].token_ids == b.outputs[0].token_ids
    greedy = llm.generate(prompt, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
    top1 = llm.generate(
        prompt, SamplingParams(max_tokens=8, temperature=0.8, top_k=1, seed=1, ignore_eos=True)
    )
    assert top1[0].outputs[0].token_ids == greedy[0].outputs[0].token_ids
    nucleus = llm.generate(
        prompt, SamplingParams(max_tokens=8, temperature=1.0, top_p=1e-6, seed=3, ignore_eos=True)
    )
    assert nucleus[0].outputs[0].token_ids == greedy[0].outputs[0].token_ids


def test_logprobs_and_stop_strings(llm):
    params = SamplingParams(max_tokens=6, temperature=0, logprobs=3, ignore_eos=True)
    out = llm.generate("Hello", params)[0].outputs[0]
    assert len(out.logprobs) == 6
    for token, entry in zip(out.token_ids, out.logprobs, strict=True):
        assert entry[token].rank == 1  # greedy picks the top token
        assert len(entry) == 3
        assert all(lp.logprob <= 0 for lp in entry.values())
    assert out.cumulative_logprob == pytest.approx(
        sum(e[t].logprob for t, e in zip(out.token_ids, out.logprobs, strict=True))
    )
    full = llm.generate("abc", SamplingParams(max_tokens=10, temperature=0, ignore_eos=True))
    text = full[0].outputs[0].text
    stop = text[3:5]
    assert stop
    stopped = llm.generate(
        "abc", SamplingParams(max_tokens=10, temperature=0, ignore_eos=True, stop=[stop])
    )[0].outputs[0]
    assert stopped.finish_reason == "stop" and stopped.stop_reason == stop
    assert stopped.text == text[: text.find(stop)]


def test_stop_token_ids_and_max_model_len(model_dir):
    engine = LLM(model=model_dir, max_model_len=8)
    try:
        greedy = engine.generate(
            {"prompt_token_ids": [1, 9]},
            SamplingParams(max_tokens=20, temperature=0, ignore_eos=True),
        )[0].outputs[0]
        assert greedy.finish_reason == "length" and len(greedy.token_ids) == 6
        target = greedy.token_ids[2]
        first = greedy.token_ids.index(target)
        stopped = engine.generate(
            {"prompt_token_ids": [1, 9]},
            SamplingParams(max_tokens=20, temperature=0, stop_token_ids=[target]),
        )[0].outputs[0]
        assert stopped.token_ids == greedy.token_ids[: first + 1]
        assert stopped.finish_reason == "stop" and stopped.stop_reason == target
    finally:
        engine.shutdown()


@pytest.mark.parametrize("v2", ["0", "1"])
def test_builtin_processors_apply_in_either_interface(model_dir, monkeypatch, v2):
    monkeypatch.setenv(CONTRACT_ENV, "0.32.0")  # the last contracts with a V1 runner
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", v2)
    engine = LLM(model=model_dir)
    try:
        assert engine.vllm_config.use_v2_model_runner is (v2 == "1")
        base = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
        plain = engine.generate("Hi", base)[0].outputs[0].token_ids
        biased = engine.generate(
            ["Hi", "Hi"],
            [
                SamplingParams(
                    max_tokens=4, temperature=0, ignore_eos=True, logit_bias={42: 100.0}
                ),
                base,
            ],
        )
        assert biased[0].outputs[0].token_ids == [42] * 4
        assert biased[1].outputs[0].token_ids == plain  # the bias stays in its own row
        eos = 2
        banned = engine.generate(
            "Hi",
            SamplingParams(max_tokens=3, temperature=0, min_tokens=3, logit_bias={eos: 100.0}),
        )[0].outputs[0]
        assert eos not in banned.token_ids and len(banned.token_ids) == 3
        min_p = engine.generate(
            "Hi",
            SamplingParams(max_tokens=4, temperature=1.0, min_p=0.999, seed=0, ignore_eos=True),
        )[0].outputs[0]
        assert min_p.token_ids == plain  # only the top token survives min_p
    finally:
        engine.shutdown()


def test_v1_batch_updates_follow_requests_leaving_and_joining(model_dir, monkeypatch):
    from reference.logits.v1 import LogitsProcessor, MoveDirectionality

    class Spy(LogitsProcessor):
        updates: list = []

        def __init__(self, vllm_config, device, is_pin_memory):
            pass

        def is_argmax_invariant(self):
            return True

        def update_state(self, batch_update):
            if batch_update is not None:
                Spy.updates.append(
                    (
                        batch_update.batch_size,
                        list(batch_update.removed),
                        [(i, p.max_tokens) for i, p, _, _ in batch_update.added],
                        list(batch_update.moved),
                    )
                )

        def apply(self, logits):
            return logits

    monkeypatch.setenv(CONTRACT_ENV, "0.32.0")  # the last contracts with a V1 runner
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "0")
    engine = LLM(model=model_dir, max_num_seqs=2, logits_processors=[Spy])
    try:
        params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in (1, 3)]
        engine.generate(["a", "b"], params)
        # The next call's first step tells the workers that the last request left.
        params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in (2, 1, 2)]
        engine.generate(["c", "d", "e"], params)
    finally:
        engine.shutdown()
    uni = MoveDirectionality.UNIDIRECTIONAL
    assert Spy.updates == [
        (2, [], [(0, 1), (1, 3)], []),
        (1, [0], [], [(1, 0, uni)]),  # request 0 finished: the last one moves into its hole
        (2, [], [(0, 2), (1, 1)], []),  # the finished request's index is reused
        (2, [], [(1, 2)], []),  # d left index 1, e joined there
        (1, [0], [], [(1, 0, uni)]),
    ]


def test_the_model_runs_inside_a_forward_context():
    """Layers may call `get_forward_context()` in `forward`, as on vLLM; outside a step none is
    set (vLLM asserts there too)."""
    from reference.engine.model_runner import CachedRequestState, ModelRunner
    from reference.forward_context import get_forward_context, is_forward_context_available

    seen = []

    def model(input_ids, positions, **kwargs):
        seen.append(get_forward_context())
        return torch.zeros(len(input_ids), 4)

    runner = object.__new__(ModelRunner)
    runner.vllm_config, runner.device, runner.model, runner.lora_manager = None, "cpu", model, None
    state = CachedRequestState("r", [1, 2, 3], None, None, None, torch.Generator())
    hidden = runner._forward(state, [1, 2, 3])
    assert hidden.shape == (3, 4) and state.num_computed_tokens == 3
    assert len(seen) == 1 and seen[0].attn_metadata is None
    assert not is_forward_context_available()
    with pytest.raises(AssertionError, match="Forward context is not set"):
        get_forward_context()


def test_llm_builds_its_engine_through_llm_engine_from_engine_args(model_dir, monkeypatch):
    """A plugin that wraps LLMEngine.from_engine_args (flash-head reads its metadata there)
    sees the offline engine start, as in vLLM: LLM calls it through the class."""
    from reference.engine.llm_engine import LLMEngine

    seen = []
    original = LLMEngine.from_engine_args.__func__

    def wrapped(cls, engine_args, *args, **kwargs):
        seen.append(engine_args.model)
        return original(cls, engine_args, *args, **kwargs)

    monkeypatch.setattr(LLMEngine, "from_engine_args", classmethod(wrapped))
    engine = LLM(model=model_dir, max_num_seqs=1)
    try:
        assert seen == [model_dir], "LLM should build its engine with LLMEngine.from_engine_args"
        assert isinstance(engine.llm_engine, LLMEngine)
        assert engine.llm_engine.vllm_config is engine.vllm_config
        assert engine.llm_engine.engine_core is engine.engine_core
    finally:
        engine.shutdown()
