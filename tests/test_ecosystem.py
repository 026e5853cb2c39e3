"""The ecosystem run's bookkeeping (conformance/ecosystem.py, benchmarks/corpus.py ecosystem):
a certify report read into one row, rows merged into the results file, the notes checked
against the rows, the page sections and the SVG rendered, and one tiny wheel built here
certified the way the run certifies a corpus plugin. No network, no real corpus."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Any

import pytest

from conformance import ecosystem
from conformance.probes.engine_run import missing_engine_deps
from tests.conftest import corpus_module

ROOT = Path(__file__).resolve().parents[1]


def _check(cid: str, status: str, level: str = "required", ep: str | None = None, msg: str = ""):
    return {"id": cid, "status": status, "level": level, "entry_point": ep, "message": msg}


def _report(verdict: str, checks: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "engine": {"name": "reference", "version": "0.32.0+reference", "contract": "0.32.0"},
        "checks": checks,
        "summary": {"verdict": verdict},
    }


def _row(verdict: str, **statuses: str) -> dict[str, Any]:
    """A row whose checks have `statuses` (keyword `a_b` stands for check `a.b`, required)."""
    checks = [_check(k.replace("_", "."), s) for k, s in statuses.items()]
    return ecosystem.outcome(_report(verdict, checks), 1.0, "2026-12-07")


def _data(**plugins: dict[str, dict[str, Any]]) -> dict[str, Any]:
    data = ecosystem.empty_results()
    for name, engines in plugins.items():
        for engine, row in engines.items():
            ecosystem.merge(
                data, name.replace("_", "-"), "1.0", ["vllm.general_plugins"], engine, row
            )
    return data


# -- rows -----------------------------------------------------------------------------------


def test_a_report_becomes_a_row_with_one_line_reasons() -> None:
    report = _report(
        "not-certified",
        [
            _check("package.groups-known", "passed"),
            _check(
                "platform.loadable",
                "failed",
                ep="vllm.platform_plugins:p",
                msg="[platform.loadable] import of p failed: ImportError x\nRule: ...\nFix: ...",
            ),
            _check("drift.private-names", "failed", level="recommended", msg="uses _x"),
            _check("general.registers", "inconclusive", msg="needs transformers\nmore"),
            _check(
                "logits.batch-updates",
                "error",
                msg="the suite itself failed\nTraceback:\n  File x\nAttributeError: no add_request",
            ),
            _check("general.reentrant", "blocked", msg="blocked by general.registers"),
        ],
    )
    row = ecosystem.outcome(report, 12.34, "2026-12-07")
    assert row["verdict"] == "not-certified"
    assert row["duration_s"] == 12.3
    assert row["engine_version"] == "0.32.0+reference" and row["contract"] == "0.32.0"
    failed = {c["check"]: c for c in row["failed"]}
    assert set(failed) == {
        "platform.loadable[vllm.platform_plugins:p]",
        "drift.private-names",
        "logits.batch-updates",
        "general.reentrant",
    }
    assert failed["platform.loadable[vllm.platform_plugins:p]"]["reason"] == (
        "import of p failed: ImportError x"
    )
    assert failed["drift.private-names"]["level"] == "recommended"
    assert failed["logits.batch-updates"]["reason"] == "suite error: AttributeError: no add_request"
    assert row["inconclusive"] == [
        {
            "check": "general.registers",
            "level": "required",
            "status": "inconclusive",
            "reason": "needs transformers",
        }
    ]
    assert row["statuses"]["package.groups-known"] == "passed"
    assert len(row["statuses"]) == 6


def test_a_reason_that_announces_a_traceback_or_a_list_says_what_follows() -> None:
    traceback = (
        "[platform.loadable] Loading 'p:register' raised:\nTraceback (innermost frames):\n"
        '  File "p/__init__.py", line 4, in <module>\n    from vllm.envs import X\n'
        "ImportError: cannot import name 'X'\nRule: it loads.\nFix: import less."
    )
    assert ecosystem.one_line(traceback, "platform.loadable[vllm.platform_plugins:p]") == (
        "Loading 'p:register' raised: ImportError: cannot import name 'X'"
    )
    listing = "p imports what vLLM 0.32.0 does not have:\n  vllm.a.B (p.py:1): gone\n  vllm.c\n"
    assert ecosystem.one_line(listing) == (
        "p imports what vLLM 0.32.0 does not have: vllm.a.B (p.py:1): gone"
    )


def test_a_long_reason_is_cut_to_one_table_line() -> None:
    reason = ecosystem.one_line("x" * 1000)
    assert len(reason) == ecosystem.REASON_CHARS and reason.endswith("…")


def test_a_run_without_a_report_is_a_timeout_or_an_error_row() -> None:
    row = ecosystem.no_report("timeout", "no verdict within 900 s", 900.04, "2026-12-07")
    assert (row["verdict"], row["duration_s"], row["failed"]) == ("timeout", 900.0, [])
    assert row["reason"] == "no verdict within 900 s"


# -- the results file -----------------------------------------------------------------------


def test_merging_keeps_other_rows_and_a_new_version_drops_the_old_ones() -> None:
    data = ecosystem.empty_results()
    groups = ["vllm.general_plugins"]
    ecosystem.merge(data, "b-plugin", "1.0", groups, "vllm", _row("certified"))
    ecosystem.merge(data, "b-plugin", "1.0", groups, "reference", _row("incomplete"))
    ecosystem.merge(data, "a-plugin", "2.0", groups, "reference", _row("certified"))
    assert list(data["plugins"]) == ["a-plugin", "b-plugin"]
    assert list(data["plugins"]["b-plugin"]["engines"]) == ["reference", "vllm"]
    ecosystem.merge(data, "b-plugin", "1.0", groups, "reference", _row("certified"))
    assert data["plugins"]["b-plugin"]["engines"]["reference"]["verdict"] == "certified"
    assert data["plugins"]["b-plugin"]["engines"]["vllm"]["verdict"] == "certified"
    ecosystem.merge(data, "b-plugin", "1.1", groups, "reference", _row("certified"))
    assert data["plugins"]["b-plugin"]["version"] == "1.1"
    assert list(data["plugins"]["b-plugin"]["engines"]) == ["reference"]


def test_the_results_file_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "results" / "ecosystem.json"
    assert ecosystem.load_results(path) == ecosystem.empty_results()
    data = _data(a={"reference": _row("certified")})
    ecosystem.write_results(path, data)
    assert ecosystem.load_results(path) == data
    assert [p.name for p in path.parent.iterdir()] == ["ecosystem.json"], "no temporary left"

    class Unwritable:
        pass

    with pytest.raises(TypeError):
        ecosystem.write_results(path, {"schema": 1, "plugins": Unwritable()})
    assert ecosystem.load_results(path) == data, "a failed write leaves the old file"
    assert [p.name for p in path.parent.iterdir()] == ["ecosystem.json"]


def test_a_results_file_of_another_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ecosystem.json"
    path.write_text(json.dumps({"schema": 99, "plugins": {}}))
    with pytest.raises(ValueError, match="schema 99"):
        ecosystem.load_results(path)


# -- gaps and notes -------------------------------------------------------------------------


def test_a_gap_is_a_required_check_only_the_reference_leaves_inconclusive() -> None:
    entry = _data(
        p={
            "reference": _row(
                "incomplete", a_judged="inconclusive", b_both="inconclusive", c_ok="passed"
            ),
            "vllm": _row("not-certified", a_judged="failed", b_both="inconclusive", c_ok="passed"),
        }
    )["plugins"]["p"]
    assert ecosystem.gaps(entry) == ["a.judged"]
    del entry["engines"]["vllm"]
    assert ecosystem.gaps(entry) == []


def test_every_row_that_is_not_certified_needs_a_note() -> None:
    data = _data(
        good={"reference": _row("certified"), "vllm": _row("certified")},
        bad={
            "reference": _row("incomplete", x_y="inconclusive"),
            "vllm": _row("not-certified", x_y="failed"),
        },
    )
    notes = {"bad": {"reference": "needs torchvision", "vllm": "its import fails"}}
    with pytest.raises(ecosystem.NotesError, match="bad.gap"):
        ecosystem.render_sections(data, notes)
    notes["bad"]["gap"] = "torchvision is a third-party dependency"
    page = ecosystem.render_sections(data, notes)
    assert "needs torchvision" in page and "its import fails" in page
    assert "| `bad` | `x.y` | torchvision is a third-party dependency |" in page
    assert ecosystem.missing_notes(data, notes) == []
    assert ecosystem.stale_notes(data, notes) == []


def test_notes_that_no_row_needs_are_flagged() -> None:
    data = _data(good={"reference": _row("certified"), "vllm": _row("certified")})
    notes = {"good": {"vllm": "was broken"}, "gone": {"reference": "left the corpus"}}
    assert ecosystem.stale_notes(data, notes) == ["gone.reference", "good.vllm"]


def test_the_page_counts_verdicts_and_lists_the_checks_that_stop_a_plugin() -> None:
    data = _data(
        a={"reference": _row("certified"), "vllm": _row("certified")},
        b={
            "reference": _row("not-certified", p_q="failed", r_s="failed"),
            "vllm": _row("not-certified", p_q="failed", r_s="failed"),
        },
    )
    data["generated"] = {"engines": {"reference": "0.32.0+ref", "vllm": "0.32.0"}}
    page = ecosystem.render_sections(
        data, {"b": {"reference": "shared note", "vllm": "shared note"}}
    )
    assert "- **reference** (0.32.0+ref): 1 certified, 1 not-certified of 2." in page
    assert "| `b` 1.0 | **not-certified**: `p.q`, `r.s` | **not-certified**: `p.q`, `r.s` |" in page
    assert page.count("shared note") == 1, "one note said once when both engines share it"
    assert page.endswith("judges\n\nNone: every check vLLM 0.32 judges, the reference judges.\n")


def test_a_cell_names_the_checks_that_stopped_a_plugin_not_those_that_followed() -> None:
    report = _report(
        "incomplete",
        [
            _check("general.loadable", "inconclusive", msg="inconclusive: the plugin needs x"),
            _check("general.runs", "inconclusive", msg="inconclusive: it needs general.loadable"),
            _check("general.reentrant", "blocked", msg="blocked by general.runs"),
        ],
    )
    row = ecosystem.outcome(report, 1.0, "2026-12-07")
    assert ecosystem.root_causes(row["inconclusive"] + row["failed"]) == (["general.loadable"], 2)
    data = _data(p={"reference": row, "vllm": _row("certified", general_loadable="passed")})
    page = ecosystem.render_sections(data, {"p": {"reference": "needs x", "gap": "x is absent"}})
    assert "| `p` 1.0 | **incomplete**: `general.loadable` (+2 more) | certified |" in page
    assert "| `p` | `general.loadable` | x is absent |" in page


def test_the_sections_go_between_the_census_introduction_and_its_first_section() -> None:
    census = "# Title\n\nIntro.\n\n## Headline\n\n- x\n\n## More\n"
    page = ecosystem.compose_page(census, "## Certification\n\nrows\n")
    assert page == (
        "# Title\n\nIntro.\n\n## Certification\n\nrows\n\n## Headline\n\n- x\n\n## More\n"
    )


def test_the_picture_is_an_svg_with_one_cell_per_plugin_and_engine() -> None:
    data = _data(
        a={"reference": _row("certified"), "vllm": _row("incomplete")},
        b_c={"reference": _row("not-certified")},
    )
    svg = ecosystem.render_svg(data)
    tree = ET.fromstring(svg)
    cells = [e for e in tree.iter("{http://www.w3.org/2000/svg}rect") if e.find("*") is not None]
    titles = sorted(e.find("{http://www.w3.org/2000/svg}title").text for e in cells)
    assert titles == [
        "a on reference: certified",
        "a on vllm: incomplete",
        "b-c on reference: not-certified",
        "b-c on vllm: not run",
    ]


# -- the run --------------------------------------------------------------------------------


def _tiny_wheel(where: Path) -> Path:
    """A pure wheel of a stat-logger plugin, as PyPI would serve it."""
    wheel = where / "tiny_stats-0.1.0-py3-none-any.whl"
    info = "tiny_stats-0.1.0.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("tiny_stats/__init__.py", "")
        archive.writestr(
            "tiny_stats/logger.py",
            "from vllm.v1.metrics.loggers import StatLoggerBase\n\n\n"
            "class TinyLogger(StatLoggerBase):\n"
            "    def __init__(self, vllm_config, engine_index=0):\n"
            "        self.seen = 0\n\n"
            "    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None,\n"
            "               engine_idx=0):\n"
            "        self.seen += 1\n\n"
            "    def log_engine_initialized(self):\n"
            "        pass\n",
        )
        archive.writestr(
            f"{info}/METADATA",
            "Metadata-Version: 2.1\nName: tiny-stats\nVersion: 0.1.0\nRequires-Dist: vllm>=0.30\n",
        )
        archive.writestr(
            f"{info}/entry_points.txt",
            "[vllm.stat_logger_plugins]\ntiny = tiny_stats.logger:TinyLogger\n",
        )
        archive.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        archive.writestr(f"{info}/RECORD", "")
    return wheel


def test_a_wheel_with_a_purelib_folder_is_laid_out_as_installed(tmp_path: Path) -> None:
    # vllm-swift ships its package under vllm_swift-0.6.2.data/purelib/: on PYTHONPATH as
    # unpacked, the package is not importable and the plugin was judged broken.
    from importlib import metadata

    corpus = corpus_module()
    cache = tmp_path / "cache"
    (cache / "files").mkdir(parents=True)
    wheel = cache / "files" / "data_plug-0.1.0-py3-none-any.whl"
    info = "data_plug-0.1.0.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("data_plug-0.1.0.data/purelib/data_plug/__init__.py", "X = 1\n")
        archive.writestr(
            f"{info}/METADATA", "Metadata-Version: 2.1\nName: data-plug\nVersion: 0.1.0\n"
        )
        archive.writestr(f"{info}/entry_points.txt", "[vllm.general_plugins]\np = data_plug:X\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n")
        archive.writestr(
            f"{info}/RECORD",
            f"data_plug-0.1.0.data/purelib/data_plug/__init__.py,,\n{info}/RECORD,,\n",
        )
    pin = corpus.Pin("data-plug", "0.1.0", wheel.name, "", ("vllm.general_plugins",), "")
    site = corpus.site_dir(pin, cache)
    assert site == cache / "sites" / wheel.name
    assert (site / "data_plug" / "__init__.py").read_text() == "X = 1\n"
    assert not list(site.glob("*.data"))
    dist = next(metadata.distributions(path=[str(site)]))
    assert [str(f) for f in dist.files] == ["data_plug/__init__.py", f"{info}/RECORD"]
    assert corpus.site_dir(pin, cache) == site, "laid out once, then reused"


@pytest.mark.slow
@pytest.mark.skipif(
    bool(missing_engine_deps()), reason="certifies with an engine run: needs the model stack"
)
def test_a_wheel_is_certified_from_its_unpacked_files_without_installing_it(
    tmp_path: Path,
) -> None:
    corpus = corpus_module()
    cache = tmp_path / "cache"
    (cache / "files").mkdir(parents=True)
    wheel = _tiny_wheel(cache / "files")
    pin = corpus.Pin("tiny-stats", "0.1.0", wheel.name, "", ("vllm.stat_logger_plugins",), "")
    results = tmp_path / "ecosystem.json"
    jobs = corpus.ecosystem_jobs([pin], ["reference"], {"reference": sys.executable}, cache)
    assert jobs[0].site == cache / "unpacked" / wheel.name
    data = corpus.run_ecosystem(jobs, "0.32.0", 300, 1, results)
    row = data["plugins"]["tiny-stats"]["engines"]["reference"]
    assert row["verdict"] == "certified", row
    assert row["contract"] == "0.32.0"
    assert row["statuses"]["stat_logger.engine-run[vllm.stat_logger_plugins:tiny]"] == "passed"
    assert data["generated"]["engines"]["reference"] == row["engine_version"]
    assert json.loads(results.read_text()) == data


def test_an_unknown_plugin_or_engine_is_refused() -> None:
    corpus = corpus_module()
    assert corpus.main(["ecosystem", "--engines", "reference", "--only", "no-such-plugin"]) == 1
    assert corpus.main(["ecosystem", "--engines", "gpu"]) == 1


# -- the committed results ------------------------------------------------------------------


def test_the_committed_results_notes_page_and_picture_agree() -> None:
    corpus = corpus_module()
    data = ecosystem.load_results(corpus.ECOSYSTEM_RESULTS)
    notes = ecosystem.load_notes(corpus.ECOSYSTEM_NOTES)
    pins, _ = corpus.load_corpus()
    assert {p.name: p.version for p in pins} == {
        n: e["version"] for n, e in data["plugins"].items()
    }, "every corpus plugin, at its pinned version, has results"
    assert all(set(e["engines"]) == {"reference", "vllm"} for e in data["plugins"].values())
    assert ecosystem.missing_notes(data, notes) == []
    assert ecosystem.stale_notes(data, notes) == [], "delete notes no row needs"
    page = (ROOT / "docs" / "ecosystem.md").read_text(encoding="utf-8")
    assert ecosystem.render_sections(data, notes) in page, "run corpus.py ecosystem --render-only"
    svg = (ROOT / "docs" / "img" / "ecosystem.svg").read_text(encoding="utf-8")
    assert svg == ecosystem.render_svg(data), "run corpus.py ecosystem --render-only"
