"""`vllm-conformance` on the command line: exit codes, listings, explanations, the demo."""

from __future__ import annotations

import json
from pathlib import Path

from conformance.cli import main, render_checks_markdown
from conformance.framework import load_catalog
from tests.conftest import GOOD_EXIT, GOOD_VERDICT

DOCS = Path(__file__).resolve().parents[1] / "docs" / "checks.md"


def test_certify_a_good_fixture_exits_0_and_writes_reports(capsys, tmp_path):
    code = main(["certify", "vllm_add_dummy_platform", "--report-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == GOOD_EXIT, out
    assert GOOD_VERDICT in out and "platform.resolves" in out
    report = json.loads((tmp_path / "conformance-report.json").read_text())
    assert report["schema"] == 2 and report["summary"]["verdict"] == GOOD_VERDICT
    assert report["subject"]["distribution"] == "vllm_add_dummy_platform"
    assert (tmp_path / "conformance-report.md").read_text().startswith("# Conformance report")


def test_certify_a_mutant_exits_1_and_names_the_rule(capsys):
    assert main(["certify", "general.runs"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "[general.runs]" in out and "Fix:" in out


def test_certify_an_unknown_distribution_is_a_usage_error(capsys):
    assert main(["certify", "no-such-plugin-anywhere"]) == 2
    err = capsys.readouterr().err
    assert "No distribution named 'no-such-plugin-anywhere' is installed" in err
    assert "pip install" in err


def test_certify_reads_expected_failures(capsys, tmp_path):
    file = tmp_path / "xfail.toml"
    file.write_text('"general.runs" = "known: raises on this machine"\n')
    assert main(["certify", "general.runs", "--expected-failures", str(file)]) == 1
    assert "XFAILED" in capsys.readouterr().out


def test_a_malformed_expected_failures_file_is_a_usage_error(capsys, tmp_path):
    file = tmp_path / "xfail.toml"
    file.write_text('"general.runs" = ""\n')
    assert main(["certify", "general.runs", "--expected-failures", str(file)]) == 2
    assert "needs a reason" in capsys.readouterr().err


def test_contract_judges_by_an_older_contracts_rules(capsys):
    # A V1-interface processor: refused by 0.32's default runner, the interface of 0.26's.
    args = ["certify", "logits.subclass", "--check", "logits.subclass", "--engine", "reference"]
    assert main([*args, "--contract", "0.32.0"]) == 1
    assert "FAILED" in capsys.readouterr().out
    assert main([*args, "--contract", "0.26.0"]) == 0
    out = capsys.readouterr().out
    assert "judged by the rules of contract 0.26.0" in out and "FAILED" not in out


def test_contract_is_a_usage_error_on_real_vllm_or_when_not_a_version(capsys):
    args = ["certify", "vllm_add_dummy_model", "--contract"]
    assert main([*args, "0.26.0", "--engine", "vllm"]) == 2
    assert "--contract applies to the reference engine only" in capsys.readouterr().err
    assert main([*args, "soon", "--engine", "reference"]) == 2
    assert "--contract 'soon' is not a version" in capsys.readouterr().err


def test_checks_lists_every_check_and_json_is_machine_readable(capsys):
    assert main(["checks", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in rows] == list(load_catalog())
    assert {r["level"] for r in rows} <= {"required", "recommended"}


def test_explain_prints_the_rule_the_why_and_the_fix(capsys):
    assert main(["explain", "general.reentrant"]) == 0
    out = capsys.readouterr().out
    assert "Rule:" in out and "Fix:" in out and "re-entrant" in out


def test_explain_an_unknown_check_is_a_usage_error(capsys):
    assert main(["explain", "general.nope"]) == 2
    assert "No check 'general.nope'" in capsys.readouterr().err


def test_docs_checks_md_is_generated_from_the_catalog():
    assert DOCS.read_text(encoding="utf-8") == render_checks_markdown(), (
        "docs/checks.md is stale: run `vllm-conformance checks --markdown > docs/checks.md`"
    )


def test_demo_certifies_every_good_fixture(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "vllm_add_dummy_platform" in out and "not-certified" not in out


def test_an_unknown_command_is_a_usage_error(capsys):
    assert main(["frobnicate"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_the_demo_shows_a_fixture_its_release_excludes_as_not_for_it(monkeypatch):
    # On vLLM 0.34 the V1 logits fixture (vllm<0.34) is not meant to certify: the demo says so
    # instead of failing; on a release it admits, and on the reference, it is certified as usual.
    from conformance import cli
    from conformance.target import resolve_target

    class Installed:
        def __init__(self, target, engine):
            self.contract = release

    monkeypatch.setattr(cli, "Session", Installed)
    target = resolve_target("dummy_logits_processor")
    release = "0.34.0+empty"
    why = cli._excluded_release(target, "vllm")
    assert why is not None and "excludes vLLM 0.34.0" in why and "<0.34" in why
    release = "0.32.0"
    assert cli._excluded_release(target, "vllm") is None
    assert cli._excluded_release(target, "reference") is None
