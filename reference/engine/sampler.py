"""The sampler: logits processors (V1 or Model Runner V2 interface), temperature, min_p,
top-k/top-p, seeded sampling and logprobs, for one batch of logits rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from reference.engine.messages import SampledToken


@dataclass
class SamplingRow:
    """What the sampler needs of one request in the batch."""

    params: Any
    generator: torch.Generator
    output_token_ids: list[int]


def _apply_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask a 1-D row outside its top `top_k` tokens and outside the `top_p` nucleus."""
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # A token stays if the mass before it is below top_p (so the top token always stays).
        before = torch.cumsum(probs, dim=-1) - probs
        drop = before > top_p
        logits = logits.clone()
        logits[order[drop]] = float("-inf")
    return logits


def _min_p_row(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    probs = torch.softmax(logits, dim=-1)
    return logits.masked_fill(probs < probs.max() * min_p, float("-inf"))


def apply_builtin_v2(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """Model Runner V2's own logit bias and min-tokens (they are not processors there)."""
    for i, row in enumerate(rows):
        params = row.params
        if params.logit_bias:
            for token, bias in params.logit_bias.items():
                logits[i, int(token)] += float(bias)
        if params.min_tokens and len(row.output_token_ids) < params.min_tokens:
            stop_ids = list(params.all_stop_token_ids or ())
            if stop_ids:
                logits[i, stop_ids] = float("-inf")
    return logits


def sample(
    logits: torch.Tensor,
    rows: Sequence[SamplingRow],
    *,
    v1_processors: Any = None,
    v2_processors: Sequence[Any] = (),
    v2_context: Any = None,
) -> list[SampledToken]:
    """Sample one token per row of `logits` (`[len(rows), vocab]`).

    Order, as in vLLM: logprobs are taken from the raw logits; then the V1 non-argmax-invariant
    processors (min_tokens, logit_bias, custom), or under MRV2 the runner's bias/min-tokens and
    the custom processors' `apply(logits, ctx)`; greedy rows take the argmax there; the others
    are divided by their temperature, pass min_p (V1: the argmax-invariant processors), top-k
    and top-p, and draw from their own seeded generator.
    """
    logits = logits.to(torch.float32)
    raw_logprobs = torch.log_softmax(logits, dim=-1)
    if v1_processors is not None:
        for proc in v1_processors.non_argmax_invariant:
            logits = proc.apply(logits)
    else:
        logits = apply_builtin_v2(logits, rows)
        for proc in v2_processors:
            logits = proc.apply(logits, v2_context)
    greedy = [row.params.temperature == 0.0 for row in rows]
    temperatures = torch.tensor(
        [1.0 if g else float(row.params.temperature) for g, row in zip(greedy, rows, strict=True)],
        dtype=logits.dtype,
        device=logits.device,
    )
    scaled = logits / temperatures[:, None]
    if v1_processors is not None:
        for proc in v1_processors.argmax_invariant:
            scaled = proc.apply(scaled)
    results: list[SampledToken] = []
    for i, row in enumerate(rows):
        params = row.params
        if greedy[i]:
            token = int(torch.argmax(logits[i]).item())
        else:
            row_logits = scaled[i]
            if v1_processors is None and params.min_p:
                row_logits = _min_p_row(row_logits, float(params.min_p))
            row_logits = _apply_top_k_top_p(row_logits, int(params.top_k), float(params.top_p))
            probs = torch.softmax(row_logits, dim=-1)
            token = int(torch.multinomial(probs.cpu(), 1, generator=row.generator).item())
        results.append(_with_logprobs(raw_logprobs[i], token, params.logprobs))
    return results


def _with_logprobs(raw: torch.Tensor, token: int, num_logprobs: int | None) -> SampledToken:
    logprob = float(raw[token])
    rank = int((raw > raw[token]).sum().item()) + 1
    top = None
    if num_logprobs is not None:
        k = max(0, min(int(num_logprobs), raw.shape[-1]))
        values, ids = torch.topk(raw, k) if k else (raw[:0], raw[:0].long())
        top = [(int(t), float(v), r + 1) for r, (v, t) in enumerate(zip(values, ids, strict=True))]
    return SampledToken(token_id=token, logprob=logprob, rank=rank, top=top)
