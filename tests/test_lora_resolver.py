"""LoRA resolvers in-process: the registry, `LoRARequest`, and the filesystem resolver's rules."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
from pathlib import Path

import pytest

from reference._version import CONTRACT_ENV
from reference.lora import filesystem_resolver as fs_module
from reference.lora.filesystem_resolver import (
    RESOLVER_NAME,
    FilesystemResolver,
    register_filesystem_resolver,
)
from reference.lora.request import LoRARequest
from reference.lora.resolver import LoRAResolver, LoRAResolverRegistry, _LoRAResolverRegistry

BASE = "org/base-model"

#: vLLM 0.32's message, spaces included (a backslash continuation inside the literal).
INVALID_DIR_MESSAGE = (
    "VLLM_LORA_RESOLVER_CACHE_DIR must be set to a valid directory"
    + " " * 17
    + "for Filesystem Resolver plugin to function"
)


class StaticResolver(LoRAResolver):
    """Answers one fixed request for every name."""

    def __init__(self, path: str = "/adapters/x") -> None:
        self.path = path

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        return LoRARequest(lora_name, 1, self.path)


def write_adapter(
    directory: Path, *, peft_type: str = "LORA", base: str = BASE, raw: str | None = None
) -> Path:
    """Make `directory` an adapter: an adapter_config.json built from the fields, or `raw`."""
    directory.mkdir(parents=True, exist_ok=True)
    text = (
        raw
        if raw is not None
        else json.dumps({"peft_type": peft_type, "base_model_name_or_path": base, "r": 8})
    )
    (directory / "adapter_config.json").write_text(text, encoding="utf-8")
    return directory


def resolve(resolver: LoRAResolver, name: str, base: str = BASE) -> LoRARequest | None:
    return asyncio.run(resolver.resolve_lora(base, name))


@pytest.fixture
def vllm_records():
    """WARNING-and-above records of the `vllm` logger tree (it does not propagate to root)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    root = logging.getLogger("vllm")
    root.addHandler(handler)
    yield records
    root.removeHandler(handler)


@pytest.fixture
def cache(tmp_path) -> Path:
    directory = tmp_path / "cache"
    directory.mkdir()
    return directory


@pytest.fixture
def registry(monkeypatch) -> _LoRAResolverRegistry:
    """A fresh registry in place of the process-wide one, for `register_filesystem_resolver`."""
    fresh = _LoRAResolverRegistry()
    monkeypatch.setattr(fs_module, "LoRAResolverRegistry", fresh)
    return fresh


# --- the registry ---------------------------------------------------------------------------


def test_a_registered_resolver_is_returned_by_name():
    registry, resolver = _LoRAResolverRegistry(), StaticResolver()
    registry.register_resolver("static", resolver)
    assert registry.get_resolver("static") is resolver


def test_supported_resolvers_is_a_live_view_in_registration_order():
    registry = _LoRAResolverRegistry()
    names = registry.get_supported_resolvers()
    registry.register_resolver("b", StaticResolver())
    registry.register_resolver("a", StaticResolver())
    assert list(names) == ["b", "a"], "the view must show names registered after it was taken"


def test_registering_a_taken_name_overwrites_with_a_warning(vllm_records):
    registry, first, second = _LoRAResolverRegistry(), StaticResolver(), StaticResolver()
    registry.register_resolver("static", first)
    registry.register_resolver("static", second)
    assert registry.get_resolver("static") is second
    assert [r.getMessage() for r in vllm_records] == [
        f"LoRA resolver static is already registered, and will be overwritten by the new "
        f"resolver instance {second}."
    ]
    assert vllm_records[0].name == "vllm.lora.resolver"


def test_overwriting_keeps_the_names_original_position():
    registry = _LoRAResolverRegistry()
    for name in ("first", "second", "first"):
        registry.register_resolver(name, StaticResolver())
    assert list(registry.get_supported_resolvers()) == ["first", "second"]


def test_an_unknown_name_raises_key_error_listing_the_available_resolvers():
    registry = _LoRAResolverRegistry()
    registry.register_resolver("static", StaticResolver())
    with pytest.raises(KeyError, match="not found") as info:
        registry.get_resolver("missing")
    assert info.value.args[0] == (
        "LoRA resolver 'missing' not found. Available resolvers: ['static']"
    )


def test_the_registry_does_not_check_the_resolver_type():
    registry, anything = _LoRAResolverRegistry(), object()
    registry.register_resolver("odd", anything)  # type: ignore[arg-type]
    assert registry.get_resolver("odd") is anything


def test_the_module_singleton_is_a_registry():
    assert isinstance(LoRAResolverRegistry, _LoRAResolverRegistry)


def test_a_resolver_must_implement_resolve_lora():
    class Incomplete(LoRAResolver):
        pass

    with pytest.raises(TypeError, match="resolve_lora"):
        Incomplete()  # type: ignore[abstract]


def test_resolve_lora_is_a_coroutine_function():
    assert inspect.iscoroutinefunction(LoRAResolver.resolve_lora)
    assert inspect.iscoroutinefunction(FilesystemResolver.resolve_lora)


# --- LoRARequest ----------------------------------------------------------------------------


def test_a_request_takes_name_id_and_path_positionally():
    request = LoRARequest("adapter", 3, "/adapters/adapter")
    assert (request.lora_name, request.lora_int_id, request.lora_path) == (
        "adapter",
        3,
        "/adapters/adapter",
    )
    assert (request.name, request.adapter_id, request.path) == ("adapter", 3, "/adapters/adapter")
    assert request.base_model_name is None


@pytest.mark.parametrize("lora_int_id", [0, -1])
def test_an_id_below_one_is_rejected(lora_int_id):
    with pytest.raises(ValueError, match=f"id must be > 0, got {lora_int_id}"):
        LoRARequest("adapter", lora_int_id, "/adapters/adapter")


def test_an_empty_path_is_rejected():
    with pytest.raises(ValueError, match="lora_path cannot be empty"):
        LoRARequest("adapter", 1)


@pytest.mark.parametrize("contract", ["0.32.0", "0.33.0"])
def test_requests_with_the_same_name_are_equal_whatever_their_id_and_path(monkeypatch, contract):
    monkeypatch.setenv(CONTRACT_ENV, contract)
    assert LoRARequest("adapter", 1, "/a") == LoRARequest("adapter", 2, "/b")
    assert LoRARequest("adapter", 1, "/a") != LoRARequest("other", 1, "/a")


@pytest.mark.parametrize("contract", ["0.32.0", "0.33.0"])
def test_requests_hash_by_name_up_to_0_33(monkeypatch, contract):
    monkeypatch.setenv(CONTRACT_ENV, contract)
    requests = {LoRARequest("adapter", 1, "/a"), LoRARequest("adapter", 2, "/b")}
    assert len(requests) == 1 and hash(next(iter(requests))) == hash("adapter")


def test_from_0_34_requests_are_equal_by_name_and_id(monkeypatch):
    monkeypatch.setenv(CONTRACT_ENV, "0.34.0")
    assert LoRARequest("adapter", 1, "/a") == LoRARequest("adapter", 1, "/b")
    assert LoRARequest("adapter", 1, "/a") != LoRARequest("adapter", 2, "/a")
    requests = {LoRARequest("adapter", 1, "/a"), LoRARequest("adapter", 2, "/b")}
    assert len(requests) == 2
    assert hash(LoRARequest("adapter", 3, "/a")) == hash(("adapter", 3))


def test_a_request_is_never_equal_to_another_type():
    assert LoRARequest("adapter", 1, "/a") != "adapter"


# --- FilesystemResolver: what resolves ------------------------------------------------------


def test_a_lora_adapter_for_the_served_model_resolves(cache):
    write_adapter(cache / "adapter")
    request = resolve(FilesystemResolver(str(cache)), "adapter")
    assert request is not None
    assert request.lora_name == "adapter"
    assert request.lora_path == os.path.join(str(cache), "adapter")
    assert request.lora_int_id == (abs(hash("adapter")) or 1)


def test_a_nested_name_resolves_to_the_nested_directory(cache):
    write_adapter(cache / "org" / "adapter")
    request = resolve(FilesystemResolver(str(cache)), "org/adapter")
    assert request is not None and request.lora_path == os.path.join(str(cache), "org/adapter")


def test_a_non_lora_adapter_does_not_resolve(cache):
    write_adapter(cache / "ptune", peft_type="P_TUNING")
    assert resolve(FilesystemResolver(str(cache)), "ptune") is None


@pytest.mark.parametrize("served", ["org/other-model", "org/base-model/", "ORG/base-model"])
def test_the_base_model_must_match_exactly(cache, served):
    write_adapter(cache / "adapter")
    assert resolve(FilesystemResolver(str(cache)), "adapter", base=served) is None


def test_a_missing_directory_does_not_resolve(cache):
    assert resolve(FilesystemResolver(str(cache)), "absent") is None


def test_a_directory_without_adapter_config_does_not_resolve(cache):
    (cache / "empty").mkdir()
    assert resolve(FilesystemResolver(str(cache)), "empty") is None


def test_the_id_is_at_least_one_even_when_the_name_hashes_to_zero(cache):
    class ZeroHash(str):
        def __hash__(self) -> int:
            return 0

    write_adapter(cache / "zero")
    request = resolve(FilesystemResolver(str(cache)), ZeroHash("zero"))
    assert request is not None and request.lora_int_id == 1


def test_a_cache_dir_reached_through_a_symlink_still_resolves(tmp_path, cache):
    write_adapter(cache / "adapter")
    link = tmp_path / "cache-link"
    link.symlink_to(cache, target_is_directory=True)
    request = resolve(FilesystemResolver(str(link)), "adapter")
    assert request is not None, "expected the adapter to resolve through the linked cache"
    assert request.lora_name == "adapter"
    assert request.lora_path == os.path.join(str(link), "adapter"), "the path as joined"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("{not json", "cannot be read as JSON"),
        ('["LORA"]', "holds a list, not a JSON object"),
        ('{"peft_type": "LORA"}', "has no base_model_name_or_path"),
        ("{}", "has no peft_type or base_model_name_or_path"),
    ],
    ids=["bad-json", "not-an-object", "missing-base", "missing-both"],
)
def test_a_broken_adapter_config_is_skipped_with_a_warning(cache, vllm_records, raw, problem):
    write_adapter(cache / "broken", raw=raw)
    assert resolve(FilesystemResolver(str(cache)), "broken") is None
    messages = [r.getMessage() for r in vllm_records]
    assert len(messages) == 1 and problem in messages[0], messages
    assert str(cache / "broken" / "adapter_config.json") in messages[0]


def test_an_adapter_config_that_is_a_directory_is_skipped_with_a_warning(cache, vllm_records):
    (cache / "odd" / "adapter_config.json").mkdir(parents=True)
    assert resolve(FilesystemResolver(str(cache)), "odd") is None
    assert len(vllm_records) == 1 and "cannot be read" in vllm_records[0].getMessage()


# --- FilesystemResolver: names never leave the cache directory -------------------------------


@pytest.fixture
def outside(tmp_path) -> Path:
    """A valid adapter outside the cache directory: it must never be resolved."""
    return write_adapter(tmp_path / "outside")


def test_an_absolute_name_does_not_resolve(cache, outside):
    assert resolve(FilesystemResolver(str(cache)), str(outside)) is None


def test_an_absolute_name_pointing_into_the_cache_does_not_resolve_either(cache):
    write_adapter(cache / "adapter")
    assert resolve(FilesystemResolver(str(cache)), str(cache / "adapter")) is None


@pytest.mark.parametrize("name", ["../outside", "a/../../outside", "a/b/../../../outside"])
def test_a_dotdot_name_that_climbs_out_does_not_resolve(cache, outside, name):
    (cache / "a" / "b").mkdir(parents=True)
    assert resolve(FilesystemResolver(str(cache)), name) is None


def test_a_sibling_whose_name_starts_like_the_cache_dir_is_outside(tmp_path, cache):
    write_adapter(tmp_path / "cache-sibling" / "adapter")
    assert resolve(FilesystemResolver(str(cache)), "../cache-sibling/adapter") is None


def test_a_dotdot_name_that_stays_inside_resolves(cache):
    write_adapter(cache / "adapter")
    (cache / "a").mkdir()
    request = resolve(FilesystemResolver(str(cache)), "a/../adapter")
    assert request is not None and os.path.realpath(request.lora_path) == str(
        (cache / "adapter").resolve()
    )


def test_a_symlink_leading_out_of_the_cache_does_not_resolve(cache, outside):
    (cache / "escape").symlink_to(outside, target_is_directory=True)
    assert resolve(FilesystemResolver(str(cache)), "escape") is None


def test_a_symlinked_parent_leading_out_does_not_resolve(tmp_path, cache):
    write_adapter(tmp_path / "elsewhere" / "adapter")
    (cache / "org").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert resolve(FilesystemResolver(str(cache)), "org/adapter") is None


def test_a_symlink_that_stays_inside_the_cache_resolves(cache):
    write_adapter(cache / "real")
    (cache / "alias").symlink_to(cache / "real", target_is_directory=True)
    request = resolve(FilesystemResolver(str(cache)), "alias")
    assert request is not None and request.lora_path == os.path.join(str(cache), "alias")


@pytest.mark.parametrize("name", ["", ".", "./", "a/.."])
def test_the_cache_dir_itself_is_not_an_adapter(cache, name):
    write_adapter(cache)
    (cache / "a").mkdir()
    assert resolve(FilesystemResolver(str(cache)), name) is None


def test_a_name_with_a_nul_byte_does_not_resolve(cache):
    write_adapter(cache / "adapter")
    assert resolve(FilesystemResolver(str(cache)), "adapter\x00") is None


# --- register_filesystem_resolver -----------------------------------------------------------


def test_registration_without_the_variable_does_nothing(monkeypatch, registry):
    monkeypatch.delenv("VLLM_LORA_RESOLVER_CACHE_DIR", raising=False)
    register_filesystem_resolver()
    assert list(registry.get_supported_resolvers()) == []


def test_registration_with_an_empty_variable_does_nothing(monkeypatch, registry):
    monkeypatch.setenv("VLLM_LORA_RESOLVER_CACHE_DIR", "")
    register_filesystem_resolver()
    assert list(registry.get_supported_resolvers()) == []


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_registration_with_a_non_directory_raises_value_error(
    monkeypatch, registry, tmp_path, kind
):
    target = tmp_path / kind
    if kind == "file":
        target.write_text("not a directory", encoding="utf-8")
    monkeypatch.setenv("VLLM_LORA_RESOLVER_CACHE_DIR", str(target))
    with pytest.raises(ValueError) as info:
        register_filesystem_resolver()
    assert str(info.value) == INVALID_DIR_MESSAGE
    assert list(registry.get_supported_resolvers()) == []


def test_registration_with_a_directory_registers_the_filesystem_resolver(
    monkeypatch, registry, cache
):
    monkeypatch.setenv("VLLM_LORA_RESOLVER_CACHE_DIR", str(cache))
    register_filesystem_resolver()
    resolver = registry.get_resolver(RESOLVER_NAME)
    assert RESOLVER_NAME == "Filesystem Resolver"
    assert isinstance(resolver, FilesystemResolver) and resolver.lora_cache_dir == str(cache)


def test_registering_again_for_the_same_directory_changes_and_logs_nothing(
    monkeypatch, registry, cache, vllm_records
):
    monkeypatch.setenv("VLLM_LORA_RESOLVER_CACHE_DIR", str(cache))
    register_filesystem_resolver()
    first = registry.get_resolver(RESOLVER_NAME)
    register_filesystem_resolver()
    assert registry.get_resolver(RESOLVER_NAME) is first
    assert vllm_records == []


def test_registering_for_another_directory_replaces_the_resolver_with_a_warning(
    monkeypatch, registry, tmp_path, vllm_records
):
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv("VLLM_LORA_RESOLVER_CACHE_DIR", str(tmp_path / name))
        register_filesystem_resolver()
    assert registry.get_resolver(RESOLVER_NAME).lora_cache_dir == str(tmp_path / "two")
    assert [r.levelname for r in vllm_records] == ["WARNING"]
