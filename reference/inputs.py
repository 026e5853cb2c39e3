"""Prompt types accepted by the engine (`vllm.inputs`)."""

from __future__ import annotations

from typing import Any, TypedDict


class _MultiModal(TypedDict, total=False):
    multi_modal_data: dict[str, Any]


class TextPrompt(_MultiModal):
    prompt: str


class TokensPrompt(_MultiModal):
    prompt_token_ids: list[int]


PromptType = str | TextPrompt | TokensPrompt
