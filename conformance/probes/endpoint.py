"""Probes of endpoint plugins (`vllm.endpoint_plugins`): the object the entry point's factory
builds, and the plugin wired into API servers through the engine's own two phases.

`observe_endpoint` loads the entry point, calls the factory with no arguments as vLLM does,
describes the object against the engine's `EndpointPlugin` protocol, and asks the engine's
`load_endpoint_plugins` whether a server that supports the plugin's tasks admits it.
`drive_endpoint` builds a stand-in for vLLM's API server app (the core routes a real server
has, answered by the harness) and runs the engine's `attach_endpoint_plugins` on it, compares
every core route's answers with those of an app without the plugin, then runs the engine's
`init_endpoint_plugins_state` as each server does: two API servers in one process, each with
its own state and engine client, and the render server, which has no engine client.
Requests go straight to the ASGI app: no network, no HTTP client library.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import importlib.util
import inspect
import json
from argparse import Namespace
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_args

from conformance.probes import runtime
from conformance.probes.data import ExceptionInfo
from conformance.probes.runtime import ObjectSketch

#: The members of vLLM's `EndpointPlugin` protocol.
PROTOCOL = ("name", "required_tasks", "attach_router", "init_state")
#: The tasks a server is assumed to support when the plugin requires none (vLLM's fallback).
FALLBACK_TASKS = ("generate",)
#: The CPU-only render server's tasks: it has no engine, so `init_state` gets no client.
RENDER_TASKS = ("render",)
#: The serve options a plugin commonly reads, for engines without a serve parser.
FRONTEND_DEFAULTS = {
    "host": None,
    "port": 8000,
    "root_path": "",
    "api_key": None,
    "allowed_origins": ["*"],
    "middleware": [],
    "disable_fastapi_docs": False,
    "enable_offline_docs": False,
    "uvicorn_log_level": "info",
    "ssl_keyfile": None,
    "ssl_certfile": None,
    "api_server_count": 1,
}
#: What a server keeps on `app.state` before plugins initialise (`args` is set too): a plugin
#: adds its own entries and leaves these alone.
CORE_STATE = ("engine_client", "vllm_config", "openai_serving_models", "log_stats")


# --------------------------------------------------------------------------------------------
# The factory's object.


@dataclass
class PluginShape:
    """The object the factory built, against the protocol."""

    #: `isinstance(obj, EndpointPlugin)` with the engine's runtime-checkable protocol.
    is_plugin: bool = False
    #: Protocol members the object lacks.
    missing: list[str] = field(default_factory=list)
    #: The name if it is a str, else its repr.
    name: str = ""
    name_type: str = ""
    required_tasks: str = ""
    #: "none", "str", "sequence" (tuple, list, set or frozenset) or "other".
    required_kind: str = "none"
    #: The entries of a sequence, as reprs of what is not a str.
    required_values: list[str] = field(default_factory=list)
    attach_params: list[str] | None = None
    init_params: list[str] | None = None
    attach_callable: bool = False
    init_callable: bool = False
    init_is_coroutine: bool = False


@dataclass
class EndpointObservation:
    has_fastapi: bool = False
    load_error: ExceptionInfo | None = None
    loaded: ObjectSketch | None = None
    factory_error: ExceptionInfo | None = None
    #: repr and `module.QualName` of the type of what the factory returned.
    built: str = ""
    built_type: str = ""
    shape: PluginShape | None = None
    #: The task names the engine knows (`vllm.tasks.SupportedTask`); empty if it has none.
    known_tasks: list[str] = field(default_factory=list)
    #: The tasks of the server the engine's loader was asked for, and whether it admitted the
    #: plugin (`VLLM_PLUGINS` names only this entry point).
    served_tasks: list[str] = field(default_factory=list)
    admitted: bool = False
    loader_error: ExceptionInfo | None = None


def known_tasks() -> list[str]:
    """Every task name the engine's `SupportedTask` allows (nested literals flatten)."""
    try:
        from vllm.tasks import SupportedTask
    except ImportError:
        return []
    return [str(task) for task in get_args(SupportedTask)]


def served_tasks(required: Any, known: list[str]) -> tuple[str, ...]:
    """The tasks of a server the plugin asks for: the known ones it requires, or vLLM's
    fallback when it requires none (or none the engine knows)."""
    if required is None:
        return FALLBACK_TASKS
    try:
        wanted = [task for task in required if isinstance(task, str)]
    except TypeError:
        return FALLBACK_TASKS
    return tuple(t for t in wanted if t in known or not known) or FALLBACK_TASKS


def _required(value: Any) -> tuple[str, list[str]]:
    if value is None:
        return "none", []
    if isinstance(value, str):
        return "str", [value]
    if isinstance(value, (tuple, list, set, frozenset)):
        return "sequence", [v if isinstance(v, str) else repr(v) for v in value]
    return "other", []


def describe_plugin(obj: Any, protocol: type) -> PluginShape:
    """`obj` against the `EndpointPlugin` protocol (harness code: reads attributes only)."""
    shape = PluginShape(is_plugin=isinstance(obj, protocol))
    shape.missing = [m for m in PROTOCOL if not hasattr(obj, m)]
    name = getattr(obj, "name", None)
    shape.name = name if isinstance(name, str) else repr(name)[:200]
    shape.name_type = runtime.qualname(type(name))
    required = getattr(obj, "required_tasks", None)
    shape.required_tasks = repr(required)[:200]
    shape.required_kind, shape.required_values = _required(required)
    attach, init = getattr(obj, "attach_router", None), getattr(obj, "init_state", None)
    shape.attach_callable, shape.init_callable = callable(attach), callable(init)
    shape.attach_params = runtime.params(attach) if callable(attach) else None
    shape.init_params = runtime.params(init) if callable(init) else None
    shape.init_is_coroutine = inspect.iscoroutinefunction(init)
    return shape


def observe_endpoint(group: str, name: str) -> EndpointObservation:
    """Load the entry point, build the plugin as vLLM does, and let the engine's loader judge
    it for a server with the tasks it requires."""
    obs = EndpointObservation(has_fastapi=importlib.util.find_spec("fastapi") is not None)
    obj, obs.load_error = runtime.attempt(runtime.target_entry_point(group, name).load)
    if obs.load_error is not None:
        return obs
    obs.loaded = runtime.describe(obj)
    if not callable(obj):
        return obs
    plugin, obs.factory_error = runtime.attempt(obj)
    if obs.factory_error is not None:
        return obs
    obs.built, obs.built_type = repr(plugin)[:200], runtime.qualname(type(plugin))
    from vllm.plugins import load_endpoint_plugins
    from vllm.plugins.endpoint_plugins.interface import EndpointPlugin

    obs.shape = describe_plugin(plugin, EndpointPlugin)
    obs.known_tasks = known_tasks()
    tasks = served_tasks(getattr(plugin, "required_tasks", None), obs.known_tasks)
    obs.served_tasks = list(tasks)
    admitted, obs.loader_error = runtime.attempt(load_endpoint_plugins, tasks)
    obs.admitted = bool(admitted)
    return obs


# --------------------------------------------------------------------------------------------
# A stand-in API server: the core routes, the engine client, the serve options.


async def _health() -> Any:
    from fastapi import Response

    return Response(status_code=200)


async def _show_version() -> dict[str, str]:
    return {"version": "conformance-core"}


async def _show_available_models() -> dict[str, Any]:
    return {"object": "list", "data": [{"id": "conformance-model", "object": "model"}]}


async def _create_completion(body: dict) -> dict[str, Any]:
    return {"served_by": "core", "route": "/v1/completions", "echo": body}


async def _create_chat_completion(body: dict) -> dict[str, Any]:
    return {"served_by": "core", "route": "/v1/chat/completions", "echo": body}


async def _ping() -> dict[str, str]:
    return {"served_by": "core", "route": "/ping"}


async def _metrics(scope: dict[str, Any], receive: Callable[..., Any], send: Callable) -> None:
    """The Prometheus exposition vLLM mounts at /metrics, as a bare ASGI app."""
    body = b"conformance_core_requests_total 1\n"
    headers = [(b"content-type", b"text/plain; version=0.0.4")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


#: (path, methods, handler, route name): the routes of vLLM's API server the harness stands in
#: for, some taking two methods, so that a plugin may take over one and leave the other.
CORE_ROUTES: tuple[tuple[str, tuple[str, ...], Callable[..., Any], str], ...] = (
    ("/health", ("GET",), _health, "health"),
    ("/version", ("GET",), _show_version, "show_version"),
    ("/v1/models", ("GET",), _show_available_models, "show_available_models"),
    ("/v1/completions", ("POST",), _create_completion, "create_completion"),
    ("/v1/chat/completions", ("POST",), _create_chat_completion, "create_chat_completion"),
    ("/ping", ("GET", "POST"), _ping, "ping"),
)
#: The requests every core route must answer the same way before and after the plugin:
#: (method, path, JSON body).
CORE_REQUESTS: tuple[tuple[str, str, Any], ...] = (
    ("GET", "/health", None),
    ("GET", "/version", None),
    ("GET", "/v1/models", None),
    ("POST", "/v1/completions", {"model": "conformance-model", "prompt": "Hello"}),
    (
        "POST",
        "/v1/chat/completions",
        {"model": "conformance-model", "messages": [{"role": "user", "content": "Hi"}]},
    ),
    ("GET", "/ping", None),
    ("POST", "/ping", None),
    ("GET", "/metrics/", None),
)
CORE_ENDPOINTS = frozenset(handler for _, _, handler, _ in CORE_ROUTES) | {_metrics}


def core_app(args: Namespace) -> Any:
    """A FastAPI app with the core routes, as vLLM's `build_app` has them when plugins attach."""
    from fastapi import FastAPI

    app = FastAPI()
    app.state.args = args
    for path, methods, handler, name in CORE_ROUTES:
        app.add_api_route(path, handler, methods=list(methods), name=name)
    app.mount("/metrics", _metrics)
    return app


class StandInEngineClient:
    """What the harness passes as `engine_client`: it answers the calls a plugin's state set-up
    typically makes, with empty results."""

    is_running = True
    errored = False
    dead_error = None

    def __init__(self, label: str) -> None:
        self.label = label

    def __repr__(self) -> str:
        return f"<StandInEngineClient {self.label}>"

    async def collective_rpc(
        self, method: Any, timeout: float | None = None, args: tuple = (), kwargs: Any = None
    ) -> list[Any]:
        return []

    async def get_supported_tasks(self) -> tuple[str, ...]:
        return FALLBACK_TASKS

    async def is_sleeping(self) -> bool:
        return False

    async def check_health(self) -> None:
        return None


def _engine_serve_args() -> Namespace | None:
    """`vllm serve`'s defaults, from the engine's own parser where it has one."""
    for path in (
        "vllm.entrypoints.common.cli_args",  # 0.33 and later
        "vllm.entrypoints.launchers.cli_args",  # 0.32
        "vllm.entrypoints.openai.cli_args",  # before 0.32
    ):
        try:
            module = importlib.import_module(path)
            from vllm.utils.argparse_utils import FlexibleArgumentParser
        except ImportError:
            continue
        try:
            return module.make_arg_parser(FlexibleArgumentParser()).parse_args([])
        except (Exception, SystemExit):
            return None
    return None


def serve_args() -> Namespace:
    """The `args` a server hands `init_state`: the engine's serve defaults, or (on an engine
    without a serve parser, such as the reference) the engine arguments' defaults with the
    common frontend options."""
    parsed = _engine_serve_args()
    if parsed is not None:
        return parsed
    from vllm.engine.arg_utils import AsyncEngineArgs

    values: dict[str, Any] = dict(FRONTEND_DEFAULTS)
    for item in dataclasses.fields(AsyncEngineArgs):
        if item.default is not dataclasses.MISSING:
            values[item.name] = item.default
        elif item.default_factory is not dataclasses.MISSING:
            values[item.name] = item.default_factory()
    values["model"] = values.get("model") or "conformance-model"
    return Namespace(**values)


# --------------------------------------------------------------------------------------------
# Requests straight to the ASGI app.


@dataclass
class Exchange:
    """One request and what the app answered."""

    request: str
    status: int = 0
    body: str = ""
    #: What the app raised while answering (after a 500), as `Type: message`.
    error: str | None = None

    def answer(self) -> str:
        shown = f"{self.status} {self.body}".strip()
        return f"{shown} (raised {self.error})" if self.error else shown


async def _exchange(app: Any, method: str, path: str, payload: Any) -> Exchange:
    body = b"" if payload is None else json.dumps(payload).encode()
    exchange = Exchange(request=f"{method} {path}")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"conformance"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("conformance", 80),
    }
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            exchange.status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    try:
        await app(scope, receive, send)
    except Exception as exc:  # the app answered 500 first; what it raised is the finding
        exchange.error = f"{type(exc).__name__}: {exc}"[:300]
    exchange.body = b"".join(chunks).decode("utf-8", "replace")[:300]
    return exchange


def exchanges(app: Any, requests: list[tuple[str, str, Any]]) -> list[Exchange]:
    """Each request's answer, in one event loop."""

    async def all_of() -> list[Exchange]:
        return [await _exchange(app, *request) for request in requests]

    return asyncio.run(all_of())


# --------------------------------------------------------------------------------------------
# Wiring the plugin into servers.


@dataclass
class RouteSketch:
    """A route the plugin added: "api" (FastAPI's APIRoute), "route", "mount", "included" (a
    route of a router FastAPI includes lazily, which vLLM's override rule does not see) or
    "other"."""

    kind: str
    path: str
    methods: list[str] = field(default_factory=list)


@dataclass
class CoreChange:
    """A core request the plugin does not take over whose answer changed."""

    request: str
    before: str
    after: str


@dataclass
class ServerInit:
    """One server's phase B."""

    error: ExceptionInfo | None = None
    #: The stand-in engine client's attribute the plugin used and the stand-in lacks.
    stand_in_lacks: str | None = None
    #: Core `app.state` entries the plugin replaced or removed.
    replaced: list[str] = field(default_factory=list)


@dataclass
class EndpointDrive:
    #: Modules missing here that an API server needs (fastapi): nothing else was done.
    missing: list[str] = field(default_factory=list)
    #: The tasks the servers were given.
    tasks: list[str] = field(default_factory=list)
    setup_error: ExceptionInfo | None = None
    attach_error: ExceptionInfo | None = None
    #: Whether the engine's phase A left the plugin on `app.state.endpoint_plugins`.
    attached: bool = False
    plugin_routes: list[RouteSketch] = field(default_factory=list)
    #: Core requests a plugin route takes over (same path template, overlapping method).
    overridden: list[str] = field(default_factory=list)
    changed: list[CoreChange] = field(default_factory=list)
    #: Core route objects whose path or methods the plugin changed in place.
    mutated: list[str] = field(default_factory=list)
    first: ServerInit | None = None
    second: ServerInit | None = None
    #: Entries of the first server's state that the second server's `init_state` changed.
    crosstalk: list[str] = field(default_factory=list)
    #: Whether the render server loads the plugin (its `required_tasks` is None or has
    #: "render"), and its phase B with no engine client.
    render_eligible: bool = False
    render: ServerInit | None = None


def _route_sketches(route: Any, prefix: str = "", included: bool = False) -> list[RouteSketch]:
    """`route` described; a router that FastAPI includes lazily (newer FastAPI releases keep
    one route object per `include_router`) is described by the routes it holds."""
    from fastapi.routing import APIRoute
    from starlette.routing import Mount, Route

    inner = getattr(route, "original_router", None)
    context = getattr(route, "include_context", None)
    if inner is not None and context is not None:
        deeper = prefix + str(getattr(context, "prefix", "") or "")
        return [s for r in inner.routes for s in _route_sketches(r, deeper, included=True)]
    if included:
        kind = "included"
    elif isinstance(route, APIRoute):
        kind = "api"
    elif isinstance(route, Mount):
        kind = "mount"
    elif isinstance(route, Route):
        kind = "route"
    else:
        kind = "other"
    methods = sorted(getattr(route, "methods", None) or ())
    return [RouteSketch(kind, prefix + str(getattr(route, "path", "") or ""), methods)]


def _is_core(route: Any) -> bool:
    """Whether a route is the stand-in server's own (or vLLM's copy of one, narrowed to the
    methods a plugin left it)."""
    handlers = (getattr(route, "endpoint", None), getattr(route, "app", None))
    return any(h is core for h in handlers for core in CORE_ENDPOINTS)


def _attach(app: Any, tasks: tuple[str, ...]) -> ExceptionInfo | None:
    """The engine's phase A on `app`; what it raised (a plugin's `attach_router` raises through
    it, as it does out of vLLM's `build_app`)."""
    from vllm.plugins.endpoint_plugins.interface import attach_endpoint_plugins

    _, error = runtime.attempt(attach_endpoint_plugins, app, tasks)
    return error


def _core_state(app: Any, client: Any) -> dict[str, Any]:
    """Fill `app.state` with the core entries a server sets before plugins initialise."""
    values = {
        "engine_client": client,
        "vllm_config": object(),
        "openai_serving_models": object(),
        "log_stats": False,
    }
    for key, value in values.items():
        setattr(app.state, key, value)
    return {"args": app.state.args, **values}


def _state_entries(state: Any) -> dict[str, int]:
    """`id()` of every entry of a Starlette `State`."""
    return {key: id(value) for key, value in vars(state).get("_state", {}).items()}


def _init(app: Any, client: Any, args: Namespace) -> ServerInit:
    """The engine's phase B on `app`, with its core state set first."""
    from vllm.plugins.endpoint_plugins.interface import init_endpoint_plugins_state

    result = ServerInit()
    core = _core_state(app, client) if client is not None else {"args": app.state.args}
    try:
        runtime.call_plugin(asyncio.run, init_endpoint_plugins_state(client, app.state, args))
    except BaseException as exc:
        result.error = runtime.capture(exc)
        if isinstance(exc, AttributeError) and isinstance(
            getattr(exc, "obj", None), StandInEngineClient
        ):
            result.stand_in_lacks = str(getattr(exc, "name", "") or "")
    for key, value in core.items():
        if getattr(app.state, key, None) is not value:
            result.replaced.append(key)
    return result


def _compare_core(drive: EndpointDrive, app: Any, baseline: list[Exchange]) -> None:
    """Which core requests the plugin's routes take over, and how the others changed."""
    taken: set[str] = set()
    for route in drive.plugin_routes:
        if route.kind == "api":
            taken |= {f"{method} {route.path}" for method in route.methods}
    requests = [r for r in CORE_REQUESTS if f"{r[0]} {r[1]}" not in taken]
    drive.overridden = [f"{r[0]} {r[1]}" for r in CORE_REQUESTS if f"{r[0]} {r[1]}" in taken]
    before = {e.request: e for e in baseline}
    for after in exchanges(app, list(requests)):
        old = before[after.request]
        if (old.status, old.body, old.error) != (after.status, after.body, after.error):
            drive.changed.append(CoreChange(after.request, old.answer(), after.answer()))


def _phase_a(drive: EndpointDrive, args: Namespace, tasks: tuple[str, ...]) -> Any:
    """The first server's app, with the plugin attached, and its core routes compared."""
    baseline = exchanges(core_app(args), list(CORE_REQUESTS))
    app = core_app(args)
    # The route objects themselves are kept, so that no new route can reuse their id().
    originals = [(r, r.path, set(getattr(r, "methods", None) or ())) for r in app.routes]
    existing = {id(route) for route, _, _ in originals}
    drive.attach_error = _attach(app, tasks)
    if drive.attach_error is not None:
        return None
    drive.attached = bool(getattr(app.state, "endpoint_plugins", None))
    added = [r for r in app.routes if id(r) not in existing and not _is_core(r)]
    drive.plugin_routes = [sketch for route in added for sketch in _route_sketches(route)]
    for route, path, methods in originals:
        now = set(getattr(route, "methods", None) or ())
        if route.path != path or now != methods:
            drive.mutated.append(
                f"{','.join(sorted(methods))} {path} became {','.join(sorted(now))} {route.path}"
            )
    _compare_core(drive, app, baseline)
    return app


def drive_endpoint(group: str, name: str) -> EndpointDrive:
    """Wire the plugin into two API servers and the render server, as vLLM does."""
    drive = EndpointDrive()
    if importlib.util.find_spec("fastapi") is None:
        drive.missing = ["fastapi"]
        return drive
    factory = runtime.load_entry_point(group, name)
    plugin, drive.setup_error = runtime.attempt(factory)
    if drive.setup_error is not None:
        return drive
    required = getattr(plugin, "required_tasks", None)
    tasks = served_tasks(required, known_tasks())
    drive.tasks = list(tasks)
    args = serve_args()
    first = _phase_a(drive, args, tasks)
    if first is None or not drive.attached:
        return drive
    drive.first = _init(first, StandInEngineClient("server 1"), args)
    if drive.first.error is not None:
        return drive
    # A second server in the same process: its own plugin instance, state and engine client.
    before = _state_entries(first.state)
    second = core_app(args)
    error = _attach(second, tasks)
    drive.second = (
        ServerInit(error=error) if error else _init(second, StandInEngineClient("server 2"), args)
    )
    after = _state_entries(first.state)
    drive.crosstalk = sorted(
        k for k in before.keys() | after.keys() if before.get(k) != after.get(k)
    )
    try:
        drive.render_eligible = required is None or "render" in required
    except TypeError:
        drive.render_eligible = False
    if drive.render_eligible:
        render = core_app(args)
        error = _attach(render, RENDER_TASKS)
        drive.render = ServerInit(error=error) if error else _init(render, None, args)
    return drive
