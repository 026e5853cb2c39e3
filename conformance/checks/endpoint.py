"""Endpoint-plugin checks (`vllm.endpoint_plugins`): the factory's object against vLLM's
`EndpointPlugin` protocol, and the plugin wired into API servers by the engine's own two phases.

Endpoint plugins are opt-in: vLLM loads one only when `VLLM_PLUGINS` names its entry point, so
every probe here runs with `VLLM_PLUGINS` naming exactly the entry point under judgement.
Two probes per entry point feed every check (conformance/probes/endpoint.py):
`observe_endpoint` loads the entry point, builds the plugin and lets the engine's
`load_endpoint_plugins` admit it; `drive_endpoint` attaches it to a stand-in of vLLM's API
server app with the engine's `attach_endpoint_plugins`, compares the core routes' answers
with an app without it, and runs the engine's `init_endpoint_plugins_state` for two API
servers and the render server. FastAPI is needed to build an app: where it is not installed
the checks that need it are inconclusive.
"""

from __future__ import annotations

from typing import NoReturn

from conformance.context import CheckContext
from conformance.framework import check, fail, fail_on, inconclusive, skip
from conformance.probes.data import ExceptionInfo
from conformance.probes.endpoint import (
    RENDER_TASKS,
    EndpointDrive,
    EndpointObservation,
    PluginShape,
    ServerInit,
    drive_endpoint,
    observe_endpoint,
)

#: The contract version that introduced the group (vLLM PR #47454).
SINCE = "0.26.0"
NO_FASTAPI = (
    "fastapi is not installed here, so no API server app could be built for the plugin "
    "(install it with `pip install vllm-plugin-conformance[endpoint]`; real vLLM brings it)"
)
#: Modules an endpoint plugin may rightly expect from the API server vLLM runs it in.
SERVER_MODULES = ("fastapi", "starlette")
LOADED = ("endpoint.loadable",)
BUILT = ("endpoint.factory",)
PLUGIN = ("endpoint.interface",)
#: What the engine needs before it attaches a plugin: the interface, and tasks it admits.
ATTACHABLE = ("endpoint.interface", "endpoint.required-tasks")
ATTACHED = ("endpoint.attaches-routes",)
INITIALISED = ("endpoint.init-state",)


# --------------------------------------------------------------------------------------------
# Pure helpers (unit-tested): what an observation means.


def accepts(params: list[str] | None, count: int) -> bool:
    """Whether a (bound) callable with these parameters can take `count` positional
    arguments; unknown parameters (no signature) are given the benefit of the doubt."""
    if params is None:
        return True
    if any(p.startswith("*") and not p.startswith("**") for p in params):
        return True
    return len([p for p in params if not p.startswith("*")]) >= count


def interface_problems(shape: PluginShape) -> list[str]:
    """How the object falls short of the `EndpointPlugin` protocol vLLM uses."""
    problems = []
    if shape.missing:
        problems.append(
            f"it has no {', '.join(shape.missing)} (the protocol's members are name, "
            "required_tasks, attach_router and init_state)"
        )
    if "name" not in shape.missing:
        if shape.name_type != "builtins.str":
            problems.append(f"`name` is {shape.name} (a {shape.name_type}), not a str")
        elif not shape.name:
            problems.append("`name` is empty")
    if "attach_router" not in shape.missing:
        if not shape.attach_callable:
            problems.append("`attach_router` is not callable")
        elif not accepts(shape.attach_params, 1):
            problems.append(
                f"`attach_router` takes ({', '.join(shape.attach_params or [])}); vLLM calls "
                "`plugin.attach_router(app)`"
            )
    if "init_state" not in shape.missing:
        if not shape.init_callable:
            problems.append("`init_state` is not callable")
        elif not shape.init_is_coroutine:
            problems.append(
                "`init_state` is not an `async def`; vLLM awaits "
                "`plugin.init_state(engine_client, state, args)`, and awaiting what a plain "
                "function returns raises TypeError"
            )
        elif not accepts(shape.init_params, 3):
            problems.append(
                f"`init_state` takes ({', '.join(shape.init_params or [])}); vLLM calls it "
                "with (engine_client, state, args)"
            )
    return problems


def required_tasks_problem(shape: PluginShape, known: list[str]) -> str | None:
    """Why `required_tasks` keeps the plugin off servers it means to serve (None if fine)."""
    shown = shape.required_tasks
    if shape.required_kind == "none":
        return None
    if shape.required_kind == "str":
        return (
            f"required_tasks is the str {shown}: vLLM compares set(required_tasks), the set of "
            "its characters, with the server's tasks, which never meet, so the plugin never "
            f"loads. Write a tuple: ({shown},)."
        )
    if shape.required_kind == "other":
        return f"required_tasks is {shown}, neither None nor a tuple of task names."
    if not shape.required_values:
        return (
            f"required_tasks is {shown}: no server's tasks meet an empty tuple, so the plugin "
            "never loads. Use None for a plugin that any server may load."
        )
    if known:
        unknown = [v for v in shape.required_values if v not in known]
        if unknown:
            return (
                f"required_tasks is {shown}; {', '.join(repr(u) for u in unknown)} "
                f"{'is' if len(unknown) == 1 else 'are'} not a task this engine knows "
                f"({', '.join(known)}), so no server offering it loads the plugin."
            )
    return None


def change_lines(drive: EndpointDrive) -> list[str]:
    """One line per core request that the plugin changed without taking it over."""
    return [
        f"{c.request}: answered {c.before!r} without the plugin, {c.after!r} with it"
        for c in drive.changed
    ]


# --------------------------------------------------------------------------------------------
# The shared probes.


def _plugins_env(ctx: CheckContext) -> dict[str, str | None]:
    # The opt-in: vLLM loads an endpoint plugin only when VLLM_PLUGINS names its entry point.
    return {"VLLM_PLUGINS": ctx.ep.name}


def _fail_unless_server_missing(
    run: EndpointObservation, error: ExceptionInfo, head: str
) -> NoReturn:
    """Fail on `error`, unless it is the API server's own modules missing here."""
    missing = (error.missing_module or "").partition(".")[0]
    if not run.has_fastapi and missing in SERVER_MODULES:
        inconclusive(NO_FASTAPI)
    fail_on(error, head)


def _observed(ctx: CheckContext) -> EndpointObservation:
    """The entry point loaded in a fresh process; fails the check if it did not load."""
    run = ctx.observe(
        observe_endpoint, env=_plugins_env(ctx), purpose="that loads the endpoint plugin"
    )
    if run.load_error is not None:
        _fail_unless_server_missing(run, run.load_error, f"Loading {ctx.ep.value!r} raised:")
    return run


def _built(ctx: CheckContext) -> tuple[EndpointObservation, PluginShape]:
    """The observation of a factory that built an object (endpoint.factory passed)."""
    run = _observed(ctx)
    if run.factory_error is not None:
        _fail_unless_server_missing(
            run, run.factory_error, "The factory raised (see endpoint.factory):"
        )
    if run.shape is None:
        fail("The factory built no plugin (see endpoint.factory).")
    return run, run.shape


def _drive(ctx: CheckContext) -> EndpointDrive:
    """The plugin wired into servers; inconclusive where FastAPI is missing."""
    drive = ctx.observe(
        drive_endpoint, env=_plugins_env(ctx), purpose="that wires the plugin into API servers"
    )
    if drive.missing:
        inconclusive(NO_FASTAPI)
    if drive.setup_error is not None:
        fail_on(drive.setup_error, "The factory raised (see endpoint.factory):")
    return drive


def _attached(ctx: CheckContext) -> EndpointDrive:
    """The drive of a plugin that attached (endpoint.attaches-routes passed)."""
    drive = _drive(ctx)
    if drive.attach_error is not None:
        fail_on(drive.attach_error, "attach_router raised (see endpoint.attaches-routes):")
    if not drive.attached:
        fail("The engine did not attach the plugin (see endpoint.attaches-routes).")
    return drive


def _judge_init(init: ServerInit | None, head: str) -> None:
    """Fail (or, where the harness's stand-in client falls short, be inconclusive) on what a
    server's phase B raised."""
    if init is None:
        fail(f"{head} never ran, for no reason the probe could see.")
    if init.stand_in_lacks:
        inconclusive(
            f"the plugin's init_state uses engine_client.{init.stand_in_lacks}, which the "
            "harness's stand-in engine client does not provide, so its state set-up could not "
            "be judged"
        )
    if init.error is not None:
        fail_on(init.error, f"{head} raised:")


# --------------------------------------------------------------------------------------------
# The checks.


@check(
    "endpoint.loadable",
    title="the endpoint plugin's entry point imports and resolves",
    fix="Make the entry point's module importable with only vLLM (which brings FastAPI) and "
    "the plugin's declared dependencies; read configuration when the plugin is built or its "
    "state initialised, not at import.",
    since=SINCE,
    requires=("package.entry-points-resolve",),
)
def check_loadable(ctx: CheckContext) -> None:
    """vLLM loads an endpoint entry point only when `VLLM_PLUGINS` names it (endpoint plugins
    are opt-in, unlike every other group); one that fails to import is then logged ('Failed
    to load plugin') and skipped, so the server starts without the plugin's routes and its
    clients get 404. The entry point must load in a fresh process."""
    _observed(ctx)


@check(
    "endpoint.factory",
    title="the entry point is a zero-argument factory (a class or function) that builds the plugin",
    fix="Point the entry point at the plugin class, or at a function, that takes no arguments "
    "and returns the plugin object; take settings from `init_state`'s `args` or the "
    "environment.",
    since=SINCE,
    requires=LOADED,
)
def check_factory(ctx: CheckContext) -> None:
    """vLLM calls each admitted entry point with no arguments and uses what it returns as the
    plugin. A factory that raises is logged ('Failed to instantiate endpoint plugin') and
    skipped, so the routes silently go missing; one that returns None stops the server's
    start-up, since vLLM reads `required_tasks` on it."""
    run = _observed(ctx)
    loaded = run.loaded
    assert loaded is not None
    if loaded.kind == "other":
        fail(
            f"The entry point resolves to {loaded.repr}, which is not callable; vLLM calls it "
            "with no arguments to build the plugin."
        )
    if run.factory_error is not None:
        required = loaded.required_params or []
        hint = (
            f"{loaded.qualname} requires ({', '.join(required)}), and vLLM passes nothing.\n"
            if required
            else ""
        )
        _fail_unless_server_missing(
            run, run.factory_error, f"{hint}Calling {loaded.qualname}() raised:"
        )
    if run.built_type == "builtins.NoneType":
        fail(
            f"{loaded.qualname}() returned None; vLLM reads `required_tasks` on what the "
            "factory returns, so the server fails to start with AttributeError."
        )


@check(
    "endpoint.interface",
    title="the plugin offers vLLM's EndpointPlugin protocol: name, required_tasks, "
    "attach_router(app) and async init_state(engine_client, state, args)",
    fix="Give the plugin a str `name`, `required_tasks` (None or a tuple of task names), "
    "`attach_router(self, app)` and `async def init_state(self, engine_client, state, args)`.",
    since=SINCE,
    requires=BUILT,
)
def check_interface(ctx: CheckContext) -> None:
    """vLLM uses the object through its runtime-checkable `EndpointPlugin` protocol without
    checking it first: it reads `required_tasks` (AttributeError if it is missing), calls
    `attach_router(app)` while building the app, and awaits `init_state(engine_client, state,
    args)` when the server's state is set up. Each missing or misshapen member stops the
    server's start-up."""
    run, shape = _built(ctx)
    problems = interface_problems(shape)
    if problems:
        fail(
            f"The plugin {run.built} ({run.built_type}) does not offer the EndpointPlugin "
            "protocol:\n  " + "\n  ".join(problems)
        )


@check(
    "endpoint.required-tasks",
    title="required_tasks is None or a non-empty tuple of task names the engine knows, and the "
    "engine admits the plugin on a server with those tasks",
    fix="Set `required_tasks = None` for any server, or a tuple of `vllm.tasks.SupportedTask` "
    "names such as `('generate',)` or `('embed', 'classify')`.",
    since=SINCE,
    requires=PLUGIN,
)
def check_required_tasks(ctx: CheckContext) -> None:
    """vLLM loads a plugin whose `required_tasks` is not None only if it meets the server's
    supported tasks (`set(required_tasks) & set(supported_tasks)`); otherwise it logs
    'Skipping endpoint plugin' at INFO and serves without it. A str (a set of characters), an
    empty tuple or a misspelt task name therefore keeps the plugin off every server that
    should have it, with no error. The probe also asks the engine's `load_endpoint_plugins`
    with the tasks the plugin requires, and it must admit the plugin."""
    run, shape = _built(ctx)
    problem = required_tasks_problem(shape, run.known_tasks)
    if problem:
        fail(problem)
    if run.loader_error is not None:
        fail_on(
            run.loader_error,
            f"vLLM's load_endpoint_plugins({tuple(run.served_tasks)}) raised on the plugin:",
        )
    if not run.admitted:
        fail(
            f"vLLM's load_endpoint_plugins({tuple(run.served_tasks)}) did not load the plugin, "
            f"though its required_tasks is {shape.required_tasks}."
        )


@check(
    "endpoint.name-matches-entry-point",
    level="recommended",
    title="the plugin's name is its entry point's name",
    fix="Set the plugin's `name` to its entry point's name, the one users put in `VLLM_PLUGINS`.",
    since=SINCE,
    requires=PLUGIN,
)
def check_name_matches_entry_point(ctx: CheckContext) -> None:
    """vLLM's protocol documents `name` as the plugin's name in logs and for the
    `VLLM_PLUGINS` allowlist, but the allowlist matches the entry point's name. When the two
    differ, a user who allowlists the name the plugin shows loads nothing."""
    _, shape = _built(ctx)
    if shape.name != ctx.ep.name:
        fail(
            f"The plugin's name is {shape.name!r}, but its entry point is {ctx.ep.name!r}: "
            f"VLLM_PLUGINS={shape.name} would not load it."
        )


@check(
    "endpoint.attaches-routes",
    title="attach_router, run by the engine on an app with the core routes, adds the plugin's "
    "routes and raises nothing",
    fix="Add routes with `app.include_router(router)` or `app.add_api_route(...)` (paths "
    "start with '/'); do not assume routes, state or settings that only exist once the server "
    "runs.",
    since=SINCE,
    requires=ATTACHABLE,
)
def check_attaches_routes(ctx: CheckContext) -> None:
    """vLLM runs `attach_router(app)` inside `build_app`, after the core routes are attached
    (a plugin may look them up, e.g. `app.url_path_for('show_version')`); an exception
    propagates and the server does not start. An endpoint plugin's job is to add routes: one
    that adds none serves nothing. The probe runs the engine's own `attach_endpoint_plugins`
    on an app with the core routes of vLLM's API server."""
    drive = _drive(ctx)
    if drive.attach_error is not None:
        fail_on(
            drive.attach_error,
            f"vLLM's attach_endpoint_plugins(app, {tuple(drive.tasks)}) raised while the "
            "plugin attached its routes (vLLM's build_app raises it too, so the server does "
            "not start):",
        )
    if not drive.attached:
        fail(
            f"The engine's attach_endpoint_plugins(app, {tuple(drive.tasks)}) did not attach "
            "the plugin, so it serves nothing."
        )
    if not drive.plugin_routes:
        fail("attach_router(app) added no route to the app.")


@check(
    "endpoint.keeps-core-routes",
    title="the plugin leaves the server's other routes as they were: a core route changes only "
    "where the plugin overrides its path and method with a route of its own",
    fix="Register only your own routes; override a core route only by declaring a route with "
    "its path and method; scope middleware and exception handlers to your own routes "
    "(an APIRouter's dependencies), and never edit, remove or reorder `app.routes`.",
    since=SINCE,
    requires=ATTACHED,
)
def check_keeps_core_routes(ctx: CheckContext) -> None:
    """Plugins attach to the live API server. vLLM's contract lets a plugin's HTTP route take
    over the methods it shares with an earlier route of the same path template (the other
    methods keep being served by the core route); everything else must answer as before. The
    probe sends each core route of a stand-in of vLLM's API server (GET /health, /version,
    /v1/models, /ping, /metrics; POST /v1/completions, /v1/chat/completions, /ping) to an app
    without the plugin and to one with it, and compares the answers, leaving out only what
    the plugin's own routes override. Middleware, exception handlers, mounts ahead of core
    routes, and edits of core route objects all show up here."""
    drive = _attached(ctx)
    if drive.mutated:
        fail(
            "The plugin changed core route objects in place (vLLM copies a core route when "
            "a plugin overrides some of its methods; the plugin must not):\n  "
            + "\n  ".join(drive.mutated)
        )
    if drive.changed:
        overridden = (
            f"\n(Overridden on purpose, and allowed: {', '.join(drive.overridden)}.)"
            if drive.overridden
            else ""
        )
        fail(
            "Core routes the plugin does not override answer differently with it:\n  "
            + "\n  ".join(change_lines(drive))
            + overridden
        )


@check(
    "endpoint.init-state",
    title="init_state, awaited by the engine once the server's state is set up, raises nothing "
    "and leaves the server's own state entries alone",
    fix="Read only what the server passes (use `getattr(args, name, default)` for options "
    "that vary between releases), store your own entries on `state` under names of your own, "
    "and never replace the server's.",
    since=SINCE,
    requires=ATTACHED,
)
def check_init_state(ctx: CheckContext) -> None:
    """vLLM awaits each attached plugin's `init_state(engine_client, state, args)` once per
    server, after the server's own state (engine client, serving handlers, `args`) is set;
    an exception stops the server's start-up. The probe awaits it through the engine's
    `init_endpoint_plugins_state` with the serve options' defaults and a stand-in engine
    client, then checks that the server's own entries on `state` are still the same
    objects."""
    drive = _attached(ctx)
    _judge_init(drive.first, "init_state(engine_client, state, args)")
    assert drive.first is not None
    if drive.first.replaced:
        fail(
            "init_state replaced or removed the server's own state entries: "
            f"{', '.join(drive.first.replaced)}."
        )


@check(
    "endpoint.init-state-per-server",
    title="each server's init_state sets up that server's state only: a second server in the "
    "same process initialises too and leaves the first one's state alone",
    fix="Keep per-server data on the `state` object init_state receives (routes read it from "
    "`request.app.state`), never in module globals or class attributes, and do not refuse "
    "a second initialisation in one process.",
    since=SINCE,
    requires=INITIALISED,
)
def check_init_state_per_server(ctx: CheckContext) -> None:
    """vLLM builds the plugin anew for every server it starts (each API server, the render
    server) and calls its `init_state` once per server, with that server's own `state` and
    engine client: state is per app. The probe starts a second server in the same process
    after the first: its `init_state` must succeed, and the first server's state must be
    unchanged."""
    drive = _attached(ctx)
    _judge_init(drive.second, "The second server's init_state (the first server's succeeded)")
    if drive.crosstalk:
        fail(
            "The second server's init_state changed the first server's state: "
            f"{', '.join(drive.crosstalk)}; the first server's routes now serve the second "
            "server's data."
        )


@check(
    "endpoint.init-state-without-engine",
    title="on the render server, which has no engine, init_state accepts engine_client=None",
    fix="In init_state, handle `engine_client is None` (skip engine set-up, and have the "
    "routes answer 503), or require tasks that exclude 'render' in `required_tasks`.",
    since=SINCE,
    requires=INITIALISED,
)
def check_init_state_without_engine(ctx: CheckContext) -> None:
    """vLLM's CPU-only render server (tasks ('render',)) also loads endpoint plugins whose
    `required_tasks` is None or includes 'render', attaches their routes, and awaits their
    `init_state` with `engine_client=None`; an exception stops that server's start-up. Plugins
    that require other tasks only are not loaded there, and this check does not apply."""
    drive = _attached(ctx)
    if not drive.render_eligible:
        skip(
            f"the plugin's required_tasks leave out {RENDER_TASKS[0]!r}, so the render "
            "server does not load it"
        )
    _judge_init(
        drive.render,
        f"On the render server (tasks {RENDER_TASKS}, engine_client=None), wiring the plugin",
    )
