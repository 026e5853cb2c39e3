"""The V1 logits-processor interface: BatchUpdate and its builder, the built-ins, the adapter."""

from __future__ import annotations

import dataclasses

import pytest

from reference.logits.v1 import (
    BUILTIN_LOGITS_PROCESSORS,
    AdapterLogitsProcessor,
    BatchUpdate,
    BatchUpdateBuilder,
    LogitBiasLogitsProcessor,
    LogitsProcessor,
    LogitsProcessors,
    MinPLogitsProcessor,
    MinTokensLogitsProcessor,
    MoveDirectionality,
    process_dict_updates,
)
from reference.sampling_params import SamplingParams

UNI = MoveDirectionality.UNIDIRECTIONAL
SWAP = MoveDirectionality.SWAP
INF = float("inf")


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def update(batch_size=4, removed=(), added=(), moved=()) -> BatchUpdate:
    return BatchUpdate(
        batch_size=batch_size, removed=list(removed), added=list(added), moved=list(moved)
    )


def added(index, params=None, prompt=(1, 2), output=None):
    return (index, params or SamplingParams(), list(prompt), [] if output is None else output)


def by_tag(params, _prompt, _output):
    """A state factory for process_dict_updates: a request's state is its `tag` extra arg."""
    return (params.extra_args or {}).get("tag")


def tagged(index, name):
    return added(index, SamplingParams(extra_args={"tag": name}))


# --- BatchUpdate and the interface ----------------------------------------------------------


def test_batch_update_fields_are_batch_size_removed_added_moved_in_that_order():
    names = [f.name for f in dataclasses.fields(BatchUpdate)]
    assert names == ["batch_size", "removed", "added", "moved"]


def test_batch_update_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        update().batch_size = 3


def test_move_directionality_is_unidirectional_or_swap():
    assert {m.name for m in MoveDirectionality} == {"UNIDIRECTIONAL", "SWAP"}


def test_a_processor_missing_an_abstract_method_cannot_be_instantiated():
    class Incomplete(LogitsProcessor):
        def __init__(self, vllm_config, device, is_pin_memory):
            pass

        def apply(self, logits):
            return logits

    with pytest.raises(TypeError, match="is_argmax_invariant|update_state"):
        Incomplete(None, "cpu", False)


def test_validate_params_accepts_every_request_by_default():
    class Lenient(MinPLogitsProcessor):
        pass

    assert Lenient.validate_params(SamplingParams(extra_args={"anything": object()})) is None


def test_builtins_are_min_tokens_logit_bias_and_min_p_in_that_order():
    assert BUILTIN_LOGITS_PROCESSORS == [
        MinTokensLogitsProcessor,
        LogitBiasLogitsProcessor,
        MinPLogitsProcessor,
    ]


def test_only_min_p_is_argmax_invariant():
    invariant = {
        cls.__name__: cls(None, "cpu", False).is_argmax_invariant()
        for cls in BUILTIN_LOGITS_PROCESSORS
    }
    assert invariant == {
        "MinTokensLogitsProcessor": False,
        "LogitBiasLogitsProcessor": False,
        "MinPLogitsProcessor": True,
    }


def test_logits_processors_groups_processors_by_argmax_invariance():
    procs = LogitsProcessors(cls(None, "cpu", False) for cls in BUILTIN_LOGITS_PROCESSORS)
    assert [type(p) for p in procs.argmax_invariant] == [MinPLogitsProcessor]
    assert [type(p) for p in procs.non_argmax_invariant] == [
        MinTokensLogitsProcessor,
        LogitBiasLogitsProcessor,
    ]
    assert len(list(procs.all)) == 3
    assert [type(p) for p in procs.get_logitsprocs_by_cls(LogitBiasLogitsProcessor)] == [
        LogitBiasLogitsProcessor
    ]


def test_an_empty_logits_processors_has_no_processors():
    assert list(LogitsProcessors().all) == []


# --- process_dict_updates: the replay order and slot reuse ----------------------------------


def test_no_update_changes_nothing():
    state = {0: "a"}
    assert process_dict_updates(state, None, by_tag) is False
    assert state == {0: "a"}


def test_removals_are_replayed_before_additions_so_a_reused_slot_keeps_the_new_request():
    state = {1: "old"}
    changed = process_dict_updates(state, update(removed=[1], added=[tagged(1, "new")]), by_tag)
    assert changed is True
    assert state == {1: "new"}


def test_an_addition_that_does_not_apply_clears_the_slot_it_reuses():
    state = {2: "old"}
    process_dict_updates(state, update(added=[added(2)]), lambda *_: None)
    assert state == {}, "the previous occupant's state must not leak into the new request"


def test_additions_are_replayed_before_moves():
    state: dict[int, str] = {}
    process_dict_updates(state, update(added=[tagged(3, "a")], moved=[(3, 0, UNI)]), by_tag)
    assert state == {0: "a"}


def test_a_unidirectional_move_empties_its_source_and_overwrites_its_target():
    state = {0: "a", 1: "b"}
    process_dict_updates(state, update(moved=[(0, 1, UNI)]), by_tag)
    assert state == {1: "a"}


def test_a_unidirectional_move_from_an_empty_slot_clears_the_target():
    state = {1: "b"}
    process_dict_updates(state, update(moved=[(0, 1, UNI)]), by_tag)
    assert state == {}


def test_a_swap_exchanges_two_slots():
    state = {0: "a", 1: "b"}
    process_dict_updates(state, update(moved=[(0, 1, SWAP)]), by_tag)
    assert state == {0: "b", 1: "a"}


def test_a_swap_with_an_empty_slot_moves_the_state_across():
    state = {2: "c"}
    process_dict_updates(state, update(moved=[(0, 2, SWAP)]), by_tag)
    assert state == {0: "c"}


def test_moves_are_replayed_in_order():
    state = {0: "a", 1: "b", 2: "c"}
    process_dict_updates(state, update(moved=[(0, 1, SWAP), (1, 2, SWAP)]), by_tag)
    assert state == {0: "b", 1: "c", 2: "a"}


# --- BatchUpdateBuilder ---------------------------------------------------------------------


def test_a_builder_with_nothing_recorded_gives_no_update():
    assert BatchUpdateBuilder().get_and_reset(batch_size=3) is None


def test_a_builder_reports_a_step_and_starts_afresh():
    builder = BatchUpdateBuilder()
    builder.removed_append(2)
    builder.add(*added(5))
    builder.swap(0, 1)
    batch = builder.get_and_reset(batch_size=6)
    assert (batch.batch_size, batch.removed, [a[0] for a in batch.added]) == (6, [2], [5])
    assert batch.moved == [(0, 1, SWAP)]
    assert builder.get_and_reset(batch_size=6) is None


def test_pop_removed_hands_out_the_lowest_freed_slot():
    builder = BatchUpdateBuilder()
    for index in (4, 1, 3):
        builder.removed_append(index)
    assert (builder.peek_removed(), builder.pop_removed(), builder.removed) == (1, 1, [3, 4])


def test_pop_removed_gives_none_when_no_slot_is_free():
    assert BatchUpdateBuilder().pop_removed() is None


def test_a_reused_slot_is_reported_added_but_not_removed():
    builder = BatchUpdateBuilder()
    builder.removed_append(1)
    builder.add(*added(1))
    batch = builder.get_and_reset(batch_size=2)
    assert batch.removed == [], "an index must never be both removed and added in one update"
    assert [a[0] for a in batch.added] == [1]


def test_a_removal_recorded_after_an_addition_is_refused():
    builder = BatchUpdateBuilder()
    builder.add(*added(0))
    with pytest.raises(RuntimeError, match="removals, then additions, then moves"):
        builder.removed_append(0)


def test_an_addition_recorded_after_a_move_is_refused():
    builder = BatchUpdateBuilder()
    builder.move(1, 0)
    with pytest.raises(RuntimeError, match="an addition was recorded after a move"):
        builder.add(*added(1))


def test_a_move_onto_itself_is_refused():
    with pytest.raises(ValueError, match="two different indices"):
        BatchUpdateBuilder().move(2, 2)


def test_removing_an_index_twice_in_one_step_is_refused():
    builder = BatchUpdateBuilder()
    builder.removed_append(0)
    with pytest.raises(ValueError, match="already removed"):
        builder.removed_append(0)


# --- the built-ins' numerics ----------------------------------------------------------------


def test_min_tokens_masks_stop_tokens_until_the_minimum_is_reached(torch):
    proc = MinTokensLogitsProcessor(None, "cpu", False)
    output: list[int] = []
    params = SamplingParams(min_tokens=2, stop_token_ids=[3, 5])
    proc.update_state(update(batch_size=2, added=[added(1, params, output=output)]))

    logits = proc.apply(torch.zeros(2, 6))
    assert torch.isinf(logits[1, [3, 5]]).all() and (logits[1, [0, 1, 2, 4]] == 0).all()
    assert (logits[0] == 0).all(), "rows of other requests are untouched"

    output.extend([7, 8])  # the live list grows as the request decodes
    proc.update_state(None)
    assert (proc.apply(torch.zeros(2, 6)) == 0).all()


def test_min_tokens_ignores_a_request_that_already_has_enough_tokens(torch):
    proc = MinTokensLogitsProcessor(None, "cpu", False)
    params = SamplingParams(min_tokens=1, stop_token_ids=[0])
    proc.update_state(update(batch_size=1, added=[added(0, params, output=[4])]))
    assert proc.min_toks == {}
    assert (proc.apply(torch.zeros(1, 3)) == 0).all()


def test_logit_bias_adds_each_requests_bias_to_its_row(torch):
    proc = LogitBiasLogitsProcessor(None, "cpu", False)
    proc.update_state(
        update(
            batch_size=3,
            added=[
                added(0, SamplingParams(logit_bias={1: 2.5, 3: -1.0})),
                added(2, SamplingParams(logit_bias={0: 4.0})),
            ],
        )
    )
    logits = proc.apply(torch.ones(3, 4))
    expected = torch.tensor([[1, 3.5, 1, 0], [1, 1, 1, 1], [5, 1, 1, 1]])
    assert torch.equal(logits, expected)


def test_min_p_masks_tokens_below_min_p_times_the_top_probability(torch):
    proc = MinPLogitsProcessor(None, "cpu", False)
    proc.update_state(update(batch_size=2, added=[added(0, SamplingParams(min_p=0.3))]))
    probs = torch.tensor([[0.5, 0.2, 0.14, 0.16], [0.5, 0.2, 0.14, 0.16]])
    logits = proc.apply(probs.log())
    # threshold 0.3 * 0.5 = 0.15: 0.14 goes, 0.16 stays
    assert torch.isinf(logits[0]).tolist() == [False, False, True, False]
    assert torch.isfinite(logits[1]).all(), "a request without min_p is untouched"
    assert (proc.min_p_count, proc.get_min_p_by_index(0), proc.get_min_p_by_index(1)) == (
        1,
        0.3,
        0.0,
    )


def test_min_p_keeps_the_top_token(torch):
    proc = MinPLogitsProcessor(None, "cpu", False)
    proc.update_state(update(batch_size=1, added=[added(0, SamplingParams(min_p=1.0))]))
    logits = proc.apply(torch.tensor([[0.1, 2.0, 0.3]]))
    assert torch.isfinite(logits).tolist() == [[False, True, False]]


def test_builtins_leave_logits_alone_when_no_request_uses_them(torch):
    procs = [cls(None, "cpu", False) for cls in BUILTIN_LOGITS_PROCESSORS]
    for proc in procs:
        proc.update_state(update(batch_size=2, added=[added(0), added(1)]))
        logits = torch.randn(2, 5)
        assert torch.equal(proc.apply(logits.clone()), logits), type(proc).__name__


def test_a_built_in_forgets_a_removed_request(torch):
    proc = LogitBiasLogitsProcessor(None, "cpu", False)
    proc.update_state(update(batch_size=1, added=[added(0, SamplingParams(logit_bias={0: 1.0}))]))
    proc.update_state(update(batch_size=0, removed=[0]))
    assert proc.biases == {}


def test_a_reused_slot_takes_the_new_requests_settings_only(torch):
    proc = LogitBiasLogitsProcessor(None, "cpu", False)
    proc.update_state(update(batch_size=1, added=[added(0, SamplingParams(logit_bias={0: 1.0}))]))
    proc.update_state(update(batch_size=1, removed=[0], added=[added(0, SamplingParams())]))
    assert torch.equal(proc.apply(torch.zeros(1, 2)), torch.zeros(1, 2))


def test_a_built_ins_state_follows_moves(torch):
    proc = LogitBiasLogitsProcessor(None, "cpu", False)
    proc.update_state(
        update(
            batch_size=3,
            added=[
                added(0, SamplingParams(logit_bias={0: 1.0})),
                added(2, SamplingParams(logit_bias={1: 1.0})),
            ],
        )
    )
    proc.update_state(update(batch_size=2, removed=[1], moved=[(2, 1, UNI), (0, 1, SWAP)]))
    assert torch.equal(proc.apply(torch.zeros(2, 2)), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))


# --- AdapterLogitsProcessor -----------------------------------------------------------------


class _Adapter(AdapterLogitsProcessor):
    """Wraps whatever callable the request carries in `extra_args["fn"]`."""

    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params):
        return (params.extra_args or {}).get("fn")


def _with(fn):
    return SamplingParams(extra_args={"fn": fn})


def test_adapter_calls_a_two_parameter_callable_with_the_live_output_ids(torch):
    seen = []

    def per_request(output_ids, row):
        seen.append(list(output_ids))
        return row + len(output_ids)

    proc = _Adapter(None, "cpu", False)
    output = [9]
    proc.update_state(update(batch_size=2, added=[added(1, _with(per_request), output=output)]))
    output.append(8)
    logits = proc.apply(torch.zeros(2, 3))
    assert seen == [[9, 8]]
    assert logits.tolist() == [[0, 0, 0], [2, 2, 2]]


def test_adapter_passes_prompt_ids_to_a_three_parameter_callable(torch):
    seen = []

    def per_request(prompt_ids, output_ids, row):
        seen.append((list(prompt_ids), list(output_ids)))
        return row

    proc = _Adapter(None, "cpu", False)
    proc.update_state(update(batch_size=1, added=[added(0, _with(per_request), prompt=[4, 5])]))
    proc.apply(torch.zeros(1, 2))
    assert seen == [([4, 5], [])]


def test_adapter_refuses_a_three_parameter_callable_without_prompt_ids():
    proc = _Adapter(None, "cpu", False)
    entry = (0, _with(lambda prompt_ids, output_ids, row: row), None, [])
    with pytest.raises(ValueError, match="Prompt token ids are required"):
        proc.update_state(update(batch_size=1, added=[entry]))


def test_adapter_skips_requests_whose_callable_is_none(torch):
    proc = _Adapter(None, "cpu", False)
    proc.update_state(update(batch_size=1, added=[added(0, SamplingParams())]))
    assert proc.req_info == {}
    assert torch.equal(proc.apply(torch.ones(1, 2)), torch.ones(1, 2))


def test_adapter_writes_back_a_row_the_callable_replaced(torch):
    proc = _Adapter(None, "cpu", False)
    proc.update_state(update(batch_size=1, added=[added(0, _with(lambda out, row: row * 0 - 1))]))
    assert proc.apply(torch.ones(1, 2)).tolist() == [[-1, -1]]
