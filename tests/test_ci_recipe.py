"""The user guide's CI recipe, run as written: its steps are read from docs/user-guide.md.

A fresh virtualenv stands in for the CI runner. The one step that needs the network, installing
this suite, is replaced by making the running interpreter's packages visible to that venv (a
`.pth` line); every other step runs verbatim in a plugin project that declares, besides vLLM and
torch, a dependency of its own.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import sysconfig
import textwrap
import venv
from pathlib import Path

import pytest

import conformance

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "user-guide.md"
#: The step the test replaces (it installs this suite from its repository: network).
INSTALL_SUITE = re.compile(r"pip install .*vllm-plugin-conformance")


def recipe_steps() -> list[str]:
    """The `run:` steps of the YAML block under 'In CI (a plugin repository)', in order."""
    text = GUIDE.read_text(encoding="utf-8")
    section = text.split("## In CI (a plugin repository)", 1)[1]
    block = section.split("```yaml", 1)[1].split("```", 1)[0]
    steps: list[str] = []
    lines = block.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"(\s*)- run: (.*)$", line)
        if not match:
            continue
        indent, command = len(match.group(1)), match.group(2)
        if command.split("#", 1)[0].strip() == "|":
            body = []
            for following in lines[i + 1 :]:
                if following.strip() and len(following) - len(following.lstrip()) <= indent:
                    break
                body.append(following)
            steps.append(textwrap.dedent("\n".join(body)).strip() + "\n")
        else:
            steps.append(re.sub(r"\s+#[^'\"]*$", "", command).strip())
    return steps


def _plugin_project(root: Path, dependency: str) -> Path:
    """A general plugin that imports its own dependency at module level."""
    package = root / "recipe_plugin"
    package.mkdir(parents=True)
    module = dependency.split(">", 1)[0].split("=", 1)[0]
    (package / "__init__.py").write_text(
        f"import {module}  # its own dependency\n\n\ndef register():\n    return None\n"
    )
    deps = ["vllm>=0.30", "torch>=2.4", dependency]
    # Built offline by an in-tree backend that needs nothing installed.
    backend = Path(__file__).parent / "data" / "tiny_build_backend.py"
    (root / "tiny_build_backend.py").write_text(backend.read_text(encoding="utf-8"))
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "tiny_build_backend"\n'
        'backend-path = ["."]\n'
        f'[project]\nname = "recipe-plugin"\nversion = "0.1.0"\ndependencies = {json.dumps(deps)}\n'
        '[project.entry-points."vllm.general_plugins"]\nrecipe_plugin = "recipe_plugin:register"\n'
        '[tool.tiny-backend]\npackage = "recipe_plugin"\n'
    )
    return root


def test_the_recipe_reads_as_expected():
    steps = recipe_steps()
    assert INSTALL_SUITE.match(steps[0]), steps[0]
    assert steps[1] == "pip install --no-deps -e ."
    assert "plugin-requirements.txt" in steps[2] and steps[2].endswith(
        "pip install -r plugin-requirements.txt\n"
    )
    assert steps[3].startswith("vllm-conformance certify ")


@pytest.mark.slow
def test_the_ci_recipe_certifies_a_plugin_with_a_dependency_of_its_own(tmp_path):
    steps = recipe_steps()
    runner = tmp_path / "runner"
    venv.create(runner, with_pip=True)
    bin_dir = runner / ("Scripts" if sys.platform == "win32" else "bin")
    # Instead of the network install of the suite: this interpreter's packages, visible there.
    site = subprocess.run(
        [str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = {sysconfig.get_path("purelib"), *[p for p in sys.path if p.endswith("site-packages")]}
    root = str(Path(conformance.__file__).resolve().parents[1])
    (Path(site) / "suite_under_test.pth").write_text("\n".join([root, *sorted(ours)]) + "\n")
    (bin_dir / "vllm-conformance").write_text(
        f"#!{bin_dir / 'python'}\nimport sys\nfrom conformance.cli import main\nsys.exit(main())\n"
    )
    (bin_dir / "vllm-conformance").chmod(0o755)
    # `packaging` is installed wherever this suite is: the dependency step needs no network.
    project = _plugin_project(tmp_path / "plugin", "packaging>=20")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PIP_NO_INDEX": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    done = []
    for step in steps[1:]:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", step],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        done.append((step, result))
        if step.startswith("vllm-conformance"):
            break
        assert result.returncode == 0, f"{step}\n{result.stdout}\n{result.stderr}"
    requirements = (project / "plugin-requirements.txt").read_text().split()
    assert requirements == ["packaging>=20"], "vLLM and torch are left out, the rest kept"
    certify = done[-1][1]
    out = certify.stdout
    assert "recipe-plugin 0.1.0" in out and "entry point vllm.general_plugins" in out, out
    # Its own dependency is installed and declared: nothing is inconclusive for want of it.
    # (The preflight's line for missing requirements; torch-only checks say so on their own.)
    assert "not installed here (checks that need them" not in out, out
    assert "declared by neither" not in out, out
    # Certified, or incomplete only where torch is absent (checks that need it).
    assert certify.returncode in (0, 3), out + certify.stderr
    if certify.returncode == 3:
        assert importlib.util.find_spec("torch") is None, out
