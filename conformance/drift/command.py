"""`vllm-conformance drift DIST`: which vLLM releases a plugin's imports and overrides hold on.

Static: the plugin's source is read, never run, and compared with the shipped API index, so
the answer takes about a second and needs neither torch nor vLLM. Exit codes: 0 when they hold
on every selected release, 1 when some release breaks them, 2 on bad input, 4 when the shipped
index cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion

from conformance.drift.analysis import DriftReport, analyse, describe_releases
from conformance.drift.index import ApiIndex, IndexFileError, release_version
from conformance.drift.scan import PluginScan, scan_target
from conformance.target import Target, TargetError, resolve_target

EXIT_OK, EXIT_BROKEN, EXIT_USAGE, EXIT_SUITE = 0, 1, 2, 4


class DriftUsageError(ValueError):
    """Bad command-line input: exit code 2 with the message."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `drift` subcommand to `vllm-conformance`'s subparsers."""
    parser = subparsers.add_parser(
        "drift",
        help="which vLLM releases a plugin's imports and overrides hold on (static, no engine)",
    )
    parser.add_argument("distribution", help="installed distribution, project path or fixture")
    parser.add_argument(
        "--releases",
        metavar="A:B",
        help="indexed releases to judge: A:B, A: or :B (inclusive), or one release, judged "
        "as the newest indexed one at or below it (default: every indexed release)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--index", type=Path, help="an index file other than the shipped one")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Scan the plugin, compare it with the index and print the table (or JSON)."""
    try:
        index = ApiIndex.load(args.index)
    except IndexFileError as exc:
        return _error(str(exc), EXIT_USAGE if args.index else EXIT_SUITE)
    try:
        releases = select_releases(index, args.releases)
        target = resolve_target(args.distribution)
    except (DriftUsageError, TargetError) as exc:
        return _error(str(exc), EXIT_USAGE)
    scan = scan_target(target)
    report = analyse(scan, index, releases)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(render(target, scan, report, index))
    return EXIT_OK if report.holds_on == report.releases else EXIT_BROKEN


def _error(message: str, code: int) -> int:
    print(f"vllm-conformance drift: {message}", file=sys.stderr)
    return code


def select_releases(index: ApiIndex, spec: str | None) -> list[str]:
    """The indexed releases `spec` names (see `--releases`); DriftUsageError if none."""
    releases = list(index.releases)
    if not spec:
        return releases
    low, colon, high = spec.partition(":")
    if not colon:  # one release: judged as the newest indexed one at or below it
        low = high = index.release_for(spec) or spec
    try:
        lowest = release_version(low.strip() or releases[0])
        highest = release_version(high.strip() or releases[-1])
    except InvalidVersion:
        raise DriftUsageError(
            f"--releases {spec!r} is not A:B with A and B vLLM versions (e.g. 0.28.0:0.34.0)"
        ) from None
    first, last = release_version(releases[0]), release_version(releases[-1])
    if lowest > highest or lowest < first or highest > last:
        raise DriftUsageError(
            f"--releases {spec!r} is outside the index, which covers {releases[0]} to "
            f"{releases[-1]} ({describe_releases(releases)})"
        )
    chosen = [r for r in releases if lowest <= release_version(r) <= highest]
    if not chosen:
        raise DriftUsageError(f"--releases {spec!r} holds no indexed release ({releases})")
    return chosen


def _column(release: str) -> str:
    """`0.20.0` → `20`, `0.20.1` → `20.1`: short table headers."""
    parts = release.split(".")
    if parts[0] == "0":
        parts = parts[1:]
    if len(parts) > 1 and parts[-1] == "0":
        parts = parts[:-1]
    return ".".join(parts)


def render(target: Target, scan: PluginScan, report: DriftReport, index: ApiIndex) -> str:
    """The release x import table, the broken overrides and the verdict, as text."""
    imports = [
        (
            finding.label,
            ["-" if r in finding.missing_in else "+" for r in report.releases],
            finding.where
            + ("" if finding.runtime else " typing only" if finding.typing_only else " guarded"),
        )
        for finding in report.imports
    ]
    overrides = [
        (
            f"{override.cls.qualname.rpartition('.')[2]}.{override.method.name}",
            [
                "x" if r in override.problems else "+" if r in override.overrides_in else "."
                for r in report.releases
            ],
            f"{override.where} overrides {override.base}",
        )
        for override in report.overrides
    ]
    source = f" ({target.project_dir})" if target.project_dir else ""
    lines = [
        f"{target.name} {target.version or ''}{source}: {len(scan.files)} files, "
        f"{len(report.imports)} vllm imports, {len(report.overrides)} overrides",
        f"index: vLLM {describe_releases(list(index.releases))}; columns are releases 0.<column>"
        " (+ present/fits, - missing, x override does not fit, . not overridden there)",
        "",
    ]
    lines += _table(imports, overrides, [_column(r) for r in report.releases])
    lines += _override_problems(report)
    lines += [f"unreadable: {file}: {why}" for file, why in scan.unreadable.items()]
    holds = describe_releases(report.holds_on, report.releases)
    lines.append(
        f"The plugin's imports and overrides hold on releases {holds}."
        if holds
        else "The plugin's imports and overrides hold on none of the selected releases."
    )
    return "\n".join(lines)


Row = tuple[str, list[str], str]


def _table(imports: list[Row], overrides: list[Row], columns: list[str]) -> list[str]:
    """Both sections under one header, so that their columns line up."""
    if not imports and not overrides:
        return ["(the plugin imports nothing from vllm)"]
    width = max(len(label) for label, _, _ in [*imports, *overrides, ("overrides", [], "")])
    cells = [max(len(c), 1) for c in columns]
    out = []
    for title, rows in (("imports", imports), ("overrides", overrides)):
        if rows:
            header = " ".join(c.rjust(w) for c, w in zip(columns, cells, strict=True))
            out.append(f"{title.ljust(width)}  {header}")
        for label, marks, note in rows:
            row = " ".join(m.rjust(w) for m, w in zip(marks, cells, strict=True))
            out.append(f"{label.ljust(width)}  {row}  {note}")
    return out


def _override_problems(report: DriftReport) -> list[str]:
    """Why each broken override does not fit, once per run of releases with the same reason."""
    lines = []
    for override in report.overrides:
        runs: dict[str, list[str]] = {}
        for release in override.problems:
            runs.setdefault(override.describe(release), []).append(release)
        for text, releases in runs.items():
            lines.append(f"  on {describe_releases(releases, report.releases)}: {text}")
    return ["override problems:", *lines] if lines else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vllm-conformance")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["drift", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
