"""The `endpoint.*` checks: each mutant trips its check, good endpoint plugins pass them, and
without FastAPI they cannot judge."""

from __future__ import annotations

import asyncio
import importlib.util
import textwrap
from argparse import Namespace

import pytest

from conformance.checks import endpoint as checks
from conformance.framework import load_catalog
from conformance.probes.endpoint import (
    CoreChange,
    EndpointDrive,
    PluginShape,
    exchanges,
    served_tasks,
)
from conformance.runner import CheckResult
from conformance.target import Target, mutant_names, resolve_target
from tests.conftest import assert_mutant_fails, inline_target, run_check_group

GROUP = "endpoint"
ENDPOINTS = "vllm.endpoint_plugins"
FIXTURE = "vllm_add_dummy_endpoint_plugin"
HAS_FASTAPI = importlib.util.find_spec("fastapi") is not None
needs_fastapi = pytest.mark.skipif(not HAS_FASTAPI, reason="fastapi is not installed here")
#: The bundled mutants of this group, each named after the check it must fail.
MUTANTS = [name for name in mutant_names() if name.startswith(f"{GROUP}.")]
#: What the failure message must show, beyond the fix hint.
OBSERVED = {
    "endpoint.loadable": "KeyError: 'MUTANT_ADMIN_TOKEN'",
    "endpoint.factory": "missing 1 required positional argument: 'args'",
    "endpoint.interface": "`init_state` is not an `async def`",
    "endpoint.required-tasks": "required_tasks is the str 'generate'",
    "endpoint.name-matches-entry-point": "VLLM_PLUGINS=admin would not load it",
    "endpoint.attaches-routes": "A path prefix must start with '/'",
    "endpoint.keeps-core-routes": "GET /v1/models: answered '200",
    "endpoint.init-state": "'Namespace' object has no attribute 'admin_token'",
    "endpoint.init-state-per-server": "changed the first server's state: global_admin_client",
    "endpoint.init-state-without-engine": "'NoneType' object has no attribute 'collective_rpc'",
}
_WIRING = {
    "endpoint.attaches-routes",
    "endpoint.keeps-core-routes",
    "endpoint.init-state",
    "endpoint.init-state-per-server",
    "endpoint.init-state-without-engine",
}
#: The checks each mutant leaves unable to judge: they are blocked by its check, not failed.
BLOCKED = {
    # Nothing loaded: there is no factory to call, nor a plugin to wire.
    "endpoint.loadable": set(MUTANTS) - {"endpoint.loadable"},
    "endpoint.factory": set(MUTANTS) - {"endpoint.loadable", "endpoint.factory"},
    "endpoint.interface": {
        "endpoint.required-tasks",
        "endpoint.name-matches-entry-point",
        *_WIRING,
    },
    # No server admits the plugin, so nothing is attached.
    "endpoint.required-tasks": _WIRING,
    "endpoint.name-matches-entry-point": set(),
    "endpoint.attaches-routes": _WIRING - {"endpoint.attaches-routes"},
    "endpoint.keeps-core-routes": set(),
    "endpoint.init-state": {"endpoint.init-state-per-server", "endpoint.init-state-without-engine"},
    "endpoint.init-state-per-server": set(),
    "endpoint.init-state-without-engine": set(),
}
PLUGIN_SOURCE = """
    from fastapi import FastAPI


    async def hello() -> dict:
        return {{"hello": "plugin"}}


    class Plugin:
        name = "{name}"
        required_tasks = {tasks}

        def attach_router(self, app: FastAPI) -> None:
            app.add_api_route("/v1/hello", hello, methods=["GET"])
{attach}
        async def init_state(self, engine_client, state, args) -> None:
            state.hello_client = engine_client
{init}"""


def run_group(target: Target) -> dict[str, CheckResult]:
    """The group's checks, and the package checks, in one session."""
    return run_check_group(target, (GROUP, "package"))


def inline_plugin(name: str, source: str) -> Target:
    """An endpoint plugin `name:Plugin` written on the spot."""
    return inline_target(ENDPOINTS, name, source, "Plugin")


def plugin(name: str, tasks: str = "None", attach: str = "", init: str = "") -> Target:
    """The hello plugin, with lines added to `attach_router` and `init_state`."""
    indent = " " * 12
    extra = {
        key: textwrap.indent(textwrap.dedent(text), indent) if text else ""
        for key, text in (("attach", attach), ("init", init))
    }
    return inline_plugin(name, PLUGIN_SOURCE.format(name=name, tasks=tasks, **extra))


# --------------------------------------------------------------------------------------------
# Mutants and fixtures.


def test_every_endpoint_check_has_a_mutant():
    ids = sorted(k for k, v in load_catalog().items() if v.group == GROUP)
    assert ids == MUTANTS, "each endpoint check needs a mutant named after it"
    assert set(OBSERVED) == set(BLOCKED) == set(MUTANTS)


def test_endpoint_checks_start_with_the_group_in_vllm_0_26():
    catalog = load_catalog()
    assert {catalog[m].since for m in MUTANTS} == {"0.26.0"}
    assert not catalog["endpoint.loadable"].applies_to_contract("0.25.0")


@needs_fastapi
@pytest.mark.parametrize("check_id", MUTANTS)
def test_the_mutant_fails_its_check_and_blocks_only_what_depends_on_it(check_id):
    results = run_group(resolve_target(check_id))
    assert_mutant_fails(results, check_id, OBSERVED[check_id])
    blocked = {k for k, r in results.items() if r.status == "blocked"}
    assert blocked == BLOCKED[check_id]
    passed = set(results) - blocked - {check_id}
    assert {results[k].status for k in passed} == {"passed"}, "the rest judge and pass"


@needs_fastapi
def test_the_dummy_endpoint_fixture_passes_every_endpoint_check():
    results = run_check_group(resolve_target(FIXTURE), GROUP)
    assert set(results) == set(MUTANTS)
    for check_id, result in results.items():
        assert result.status == "passed", f"{check_id}: {result.message}"


def test_without_fastapi_every_endpoint_check_is_inconclusive(tmp_path, monkeypatch):
    # sitecustomize runs in every probe interpreter: there, fastapi is not importable.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\nsys.modules['fastapi'] = None\nsys.modules['starlette'] = None\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(site))
    results = run_check_group(resolve_target(FIXTURE), GROUP)
    statuses = {k: r.status for k, r in results.items()}
    assert statuses == dict.fromkeys(MUTANTS, "inconclusive"), "never passed, never failed"
    assert "fastapi is not installed here" in results["endpoint.loadable"].message


# --------------------------------------------------------------------------------------------
# Inline plugins: the rules' edges.


@needs_fastapi
def test_overriding_one_method_of_a_core_route_keeps_its_other_method():
    # GET /ping is taken over on purpose; POST /ping must still reach the core route.
    attach = """
        async def ping() -> dict:
            return {"served_by": "plugin"}

        app.add_api_route("/ping", ping, methods=["GET"])
    """
    results = run_group(plugin("ping_override", attach=attach))
    assert results["endpoint.keeps-core-routes"].status == "passed"


@needs_fastapi
def test_editing_a_core_route_in_place_is_caught():
    attach = """
        for route in app.routes:
            if getattr(route, "path", None) == "/ping":
                route.methods = {"GET"}
    """
    result = run_group(plugin("route_editor", attach=attach))["endpoint.keeps-core-routes"]
    assert result.status == "failed"
    assert "GET,POST /ping became GET /ping" in result.message


@needs_fastapi
def test_a_plugin_without_required_tasks_fails_the_interface():
    source = PLUGIN_SOURCE.format(name="no_tasks", tasks="None", attach="", init="")
    source = source.replace("        required_tasks = None\n", "")
    result = run_group(inline_plugin("no_tasks", source))["endpoint.interface"]
    assert result.status == "failed"
    assert "it has no required_tasks" in result.message


@needs_fastapi
@pytest.mark.parametrize(
    ("tasks", "expected"),
    [
        ("('generation',)", "'generation' is not a task this engine knows"),
        ("()", "no server's tasks meet an empty tuple"),
        ("42", "neither None nor a tuple"),
    ],
)
def test_required_tasks_that_no_server_meets_fail(tasks, expected):
    result = run_group(plugin("odd_tasks", tasks=tasks))["endpoint.required-tasks"]
    assert result.status == "failed"
    assert expected in result.message


@needs_fastapi
def test_a_plugin_the_render_server_does_not_load_skips_the_render_check():
    results = run_group(plugin("embed_only", tasks="('embed',)"))
    render = results.pop("endpoint.init-state-without-engine")
    assert render.status == "skipped"
    assert "render server does not load it" in render.message
    assert {r.status for r in results.values()} == {"passed"}


@needs_fastapi
def test_an_engine_client_call_the_stand_in_lacks_is_inconclusive():
    init = "await engine_client.get_model_config()"
    result = run_group(plugin("config_reader", init=init))["endpoint.init-state"]
    assert result.status == "inconclusive"
    assert "engine_client.get_model_config" in result.message


@needs_fastapi
def test_replacing_the_servers_own_state_fails_init_state():
    init = "state.engine_client = None"
    result = run_group(plugin("state_clobber", init=init))["endpoint.init-state"]
    assert result.status == "failed"
    assert "state entries: engine_client" in result.message


# --------------------------------------------------------------------------------------------
# Helpers.


@pytest.mark.parametrize(
    ("params", "count", "expected"),
    [
        (["app"], 1, True),
        ([], 1, False),
        (["*args", "**kwargs"], 3, True),
        (["engine_client", "state"], 3, False),
        (["**kwargs"], 1, False),
        (None, 3, True),
    ],
)
def test_accepts(params, count, expected):
    assert checks.accepts(params, count) is expected


def test_interface_problems_name_each_misshapen_member():
    shape = PluginShape(
        missing=["attach_router"],
        name="42",
        name_type="builtins.int",
        init_callable=True,
        init_params=["engine_client"],
        init_is_coroutine=True,
    )
    problems = checks.interface_problems(shape)
    assert any("it has no attach_router" in p for p in problems)
    assert any("`name` is 42 (a builtins.int)" in p for p in problems)
    assert any("`init_state` takes (engine_client)" in p for p in problems)


def test_required_tasks_problem_accepts_none_and_known_tasks():
    known = ["generate", "embed", "render"]
    assert checks.required_tasks_problem(PluginShape(required_kind="none"), known) is None
    fine = PluginShape(required_kind="sequence", required_values=["embed"])
    assert checks.required_tasks_problem(fine, known) is None
    # An engine whose task names are unknown judges only the shape.
    odd = PluginShape(required_kind="sequence", required_values=["anything"])
    assert checks.required_tasks_problem(odd, []) is None


def test_served_tasks_follow_what_the_plugin_requires():
    known = ["generate", "embed", "render"]
    assert served_tasks(None, known) == ("generate",)
    assert served_tasks(("embed", "nope"), known) == ("embed",)
    assert served_tasks("generate", known) == ("generate",)  # letters: none known
    assert served_tasks(42, known) == ("generate",)


def test_change_lines_show_both_answers():
    drive = EndpointDrive(changed=[CoreChange("GET /health", "200", "401 {}")])
    assert checks.change_lines(drive) == [
        "GET /health: answered '200' without the plugin, '401 {}' with it"
    ]


# --------------------------------------------------------------------------------------------
# The reference's wiring (phase A and B), in process with plugins made on the spot.


class _Plugin:
    """An endpoint plugin whose `attach_router` runs `attach(app)`."""

    def __init__(self, attach, required_tasks=None):
        self.name = "spot"
        self.required_tasks = required_tasks
        self._attach = attach

    def attach_router(self, app):
        self._attach(app)

    async def init_state(self, engine_client, state, args):
        state.spot_client = engine_client


def _route(path, methods, answer, status=200):
    async def handler():
        return {"answer": answer}

    return lambda app: app.add_api_route(path, handler, methods=methods, status_code=status)


def _wire(monkeypatch, *plugins):
    """A FastAPI app with a core GET+POST /shared and a /metrics mount, the plugins attached."""
    from fastapi import FastAPI

    from reference import endpoints

    monkeypatch.setattr(endpoints._plugins, "load_endpoint_plugins", lambda tasks: list(plugins))
    app = FastAPI()
    _route("/shared", ["GET", "POST"], "core", status=201)(app)
    app.mount("/metrics", FastAPI())
    core = app.routes[-2]
    endpoints.attach_endpoint_plugins(app, ("generate",))
    return app, core


def _answers(app, *requests):
    return [(e.status, e.body) for e in exchanges(app, [(m, p, None) for m, p in requests])]


@needs_fastapi
def test_a_plugin_route_takes_over_one_method_and_the_core_route_keeps_the_other(monkeypatch):
    app, core = _wire(monkeypatch, _Plugin(_route("/shared", ["GET"], "plugin", status=202)))
    answers = _answers(app, ("GET", "/shared"), ("POST", "/shared"))
    assert answers == [(202, '{"answer":"plugin"}'), (201, '{"answer":"core"}')]
    assert core.methods == {"GET", "POST"}, "the core route object is copied, never changed"


@needs_fastapi
def test_the_later_plugin_wins_the_same_operation(monkeypatch):
    first = _Plugin(_route("/shared", ["GET"], "first", status=202))
    second = _Plugin(_route("/shared", ["GET"], "second", status=202))
    app, _ = _wire(monkeypatch, first, second)
    answers = _answers(app, ("GET", "/shared"), ("DELETE", "/shared"))
    assert answers[0] == (202, '{"answer":"second"}') and answers[1][0] == 405


@needs_fastapi
def test_an_override_takes_the_core_routes_place_and_a_new_route_goes_last(monkeypatch):
    plugin = _Plugin(_route("/metrics/extra", ["GET"], "plugin"))
    takeover = _Plugin(_route("/shared", ["GET"], "plugin"))
    app, _ = _wire(monkeypatch, takeover, plugin)
    paths = [getattr(r, "path", "") for r in app.routes]
    assert paths.index("/shared") < paths.index("/metrics"), "the override sits where GET was"
    assert paths.index("/metrics/extra") > paths.index("/metrics"), "a new route goes last"
    assert app.state.endpoint_plugins == [takeover, plugin]


def test_phase_b_without_phase_a_initialises_nothing():
    from reference.endpoints import init_endpoint_plugins_state

    class State:
        pass

    state = State()
    asyncio.run(init_endpoint_plugins_state(object(), state, Namespace()))
    assert vars(state) == {}, "a bare state (a batch runner's) has no plugins to initialise"


def test_the_loader_reads_required_tasks_without_a_default(monkeypatch):
    from reference import plugins

    class NoTasks:
        name = "no_tasks"

    monkeypatch.setenv("VLLM_PLUGINS", "no_tasks")
    monkeypatch.setattr(plugins, "load_plugins_by_group", lambda group: {"no_tasks": NoTasks})
    with pytest.raises(AttributeError, match="required_tasks"):
        plugins.load_endpoint_plugins(("generate",))
