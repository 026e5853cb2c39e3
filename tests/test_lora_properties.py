"""Properties of the filesystem resolver over generated names: it never raises, never leaves
its cache directory, and finds every adapter a relative name really reaches inside it."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.lora.filesystem_resolver import FilesystemResolver
from reference.lora.request import LoRARequest

BASE = "org/base-model"

#: Directory names of the tree below, plus path syntax, so generated names hit real entries.
COMPONENTS = [
    *("good", "nested", "inner", "other_base", "ptune", "broken", "link_in", "link_out"),
    *("loop", "file.txt", "outside", "cache", "cache2", "x", "missing"),
    *("..", ".", ""),
]
#: Placeholders replaced by the tree's absolute paths (strategies cannot see fixtures).
PREFIXES = ["", "/", "//", "<CACHE>/", "<ROOT>/"]

known_component = st.sampled_from(COMPONENTS)
# Mostly known names (so that names often reach real adapters), sometimes anything.
component = st.one_of(
    known_component,
    known_component,
    known_component,
    st.text(alphabet=st.characters(exclude_characters="/\x00"), max_size=8),
)
#: Path pieces that return where they started only if the OS can walk them (a missing
#: directory, a file, a link out) and an adapter or escape target to end on.
DETOURS = [".", "nested/..", "missing/..", "file.txt/..", "link_out/..", "link_in/..", "loop/.."]
TARGETS = ["good", "nested/inner", "link_in", "link_out", "../outside", "../cache2/x", "ptune"]
detoured_names = st.builds(
    lambda detours, target, tail: "/".join([*detours, target]) + tail,
    st.lists(st.sampled_from(DETOURS), max_size=3),
    st.sampled_from(TARGETS),
    st.sampled_from(["", "/", "/.", "//"]),
)
relative_names = detoured_names | st.lists(component, min_size=1, max_size=4).map("/".join)
structured_names = st.builds(
    lambda prefix, rest: prefix + rest, st.sampled_from(PREFIXES), relative_names
)
#: Anything at all: NUL bytes and lone surrogates included.
arbitrary_names = st.text(alphabet=st.characters(exclude_categories=()), max_size=40)

PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, database=None)


def write_adapter(directory: Path, *, peft_type: str = "LORA", base: str = BASE) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": peft_type, "base_model_name_or_path": base}
    (directory / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """`root/cache` with good and bad adapters and links; valid adapters outside it too."""
    root = tmp_path_factory.mktemp("lora-tree")
    cache = root / "cache"
    write_adapter(cache / "good")
    write_adapter(cache / "nested" / "inner")
    write_adapter(cache / "other_base", base="org/other-model")
    write_adapter(cache / "ptune", peft_type="P_TUNING")
    (cache / "broken").mkdir()
    (cache / "broken" / "adapter_config.json").write_text("{not json", encoding="utf-8")
    (cache / "file.txt").write_text("not an adapter", encoding="utf-8")
    (cache / "link_in").symlink_to(cache / "good", target_is_directory=True)
    (cache / "link_out").symlink_to(root / "outside", target_is_directory=True)
    (cache / "loop").symlink_to(cache / "loop")
    write_adapter(root / "outside")
    write_adapter(root / "cache2" / "x")  # shares a prefix with "cache"
    return root


def expand(name: str, tree: Path) -> str:
    return name.replace("<CACHE>", str(tree / "cache")).replace("<ROOT>", str(tree))


def resolve(tree: Path, name: str) -> LoRARequest | None:
    resolver = FilesystemResolver(str(tree / "cache"))
    return asyncio.run(resolver.resolve_lora(BASE, name))


def assert_inside_and_valid(tree: Path, name: str, request: LoRARequest) -> None:
    root = os.path.realpath(tree / "cache")
    real = os.path.realpath(request.lora_path)
    assert real != root and os.path.commonpath([root, real]) == root, (
        f"{name!r} resolved to {real}, outside the cache directory {root}"
    )
    with open(os.path.join(request.lora_path, "adapter_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == BASE
    assert request.lora_name == name and request.lora_int_id >= 1


@PROPERTY_SETTINGS
@given(name=structured_names)
def test_a_structured_name_resolves_inside_the_cache_or_not_at_all(tree, name):
    name = expand(name, tree)
    request = resolve(tree, name)
    if request is not None:
        assert_inside_and_valid(tree, name, request)


@PROPERTY_SETTINGS
@given(name=arbitrary_names)
def test_any_name_resolves_inside_the_cache_or_not_at_all(tree, name):
    request = resolve(tree, name)
    if request is not None:
        assert_inside_and_valid(tree, name, request)


@PROPERTY_SETTINGS
@given(name=relative_names)
def test_every_relative_name_that_reaches_a_valid_adapter_inside_is_found(tree, name):
    cache = tree / "cache"
    valid = {os.path.realpath(cache / "good"), os.path.realpath(cache / "nested" / "inner")}
    path = os.path.join(cache, name)
    reachable = os.path.exists(os.path.join(path, "adapter_config.json"))
    expected = reachable and os.path.realpath(path) in valid
    assert (resolve(tree, name) is not None) == expected, (
        f"{name!r}: expected {'a request' if expected else 'None'}"
    )
