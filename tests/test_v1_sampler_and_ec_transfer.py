"""The V1 `Sampler` layer and the EC-transfer connector registry, beyond the surface rows
(which compare their deterministic behaviour with vLLM 0.32's)."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace
from typing import Any

import pytest

from reference import ec_transfer
from reference.config import VllmConfig
from reference.ec_transfer import ECConnectorBase, ECConnectorFactory, ECConnectorRole

# -- the sampler ----------------------------------------------------------------------------


def _metadata(rows: int, **fields: Any) -> Any:
    import torch

    from reference.logits.v1 import LogitsProcessors
    from reference.sampler import SamplingMetadata

    values: dict[str, Any] = {
        "temperature": torch.ones(rows),
        "all_greedy": False,
        "all_random": True,
        "top_p": None,
        "top_k": None,
        "generators": {},
        "max_num_logprobs": None,
        "no_penalties": True,
        "prompt_token_ids": None,
        "frequency_penalties": torch.zeros(rows),
        "presence_penalties": torch.zeros(rows),
        "repetition_penalties": torch.ones(rows),
        "output_token_ids": [[] for _ in range(rows)],
        "allowed_token_ids_mask": None,
        "bad_words_token_ids": {},
        "logitsprocs": LogitsProcessors(),
    }
    values.update(fields)
    return SamplingMetadata(**values)


@pytest.fixture
def logits():
    torch = pytest.importorskip("torch")
    return torch.randn(4, 50, generator=torch.Generator().manual_seed(3))


def test_seeded_rows_draw_the_same_tokens_again(logits):
    import torch

    from reference.sampler import Sampler

    def draw() -> list[int]:
        generators = {i: torch.Generator().manual_seed(100 + i) for i in range(4)}
        out = Sampler()(logits.clone(), _metadata(4, generators=generators))
        return out.sampled_token_ids.view(-1).tolist()

    first = draw()
    assert first == draw()
    assert all(0 <= t < 50 for t in first)


def test_a_high_temperature_spreads_the_draws_and_top_p_narrows_them(logits):
    import torch

    from reference.sampler import Sampler

    row = logits[:1].repeat(200, 1)
    hot = _metadata(200, temperature=torch.full((200,), 5.0))
    spread = set(Sampler()(row.clone(), hot).sampled_token_ids.view(-1).tolist())
    narrow = _metadata(200, temperature=torch.full((200,), 5.0), top_p=torch.full((200,), 1e-6))
    kept = set(Sampler()(row.clone(), narrow).sampled_token_ids.view(-1).tolist())
    assert len(spread) > 10
    assert kept == {int(logits[0].argmax())}, "top_p that small keeps the top token only"


def test_logprobs_modes(logits):
    import torch

    from reference.sampler import Sampler

    greedy = {"all_greedy": True, "all_random": False, "temperature": torch.zeros(4)}
    full = Sampler()(logits.clone(), _metadata(4, max_num_logprobs=-1, **greedy))
    assert torch.allclose(full.logprobs_tensors.logprobs, logits.log_softmax(-1))
    raw = Sampler("raw_logits")(logits.clone(), _metadata(4, max_num_logprobs=-1, **greedy))
    assert torch.equal(raw.logprobs_tensors.logprobs, logits)
    # Processed logprobs come after the processing: a banned token's is -inf.
    banned = {i: [[int(logits[i].argmax())]] for i in range(4)}
    processed = Sampler("processed_logprobs")(
        logits.clone(), _metadata(4, max_num_logprobs=1, bad_words_token_ids=banned, **greedy)
    )
    tensors = processed.logprobs_tensors
    assert tensors.logprob_token_ids.shape == (4, 2)
    assert tensors.logprob_token_ids[:, 0].tolist() == processed.sampled_token_ids.view(-1).tolist()
    assert tensors.logprob_token_ids[:, 0].tolist() != logits.argmax(-1).tolist()


def test_frequency_and_presence_penalties_count_the_output_tokens(logits):
    import torch

    from reference.sampler import Sampler

    top = int(logits[0].argmax())
    second = int(logits[0].topk(2).indices[1])
    gap = float(logits[0, top] - logits[0, second])
    common = {
        "all_greedy": True,
        "all_random": False,
        "temperature": torch.zeros(1),
        "no_penalties": False,
        "prompt_token_ids": torch.full((1, 1), 50),
        "output_token_ids": [[top, top]],
    }
    small = torch.tensor([gap / 4 * 0.9])
    big = torch.tensor([gap / 2 * 1.1])
    ids = [
        Sampler()(
            logits[:1].clone(), _metadata(1, frequency_penalties=p, **common)
        ).sampled_token_ids.item()
        for p in (small, big)
    ]
    assert ids == [top, second], "frequency penalty scales with the two occurrences"
    presence = Sampler()(
        logits[:1].clone(), _metadata(1, presence_penalties=torch.tensor([gap * 1.1]), **common)
    )
    assert presence.sampled_token_ids.item() == second


# -- EC transfer ----------------------------------------------------------------------------


class RecordingConnector(ECConnectorBase):
    """A complete connector that counts its shutdowns."""

    shutdowns = 0

    def start_load_caches(self, encoder_cache, **kwargs):
        return None

    def save_caches(self, encoder_cache, mm_hash, **kwargs):
        return None

    def has_cache_item(self, identifier):
        return False

    def update_state_after_alloc(self, request, index):
        return None

    def build_connector_meta(self, scheduler_output):
        return None

    def shutdown(self) -> None:
        RecordingConnector.shutdowns += 1


@pytest.fixture
def registered(monkeypatch):
    """`RecordingConnector` importable as `ec_row_module.RecordingConnector`, registered under
    a fresh name; the factory's registry and the process's connector restored after."""
    module = types.ModuleType("ec_row_module")
    module.RecordingConnector = RecordingConnector
    monkeypatch.setitem(sys.modules, "ec_row_module", module)
    monkeypatch.setattr(ECConnectorFactory, "_registry", dict(ECConnectorFactory._registry))
    monkeypatch.setattr(ec_transfer, "_EC_CONNECTOR_AGENT", None)
    ECConnectorFactory.register_connector("Recording", "ec_row_module", "RecordingConnector")
    return "Recording"


def _ec_config(name: str | None, **fields: Any) -> Any:
    values = {
        "ec_connector": name,
        "ec_connector_module_path": None,
        "engine_id": "e0",
        "is_ec_producer": True,
        "is_ec_consumer": False,
        "is_ec_transfer_instance": True,
    }
    values.update(fields)
    return SimpleNamespace(**values)


def test_a_configured_connector_is_created_once_and_shut_down(registered):
    config = VllmConfig(ec_transfer_config=_ec_config(registered))
    ec_transfer.ensure_ec_transfer_initialized(config)
    connector = ec_transfer.get_ec_transfer()
    ec_transfer.ensure_ec_transfer_initialized(config)
    assert ec_transfer.get_ec_transfer() is connector
    assert isinstance(connector, RecordingConnector)
    assert (connector.role, connector.is_producer, connector.is_consumer) == (
        ECConnectorRole.WORKER,
        True,
        False,
    )
    before = RecordingConnector.shutdowns
    ec_transfer.ensure_ec_transfer_shutdown()
    assert not ec_transfer.has_ec_transfer()
    assert RecordingConnector.shutdowns == before + 1


def test_an_instance_outside_ec_transfer_creates_nothing(registered):
    config = VllmConfig(ec_transfer_config=_ec_config(registered, is_ec_transfer_instance=False))
    ec_transfer.ensure_ec_transfer_initialized(config)
    assert not ec_transfer.has_ec_transfer()


def test_the_factory_finds_unregistered_classes_by_module_path(registered):
    by_path = _ec_config("RecordingConnector", ec_connector_module_path="ec_row_module")
    assert ECConnectorFactory.get_connector_class(by_path) is RecordingConnector
    with pytest.raises(ValueError, match="Unsupported connector type: Nope"):
        ECConnectorFactory.get_connector_class(_ec_config("Nope"))
    with pytest.raises(ValueError, match="EC connect must not be None"):
        ECConnectorFactory.get_connector_class(_ec_config(None))
    vllms_own = _ec_config("ECExampleConnector")
    with pytest.raises(ImportError):
        ECConnectorFactory.get_connector_class(vllms_own)


def test_a_bare_config_has_no_model_and_still_gets_a_worker():
    config = VllmConfig()
    assert config.model_config is None and config.ec_transfer_config is None
    assert config.parallel_config.worker_cls != "auto", "check_and_update_config still ran"
