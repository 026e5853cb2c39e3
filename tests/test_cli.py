"""`vllm-conformance` on the command line."""

from __future__ import annotations

import json

from conformance.cli import main


def test_demo_shows_the_fixtures_entry_points_and_the_platform(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "vllm.platform_plugins  dummy_platform_plugin" in out
    assert "register_dummy_model" in out
    assert "resolved platform: vllm_add_dummy_platform.dummy_platform.DummyPlatform" in out


def test_demo_json_is_machine_readable(capsys):
    assert main(["demo", "--json"]) == 0
    values = json.loads(capsys.readouterr().out)
    assert values["platform"] == "vllm_add_dummy_platform.dummy_platform.DummyPlatform"
    assert [
        "vllm.general_plugins",
        "dummy_custom_ops",
        "vllm_add_dummy_platform:register_ops",
    ] in values["entry_points"]


def test_an_unknown_command_is_a_usage_error(capsys):
    assert main(["frobnicate"]) == 2
    assert "invalid choice" in capsys.readouterr().err
