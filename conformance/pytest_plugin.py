"""The pytest plugin (`pytest11` entry point `vllm_conformance`).

It gives tests — the suite's own and plugin authors' — fixtures to build overlays and run
probes. It changes nothing in a session that does not use them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conformance.overlay import Overlay
from conformance.probe import ProbeResult, run_probe


@pytest.fixture
def conformance_overlay(tmp_path: Path) -> Iterator[Overlay]:
    """An empty overlay in the test's temporary directory; add plugins to it."""
    yield Overlay(tmp_path / "overlay")


@pytest.fixture
def conformance_probe() -> Callable[..., ProbeResult]:
    """`run_probe(code, engine=..., overlay=..., env=..., timeout=...)` for this test."""

    def probe(code: str, **kwargs: Any) -> ProbeResult:
        return run_probe(code, **kwargs)

    return probe
