"""`AsyncLLM` (`vllm.v1.engine.async_llm`): the asyncio engine of a server, which builds the
stat loggers (plugins included) and feeds them every step; plus the serving layer's
model-name → LoRA adapter resolution (`ServingModels`).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator
from typing import Any

from reference import envs
from reference.config import VllmConfig
from reference.engine.args import AsyncEngineArgs
from reference.engine.core import EngineCore, Request
from reference.engine.llm import build_pooling_output, build_request_output, normalize_prompt
from reference.logger import init_logger

logger = init_logger("vllm.v1.engine.async_llm")


class AsyncLLM:
    """Streams `RequestOutput`s (cumulative) per request; one engine loop task steps the core."""

    def __init__(
        self,
        vllm_config: VllmConfig,
        *,
        log_stats: bool = True,
        stat_loggers: list[Any] | None = None,
        aggregate_engine_logging: bool = False,
    ) -> None:
        from reference.metrics import StatLoggerManager, load_stat_logger_plugin_factories

        self.vllm_config = vllm_config
        self.engine_core = EngineCore(vllm_config)
        self.tokenizer = self.engine_core.tokenizer
        custom = list(stat_loggers or []) + load_stat_logger_plugin_factories()
        enable_default = log_stats
        if custom and not log_stats:
            logger.info(
                "AsyncLLM created with log_stats=False, but custom stat loggers were found; "
                "enabling logging without default stat loggers."
            )
            log_stats = True
        self.log_stats = log_stats
        self.logger_manager = None
        if log_stats:
            self.logger_manager = StatLoggerManager(
                vllm_config,
                engine_idxs=[0],
                custom_stat_loggers=custom,
                enable_default_loggers=enable_default,
                aggregate_engine_logging=aggregate_engine_logging,
            )
            self.logger_manager.log_engine_initialized()
        self._queues: dict[str, asyncio.Queue] = {}
        self._loop_task: asyncio.Task | None = None
        self._counter = itertools.count()
        from reference.logits.loader import params_validator_for

        self._validate_params = (
            None if vllm_config.model_config.is_pooling_model else params_validator_for(vllm_config)
        )
        self.serving_models = ServingModels(self)

    @classmethod
    def from_engine_args(
        cls, engine_args: AsyncEngineArgs, stat_loggers: list[Any] | None = None, **kwargs: Any
    ) -> AsyncLLM:
        return cls(
            engine_args.create_engine_config(),
            log_stats=not engine_args.disable_log_stats,
            stat_loggers=stat_loggers,
            **kwargs,
        )

    # ----------------------------------------------------------------------------------------
    # The engine loop

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._run_engine())

    async def _run_engine(self) -> None:
        core = self.engine_core
        while core.has_unfinished_requests():
            try:
                result = core.step()
            except BaseException as exc:
                for queue in self._queues.values():
                    queue.put_nowait(exc)
                raise
            for request in result.updated:
                queue = self._queues.get(request.request_id)
                if queue is None:
                    continue
                if request.is_pooling:
                    queue.put_nowait(build_pooling_output(request))
                else:
                    queue.put_nowait(build_request_output(request, self.tokenizer))
            if self.logger_manager is not None:
                self.logger_manager.record(
                    scheduler_stats=result.scheduler_stats,
                    iteration_stats=result.iteration_stats,
                    engine_idx=0,
                )
            # Let the request coroutines consume their outputs and new requests arrive.
            await asyncio.sleep(0)

    async def _submit(self, request: Request) -> AsyncGenerator[Any, None]:
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[request.request_id] = queue
        try:
            self.engine_core.add_request(request)
        except BaseException:
            del self._queues[request.request_id]
            raise
        self._ensure_loop()
        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            self._queues.pop(request.request_id, None)
            if not finished:
                self.engine_core.abort_requests([request.request_id])

    async def generate(
        self,
        prompt: Any,
        sampling_params: Any,
        request_id: str | None = None,
        *,
        lora_request: Any = None,
        **_: Any,
    ) -> AsyncGenerator[Any, None]:
        """Yield the request's cumulative `RequestOutput` after every step; the last is finished."""
        if self._validate_params is not None:
            self._validate_params(sampling_params)
        text, ids, mm = normalize_prompt(prompt, self.tokenizer)
        request = Request(
            request_id=request_id or f"async-{next(self._counter)}",
            prompt=text,
            prompt_token_ids=ids,
            sampling_params=sampling_params,
            lora_request=lora_request,
            multi_modal_data=mm,
        )
        stream = self._submit(request)
        try:
            async for output in stream:
                yield output
        finally:
            # Closing this stream early must abort the request now, not at garbage collection.
            await stream.aclose()

    async def encode(
        self,
        prompt: Any,
        pooling_params: Any = None,
        request_id: str | None = None,
        **_: Any,
    ) -> AsyncGenerator[Any, None]:
        """Yield the request's `PoolingRequestOutput` once it is pooled."""
        from reference.pooling_params import PoolingParams

        text, ids, mm = normalize_prompt(prompt, self.tokenizer)
        request = Request(
            request_id=request_id or f"async-{next(self._counter)}",
            prompt=text,
            prompt_token_ids=ids,
            pooling_params=pooling_params or PoolingParams(),
            multi_modal_data=mm,
        )
        stream = self._submit(request)
        try:
            async for output in stream:
                yield output
        finally:
            # Closing this stream early must abort the request now, not at garbage collection.
            await stream.aclose()

    async def abort(self, request_id: str | list[str]) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        self.engine_core.abort_requests(ids)

    async def add_lora(self, lora_request: Any) -> bool:
        """Load an adapter into every worker now (raises if it cannot be loaded)."""
        return all(self.engine_core.collective_rpc("add_lora", args=(lora_request,)))

    async def do_log_stats(self) -> None:
        if self.logger_manager is not None:
            self.logger_manager.log()

    def shutdown(self) -> None:
        if self._loop_task is not None and not self._loop_task.done():
            self._loop_task.cancel()
        self.engine_core.shutdown()


class LoRAResolutionError(Exception):
    """The serving layer could not serve a model name; `status_code` is the HTTP status."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class ServingModels:
    """The served names: the base model and the loaded adapters, resolving unknown names
    through the LoRA resolvers when `VLLM_ALLOW_RUNTIME_LORA_UPDATING` is on (contract §8.4).

    The resolvers are the ones registered when this object is built, in registry order.
    """

    def __init__(self, engine: AsyncLLM) -> None:
        from reference.lora.resolver import LoRAResolverRegistry

        self.engine = engine
        model_config = engine.vllm_config.model_config
        self.base_model_names = {model_config.model}
        if model_config.served_model_name:
            self.base_model_names.add(model_config.served_model_name)
        self.lora_requests: dict[str, Any] = {}
        self.lora_resolvers = [
            LoRAResolverRegistry.get_resolver(name)
            for name in LoRAResolverRegistry.get_supported_resolvers()
        ]
        self._locks: dict[str, asyncio.Lock] = {}
        self._lora_ids = itertools.count(1)

    async def load_lora_adapter(self, lora_request: Any) -> None:
        await self.engine.add_lora(lora_request)
        self.lora_requests[lora_request.lora_name] = lora_request

    async def resolve(self, model_name: str) -> Any:
        """None for the base model, the adapter's `LoRARequest` for an adapter name; raises
        `LoRAResolutionError` (404 or 400) otherwise."""
        if model_name in self.base_model_names:
            return None
        if model_name in self.lora_requests:
            return self.lora_requests[model_name]
        if not envs.VLLM_ALLOW_RUNTIME_LORA_UPDATING:
            raise LoRAResolutionError(f"The model `{model_name}` does not exist.", 404)
        lock = self._locks.setdefault(model_name, asyncio.Lock())
        async with lock:
            if model_name in self.lora_requests:
                return self.lora_requests[model_name]
            base_model = self.engine.vllm_config.model_config.model
            found = False
            for resolver in self.lora_resolvers:
                lora_request = await resolver.resolve_lora(base_model, model_name)
                if lora_request is None:
                    continue
                found = True
                lora_request.lora_int_id = next(self._lora_ids)
                try:
                    await self.load_lora_adapter(lora_request)
                except BaseException as exc:
                    logger.warning(
                        "Failed to load LoRA '%s' resolved by %s: %s",
                        model_name,
                        type(resolver).__name__,
                        exc,
                    )
                    continue
                logger.info(
                    "Resolved and loaded LoRA adapter '%s' using %s",
                    model_name,
                    type(resolver).__name__,
                )
                return lora_request
        if found:
            raise LoRAResolutionError(
                f"LoRA adapter '{model_name}' was found but could not be loaded.", 400
            )
        raise LoRAResolutionError(f"LoRA adapter {model_name} does not exist", 404)


#: vLLM's top-level `AsyncLLMEngine` is an alias of the v1 `AsyncLLM`.
AsyncLLMEngine = AsyncLLM
