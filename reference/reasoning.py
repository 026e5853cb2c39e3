"""Reasoning parsers (`vllm.reasoning`): the base class a plugin subclasses and the registry
it registers into.

A plugin registers a parser by name with `ReasoningParserManager.register_module`, used as
a decorator (`@ReasoningParserManager.register_module("name")`) or called with
`module=Cls`; the server later looks the name up with `get_reasoning_parser`. As in vLLM
0.32, the decorator form records the class *lazily* (by module path and class name) and the
look-up imports it on first use; the call form registers the class itself. The reference
ships no built-in parsers (vLLM registers some thirty lazily, each in a module of its own).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Sequence
from functools import cached_property
from typing import Any, ClassVar

from reference.logger import init_logger
from reference.parser_registry import ParserRegistry

logger = init_logger("vllm.reasoning")

__all__ = ["ReasoningParser", "ReasoningParserManager"]


class ReasoningParser:
    """Splits a model's output into its reasoning and its answer; subclasses implement the
    abstract methods. `tokenizer` is the served model's tokenizer."""

    engine_based_streaming: bool = False

    def __init__(self, tokenizer: Any, *args: Any, **kwargs: Any) -> None:
        self.model_tokenizer = tokenizer
        self._model_config = kwargs.get("model_config")

    @cached_property
    def vocab(self) -> dict[str, int]:
        return self.model_tokenizer.get_vocab()

    @property
    def reasoning_start_str(self) -> str | None:
        """The string that opens the reasoning block (None: the parser does not say)."""
        return None

    @property
    def reasoning_end_str(self) -> str | None:
        """The string that closes the reasoning block (None: the parser does not say)."""
        return None

    def has_engine_confirmed_reasoning_end(self) -> bool:
        return False

    @abstractmethod
    def is_reasoning_end(self, input_ids: Sequence[int]) -> bool:
        """Whether the reasoning has ended within `input_ids` (the output so far)."""

    def is_reasoning_end_streaming(
        self, input_ids: Sequence[int], delta_ids: Iterable[int]
    ) -> bool:
        """Whether the reasoning ends at a decode step; by default, `is_reasoning_end`."""
        return self.is_reasoning_end(input_ids)

    @abstractmethod
    def extract_content_ids(self, input_ids: list[int]) -> list[int]:
        """The token ids of the answer (after the reasoning)."""

    def count_reasoning_tokens(self, token_ids: Sequence[int]) -> int:
        """How many of `token_ids` are reasoning; 0 unless a parser opts in."""
        return 0

    @abstractmethod
    def extract_reasoning(self, model_output: str, request: Any) -> tuple[str | None, str | None]:
        """(reasoning, content) of a complete output."""

    @abstractmethod
    def extract_reasoning_streaming(
        self,
        previous_text: str,
        current_text: str,
        delta_text: str,
        previous_token_ids: Sequence[int],
        current_token_ids: Sequence[int],
        delta_token_ids: Sequence[int],
    ) -> Any:
        """The delta message of one streaming step (None: nothing to send yet)."""

    def adjust_request(self, request: Any) -> Any:
        return request


class ReasoningParserManager(ParserRegistry):
    """The registry of reasoning parsers by name (see `reference.parser_registry`)."""

    reasoning_parsers: ClassVar[dict[str, type[ReasoningParser]]] = {}
    lazy_parsers: ClassVar[dict[str, tuple[str, str]]] = {}
    base = ReasoningParser
    kind = "reasoning parser"

    @classmethod
    def _eager(cls) -> dict[str, Any]:
        return cls.reasoning_parsers

    @classmethod
    def get_reasoning_parser(cls, name: str) -> type[ReasoningParser]:
        """The parser class registered as `name`; KeyError naming the known ones if none."""
        found = cls._find(name)
        if found is None:
            known = ", ".join(cls.list_registered())
            raise KeyError(f"Reasoning parser '{name}' not found. Available parsers: {known}")
        return found

    @classmethod
    def import_reasoning_parser(cls, plugin_path: str) -> None:
        """Import a parser module from a file path (`--reasoning-parser-plugin`), which
        registers its parsers as it is executed."""
        import importlib.util
        import sys
        from pathlib import Path

        module_name = Path(plugin_path).stem
        spec = importlib.util.spec_from_file_location(module_name, plugin_path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import a reasoning parser plugin from {plugin_path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
