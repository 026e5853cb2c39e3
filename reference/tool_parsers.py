"""Tool-call parsers (`vllm.tool_parsers`): the base class a plugin subclasses, the registry
it registers into, and the small string and tool-list helpers parsers share.

A plugin registers a parser by name with `ToolParserManager.register_module` (as a decorator,
which records the class lazily by module path and class name, or called with `module=Cls`,
which records the class itself) or with `register_lazy_module(name, module_path,
class_name)`; the server later looks the name up with `get_tool_parser`, which imports a lazy
entry on first use. As in vLLM 0.32. The reference ships no built-in parsers (vLLM registers
some fifty lazily, `_TOOL_PARSERS_TO_REGISTER`) and has no OpenAI request classes: a tool is
recognised by its fields (`type`, `name`, `function`), not by its class.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from reference.logger import init_logger
from reference.parser_registry import ParserRegistry

logger = init_logger("vllm.tool_parsers")

__all__ = [
    "Tool",
    "ToolParser",
    "ToolParserManager",
    "extract_intermediate_diff",
    "find_common_prefix",
    "find_common_suffix",
    "find_tool_name",
    "find_tool_properties",
    "iter_response_function_tool_info",
    "partial_tag_overlap",
    "register_lazy_tool_parsers",
]

#: A tool of a request: vLLM's union of the Chat Completions tool and the Responses API's
#: tool types; the reference has neither class, so any object (read by its fields).
Tool = Any

#: vLLM's built-in parsers, name → (module under `vllm.tool_parsers`, class name), registered
#: lazily on import; the reference ships none.
_TOOL_PARSERS_TO_REGISTER: dict[str, tuple[str, str]] = {}


def _strict_tool_calling() -> bool:
    """`VLLM_ENFORCE_STRICT_TOOL_CALLING` (default on), read as vLLM reads it."""
    return os.getenv("VLLM_ENFORCE_STRICT_TOOL_CALLING", "True").lower() in ("true", "1")


class ToolParser:
    """Extracts tool calls from a model's output, whole or streamed; subclasses implement
    `extract_tool_calls` and `extract_tool_calls_streaming`. `tokenizer` is the served
    model's tokenizer; `tools` the request's tools, of which the function tools are kept."""

    #: Whether the server may force JSON tool calls for `tool_choice="required"` or a named
    #: tool; False makes it use the parser's own extraction for those too.
    supports_required_and_named: bool = True
    #: The structural-tag model of a parser whose syntax a grammar can enforce (None: none).
    structural_tag_model: str | None = None
    default_tool_strict_level: Any = None
    engine_based_streaming: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A parser with a structural tag extracts required/named calls itself.
        if cls.structural_tag_model is not None and _strict_tool_calling():
            cls.supports_required_and_named = False

    def __init__(self, tokenizer: Any, tools: list[Tool] | None = None) -> None:
        self.prev_tool_call_arr: list[dict] = []
        #: The index of the tool call being parsed (-1: none yet).
        self.current_tool_id: int = -1
        self.current_tool_name_sent: bool = False
        self.streamed_args_for_tool: list[str] = []
        self.model_tokenizer = tokenizer
        self.tools: list[Any] = [t for t in tools or [] if _is_function_tool(t)]

    def get_remaining_unstreamed_args(self) -> str:
        """The arguments of the last parsed call that were not streamed yet ("" if the
        streamed text is not a prefix of them)."""
        if not self.prev_tool_call_arr:
            return ""
        index = len(self.prev_tool_call_arr) - 1
        args = self.prev_tool_call_arr[index].get("arguments", {})
        expected = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        streamed = self.streamed_args_for_tool
        actual = streamed[index] if index < len(streamed) else ""
        return expected[len(actual) :] if expected.startswith(actual) else ""

    @cached_property
    def vocab(self) -> dict[str, int]:
        return self.model_tokenizer.get_vocab()

    def adjust_request(self, request: Any) -> Any:
        """The request, as the server will decode it. vLLM adds a JSON-schema constraint for
        `tool_choice="required"` or a named tool; the reference has no structured outputs, so
        the request comes back unchanged."""
        return request

    def extract_tool_calls(self, model_output: str, request: Any) -> Any:
        """The tool calls of a complete output (vLLM's `ExtractedToolCallInformation`)."""
        raise NotImplementedError("AbstractToolParser.extract_tool_calls has not been implemented!")

    def extract_tool_calls_streaming(
        self,
        previous_text: str,
        current_text: str,
        delta_text: str,
        previous_token_ids: Sequence[int],
        current_token_ids: Sequence[int],
        delta_token_ids: Sequence[int],
        request: Any,
    ) -> Any:
        """The delta message of one streaming step (None: nothing to send yet)."""
        raise NotImplementedError(
            "AbstractToolParser.extract_tool_calls_streaming has not been implemented!"
        )


class ToolParserManager(ParserRegistry):
    """The registry of tool parsers by name (see `reference.parser_registry`)."""

    tool_parsers: ClassVar[dict[str, type[ToolParser]]] = {}
    lazy_parsers: ClassVar[dict[str, tuple[str, str]]] = {}
    base = ToolParser
    kind = "tool parser"

    @classmethod
    def _eager(cls) -> dict[str, Any]:
        return cls.tool_parsers

    @classmethod
    def get_tool_parser(cls, name: str) -> type[ToolParser]:
        """The parser class registered as `name`; KeyError if none."""
        found = cls._find(name)
        if found is None:
            raise KeyError(f"Tool parser '{name}' not found.")
        return found

    @classmethod
    def import_tool_parser(cls, plugin_path: str) -> None:
        """Import a parser module (`--tool-parser-plugin`) by module name or file path; it
        registers its parsers as it is executed. A file that fails to import is logged."""
        try:
            importlib.import_module(plugin_path)
            return
        except ModuleNotFoundError:
            pass
        module_name = Path(plugin_path).stem
        try:
            spec = importlib.util.spec_from_file_location(module_name, plugin_path)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot import a tool parser plugin from {plugin_path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        except Exception:
            logger.exception("Failed to load module '%s' from %s.", module_name, plugin_path)


def register_lazy_tool_parsers() -> None:
    """Register the built-in parsers of `_TOOL_PARSERS_TO_REGISTER` lazily."""
    for name, (file_name, class_name) in _TOOL_PARSERS_TO_REGISTER.items():
        ToolParserManager.register_lazy_module(name, f"vllm.tool_parsers.{file_name}", class_name)


# -- helpers parsers share ------------------------------------------------------------------


def partial_tag_overlap(text: str, tag: str) -> int:
    """The length of the longest proper prefix of `tag` that `text` ends with (0: none): how
    much of `text` may be the start of a tag still streaming in."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


def find_common_prefix(s1: str, s2: str) -> str:
    """The longest prefix the two strings share."""
    n = 0
    while n < min(len(s1), len(s2)) and s1[n] == s2[n]:
        n += 1
    return s1[:n]


def find_common_suffix(s1: str, s2: str) -> str:
    """The longest suffix the two strings share that holds no letter or digit (the closing
    quotes and brackets of partial JSON)."""
    n = 0
    while n < min(len(s1), len(s2)) and s1[-1 - n] == s2[-1 - n] and not s1[-1 - n].isalnum():
        n += 1
    return s1[len(s1) - n :]


def extract_intermediate_diff(curr: str, old: str) -> str:
    """What to stream between two partial-JSON renderings: `curr` (the newer) without the
    suffix both share and without the prefix it shares with `old` (order matters)."""
    suffix = find_common_suffix(curr, old)
    if suffix:
        old = _drop_last(old, suffix)
    prefix = find_common_prefix(curr, old)
    diff = _drop_last(curr, suffix) if suffix else curr
    return diff.replace(prefix, "", 1) if prefix else diff


def _drop_last(text: str, part: str) -> str:
    """`text` without the last occurrence of `part`."""
    head, found, tail = text.rpartition(part)
    return head + tail if found else text


def _is_function_tool(tool: Any) -> bool:
    """A Chat Completions function tool or a Responses function tool (both `type="function"`)."""
    return getattr(tool, "type", None) == "function"


def _custom_tool_parameters() -> dict[str, Any]:
    """The schema of the one-string function a Responses `custom` tool is shown as."""
    return {
        "type": "object",
        "properties": {
            "input": {"type": "string", "description": "The freeform text payload for this tool."}
        },
        "required": ["input"],
        "additionalProperties": False,
    }


def iter_response_function_tool_info(tool: Any) -> list[tuple[str, dict[str, Any] | None]]:
    """(name, parameters) of each function a Responses tool shows the model: a function tool
    itself, a namespace's functions as `<namespace>__<name>`, a custom tool as a one-string
    function; other tool types show none."""
    kind = getattr(tool, "type", None)
    if kind == "function" and not hasattr(tool, "function"):
        return [(tool.name, tool.parameters)]
    if kind == "namespace":
        return [
            (f"{tool.name}__{inner.name}", inner.parameters)
            for inner in tool.tools
            if getattr(inner, "type", None) == "function"
        ]
    if kind == "custom":
        return [(tool.name, _custom_tool_parameters())]
    return []


def _tool_functions(tools: list[Tool] | None) -> list[tuple[str, dict[str, Any] | None]]:
    """(name, parameters) of every function the tools show the model, in order."""
    found: list[tuple[str, dict[str, Any] | None]] = []
    for tool in tools or []:
        function = getattr(tool, "function", None)
        if function is not None and _is_function_tool(tool):
            found.append((function.name, function.parameters))
        else:
            found.extend(iter_response_function_tool_info(tool))
    return found


def find_tool_properties(tools: list[Tool] | None, tool_name: str) -> dict[str, Any]:
    """The `properties` of the parameters of the function tool named `tool_name` ({} if there
    is none, or it has none)."""
    for name, params in _tool_functions(tools):
        if name == tool_name:
            return (params or {}).get("properties", {})
    return {}


def find_tool_name(tools: list[Tool] | None, tool_name: str) -> bool:
    """Whether a function tool named `tool_name` is among `tools`."""
    return any(name == tool_name for name, _ in _tool_functions(tools))
