"""Overlays hold exactly the named plugin distributions, readable by importlib.metadata."""

from __future__ import annotations

from importlib import metadata

import pytest

from conformance.overlay import Overlay, OverlayError, fixture_names, normalize_dist_name


def test_bundled_fixtures_are_listed():
    assert {"vllm_add_dummy_model", "vllm_add_dummy_platform"} <= set(fixture_names())


def test_a_fixture_gets_its_packages_and_a_dist_info(overlay):
    overlay.add_fixture("vllm_add_dummy_platform")
    [dist] = list(metadata.distributions(path=[overlay.path]))
    assert dist.metadata["Name"] == "vllm_add_dummy_platform"
    assert dist.version == "0.1.0"
    assert sorted((ep.group, ep.name, ep.value) for ep in dist.entry_points) == [
        ("vllm.general_plugins", "dummy_custom_ops", "vllm_add_dummy_platform:register_ops"),
        (
            "vllm.platform_plugins",
            "dummy_platform_plugin",
            "vllm_add_dummy_platform:dummy_platform_plugin",
        ),
    ]
    assert (overlay.root / "vllm_add_dummy_platform" / "dummy_platform.py").is_file()


def test_inline_plugins_carry_requirements(overlay):
    overlay.add_inline(
        "My.Plugin",
        {"my_plugin.py": "x = 1\n"},
        {"vllm.general_plugins": {"p": "my_plugin:x"}},
        version="2.0",
        requires=["vllm>=0.30"],
    )
    [dist] = list(metadata.distributions(path=[overlay.path]))
    assert dist.requires == ["vllm>=0.30"]
    assert (overlay.root / "my_plugin-2.0.dist-info").is_dir()


def test_an_unknown_fixture_names_the_available_ones(overlay):
    with pytest.raises(
        OverlayError, match="No bundled fixture named 'nope'; available: .*vllm_add_dummy_model"
    ):
        overlay.add_fixture("nope")


def test_a_project_without_pyproject_is_refused(overlay, tmp_path):
    with pytest.raises(OverlayError, match="has no pyproject.toml"):
        overlay.add_project(tmp_path)


def test_a_malformed_pyproject_is_refused_with_the_reason(overlay, tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project\nname=", encoding="utf-8")
    with pytest.raises(OverlayError, match="is not valid TOML"):
        overlay.add_project(tmp_path)


def test_a_project_without_packages_is_refused(overlay, tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "empty"\n', encoding="utf-8")
    with pytest.raises(OverlayError, match="holds no package"):
        overlay.add_project(tmp_path)


def test_the_same_distribution_twice_is_refused(overlay):
    overlay.add_fixture("vllm_add_dummy_model")
    with pytest.raises(OverlayError, match="already in the overlay"):
        overlay.add_fixture("vllm_add_dummy_model")


def test_an_owned_overlay_removes_itself():
    with Overlay() as overlay:
        overlay.add_fixture("vllm_add_dummy_model")
        root = overlay.root
        assert root.is_dir()
    assert not root.exists()


@pytest.mark.parametrize(("raw", "norm"), [("Foo.Bar-baz", "foo_bar_baz"), ("a__b", "a_b")])
def test_names_are_normalised_for_dist_info(raw, norm):
    assert normalize_dist_name(raw) == norm
