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


def jobs(fixtures: Sequence[str], mutants: Sequence[str]) -> list[Job]:
    out = [Job("engine", "engine", ("engine",))]
    out += [Job("fixtures", f, ("certify", f)) for f in fixtures]
    out += [Job("mutants", m, ("certify", m, "--check", m), check=m) for m in mutants]
    return out


@dataclass
class Row:
    section: str
    key: str
    statuses: dict[str, str]  # engine → status text

    @property
    def agrees(self) -> bool:
        return len(set(self.statuses.values())) == 1


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

    def unexplained(self) -> list[Row]:
        return [r for r in self.rows if not r.agrees and f"{r.section}:{r.key}" not in self.notes]

    def rate(self, section: str | None = None) -> tuple[int, int]:
        rows = [r for r in self.rows if section is None or r.section == section]
        return sum(r.agrees for r in rows), len(rows)


def pin_reference_contract(vllm_python: str) -> str | None:
    """Make the reference runs of this process model the contract of the vLLM release that
    `vllm_python` has (the reference's default is its newest contract, which an older vLLM
    would disagree with by design); returns that contract, or None if the release is unknown.
    The runs inherit this process's environment."""
    from reference._version import CONTRACT_ENV, modelled_contract

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
    """The explanations file: `"<section>:<row>" = "why"`; raises ValueError naming problems."""
    if path is None or not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    bad = sorted(k for k, v in data.items() if not isinstance(v, str) or not v.strip())
    if bad:
        raise ValueError(f"{path}: every entry needs an explanation string; fix {bad}")
    unknown = sorted(k for k in data if k.split(":", 1)[0] not in SECTIONS)
    if unknown:
        raise ValueError(f"{path}: keys must start with one of {SECTIONS}: {unknown}")
    return dict(data)


def _percent(agree: int, total: int) -> str:
    return f"{agree}/{total} ({100 * agree / total:.0f}%)" if total else "0/0"


def render_markdown(result: Fidelity, command: str, preamble: str = "") -> str:
    agree, total = result.rate()
    lines = [
        "# Fidelity: the reference engine against vLLM 0.32",
        "",
        f"Generated by `{command}`; explanations come from `docs/fidelity-notes.toml`.",
        "",
        f"**Agreement: {_percent(agree, total)}** of compared rows give the same status on",
        "both engines.",
        "",
    ]
    if preamble:
        lines += [preamble.rstrip(), ""]
    titles = {
        "engine": "Engine scenarios (`vllm-conformance engine`)",
        "fixtures": "Good fixtures, check by check (`vllm-conformance certify FIXTURE`)",
        "mutants": "Mutants, by the check each must fail (`certify MUTANT --check MUTANT`)",
    }
    for section in SECTIONS:
        rows = [r for r in result.rows if r.section == section]
        if not rows:
            continue
        a, t = result.rate(section)
        lines += [f"## {titles[section]}", "", f"Agreement: {_percent(a, t)}.", ""]
        lines += ["| row | reference | vllm | agree | note |", "|---|---|---|---|---|"]
        for r in rows:
            note = result.notes.get(f"{section}:{r.key}", "")
            if not r.agrees and not note:
                note = "**unexplained**"
            mark = "yes" if r.agrees else "no"
            cells = [f"`{r.key}`", r.statuses["reference"], r.statuses["vllm"], mark, note]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    timing = dict.fromkeys(ENGINES, 0.0)
    for (_job, engine), run in result.runs.items():
        timing[engine] += run.seconds
    lines += [
        "## Wall time",
        "",
        "Summed over the runs (they ran two at a time): "
        + ", ".join(f"{e} {s:.0f} s" for e, s in timing.items())
        + ".",
        "",
    ]
    errors = [(k, r.error) for k, r in result.runs.items() if r.error]
    if errors:
        lines += ["## Runs without a report", ""]
        lines += [f"- `{name}` on {engine}: {err}" for (name, engine), err in errors]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def summary(result: Fidelity) -> str:
    agree, total = result.rate()
    parts = [f"agreement {_percent(agree, total)}"]
    for section in SECTIONS:
        a, t = result.rate(section)
        if t:
            parts.append(f"{section} {_percent(a, t)}")
    unexplained = result.unexplained()
    text = "; ".join(parts)
    if unexplained:
        text += "\nunexplained disagreements (add them to the notes file):\n" + "\n".join(
            f"  {r.section}:{r.key}  reference={r.statuses['reference']} vllm={r.statuses['vllm']}"
            for r in unexplained
        )
    return text


def to_json(result: Fidelity) -> dict[str, Any]:
    """The rows and the raw runs: `replay` rebuilds the comparison from this without running
    anything (to re-render the document after the notes changed)."""
    return {
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


def replay(data: dict[str, Any], job_list: Sequence[Job], notes: dict[str, str]) -> Fidelity:
    """The comparison of `job_list` from the runs a previous `to_json` recorded."""
    runs = {
        (r["job"], r["engine"]): Run(r["statuses"], r["error"], r["seconds"]) for r in data["runs"]
    }
    missing = sorted({j.name for j in job_list for e in ENGINES if (j.name, e) not in runs})
    if missing:
        raise ValueError(f"the recorded runs lack {', '.join(missing)}: run without --replay")
    rows = []
    for job in job_list:
        rows += rows_of(job, {e: runs[(job.name, e)] for e in ENGINES})
    return Fidelity(
        rows, {k: v for k, v in runs.items() if k[0] in {j.name for j in job_list}}, notes
    )
