"""Placeholder `vllm` package: importing it mounts the reference engine and steps aside.

It is found only through `sys.path` entries that `reference.surface.mount()` adds, which is
how a spawned child process of a mounted parent gets the reference on its first `import vllm`.
"""

import sys

__reference_shim__ = True

from reference.surface import mount

mount()
sys.modules.pop("vllm", None)
import vllm  # noqa: E402  (now answered by the mounted reference)

sys.modules["vllm"] = vllm
