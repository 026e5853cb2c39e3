"""The multiprocessing executor: N spawned workers built from `worker_cls`, each loading
general plugins and resolving the platform itself; no orphan process after shutdown or after
the driver is killed."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from conformance.overlay import Overlay  # noqa: E402
from conformance.probe import run_probe  # noqa: E402
from fixtures.generators.checkpoint import tiny_llama  # noqa: E402
from tests.conftest import GENERAL, add_plugin, code  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

MARKER_PLUGIN = """
import multiprocessing, os

def mark():
    with open(os.environ["ENGINE_MARKER_FILE"], "a") as f:
        f.write(f"{os.getpid()} {multiprocessing.current_process().name}\\n")
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose (its parent has not reaped it yet).
    try:
        return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0
    except OSError:
        return False


def _wait_dead(pids: list[int], timeout: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if _alive(pid)]
        if not alive:
            return []
        time.sleep(0.2)
    return [pid for pid in pids if _alive(pid)]


def test_mp_workers_load_plugins_resolve_the_platform_and_use_its_custom_op(tmp_path):
    marker = tmp_path / "marker.txt"
    overlay = Overlay(tmp_path / "o").add_fixture("vllm_add_dummy_platform")
    add_plugin(
        overlay,
        "marker_plugin",
        {GENERAL: {"mark": "marker_plugin:mark"}},
        marker_plugin=MARKER_PLUGIN,
    )
    model = str(tiny_llama())
    result = run_probe(
        code(
            f"""
            import os
            from vllm import LLM, SamplingParams
            llm = LLM(model={model!r}, tensor_parallel_size=2, distributed_executor_backend="mp")
            params = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
            probe.result["ids"] = llm.generate("Hello", params)[0].outputs[0].token_ids
            probe.result["workers"] = llm.collective_rpc("describe_process")
            probe.result["ops"] = llm.collective_rpc("custom_op_class")
            probe.result["driver"] = os.getpid()
            llm.shutdown()
            """
        ),
        overlay=overlay,
        env={"ENGINE_MARKER_FILE": str(marker)},
        timeout=240,
    )
    assert result.ok, result.describe()
    values = result.values
    workers = values["workers"]
    assert [w["rank"] for w in workers] == [0, 1]
    assert all(w["platform"] == "DummyPlatform" for w in workers)
    # The platform names its own worker (a CPUWorker subclass), as an OOT platform does.
    dummy_worker = "vllm_add_dummy_platform.dummy_worker.DummyWorker"
    assert all(w["worker_cls"] == dummy_worker for w in workers)
    assert values["ops"] == ["vllm_add_dummy_platform.dummy_custom_ops.DummyRotaryEmbedding"] * 2
    marks = [line.split() for line in marker.read_text().splitlines()]
    pids = {int(pid) for pid, _ in marks}
    assert values["driver"] in pids
    assert {w["pid"] for w in workers} <= pids
    assert len(marks) == len(pids) == 3  # once per process: driver (+ engine core), 2 workers
    assert not _wait_dead([w["pid"] for w in workers], timeout=10)


def test_mp_greedy_equals_in_process_greedy():
    from reference.engine.llm import LLM
    from reference.sampling_params import SamplingParams

    params = SamplingParams(max_tokens=6, temperature=0.7, seed=3, ignore_eos=True)
    uni = LLM(model=str(tiny_llama()))
    expected = [o.outputs[0].token_ids for o in uni.generate(["a", "bc"], params)]
    uni.shutdown()
    mp = LLM(model=str(tiny_llama()), num_workers=2, distributed_executor_backend="mp")
    try:
        pids = mp.engine_core.executor.worker_pids
        assert len(pids) == 2 and os.getpid() not in pids
        assert [o.outputs[0].token_ids for o in mp.generate(["a", "bc"], params)] == expected
    finally:
        mp.shutdown()
    assert not _wait_dead(pids, timeout=10)


DRIVER = """
import sys, time
sys.path.insert(0, {root!r})
from reference.engine.llm import LLM

if __name__ == "__main__":  # spawned workers re-import this script
    llm = LLM(model={model!r}, num_workers=2, distributed_executor_backend="mp")
    print(" ".join(str(p) for p in llm.engine_core.executor.worker_pids), flush=True)
    time.sleep(600)
"""


#: Seconds the driver gets to start its two workers and print their pids (a few on this
#: project's machines); a driver that hangs before that fails the test instead of hanging it.
DRIVER_START_TIMEOUT_S = 180.0


def _first_line(stream: Any, timeout: float) -> str | None:
    """The first line `stream` gives within `timeout` seconds, or None."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        return None


def test_killing_the_driver_leaves_no_orphan_workers(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER.format(root=str(ROOT), model=str(tiny_llama()))))
    driver = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        line = _first_line(driver.stdout, DRIVER_START_TIMEOUT_S)
        assert line is not None, (
            f"the driver printed no worker pids within {DRIVER_START_TIMEOUT_S:.0f} s; "
            "expected the engine with two mp workers to start"
        )
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids), line
        driver.send_signal(signal.SIGKILL)
        driver.wait(10)
        assert not _wait_dead(pids, timeout=15)
    finally:
        # The driver's whole session: on a failure above, its workers too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(10)
