"""What every benchmark script shares: the machine note, the measured child processes, the JSON
result and the PNG plot.

Each script writes `benchmarks/results/<name>.json` and `docs/img/<name>.png`. matplotlib is
optional: without it the script still measures, prints and writes JSON,
and says that it skipped the plot.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
IMG = ROOT / "docs" / "img"
#: The modules that run in a measured child process (`python benchmarks/runners/NAME.py ...`).
RUNNERS = ROOT / "benchmarks" / "runners"
#: A runner prints its measurement as one line with this prefix, last. The runners spell it out
#: rather than import this module: `engine_process` also runs in vLLM's own virtualenv.
RESULT_PREFIX = "BENCH-RESULT "

#: The environment of a real vLLM child: offline, a small CPU KV cache, no usage reports.
VLLM_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}


def machine() -> dict[str, Any]:
    """CPU count, Python and the load average now: the machine is shared, so record it."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": list(os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def runner_command(python: str, name: str, *args: str) -> list[str]:
    """The command that runs `benchmarks/runners/<name>.py` with `args` in `python`."""
    return [python, str(RUNNERS / f"{name}.py"), *args]


def runner_result(stdout: str) -> dict[str, Any] | None:
    """The JSON of the last `RESULT_PREFIX` line a runner printed (None if it printed none)."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    return json.loads(lines[-1][len(RESULT_PREFIX) :]) if lines else None


def write_json(path: Path, report: dict[str, Any]) -> None:
    """Write `report` as indented JSON (creating the folder) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def save_plot(path: Path, draw: Callable[[Any], None]) -> bool:
    """Render `draw(pyplot)` to `path` with the Agg backend; skip (and say so) without matplotlib.

    `draw` receives `matplotlib.pyplot` and must create the figure; this saves and closes it.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            f"matplotlib is not installed: skipped the plot {path.name} (pip install matplotlib)",
            file=sys.stderr,
        )
        return False
    draw(plt)
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.savefig(path, dpi=110, bbox_inches="tight")
    plt.close("all")
    print(f"wrote {path}")
    return True


def markdown_table(headers: list[str], rows: list[list[Any]], align: str | None = None) -> str:
    """A Markdown table; `align` is one char per column, `l` or `r` (default: first `l`)."""
    align = align or "l" + "r" * (len(headers) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
