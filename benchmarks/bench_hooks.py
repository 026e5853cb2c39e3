"""(e) Per-step overhead of plugin hooks in the reference engine.

The tiny Llama (`fixtures/generators/checkpoint.py`), 8 prompts decoded together greedily
(`ignore_eos=True`, `--max-tokens` each, `max_num_seqs=8`, `seed=0`, float32, the `uni`
executor, `OMP_NUM_THREADS=1`). Per mode, one fresh process (`--repeat` of them) builds a
baseline engine, then makes the plugin visible and builds a second engine with it; both get
the same batch (`--rounds` batches after a warm-up) and are stepped alternately, one step
each, so a burst of load on the shared machine hits both sides of a step pair alike:

  lp-v2          Model Runner V2 (`VLLM_USE_V2_MODEL_RUNNER=1`); the fixture
                 `dummy_logits_processor` installed as an entry point (an overlay put on
                 `sys.path` after the baseline engine is built);
  lp-v1          V1 runner (`VLLM_USE_V2_MODEL_RUNNER=0`); the fixture's
                 `DummyLogitsProcessorV1` passed as `logits_processors=[FQCN]`;
  stat-logger    `AsyncLLM` (default stat loggers on); the fixture
                 `vllm_add_dummy_stat_logger` installed as an entry point.

Logits processors run two workloads: `idle` (installed, no request sets `target_token`: the
plugin's fast path) and `active` (every request sets `extra_args={"target_token": 7}`; the
baseline engine ignores it).

Per step it records the time of `EngineCore.step()` (schedule, model, logits processors,
sampling) or, for `AsyncLLM`, of one engine-loop turn (from `step()` to the end of
`StatLoggerManager.record`), plus the time of the stage the hook lives in (`sample()`, where
logits processors are applied; `StatLoggerManager.record`) and the time inside the plugin's
own methods. Step k of the plugin engine is paired with step k of the baseline; the table
gives the mean step times, the median delta per pair in µs with its 95% confidence interval
(what the machine's noise lets the end-to-end figure resolve), and the stage and in-plugin
times, which resolve microseconds.

    python benchmarks/bench_hooks.py --repeat 2 --rounds 8

Writes `benchmarks/results/hooks.json` and `docs/img/hooks.png`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import (
    IMG,
    RESULTS,
    ROOT,
    machine,
    markdown_table,
    runner_command,
    runner_result,
    save_plot,
    write_json,
)

# The same eight prompts as the engine benchmark (d), so that the runs compare.
from bench_engine import PROMPTS

V1_FQCN = "dummy_logits_processor:DummyLogitsProcessorV1"
TARGET = 7

#: mode -> how its child process builds the baseline and the plugin engine.
MODES: dict[str, dict[str, Any]] = {
    "lp-v2": {
        "engine": "llm",
        "env": {"VLLM_USE_V2_MODEL_RUNNER": "1"},
        "overlay": "dummy_logits_processor",  # added to sys.path after the baseline is built
        "hooks": ["dummy_logits_processor:DummyLogitsProcessor"],
        "workloads": ["idle", "active"],
    },
    "lp-v1": {
        "engine": "llm",
        "env": {"VLLM_USE_V2_MODEL_RUNNER": "0"},
        "source": "dummy_logits_processor",  # importable, not installed (see test_engine_plugins)
        "plugin_kwargs": {"logits_processors": [V1_FQCN]},
        "hooks": [V1_FQCN],
        "workloads": ["idle", "active"],
    },
    "stat-logger": {
        "engine": "async",
        "overlay": "vllm_add_dummy_stat_logger",
        "hooks": ["dummy_stat_logger.dummy_stat_logger:DummyStatLogger"],
        "workloads": ["default"],
    },
}

#: Plugin methods that run during steps (wrapped to time the plugin's own code).
HOOK_METHODS = ("apply", "apply_staged_writes", "add_request", "update_state", "record")


def measure(mode: str, shared: dict[str, Any], overlay_root: Path) -> dict[str, Any]:
    """One fresh process for `mode`: baseline and plugin engines, alternating rounds."""
    from conformance.overlay import Overlay, fixtures_root

    spec = MODES[mode]
    cfg = {**shared, **spec, "hook_methods": HOOK_METHODS, "target": TARGET}
    path = [str(ROOT)]
    if spec.get("overlay"):
        where = Path(tempfile.mkdtemp(dir=overlay_root))
        cfg["overlay_path"] = Overlay(where).add_fixture(spec["overlay"]).path
    if spec.get("source"):
        path.insert(0, str(fixtures_root() / spec["source"]))
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_PLUGINS", "PYTHONPATH")}
    env.update({"PYTHONPATH": os.pathsep.join(path), "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"})
    env.update(spec.get("env", {}))
    proc = subprocess.run(
        runner_command(sys.executable, "hooks_process", json.dumps(cfg)),
        env=env,
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    result = runner_result(proc.stdout)
    if proc.returncode != 0 or result is None:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"mode {mode} failed (rc={proc.returncode}):\n{tail}")
    return result


def median_ci(values: list[float]) -> tuple[float, float]:
    """A distribution-free 95% confidence interval of the median (binomial order statistics):
    what an end-to-end delta can resolve under the machine's noise."""
    ordered = sorted(values)
    n = len(ordered)
    half = 1.96 * math.sqrt(n) / 2
    lo = max(math.floor(n / 2 - half), 0)
    hi = min(math.ceil(n / 2 + half), n - 1)
    return ordered[lo], ordered[hi]


def summarize(mode: str, workload: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Pair step k of the plugin engine with step k of the baseline (same round, same
    process); medians and means over the pairs."""
    async_loop = MODES[mode]["engine"] == "async"
    pairs = []
    for p_i, run in enumerate(runs):
        by_key: dict[tuple[Any, ...], dict[str, list[float]]] = {}
        for side, w, rnd, k, dt, hook, stage in run["steps"]:
            if w == workload:
                by_key.setdefault((rnd, k), {})[side] = [dt, hook, stage]
        pairs += [(p_i, v["base"], v["plugin"]) for v in by_key.values() if len(v) == 2]
    base = [b[0] for _, b, _ in pairs]
    plug = [p[0] for _, _, p in pairs]
    deltas = [p[0] - b[0] for _, b, p in pairs]
    stage_deltas = [p[2] - b[2] for _, b, p in pairs]
    med, mean = statistics.median, statistics.fmean
    q = statistics.quantiles(deltas, n=4)
    lo, hi = median_ci(deltas)
    forced = [run["forced"] for run in runs]
    return {
        "scenario": f"{mode} {workload}" if workload != "default" else mode,
        "step": "loop turn: step() to end of record()" if async_loop else "EngineCore.step()",
        "stage": "StatLoggerManager.record()" if async_loop else "sample()",
        "pairs": len(pairs),
        "processes": len(runs),
        "base_mean_ms": mean(base) * 1000,
        "plugin_mean_ms": mean(plug) * 1000,
        "base_median_ms": med(base) * 1000,
        "delta_mean_us": (mean(plug) - mean(base)) * 1e6,
        "delta_median_us": med(deltas) * 1e6,
        "delta_iqr_us": [q[0] * 1e6, q[-1] * 1e6],
        "delta_median_ci95_us": [lo * 1e6, hi * 1e6],
        "delta_pct": med(deltas) / med(base) * 100,
        "stage_base_us": med(b[2] for _, b, _ in pairs) * 1e6,
        "stage_plugin_us": med(p[2] for _, _, p in pairs) * 1e6,
        "stage_delta_us": med(stage_deltas) * 1e6,
        "hook_us_per_step": mean(p[1] for _, _, p in pairs) * 1e6,
        "plugin_forced_target": all(all(f.get(f"plugin {workload}", [])) for f in forced),
        "base_forced_target": any(any(f.get(f"base {workload}", [])) for f in forced),
        # Every pair's delta, in µs (rounded): the plot's distribution.
        "delta_samples_us": [round(d * 1e6, 1) for d in deltas],
        "info": [run["info"] for run in runs],
    }


def table(rows: list[dict[str, Any]]) -> str:
    out = []
    for r in rows:
        lo, hi = r["delta_median_ci95_us"]
        out.append(
            [
                r["scenario"],
                r["step"],
                r["pairs"],
                f"{r['base_mean_ms']:.2f}",
                f"{r['plugin_mean_ms']:.2f}",
                f"{r['delta_mean_us']:+.0f}",
                f"{r['delta_median_us']:+.0f} ({lo:+.0f} … {hi:+.0f})",
                f"{r['delta_pct']:+.1f}%",
                f"{r['stage']}: {r['stage_base_us']:.0f} → {r['stage_plugin_us']:.0f}",
                f"{r['hook_us_per_step']:.1f}",
            ]
        )
    return markdown_table(
        [
            "scenario",
            "step timed",
            "step pairs",
            "baseline mean ms/step",
            "plugin mean ms/step",
            "Δ of means µs",
            "Δ per pair µs, median (95% CI)",
            "Δ median %",
            "stage µs/step, median (base → plugin)",
            "inside the plugin µs/step",
        ],
        out,
        "llrrrrrrlr",
    )


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    def draw(plt: Any) -> None:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.4))
        names = [r["scenario"] for r in rows]
        xs = list(range(len(rows)))
        ax.boxplot(
            [r["delta_samples_us"] for r in rows], positions=xs, widths=0.5, showfliers=False
        )
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(xs, names, fontsize=8)
        ax.set(
            ylabel="plugin - baseline, µs per step",
            title="Δ step time per step pair (whiskers 1.5 IQR, no outliers)",
        )
        width = 0.27
        bars = [
            ("delta_median_us", "Δ step, median of pairs", "tab:orange"),
            ("stage_delta_us", "Δ sample() / record(), median", "tab:purple"),
            ("hook_us_per_step", "inside the plugin's methods", "tab:green"),
        ]
        # The end-to-end delta carries its 95% confidence interval: the noise it cannot resolve.
        ci = [
            [r["delta_median_us"] - r["delta_median_ci95_us"][0] for r in rows],
            [r["delta_median_ci95_us"][1] - r["delta_median_us"] for r in rows],
        ]
        for j, (key, label, color) in enumerate(bars):
            ax2.bar(
                [x + (j - 1) * width for x in xs],
                [r[key] for r in rows],
                width,
                color=color,
                label=label + (" (95% CI)" if j == 0 else ""),
                yerr=ci if j == 0 else None,
                capsize=3,
            )
        ax2.axhline(0, color="k", lw=0.8)
        ax2.set_xticks(xs, names, fontsize=8)
        ax2.set(ylabel="µs per step", title="Overhead per step")
        ax2.legend(fontsize=8)
        fig.tight_layout()

    save_plot(path, draw)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="fresh processes per mode")
    parser.add_argument("--rounds", type=int, default=8, help="measured batches per process")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--modes", nargs="+", default=list(MODES), choices=list(MODES), metavar="MODE"
    )
    parser.add_argument("--json", type=Path, default=RESULTS / "hooks.json")
    parser.add_argument("--png", type=Path, default=IMG / "hooks.png")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from fixtures.generators.checkpoint import tiny_llama

    shared = {
        "model": str(tiny_llama()),
        "prompts": PROMPTS,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "common": {
            "dtype": "float32",
            "seed": 0,
            "max_model_len": 256,
            "max_num_seqs": len(PROMPTS),
            "distributed_executor_backend": "uni",
        },
    }
    before = machine()
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in args.modes}
    with tempfile.TemporaryDirectory(prefix="bench-hooks-") as tmp:
        for i in range(args.repeat):
            for mode in args.modes:
                runs[mode].append(measure(mode, shared, Path(tmp)))
                print(f"# process {i + 1}, {mode}: done", file=sys.stderr)
    rows = [summarize(m, w, runs[m]) for m in args.modes for w in MODES[m]["workloads"]]
    print(table(rows))
    problems = []
    for r in rows:
        if r["scenario"].endswith("active") and not r["plugin_forced_target"]:
            problems.append(f"{r['scenario']}: the plugin engine did not force the target token")
        if r["base_forced_target"]:
            problems.append(f"{r['scenario']}: the baseline engine forced the target token")
    for p in problems:
        print(f"WARNING: {p}")
    write_json(
        args.json,
        {
            "machine_before": before,
            "loadavg_after": list(os.getloadavg()),
            "config": {k: v for k, v in shared.items() if k != "prompts"},
            "repeat": args.repeat,
            "problems": problems,
            "rows": rows,
            # Per process: whether the engines forced the target, which loggers they built and
            # how many steps were timed (the per-pair deltas are in each row).
            "runs": {
                m: [
                    {"forced": r["forced"], "info": r["info"], "steps": len(r["steps"])} for r in rs
                ]
                for m, rs in runs.items()
            },
        },
    )
    plot(rows, args.png)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
