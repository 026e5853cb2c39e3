"""What every benchmark script shares: the machine note, the JSON result and the PNG plot.

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


def machine() -> dict[str, Any]:
    """CPU count, Python and the load average now: the machine is shared, so record it."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": list(os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


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
