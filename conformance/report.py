"""Reports: `conformance-report.json` (schema 2), `conformance-report.md` and a console table."""

from __future__ import annotations

import json
import os
import platform as host
import sys
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from conformance import __version__ as HARNESS_VERSION
from conformance.measure import render_markdown as render_coverage
from conformance.runner import STATUSES, CheckResult, verdict
from conformance.target import Target

#: 2: statuses `blocked` and `error` (the suite's own failure); each check carries `owner`,
#: `requires`, `blocked_by` and `entry_points`; the verdict `suite-failed`. See
#: docs/user-guide.md for the changes from 1.
SCHEMA = 2
JSON_NAME = "conformance-report.json"
MARKDOWN_NAME = "conformance-report.md"


def _torch_version() -> str | None:
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    from reference.platforms.cuda import cuda_device_count

    return {
        "python": sys.version.split()[0],
        "platform": host.platform(),
        "torch": _torch_version(),
        "cuda": cuda_device_count() > 0,
    }


def build_report(
    subject: dict[str, Any],
    engine: dict[str, str],
    results: Sequence[CheckResult],
    strict: bool = False,
    coverage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON report of design.md §3, schema 2 (`SCHEMA`); `coverage` (a
    `conformance.measure.summarize` object) is added as the key `coverage` when measured."""
    summary: dict[str, Any] = {status: 0 for status in STATUSES}
    for r in results:
        summary[r.status] += 1
    summary["verdict"] = verdict(results, strict)
    report = {
        "schema": SCHEMA,
        "subject": subject,
        "engine": engine,
        "environment": environment(),
        "harness": {"version": HARNESS_VERSION},
        "checks": [r.to_json() for r in results],
        "summary": summary,
    }
    if coverage is not None:
        report["coverage"] = coverage
    return report


def plugin_subject(target: Target) -> dict[str, Any]:
    return {
        "kind": "plugin",
        "distribution": target.name,
        "version": target.version,
        "entry_points": [ep.to_json() for ep in target.vllm_entry_points],
    }


def engine_subject() -> dict[str, Any]:
    return {"kind": "engine", "distribution": None, "version": None, "entry_points": []}


def engine_info(name: str, contract: str) -> dict[str, str]:
    if name == "reference":
        from reference import __version__ as version
    else:
        version = contract
    return {"name": name, "version": version, "contract": contract}


def render_markdown(report: dict[str, Any]) -> str:
    """Readable in ten seconds: verdict and counts first, then failures with their messages."""
    subject, summary = report["subject"], report["summary"]
    title = subject["distribution"] or "engine"
    counts = ", ".join(f"{summary[s]} {s}" for s in STATUSES if summary[s])
    lines = [
        f"# Conformance report: {title} {subject.get('version') or ''}".rstrip(),
        "",
        f"**Verdict: {summary['verdict']}** — {counts or 'no checks'}",
        "",
        f"Engine: {report['engine']['name']} {report['engine']['version']} (contract "
        f"{report['engine']['contract']}); harness {report['harness']['version']}; Python "
        f"{report['environment']['python']}.",
        "",
    ]
    bad = [c for c in report["checks"] if c["status"] in ("error", "failed", "xpassed")]
    if bad:
        lines += ["## Failures", ""]
        for c in sorted(bad, key=lambda c: (c["level"] != "required", c["id"])):
            where = f" `{c['entry_point']}`" if c["entry_point"] else ""
            lines += [f"### {c['status'].upper()} ({c['level']}) `{c['id']}`{where}", "", "```"]
            lines += [c["message"], "```", ""]
    lines += [
        "## All checks",
        "",
        "| check | entry point | level | status | s |",
        "|---|---|---|---|---:|",
    ]
    for c in report["checks"]:
        ep = c["entry_point"] or "—"
        lines.append(
            f"| `{c['id']}` | {ep} | {c['level']} | {c['status']} | {c['duration_s']:.2f} |"
        )
    blocked = [c for c in report["checks"] if c["status"] == "blocked"]
    if blocked:
        lines += ["", "## Blocked", ""]
        lines += [
            f"- `{c['id']}` {c['entry_point'] or ''}: blocked by `{c['blocked_by']}`"
            for c in blocked
        ]
    noted = [c for c in report["checks"] if c["status"] == "passed" and c["message"]]
    if noted:
        lines += ["", "## Passed with a note", ""]
        lines += [f"- `{c['id']}` {c['entry_point'] or ''}: {c['message']}" for c in noted]
    skipped = [c for c in report["checks"] if c["status"] == "skipped"]
    if skipped:
        lines += ["", "## Capability skips", ""]
        lines += [f"- `{c['id']}` {c['entry_point'] or ''}: {c['message']}" for c in skipped]
    if report.get("coverage"):
        lines += ["", *render_coverage(report["coverage"])]
    return "\n".join(lines) + "\n"


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same directory: a reader (or a
    crash) never sees half a file, and no temporary is left behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_reports(report: dict[str, Any], directory: str | Path) -> tuple[Path, Path]:
    """Write the JSON and Markdown reports into `directory` (created), each atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / JSON_NAME, directory / MARKDOWN_NAME
    atomic_write(json_path, json.dumps(report, indent=2) + "\n")
    atomic_write(md_path, render_markdown(report))
    return json_path, md_path


#: The console's order: root causes first, then what they blocked, then the rest.
CONSOLE_ORDER = (
    "error",
    "failed",
    "xpassed",
    "blocked",
    "inconclusive",
    "skipped",
    "xfailed",
    "passed",
)


def _line(r: CheckResult, widths: tuple[int, int]) -> str:
    ep = f" [{r.entry_point}]" if r.entry_point else ""
    text = f"{r.status.upper():<{widths[0]}}  {r.level:<{widths[1]}}  {r.id}{ep}"
    if r.status == "blocked":
        return f"{text} — blocked by {r.blocked_by}"
    if r.status in ("inconclusive", "skipped", "xfailed", "passed") and r.message:
        first = r.message.strip().splitlines()[0]
        return f"{text} — {first}"
    return text


#: Column widths of the console lines: the longest status, the longest level.
WIDTHS = (max(len(s) for s in CONSOLE_ORDER), len("recommended"))


def render_progress(result: CheckResult) -> str:
    """The line printed as a check finishes (reasons inline; messages come at the end)."""
    return _line(result, WIDTHS)


def render_console(
    results: Sequence[CheckResult], strict: bool = False, progress_shown: bool = False
) -> str:
    """Root causes first (each failure or error with its message), then the checks they
    blocked one line each, skips with their reasons inline, the passes, and the verdict.
    With `progress_shown` (every line was printed as its check finished) only the root causes
    and the verdict."""
    results = sorted(results, key=lambda r: CONSOLE_ORDER.index(r.status))
    lines: list[str] = []
    for r in results:
        if r.status in ("error", "failed", "xpassed"):
            body = ("    " + m for m in r.message.rstrip().splitlines())
            lines += [_line(r, WIDTHS), *body, ""]
        elif not progress_shown:
            lines.append(_line(r, WIDTHS))
    if progress_shown and lines:
        lines.insert(0, "Root causes:")
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    lines += [
        "",
        ", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" — {verdict(results, strict)}",
    ]
    return "\n".join(lines)
