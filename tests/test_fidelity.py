"""The differential report's logic, with a fake runner (no vLLM, no subprocesses)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytest

from conformance import cli
from conformance import fidelity as fd

#: (job argv without --engine, engine) → folded statuses.
OUTCOMES = {
    (("engine",), "reference"): {"engine.a": "passed", "engine.b": "passed"},
    (("engine",), "vllm"): {"engine.a": "passed", "engine.b": "failed"},
    (("certify", "fix"), "reference"): {"x.one": "passed", "x.two": "skipped"},
    (("certify", "fix"), "vllm"): {"x.one": "passed", "x.two": "skipped"},
    (("certify", "x.one", "--check", "x.one"), "reference"): {"x.one": "failed"},
    (("certify", "x.one", "--check", "x.one"), "vllm"): {"x.one": "failed"},
    (("certify", "x.two", "--check", "x.two"), "reference"): {"x.two": "failed"},
    (("certify", "x.two", "--check", "x.two"), "vllm"): None,  # no report
}


def fake_runner(calls: list[tuple[str, tuple[str, ...]]]):
    def run(python: str, argv: Sequence[str]) -> fd.Run:
        argv = tuple(argv)
        assert argv[-2] == "--engine"
        calls.append((python, argv))
        statuses = OUTCOMES[(argv[:-2], argv[-1])]
        if statuses is None:
            return fd.Run(error="exited 1 without a report: boom", seconds=1.0)
        return fd.Run(dict(statuses), seconds=2.0)

    return run


def compare(notes: dict[str, str] | None = None) -> tuple[fd.Fidelity, list]:
    calls: list = []
    result = fd.compare(
        fd.jobs(["fix"], ["x.one", "x.two"]),
        {"reference": "/ref/python", "vllm": "/vllm/python"},
        runner=fake_runner(calls),
        parallel=2,
        log=lambda _: None,
        notes=notes,
    )
    return result, calls


def test_every_job_runs_on_both_engines_with_its_own_interpreter():
    _, calls = compare()
    assert sorted(calls) == sorted(
        [("/ref/python", (*argv, "--engine", "reference")) for (argv, e) in OUTCOMES if e == "vllm"]
        + [("/vllm/python", (*argv, "--engine", "vllm")) for (argv, e) in OUTCOMES if e == "vllm"]
    )


def test_rows_pair_statuses_and_the_rate_counts_agreement():
    result, _ = compare()
    rows = {(r.section, r.key): r for r in result.rows}
    assert rows[("engine", "engine.b")].statuses == {"reference": "pass", "vllm": "FAIL"}
    assert rows[("fixtures", "fix:x.two")].agrees
    # A mutant is judged only by its own check; a run without a report is a disagreement.
    assert rows[("mutants", "x.one")].statuses == {"reference": "FAIL", "vllm": "FAIL"}
    assert rows[("mutants", "x.two")].statuses == {"reference": "FAIL", "vllm": "no report"}
    assert result.rate() == (4, 6)
    assert result.rate("fixtures") == (2, 2)
    assert [f"{r.section}:{r.key}" for r in result.unexplained()] == [
        "engine:engine.b",
        "mutants:x.two",
    ]


def test_notes_explain_disagreements_in_the_document():
    notes = {"engine:engine.b": "vLLM does X on purpose", "mutants:x.two": "needs a GPU"}
    result, _ = compare(notes)
    assert result.unexplained() == []
    text = fd.render_markdown(result, "vllm-conformance fidelity --vllm-python P")
    assert "**Agreement: 4/6 (67%)**" in text
    assert "| `engine.b` | pass | FAIL | no | vLLM does X on purpose |" in text
    assert "`x.two` on vllm: exited 1 without a report: boom" in text
    unexplained = fd.render_markdown(compare()[0], "cmd")
    assert "| `engine.b` | pass | FAIL | no | **unexplained** |" in unexplained
    assert "unexplained disagreements" in fd.summary(compare()[0])


def test_the_notes_file_is_validated(tmp_path):
    path = tmp_path / "notes.toml"
    assert fd.read_notes(tmp_path / "missing.toml") == {}
    path.write_text('"engine:engine.b" = "why"\n')
    assert fd.read_notes(path) == {"engine:engine.b": "why"}
    path.write_text('"engine:engine.b" = ""\n')
    with pytest.raises(ValueError, match="needs an explanation"):
        fd.read_notes(path)
    path.write_text('"elsewhere:x" = "why"\n')
    with pytest.raises(ValueError, match="must start with one of"):
        fd.read_notes(path)
    path.write_text("not toml = = \n")
    with pytest.raises(ValueError, match="cannot read"):
        fd.read_notes(path)


def test_the_cli_refuses_an_interpreter_without_vllm(tmp_path, capsys):
    code = cli.main(["fidelity", "--vllm-python", "/bin/false", "--sections", "engine"])
    assert code == cli.EXIT_USAGE
    assert "cannot import vllm and conformance" in capsys.readouterr().err
    assert cli.main(["fidelity", "--sections", "bogus"]) == cli.EXIT_USAGE
    assert "--sections" in capsys.readouterr().err


def test_a_recorded_run_replays_into_the_same_rows_with_new_notes(tmp_path):
    result, _ = compare()
    recorded = tmp_path / "fidelity.json"
    recorded.write_text(__import__("json").dumps(fd.to_json(result)))
    notes = tmp_path / "notes.toml"
    notes.write_text('"engine:engine.b" = "why"\n"mutants:x.two" = "why not"\n')
    data = __import__("json").loads(recorded.read_text())
    replayed = fd.replay(data, fd.jobs(["fix"], ["x.one", "x.two"]), fd.read_notes(notes))
    assert [(r.key, r.statuses) for r in replayed.rows] == [
        (r.key, r.statuses) for r in result.rows
    ]
    assert replayed.unexplained() == []
    with pytest.raises(ValueError, match="lack other"):
        fd.replay(data, fd.jobs(["fix", "other"], []), {})


def test_the_reference_runs_model_the_contract_of_the_compared_vllm(monkeypatch, tmp_path):
    from reference._version import CONTRACT_ENV

    monkeypatch.setenv(CONTRACT_ENV, "0.34.0")  # restored after the test
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 0.32.0+cpu\n")
    fake.chmod(0o755)
    assert fd.pin_reference_contract(str(fake)) == "0.32.0"
    assert os.environ[CONTRACT_ENV] == "0.32.0"
    no_vllm = tmp_path / "no-vllm"
    no_vllm.write_text("#!/bin/sh\necho None\n")
    no_vllm.chmod(0o755)
    assert fd.pin_reference_contract(str(no_vllm)) is None
    assert os.environ[CONTRACT_ENV] == "0.32.0"
