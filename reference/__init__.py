"""The reference engine: an independent, readable implementation of vLLM's plugin contract.

Importing `reference` never mounts it as `vllm`; call `reference.surface.mount()` for that.
"""

from reference._version import CONTRACT_VERSION, HARNESS_VERSION, __version__

__all__ = ["CONTRACT_VERSION", "HARNESS_VERSION", "__version__"]
