"""The task names a server supports (`vllm.tasks`): what endpoint plugins' `required_tasks` and
pooling requests name, as in vLLM 0.32."""

from __future__ import annotations

from typing import Literal, get_args

GenerationTask = Literal["generate", "transcription", "realtime"]
PoolingTask = Literal[
    "embed", "classify", "token_embed", "token_classify", "plugin", "embed&token_classify"
]
#: The CPU-only render server's task: it prepares prompts and has no engine.
FrontendTask = Literal["render"]
SupportedTask = Literal[GenerationTask, PoolingTask, FrontendTask]

GENERATION_TASKS: tuple[GenerationTask, ...] = get_args(GenerationTask)
POOLING_TASKS: tuple[PoolingTask, ...] = get_args(PoolingTask)
FRONTEND_TASKS: tuple[FrontendTask, ...] = get_args(FrontendTask)
#: What a server that was not told its tasks assumes.
FALLBACK_SUPPORTED_TASKS: tuple[SupportedTask, ...] = ("generate",)
