"""Properties: any sequence of batch changes keeps V1 processors' per-index state right.

A simulated persistent batch (a dict of index -> request) records random removals,
additions (reused, fresh or occupied slots) and moves (one-way and swaps) in a
`BatchUpdateBuilder`; every processor must then agree with the dict.
"""

from __future__ import annotations

import importlib
import math
import sys
from dataclasses import dataclass, field

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conformance.overlay import fixtures_root  # noqa: E402
from reference.logits.v1 import (  # noqa: E402
    BatchUpdateBuilder,
    LogitBiasLogitsProcessor,
    MinPLogitsProcessor,
    MinTokensLogitsProcessor,
    MoveDirectionality,
)
from reference.sampling_params import SamplingParams  # noqa: E402

#: The V1 interface and the fixture's V1 variant exist up to 0.33 (vLLM 0.34 removed them).
pytestmark = pytest.mark.contract("0.33.0")

SLOTS = 6
VOCAB = 5
#: Row logits with distinct probabilities, so min-p thresholds cut between them.
PROBS = [0.4, 0.3, 0.15, 0.1, 0.05]

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

params_strategy = st.builds(
    lambda min_tokens, stop, bias, min_p, target: SamplingParams(
        min_tokens=min_tokens,
        stop_token_ids=stop,
        logit_bias=bias or None,
        min_p=min_p,
        extra_args=None if target is None else {"target_token": target},
    ),
    st.integers(0, 3),
    st.lists(st.integers(0, VOCAB - 1), unique=True, max_size=2),
    st.dictionaries(st.integers(0, VOCAB - 1), st.sampled_from([-1.0, 0.5, 2.0]), max_size=2),
    st.sampled_from([0.0, 0.3, 0.6]),
    st.none() | st.integers(0, VOCAB - 1),
)


@dataclass
class Request:
    params: SamplingParams
    output: list[int] = field(default_factory=list)


class PersistentBatch:
    """The engine's side: slots holding requests, and each step's changes in a builder."""

    def __init__(self) -> None:
        self.slots: dict[int, Request] = {}
        self.builder = BatchUpdateBuilder()

    def step(self, data: st.DataObject, processors: list) -> None:
        """Draw one step, apply it to the slots and give the processors its update."""
        if self.slots:
            for index in data.draw(st.lists(st.sampled_from(sorted(self.slots)), max_size=3)):
                self.slots[index].output.append(0)  # decoding grows the live output lists
        if data.draw(st.booleans()):
            self._remove(data)
            self._add(data)
            self._move(data)
        update = self.builder.get_and_reset(batch_size=SLOTS)
        for proc in processors:
            proc.update_state(update)

    def _remove(self, data: st.DataObject) -> None:
        if not self.slots:
            return
        for index in data.draw(st.lists(st.sampled_from(sorted(self.slots)), unique=True)):
            self.builder.removed_append(index)
            del self.slots[index]

    def _add(self, data: st.DataObject) -> None:
        for _ in range(data.draw(st.integers(0, 3))):
            request = Request(data.draw(params_strategy))
            index = data.draw(st.none() | st.integers(0, SLOTS - 1))  # explicit: may replace
            if index is None:
                index = self.builder.pop_removed()
            if index is None:
                free = sorted(set(range(SLOTS)) - set(self.slots))
                index = free[0] if free else data.draw(st.integers(0, SLOTS - 1))
            self.builder.add(index, request.params, [1, 2], request.output)
            self.slots[index] = request

    def _move(self, data: st.DataObject) -> None:
        pairs = st.tuples(st.integers(0, SLOTS - 1), st.integers(0, SLOTS - 1), st.booleans())
        for a, b, swap in data.draw(st.lists(pairs.filter(lambda m: m[0] != m[1]), max_size=3)):
            direction = MoveDirectionality.SWAP if swap else MoveDirectionality.UNIDIRECTIONAL
            self.builder.move(a, b, direction)
            a_req, b_req = self.slots.pop(a, None), self.slots.pop(b, None)
            if a_req is not None:
                self.slots[b] = a_req
            if swap and b_req is not None:
                self.slots[a] = b_req


def run(data: st.DataObject, processors: list, check) -> None:
    """Drive random steps, calling `check(batch)` after each."""
    batch = PersistentBatch()
    for _ in range(data.draw(st.integers(1, 8))):
        batch.step(data, processors)
        check(batch)


def row_logits() -> torch.Tensor:
    return torch.tensor(PROBS).log().repeat(SLOTS, 1)


@pytest.fixture(scope="module")
def dummy_v1_cls():
    """The fixture's V1 variant, imported against the reference mounted as `vllm`."""
    from reference.surface import is_mounted, mount, unmount

    was_mounted = is_mounted()
    mount()
    path = str(fixtures_root() / "dummy_logits_processor")
    sys.path.insert(0, path)
    try:
        yield importlib.import_module("dummy_logits_processor").DummyLogitsProcessorV1
    finally:
        sys.modules.pop("dummy_logits_processor", None)
        sys.path.remove(path)
        if not was_mounted:
            unmount()


@SETTINGS
@given(data=st.data())
def test_min_tokens_state_tracks_requests_below_their_minimum(data):
    proc = MinTokensLogitsProcessor(None, "cpu", False)

    def check(batch):
        expected = {
            i: (r.params.min_tokens, set(r.params.stop_token_ids))
            for i, r in batch.slots.items()
            if r.params.min_tokens > len(r.output)
        }
        assert {i: (n, stops) for i, (n, _, stops) in proc.min_toks.items()} == expected
        out = proc.apply(torch.zeros(SLOTS, VOCAB))
        banned = {(i, t) for i, (_, stops) in expected.items() for t in stops}
        assert {tuple(x) for x in torch.isinf(out).nonzero().tolist()} == banned

    run(data, [proc], check)


@SETTINGS
@given(data=st.data())
def test_logit_bias_state_tracks_each_requests_bias(data):
    proc = LogitBiasLogitsProcessor(None, "cpu", False)

    def check(batch):
        expected = {i: r.params.logit_bias for i, r in batch.slots.items() if r.params.logit_bias}
        assert proc.biases == expected
        want = torch.zeros(SLOTS, VOCAB)
        for i, bias in expected.items():
            for token, value in bias.items():
                want[i, token] = value
        assert torch.equal(proc.apply(torch.zeros(SLOTS, VOCAB)), want)

    run(data, [proc], check)


@SETTINGS
@given(data=st.data())
def test_min_p_state_tracks_each_requests_min_p(data):
    proc = MinPLogitsProcessor(None, "cpu", False)

    def check(batch):
        expected = {i: r.params.min_p for i, r in batch.slots.items() if r.params.min_p}
        assert {i: proc.get_min_p_by_index(i) for i in range(SLOTS)} == {
            i: expected.get(i, 0.0) for i in range(SLOTS)
        }
        assert proc.min_p_count == len(expected)
        masked = torch.isinf(proc.apply(row_logits())).tolist()
        want = [[p < max(PROBS) * expected.get(i, 0.0) for p in PROBS] for i in range(SLOTS)]
        assert masked == want

    run(data, [proc], check)


@SETTINGS
@given(data=st.data())
def test_the_v1_dummy_forces_exactly_the_targets_of_the_requests_in_the_batch(data, dummy_v1_cls):
    proc = dummy_v1_cls(None, "cpu", False)

    def check(batch):
        expected = {
            i: r.params.extra_args["target_token"]
            for i, r in batch.slots.items()
            if r.params.extra_args
        }
        assert proc.req_info == expected
        finite = torch.isfinite(proc.apply(torch.zeros(SLOTS, VOCAB))).tolist()
        want = [[i not in expected or t == expected[i] for t in range(VOCAB)] for i in range(SLOTS)]
        assert finite == want

    run(data, [proc], check)


@SETTINGS
@given(data=st.data())
def test_apply_preserves_the_logits_shape_and_never_makes_nan(data, dummy_v1_cls):
    procs = [
        MinTokensLogitsProcessor(None, "cpu", False),
        LogitBiasLogitsProcessor(None, "cpu", False),
        MinPLogitsProcessor(None, "cpu", False),
        dummy_v1_cls(None, "cpu", False),
    ]

    def check(_batch):
        for proc in procs:
            out = proc.apply(row_logits())
            assert tuple(out.shape) == (SLOTS, VOCAB), type(proc).__name__
            assert not any(math.isnan(x) for x in out.flatten().tolist()), type(proc).__name__

    run(data, procs, check)
