"""`LoRAResolver` and the process-wide registry that general plugins add resolvers to.

A resolver turns an adapter name the server does not know yet into a `LoRARequest`.
There is no entry-point group for resolvers: a general plugin calls `register_resolver`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Set
from dataclasses import dataclass, field

from reference.logger import init_logger
from reference.lora.request import LoRARequest

logger = init_logger("vllm.lora.resolver")


class LoRAResolver(ABC):
    """Finds a LoRA adapter by name for a base model; the server asks each in turn."""

    @abstractmethod
    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        """The request for `lora_name` on `base_model_name`, or None if this resolver has none.

        The server overwrites the returned `lora_int_id` with its own counter. An exception
        raised here is not caught by the server: answer None for anything not found.
        """


@dataclass
class _LoRAResolverRegistry:
    resolvers: dict[str, LoRAResolver] = field(default_factory=dict)

    def get_supported_resolvers(self) -> Set[str]:
        """The registered names, in registration order (a live view, not a copy)."""
        return self.resolvers.keys()

    def register_resolver(self, resolver_name: str, resolver: LoRAResolver) -> None:
        """Register `resolver` under `resolver_name`; a second one of that name replaces it.

        The replacement keeps the name's original position, so the order in which the
        server consults resolvers does not change.
        """
        if resolver_name in self.resolvers:
            logger.warning(
                "LoRA resolver %s is already registered, and will be overwritten by the new "
                "resolver instance %s.",
                resolver_name,
                resolver,
            )
        self.resolvers[resolver_name] = resolver

    def get_resolver(self, resolver_name: str) -> LoRAResolver:
        """The resolver registered under `resolver_name`; KeyError names the available ones."""
        if resolver_name not in self.resolvers:
            raise KeyError(
                f"LoRA resolver '{resolver_name}' not found. "
                f"Available resolvers: {list(self.resolvers.keys())}"
            )
        return self.resolvers[resolver_name]


#: The process-wide registry (one per process, like every plugin registry).
LoRAResolverRegistry = _LoRAResolverRegistry()
