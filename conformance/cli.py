"""`vllm-conformance`: certify a plugin, list and explain the checks, certify the fixtures."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from conformance import __version__
from conformance.checks import load_catalog
from conformance.overlay import fixture_names
from conformance.probe import ENGINES
from conformance.report import (
    build_report,
    engine_info,
    plugin_subject,
    render_console,
    write_reports,
)
from conformance.runner import read_expected_failures, run_checks, verdict
from conformance.target import TargetError, resolve_target

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A command-line mistake: exit code 2 with the message."""


def _expected_failures(path: str | None) -> dict[str, str]:
    try:
        return read_expected_failures(path)
    except ValueError as exc:
        raise UsageError(f"--expected-failures: {exc}") from None


def _certify(args: argparse.Namespace) -> int:
    try:
        target = resolve_target(args.distribution)
    except TargetError as exc:
        raise UsageError(str(exc)) from None
    expected = _expected_failures(args.expected_failures)
    started = time.perf_counter()
    results = run_checks(target, args.engine, expected)
    print(f"{target.name} {target.version or ''} on engine {args.engine}".replace("  ", " "))
    print(render_console(results))
    print(f"({time.perf_counter() - started:.1f} s)")
    if args.report_dir:
        from conformance.context import Session

        contract = Session(target, args.engine).contract
        report = build_report(plugin_subject(target), engine_info(args.engine, contract), results)
        json_path, md_path = write_reports(report, args.report_dir)
        print(f"reports: {json_path} {md_path}")
    return EXIT_OK if verdict(results) == "certified" else EXIT_FAILED


def _checks(args: argparse.Namespace) -> int:
    catalog = load_catalog()
    if args.json:
        rows = [
            {
                "id": c.id,
                "group": c.group,
                "level": c.level,
                "title": c.title,
                "since": c.since,
                "until": c.until,
            }
            for c in catalog.values()
        ]
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    width = max(len(c.id) for c in catalog.values())
    for c in catalog.values():
        print(f"{c.id.ljust(width)}  {c.level:<11}  {c.title}")
    return EXIT_OK


def _explain(args: argparse.Namespace) -> int:
    catalog = load_catalog()
    check = catalog.get(args.check_id)
    if check is None:
        raise UsageError(
            f"No check {args.check_id!r}; `vllm-conformance checks` lists the {len(catalog)} ids."
        )
    versions = f"contract {check.since or 'any'} … {check.until or 'current'}"
    print(f"{check.id} ({check.level}; group {check.group}; {versions})\n")
    print(f"Rule: {check.title}.\n\n{check.doc}\n\nFix: {check.fix}")
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    """Certify every bundled good fixture and print one table."""
    rows = [("fixture", "checks", "passed", "failed", "skipped", "verdict", "seconds")]
    all_ok = True
    for name in fixture_names():
        started = time.perf_counter()
        results = run_checks(resolve_target(name), args.engine)
        count = {s: sum(r.status == s for r in results) for s in ("passed", "failed", "skipped")}
        outcome = verdict(results)
        all_ok = all_ok and outcome == "certified"
        rows.append(
            (
                name,
                str(len(results)),
                str(count["passed"]),
                str(count["failed"]),
                str(count["skipped"]),
                outcome,
                f"{time.perf_counter() - started:.1f}",
            )
        )
    print(f"vllm-conformance {__version__}: bundled fixtures certified on the {args.engine} engine")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK if all_ok else EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vllm-conformance", description="Certify vLLM plugins and engines."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    certify = sub.add_parser("certify", help="run every applicable check on a plugin")
    certify.add_argument("distribution", help="installed distribution, project path or fixture")
    certify.add_argument("--engine", choices=ENGINES, default="reference")
    certify.add_argument("--report-dir", type=Path, help="write the JSON and Markdown reports here")
    certify.add_argument("--expected-failures", help="TOML/JSON table of check id -> reason")
    certify.set_defaults(func=_certify)

    checks = sub.add_parser("checks", help="list the check catalog")
    checks.add_argument("--json", action="store_true")
    checks.set_defaults(func=_checks)

    explain = sub.add_parser("explain", help="explain one check: its rule, why, and the fix")
    explain.add_argument("check_id")
    explain.set_defaults(func=_explain)

    demo = sub.add_parser("demo", help="certify every bundled good fixture on one engine")
    demo.add_argument("--engine", choices=ENGINES, default="reference")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"vllm-conformance {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
