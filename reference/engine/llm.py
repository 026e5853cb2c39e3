"""`LLM` (`vllm.entrypoints.llm`): offline generation and pooling over the engine core.

The engine core runs in this process and drives its executor (see docs/engine.md).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from reference.engine.args import EngineArgs
from reference.engine.core import Request
from reference.engine.llm_engine import LLMEngine
from reference.logger import init_logger
from reference.outputs import (
    CompletionOutput,
    PoolingOutput,
    PoolingRequestOutput,
    RequestOutput,
)

logger = init_logger("vllm.entrypoints.llm")


class Logprob:
    """A token's log probability, its rank and text (`vllm.logprobs.Logprob`)."""

    __slots__ = ("decoded_token", "logprob", "rank")

    def __init__(self, logprob: float, rank: int | None = None, decoded_token: str | None = None):
        self.logprob = logprob
        self.rank = rank
        self.decoded_token = decoded_token

    def __repr__(self) -> str:
        return (
            f"Logprob(logprob={self.logprob}, rank={self.rank}, "
            f"decoded_token={self.decoded_token!r})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Logprob) and (
            (self.logprob, self.rank, self.decoded_token)
            == (other.logprob, other.rank, other.decoded_token)
        )


def normalize_prompt(prompt: Any, tokenizer: Any) -> tuple[str | None, list[int], dict | None]:
    """`(text, token ids, multi_modal_data)` of a str, `TextPrompt` or `TokensPrompt`."""
    if isinstance(prompt, str):
        prompt = {"prompt": prompt}
    if not isinstance(prompt, dict):
        raise TypeError(
            f"A prompt must be a str, a TextPrompt or a TokensPrompt dict, got {type(prompt)!r}."
        )
    mm = prompt.get("multi_modal_data")
    if "prompt_token_ids" in prompt:
        return prompt.get("prompt"), [int(t) for t in prompt["prompt_token_ids"]], mm
    if "prompt" in prompt:
        if tokenizer is None:
            raise ValueError(
                "This engine was built without a tokenizer (skip_tokenizer_init); pass "
                "TokensPrompt(prompt_token_ids=[...]) instead of text."
            )
        return prompt["prompt"], list(tokenizer(prompt["prompt"]).input_ids), mm
    raise ValueError(
        f"A prompt dict needs 'prompt' or 'prompt_token_ids'; got keys {list(prompt)}."
    )


def build_request_output(request: Request, tokenizer: Any) -> RequestOutput:
    """The user-facing, cumulative output of a generation request."""
    params = request.sampling_params
    logprobs = None
    cumulative = None
    if params.logprobs is not None:
        logprobs = []
        cumulative = 0.0
        for sampled in request.logprobs:
            entry = {}
            for token, value, rank in sampled.top or []:
                entry[token] = Logprob(value, rank, _decode(tokenizer, token))
            entry[sampled.token_id] = Logprob(
                sampled.logprob, sampled.rank, _decode(tokenizer, sampled.token_id)
            )
            logprobs.append(entry)
            cumulative += sampled.logprob
    completion = CompletionOutput(
        index=0,
        text=request.text,
        token_ids=list(request.output_token_ids),
        cumulative_logprob=cumulative,
        logprobs=logprobs,
        finish_reason=request.finish_reason,
        stop_reason=request.stop_reason,
        lora_request=request.lora_request,
    )
    return RequestOutput(
        request_id=request.request_id,
        prompt=request.prompt,
        prompt_token_ids=list(request.prompt_token_ids),
        outputs=[completion],
        finished=request.finished,
        lora_request=request.lora_request,
    )


def build_pooling_output(request: Request) -> PoolingRequestOutput:
    return PoolingRequestOutput(
        request_id=request.request_id,
        outputs=PoolingOutput(data=request.pooled),
        prompt_token_ids=list(request.prompt_token_ids),
        finished=True,
    )


def _decode(tokenizer: Any, token: int) -> str | None:
    return None if tokenizer is None else tokenizer.decode([token])


def _as_list(value: Any, n: int, what: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"Got {len(value)} {what} for {n} prompts; give one, or one each.")
        return list(value)
    return [value] * n


class LLM:
    """An offline engine: `LLM(model=DIR, ...)`, then `generate(...)` or `encode(...)`.

    Keyword arguments are `EngineArgs` fields (`max_num_seqs`, `tensor_parallel_size`,
    `distributed_executor_backend`, `logits_processors`, `io_processor_plugin`, ...).
    """

    def __init__(self, model: str, **kwargs: Any) -> None:
        kwargs.pop("trust_remote_code", None)  # local checkpoints only; nothing remote runs
        self.engine_args = EngineArgs(model=str(model), **kwargs)
        # Through the class attribute, as vLLM does: a plugin may have wrapped it.
        self.llm_engine = LLMEngine.from_engine_args(self.engine_args)
        self.llm_engine_config = self.vllm_config = self.llm_engine.vllm_config
        self.engine_core = self.llm_engine.engine_core
        self.tokenizer = self.engine_core.tokenizer
        self._counter = itertools.count()
        self._io_processor: Any = None
        self._io_processor_loaded = False
        from reference.logits.loader import params_validator_for

        self._validate_params = (
            None
            if self.vllm_config.model_config.is_pooling_model
            else params_validator_for(self.vllm_config)
        )

    # ----------------------------------------------------------------------------------------

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def collective_rpc(
        self,
        method: str,
        timeout: float | None = None,
        args: tuple = (),
        kwargs: dict[str, Any] | None = None,
    ) -> list[Any]:
        """Call `method` on every worker; one result per worker, in rank order."""
        return self.engine_core.collective_rpc(method, timeout=timeout, args=args, kwargs=kwargs)

    def shutdown(self) -> None:
        """Stop the workers (also done when the LLM is garbage-collected or at exit)."""
        core = self.__dict__.get("engine_core")
        if core is not None:
            core.shutdown()

    def __del__(self) -> None:
        try:
            self.shutdown()
        except Exception:
            pass

    # ----------------------------------------------------------------------------------------

    def _next_id(self) -> str:
        return str(next(self._counter))

    def _run(self, requests: list[Request]) -> None:
        for request in requests:
            self.engine_core.add_request(request)
        while any(not r.finished for r in requests):
            self.engine_core.step()

    def generate(
        self,
        prompts: Any,
        sampling_params: Any = None,
        *,
        use_tqdm: bool = False,
        lora_request: Any = None,
        **_: Any,
    ) -> list[RequestOutput]:
        """Generate for a prompt or a list of prompts (str, TextPrompt, TokensPrompt)."""
        from reference.sampling_params import SamplingParams

        if self.vllm_config.model_config.is_pooling_model:
            raise ValueError(
                "LLM.generate() needs a generating model; this one is a pooling model. "
                "Use LLM.encode() or LLM.embed()."
            )
        prompt_list = list(prompts) if isinstance(prompts, (list, tuple)) else [prompts]
        params = _as_list(sampling_params or SamplingParams(), len(prompt_list), "sampling_params")
        loras = _as_list(lora_request, len(prompt_list), "lora_requests")
        requests = []
        for prompt, param, lora in zip(prompt_list, params, loras, strict=True):
            if self._validate_params is not None:
                self._validate_params(param)
            text, ids, mm = normalize_prompt(prompt, self.tokenizer)
            requests.append(
                Request(
                    request_id=self._next_id(),
                    prompt=text,
                    prompt_token_ids=ids,
                    sampling_params=param,
                    lora_request=lora,
                    multi_modal_data=mm,
                )
            )
        self._run(requests)
        return [build_request_output(r, self.tokenizer) for r in requests]

    # ----------------------------------------------------------------------------------------
    # Pooling

    @property
    def io_processor(self) -> Any:
        """The IO processor plugin requested by `io_processor_plugin` or config.json, if any."""
        if not self._io_processor_loaded:
            from reference.io_processors import BaseRenderer, get_io_processor

            self._io_processor = get_io_processor(
                self.vllm_config,
                BaseRenderer(self.vllm_config, self.tokenizer),
                self.vllm_config.model_config.io_processor_plugin,
            )
            self._io_processor_loaded = True
        return self._io_processor

    def _pool(self, prompts: Sequence[Any], pooling_params: Any) -> list[PoolingRequestOutput]:
        from reference.pooling_params import PoolingParams

        params = _as_list(pooling_params or PoolingParams(), len(prompts), "pooling_params")
        requests = []
        for prompt, param in zip(prompts, params, strict=True):
            text, ids, mm = normalize_prompt(prompt, self.tokenizer)
            requests.append(
                Request(
                    request_id=self._next_id(),
                    prompt=text,
                    prompt_token_ids=ids,
                    pooling_params=param,
                    multi_modal_data=mm,
                )
            )
        self._run(requests)
        return [build_pooling_output(r) for r in requests]

    def encode(
        self,
        prompts: Any,
        pooling_params: Any = None,
        *,
        use_tqdm: bool = False,
        pooling_task: str | None = None,
        lora_request: Any = None,
        **_: Any,
    ) -> list[PoolingRequestOutput]:
        """Pool prompts; with an IO processor plugin, `prompts` is the plugin's request data
        and the single output's `outputs` is what the plugin's `post_process` returned."""
        if not self.vllm_config.model_config.is_pooling_model:
            raise ValueError(
                "LLM.encode() needs a pooling model; this one generates. Use LLM.generate(), "
                "or pass runner='pooling'."
            )
        is_plugin_data = isinstance(prompts, dict) and "data" in prompts
        if pooling_task == "plugin" or (is_plugin_data and self.io_processor is not None):
            return self._encode_with_io_processor(prompts, pooling_params)
        prompt_list = list(prompts) if isinstance(prompts, (list, tuple)) else [prompts]
        return self._pool(prompt_list, pooling_params)

    def _encode_with_io_processor(self, data: Any, pooling_params: Any) -> list[Any]:
        processor = self.io_processor
        if processor is None:
            raise ValueError(
                "pooling_task='plugin' needs an IO processor plugin: pass "
                "io_processor_plugin=NAME to LLM(...) or set it in the model's config.json."
            )
        request_id = f"io-{self._next_id()}"
        parsed = processor.parse_data(data)
        params = processor.merge_pooling_params(pooling_params)
        engine_prompts = processor.pre_process(parsed, request_id=request_id)
        if isinstance(engine_prompts, (str, dict)):
            engine_prompts = [engine_prompts]
        outputs = self._pool(list(engine_prompts), params)
        result = processor.post_process(outputs, request_id=request_id)
        return [PoolingRequestOutput(request_id, result, prompt_token_ids=[], finished=True)]

    def embed(self, prompts: Any, pooling_params: Any = None, **kwargs: Any) -> list[Any]:
        """Embeddings: `encode` for embedding models."""
        return self.encode(prompts, pooling_params, pooling_task="embed", **kwargs)
