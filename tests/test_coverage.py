"""Coverage: `certify --coverage`, `pytest --plugin-coverage` and `engine --coverage` measure the
lines the checks execute (the plugin's, or the engine's plugin-contract code) without changing
the verdict, and the default path never loads coverage.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conformance.cli import main
from conformance.measure import Root, file_lines, line_ranges, plugin_scope, summarize
from conformance.probe import run_probe
from conformance.target import resolve_target

pytest.importorskip("coverage")
pytest_plugins = ["pytester"]

#: A general plugin with one function no check calls (`never_called`, its body lines 9-12).
PARTLY_RUN = """\
CALLS = []


def register():
    CALLS.append(1)


def never_called():
    total = 0
    for i in range(3):
        total += i
    return total
"""
#: A general plugin every line of which runs when it is loaded and called.
FULLY_RUN = """\
CALLS = []


def register():
    CALLS.append(1)
"""
#: The checks that load and call a general plugin: enough to run its code, quick to run.
GENERAL_CHECKS = ["--check", "general.runs", "--check", "general.reentrant"]
#: A surrounding measurement (this suite's own, in CI) must not reach the probes of a test.
NO_OUTER_COVERAGE = {"COVERAGE_PROCESS_START": None, "COVERAGE_PROCESS_CONFIG": None}


def _project(root: Path, source: str, name: str = "cov-plugin") -> Path:
    package = name.replace("-", "_")
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text(source)
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [project]
            name = "{name}"
            version = "0.1.0"
            [project.entry-points."vllm.general_plugins"]
            cov = "{package}:register"
            """
        )
    )
    return root


def _certify(project: Path, report_dir: Path, *options: str) -> dict:
    args = ["certify", str(project), "--engine", "reference", "-q", *GENERAL_CHECKS]
    code = main([*args, "--report-dir", str(report_dir), *options])
    report = json.loads((report_dir / "conformance-report.json").read_text())
    report["exit_code"] = code
    return report


def test_a_function_no_check_calls_is_listed_as_missing(tmp_path, capsys):
    project = _project(tmp_path / "project", PARTLY_RUN)

    report = _certify(project, tmp_path / "report", "--coverage")

    (entry,) = report["coverage"]["files"]
    assert entry["path"] == "cov_plugin/__init__.py", "paths are relative to the package's parent"
    assert entry["missing_lines"] == [9, 10, 11, 12], f"never_called's body: {entry}"
    assert entry["percent"] == 50.0, "4 of its 8 statements ran"
    assert report["coverage"]["least_covered"][0]["function"] == "never_called"
    out = capsys.readouterr().out
    assert "the checks executed 50.0 % of the plugin's lines" in out
    assert "never_called (cov_plugin/__init__.py) 0 %: lines 9-12 not run" in out
    markdown = (tmp_path / "report" / "conformance-report.md").read_text()
    assert "| `cov_plugin/__init__.py` | 8 | 4 | 50.0 | 9-12 |" in markdown


def test_a_plugin_whose_every_line_runs_reports_100_percent(tmp_path):
    project = _project(tmp_path / "project", FULLY_RUN)

    report = _certify(project, tmp_path / "report", "--coverage")

    assert report["coverage"]["percent"] == 100.0
    assert [f["missing_lines"] for f in report["coverage"]["files"]] == [[]]
    assert report["coverage"]["least_covered"] == []


def test_coverage_never_changes_the_verdict(tmp_path):
    project = _project(tmp_path / "project", PARTLY_RUN)

    plain = _certify(project, tmp_path / "plain")
    measured = _certify(project, tmp_path / "measured", "--coverage")

    assert "coverage" not in plain, "no coverage key unless it was measured"
    assert plain["summary"] == measured["summary"]
    assert plain["exit_code"] == measured["exit_code"] == 0
    statuses = [(c["id"], c["status"]) for c in plain["checks"]]
    assert statuses == [(c["id"], c["status"]) for c in measured["checks"]]


def test_without_coverage_py_the_option_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "coverage", None)  # what `import coverage` sees uninstalled

    code = main(["certify", "vllm_add_dummy_model", "--coverage"])

    assert code == 2
    assert "pip install coverage" in capsys.readouterr().err


def test_the_pytest_option_without_coverage_py_is_a_usage_error(pytester, monkeypatch):
    monkeypatch.setitem(sys.modules, "coverage", None)

    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "--plugin-under-test=vllm_add_dummy_model", "--plugin-coverage"
    )

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "pip install coverage" in result.stderr.str()


def test_the_default_path_never_imports_coverage(tmp_path):
    project = _project(tmp_path / "project", FULLY_RUN)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    script = (
        "import sys; from conformance.cli import main\n"
        f"code = main(['certify', {str(project)!r}, '--engine', 'reference', '-q', "
        "'--check', 'general.runs'])\n"
        "print('CODE', code, 'LOADED', 'coverage' in sys.modules)\n"
    )

    run = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    probe = run_probe(
        "import sys\nprobe.result['loaded'] = 'coverage' in sys.modules\n", env=NO_OUTER_COVERAGE
    )

    assert "CODE 0 LOADED False" in run.stdout, run.stdout + run.stderr
    assert probe.ok and probe.values == {"loaded": False}, probe.describe()


@pytest.mark.slow
def test_xdist_workers_measure_into_one_report(pytester, tmp_path):
    pytest.importorskip("xdist")
    project = _project(tmp_path / "project", PARTLY_RUN)
    report_dir = tmp_path / "report"

    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        f"--plugin-under-test={project}",
        "--plugin-coverage",
        "-n",
        "2",
        "-k",
        "general.runs or general.reentrant or general.loadable",
        f"--conformance-report={report_dir}",
    )

    coverage = json.loads((report_dir / "conformance-report.json").read_text())["coverage"]
    assert [f["missing_lines"] for f in coverage["files"]] == [[9, 10, 11, 12]]
    assert "the checks executed 50.0 % of the plugin's lines" in result.stdout.str()


def test_engine_coverage_measures_the_reference_loader(tmp_path, capsys):
    selection = ["--check", "engine.general-once-per-process"]
    code = main(["engine", "--coverage", *selection, "--report-dir", str(tmp_path)])

    files = json.loads((tmp_path / "conformance-report.json").read_text())["coverage"]["files"]
    loader = next(f for f in files if f["path"] == "reference/plugins.py")
    source = Path(__file__).resolve().parents[1] / "reference" / "plugins.py"
    guard = next(
        n
        for n, line in enumerate(source.read_text().splitlines(), 1)
        if "plugins_loaded = True" in line
    )
    assert code == 0
    assert loader["executed"] > 0 and guard not in loader["missing_lines"], loader
    assert "of the reference engine's lines" in capsys.readouterr().out


def test_line_ranges_join_missing_statements_across_blank_lines():
    statements = [1, 2, 4, 5, 7, 9]

    assert line_ranges([2, 4, 9], statements) == "2-4, 9"
    assert line_ranges([], statements) == ""


def test_only_the_named_functions_of_a_file_count(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("def kept():\n    return 1\n\n\ndef other():\n    return 2\n")

    lines = file_lines(source, "mod.py", {1, 2, 5, 6}, {2, 6}, ("kept",))
    summary = summarize("x", [lines])

    assert (lines.statements, lines.executed) == ([1, 2], [1])
    assert summary["files"][0]["missing_lines"] == [2] and summary["percent"] == 50.0
    assert [f["function"] for f in summary["least_covered"]] == ["kept"]


def test_a_root_directory_lists_its_python_files_only(tmp_path):
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("")
    (tmp_path / "pkg" / "data.txt").write_text("")
    (tmp_path / "pkg" / "__pycache__" / "a.py").write_text("")

    root = Root(str(tmp_path / "pkg"), str(tmp_path))

    assert [p.name for p in root.files()] == ["a.py"]


def test_an_installed_distribution_is_measured_in_its_installed_packages(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "inst_plugin").mkdir(parents=True)
    (site / "inst_plugin" / "__init__.py").write_text(FULLY_RUN)
    info = site / "inst_plugin-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: inst-plugin\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[vllm.general_plugins]\ncov = inst_plugin:register\n")
    (info / "RECORD").write_text(
        "inst_plugin/__init__.py,,\ninst_plugin-0.1.0.dist-info/RECORD,,\n"
    )
    monkeypatch.syspath_prepend(str(site))

    scope = plugin_scope(resolve_target("inst-plugin"))

    assert [(r.path, r.base) for r in scope.roots] == [
        (os.path.realpath(site / "inst_plugin"), os.path.realpath(site))
    ]


def test_a_sweep_starts_its_subprocesses_unmeasured(pytester, monkeypatch):
    # The suite's own coverage (tox -e engine) measures a subprocess where this variable is
    # set; a test marked `sweep` does without it, every other test keeps it.
    from tests.conftest import MEASURE_SUBPROCESSES

    monkeypatch.setenv(MEASURE_SUBPROCESSES, "[run]")
    pytester.makeini("[pytest]\nmarkers =\n    sweep: a mutant sweep\n")
    pytester.makeconftest("from tests.conftest import sweeps_unmeasured  # noqa: F401\n")
    pytester.makepyfile(
        f"""
        import os
        import pytest

        @pytest.mark.sweep
        def test_sweep():
            assert {MEASURE_SUBPROCESSES!r} not in os.environ

        def test_other():
            assert os.environ[{MEASURE_SUBPROCESSES!r}] == "[run]"
        """
    )
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)
    assert os.environ[MEASURE_SUBPROCESSES] == "[run]", "restored after the sweep"
