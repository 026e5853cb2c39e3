"""The census of real plugins: archives read without running them, imports tallied against what
the reference (and a vLLM release, by the API index) answers, and docs/ecosystem.md rendered.

Every plugin here is a tiny wheel or sdist built in `tmp_path`; the reference's surface is a
small table given to `ReferenceAnswers`, so the tests hold while the real surface grows.
Nothing uses the network. The last tests read the committed corpus, census and page.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from conformance.census import (
    ReferenceAnswers,
    VllmAnswers,
    census,
    census_plugin,
    dumps,
    name_and_version,
    open_archive,
    render_markdown,
)
from conformance.drift.index import ApiIndex
from conformance.preflight import reference_modules
from tests.conftest import corpus_module

ROOT = Path(__file__).resolve().parent.parent
#: The surface the tests judge against: two vLLM paths, answered by standard-library modules
#: whose names are known (`json.dumps` exists, `json.nothing_here` does not).
TABLE = {"vllm.config": "json", "vllm.v1.metrics.loggers": "string"}

TINY_MODULE = """
from typing import TYPE_CHECKING

from vllm.config import dumps
from vllm.v1.metrics.loggers import Template

if TYPE_CHECKING:
    from vllm.sequence import SequenceGroup

try:
    import vllm.fancy_optional
except ImportError:
    pass


def register():
    from vllm.model_executor.layers.linear import LinearBase

    return LinearBase
"""


def _wheel(tmp_path: Path) -> Path:
    """`tinyplug` 0.1: general and stat-logger entry points, a console script, a tests folder."""
    path = tmp_path / "tinyplug-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("tinyplug/__init__.py", textwrap.dedent(TINY_MODULE))
        wheel.writestr("tinyplug/stats.py", "from vllm.v1.metrics.loggers import Template\n")
        wheel.writestr("tests/test_tiny.py", "import vllm.only_in_tests\n")
        wheel.writestr("tinyplug-0.1.dist-info/METADATA", "Name: tinyplug\nVersion: 0.1\n")
        wheel.writestr(
            "tinyplug-0.1.dist-info/entry_points.txt",
            "[console_scripts]\ntiny = tinyplug:main\n\n"
            "[vllm.general_plugins]\ntiny = tinyplug:register\n\n"
            "[vllm.stat_logger_plugins]\nTinyLogger = tinyplug.stats:TinyLogger\n",
        )
    return path


def _sdist(tmp_path: Path, files: dict[str, str], name: str = "tinysd-0.2") -> Path:
    path = tmp_path / f"{name}.tar.gz"
    with tarfile.open(path, "w:gz") as sdist:
        for member, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(member if member.startswith("..") else f"{name}/{member}")
            info.size = len(data)
            sdist.addfile(info, io.BytesIO(data))
    return path


def _platform_sdist(tmp_path: Path) -> Path:
    """`tinysd` 0.2: a platform plugin declared in its egg-info, and one path outside."""
    return _sdist(
        tmp_path,
        {
            "PKG-INFO": "Name: tinysd\nVersion: 0.2\n",
            "setup.py": "raise SystemExit('never run')\n",
            "tinysd.egg-info/entry_points.txt": "[vllm.platform_plugins]\ntiny = tinysd:register\n",
            "tinysd.egg-info/top_level.txt": "tinysd\n",
            "tinysd/__init__.py": "from vllm.config import dumps, nothing_here\n",
            "benchmarks/bench.py": "import vllm.not_shipped\n",
            "../escape.py": "print('outside')\n",
        },
    )


def _census(tmp_path: Path, archive: Path, vllm: VllmAnswers | None = None) -> dict:
    opened = open_archive(archive, tmp_path / "unpacked")
    return census_plugin(opened, ReferenceAnswers(TABLE), vllm, {"why": "a test"})


def _use(record: dict, module: str) -> dict:
    return next(u for u in record["imports"] if u["module"] == module)


def test_a_wheel_declares_its_vllm_groups_from_its_dist_info(tmp_path: Path) -> None:
    archive = open_archive(_wheel(tmp_path), tmp_path / "unpacked")
    assert (archive.kind, archive.name, archive.version) == ("wheel", "tinyplug", "0.1")
    assert archive.groups == ["vllm.general_plugins", "vllm.stat_logger_plugins"]
    assert [ep.name for ep in archive.vllm_entry_points] == ["tiny", "TinyLogger"], (
        "the console script is not a vLLM entry point"
    )


def test_an_sdist_declares_its_groups_from_its_egg_info(tmp_path: Path) -> None:
    archive = open_archive(_platform_sdist(tmp_path), tmp_path / "unpacked")
    assert (archive.kind, archive.name, archive.version) == ("sdist", "tinysd", "0.2")
    assert [ep.key for ep in archive.vllm_entry_points] == ["vllm.platform_plugins:tiny"]


def test_an_sdist_without_egg_info_declares_from_its_pyproject(tmp_path: Path) -> None:
    pyproject = """
        [project]
        name = "tinylp"
        version = "0.3"
        [project.entry-points."vllm.logits_processors"]
        tiny = "tinylp:TinyProcessor"
    """
    path = _sdist(tmp_path, {"pyproject.toml": textwrap.dedent(pyproject)}, "tinylp-0.3")
    archive = open_archive(path, tmp_path / "unpacked")
    assert archive.groups == ["vllm.logits_processors"]


def test_unpacking_an_sdist_keeps_every_member_inside(tmp_path: Path) -> None:
    open_archive(_platform_sdist(tmp_path), tmp_path / "unpacked")
    assert not list(tmp_path.rglob("escape.py")), "a `../` member must not be extracted"


def test_a_file_that_is_no_distribution_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a wheel"):
        name_and_version(tmp_path / "notes.txt")


def test_the_census_records_each_module_its_names_and_where_it_runs(tmp_path: Path) -> None:
    record = _census(tmp_path, _wheel(tmp_path))
    config = _use(record, "vllm.config")
    assert (config["names"], config["scope"], config["runtime"]) == (["dumps"], "import", True)
    linear = _use(record, "vllm.model_executor.layers.linear")
    assert linear["scope"] == "function", "an import inside register() runs when it is called"
    assert _use(record, "vllm.v1.metrics.loggers")["statements"] == 2
    typing_only = _use(record, "vllm.sequence")
    assert (typing_only["scope"], typing_only["runtime"]) == ("typing", False), (
        "an import under TYPE_CHECKING never runs"
    )
    assert not _use(record, "vllm.fancy_optional")["runtime"], "a guarded import may fail"
    assert "vllm.only_in_tests" not in {u["module"] for u in record["imports"]}


def test_a_module_outside_the_surface_makes_the_plugin_unimportable(tmp_path: Path) -> None:
    verdict = _census(tmp_path, _wheel(tmp_path))["reference"]
    assert verdict["unanswered_modules"] == ["vllm.model_executor.layers.linear"], (
        "typing-only and guarded imports are not counted, as in the preflight"
    )
    assert not verdict["importable"] and not verdict["names_importable"]


def test_a_name_the_answered_module_lacks_is_a_missing_name(tmp_path: Path) -> None:
    record = _census(tmp_path, _platform_sdist(tmp_path))
    assert [u["module"] for u in record["imports"]] == ["vllm.config"], "benchmarks/ is skipped"
    verdict = record["reference"]
    assert verdict["importable"], "the module is answered"
    assert verdict["missing_names"] == ["vllm.config:nothing_here"]
    assert not verdict["names_importable"]


def test_a_package_above_the_table_answers_only_its_submodules() -> None:
    reference = ReferenceAnswers(TABLE)
    assert reference.answer("vllm.v1.metrics") == "package"
    assert reference.name("vllm.v1.metrics", "loggers") is True
    assert reference.name("vllm.v1.metrics", "StatLoggerBase") is False


def test_the_default_surface_is_the_preflights() -> None:
    assert ReferenceAnswers().modules == reference_modules()


def test_a_vllm_release_answers_by_the_api_index(tmp_path: Path) -> None:
    index = ApiIndex(
        {
            "schema": 1,
            "kind": "vllm-api-index",
            "releases": ["0.32.0"],
            "modules": {"vllm.config": 1, "vllm.v1.metrics.loggers": 1},
            "names": {"vllm.config": {"VllmConfig": 1}, "vllm.v1.metrics.loggers": {}},
            "classes": {},
            "signatures": [],
        }
    )
    record = _census(tmp_path, _wheel(tmp_path), VllmAnswers(index, "0.32.0"))
    assert record["vllm"]["unanswered_modules"] == ["vllm.model_executor.layers.linear"]
    assert record["vllm"]["missing_names"] == [
        "vllm.config:dumps",
        "vllm.v1.metrics.loggers:Template",
    ]


def _two_plugin_census(tmp_path: Path) -> dict:
    reference = ReferenceAnswers(TABLE)
    plugins = [
        census_plugin(open_archive(a, tmp_path / "unpacked"), reference, meta={"why": w})
        for a, w in ((_wheel(tmp_path), "model and stats"), (_platform_sdist(tmp_path), "hw"))
    ]
    data = census(plugins, reference)
    data["skipped"] = [{"name": "ghost", "why": "not on PyPI"}]
    return data


def test_the_census_counts_importers_per_module_and_the_shares(tmp_path: Path) -> None:
    data = _two_plugin_census(tmp_path)
    first = data["modules"][0]
    assert (first["module"], first["plugins"], first["reference"]) == ("vllm.config", 2, "module")
    assert first["importers"] == ["tinyplug", "tinysd"]
    assert data["groups"] == {
        "vllm.general_plugins": 1,
        "vllm.platform_plugins": 1,
        "vllm.stat_logger_plugins": 1,
    }
    summary = data["summary"]
    assert (summary["reference_importable"], summary["reference_names_importable"]) == (1, 0)
    assert summary["reference_importable_share"] == 0.5


def test_the_page_lists_the_corpus_the_census_and_the_share(tmp_path: Path) -> None:
    page = render_markdown(_two_plugin_census(tmp_path))
    assert "| `tinysd` | 0.2 | platform | 1 | sdist | hw |" in page
    assert "| `tinyplug` | 0.1 | general, stat logger | 2 | wheel | model and stats |" in page
    assert "**1 of 2 (50%) import only `vllm.*` modules the reference answers**" in page
    assert "| `vllm.config` | 2 | 2 | yes | ? |" in page, "no release index was given"
    assert "| `vllm.config:dumps` | 2 | yes | ? |" in page
    assert "| `ghost` | — | not on PyPI |" in page


def test_the_json_has_one_line_per_record(tmp_path: Path) -> None:
    data = _two_plugin_census(tmp_path)
    text = dumps(data)
    assert json.loads(text) == data
    assert re.search(r'^ +\{"module": "vllm.config", "names": \["dumps"\]', text, re.M), (
        "each import record sits on one line"
    )


def test_pip_download_asks_for_the_pinned_wheels_own_tags(tmp_path: Path) -> None:
    corpus = corpus_module()
    pin = corpus.Pin(
        "vllm-metal",
        "0.1.0",
        "vllm_metal-0.1.0-cp312-cp312-macosx_11_0_arm64.whl",
        "0" * 64,
        ("vllm.platform_plugins",),
        "",
    )
    command = corpus.pip_download_command(pin, tmp_path)
    assert command[-1] == "vllm-metal==0.1.0" and "--no-deps" in command
    assert "--platform=macosx_11_0_arm64" in command and "--abi=cp312" in command
    assert command[command.index("--python-version") + 1] == "3.12"


def test_the_committed_corpus_pins_25_plugins_across_the_groups() -> None:
    pins, skipped = corpus_module().load_corpus()
    assert len({p.name for p in pins}) == len(pins) >= 25
    for pin in pins:
        _kind, name, version = name_and_version(Path(pin.file))
        assert (name, version) == (pin.name, pin.version), f"{pin.file} is not {pin.name}"
        assert re.fullmatch(r"[0-9a-f]{64}", pin.sha256), pin.name
        assert pin.why, f"{pin.name} needs a why"
    groups = {g for p in pins for g in p.groups}
    assert groups >= {
        "vllm.general_plugins",
        "vllm.platform_plugins",
        "vllm.io_processor_plugins",
        "vllm.stat_logger_plugins",
        "vllm.logits_processors",
    }
    assert any(s["name"] == "vllm.endpoint_plugins" for s in skipped), "say why none"


def test_the_committed_census_and_page_match_the_corpus() -> None:
    pins, _ = corpus_module().load_corpus()
    data = json.loads((ROOT / "benchmarks" / "results" / "census.json").read_text())
    assert [(p["name"], p["version"]) for p in data["plugins"]] == [
        (canonicalize_name(p.name), p.version) for p in pins
    ], "run `python benchmarks/corpus.py census --render` after changing corpus.toml"
    page = (ROOT / "docs" / "ecosystem.md").read_text(encoding="utf-8")
    assert page == corpus_module().page_text(data), "run `python benchmarks/corpus.py render`"


def test_every_most_demanded_unanswered_module_has_a_reason() -> None:
    """docs/ecosystem-unanswered.toml covers the committed census's most-imported modules
    the reference does not answer, and names none it answers now (re-census, then update)."""
    from conformance.census import load_unanswered, most_demanded_unanswered

    data = json.loads((ROOT / "benchmarks" / "results" / "census.json").read_text())
    reasons = load_unanswered()
    demanded = [r["module"] for r in most_demanded_unanswered(data)]
    assert len(demanded) == 30
    assert sorted(set(demanded) - set(reasons)) == [], "give these a reason"
    unanswered = {r["module"] for r in data["modules"] if r["reference"] is None}
    assert sorted(set(reasons) - unanswered) == [], "the reference answers these now"


def test_unanswered_reasons_are_validated_and_rendered(tmp_path: Path) -> None:
    from conformance.census import _unanswered_section, load_unanswered

    path = tmp_path / "reasons.toml"
    path.write_text('[modules."vllm.x"]\nreason = "too big"\nwhy = "it is"\n')
    reasons = load_unanswered(path)
    path.write_text('[modules."vllm.x"]\nreason = "lazy"\nwhy = "no"\n')
    with pytest.raises(ValueError, match="vllm.x"):
        load_unanswered(path)
    assert load_unanswered(tmp_path / "absent.toml") == {}
    data = {
        "summary": {"vllm_release": "0.32.0"},
        "modules": [
            {"module": "vllm.y", "plugins": 3, "reference": "module", "vllm": True},
            {"module": "vllm.x", "plugins": 2, "reference": None, "vllm": True},
            {"module": "vllm.z", "plugins": 1, "reference": None, "vllm": False},
        ],
    }
    text = _unanswered_section(data, reasons)
    assert "| `vllm.x` | 2 | yes | too big | it is |" in text
    assert "| `vllm.z` | 1 | **no** | **no reason given** |  |" in text
    assert "vllm.y" not in text and _unanswered_section(data, {}) == ""
