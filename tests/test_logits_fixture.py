"""The `dummy_logits_processor` fixture plugin forces `target_token` under both interfaces."""

from __future__ import annotations

import importlib
import re
import sys

import pytest

torch = pytest.importorskip("torch")

from conformance.overlay import Overlay, fixtures_root  # noqa: E402
from reference.logits.v1 import BatchUpdateBuilder  # noqa: E402
from reference.logits.v1 import LogitsProcessor as V1LogitsProcessor  # noqa: E402
from reference.logits.v2 import LogitsContext, LogitsProcRequestState  # noqa: E402
from reference.logits.v2 import LogitsProcessor as V2LogitsProcessor  # noqa: E402
from reference.sampling_params import SamplingParams  # noqa: E402

#: The fixture declares vllm<0.34: its V1 variant imports the V1 interface, gone in 0.34.
pytestmark = pytest.mark.contract("0.33.0")

VOCAB = 6
SLOTS = 4


@pytest.fixture(scope="module")
def dummy():
    """The fixture package, imported against the reference mounted as `vllm`."""
    from reference.surface import is_mounted, mount, unmount

    was_mounted = is_mounted()
    mount()
    path = str(fixtures_root() / "dummy_logits_processor")
    sys.path.insert(0, path)
    try:
        yield importlib.import_module("dummy_logits_processor")
    finally:
        sys.modules.pop("dummy_logits_processor", None)
        sys.path.remove(path)
        if not was_mounted:
            unmount()


def target(token):
    return SamplingParams(extra_args={"target_token": token})


def plain():
    return SamplingParams()


def v2_processor(dummy, **requests):
    """A V2 dummy with `slot<N>=params` requests added and their writes published."""
    state = LogitsProcRequestState.create(max_num_reqs=SLOTS, vocab_size=VOCAB, max_model_len=8)
    proc = dummy.DummyLogitsProcessor(None, state)
    for name, params in requests.items():
        proc.add_request(int(name.removeprefix("slot")), params)
    proc.apply_staged_writes()
    return proc


def forced(logits):
    """Per row: the only finite column, or None if the row is not forced."""
    finite = torch.isfinite(logits)
    return [int(row.nonzero()[0]) if row.sum() == 1 else None for row in finite]


def test_the_entry_point_is_the_v2_class_and_the_v1_variant_is_not_declared(dummy, tmp_path):
    overlay = Overlay(tmp_path).add_fixture("dummy_logits_processor")
    from importlib.metadata import distributions

    (dist,) = [d for d in distributions(path=[overlay.path])]
    assert [(ep.group, ep.name, ep.value) for ep in dist.entry_points] == [
        (
            "vllm.logits_processors",
            "dummy_logits_processor",
            "dummy_logits_processor:DummyLogitsProcessor",
        )
    ]
    assert issubclass(dummy.DummyLogitsProcessor, V2LogitsProcessor)
    assert issubclass(dummy.DummyLogitsProcessorV1, V1LogitsProcessor)


def test_the_v2_processor_forces_the_target_only_in_rows_that_ask(dummy):
    proc = v2_processor(dummy, slot0=plain(), slot2=target(5), slot3=target(1))
    ctx = LogitsContext.for_slots([3, 0, 2])  # row 0 samples for slot 3, row 1 for slot 0, ...
    logits = torch.randn(3, VOCAB)
    out = proc.apply(logits.clone(), ctx)
    assert forced(out) == [1, None, 5]
    assert torch.equal(out[1], logits[1]), "a row whose request did not ask is untouched"
    assert out[0, 1] == logits[0, 1], "the target keeps its own logit"


def test_the_v2_processor_forces_every_row_of_a_request_with_several_rows(dummy):
    proc = v2_processor(dummy, slot1=target(2), slot3=plain())
    ctx = LogitsContext.for_slots([1, 1, 3])  # speculative decoding: one row per draft token
    assert forced(proc.apply(torch.zeros(3, VOCAB), ctx)) == [2, 2, None]


def test_the_v2_processor_leaves_a_batch_without_targets_alone(dummy):
    proc = v2_processor(dummy, slot0=plain(), slot1=plain())
    logits = torch.randn(2, VOCAB)
    assert torch.equal(proc.apply(logits.clone(), LogitsContext.for_slots([0, 1])), logits)


def test_add_request_reports_whether_the_processor_applies(dummy):
    proc = v2_processor(dummy)
    assert (proc.add_request(0, target(3)), proc.add_request(1, plain())) == (True, False)


def test_a_recycled_slot_forgets_its_previous_target(dummy):
    proc = v2_processor(dummy, slot2=target(4))
    proc.add_request(2, plain())
    proc.apply_staged_writes()
    assert forced(proc.apply(torch.zeros(1, VOCAB), LogitsContext.for_slots([2]))) == [None]


def test_writes_staged_by_add_request_take_effect_at_apply_staged_writes(dummy):
    proc = v2_processor(dummy, slot0=target(1))
    proc.add_request(0, target(2))
    ctx = LogitsContext.for_slots([0])
    assert forced(proc.apply(torch.zeros(1, VOCAB), ctx)) == [1], "not yet published"
    proc.apply_staged_writes()
    assert forced(proc.apply(torch.zeros(1, VOCAB), ctx)) == [2]


def test_a_target_outside_the_vocabulary_is_ignored(dummy):
    proc = v2_processor(dummy)
    assert proc.add_request(0, target(VOCAB)) is False


@pytest.mark.parametrize("cls_name", ["DummyLogitsProcessor", "DummyLogitsProcessorV1"])
@pytest.mark.parametrize("value", ["x", 1.5, True, [1]])
def test_validate_params_rejects_a_target_token_that_is_not_int(dummy, cls_name, value):
    cls = getattr(dummy, cls_name)
    with pytest.raises(ValueError, match=re.escape(f"target_token value {value} is not int")):
        cls.validate_params(target(value))


@pytest.mark.parametrize("cls_name", ["DummyLogitsProcessor", "DummyLogitsProcessorV1"])
def test_validate_params_rejects_a_negative_target_token(dummy, cls_name):
    with pytest.raises(ValueError, match="negative"):
        getattr(dummy, cls_name).validate_params(target(-1))


@pytest.mark.parametrize("cls_name", ["DummyLogitsProcessor", "DummyLogitsProcessorV1"])
@pytest.mark.parametrize("params", [target(0), plain(), SamplingParams(extra_args={"other": 1})])
def test_validate_params_accepts_an_int_target_or_none(dummy, cls_name, params):
    assert getattr(dummy, cls_name).validate_params(params) is None


def test_the_v1_variant_forces_the_target_through_batch_updates(dummy):
    proc = dummy.DummyLogitsProcessorV1(None, "cpu", False)
    builder = BatchUpdateBuilder()
    builder.add(0, target(3), [1], [])
    builder.add(1, plain(), [1], [])
    builder.add(2, target(0), [1], [])
    proc.update_state(builder.get_and_reset(batch_size=3))
    assert forced(proc.apply(torch.zeros(3, VOCAB))) == [3, None, 0]
    assert not proc.is_argmax_invariant()


def test_the_v1_variant_follows_removals_and_moves(dummy):
    proc = dummy.DummyLogitsProcessorV1(None, "cpu", False)
    builder = BatchUpdateBuilder()
    for index, params in enumerate([target(3), plain(), target(4)]):
        builder.add(index, params, None, [])
    proc.update_state(builder.get_and_reset(batch_size=3))

    builder.removed_append(0)  # the batch condenses: slot 2 moves into slot 0, then 0 <-> 1
    builder.move(2, 0)
    builder.swap(0, 1)
    proc.update_state(builder.get_and_reset(batch_size=2))
    assert forced(proc.apply(torch.zeros(2, VOCAB))) == [None, 4]


def test_the_v1_variant_reuses_a_slot_for_a_new_request(dummy):
    proc = dummy.DummyLogitsProcessorV1(None, "cpu", False)
    builder = BatchUpdateBuilder()
    builder.add(0, target(3), None, [])
    proc.update_state(builder.get_and_reset(batch_size=1))
    builder.removed_append(0)
    builder.add(builder.pop_removed(), plain(), None, [])
    proc.update_state(builder.get_and_reset(batch_size=1))
    assert forced(proc.apply(torch.zeros(1, VOCAB))) == [None]
