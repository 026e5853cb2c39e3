"""Cost of plugin discovery in a fresh process, at 100 and 1000 installed distributions.

Compares, each in its own fresh interpreter (median of --repeat runs):
  raw-scan      one bare `importlib.metadata.entry_points()` scan (the floor);
  per-group     six `entry_points(group=...)` scans, one per group (vLLM 0.32's pattern);
  reference     mount the reference, import `vllm.plugins` + `vllm.platforms`, and
                `load_plugins_by_group` for all six groups (imports the plugin modules too).
Each row reports the in-process time of that work and the process's peak RSS.

    python benchmarks/bench_discovery.py [--sizes 100 1000] [--repeat 5] [--json PATH]
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

ROOT = Path(__file__).resolve().parents[1]
GROUPS = (
    "vllm.general_plugins",
    "vllm.platform_plugins",
    "vllm.io_processor_plugins",
    "vllm.stat_logger_plugins",
    "vllm.endpoint_plugins",
    "vllm.logits_processors",
)
PLUGIN_EVERY = 20  # one distribution in 20 declares vLLM plugins

MEASURE = {
    "raw-scan": "import importlib.metadata as m\nm.entry_points()\n",
    "per-group": (
        f"import importlib.metadata as m\nfor g in {GROUPS!r}:\n    list(m.entry_points(group=g))\n"
    ),
    "reference": (
        "from reference.surface import mount\nmount()\n"
        "import vllm.plugins as p, vllm.platforms\n"
        "for g in p.KNOWN_GROUPS:\n    p.load_plugins_by_group(g)\n"
    ),
}

HARNESS = """
import resource, sys, time, json
t0 = time.perf_counter()
exec(compile({body!r}, "<bench>", "exec"))
dt = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"seconds": dt, "peak_rss_kib": rss}}))
"""


def make_site(root: Path, n: int) -> None:
    """`n` synthetic distributions; every PLUGIN_EVERY-th declares plugins in every group."""
    for i in range(n):
        name = f"synthetic_dist_{i:05d}"
        dist_info = root / f"{name}-1.0.dist-info"
        dist_info.mkdir(parents=True)
        (dist_info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n", encoding="utf-8"
        )
        lines = ["[console_scripts]", f"{name} = {name}:main"]
        if i % PLUGIN_EVERY == 0:
            module = f"synthetic_plugin_{i:05d}"
            (root / f"{module}.py").write_text(
                "def general():\n    pass\n\ndef detect():\n    return None\n\n"
                "class Logger:\n    pass\n",
                encoding="utf-8",
            )
            lines += [
                "",
                "[vllm.general_plugins]",
                f"g{i} = {module}:general",
                "[vllm.platform_plugins]",
                f"p{i} = {module}:detect",
                "[vllm.io_processor_plugins]",
                f"io{i} = {module}:detect",
                "[vllm.stat_logger_plugins]",
                f"s{i} = {module}:Logger",
            ]
        (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def measure(site: Path, body: str) -> dict[str, float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)])
    env.pop("VLLM_PLUGINS", None)
    out = subprocess.run(
        [sys.executable, "-c", HARNESS.format(body=body)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def run(sizes: list[int], repeat: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="bench-site-") as tmp:
            site = Path(tmp)
            make_site(site, n)
            baseline = None
            for label, body in MEASURE.items():
                samples = [measure(site, body) for _ in range(repeat)]
                seconds = statistics.median(s["seconds"] for s in samples)
                rss = statistics.median(s["peak_rss_kib"] for s in samples)
                baseline = baseline or seconds
                rows.append(
                    {
                        "distributions": n,
                        "variant": label,
                        "median_ms": round(seconds * 1000, 2),
                        "ratio_to_raw_scan": round(seconds / baseline, 2),
                        "peak_rss_mib": round(rss / 1024, 1),
                    }
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/discovery.json")
    args = parser.parse_args()
    rows = run(args.sizes, args.repeat)
    header = (
        f"{'dists':>6}  {'variant':<10} {'median ms':>10} {'x raw scan':>10} {'peak RSS MiB':>13}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['distributions']:>6}  {r['variant']:<10} {r['median_ms']:>10} "
            f"{r['ratio_to_raw_scan']:>10} {r['peak_rss_mib']:>13}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"python": sys.version.split()[0], "rows": rows}, indent=2))
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
