"""(a) Discovery of every plugin group in a fresh process, at 100 / 1000 / 5000 distributions.

Synthetic distributions are written as `*.dist-info` folders into a temporary folder put on
`sys.path` (PYTHONPATH) beside the interpreter's real ones; one in `--plugin-every` declares
plugins in the general, platform, IO processor, stat logger and logits processor groups.
Each contender runs in its own fresh interpreter, `--repeat` times (medians reported), and
times two phases separately:

  raw-scan             import importlib.metadata | one bare `entry_points()` (the floor);
  raw-scan-venv        the same floor in the vLLM virtualenv's interpreter;
  per-group            import importlib.metadata | one `entry_points(group=...)` per group:
                       vLLM's pattern, simulated in the reference's interpreter;
  reference            mount the reference + `import vllm.plugins` | load every group;
  vllm                 `import vllm.plugins` of real vLLM 0.32 (`--vllm-python`) | load
                       every group with vLLM's own functions.

"Load every group" is, in both engines, what the engine does at start-up:
`load_plugins_by_group` for general (vLLM's LoRA resolvers are general plugins), platform,
IO processor and stat logger; `load_endpoint_plugins()` (opt-in: without `VLLM_PLUGINS` it
only discovers); and the logits processors' own discovery (`entry_points(group=...)` in vLLM,
`discover_entry_points` in the reference) followed by `ep.load()` of each. Plugin modules
are imported (`ep.load()`) but not called. The import phase is reported, but it is (b)'s
business: real vLLM's `import vllm.plugins` imports torch.

    python benchmarks/bench_discovery.py --vllm-python /tmp/vllm-cpu-venv/bin/python --repeat 7

Targets (ratios within one run, at 1000 distributions): reference discovery within 1.5x of
one raw scan, and at least 4x faster than vLLM's loader.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import IMG, RESULTS, ROOT, machine, markdown_table, save_plot, write_json

PLUGIN_GROUPS = (
    "vllm.general_plugins",
    "vllm.platform_plugins",
    "vllm.io_processor_plugins",
    "vllm.stat_logger_plugins",
    "vllm.logits_processors",
)
ALL_GROUPS = (*PLUGIN_GROUPS[:4], "vllm.endpoint_plugins", "vllm.logits_processors")

# Each contender: (which interpreter, setup code, discovery code). The discovery code leaves
# `found = {group: [names]}` behind, so the run can check both engines saw the same plugins.
RAW = ("import importlib.metadata as m", "eps = m.entry_points()\nfound = {}")
PER_GROUP = (
    "import importlib.metadata as m",
    f"found = {{g: [e.name for e in m.entry_points(group=g)] for g in {ALL_GROUPS!r}}}",
)
# The same calls, spelled for each engine's module layout.
LOAD_ALL = """
found = {{}}
for g in (p.DEFAULT_PLUGINS_GROUP, p.PLATFORM_PLUGINS_GROUP, p.IO_PROCESSOR_PLUGINS_GROUP,
          p.STAT_LOGGER_PLUGINS_GROUP):
    found[g] = list(p.load_plugins_by_group(g))
found[p.ENDPOINT_PLUGINS_GROUP] = [type(e).__name__ for e in p.load_endpoint_plugins()]
eps = {logits_discovery}
found["vllm.logits_processors"] = [e.name for e in eps if e.load() is not None]
"""
REFERENCE = (
    "from reference.surface import mount\nmount()\nimport vllm.plugins as p",
    LOAD_ALL.format(logits_discovery="p.discover_entry_points(p.LOGITSPROCS_GROUP)"),
)
# vLLM 0.32 configures its log handler when an engine starts (`configure_logging`), not on
# import; the setup applies the same default configuration, so that vLLM, like the reference,
# logs the plugins it finds (INFO for every group but the general one) in the timed phase.
VLLM = (
    "import vllm.plugins as p, vllm.logger\nvllm.logger._configure_vllm_root_logger()\n"
    "from importlib.metadata import entry_points",
    LOAD_ALL.format(logits_discovery="entry_points(group='vllm.logits_processors')"),
)
# vLLM's own general plugin `lora_hf_hub_resolver` imports huggingface_hub's HfApi when it is
# loaded; importing that in the setup leaves the loader's own pattern in the timed phase.
VLLM_HUB_WARM = (VLLM[0] + "\nimport vllm.transformers_utils.repo_utils", VLLM[1])

HARNESS = """
import gc, json, resource, sys, time
t0 = time.perf_counter()
exec(compile({setup!r}, "<setup>", "exec"))
t1 = time.perf_counter()
exec(compile({discover!r}, "<discover>", "exec"))
t2 = time.perf_counter()
print("BENCH-RESULT " + json.dumps({{
    "import_s": t1 - t0, "discover_s": t2 - t1,
    "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "found": found,
}}))
"""

SYNTH = "synth"  # prefix of every synthetic entry-point name, to count them apart from real ones


def make_site(root: Path, n: int, plugin_every: int) -> int:
    """Write `n` distributions under `root`; every `plugin_every`-th declares vLLM plugins.

    Returns the number of plugin-declaring distributions.
    """
    plugins = 0
    for i in range(n):
        name = f"synthetic_dist_{i:05d}"
        dist_info = root / f"{name}-1.0.dist-info"
        dist_info.mkdir(parents=True)
        (dist_info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n", encoding="utf-8"
        )
        # Most real distributions declare console scripts or other tools' entry points.
        lines = ["[console_scripts]", f"{name} = {name}:main", "", "[other.tool]", "x = y:z"]
        if i % plugin_every == 0:
            plugins += 1
            module = f"synthetic_plugin_{i:05d}"
            (root / f"{module}.py").write_text(
                "def general():\n    pass\n\ndef detect():\n    return None\n\n"
                "class Thing:\n    pass\n",
                encoding="utf-8",
            )
            lines += [
                "",
                "[vllm.general_plugins]",
                f"{SYNTH}_g{i} = {module}:general",
                "[vllm.platform_plugins]",
                f"{SYNTH}_p{i} = {module}:detect",
                "[vllm.io_processor_plugins]",
                f"{SYNTH}_io{i} = {module}:detect",
                "[vllm.stat_logger_plugins]",
                f"{SYNTH}_s{i} = {module}:Thing",
                "[vllm.logits_processors]",
                f"{SYNTH}_lp{i} = {module}:Thing",
            ]
        (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return plugins


def measure(python: str, site: Path, contender: tuple[str, str], mount: bool) -> dict[str, Any]:
    """One fresh interpreter: time the setup and the discovery, report what it found."""
    setup, discover = contender
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_PLUGINS", "PYTHONPATH")}
    # The reference needs this repository on the path; the real vLLM must not see it first.
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)] if mount else [str(site)])
    env.update({"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"})
    proc = subprocess.run(
        [python, "-c", HARNESS.format(setup=setup, discover=discover)],
        env=env,
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH-RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{python} failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("BENCH-RESULT ") :])
    # Both engines log the plugins they find (INFO for every group but the general one).
    result["log_lines"] = len(proc.stdout.splitlines()) - 1 + len(proc.stderr.splitlines())
    return result


def synthetic_counts(found: dict[str, list[str]]) -> dict[str, int]:
    return {g: sum(n.startswith(SYNTH) for n in names) for g, names in found.items()}


def run(
    sizes: list[int], repeat: int, plugin_every: int, vllm_python: str | None
) -> list[dict[str, Any]]:
    contenders: dict[str, tuple[str, tuple[str, str], bool]] = {
        "raw-scan": (sys.executable, RAW, False),
        "per-group": (sys.executable, PER_GROUP, False),
        "reference": (sys.executable, REFERENCE, True),
    }
    if vllm_python:
        contenders["raw-scan-venv"] = (vllm_python, RAW, False)
        contenders["vllm"] = (vllm_python, VLLM, False)
        contenders["vllm-hub-warm"] = (vllm_python, VLLM_HUB_WARM, False)
    rows: list[dict[str, Any]] = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="bench-site-") as tmp:
            site = Path(tmp)
            plugins = make_site(site, n, plugin_every)
            # Byte-compile the plugin modules now, so no contender pays for compiling them.
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(site)], check=True)
            samples: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
            # Interleave the contenders, so a burst of load on the shared machine hits all.
            for _ in range(repeat):
                for label, (python, contender, mount) in contenders.items():
                    samples[label].append(measure(python, site, contender, mount))
            for label, runs in samples.items():
                rows.append(
                    {
                        "distributions": n,
                        "plugin_distributions": plugins,
                        "variant": label,
                        "python": contenders[label][0],
                        "runs": len(runs),
                        "import_ms": statistics.median(r["import_s"] for r in runs) * 1000,
                        "discover_ms": statistics.median(r["discover_s"] for r in runs) * 1000,
                        "total_ms": statistics.median(r["import_s"] + r["discover_s"] for r in runs)
                        * 1000,
                        "discover_ms_samples": [r["discover_s"] * 1000 for r in runs],
                        "peak_rss_mib": statistics.median(r["peak_rss_kib"] for r in runs) / 1024,
                        "synthetic_found": synthetic_counts(runs[0]["found"]),
                        "found": {g: len(names) for g, names in runs[0]["found"].items()},
                        "log_lines": runs[0]["log_lines"],
                    }
                )
    add_ratios(rows)
    return rows


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Ratios to the floor of the same interpreter, and the reference vs vLLM's loader."""
    by = {(r["distributions"], r["variant"]): r for r in rows}
    for r in rows:
        n = r["distributions"]
        venv = r["variant"].startswith("vllm") or r["variant"] == "raw-scan-venv"
        floor_label = "raw-scan-venv" if venv else "raw-scan"
        floor = by[(n, floor_label)]["discover_ms"]
        r["x_raw_scan"] = r["discover_ms"] / floor
        r["total_x_raw_scan"] = r["total_ms"] / by[(n, floor_label)]["total_ms"]
        if r["variant"] == "reference" and (n, "vllm") in by:
            r["vllm_over_reference"] = by[(n, "vllm")]["discover_ms"] / r["discover_ms"]
            r["vllm_hub_warm_over_reference"] = (
                by[(n, "vllm-hub-warm")]["discover_ms"] / r["discover_ms"]
            )


def table(rows: list[dict[str, Any]]) -> str:
    out = []
    for r in rows:
        vs = r.get("vllm_over_reference")
        vs2 = r.get("vllm_hub_warm_over_reference")
        out.append(
            [
                r["distributions"],
                r["variant"],
                f"{r['import_ms']:.1f}",
                f"{r['discover_ms']:.1f}",
                f"{r['x_raw_scan']:.2f}",
                f"{r['total_ms']:.1f}",
                f"{r['total_x_raw_scan']:.2f}",
                f"{vs:.1f}x ({vs2:.1f}x)" if vs else "",
                f"{r['peak_rss_mib']:.1f}",
            ]
        )
    return markdown_table(
        [
            "dists",
            "variant",
            "import ms",
            "discovery ms",
            "x raw scan",
            "import + discovery ms",
            "x raw scan (total)",
            "vLLM ÷ reference (hub warm)",
            "peak RSS MiB",
        ],
        out,
        "rlrrrrrrr",
    )


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    def draw(plt: Any) -> None:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
        styles = {
            "raw-scan": ("floor: one entry_points() scan", "k", "--"),
            "raw-scan-venv": ("floor, vLLM venv interpreter", "grey", ":"),
            "per-group": ("one scan per group (simulated)", "tab:orange", "-."),
            "reference": ("reference", "tab:blue", "-"),
            "vllm": ("vLLM 0.32 loader", "tab:red", "-"),
            "vllm-hub-warm": ("vLLM 0.32, huggingface_hub pre-imported", "tab:purple", "--"),
        }
        for label, (name, color, ls) in styles.items():
            pts = [r for r in rows if r["variant"] == label]
            if not pts:
                continue
            xs = [r["distributions"] for r in pts]
            ax.plot(xs, [r["discover_ms"] for r in pts], ls, color=color, marker="o", label=name)
            if label not in ("raw-scan", "raw-scan-venv"):
                ax2.plot(
                    xs, [r["x_raw_scan"] for r in pts], ls, color=color, marker="o", label=name
                )
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="synthetic distributions installed",
            ylabel="discovery, median ms",
            title="Discovery of every plugin group",
        )
        ax2.axhline(1.5, color="tab:blue", lw=0.8, ls=":", label="target 1.5x (reference)")
        ax2.axhline(1.0, color="k", lw=0.8, ls="--")
        ax2.set(
            xscale="log",
            xlabel="synthetic distributions installed",
            ylabel="x one raw scan (same interpreter)",
            title="Relative to the floor",
        )
        ax.legend(fontsize=8)
        ax2.legend(fontsize=8)
        fig.tight_layout()

    save_plot(path, draw)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--repeat", type=int, default=7, help="fresh processes per contender")
    parser.add_argument("--plugin-every", type=int, default=20)
    parser.add_argument("--vllm-python", help="python of a virtualenv with vllm-cpu 0.32")
    parser.add_argument("--json", type=Path, default=RESULTS / "discovery.json")
    parser.add_argument("--png", type=Path, default=IMG / "discovery.png")
    args = parser.parse_args()
    if not args.vllm_python:
        print("NOTE: no --vllm-python given: real vLLM's loader is not measured", file=sys.stderr)
    before = machine()
    rows = run(args.sizes, args.repeat, args.plugin_every, args.vllm_python)
    print(table(rows))
    problems = []
    for r in rows:
        if r["variant"] in ("reference", "vllm", "vllm-hub-warm", "per-group"):
            want = r["plugin_distributions"]
            got = {
                g: c
                for g, c in r["synthetic_found"].items()
                if c != want and g != "vllm.endpoint_plugins"
            }
            if got or len(r["synthetic_found"]) < len(PLUGIN_GROUPS):
                problems.append(f"{r['variant']} at {r['distributions']}: {r['synthetic_found']}")
    for p in problems:
        print(f"MISMATCH (expected {args.plugin_every}-th dists in every group): {p}")
    targets = {}
    for r in rows:
        if r["variant"] == "reference" and r["distributions"] == 1000:
            targets["x_raw_scan_at_1000"] = r["x_raw_scan"]
            targets["within_1_5x_raw_scan"] = r["x_raw_scan"] <= 1.5
            if "vllm_over_reference" in r:
                targets["vllm_over_reference_at_1000"] = r["vllm_over_reference"]
                targets["at_least_4x_faster_than_vllm"] = r["vllm_over_reference"] >= 4
                targets["vllm_hub_warm_over_reference_at_1000"] = r["vllm_hub_warm_over_reference"]
    print(f"targets: {targets}")
    write_json(
        args.json,
        {
            "machine_before": before,
            "loadavg_after": list(os.getloadavg()),
            "repeat": args.repeat,
            "plugin_every": args.plugin_every,
            "targets": targets,
            "mismatches": problems,
            "rows": rows,
        },
    )
    plot(rows, args.png)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
