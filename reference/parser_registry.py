"""What vLLM's two parser registries share (`ReasoningParserManager` in `reference.reasoning`,
`ToolParserManager` in `reference.tool_parsers`): eager entries hold the class, lazy ones
`(module path, class name)`, imported and cached on first look-up; `register_module` works as
a call (the class itself, now) or as a decorator (the class's module and name, lazily). Each
manager keeps vLLM's own names for its tables (`reasoning_parsers`, `tool_parsers`,
`lazy_parsers`), which plugins read directly.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

from reference.logger import init_logger

logger = init_logger(__name__)


class ParserRegistry:
    """The registration half of a parser manager; a subclass names its parser base class
    (`base`), what a parser is called in messages (`kind`), its own `lazy_parsers` table, and
    returns its eager table from `_eager()`."""

    base: ClassVar[type]
    kind: ClassVar[str]
    lazy_parsers: ClassVar[dict[str, tuple[str, str]]]

    @classmethod
    def _eager(cls) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def _find(cls, name: str) -> Any:
        """The parser class registered as `name` (a lazy one imported now), or None."""
        if name in cls._eager():
            return cls._eager()[name]
        if name in cls.lazy_parsers:
            return cls._load_lazy_parser(name)
        return None

    @classmethod
    def list_registered(cls) -> list[str]:
        """The names of every eager and lazy parser, sorted."""
        return sorted(set(cls._eager()) | set(cls.lazy_parsers))

    @classmethod
    def _load_lazy_parser(cls, name: str) -> Any:
        module_path, class_name = cls.lazy_parsers[name]
        base = cls.base.__name__
        try:
            parser_cls = getattr(importlib.import_module(module_path), class_name)
            if not (isinstance(parser_cls, type) and issubclass(parser_cls, cls.base)):
                raise TypeError(f"{class_name} in {module_path} is not a {base} subclass.")
        except Exception:
            logger.exception("Failed to import lazy %s '%s' from %s", cls.kind, name, module_path)
            raise
        cls._eager()[name] = parser_cls
        return parser_cls

    @classmethod
    def _register_module(
        cls, module: Any, module_name: str | list[str] | None = None, force: bool = True
    ) -> None:
        if not (isinstance(module, type) and issubclass(module, cls.base)):
            raise TypeError(
                f"module must be subclass of {cls.base.__name__}, but got {type(module)}"
            )
        eager = cls._eager()
        for name in _names(module_name, module.__name__):
            if not force and name in eager:
                raise KeyError(f"{name} is already registered at {eager[name].__module__}")
            eager[name] = module

    @classmethod
    def register_lazy_module(cls, name: str, module_path: str, class_name: str) -> None:
        """Register `module_path.class_name` under `name`, to be imported on first use."""
        cls.lazy_parsers[name] = (module_path, class_name)

    @classmethod
    def register_module(
        cls,
        name: str | list[str] | None = None,
        force: bool = True,
        module: Any = None,
    ) -> Any:
        """With `module`: register it now under `name` (default: its class name). Without: a
        decorator that registers the decorated class lazily, by its module and name."""
        if not isinstance(force, bool):
            raise TypeError(f"force must be a boolean, but got {type(force)}")
        if module is not None:
            cls._register_module(module=module, module_name=name, force=force)
            return module

        def decorator(obj: type) -> type:
            for each in _names(name, obj.__name__, strict=False):
                cls.lazy_parsers[each] = (obj.__module__, obj.__name__)
            return obj

        return decorator


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
