"""The built-in filesystem LoRA resolver: adapters are sub-directories of one cache directory.

Registered by the engine's own general plugin when `VLLM_LORA_RESOLVER_CACHE_DIR` is set;
unlike vLLM 0.32's, it never resolves a name to a path outside that directory.
"""

from __future__ import annotations

import json
import os
from typing import Any

from reference import envs
from reference.logger import init_logger
from reference.lora.request import LoRARequest
from reference.lora.resolver import LoRAResolver, LoRAResolverRegistry

logger = init_logger("vllm.plugins.lora_resolvers.filesystem_resolver")

#: The name vLLM registers this resolver under.
RESOLVER_NAME = "Filesystem Resolver"
ADAPTER_CONFIG = "adapter_config.json"

# vLLM 0.32 continues this string literal with a backslash inside the quotes, so its message
# carries the next source line's indentation: 17 spaces between "directory" and "for". Kept
# byte for byte so that checks comparing messages agree on both engines.
_INVALID_DIR_MESSAGE = (
    "VLLM_LORA_RESOLVER_CACHE_DIR must be set to a valid directory "
    "                for Filesystem Resolver plugin to function"
)


class FilesystemResolver(LoRAResolver):
    """Resolves `lora_name` to the adapter in `<lora_cache_dir>/<lora_name>`.

    A name resolves when that directory lies strictly inside the cache directory (after
    following symbolic links), holds an `adapter_config.json` with `peft_type == "LORA"`, and
    its `base_model_name_or_path` equals the served model's name exactly.
    """

    def __init__(self, lora_cache_dir: str) -> None:
        self.lora_cache_dir = lora_cache_dir
        self._real_cache_dir = os.path.realpath(lora_cache_dir)

    def serves(self, lora_cache_dir: str) -> bool:
        """Whether this resolver reads `lora_cache_dir` (the same directory, however spelled)."""
        return os.path.realpath(lora_cache_dir) == self._real_cache_dir

    def adapter_path(self, lora_name: str) -> str | None:
        """`<lora_cache_dir>/<lora_name>` if it stays inside the cache directory, else None.

        Absolute names, `..` chains that climb out and symbolic links that point out are all
        refused; so is the cache directory itself (an adapter is one of its sub-directories).
        """
        # NUL cannot appear in a path; the OS calls below would raise ValueError on it.
        if not lora_name or "\x00" in lora_name or os.path.isabs(lora_name):
            return None
        path = os.path.join(self.lora_cache_dir, lora_name)
        root = self._real_cache_dir
        try:
            real = os.path.realpath(path)
            inside = real != root and os.path.commonpath([root, real]) == root
        except (OSError, ValueError):
            return None
        if not inside:
            return None
        # The name as joined (vLLM's lora_path); the engine opening it later sees the same
        # directory unless someone swaps a link in the meantime.
        return path

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        path = self.adapter_path(lora_name)
        if path is None:
            return None
        config = _read_adapter_config(lora_name, os.path.join(path, ADAPTER_CONFIG))
        if config is None:
            return None
        if config["peft_type"] != "LORA" or config["base_model_name_or_path"] != base_model_name:
            return None
        # abs(hash(...)) is vLLM's id; `or 1` keeps it valid when the hash is 0. The server
        # replaces it with its own counter anyway.
        return LoRARequest(
            lora_name=lora_name, lora_int_id=abs(hash(lora_name)) or 1, lora_path=path
        )


def _read_adapter_config(lora_name: str, config_path: str) -> dict[str, Any] | None:
    """The adapter's config with both keys the resolver needs, or None (logged if unusable).

    vLLM 0.32 lets a broken config raise out of `resolve_lora` (the request then fails with
    a server error); here the adapter is skipped with a WARNING that names the file.
    """
    try:
        if not os.path.exists(config_path):
            return None
        with open(config_path, encoding="utf-8") as file:
            config = json.load(file)
    except (OSError, ValueError) as exc:
        _skip(lora_name, config_path, f"cannot be read as JSON ({exc})")
        return None
    if not isinstance(config, dict):
        _skip(lora_name, config_path, f"holds a {type(config).__name__}, not a JSON object")
        return None
    missing = [key for key in ("peft_type", "base_model_name_or_path") if key not in config]
    if missing:
        _skip(lora_name, config_path, f"has no {' or '.join(missing)}")
        return None
    return config


def _skip(lora_name: str, config_path: str, problem: str) -> None:
    logger.warning(
        "Ignoring LoRA adapter %r: %s %s. Rewrite it as PEFT does (a JSON object with "
        "'peft_type' and 'base_model_name_or_path') or remove the adapter directory.",
        lora_name,
        config_path,
        problem,
    )


def register_filesystem_resolver() -> None:
    """General plugin: register a `FilesystemResolver` for `VLLM_LORA_RESOLVER_CACHE_DIR`.

    Does nothing when the variable is unset or empty, and raises ValueError when it is not an
    existing directory (which, as in vLLM, aborts `load_general_plugins`). Calling it again
    for the same directory does nothing, so it is re-entrant without a warning.
    """
    lora_cache_dir = envs.VLLM_LORA_RESOLVER_CACHE_DIR
    if not lora_cache_dir:
        return
    if not os.path.isdir(lora_cache_dir):
        raise ValueError(_INVALID_DIR_MESSAGE)
    current = LoRAResolverRegistry.resolvers.get(RESOLVER_NAME)
    if isinstance(current, FilesystemResolver) and current.serves(lora_cache_dir):
        return
    LoRAResolverRegistry.register_resolver(RESOLVER_NAME, FilesystemResolver(lora_cache_dir))
