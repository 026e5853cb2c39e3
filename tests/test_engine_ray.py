"""The Ray executor: one Ray actor per worker, each loading the general plugins and resolving
the platform itself, with the driver's `VLLM_*` variables; greedy output as in process; no
actor or Ray process left after shutdown. Ray is optional: without it the module is skipped."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the Ray executor needs Ray: pip install ray")
torch = pytest.importorskip("torch")

from conformance.overlay import Overlay  # noqa: E402
from conformance.probe import run_probe  # noqa: E402
from fixtures.generators.checkpoint import tiny_llama  # noqa: E402
from reference.engine import ray_executor  # noqa: E402
from tests.conftest import GENERAL, add_plugin, code  # noqa: E402
from tests.test_engine_executor import _wait_dead  # noqa: E402

#: Appends one JSON line per call: this process, its Ray actor (if any), a driver variable.
MARKER_PLUGIN = """
import json, os, sys

def mark():
    actor = None
    if "ray" in sys.modules:
        import ray
        if ray.is_initialized():
            actor = ray.get_runtime_context().get_actor_id()
    line = {{"plugin": "marker", "pid": os.getpid(), "actor": actor,
             "var": os.environ.get("VLLM_RAY_TEST_VAR")}}
    with open({path!r}, "a") as f:
        f.write(json.dumps(line) + "\\n")
"""

EXCLUDED_PLUGIN = """
import json, os

def register():
    with open({path!r}, "a") as f:
        f.write(json.dumps({{"plugin": "excluded", "pid": os.getpid()}}) + "\\n")
"""


def _marks(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _descendants(root: int) -> set[int]:
    """Every live process below `root` (from /proc): Ray's processes and actors included."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


@pytest.mark.slow
def test_ray_workers_load_plugins_with_the_drivers_vllm_variables(tmp_path):
    """The cluster is started before the variables are set, so the workers can only get
    VLLM_PLUGINS and VLLM_RAY_TEST_VAR from the executor, not by inheriting them."""
    marker = tmp_path / "marks.jsonl"
    overlay = Overlay(tmp_path / "o").add_fixture("vllm_add_dummy_platform")
    add_plugin(
        overlay,
        "marker_plugin",
        {GENERAL: {"mark": "marker_plugin:mark"}},
        marker_plugin=MARKER_PLUGIN.format(path=str(marker)),
    )
    add_plugin(
        overlay,
        "excluded_plugin",
        {GENERAL: {"excluded": "excluded_plugin:register"}},
        excluded_plugin=EXCLUDED_PLUGIN.format(path=str(marker)),
    )
    model = str(tiny_llama())
    result = run_probe(
        code(
            f"""
            import os, time
            import ray
            started = time.monotonic()
            ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
            probe.result["ray_init_s"] = time.monotonic() - started
            os.environ["VLLM_PLUGINS"] = "mark,dummy_platform_plugin,dummy_custom_ops"
            os.environ["VLLM_RAY_TEST_VAR"] = "from-the-driver"
            os.environ["VLLM_HOST_IP"] = "10.0.0.1"  # worker-specific: never copied
            from vllm import LLM, SamplingParams
            try:
                started = time.monotonic()
                llm = LLM(model={model!r}, tensor_parallel_size=2,
                          distributed_executor_backend="ray")
                probe.result["engine_start_s"] = time.monotonic() - started
                params = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
                probe.result["ids"] = llm.generate("Hello", params)[0].outputs[0].token_ids
                probe.result["workers"] = llm.collective_rpc("describe_process")
                probe.result["ops"] = llm.collective_rpc("custom_op_class")
                probe.result["env"] = llm.collective_rpc(
                    "get_env", args=(["VLLM_RAY_TEST_VAR", "VLLM_PLUGINS", "VLLM_HOST_IP"],))
                probe.result["driver"] = os.getpid()
                llm.shutdown()
                probe.result["cluster_kept"] = ray.is_initialized()
            finally:
                ray.shutdown()
            """
        ),
        overlay=overlay,
        timeout=400,
    )
    assert result.ok, result.describe()
    values = result.values
    workers = values["workers"]
    worker_pids = {w["pid"] for w in workers}
    assert [w["rank"] for w in workers] == [0, 1]
    assert values["driver"] not in worker_pids and len(worker_pids) == 2
    assert all(w["platform"] == "DummyPlatform" for w in workers), workers
    assert values["ops"] == ["vllm_add_dummy_platform.dummy_custom_ops.DummyRotaryEmbedding"] * 2
    expected_env = {
        "VLLM_RAY_TEST_VAR": "from-the-driver",
        "VLLM_PLUGINS": "mark,dummy_platform_plugin,dummy_custom_ops",
        "VLLM_HOST_IP": None,
    }
    assert values["env"] == [expected_env] * 2
    marks = _marks(marker)
    loaded = {
        (m["pid"], m["actor"] is not None, m["var"]) for m in marks if m["plugin"] == "marker"
    }
    assert (values["driver"], False, "from-the-driver") in loaded
    assert {(pid, True, "from-the-driver") for pid in worker_pids} <= loaded
    assert [m for m in marks if m["plugin"] == "excluded"] == [], "VLLM_PLUGINS left it out"
    assert values["cluster_kept"], "a cluster the engine did not start is not shut down"
    assert not _wait_dead(sorted(worker_pids), timeout=20)
    print(f"ray.init {values['ray_init_s']:.1f} s; 2 Ray workers {values['engine_start_s']:.1f} s")


@pytest.mark.slow
def test_ray_greedy_equals_in_process_and_shutdown_leaves_nothing():
    """Without a Ray of its own the executor starts a local cluster, and stops it on
    shutdown: no actor, raylet, GCS or agent process is left."""
    from reference.engine.llm import LLM
    from reference.sampling_params import SamplingParams

    assert not ray.is_initialized()
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    sampled = SamplingParams(max_tokens=6, temperature=0.7, seed=3, ignore_eos=True)
    uni = LLM(model=str(tiny_llama()))
    expected = [o.outputs[0].token_ids for o in uni.generate(["a", "bc"], params)]
    expected_sampled = [o.outputs[0].token_ids for o in uni.generate(["a", "bc"], sampled)]
    uni.shutdown()
    before = _descendants(os.getpid())
    started = time.monotonic()
    llm = LLM(model=str(tiny_llama()), num_workers=2, distributed_executor_backend="ray")
    start_s = time.monotonic() - started
    try:
        ray_pids = _descendants(os.getpid()) - before
        pids = llm.engine_core.executor.worker_pids
        assert len(pids) == 2 and os.getpid() not in pids and set(pids) <= ray_pids
        assert [o.outputs[0].token_ids for o in llm.generate(["a", "bc"], params)] == expected
        assert [o.outputs[0].token_ids for o in llm.generate(["a", "bc"], sampled)] == (
            expected_sampled
        )
    finally:
        llm.shutdown()
    assert not ray.is_initialized(), "the engine started Ray, so it stops it"
    assert not _wait_dead(sorted(ray_pids), timeout=30), "Ray processes left after shutdown"
    print(f"engine start with 2 Ray workers (ray.init included): {start_s:.1f} s")


def test_only_the_families_vllm_copies_reach_the_workers(monkeypatch, tmp_path):
    """VLLM_* and the other prefixes vLLM 0.32 copies, the extras it names, less the
    worker-specific variables and the user's non-carry-over list."""
    for name in list(os.environ):
        if (
            name.startswith(tuple(ray_executor.DEFAULT_ENV_VAR_PREFIXES))
            or name == "XDG_CONFIG_HOME"
        ):
            monkeypatch.delenv(name)
    monkeypatch.setenv("VLLM_PLUGINS", "a,b")
    monkeypatch.setenv("VLLM_SOMETHING_NEW", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NCCL_DEBUG", "INFO")
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    monkeypatch.setenv("MY_OWN_VAR", "x")
    monkeypatch.setenv("MYCO_TOKEN", "t")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("VLLM_HOST_IP", "10.0.0.1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("VLLM_RAY_EXTRA_ENV_VARS_TO_COPY", "MY_OWN_VAR, ")
    monkeypatch.setenv("VLLM_CONFIG_ROOT", str(tmp_path))
    (tmp_path / "ray_non_carry_over_env_vars.json").write_text('["NCCL_DEBUG"]')
    copied = ray_executor.env_vars_for_workers()
    assert copied == {
        "VLLM_PLUGINS": "a,b",
        "VLLM_SOMETHING_NEW": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONHASHSEED": "0",
        "MY_OWN_VAR": "x",
        "VLLM_RAY_EXTRA_ENV_VARS_TO_COPY": "MY_OWN_VAR, ",
        "VLLM_CONFIG_ROOT": str(tmp_path),
    }
    monkeypatch.setenv("VLLM_RAY_EXTRA_ENV_VAR_PREFIXES_TO_COPY", "MYCO_")
    assert ray_executor.env_vars_for_workers()["MYCO_TOKEN"] == "t"
    runtime_env = ray_executor.runtime_env_for_workers()
    root = str(Path(ray_executor.__file__).resolve().parents[2])
    assert runtime_env["env_vars"]["PYTHONPATH"].split(os.pathsep)[0] == root


def test_the_backend_is_accepted_and_a_missing_ray_says_how_to_install_it(monkeypatch):
    from reference.engine.args import EngineArgs
    from reference.engine.executor import Executor

    config = EngineArgs(
        model=str(tiny_llama()), num_workers=2, distributed_executor_backend="ray"
    ).create_engine_config()
    assert config.parallel_config.distributed_executor_backend == "ray"
    assert Executor.get_class(config) is ray_executor.RayDistributedExecutor
    with pytest.raises(ValueError, match="'ray'"):
        EngineArgs(
            model=str(tiny_llama()), distributed_executor_backend="nope"
        ).create_engine_config()
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match="pip install ray"):
        ray_executor._ray()
