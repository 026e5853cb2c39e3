"""The engine core: requests, a continuous-batching scheduler (bounded by `max_num_seqs` and
`max_num_batched_tokens`), stop conditions and detokenization, driving an executor.
"""

from __future__ import annotations

import copy
import enum
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from reference.config import VllmConfig
from reference.engine.executor import Executor
from reference.engine.messages import (
    CachedRequestData,
    ModelRunnerOutput,
    NewRequestData,
    SampledToken,
    SchedulerOutput,
)
from reference.logger import init_logger
from reference.metrics import FinishedRequestStats, IterationStats, SchedulerStats

logger = init_logger("vllm.v1.engine.core")


class RequestStatus(enum.Enum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    FINISHED = enum.auto()


@dataclass
class Request:
    """One request as the engine core tracks it."""

    request_id: str
    prompt_token_ids: list[int]
    prompt: str | None = None
    sampling_params: Any = None
    pooling_params: Any = None
    lora_request: Any = None
    multi_modal_data: dict[str, Any] | None = None
    seed: int = 0
    status: RequestStatus = RequestStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    logprobs: list[SampledToken] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    pooled: Any = None
    arrival_time: float = field(default_factory=time.monotonic)
    scheduled_time: float | None = None
    first_token_time: float | None = None
    #: The token the request feeds at its next step (its latest sampled one).
    pending_token: int | None = None

    @property
    def is_pooling(self) -> bool:
        return self.pooling_params is not None

    @property
    def finished(self) -> bool:
        return self.status is RequestStatus.FINISHED


class Scheduler:
    """First come, first served, with continuous batching: running requests decode one token
    per step (up to `max_num_batched_tokens`), and waiting ones join while fewer than
    `max_num_seqs` run and their whole prompt fits in the step's remaining token budget."""

    def __init__(self, vllm_config: VllmConfig) -> None:
        config = vllm_config.scheduler_config
        self.max_num_seqs = config.max_num_seqs
        self.max_num_batched_tokens = config.max_num_batched_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.finished_req_ids: set[str] = set()
        self.step_counter = 0

    def add_request(self, request: Request) -> None:
        self.waiting.append(request)

    def finish(self, request: Request, reason: str, stop_reason: int | str | None = None) -> None:
        if request.finished:
            return
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
        request.stop_reason = stop_reason
        if request in self.running:
            self.running.remove(request)
            self.finished_req_ids.add(request.request_id)
        elif request in self.waiting:
            self.waiting.remove(request)

    def schedule(self) -> SchedulerOutput:
        output = SchedulerOutput(finished_req_ids=self.finished_req_ids)
        self.finished_req_ids = set()
        budget = self.max_num_batched_tokens
        for request in self.running:
            if budget < 1:
                break
            assert request.pending_token is not None
            output.cached_reqs.append(CachedRequestData(request.request_id, request.pending_token))
            budget -= 1
        while self.waiting and len(self.running) < self.max_num_seqs:
            request = self.waiting[0]
            if len(request.prompt_token_ids) > budget:
                break
            self.waiting.popleft()
            budget -= len(request.prompt_token_ids)
            request.status = RequestStatus.RUNNING
            request.scheduled_time = time.monotonic()
            self.running.append(request)
            output.new_reqs.append(
                NewRequestData(
                    req_id=request.request_id,
                    prompt_token_ids=request.prompt_token_ids,
                    sampling_params=request.sampling_params,
                    pooling_params=request.pooling_params,
                    lora_request=request.lora_request,
                    seed=request.seed,
                    multi_modal_data=request.multi_modal_data,
                )
            )
        output.num_scheduled_tokens = self.max_num_batched_tokens - budget
        self.step_counter += 1
        return output

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)


@dataclass
class StepResult:
    """What one step changed: the requests that got output, and the step's stats."""

    updated: list[Request]
    scheduler_stats: SchedulerStats
    iteration_stats: IterationStats


class EngineCore:
    """Owns the scheduler and the executor; `step()` runs one batch (vLLM's `EngineCore`)."""

    def __init__(self, vllm_config: VllmConfig, executor_class: type[Executor] | None = None):
        # vLLM loads general plugins here too: the engine core may be a process of its own.
        from reference.plugins import load_general_plugins

        load_general_plugins()
        self.vllm_config = vllm_config
        self.model_config = vllm_config.model_config
        self.scheduler = Scheduler(vllm_config)
        self.requests: dict[str, Request] = {}
        self.tokenizer = load_tokenizer(vllm_config)
        self._rng = random.Random(vllm_config.model_config.seed)
        hf = self.model_config.hf_config
        eos = hf.get("eos_token_id")
        if eos is None and self.tokenizer is not None:
            eos = self.tokenizer.eos_token_id
        self.eos_token_ids: set[int] = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.max_model_len = int(self.model_config.max_model_len or 2048)
        executor_class = executor_class or Executor.get_class(vllm_config)
        self.executor = executor_class(vllm_config)

    # ----------------------------------------------------------------------------------------
    # Requests

    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"Request id {request.request_id!r} is already in use.")
        prompt_len = len(request.prompt_token_ids)
        if prompt_len == 0:
            raise ValueError("The prompt is empty; give at least one token.")
        if prompt_len >= self.max_model_len and not request.is_pooling:
            raise ValueError(
                f"The decoder prompt (length {prompt_len}) is longer than the maximum model "
                f"length of {self.max_model_len}. Make sure that `max_model_len` is no smaller "
                "than the number of text tokens."
            )
        if prompt_len > self.scheduler.max_num_batched_tokens:
            raise ValueError(
                f"The prompt ({prompt_len} tokens) exceeds max_num_batched_tokens="
                f"{self.scheduler.max_num_batched_tokens}; the reference engine does not chunk "
                "prefills, so raise max_num_batched_tokens."
            )
        if request.sampling_params is not None and request.sampling_params.n != 1:
            raise ValueError(
                f"SamplingParams.n={request.sampling_params.n} is not supported by the reference "
                "engine; submit the prompt n times with different seeds instead."
            )
        if request.sampling_params is not None:
            params = _clone_params(request.sampling_params)
            if not params.ignore_eos:
                params.all_stop_token_ids = set(params.all_stop_token_ids) | self.eos_token_ids
            request.sampling_params = params
            # A drawn seed for unseeded requests keeps every worker replica in step.
            request.seed = params.seed if params.seed is not None else self._rng.getrandbits(63)
        self.requests[request.request_id] = request
        self.scheduler.add_request(request)

    def abort_requests(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            request = self.requests.pop(request_id, None)
            if request is not None:
                self.scheduler.finish(request, "abort")

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    # ----------------------------------------------------------------------------------------
    # Steps

    def step(self) -> StepResult:
        scheduler_output = self.scheduler.schedule()
        iteration = IterationStats()
        updated: list[Request] = []
        if not scheduler_output.is_empty or scheduler_output.finished_req_ids:
            model_output = self.executor.execute_model(scheduler_output)
            if not scheduler_output.is_empty:
                updated = self._update_from_output(scheduler_output, model_output, iteration)
        stats = SchedulerStats(
            num_running_reqs=len(self.scheduler.running),
            num_waiting_reqs=len(self.scheduler.waiting),
            step_counter=self.scheduler.step_counter,
            kv_cache_usage=min(1.0, len(self.scheduler.running) / self.scheduler.max_num_seqs),
        )
        return StepResult(updated, stats, iteration)

    def _update_from_output(
        self,
        scheduler_output: SchedulerOutput,
        model_output: ModelRunnerOutput,
        iteration: IterationStats,
    ) -> list[Request]:
        now = time.monotonic()
        updated = []
        for new in scheduler_output.new_reqs:
            iteration.prompt_token_stats.computed += len(new.prompt_token_ids)
            iteration.prompt_token_stats.total += len(new.prompt_token_ids)
        for req_id in [n.req_id for n in scheduler_output.new_reqs] + [
            c.req_id for c in scheduler_output.cached_reqs
        ]:
            request = self.requests.get(req_id)
            if request is None or request.finished:
                continue
            if request.is_pooling:
                request.pooled = model_output.pooled[req_id]
                self.scheduler.finish(request, "stop")
            else:
                sampled = model_output.sampled[req_id]
                if request.first_token_time is None:
                    request.first_token_time = now
                    iteration.time_to_first_tokens_iter.append(now - request.arrival_time)
                iteration.num_generation_tokens += 1
                self._append_token(request, sampled)
            updated.append(request)
            if request.finished:
                self.requests.pop(req_id, None)
                iteration.finished_requests.append(
                    FinishedRequestStats(
                        finish_reason=str(request.finish_reason),
                        e2e_latency=now - request.arrival_time,
                        num_prompt_tokens=len(request.prompt_token_ids),
                        num_generation_tokens=len(request.output_token_ids),
                        queued_time=(request.scheduled_time or now) - request.arrival_time,
                    )
                )
        return updated

    def _append_token(self, request: Request, sampled: SampledToken) -> None:
        params = request.sampling_params
        token = sampled.token_id
        request.output_token_ids.append(token)
        request.logprobs.append(sampled)
        request.pending_token = token
        num_out = len(request.output_token_ids)
        total = len(request.prompt_token_ids) + num_out
        if self.tokenizer is not None:
            request.text = self.tokenizer.decode(request.output_token_ids, skip_special_tokens=True)
        if num_out >= (params.min_tokens or 0):
            if not params.ignore_eos and token in self.eos_token_ids:
                return self.scheduler.finish(request, "stop")
            if token in (params.stop_token_ids or ()):
                return self.scheduler.finish(request, "stop", token)
            if params.stop and self.tokenizer is not None:
                for stop in params.stop:
                    at = request.text.find(stop)
                    if at >= 0:
                        request.text = request.text[:at]
                        return self.scheduler.finish(request, "stop", stop)
        if params.max_tokens is not None and num_out >= params.max_tokens:
            return self.scheduler.finish(request, "length")
        if total >= self.max_model_len:
            return self.scheduler.finish(request, "length")
        return None

    def collective_rpc(
        self, method: str, timeout: float | None = None, args: tuple = (), kwargs: Any = None
    ) -> list[Any]:
        return self.executor.collective_rpc(method, timeout=timeout, args=args, kwargs=kwargs)

    def shutdown(self) -> None:
        self.executor.shutdown()


def _clone_params(params: Any) -> Any:
    """A per-request copy, so the engine's edits never reach the caller's object."""
    clone = copy.copy(params)
    clone.stop = list(params.stop or [])
    clone.stop_token_ids = list(params.stop_token_ids or [])
    clone.all_stop_token_ids = set(params.all_stop_token_ids or ())
    return clone


def load_tokenizer(vllm_config: VllmConfig) -> Any:
    """The checkpoint's tokenizer (transformers), or None with `skip_tokenizer_init`."""
    model_config = vllm_config.model_config
    if model_config.skip_tokenizer_init:
        return None
    from transformers import AutoTokenizer

    path = model_config.tokenizer or model_config.model
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        if model_config.is_pooling_model:
            logger.debug("No tokenizer at %s (%s); token-id prompts only.", path, exc)
            return None
        raise ValueError(
            f"Cannot load a tokenizer from {path}: {exc}. Give `tokenizer=` a directory that "
            "holds one, or pass `skip_tokenizer_init=True` and token-id prompts."
        ) from exc
