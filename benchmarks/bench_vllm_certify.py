"""(g) `certify --engine vllm` per good fixture, against a bare vLLM start measured beside it.

The goal: certifying any good fixture on real vLLM takes at most 1.5x what starting vLLM
itself takes here. Both are measured in one run, interleaved fixture by fixture (a bare start,
then that fixture's certification), so that load on the shared machine hits both alike:

  bare      a fresh `--vllm-python` process: `from vllm import LLM`, `LLM(tiny Llama,
            enforce_eager=True, dtype="float32")` (the checkpoint the harness generates,
            cached), a 1-token `generate`, shutdown: the command's wall time, and inside it
            the import and the `LLM(...)` + first-token seconds.
  certify   `python -m conformance.cli certify FIXTURE --engine vllm --report-dir DIR` in the
            same interpreter (`bench_certify.certify`): wall time, verdict, per-check seconds.

The ratio is certify / bare of the same fixture's pair. The load average is recorded before
each command. Writes `benchmarks/results/vllm-certify.json` and prints the Markdown table that
docs/benchmarks.md section (g) shows; `--render-only` prints it again from the JSON.

    python benchmarks/bench_vllm_certify.py --vllm-python /work/vllm32/bin/python
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, machine, markdown_table, runner_command, runner_result, write_json
from bench_certify import certify, child_env

JSON = RESULTS / "vllm-certify.json"
#: The goal: a certification costs at most this many bare vLLM starts.
TARGET_RATIO = 1.5


def bare_start(python: str, timeout: int) -> dict[str, Any]:
    """One bare vLLM start in a fresh process, from an empty directory."""
    with tempfile.TemporaryDirectory(prefix="bench-bare-") as workdir:
        started = time.perf_counter()
        proc = subprocess.Popen(
            runner_command(python, "bare_vllm_start"),
            cwd=workdir,
            env=child_env("vllm"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            wall = time.perf_counter() - started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # engine processes it may have left
            proc.wait()
    inner = runner_result(out)
    if proc.returncode != 0 or inner is None:
        raise RuntimeError(f"bare vLLM start failed:\n{(out + err)[-3000:]}")
    return {"wall_s": wall, **inner}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Bare start, then certification, per fixture (`--repeat` rounds)."""
    from conformance.overlay import fixture_names

    fixtures = args.fixture or fixture_names()
    report: dict[str, Any] = {"machine": machine(), "python": args.vllm_python}
    report |= {"target_ratio": TARGET_RATIO, "fixtures": fixtures, "samples": []}
    started = time.perf_counter()
    for round_ in range(args.repeat):
        for fixture in fixtures:
            sample: dict[str, Any] = {"fixture": fixture, "round": round_}
            sample["load_before_bare"] = os.getloadavg()[0]
            sample["bare"] = bare_start(args.vllm_python, args.timeout)
            sample["load_before_certify"] = os.getloadavg()[0]
            sample["certify"] = certify(args.vllm_python, "vllm", fixture, args.timeout)
            sample["ratio"] = sample["certify"]["wall_s"] / sample["bare"]["wall_s"]
            report["samples"].append(sample)
            print(
                f"# {fixture}: bare {sample['bare']['wall_s']:.1f} s, certify "
                f"{sample['certify']['wall_s']:.1f} s ({sample['certify']['verdict']}), "
                f"ratio {sample['ratio']:.2f}, load {sample['load_before_certify']:.1f}",
                file=sys.stderr,
            )
    report["bench_wall_s"] = time.perf_counter() - started
    report["loadavg_after"] = list(os.getloadavg())
    worst = max(s["ratio"] for s in report["samples"])
    report["worst_ratio"] = worst
    report["target_met"] = worst <= TARGET_RATIO
    return report


def table(report: dict[str, Any]) -> str:
    """One row per measured pair: the bare start, the certification, their ratio."""
    rows = []
    for s in report["samples"]:
        c = s["certify"]
        rows.append(
            [
                f"`{s['fixture']}`",
                f"{s['bare']['wall_s']:.1f}",
                f"{c['wall_s']:.1f}",
                f"**{s['ratio']:.2f}**",
                c["verdict"],
                f"{s['load_before_bare']:.1f} / {s['load_before_certify']:.1f}",
            ]
        )
    headers = [
        "fixture",
        "bare LLM start s",
        "certify s",
        "ratio",
        "verdict",
        "load (bare / certify)",
    ]
    met = "met" if report["target_met"] else "NOT met"
    foot = (
        f"\nWorst ratio {report['worst_ratio']:.2f} (goal: at most {report['target_ratio']}, "
        f"{met}); run of {report['machine']['date']}, {report['machine']['cpus']} CPUs, "
        f"{report['bench_wall_s'] / 60:.0f} min."
    )
    return markdown_table(headers, rows, "lrrrlr") + "\n" + foot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-python", default="/work/vllm32/bin/python")
    parser.add_argument("--fixture", action="append", help="only this fixture (repeatable)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--timeout", type=int, default=900, help="seconds per command")
    parser.add_argument("--json", type=Path, default=JSON)
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args(argv)
    if args.render_only:
        report = json.loads(args.json.read_text(encoding="utf-8"))
    else:
        report = measure(args)
        write_json(args.json, report)
    print(table(report))
    return 0 if report["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
