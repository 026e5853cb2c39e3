"""What the engine core sends its workers each step, and what they send back (torch-free).

Both cross process boundaries (pickled through pipes) with the multiprocessing executor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class NewRequestData:
    """A request scheduled for the first time: the worker prefills its whole prompt."""

    req_id: str
    prompt_token_ids: list[int]
    sampling_params: Any = None
    pooling_params: Any = None
    lora_request: Any = None
    #: The seed of the request's sampling generator: the user's `seed`, else one the engine
    #: core drew, so that every worker replica draws the same tokens.
    seed: int = 0
    multi_modal_data: dict[str, Any] | None = None


@dataclass
class CachedRequestData:
    """A running request decoding one more token: `token_id` is its latest sampled token."""

    req_id: str
    token_id: int


@dataclass
class SchedulerOutput:
    """One engine step: new and continuing requests in batch order, plus those that left."""

    new_reqs: list[NewRequestData] = field(default_factory=list)
    cached_reqs: list[CachedRequestData] = field(default_factory=list)
    #: Requests that finished or were aborted since the previous step (free their state).
    finished_req_ids: set[str] = field(default_factory=set)
    num_scheduled_tokens: int = 0

    @property
    def is_empty(self) -> bool:
        return not (self.new_reqs or self.cached_reqs)


@dataclass
class SampledToken:
    """One generated token, with its logprob and rank among the raw (unprocessed) logprobs."""

    token_id: int
    logprob: float
    rank: int
    #: `(token_id, logprob, rank)` of the top `SamplingParams.logprobs` tokens, if asked.
    top: list[tuple[int, float, int]] | None = None


@dataclass
class ModelRunnerOutput:
    """Per scheduled request: its sampled token (generation) or pooled output (pooling)."""

    sampled: dict[str, SampledToken] = field(default_factory=dict)
    pooled: dict[str, Any] = field(default_factory=dict)
