"""`LoRARequest`: which adapter a request wants, with vLLM's fields, validation and identity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(eq=False)
class LoRARequest:
    """Request for a LoRA adapter, field for field as vLLM's (`vllm.lora.request.LoRARequest`).

    `lora_int_id` must be at least 1 (0 means "no adapter" to the engine) and should be
    unique per adapter; the server replaces it with its own counter when a resolver answers.
    Two requests are equal, and hash alike, when their `lora_name`s are equal (up to the 0.33
    contract), or their `lora_name`s and `lora_int_id`s are (from 0.34).
    """

    lora_name: str
    lora_int_id: int
    lora_path: str = ""
    base_model_name: str | None = None
    tensorizer_config_dict: dict[str, Any] | None = None
    load_inplace: bool = False
    is_3d_lora_weight: bool = False

    def __post_init__(self) -> None:
        if self.lora_int_id < 1:
            # vLLM's wording, with the fix appended.
            raise ValueError(
                f"id must be > 0, got {self.lora_int_id}: pass a positive lora_int_id "
                "(0 is reserved for 'no LoRA')."
            )
        if not self.lora_path:
            # vLLM asserts this (and so skips it under `python -O`); a ValueError always runs.
            raise ValueError(
                f"lora_path cannot be empty (LoRA request {self.lora_name!r}): pass the "
                "directory that holds the adapter's adapter_config.json."
            )

    @property
    def adapter_id(self) -> int:
        return self.lora_int_id

    @property
    def name(self) -> str:
        return self.lora_name

    @property
    def path(self) -> str:
        return self.lora_path

    def _identity(self) -> tuple[str] | tuple[str, int]:
        """What equality and hashing compare, by the modelled contract (`reference._version`)."""
        from reference._version import contract_at_least

        if contract_at_least("0.34.0"):
            return (self.lora_name, self.lora_int_id)
        return (self.lora_name,)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, self.__class__) and self._identity() == other._identity()

    def __hash__(self) -> int:
        # Up to 0.33 vLLM hashes the bare name: keep that value (it is observable).
        identity = self._identity()
        return hash(identity[0]) if len(identity) == 1 else hash(identity)
