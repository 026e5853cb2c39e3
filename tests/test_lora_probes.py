"""LoRA resolvers registered by general plugins, observed in probes through the mounted `vllm.*` API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conformance.overlay import Overlay
from conformance.probe import run_probe
from tests.conftest import code

BASE = "org/base-model"
FIXTURE = "lora_filesystem_resolver_plugin"
BUILTIN_NAME = "Filesystem Resolver"
PLUGIN_NAME = "Plugin Filesystem Resolver"

#: Names that must never resolve, with the adapter each would reach outside the directory.
ESCAPING_NAMES = ["../outside", "a/../../outside", "escape", "escape/", "../dir-sibling/x"]

LIST_RESOLVERS = code(
    """
    import vllm.plugins as plugins
    from vllm.lora.resolver import LoRAResolverRegistry
    plugins.load_general_plugins()
    probe.result["resolvers"] = [
        [name, type(LoRAResolverRegistry.get_resolver(name)).__qualname__]
        for name in LoRAResolverRegistry.get_supported_resolvers()
    ]
    """
)


def write_adapter(directory: Path, base: str = BASE) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "base_model_name_or_path": base}
    (directory / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


@pytest.fixture
def adapter_dir(tmp_path) -> Path:
    """`dir/good` resolves; valid adapters outside `dir` are reachable only by escaping it."""
    root = tmp_path / "dir"
    write_adapter(root / "good")
    (root / "a").mkdir()
    write_adapter(tmp_path / "outside")
    write_adapter(tmp_path / "dir-sibling" / "x")
    (root / "escape").symlink_to(tmp_path / "outside", target_is_directory=True)
    return root


@pytest.fixture
def fixture_overlay(tmp_path) -> Overlay:
    return Overlay(tmp_path / "overlay").add_fixture(FIXTURE)


def env_for(builtin_dir: Path | None = None, plugin_dir: Path | None = None, **extra: str):
    env = {
        "VLLM_LORA_RESOLVER_CACHE_DIR": None if builtin_dir is None else str(builtin_dir),
        "LORA_PLUGIN_ADAPTER_DIR": None if plugin_dir is None else str(plugin_dir),
    }
    return {**env, **extra}


def test_the_builtin_plugin_registers_the_filesystem_resolver(adapter_dir):
    result = run_probe(LIST_RESOLVERS, env=env_for(adapter_dir))
    assert result.ok, result.describe()
    assert result.values["resolvers"] == [[BUILTIN_NAME, "FilesystemResolver"]]


def test_the_builtin_plugin_loads_when_allowlisted_by_name(adapter_dir):
    result = run_probe(
        LIST_RESOLVERS, env=env_for(adapter_dir, VLLM_PLUGINS="lora_filesystem_resolver")
    )
    assert result.values["resolvers"] == [[BUILTIN_NAME, "FilesystemResolver"]]


def test_an_empty_vllm_plugins_leaves_the_builtin_resolver_unregistered(adapter_dir):
    result = run_probe(LIST_RESOLVERS, env=env_for(adapter_dir, VLLM_PLUGINS=""))
    assert result.ok, result.describe()
    assert result.values["resolvers"] == []


def test_without_a_cache_dir_nothing_registers_and_nothing_is_logged_above_debug():
    result = run_probe(LIST_RESOLVERS, env=env_for())
    assert result.values["resolvers"] == []
    assert {r["level"] for r in result.records} <= {"DEBUG"}


def test_a_cache_dir_that_is_not_a_directory_aborts_general_plugin_loading(tmp_path):
    result = run_probe(LIST_RESOLVERS, env=env_for(tmp_path / "missing"))
    assert result.status == "raised"
    assert result.exception.type == "ValueError"
    assert result.exception.message.startswith(
        "VLLM_LORA_RESOLVER_CACHE_DIR must be set to a valid directory"
    )


def test_the_mounted_modules_are_the_reference_modules():
    result = run_probe(
        code(
            """
            import vllm.lora.resolver, vllm.lora.request
            import vllm.plugins.lora_resolvers.filesystem_resolver as fs
            import reference.lora.filesystem_resolver, reference.lora.request
            import reference.lora.resolver
            probe.result["same"] = [
                fs is reference.lora.filesystem_resolver,
                vllm.lora.resolver.LoRAResolverRegistry
                is reference.lora.resolver.LoRAResolverRegistry,
                vllm.lora.request.LoRARequest is reference.lora.request.LoRARequest,
            ]
            """
        )
    )
    assert result.values["same"] == [True, True, True]


def test_the_fixture_plugin_registers_its_own_resolver(fixture_overlay, adapter_dir):
    result = run_probe(LIST_RESOLVERS, overlay=fixture_overlay, env=env_for(plugin_dir=adapter_dir))
    assert result.ok, result.describe()
    assert result.values["resolvers"] == [[PLUGIN_NAME, "AdapterDirectoryResolver"]]


def test_the_builtin_resolver_comes_before_an_installed_plugins(fixture_overlay, adapter_dir):
    result = run_probe(
        LIST_RESOLVERS, overlay=fixture_overlay, env=env_for(adapter_dir, adapter_dir)
    )
    assert [name for name, _ in result.values["resolvers"]] == [BUILTIN_NAME, PLUGIN_NAME]


def test_an_allowlist_naming_only_the_fixture_skips_the_builtin(fixture_overlay, adapter_dir):
    env = env_for(adapter_dir, adapter_dir, VLLM_PLUGINS="lora_fs_plugin_resolver")
    result = run_probe(LIST_RESOLVERS, overlay=fixture_overlay, env=env)
    assert [name for name, _ in result.values["resolvers"]] == [PLUGIN_NAME]


def test_the_fixture_plugin_warns_instead_of_raising_for_a_bad_directory(fixture_overlay, tmp_path):
    result = run_probe(
        LIST_RESOLVERS, overlay=fixture_overlay, env=env_for(plugin_dir=tmp_path / "missing")
    )
    assert result.ok, result.describe()
    assert result.values["resolvers"] == []
    warnings = result.records_at("WARNING")
    assert len(warnings) == 1 and "LORA_PLUGIN_ADAPTER_DIR" in warnings[0]["message"]


RESOLVE_EVERY_NAME = code(
    """
    import asyncio, os
    import vllm.plugins as plugins
    from vllm.lora.resolver import LoRAResolverRegistry

    async def resolve_all(names):
        found = {}
        for resolver_name in LoRAResolverRegistry.get_supported_resolvers():
            resolver = LoRAResolverRegistry.get_resolver(resolver_name)
            for name in names:
                request = await resolver.resolve_lora(BASE, name)
                found[f"{resolver_name}|{name}"] = request and request.lora_path
        return found

    plugins.load_general_plugins()
    probe.result["found"] = asyncio.run(resolve_all(NAMES))
    """
)


def test_escaping_names_resolve_to_nothing_through_the_mounted_api(fixture_overlay, adapter_dir):
    names = ["good", *ESCAPING_NAMES, str(adapter_dir.parent / "outside")]
    body = f"BASE = {BASE!r}\nNAMES = {names!r}\n" + RESOLVE_EVERY_NAME
    result = run_probe(body, overlay=fixture_overlay, env=env_for(adapter_dir, adapter_dir))
    assert result.ok, result.describe()
    found = result.values["found"]
    for resolver_name in (BUILTIN_NAME, PLUGIN_NAME):
        assert found[f"{resolver_name}|good"] == str(adapter_dir / "good")
        leaked = {
            n: found[f"{resolver_name}|{n}"] for n in names[1:] if found[f"{resolver_name}|{n}"]
        }
        assert leaked == {}, f"{resolver_name} resolved names outside its directory"


def test_running_the_general_plugins_again_logs_no_new_warning(fixture_overlay, adapter_dir):
    result = run_probe(
        code(
            """
            import vllm.plugins as plugins
            from vllm.lora.resolver import LoRAResolverRegistry
            from vllm.plugins.lora_resolvers.filesystem_resolver import (
                register_filesystem_resolver,
            )
            import lora_filesystem_resolver_plugin

            def snapshot():
                return {
                    name: id(LoRAResolverRegistry.get_resolver(name))
                    for name in LoRAResolverRegistry.get_supported_resolvers()
                }

            plugins.load_general_plugins()
            before = snapshot()
            mark = probe.mark()
            # As another process (or a second engine in this one) would: run them all again.
            plugins.plugins_loaded = False
            plugins.load_general_plugins()
            register_filesystem_resolver()
            lora_filesystem_resolver_plugin.register()
            probe.result["registered"] = list(before)
            probe.result["unchanged"] = snapshot() == before
            probe.result["new_records"] = [
                r["message"] for r in probe.records(since=mark) if r["level"] != "DEBUG"
            ]
            """
        ),
        overlay=fixture_overlay,
        env=env_for(adapter_dir, adapter_dir),
    )
    assert result.ok, result.describe()
    assert result.values["registered"] == [BUILTIN_NAME, PLUGIN_NAME]
    assert result.values["unchanged"], "re-registering must keep the registered instances"
    assert result.values["new_records"] == []
