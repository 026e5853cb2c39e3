"""Model architectures the reference runs, and the `ModelRegistry` that names them.

Importing this package imports no torch; the model modules are imported on resolution.
"""

from __future__ import annotations

from reference.models.registry import ModelRegistry

__all__ = ["ModelRegistry"]
