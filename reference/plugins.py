"""The plugin loader: entry-point groups, `VLLM_PLUGINS` filtering and the once-per-process guard.

Semantics follow vLLM 0.32 (`vllm/plugins/__init__.py`); see `docs/deviations.md` for the
one structural difference: installed distributions are scanned once per process for every
group at the same time, and the scan is kept until `sys.path` changes or
`clear_discovery_cache()` is called.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import metadata
from typing import Any

from reference import envs
from reference.logger import init_logger

logger = init_logger("vllm.plugins")

DEFAULT_PLUGINS_GROUP = "vllm.general_plugins"
PLATFORM_PLUGINS_GROUP = "vllm.platform_plugins"
IO_PROCESSOR_PLUGINS_GROUP = "vllm.io_processor_plugins"
STAT_LOGGER_PLUGINS_GROUP = "vllm.stat_logger_plugins"
ENDPOINT_PLUGINS_GROUP = "vllm.endpoint_plugins"
LOGITSPROCS_GROUP = "vllm.logits_processors"

#: Every entry-point group vLLM 0.32 reads.
KNOWN_GROUPS = (
    DEFAULT_PLUGINS_GROUP,
    PLATFORM_PLUGINS_GROUP,
    IO_PROCESSOR_PLUGINS_GROUP,
    STAT_LOGGER_PLUGINS_GROUP,
    ENDPOINT_PLUGINS_GROUP,
    LOGITSPROCS_GROUP,
)

#: Plugins that ship inside the engine itself (vLLM declares its own as entry points of the
#: `vllm` distribution). The reference adds them as built-in entries rather than declaring
#: them, because a real vLLM installed beside this distribution would otherwise load them.
#: Filled by the modules that define them; `VLLM_PLUGINS` filters them by name.
BUILTIN_ENTRY_POINTS: dict[str, list[metadata.EntryPoint]] = {}

# Set before the general plugins run, so a plugin that raises is not retried (as in vLLM).
plugins_loaded = False

_discovery: tuple[tuple[str, ...], dict[str, list[metadata.EntryPoint]]] | None = None


def register_builtin_plugin(group: str, name: str, value: str) -> None:
    """Add an engine-provided plugin `name = value` to `group` (idempotent)."""
    entries = BUILTIN_ENTRY_POINTS.setdefault(group, [])
    if all(ep.name != name for ep in entries):
        entries.append(metadata.EntryPoint(name=name, value=value, group=group))


def _scan_distributions() -> dict[str, list[metadata.EntryPoint]]:
    """Read every installed distribution once and keep its `vllm.*` entry points by group."""
    found: dict[str, list[metadata.EntryPoint]] = {}
    seen: set[str] = set()
    for dist in metadata.distributions():
        # Like `importlib.metadata.entry_points()`, the first distribution of a name on
        # `sys.path` shadows later ones.
        name = getattr(dist, "_normalized_name", None) or dist.metadata["Name"]
        if name in seen:
            continue
        seen.add(name)
        text = dist.read_text("entry_points.txt")
        # Skipping the parse for distributions without a `vllm.*` section keeps a scan of
        # thousands of distributions close to the cost of listing them.
        if not text or "[vllm." not in text:
            continue
        for ep in dist.entry_points:
            if ep.group.startswith("vllm."):
                found.setdefault(ep.group, []).append(ep)
    return found


def discover_entry_points(group: str) -> list[metadata.EntryPoint]:
    """Entry points of `group`: the engine's built-ins first, then installed ones."""
    global _discovery
    key = tuple(sys.path)
    if _discovery is None or _discovery[0] != key:
        _discovery = (key, _scan_distributions())
    return [*BUILTIN_ENTRY_POINTS.get(group, ()), *_discovery[1].get(group, ())]


def discovered_groups() -> dict[str, list[metadata.EntryPoint]]:
    """Every `vllm.*` group seen in the current scan (built-ins included)."""
    discover_entry_points(DEFAULT_PLUGINS_GROUP)
    assert _discovery is not None
    groups = {group: list(eps) for group, eps in _discovery[1].items()}
    for group, eps in BUILTIN_ENTRY_POINTS.items():
        groups[group] = [*eps, *groups.get(group, ())]
    return groups


def clear_discovery_cache() -> None:
    """Forget the last scan; the next lookup reads the installed distributions again."""
    global _discovery
    _discovery = None


def load_plugins_by_group(group: str) -> dict[str, Callable[[], Any]]:
    """Load the entry points of `group` that `VLLM_PLUGINS` admits, without calling them.

    Returns `{entry point name: loaded object}` in discovery order. A plugin whose
    `ep.load()` raises is logged at ERROR with its traceback and left out.
    """
    allowed_plugins = envs.VLLM_PLUGINS
    discovered = discover_entry_points(group)
    if len(discovered) == 0:
        logger.debug("No plugins for group %s found.", group)
        return {}

    # The general group runs in every process, so vLLM keeps its chatter at DEBUG.
    log_level = logger.debug if group == DEFAULT_PLUGINS_GROUP else logger.info
    log_level("Available plugins for group %s:", group)
    for ep in discovered:
        log_level("- %s -> %s", ep.name, ep.value)
    if allowed_plugins is None:
        log_level(
            "All plugins in this group will be loaded. "
            "Set `VLLM_PLUGINS` to control which plugins to load."
        )

    plugins: dict[str, Callable[[], Any]] = {}
    for ep in discovered:
        # Filter by exact name *before* importing anything.
        if allowed_plugins is None or ep.name in allowed_plugins:
            if allowed_plugins is not None:
                log_level("Loading plugin %s", ep.name)
            try:
                plugins[ep.name] = ep.load()
            except Exception:
                logger.exception("Failed to load plugin %s", ep.name)
    return plugins


def load_general_plugins() -> None:
    """Run every general plugin once per process; an exception a plugin raises propagates.

    Plugins "can be loaded for multiple times in different processes", so they must be
    re-entrant: this guard only covers repeated calls inside one process.
    """
    global plugins_loaded
    if plugins_loaded:
        return
    plugins_loaded = True
    for func in load_plugins_by_group(DEFAULT_PLUGINS_GROUP).values():
        func()


def load_endpoint_plugins(supported_tasks: tuple[str, ...] | None = None) -> list[Any]:
    """Endpoint plugins are opt-in: loaded only when `VLLM_PLUGINS` names them."""
    if envs.VLLM_PLUGINS is None:
        names = [ep.name for ep in discover_entry_points(ENDPOINT_PLUGINS_GROUP)]
        if names:
            logger.warning(
                "Found endpoint plugin(s) %s but VLLM_PLUGINS is not set. Endpoint plugins "
                "add HTTP routes and must be explicitly allowlisted via VLLM_PLUGINS to be "
                "loaded.",
                names,
            )
        return []
    loaded: list[Any] = []
    for name, factory in load_plugins_by_group(ENDPOINT_PLUGINS_GROUP).items():
        try:
            plugin = factory()
        except Exception:
            logger.exception("Failed to instantiate endpoint plugin %s", name)
            continue
        # Read without a default, as vLLM does: a plugin without the attribute stops the
        # server's start-up with AttributeError.
        required = plugin.required_tasks
        if required is not None and (
            supported_tasks is None or not set(required) & set(supported_tasks)
        ):
            logger.info(
                "Skipping endpoint plugin %s: requires one of tasks %s, server supports %s",
                name,
                required,
                supported_tasks,
            )
            continue
        logger.info("Loaded endpoint plugin %s", name)
        loaded.append(plugin)
    return loaded


# vLLM ships this general plugin as an entry point of its own distribution.
register_builtin_plugin(
    DEFAULT_PLUGINS_GROUP,
    "lora_filesystem_resolver",
    "reference.lora.filesystem_resolver:register_filesystem_resolver",
)
