"""The reference loader in probes: discovery, VLLM_PLUGINS filtering, errors, once per process."""

from __future__ import annotations

import pytest

from conformance.overlay import Overlay
from conformance.probe import run_probe
from tests.conftest import (
    BUILTIN_GENERAL,
    GENERAL,
    IO_PROCESSOR,
    PLATFORM,
    STAT_LOGGER,
    add_plugin,
    code,
)

COUNTING_PLUGIN = """
CALLS = []

def register():
    CALLS.append(1)
"""


@pytest.fixture
def two_general_plugins(overlay):
    add_plugin(overlay, "plugin-a", {GENERAL: {"a": "plug_a:register"}}, plug_a=COUNTING_PLUGIN)
    add_plugin(overlay, "plugin-b", {GENERAL: {"b": "plug_b:register"}}, plug_b=COUNTING_PLUGIN)
    return overlay


LOAD_GENERAL = code(
    """
    import sys
    import vllm.plugins as plugins
    probe.result["loaded"] = list(plugins.load_plugins_by_group(plugins.DEFAULT_PLUGINS_GROUP))
    probe.result["imported"] = sorted(m for m in ("plug_a", "plug_b") if m in sys.modules)
    """
)


def test_discovery_is_per_group(overlay):
    add_plugin(
        overlay,
        "multi-group",
        {
            GENERAL: {"g1": "multi:general"},
            PLATFORM: {"p1": "multi:platform"},
            IO_PROCESSOR: {"io1": "multi:io"},
            STAT_LOGGER: {"s1": "multi:StatLogger"},
        },
        multi="def general(): pass\ndef platform(): return None\ndef io(): return None\n"
        "class StatLogger: pass\n",
    )
    result = run_probe(
        code(
            """
            import vllm.plugins as p
            probe.result["groups"] = {
                g: list(p.load_plugins_by_group(g))
                for g in (p.DEFAULT_PLUGINS_GROUP, p.PLATFORM_PLUGINS_GROUP,
                          p.IO_PROCESSOR_PLUGINS_GROUP, p.STAT_LOGGER_PLUGINS_GROUP,
                          p.ENDPOINT_PLUGINS_GROUP)
            }
            """
        ),
        overlay=overlay,
    )
    assert result.ok, result.describe()
    assert result.values["groups"] == {
        GENERAL: [*BUILTIN_GENERAL, "g1"],
        PLATFORM: ["p1"],
        IO_PROCESSOR: ["io1"],
        STAT_LOGGER: ["s1"],
        "vllm.endpoint_plugins": [],
    }


@pytest.mark.parametrize(
    ("vllm_plugins", "loaded"),
    [
        (None, ["a", "b"]),
        ("a", ["a"]),
        ("", []),
        ("a, b", ["a"]),  # " b" does not match "b": no stripping
        ("b,,", ["b"]),
        ("unknown", []),
        ("A", []),  # names match case-sensitively
    ],
    ids=["unset", "one-name", "empty", "no-stripping", "empty-items", "unknown-name", "case"],
)
def test_vllm_plugins_filters_by_exact_name_before_import(
    two_general_plugins, vllm_plugins, loaded
):
    result = run_probe(
        LOAD_GENERAL, overlay=two_general_plugins, env={"VLLM_PLUGINS": vllm_plugins}
    )
    assert result.ok, result.describe()
    builtins = BUILTIN_GENERAL if vllm_plugins is None else []
    assert result.values["loaded"] == [*builtins, *loaded]
    imported = [f"plug_{name}" for name in loaded]
    assert result.values["imported"] == imported, "filtered-out plugins must never be imported"


def test_an_allowlist_logs_each_plugin_it_loads(two_general_plugins):
    result = run_probe(LOAD_GENERAL, overlay=two_general_plugins, env={"VLLM_PLUGINS": "a"})
    messages = [r["message"] for r in result.records]
    assert "Loading plugin a" in messages and "Loading plugin b" not in messages


def test_general_group_logs_at_debug_and_other_groups_at_info(overlay):
    add_plugin(
        overlay,
        "both",
        {GENERAL: {"g": "both:f"}, STAT_LOGGER: {"s": "both:f"}},
        both="def f(): pass\n",
    )
    result = run_probe(
        code(
            """
            import vllm.plugins as p
            p.load_plugins_by_group(p.DEFAULT_PLUGINS_GROUP)
            mark = probe.mark()
            p.load_plugins_by_group(p.STAT_LOGGER_PLUGINS_GROUP)
            probe.result["general"] = sorted({r["level"] for r in probe.records()[:mark]})
            probe.result["other"] = sorted({r["level"] for r in probe.records(since=mark)})
            """
        ),
        overlay=overlay,
    )
    assert result.values == {"general": ["DEBUG"], "other": ["INFO"]}


def test_a_plugin_that_fails_to_import_is_logged_at_error_and_skipped(overlay):
    add_plugin(
        overlay,
        "broken",
        {GENERAL: {"broken": "broken_mod:register"}},
        broken_mod="raise ImportError('missing dependency xyz')\n",
    )
    add_plugin(overlay, "plugin-a", {GENERAL: {"a": "plug_a:register"}}, plug_a=COUNTING_PLUGIN)
    result = run_probe(LOAD_GENERAL, overlay=overlay)
    assert result.ok, result.describe()
    assert result.values["loaded"] == [*BUILTIN_GENERAL, "a"]
    errors = result.records_at("ERROR")
    assert [e["message"] for e in errors] == ["Failed to load plugin broken"]
    assert "missing dependency xyz" in errors[0]["exc"], "the traceback must be logged"


def test_a_missing_attribute_is_a_load_failure_too(overlay):
    add_plugin(
        overlay, "typo", {GENERAL: {"typo": "typo_mod:regsiter"}}, typo_mod="def register(): pass\n"
    )
    result = run_probe(LOAD_GENERAL, overlay=overlay)
    assert result.values["loaded"] == BUILTIN_GENERAL
    assert [e["message"] for e in result.records_at("ERROR")] == ["Failed to load plugin typo"]


def test_a_raising_general_plugin_propagates_and_later_ones_never_run(tmp_path):
    # Two overlays fix the discovery order: sys.path order decides it.
    first = add_plugin(
        Overlay(tmp_path / "first"),
        "raiser",
        {GENERAL: {"raiser": "raiser:register"}},
        raiser="def register():\n    raise ValueError('bad plugin')\n",
    )
    second = add_plugin(
        Overlay(tmp_path / "second"),
        "plugin-a",
        {GENERAL: {"a": "plug_a:register"}},
        plug_a=COUNTING_PLUGIN,
    )
    result = run_probe(
        code(
            """
            import sys
            import vllm.plugins as plugins
            probe.result["order"] = list(plugins.load_plugins_by_group(plugins.DEFAULT_PLUGINS_GROUP))
            try:
                plugins.load_general_plugins()
            except ValueError as exc:
                probe.result["first"] = str(exc)
            mark = probe.mark()
            plugins.load_general_plugins()
            probe.result["second_call_records"] = probe.records(since=mark)
            probe.result["a_calls"] = len(sys.modules["plug_a"].CALLS)
            """
        ),
        overlay=[first, second],
    )
    assert result.ok, result.describe()
    assert result.values["order"] == [*BUILTIN_GENERAL, "raiser", "a"]
    assert result.values["first"] == "bad plugin"
    assert result.values["a_calls"] == 0, "plugins after the raising one must not run"
    assert result.values["second_call_records"] == [], "a second call must do and log nothing"


def test_general_plugins_run_once_per_process(two_general_plugins):
    result = run_probe(
        code(
            """
            import sys
            import vllm.plugins as plugins
            plugins.load_general_plugins()
            plugins.load_general_plugins()
            probe.result["calls"] = [len(sys.modules[m].CALLS) for m in ("plug_a", "plug_b")]
            probe.result["flag"] = plugins.plugins_loaded
            """
        ),
        overlay=two_general_plugins,
    )
    assert result.values == {"calls": [1, 1], "flag": True}


def test_the_guard_is_set_before_plugins_run(overlay):
    add_plugin(
        overlay,
        "peek",
        {GENERAL: {"peek": "peek:register"}},
        peek="SEEN = []\ndef register():\n    import vllm.plugins\n"
        "    SEEN.append(vllm.plugins.plugins_loaded)\n",
    )
    result = run_probe(
        "import sys, vllm.plugins as p\np.load_general_plugins()\n"
        "probe.result['seen'] = sys.modules['peek'].SEEN\n",
        overlay=overlay,
    )
    assert result.values["seen"] == [True]


def test_same_name_in_two_distributions_keeps_the_last_loaded_object(overlay):
    add_plugin(overlay, "dup-one", {GENERAL: {"dup": "dup_one:f"}}, dup_one="def f(): return 1\n")
    add_plugin(overlay, "dup-two", {GENERAL: {"dup": "dup_two:f"}}, dup_two="def f(): return 2\n")
    result = run_probe(
        code(
            """
            import vllm.plugins as p
            eps = p.discover_entry_points(p.DEFAULT_PLUGINS_GROUP)
            loaded = p.load_plugins_by_group(p.DEFAULT_PLUGINS_GROUP)
            probe.result["discovered"] = [ep.value for ep in eps if ep.name == "dup"]
            probe.result["keys"] = list(loaded)
            probe.result["value"] = loaded["dup"]()
            """
        ),
        overlay=overlay,
    )
    assert len(result.values["discovered"]) == 2
    assert result.values["keys"] == [*BUILTIN_GENERAL, "dup"]
    last = result.values["discovered"][-1]
    assert result.values["value"] == (1 if last == "dup_one:f" else 2)


def test_discovery_scans_once_and_notices_sys_path_changes(overlay, tmp_path):
    later = Overlay(tmp_path / "later")
    add_plugin(later, "late", {GENERAL: {"late": "late_mod:f"}}, late_mod="def f(): pass\n")
    add_plugin(overlay, "early", {GENERAL: {"early": "early_mod:f"}}, early_mod="def f(): pass\n")
    result = run_probe(
        code(
            f"""
            import sys
            from importlib import metadata
            import vllm.plugins as p
            scans = []
            original = metadata.distributions
            def counting(**kw):
                scans.append(1)
                return original(**kw)
            metadata.distributions = counting
            p.clear_discovery_cache()
            for group in p.KNOWN_GROUPS:
                p.load_plugins_by_group(group)
            probe.result["scans_for_all_groups"] = len(scans)
            probe.result["before"] = [ep.name for ep in p.discover_entry_points(p.DEFAULT_PLUGINS_GROUP)]
            sys.path.insert(0, {str(later.path)!r})
            probe.result["after"] = [ep.name for ep in p.discover_entry_points(p.DEFAULT_PLUGINS_GROUP)]
            probe.result["scans_total"] = len(scans)
            """
        ),
        overlay=overlay,
        exclusive=False,
    )
    assert result.ok, result.describe()
    assert result.values["scans_for_all_groups"] == 1
    assert result.values["before"] == [*BUILTIN_GENERAL, "early"]
    assert result.values["after"] == [*BUILTIN_GENERAL, "late", "early"]
    assert result.values["scans_total"] == 2


def test_builtin_plugins_are_filtered_by_name_like_any_other(overlay):
    add_plugin(overlay, "plugin-a", {GENERAL: {"a": "plug_a:register"}}, plug_a=COUNTING_PLUGIN)
    body = code(
        """
        import vllm.plugins as p
        p.register_builtin_plugin(p.DEFAULT_PLUGINS_GROUP, "builtin_x", "plug_a:register")
        probe.result["loaded"] = list(p.load_plugins_by_group(p.DEFAULT_PLUGINS_GROUP))
        """
    )
    unset = run_probe(body, overlay=overlay)
    only_a = run_probe(body, overlay=overlay, env={"VLLM_PLUGINS": "a"})
    assert unset.values["loaded"] == [*BUILTIN_GENERAL, "builtin_x", "a"]
    assert only_a.values["loaded"] == ["a"]


def test_no_plugins_logs_at_debug_and_returns_empty():
    result = run_probe(
        "import vllm.plugins as p\nprobe.result['x'] = p.load_plugins_by_group('vllm.none')\n"
    )
    assert result.values["x"] == {}
    assert [r["message"] for r in result.records] == ["No plugins for group vllm.none found."]
