"""Engine mode: the reference passes every engine check, and each engine mutant fails its own."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conformance.cli import main
from conformance.context import Session
from conformance.framework import load_catalog
from conformance.overlay import fixtures_root
from conformance.probes.engine_run import ENGINE_RUN_DEPS
from conformance.runner import Planned, engine_target, plan_engine, run_planned
from reference._version import DEFAULT_CONTRACT
from tests.conftest import assert_mutant_fails

CATALOG = load_catalog()
ENGINE_CHECKS = sorted(c for c in CATALOG if c.startswith("engine."))
MUTANTS = fixtures_root() / "mutants"
#: The engine mutants: code run in every probe after the engine is mounted, one per check.
ENGINE_MUTANTS = sorted(p.parent.name for p in MUTANTS.glob("engine.*/patch.py"))
RAY_CHECK = "engine.plugins-in-ray-workers"
WORKER_EXTENSION = "engine.worker-extension-hooks"
#: What each mutant's failure message must show, beyond the fix hint.
OBSERVED = {
    "engine.custom-op-replacement": "observed {'class': 'RotaryEmbedding'",
    "engine.discovery-per-group": "'vllm.platform_plugins': ['p1', 'g1', 'io1', 's1']",
    "engine.endpoint-plugins-opt-in": "observed {'loaded': ['Always', 'EmbedOnly'], 'imported': True}",
    "engine.filter-before-import": "expected ['plug_a'], observed ['plug_a', 'plug_b']",
    "engine.filter-semantics": "VLLM_PLUGINS='a, b'': expected ['a'], observed ['a', 'b']",
    "engine.general-once-per-process": "expected [1, 1], observed [2, 2]",
    "engine.io-processor-selection": "observed ['ProcB', 'ProcB', None, None]",
    "engine.load-error-isolated": "ERROR records': expected [('Failed to load plugin broken'",
    "engine.logits-not-filtered": "logits plugins loaded': expected ['LP'], observed []",
    "engine.lora-resolver-registry": "observed {'warned': False, 'kept_second': False",
    "engine.platform-lazy": "plugin imported': expected False, observed True",
    "engine.platform-rules": "observed ['reference.platforms.cpu.CpuPlatform', 0]",
    RAY_CHECK: "the plugin it leaves out loaded in Ray worker pid",
    "engine.register-error-propagates": "observed {'first': None",
    "engine.stat-logger-rules": "observed factories ['make']",
    "engine.worker-extension-hooks": "observed ['worker', 'device', 'load_model', 'shutdown']",
}
#: What a check needs installed to judge an engine at all (without it, a capability skip).
NEEDS = {
    "engine.custom-op-replacement": ("torch",),
    RAY_CHECK: ("ray", *ENGINE_RUN_DEPS),
}


def skip_unless_installed(check_id: str) -> None:
    """Skip the test up front where its check cannot judge anything here."""
    missing = [m for m in NEEDS.get(check_id, ()) if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{check_id} needs {', '.join(missing)}, which is not installed here")


def _patch(mutant: str) -> str:
    return (MUTANTS / mutant / "patch.py").read_text(encoding="utf-8")


def _session(patch: str = "") -> Session:
    return Session(engine_target("reference"), "reference", engine_patch=patch)


def _run(check_id: str, patch: str = ""):
    return run_planned(_session(patch), Planned(CATALOG[check_id], None))


def _run_all(patch: str, leave_out: frozenset[str] = frozenset()):
    """Every engine check on the reference with `patch` (but those in `leave_out`), by id, as
    `vllm-conformance engine` runs them."""
    session = _session(patch)
    planned = [p for p in plan_engine(session.contract) if p.check.id not in leave_out]
    return {item.check.id: run_planned(session, item) for item in planned}


def test_engine_checks_are_planned_for_the_reference_contract():
    # The reference's newest contract has every engine check; 0.32 lacks the 0.33 ones.
    planned = [p.check.id for p in plan_engine(DEFAULT_CONTRACT)]
    assert planned == ENGINE_CHECKS and len(planned) >= 10
    older = [p.check.id for p in plan_engine("0.32.0")]
    assert older == [c for c in ENGINE_CHECKS if c != WORKER_EXTENSION]


@pytest.mark.parametrize("check_id", ENGINE_CHECKS)
def test_the_reference_engine_passes(check_id):
    skip_unless_installed(check_id)
    result = _run(check_id)
    assert result.status == "passed", result.message


@pytest.mark.parametrize("mutant", ENGINE_MUTANTS)
def test_the_engine_mutant_fails_its_own_check_and_the_engine_command_exits_1(
    mutant, tmp_path, capsys
):
    skip_unless_installed(mutant)
    patch = MUTANTS / mutant / "patch.py"
    argv = ["engine", "--engine", "reference", "--patch", str(patch), "--check", mutant]
    code = main([*argv, "--report-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1 and f"[{mutant}]" in out, out
    report = json.loads((tmp_path / "conformance-report.json").read_text())
    [result] = [c for c in report["checks"] if c["id"] == mutant]
    message = result["message"]
    assert result["status"] == "failed", f"the mutant did not fail {mutant}: {message}"
    assert message.startswith(f"[{mutant}]") and "\nFix: " in message
    assert OBSERVED[mutant] in message, "the message shows what was observed"
    if mutant == RAY_CHECK:
        # It names the Ray workers that loaded the plugin VLLM_PLUGINS leaves out, not the
        # driver (which the mutant leaves alone).
        assert "driver" not in message.split("loaded in", 1)[1].split("(", 1)[0]


@pytest.mark.slow
@pytest.mark.sweep
@pytest.mark.parametrize("mutant", ENGINE_MUTANTS)
def test_each_engine_mutant_fails_its_own_check_and_only_it(mutant):
    skip_unless_installed(mutant)
    # The Ray check runs in its own mutant's sweep only. Each run starts a Ray cluster and two
    # workers (about 11 of a sweep's 16 s here); in the other 16 sweeps it cost CI's engine
    # env about 2 minutes, and CI as a whole must fit in 30.
    leave_out = frozenset() if mutant == RAY_CHECK else frozenset({RAY_CHECK})
    results = _run_all(_patch(mutant), leave_out)
    assert set(results) == set(ENGINE_CHECKS) - leave_out
    assert_mutant_fails(results, mutant, OBSERVED[mutant])


def test_every_engine_check_has_a_mutant():
    assert ENGINE_MUTANTS == ENGINE_CHECKS, "each engine check needs a mutant named after it"
    assert sorted(OBSERVED) == ENGINE_MUTANTS, "each mutant says what its failure must show"


def test_every_catalog_check_has_a_mutant():
    # A mutant is a broken plugin project (pyproject.toml) or, for engine checks, an engine
    # patch (patch.py), in a directory named after the check it must fail.
    mutants = {
        p.name
        for p in MUTANTS.iterdir()
        if (p / "pyproject.toml").is_file() or (p / "patch.py").is_file()
    }
    assert sorted(set(CATALOG) - mutants) == [], "checks without a mutant"
    assert sorted(mutants - set(CATALOG)) == [], "mutants named after no check"


def test_the_ray_check_is_a_capability_skip_without_ray_naming_the_install():
    # find_spec answers None for a module set to None in sys.modules: "Ray is not installed".
    result = _run(RAY_CHECK, "import sys\nsys.modules['ray'] = None\n")
    assert result.status == "skipped", result.message
    assert "pip install ray" in result.message


def test_the_ray_check_skips_where_the_engine_refuses_ray_on_its_platform():
    skip_unless_installed(RAY_CHECK)
    # What vLLM's executor raises on its CPU platform (no ray_device_key), made to happen here.
    patch = (
        "import vllm.v1.executor.ray_executor as _ray_executor\n"
        "def _refuse():\n"
        "    raise ValueError('current platform cpu does not support ray.')\n"
        "_ray_executor.initialize_ray_cluster = _refuse\n"
    )
    result = _run(RAY_CHECK, patch)
    assert result.status == "skipped", result.message
    assert "does not support ray" in result.message and "ray_device_key" in result.message


@pytest.mark.parametrize(("contract", "loader"), [("0.32.0", "v1"), ("0.34.0", "v2")])
def test_logits_plugins_are_loaded_by_the_loader_the_contract_has(contract, loader):
    """Before 0.34 the V1 runner's loader is asked (with any class), from 0.34 on, where it
    no longer exists, Model Runner V2's (with a V2 subclass); the mutant that filters both is
    caught under either contract."""
    from conformance.checks.engine import LOGITS_PLUGIN_SOURCE, logits_loader_interface

    assert logits_loader_interface(contract) == loader
    assert ("LogitsProcessor" in LOGITS_PLUGIN_SOURCE[loader]) == (loader == "v2")
    check = CATALOG["engine.logits-not-filtered"]
    for patch, status in (("", "passed"), (_patch("engine.logits-not-filtered"), "failed")):
        session = Session(
            engine_target("reference"), "reference", engine_patch=patch, contract_version=contract
        )
        result = run_planned(session, Planned(check, None))
        assert result.status == status, result.message
        if status == "failed":
            assert f"({loader} loader)" in result.message


def _worker_extension_result(contract: str, patch: str = ""):
    session = Session(
        engine_target("reference"), "reference", engine_patch=patch, contract_version=contract
    )
    return run_planned(session, Planned(CATALOG[WORKER_EXTENSION], None))


def test_worker_extension_hooks_are_a_0_33_rule():
    check = CATALOG[WORKER_EXTENSION]
    assert check.since == "0.33.0" and check.until is None
    assert not check.applies_to_contract("0.32.0")
    assert check.applies_to_contract("0.33.0") and check.applies_to_contract("0.34.0")


@pytest.mark.parametrize("contract", ["0.33.0", "0.34.0"])
def test_the_reference_calls_the_worker_extension_hooks_from_0_33(contract):
    """Under each contract with the hooks the reference passes, and the mutant that never calls
    them fails, showing the calls it saw."""
    assert _worker_extension_result(contract).status == "passed"
    mutant = _worker_extension_result(contract, _patch(WORKER_EXTENSION))
    assert mutant.status == "failed", mutant.message
    assert OBSERVED[WORKER_EXTENSION] in mutant.message


def test_the_reference_calls_no_worker_extension_hook_under_0_32():
    """Before 0.33 same-named methods were plain methods the worker never called: the reference
    modelling 0.32 calls neither hook, which is why the check is not applied to 0.32."""
    result = _worker_extension_result("0.32.0")
    assert result.status == "failed", result.message
    assert OBSERVED[WORKER_EXTENSION] in result.message


def test_a_worker_extension_destroy_hook_that_propagates_fails_the_check():
    """A destroy hook's exception must be logged, not raised: an engine that lets it out of
    shutdown() fails, and the message says which wrapper step raised."""
    patch = (
        "from vllm.v1.worker.worker_base import WorkerWrapperBase as _W\n"
        "def _shutdown(self):\n"
        "    self._extension_hook('destroy_worker_extension')(self.worker)\n"
        "    self.worker.shutdown()\n"
        "_W.shutdown = _shutdown\n"
    )
    result = _worker_extension_result("0.34.0", patch)
    assert result.status == "failed", result.message
    assert "shutdown() raised" in result.message and "failed on purpose" in result.message


def test_the_worker_extension_check_is_inconclusive_where_no_engine_config_builds():
    """An engine that cannot build a served model's config here (a Python-only vLLM, a device
    it cannot find) starts no worker: inconclusive, with what building the config raised."""
    patch = (
        "import vllm.engine.arg_utils as _args\n"
        "def _refuse(self, *a, **k):\n"
        "    raise RuntimeError('Failed to infer device type')\n"
        "_args.EngineArgs.create_engine_config = _refuse\n"
    )
    result = _worker_extension_result("0.34.0", patch)
    assert result.status == "inconclusive", result.message
    assert "Failed to infer device type" in result.message and "no worker" in result.message


def test_a_worker_extension_init_hook_run_outside_the_workers_config_fails_the_check():
    """vLLM runs `init_worker_extension` inside `set_current_vllm_config(worker's config)`, so a
    hook may read `get_current_vllm_config()`; an engine that calls it after leaving that block
    (as the reference did) hands the hook another config, and fails."""
    patch = (
        "from vllm.config import set_current_vllm_config\n"
        "from vllm.v1.worker.worker_base import WorkerWrapperBase as _W\n"
        "def _init_device(self):\n"
        "    with set_current_vllm_config(self.vllm_config):\n"
        "        self.worker.init_device()\n"
        "    self._extension_hook('init_worker_extension')(self.worker)\n"
        "_W.init_device = _init_device\n"
    )
    result = _worker_extension_result("0.34.0", patch)
    assert result.status == "failed", result.message
    assert "'init_worker_extension(Worker)', 'another config current'" in result.message
