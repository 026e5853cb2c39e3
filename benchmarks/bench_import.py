"""(b) Import cost of the plugin surface: the reference (mounted) vs real vLLM 0.32.

Each row imports, in a fresh interpreter (`--repeat` processes, medians), one module a
plugin typically imports (or all of them together), and reports:

  import ms      wall time of the import statements (for the reference, `mount()` included);
  peak RSS MiB   `ru_maxrss` of the process after the import;
  modules        how many modules the import added to `sys.modules`;
  heavy          which of torch / transformers / numpy the import pulled in.

Two rows give the bounds: the bare interpreter (`pass`: the RSS floor) and `import torch`
(what real vLLM's `import vllm` pays first, through `vllm.env_override`).

    python benchmarks/bench_import.py --vllm-python /tmp/vllm-cpu-venv/bin/python --repeat 3

Writes `benchmarks/results/import.json` and `docs/img/import.png`. Without `--vllm-python`
only the reference is measured.
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

#: (label, import code): what a plugin of each kind imports from vLLM 0.32.
SURFACE: list[tuple[str, str]] = [
    ("vllm.plugins", "import vllm.plugins"),
    ("vllm.platforms.interface", "import vllm.platforms.interface"),
    ("vllm.model_executor.models.registry", "import vllm.model_executor.models.registry"),
    ("from vllm import ModelRegistry", "from vllm import ModelRegistry"),
    ("vllm.v1.metrics.loggers", "import vllm.v1.metrics.loggers"),
    ("vllm.plugins.io_processors.interface", "import vllm.plugins.io_processors.interface"),
    ("vllm.lora.resolver", "import vllm.lora.resolver"),
    ("vllm.v1.sample.logits_processor", "import vllm.v1.sample.logits_processor"),
]
ALL = ("all of the above", "\n".join(code for _, code in SURFACE))
BOUNDS: list[tuple[str, str]] = [("bare interpreter", "pass"), ("import torch", "import torch")]

HARNESS = """
import json, resource, sys, time
before = set(sys.modules)
t0 = time.perf_counter()
if {mount!r}:
    from reference.surface import mount
    mount()
t1 = time.perf_counter()
exec(compile({code!r}, "<import>", "exec"))
t2 = time.perf_counter()
print("BENCH-RESULT " + json.dumps({{
    "import_s": t2 - t0, "mount_s": t1 - t0,
    "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "modules": len(set(sys.modules) - before),
    "heavy": [m for m in ("torch", "transformers", "numpy") if m in sys.modules],
}}))
"""


def measure(python: str, code: str, mount: bool) -> dict[str, Any]:
    """Run `code` once in a fresh `python`; the reference's runs mount it first."""
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_PLUGINS", "PYTHONPATH")}
    if mount:
        env["PYTHONPATH"] = str(ROOT)
    env.update({"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"})
    proc = subprocess.run(
        [python, "-c", HARNESS.format(mount=mount, code=code)],
        env=env,
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH-RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{code!r} failed in {python}:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("BENCH-RESULT ") :])


def run(repeat: int, vllm_python: str | None) -> list[dict[str, Any]]:
    engines = {"reference": (sys.executable, True)}
    if vllm_python:
        engines["vllm"] = (vllm_python, False)
    items = [*SURFACE, ALL, *BOUNDS]
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    # Interleave engines and rows, so a burst of load on the shared machine hits all of them.
    for _ in range(repeat):
        for label, code in items:
            for engine, (python, mount) in engines.items():
                is_bound = (label, code) in BOUNDS
                result = measure(python, code, mount and not is_bound)
                samples.setdefault((label, engine), []).append(result)
    rows = []
    for (label, engine), runs in samples.items():
        rows.append(
            {
                "what": label,
                "engine": engine,
                "python": engines[engine][0],
                "runs": len(runs),
                "import_ms": statistics.median(r["import_s"] for r in runs) * 1000,
                "import_ms_samples": [r["import_s"] * 1000 for r in runs],
                "mount_ms": statistics.median(r["mount_s"] for r in runs) * 1000,
                "peak_rss_mib": statistics.median(r["peak_rss_kib"] for r in runs) / 1024,
                "modules": statistics.median(r["modules"] for r in runs),
                "heavy": runs[0]["heavy"],
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    by = {(r["what"], r["engine"]): r for r in rows}
    whats = list(dict.fromkeys(r["what"] for r in rows))
    has_vllm = any(r["engine"] == "vllm" for r in rows)
    out = []
    for what in whats:
        ref = by[(what, "reference")]
        line = [
            what,
            f"{ref['import_ms']:.0f}",
            f"{ref['peak_rss_mib']:.0f}",
            f"{ref['modules']:.0f}",
            ", ".join(ref["heavy"]) or "-",
        ]
        if has_vllm:
            v = by[(what, "vllm")]
            line += [
                f"{v['import_ms']:.0f}",
                f"{v['peak_rss_mib']:.0f}",
                f"{v['modules']:.0f}",
                ", ".join(v["heavy"]) or "-",
                # The ratio means nothing for the bounds (same code in both interpreters).
                "" if what in dict(BOUNDS) else f"{v['import_ms'] / ref['import_ms']:.0f}x",
            ]
        out.append(line)
    headers = ["import", "reference ms", "RSS MiB", "modules", "heavy"]
    if has_vllm:
        headers += ["vLLM ms", "RSS MiB", "modules", "heavy", "vLLM / reference"]
    return markdown_table(headers, out, "l" + "r" * (len(headers) - 1))


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    def draw(plt: Any) -> None:
        whats = list(dict.fromkeys(r["what"] for r in rows))
        by = {(r["what"], r["engine"]): r for r in rows}
        engines = [e for e in ("reference", "vllm") if any(r["engine"] == e for r in rows)]
        colors = {"reference": "tab:blue", "vllm": "tab:red"}
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
        height = 0.8 / len(engines)
        ys = range(len(whats))
        for k, engine in enumerate(engines):
            pos = [y + k * height for y in ys]
            ax.barh(
                pos,
                [by[(w, engine)]["import_ms"] for w in whats],
                height,
                color=colors[engine],
                label=engine if engine == "reference" else "vLLM 0.32",
            )
            ax2.barh(
                pos, [by[(w, engine)]["peak_rss_mib"] for w in whats], height, color=colors[engine]
            )
        ax.set_yticks([y + height * (len(engines) - 1) / 2 for y in ys], whats, fontsize=8)
        ax.invert_yaxis()
        ax.set(xscale="log", xlabel="import, median ms (log)", title="Fresh-process import time")
        ax2.set(xlabel="peak RSS MiB", title="Peak RSS after the import")
        ax.legend(fontsize=8)
        fig.tight_layout()

    save_plot(path, draw)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per row")
    parser.add_argument("--vllm-python", help="python of a virtualenv with vllm-cpu 0.32")
    parser.add_argument("--json", type=Path, default=RESULTS / "import.json")
    parser.add_argument("--png", type=Path, default=IMG / "import.png")
    args = parser.parse_args()
    if not args.vllm_python:
        print("NOTE: no --vllm-python given: only the reference is measured", file=sys.stderr)
    before = machine()
    rows = run(args.repeat, args.vllm_python)
    print(table(rows))
    write_json(
        args.json,
        {
            "machine_before": before,
            "loadavg_after": list(os.getloadavg()),
            "repeat": args.repeat,
            "rows": rows,
        },
    )
    plot(rows, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
