"""`VLLMValidationError`: a request's parameters were rejected (the server answers HTTP 400)."""

from __future__ import annotations

from typing import Any


class VLLMValidationError(ValueError):
    """A request failed validation; `parameter` and `value` name what was rejected, if known.

    It subclasses `ValueError`, as vLLM's does, so callers that catch `ValueError` keep working.
    """

    def __init__(self, message: str, *, parameter: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.value = value

    def __str__(self) -> str:
        base = super().__str__()
        extras = []
        if self.parameter is not None:
            extras.append(f"parameter={self.parameter}")
        if self.value is not None:
            extras.append(f"value={self.value}")
        return f"{base} ({', '.join(extras)})" if extras else base
