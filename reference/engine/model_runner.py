"""The model runner of a worker: loads the model, keeps each request's KV cache and the
persistent batch, and runs one engine step (forward, logits processors, sampler, pooling).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from reference.config import VllmConfig, set_current_vllm_config
from reference.engine.messages import ModelRunnerOutput, NewRequestData, SchedulerOutput
from reference.engine.sampler import SamplingRow, sample
from reference.forward_context import set_forward_context
from reference.logger import init_logger

logger = init_logger("vllm.v1.worker.model_runner")


@dataclass
class CachedRequestState:
    """A request's state in the worker: its tokens so far and its KV cache."""

    req_id: str
    prompt_token_ids: list[int]
    sampling_params: Any
    pooling_params: Any
    lora_request: Any
    generator: torch.Generator
    multi_modal_data: dict[str, Any] | None = None
    #: The live output list that V1 processors were handed in `BatchUpdate.added`.
    output_token_ids: list[int] = field(default_factory=list)
    kv_cache: Any = None
    num_computed_tokens: int = 0
    #: V1: index in the persistent batch; V2: slot in the request-state buffers.
    index: int = -1


def load_model(vllm_config: VllmConfig, device: torch.device) -> torch.nn.Module:
    """Build the model class `ModelRegistry` gives for the checkpoint, and load its weights."""
    from reference.models.hf import iter_checkpoint_weights, load_checkpoint
    from reference.models.registry import ModelRegistry

    model_config = vllm_config.model_config
    model_cls, arch = ModelRegistry.resolve_model_cls(model_config.architectures, model_config)
    with set_current_vllm_config(vllm_config):
        model = model_cls(vllm_config=vllm_config)
    if hasattr(model, "named_parameters"):
        load_checkpoint(model, model_config.model)
    else:
        model.load_weights(iter_checkpoint_weights(model_config.model))
    logger.debug("Loaded %s (%s) from %s", arch, model_cls.__qualname__, model_config.model)
    return model.to(device).eval()


class ModelRunner:
    """Runs steps for one worker. Each request keeps its own KV cache (transformers'
    `DynamicCache`): the prompt is prefilled once, then one token is fed per step."""

    def __init__(self, vllm_config: VllmConfig, device: torch.device) -> None:
        self.vllm_config = vllm_config
        self.device = device
        self.model: Any = None
        self.requests: dict[str, CachedRequestState] = {}
        self.is_pooling = vllm_config.model_config.is_pooling_model
        self.max_num_reqs = vllm_config.scheduler_config.max_num_seqs
        self.use_v2 = bool(vllm_config.use_v2_model_runner)
        self.lora_manager: Any = None
        # V1: the persistent batch (index -> request id) and the update of the coming step.
        self.batch: dict[int, str] = {}
        self.batch_update_builder: Any = None
        self.v1_processors: Any = None
        # V2: per-slot request state and the custom processors reading it.
        self.free_slots: list[int] = list(range(self.max_num_reqs))
        self.req_states: Any = None
        self.v2_processors: list[Any] = []

    def load_model(self) -> None:
        self.model = load_model(self.vllm_config, self.device)
        if self.is_pooling:
            from reference.logits.loader import build_logits_processors_for

            # Pooling models take no custom processors; this raises if some were configured.
            build_logits_processors_for(self.vllm_config, device=self.device)
            return
        from reference.logits.loader import build_logits_processors_for

        if self.use_v2:
            from reference.logits.v2 import LogitsProcRequestState

            model_config = self.vllm_config.model_config
            self.req_states = LogitsProcRequestState.create(
                max_num_reqs=self.max_num_reqs,
                vocab_size=int(model_config.hf_config.get("vocab_size") or 0),
                max_model_len=int(model_config.max_model_len or 2048),
                device=self.device,
            )
            self.v2_processors = list(
                build_logits_processors_for(
                    self.vllm_config, device=self.device, req_states=self.req_states
                )
            )
        else:
            from reference.logits.v1 import BatchUpdateBuilder

            self.batch_update_builder = BatchUpdateBuilder()
            self.v1_processors = build_logits_processors_for(self.vllm_config, device=self.device)
        if self.vllm_config.lora_config is not None:
            self.lora_manager = _make_lora_manager(self.model, self.vllm_config, self.device)

    # ----------------------------------------------------------------------------------------
    # Batch bookkeeping

    def _remove(self, req_id: str) -> None:
        state = self.requests.pop(req_id, None)
        if state is None or self.is_pooling:
            return
        if self.use_v2:
            self.free_slots.append(state.index)
            self.free_slots.sort()
        else:
            del self.batch[state.index]
            self.batch_update_builder.removed_append(state.index)

    def _add(self, new: NewRequestData) -> CachedRequestState:
        state = CachedRequestState(
            req_id=new.req_id,
            prompt_token_ids=list(new.prompt_token_ids),
            sampling_params=new.sampling_params,
            pooling_params=new.pooling_params,
            lora_request=new.lora_request,
            generator=torch.Generator().manual_seed(int(new.seed)),
            multi_modal_data=new.multi_modal_data,
        )
        self.requests[new.req_id] = state
        if self.is_pooling:
            return state
        params = new.sampling_params
        if self.use_v2:
            if not self.free_slots:
                raise RuntimeError(
                    f"No free request slot for {new.req_id!r}: the scheduler admitted more than "
                    f"max_num_seqs={self.max_num_reqs} requests."
                )
            state.index = self.free_slots.pop(0)
            self._write_slot(state)
            for proc in self.v2_processors:
                proc.add_request(state.index, params)
        else:
            builder = self.batch_update_builder
            index = builder.pop_removed()
            if index is None:
                index = len(self.batch)
                while index in self.batch:
                    index += 1
            state.index = index
            self.batch[index] = new.req_id
            builder.add(index, params, state.prompt_token_ids, state.output_token_ids)
        return state

    def _write_slot(self, state: CachedRequestState) -> None:
        rs = self.req_states
        slot, prompt = state.index, state.prompt_token_ids
        tokens = prompt + state.output_token_ids
        width = rs.all_token_ids.cpu.shape[1]
        rs.all_token_ids.cpu[slot, : min(len(tokens), width)] = torch.tensor(
            tokens[:width], dtype=torch.int32
        )
        rs.prompt_len.cpu[slot] = len(prompt)
        rs.prefill_len.cpu[slot] = len(tokens)
        rs.total_len.cpu[slot] = len(tokens)

    def _append_token(self, state: CachedRequestState, token: int) -> None:
        state.output_token_ids.append(token)
        if self.use_v2 and not self.is_pooling:
            rs = self.req_states
            total = int(rs.total_len.cpu[state.index])
            if total < rs.all_token_ids.cpu.shape[1]:
                rs.all_token_ids.cpu[state.index, total] = token
            rs.total_len.cpu[state.index] = total + 1

    def _condense(self) -> None:
        """Fill holes left by removals with the last requests (unidirectional moves), so the
        batch occupies indices 0..n-1, as vLLM's persistent batch does."""
        size = len(self.batch)
        holes = sorted(i for i in range(size) if i not in self.batch)
        tail = sorted((i for i in self.batch if i >= size), reverse=True)
        for hole, source in zip(holes, tail, strict=True):
            req_id = self.batch.pop(source)
            self.batch[hole] = req_id
            self.requests[req_id].index = hole
            self.batch_update_builder.move(source, hole)

    # ----------------------------------------------------------------------------------------
    # One step

    @torch.inference_mode()
    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        for req_id in scheduler_output.finished_req_ids:
            self._remove(req_id)
        scheduled: list[tuple[CachedRequestState, list[int]]] = []
        for new in scheduler_output.new_reqs:
            state = self._add(new)
            scheduled.append((state, state.prompt_token_ids))
        for cached in scheduler_output.cached_reqs:
            state = self.requests[cached.req_id]
            self._append_token(state, cached.token_id)
            scheduled.append((state, [cached.token_id]))
        if not self.is_pooling and not self.use_v2:
            self._condense()
            batch_update = self.batch_update_builder.get_and_reset(len(self.batch))
            # Every step, as vLLM's runner does: None says the batch did not change.
            self.v1_processors.update_state(batch_update)
        output = ModelRunnerOutput()
        if not scheduled:
            return output
        if self.is_pooling:
            for state, _ in scheduled:
                output.pooled[state.req_id] = self._pool(state)
            return output
        # Rows in persistent-batch order (V1) or slot order (V2): processors index by them.
        scheduled.sort(key=lambda item: item[0].index)
        rows = [self._last_logits(state, tokens) for state, tokens in scheduled]
        logits = torch.stack(rows)
        sampling_rows = [
            SamplingRow(s.sampling_params, s.generator, s.output_token_ids) for s, _ in scheduled
        ]
        context = None
        if self.use_v2:
            from reference.logits.v2 import LogitsContext

            rs = self.req_states
            for buffer in (rs.all_token_ids, rs.prompt_len, rs.prefill_len, rs.total_len):
                buffer.copy_to_device()
            for proc in self.v2_processors:
                proc.apply_staged_writes()
            context = LogitsContext.for_slots(
                [s.index for s, _ in scheduled],
                input_ids=[tokens[-1] for _, tokens in scheduled],
                pos=[s.num_computed_tokens - 1 for s, _ in scheduled],
                device=self.device,
            )
        sampled = sample(
            logits,
            sampling_rows,
            v1_processors=self.v1_processors,
            v2_processors=self.v2_processors,
            v2_context=context,
        )
        for (state, _), token in zip(scheduled, sampled, strict=True):
            output.sampled[state.req_id] = token
        return output

    def _forward(self, state: CachedRequestState, tokens: list[int], **kwargs: Any) -> Any:
        start = state.num_computed_tokens
        input_ids = torch.tensor(tokens, dtype=torch.long, device=self.device)
        positions = torch.arange(start, start + len(tokens), device=self.device)
        if self.lora_manager is None and state.lora_request is not None:
            raise ValueError(
                f"Request {state.req_id!r} asks for LoRA adapter "
                f"{state.lora_request.lora_name!r}, but LoRA is off; pass enable_lora=True."
            )
        # As in vLLM, layers may read per-step state with `get_forward_context()` while the
        # model runs; the reference has no attention metadata to put there.
        with set_forward_context(None, self.vllm_config, num_tokens=len(tokens)):
            if self.lora_manager is not None:
                # One sequence per forward: its adapter (or None, the base model) covers all rows.
                with self.lora_manager.batch(state.lora_request):
                    hidden = self.model(input_ids, positions, **kwargs)
            else:
                hidden = self.model(input_ids, positions, **kwargs)
        state.num_computed_tokens = start + len(tokens)
        return hidden

    def _last_logits(self, state: CachedRequestState, tokens: list[int]) -> torch.Tensor:
        if state.kv_cache is None:
            state.kv_cache = self.model.new_kv_cache()
        hidden = self._forward(state, tokens, kv_cache=state.kv_cache)
        return self.model.compute_logits(hidden[-1:])[-1]

    def _pool(self, state: CachedRequestState) -> Any:
        kwargs: dict[str, Any] = {}
        if state.multi_modal_data is not None:
            kwargs["multi_modal_data"] = state.multi_modal_data
        hidden = self._forward(state, state.prompt_token_ids, **kwargs)
        pooled = pool_one(self.model, hidden, state.pooling_params)
        pooled = pooled.detach().to("cpu") if isinstance(pooled, torch.Tensor) else pooled
        self.requests.pop(state.req_id, None)
        return pooled


def pool_one(model: Any, hidden: Any, pooling_params: Any) -> Any:
    """One sequence's pooled output from its hidden states.

    vLLM's interface first: the model's `pooler` (a `vllm.model_executor.layers.pooler`
    Pooler), called with the sequence's length and task. Otherwise the reference's own
    `pool(hidden_states)`, which models whose output is already per prompt (the Prithvi-like
    fixture) use.
    """
    from reference.models.pooler import Pooler, PoolingMetadata, default_pooling_task

    pooler = getattr(model, "pooler", None)
    if isinstance(pooler, Pooler):
        supported = pooler.get_supported_tasks()
        task = getattr(pooling_params, "task", None)
        if task is None or (task == "plugin" and task not in supported):
            # A request without a task (or an IO processor's "plugin" request on a model
            # whose pooler has no plugin task) pools with the model's default task.
            task = default_pooling_task(supported)
        return pooler(hidden, PoolingMetadata([hidden.shape[0]], [task]))[0]
    if callable(getattr(model, "pool", None)):
        return model.pool(hidden)
    raise TypeError(
        f"{type(model).__name__} is a pooling model (is_pooling_model=True) without a pooler: "
        "give it a `pooler` from vllm.model_executor.layers.pooler, e.g. "
        "DispatchPooler.for_embedding(vllm_config.model_config.pooler_config)."
    )


def _make_lora_manager(model: Any, vllm_config: VllmConfig, device: torch.device) -> Any:
    """Wrap the model's Linear layers so each request can pick its adapter."""
    from reference.lora.apply import LoRAModelManager

    lora_config = vllm_config.lora_config
    return LoRAModelManager(
        model, max_loras=lora_config.max_loras, max_lora_rank=lora_config.max_lora_rank
    )
