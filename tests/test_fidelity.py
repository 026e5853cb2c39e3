"""The differential report's logic, with a fake runner (no vLLM, no subprocesses)."""

from __future__ import annotations

import json
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


# --------------------------------------------------------------------------------------------
# A second release as a column beside the main comparison (`fidelity --column 0.34`)

#: The 0.34 runs: engine.b cannot be judged on the build, fix:x.one differs, x.three is new.
OUTCOMES_034 = {
    (("engine",), "reference"): {"engine.a": "passed", "engine.b": "passed"},
    (("engine",), "vllm"): {"engine.a": "passed", "engine.b": "inconclusive"},
    (("certify", "fix"), "reference"): {"x.one": "passed", "x.two": "skipped", "x.three": "passed"},
    (("certify", "fix"), "vllm"): {"x.one": "failed", "x.two": "skipped", "x.three": "passed"},
}


def column_034() -> fd.Fidelity:
    def run(python: str, argv: Sequence[str]) -> fd.Run:
        return fd.Run(dict(OUTCOMES_034[(tuple(argv[:-2]), argv[-1])]), seconds=5.0)

    result = fd.compare(
        fd.jobs(["fix"], []),
        {"reference": "/ref/python", "vllm": "/vllm034/python"},
        runner=run,
        log=lambda _: None,
    )
    result.meta = {"recorded": "2026-12-07", "contract": "0.34.0", "vllm": "0.34.0+empty"}
    return result


def test_only_vllm_being_inconclusive_is_not_judged_rather_than_a_disagreement():
    def kind(reference: str, vllm: str) -> str:
        return fd.Row("engine", "e", {"reference": reference, "vllm": vllm}).kind

    assert kind("pass", "pass") == fd.AGREE
    assert kind("pass", "inconcl.") == fd.NOT_JUDGED
    assert kind("FAIL", "inconcl.") == fd.NOT_JUDGED
    # The reference must always be able to judge: its inconclusive is a disagreement.
    assert kind("inconcl.", "pass") == fd.DIFFER
    assert kind("pass", "FAIL") == fd.DIFFER


def test_a_column_is_recorded_beside_the_main_comparison_which_stays_as_it_was():
    main = json.loads(json.dumps(fd.to_json(compare()[0])))
    data = json.loads(json.dumps(fd.with_column(main, "0.34", column_034())))
    assert {k: data[k] for k in main} == main
    assert data["columns"]["0.34"]["agreement"] == [3, 5]
    assert data["columns"]["0.34"]["not_judged"] == 1
    assert data["columns"]["0.34"]["meta"]["vllm"] == "0.34.0+empty"
    replayed = fd.replay(data, fd.jobs(["fix"], ["x.one", "x.two"]), {})
    assert replayed.rate() == (4, 6)  # the main figure, untouched by the column
    column = replayed.columns["0.34"]
    assert (column.rate(), column.not_judged()) == ((3, 5), 1)
    # The not-judged row needs no note; the real disagreement does, in the column's table.
    assert [r.key for r in column.unexplained()] == ["fix:x.one"]
    with pytest.raises(ValueError, match="holds no recorded main comparison"):
        fd.with_column({}, "0.34", column_034())


def test_the_document_shows_the_column_and_counts_not_judged_rows_apart(tmp_path):
    notes_file = tmp_path / "notes.toml"
    notes_file.write_text(
        '"engine:engine.b" = "differs on 0.32"\n\n["0.34"]\n"fixtures:fix:x.one" = "a 0.34 change"\n'
    )
    notes = fd.read_notes(notes_file)
    assert notes["0.34/fixtures:fix:x.one"] == "a 0.34 change"
    data = fd.with_column(fd.to_json(compare()[0]), "0.34", column_034())
    result = fd.replay(data, fd.jobs(["fix"], ["x.one", "x.two"]), notes)
    assert result.columns["0.34"].unexplained() == []
    text = fd.render_markdown(result, "cmd")
    assert text.startswith("# Fidelity: the reference engine against vLLM 0.32 and 0.34\n")
    assert "**Agreement: 4/6 (67%)** of compared rows" in text
    assert "3/5 (60%) agree, 1 not judged (`inconcl.` on vLLM), 1 disagree" in text
    assert (
        "| row | reference | vLLM 0.32 | agree | reference (0.34) | vLLM 0.34 | agree (0.34) "
        "| note |" in text
    )
    assert (
        "| `engine.b` | pass | FAIL | no | pass | inconcl. | not judged | differs on 0.32 |" in text
    )
    assert "| `fix:x.one` | pass | pass | yes | pass | FAIL | no | 0.34: a 0.34 change |" in text
    # A row only the column has; the mutants, which the column did not run, keep the old table.
    assert "| `fix:x.three` | — | — | — | pass | pass | yes |  |" in text
    assert "| `x.one` | FAIL | FAIL | yes |  |" in text
    assert "The vLLM 0.34 column: reference 10 s, vllm 10 s." in text
    assert "vLLM 0.34: 3/5 (60%) agree" in fd.summary(result)


def test_the_cli_adds_a_recorded_run_as_a_column_and_replays_it(tmp_path, monkeypatch, capsys):
    from conformance import target

    monkeypatch.setattr(cli, "fixture_names", lambda: ["fix"])
    monkeypatch.setattr(target, "mutant_names", lambda: ["x.one", "x.two"])
    main, run034 = tmp_path / "fidelity.json", tmp_path / "run034.json"
    main.write_text(json.dumps(fd.to_json(compare()[0])))
    run034.write_text(json.dumps(fd.to_json(column_034())))
    doc, notes = tmp_path / "fidelity.md", tmp_path / "none.toml"
    base = ["fidelity", "--notes", str(notes), "--vllm-python", "/bin/false"]
    argv = [*base, "--replay", str(run034), "--sections", "engine,fixtures", "--column", "0.34"]
    assert cli.main([*argv, "--json", str(main), "--markdown", str(doc)]) == cli.EXIT_FAILED
    out = capsys.readouterr().out
    assert "vLLM 0.34: 3/5 (60%) agree" in out and "0.34/fixtures:fix:x.one" in out
    recorded = json.loads(main.read_text())
    assert recorded["agreement"] == [4, 6] and recorded["columns"]["0.34"]["agreement"] == [3, 5]
    assert "| `fix:x.one` | pass | pass | yes | pass | FAIL | no | 0.34: **unexplained** |" in (
        doc.read_text()
    )
    # A plain replay of the file keeps and renders the column.
    assert cli.main([*base, "--replay", str(main), "--markdown", str(doc)]) == cli.EXIT_FAILED
    assert "vLLM 0.34" in doc.read_text()
    assert cli.main([*base, "--replay", str(run034), "--column", "0.34"]) == cli.EXIT_USAGE
    assert "--column adds a column" in capsys.readouterr().err


def test_a_release_table_of_notes_is_validated_like_the_main_notes(tmp_path):
    path = tmp_path / "notes.toml"
    path.write_text('["0.34"]\n"elsewhere:x" = "why"\n')
    with pytest.raises(ValueError, match="must start with one of"):
        fd.read_notes(path)
    path.write_text('["0.34"]\n"engine:e" = " "\n')
    with pytest.raises(ValueError, match="needs an explanation"):
        fd.read_notes(path)


def test_the_probe_time_limit_reaches_every_run_including_the_engine_scenarios(capsys):
    timed = fd.jobs(["fix"], ["x.one"], timeout=600)
    assert [job.argv for job in timed] == [
        ("engine", "--timeout", "600"),
        ("certify", "fix", "--timeout", "600"),
        ("certify", "x.one", "--check", "x.one", "--timeout", "600"),
    ]
    assert [job.argv for job in fd.jobs(["fix"], [])] == [("engine",), ("certify", "fix")]
    # The engine command takes it (and refuses a limit that is no limit).
    assert cli.main(["engine", "--timeout", "0"]) == cli.EXIT_USAGE
    assert "--timeout must be a positive number" in capsys.readouterr().err


def test_a_new_main_comparison_keeps_the_recorded_columns_and_a_column_decides_the_exit(
    tmp_path, monkeypatch, capsys
):
    from conformance import target

    monkeypatch.setattr(cli, "fixture_names", lambda: ["fix"])
    monkeypatch.setattr(target, "mutant_names", lambda: ["x.one", "x.two"])
    notes = tmp_path / "notes.toml"
    notes.write_text('"engine:engine.b" = "why"\n"mutants:x.two" = "why not"\n')
    main, run034 = tmp_path / "fidelity.json", tmp_path / "run034.json"
    main.write_text(json.dumps(fd.to_json(compare()[0])))
    run034.write_text(json.dumps(fd.to_json(column_034())))
    base = ["fidelity", "--notes", str(notes), "--vllm-python", "/bin/false"]
    column = [*base, "--replay", str(run034), "--sections", "engine,fixtures", "--column", "0.34"]
    # The main comparison is explained; only the column's fix:x.one is not: exit 1.
    assert cli.main([*column, "--json", str(main)]) == cli.EXIT_FAILED
    notes.write_text(notes.read_text() + '["0.34"]\n"fixtures:fix:x.one" = "a 0.34 change"\n')
    assert cli.main([*column, "--json", str(main)]) == cli.EXIT_OK
    # Re-recording the main comparison (here from a file without columns) keeps the column.
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(fd.to_json(compare()[0])))
    assert cli.main([*base, "--replay", str(plain), "--json", str(main)]) == cli.EXIT_OK
    assert json.loads(main.read_text())["columns"]["0.34"]["agreement"] == [3, 5]
    capsys.readouterr()
