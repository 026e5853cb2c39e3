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

import importlib
from abc import abstractmethod
from collections.abc import Callable, Iterable, Sequence
from functools import cached_property
from typing import Any

from reference.logger import init_logger

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


class ReasoningParserManager:
    """The registry of reasoning parsers by name: eager entries hold the class, lazy ones
    `(module path, class name)`, imported and cached on first look-up."""

    reasoning_parsers: dict[str, type[ReasoningParser]] = {}
    lazy_parsers: dict[str, tuple[str, str]] = {}

    @classmethod
    def get_reasoning_parser(cls, name: str) -> type[ReasoningParser]:
        """The parser class registered as `name`; KeyError naming the known ones if none."""
        if name in cls.reasoning_parsers:
            return cls.reasoning_parsers[name]
        if name in cls.lazy_parsers:
            return cls._load_lazy_parser(name)
        known = ", ".join(cls.list_registered())
        raise KeyError(f"Reasoning parser '{name}' not found. Available parsers: {known}")

    @classmethod
    def list_registered(cls) -> list[str]:
        return sorted(set(cls.reasoning_parsers) | set(cls.lazy_parsers))

    @classmethod
    def _load_lazy_parser(cls, name: str) -> type[ReasoningParser]:
        module_path, class_name = cls.lazy_parsers[name]
        try:
            parser_cls = getattr(importlib.import_module(module_path), class_name)
            if not (isinstance(parser_cls, type) and issubclass(parser_cls, ReasoningParser)):
                raise TypeError(f"{class_name} in {module_path} is not a ReasoningParser subclass.")
        except Exception:
            logger.exception(
                "Failed to import lazy reasoning parser '%s' from %s", name, module_path
            )
            raise
        cls.reasoning_parsers[name] = parser_cls
        return parser_cls

    @classmethod
    def _register_module(
        cls,
        module: type[ReasoningParser],
        module_name: str | list[str] | None = None,
        force: bool = True,
    ) -> None:
        if not (isinstance(module, type) and issubclass(module, ReasoningParser)):
            raise TypeError(f"module must be subclass of ReasoningParser, but got {type(module)}")
        for name in _names(module_name, module.__name__):
            if not force and name in cls.reasoning_parsers:
                existing = cls.reasoning_parsers[name]
                raise KeyError(f"{name} is already registered at {existing.__module__}")
            cls.reasoning_parsers[name] = module

    @classmethod
    def register_lazy_module(cls, name: str, module_path: str, class_name: str) -> None:
        """Register `module_path.class_name` under `name`, to be imported on first use."""
        cls.lazy_parsers[name] = (module_path, class_name)

    @classmethod
    def register_module(
        cls,
        name: str | list[str] | None = None,
        force: bool = True,
        module: type[ReasoningParser] | None = None,
    ) -> type[ReasoningParser] | Callable[[type[ReasoningParser]], type[ReasoningParser]]:
        """With `module`: register it now under `name` (default: its class name). Without: a
        decorator that registers the decorated class lazily, by its module and name."""
        if not isinstance(force, bool):
            raise TypeError(f"force must be a boolean, but got {type(force)}")
        if module is not None:
            cls._register_module(module=module, module_name=name, force=force)
            return module

        def decorator(obj: type[ReasoningParser]) -> type[ReasoningParser]:
            for each in _names(name, obj.__name__, strict=False):
                cls.lazy_parsers[each] = (obj.__module__, obj.__name__)
            return obj

        return decorator

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


def _names(given: object, default: str, strict: bool = True) -> list[str]:
    """The registration names: a string, a list of strings, or else the class name (which
    the decorator falls back to for any other value, and the call form only for None)."""
    if isinstance(given, str):
        return [given]
    if isinstance(given, list) and all(isinstance(n, str) for n in given):
        return list(given)
    if given is None or not strict:
        return [default]
    raise TypeError("module_name must be str, list[str], or None.")
