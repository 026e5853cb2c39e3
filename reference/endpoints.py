"""Endpoint plugins (`vllm.endpoint_plugins`): the protocol a plugin's factory returns, and the
two phases that wire plugins into an API server, as in vLLM 0.32.

Phase A (`attach_endpoint_plugins`) runs while the app is built, after the core routes exist:
each loaded plugin adds its routes, and a plugin's HTTP route takes over the methods it shares
with an earlier route of the same path template. Phase B (`init_endpoint_plugins_state`) runs
once per server when its state is set up; the CPU-only render server passes no engine client.
FastAPI is imported only when an app is wired, so the loader's core stays importable without it.
"""

from __future__ import annotations

import copy
from argparse import Namespace
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from reference import plugins as _plugins
from reference.logger import init_logger

if TYPE_CHECKING:
    from reference.tasks import SupportedTask

logger = init_logger("vllm.plugins.endpoint_plugins.interface")


@runtime_checkable
class EndpointPlugin(Protocol):
    """What the zero-argument factory behind a `vllm.endpoint_plugins` entry point returns."""

    #: The plugin's name in logs (the entry point's name is what `VLLM_PLUGINS` matches).
    name: str
    #: The server must support one of these tasks for the plugin to load; None: any server.
    required_tasks: tuple[SupportedTask, ...] | None

    def attach_router(self, app: Any) -> None:
        """Add the plugin's routes to the FastAPI `app`, whose core routes already exist."""

    async def init_state(self, engine_client: Any, state: Any, args: Namespace) -> None:
        """Set up, on the server's `state`, what the plugin's routes need; `engine_client` is
        None on the render server."""


def _overrides(earlier: Any, route: Any, api_route: type) -> set[str]:
    """The HTTP methods `route` takes over from the `earlier` route (empty: none)."""
    if not isinstance(earlier, api_route) or earlier.path != route.path:
        return set()
    return set(earlier.methods) & set(route.methods)


def _place(routes: list[Any], route: Any, api_route: type) -> list[Any]:
    """`routes` with the plugin's `route` added: where it overrides earlier routes, in place of
    the first of them (ahead of any mount), each keeping the methods it does not lose;
    otherwise at the end. Earlier route objects are copied, never changed."""
    kept: list[Any] = []
    position = None
    for earlier in routes:
        taken = _overrides(earlier, route, api_route)
        if not taken:
            kept.append(earlier)
            continue
        logger.info("Endpoint plugin overrides %s %s", ", ".join(sorted(taken)), route.path)
        if position is None:
            position = len(kept)
        remaining = set(earlier.methods) - taken
        if remaining:
            narrowed = copy.copy(earlier)
            narrowed.methods = remaining
            kept.append(narrowed)
    kept.insert(len(kept) if position is None else position, route)
    return kept


def attach_endpoint_plugins(app: Any, supported_tasks: tuple[SupportedTask, ...]) -> None:
    """Phase A: load the admitted plugins, let each attach its routes, apply overrides, and
    record the plugins on `app.state.endpoint_plugins`."""
    from fastapi.routing import APIRoute

    loaded = _plugins.load_endpoint_plugins(supported_tasks)
    core = {id(route) for route in app.routes}
    for plugin in loaded:
        plugin.attach_router(app)
    routes: list[Any] = []
    for route in app.routes:
        if id(route) in core or not isinstance(route, APIRoute):
            routes.append(route)
        else:
            routes = _place(routes, route, APIRoute)
    app.router.routes[:] = routes
    if loaded:
        app.openapi_schema = None  # rebuilt with the plugins' operations on the next request
    app.state.endpoint_plugins = loaded


async def init_endpoint_plugins_state(engine_client: Any, state: Any, args: Namespace) -> None:
    """Phase B: await each attached plugin's `init_state`. A state that never went through
    phase A (a batch runner's bare `State`) has no plugins."""
    for plugin in getattr(state, "endpoint_plugins", []):
        await plugin.init_state(engine_client, state, args)
