"""`PoolingParams`: how a pooling request is pooled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class PoolingParams:
    task: str | None = None
    dimensions: int | None = None
    normalize: bool | None = None
    softmax: bool | None = None
    extra_kwargs: dict[str, Any] | None = None
