"""Model Runner V1's sampler as a layer: `Sampler`, its `SamplingMetadata` and its output.

Plugins import these to wrap or patch the sampling step (flash-head replaces
`Sampler.forward`; platform runners build a `Sampler()` and call it with a
`SamplingMetadata`). The classes have vLLM 0.32's constructor, fields and `forward`
signature, and `forward` follows 0.32's order of steps on a batch of logits rows:

1. logprobs, if asked, from the raw logits (`logprobs_mode`);
2. to float32; the allowed-token mask, bad words, the processors that are not
   argmax-invariant, then repetition, frequency and presence penalties;
3. greedy rows take the argmax; the others are divided by their temperature, pass the
   argmax-invariant processors (min_p), top-k and top-p, and draw from their own generator
   (`generators[row]`, else torch's default one);
4. the top `max_num_logprobs` of the raw logprobs, with the sampled token's first.

Reduced: no FlashInfer or Triton kernels (vLLM draws by an exponential race, the reference
by `torch.multinomial`, so seeded random draws differ from vLLM's), no speculative-decoding
bonus tokens, no `logprob_token_ids` or thinking budget. The reference's own engine samples
through `reference.engine.sampler`, per request; it shares the top-k/top-p masking with this
layer. vLLM 0.34 deleted `vllm.v1.sample.sampler` and `.metadata` with the V1 runner; the
output types stay in `vllm.v1.outputs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from reference.engine.sampler import _apply_top_k_top_p

__all__ = [
    "LogprobsMode",
    "LogprobsTensors",
    "Sampler",
    "SamplerOutput",
    "SamplingMetadata",
]

#: What the logprobs returned are computed from (vLLM's `ModelConfig.logprobs_mode`).
LogprobsMode = Literal["raw_logits", "raw_logprobs", "processed_logits", "processed_logprobs"]

#: Temperatures below this sample greedily.
_SAMPLING_EPS = 1e-5


class LogprobsTensors(NamedTuple):
    """Per sampled token: the token's id then the top ids, their logprobs, and its rank."""

    #: [num tokens, max_num_logprobs + 1]
    logprob_token_ids: torch.Tensor
    #: [num tokens, max_num_logprobs + 1]
    logprobs: torch.Tensor
    #: [num tokens]
    selected_token_ranks: torch.Tensor
    cu_num_generated_tokens: list[int] | None = None
    cu_num_generated_tokens_tensor: torch.Tensor | None = None


@dataclass
class SamplerOutput:
    """The sampler's result: `[num requests, 1]` int32 token ids (one per request here)."""

    sampled_token_ids: torch.Tensor
    logprobs_tensors: LogprobsTensors | None


@dataclass
class SamplingMetadata:
    """The batch's sampling parameters as tensors, one row per request (vLLM 0.32's fields)."""

    temperature: torch.Tensor | None
    all_greedy: bool
    all_random: bool
    top_p: torch.Tensor | None
    top_k: torch.Tensor | None
    generators: dict[int, torch.Generator]
    #: None: no logprobs; 0: the sampled token's only.
    max_num_logprobs: int | None
    no_penalties: bool
    #: Prompts padded with the vocabulary size (no token has that id).
    prompt_token_ids: torch.Tensor | None
    frequency_penalties: torch.Tensor
    presence_penalties: torch.Tensor
    repetition_penalties: torch.Tensor
    output_token_ids: list[list[int]]
    #: True where a token is not allowed ([batch, vocab]).
    allowed_token_ids_mask: torch.Tensor | None
    #: row -> token-id sequences it must not end with.
    bad_words_token_ids: dict[int, list[list[int]]]
    #: The V1 `LogitsProcessors` of the runner.
    logitsprocs: Any
    logprob_token_ids: dict[int, list[int]] | None = None
    spec_token_ids: list[list[int]] | None = None
    thinking_budget_state_holder: Any = None


class Sampler(nn.Module):
    """Samples one next token per row of logits, as listed in the module docstring."""

    def __init__(self, logprobs_mode: LogprobsMode = "raw_logprobs", use_fp64_gumbel: bool = False):
        super().__init__()
        self.logprobs_mode = logprobs_mode
        #: Kept for the signature; the reference draws with `torch.multinomial`.
        self.use_fp64_gumbel = use_fp64_gumbel

    def forward(
        self,
        logits: torch.Tensor,
        sampling_metadata: SamplingMetadata,
        predict_bonus_token: bool = False,
        logprobs_mode_override: LogprobsMode | None = None,
    ) -> SamplerOutput:
        mode = logprobs_mode_override or self.logprobs_mode
        num_logprobs = sampling_metadata.max_num_logprobs
        raw: torch.Tensor | None = None
        if num_logprobs is not None:
            raw = (
                logits.to(torch.float32).clone()
                if mode == "raw_logits"
                else self.compute_logprobs(logits)
            )
        logits = self.apply_logits_processors(
            logits.to(torch.float32), sampling_metadata, predict_bonus_token
        )
        sampled, processed = self.sample(logits, sampling_metadata, mode)
        if processed is not None:
            raw = processed
        sampled = sampled.long()
        tensors = None
        if num_logprobs == -1:
            tensors = LogprobsTensors(torch.empty(0), raw, torch.empty(0))
        elif num_logprobs is not None:
            tensors = self.gather_logprobs(raw, num_logprobs, token_ids=sampled)
        return SamplerOutput(
            sampled_token_ids=sampled.to(torch.int32).unsqueeze(-1), logprobs_tensors=tensors
        )

    @staticmethod
    def compute_logprobs(logits: torch.Tensor) -> torch.Tensor:
        return logits.log_softmax(dim=-1, dtype=torch.float32)

    @staticmethod
    def greedy_sample(logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=-1).view(-1)

    @staticmethod
    def apply_temperature(
        logits: torch.Tensor, temp: torch.Tensor, all_random: bool
    ) -> torch.Tensor:
        if not all_random:
            temp = torch.where(temp < _SAMPLING_EPS, 1.0, temp)
        return logits.div_(temp.unsqueeze(dim=1))

    def sample(
        self,
        logits: torch.Tensor,
        sampling_metadata: SamplingMetadata,
        logprobs_mode_override: LogprobsMode | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(sampled ids, processed logprobs or logits where the mode asks for them)."""
        mode = logprobs_mode_override or self.logprobs_mode
        meta = sampling_metadata
        assert not (meta.all_greedy and meta.all_random)
        greedy = None if meta.all_random else self.greedy_sample(logits)
        if meta.all_greedy:
            processed = None
            if meta.max_num_logprobs is not None:
                if mode == "processed_logits":
                    processed = logits
                elif mode == "processed_logprobs":
                    processed = self.compute_logprobs(logits)
            return greedy, processed
        assert meta.temperature is not None
        logits = self.apply_temperature(logits, meta.temperature, meta.all_random)
        for processor in meta.logitsprocs.argmax_invariant:
            logits = processor.apply(logits)
        drawn, processed = self._top_k_top_p_sample(logits, meta, mode)
        if greedy is None:
            return drawn, processed
        return torch.where(meta.temperature < _SAMPLING_EPS, greedy, drawn), processed

    def _top_k_top_p_sample(
        self, logits: torch.Tensor, meta: SamplingMetadata, mode: LogprobsMode
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        vocab = logits.shape[-1]
        rows = []
        for i in range(logits.shape[0]):
            top_k = int(meta.top_k[i]) if meta.top_k is not None else vocab
            top_p = float(meta.top_p[i]) if meta.top_p is not None else 1.0
            rows.append(_apply_top_k_top_p(logits[i], top_k, top_p))
        masked = torch.stack(rows) if rows else logits
        processed = None
        if mode == "processed_logits":
            processed = masked
        elif mode == "processed_logprobs":
            processed = self.compute_logprobs(masked)
        probs = masked.softmax(dim=-1, dtype=torch.float32)
        drawn = [
            torch.multinomial(probs[i].cpu(), 1, generator=meta.generators.get(i))
            for i in range(probs.shape[0])
        ]
        ids = torch.cat(drawn).to(logits.device) if drawn else torch.empty(0, dtype=torch.long)
        return ids, processed

    @staticmethod
    def gather_logprobs(
        logprobs: torch.Tensor, num_logprobs: int, token_ids: torch.Tensor
    ) -> LogprobsTensors:
        """The sampled token's logprob and rank, then the top `num_logprobs` (ids as int32)."""
        assert token_ids.dtype == torch.int64
        top_values, top_ids = torch.topk(logprobs, num_logprobs, dim=-1)
        token_ids = token_ids.unsqueeze(-1)
        token_logprobs = logprobs.gather(-1, token_ids)
        ranks = (logprobs > token_logprobs).sum(-1) + 1
        ids = torch.cat((token_ids, top_ids), dim=1).to(torch.int32)
        return LogprobsTensors(ids, torch.cat((token_logprobs, top_values), dim=1), ranks)

    def apply_logits_processors(
        self, logits: torch.Tensor, sampling_metadata: SamplingMetadata, predict_bonus_token: bool
    ) -> torch.Tensor:
        """The allowed-token mask, bad words, the non-argmax-invariant processors, penalties."""
        meta = sampling_metadata
        if meta.allowed_token_ids_mask is not None:
            logits.masked_fill_(meta.allowed_token_ids_mask, float("-inf"))
        for row, words in (meta.bad_words_token_ids or {}).items():
            _ban_bad_words(logits[row], words, meta.output_token_ids[row])
        for processor in meta.logitsprocs.non_argmax_invariant:
            logits = processor.apply(logits)
        return self.apply_penalties(logits, meta, meta.output_token_ids)

    @staticmethod
    def apply_penalties(
        logits: torch.Tensor, sampling_metadata: SamplingMetadata, output_token_ids: list[list[int]]
    ) -> torch.Tensor:
        """Repetition (over prompt and output tokens), frequency and presence penalties."""
        meta = sampling_metadata
        if meta.no_penalties:
            return logits
        assert meta.prompt_token_ids is not None
        rows, vocab = logits.shape
        seen_in_prompt = _token_counts(meta.prompt_token_ids.tolist(), rows, vocab) > 0
        counts = _token_counts(output_token_ids, rows, vocab).to(logits.dtype)
        seen = seen_in_prompt | (counts > 0)
        repetition = meta.repetition_penalties.to(logits.dtype).unsqueeze(1).expand_as(logits)
        scale = torch.where(seen, repetition, torch.ones_like(logits))
        logits = torch.where(logits > 0, logits / scale, logits * scale)
        logits -= meta.frequency_penalties.to(logits.dtype).unsqueeze(1) * counts
        logits -= meta.presence_penalties.to(logits.dtype).unsqueeze(1) * (counts > 0)
        return logits


def _token_counts(token_ids: list[list[int]], rows: int, vocab: int) -> torch.Tensor:
    """[rows, vocab] occurrence counts; ids outside the vocabulary (padding, -1) are ignored."""
    counts = torch.zeros(rows, vocab, dtype=torch.int64)
    for row, ids in enumerate(token_ids[:rows]):
        for token in ids:
            if 0 <= token < vocab:
                counts[row, token] += 1
    return counts


def _ban_bad_words(row: torch.Tensor, words: list[list[int]], past: list[int]) -> None:
    """Ban the last token of each word whose other tokens are what the row generated last."""
    for word in words:
        prefix = word[:-1]
        if len(prefix) > len(past):
            continue
        if not prefix or past[-len(prefix) :] == prefix:
            row[word[-1]] = float("-inf")
