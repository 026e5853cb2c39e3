"""`pytest --plugin-under-test`: collection from anywhere, options, reports, xdist."""

from __future__ import annotations

import json

import pytest

from tests.conftest import GOOD_EXIT, GOOD_VERDICT

pytest_plugins = ["pytester"]


def _run(pytester, *args):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)


def _checks(path):
    report = json.loads(path.read_text())
    return [(c["id"], c["entry_point"], c["status"], c["message"]) for c in report["checks"]]


def test_an_empty_directory_collects_the_whole_suite_for_the_plugin(pytester):
    result = _run(pytester, "--plugin-under-test=vllm_add_dummy_platform", "--collect-only", "-q")
    out = result.stdout.str()
    assert "vllm-conformance::platform.resolves[vllm.platform_plugins:dummy_platform_plugin]" in out
    assert "vllm-conformance::general.reentrant[vllm.general_plugins:dummy_custom_ops]" in out


def test_a_good_fixture_passes_and_the_header_shows_what_is_tested(pytester, monkeypatch):
    monkeypatch.setenv("VLLM_TARGET_DEVICE", "cuda")
    result = _run(pytester, "--plugin-under-test=vllm_add_dummy_platform", "-q")
    assert result.ret == GOOD_EXIT
    out = result.stdout.str()
    assert f"vllm_add_dummy_platform: {GOOD_VERDICT}" in out


def test_the_header_lists_distribution_entry_points_engine_and_environment(pytester, monkeypatch):
    monkeypatch.setenv("VLLM_SOMETHING", "x")
    result = _run(pytester, "--plugin-under-test=vllm_add_dummy_platform", "--collect-only")
    out = result.stdout.str()
    assert "vllm-conformance: plugin vllm_add_dummy_platform 0.1.0" in out
    assert "entry point vllm.platform_plugins: dummy_platform_plugin" in out
    assert "engine reference" in out and "VLLM_SOMETHING='x'" in out


def test_the_environment_variable_names_the_plugin(pytester, monkeypatch):
    monkeypatch.setenv("VLLM_CONFORMANCE_PLUGIN", "general.runs")
    result = _run(pytester, "-q")
    assert result.ret == 1
    assert "FAILED vllm-conformance::general.runs[" in result.stdout.str()


def test_a_mutant_fails_its_check(pytester):
    result = _run(pytester, "--plugin-under-test=general.callable", "-q")
    assert result.ret == 1
    assert "FAILED vllm-conformance::general.callable" in result.stdout.str()


def test_an_unknown_distribution_is_a_usage_error(pytester):
    result = _run(pytester, "--plugin-under-test=no-such-plugin")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "No distribution named 'no-such-plugin'" in result.stderr.str()


def test_certify_refuses_deselection_and_expected_failures(pytester):
    xfails = pytester.makefile(".toml", xfail='"general.runs" = "known"\n')
    deselect = _run(pytester, "--plugin-under-test=general.runs", "--certify", "-k", "runs")
    listed = _run(
        pytester, "--plugin-under-test=general.runs", "--certify", f"--expected-failures={xfails}"
    )
    assert deselect.ret == listed.ret == pytest.ExitCode.USAGE_ERROR
    assert "no deselection" in deselect.stderr.str()
    assert "no --expected-failures" in listed.stderr.str()


def test_expected_failures_xfail_and_unknown_ids_warn(pytester):
    xfails = pytester.makefile(
        ".toml", xfail='"general.runs" = "known bug #1"\n"general.no-such-check" = "stale"\n'
    )
    result = _run(
        pytester, "--plugin-under-test=general.runs", f"--expected-failures={xfails}", "-rx"
    )
    out = result.stdout.str()
    assert "XFAIL vllm-conformance::general.runs" in out and "known bug #1" in out
    assert "general.no-such-check" in out, "an unknown id must be warned about"


def test_xdist_gives_the_same_report_as_a_single_process(pytester, tmp_path):
    pytest.importorskip("xdist")
    args = ["--plugin-under-test=vllm_add_dummy_platform", "-q"]
    _run(pytester, *args, "-n", "0", f"--conformance-report={tmp_path / 'n0'}")
    _run(pytester, *args, "-n", "2", f"--conformance-report={tmp_path / 'n2'}")
    n0 = _checks(tmp_path / "n0" / "conformance-report.json")
    n2 = _checks(tmp_path / "n2" / "conformance-report.json")
    assert n0 == n2 and len(n0) > 10


def test_recommended_failures_warn_without_failing_the_run(pytester, tmp_path):
    result = _run(
        pytester,
        "--plugin-under-test=package.declares-vllm-requirement",
        "-q",
        f"--conformance-report={tmp_path}",
    )
    assert result.ret == GOOD_EXIT
    assert "ConformanceWarning" in result.stdout.str()
    report = json.loads((tmp_path / "conformance-report.json").read_text())
    [row] = [c for c in report["checks"] if c["id"] == "package.declares-vllm-requirement"]
    assert row["status"] == "failed" and row["level"] == "recommended"
    assert report["summary"]["verdict"] == GOOD_VERDICT


def test_junit_xml_comes_through_pytest(pytester, tmp_path):
    junit = tmp_path / "junit.xml"
    _run(pytester, "--plugin-under-test=general.runs", f"--junitxml={junit}", "-q")
    xml = junit.read_text()
    assert 'name="general.runs[vllm.general_plugins:general_runs]"' in xml
    assert "<failure" in xml and "[general.runs]" in xml
