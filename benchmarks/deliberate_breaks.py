"""Break the suite on purpose and show that its own tests notice (run by hand).

Each break is a small edit of the harness that a careless change could make. The tree is
copied to a temporary directory, the edit applied there, and the tests that guard the
behaviour run with the given interpreter (by default this one: run it once from a venv with
torch but without Triton and Ray, and once from tox's `engine` env). The interpreter must
import `conformance` from the copy, so not from an editable install (whose import hook wins
over the working directory): a venv with a plain `pip install ".[test,engine]"`, or tox's.
A break that leaves its tests green is a hole in the suite's own tests: exit 1.

    python benchmarks/deliberate_breaks.py [--python PATH]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Break:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


BREAKS = (
    Break(
        "engine.platform-lazy skips instead of judging",
        "conformance/checks/engine.py",
        '    scenario = "import vllm.platforms"\n',
        '    skip("deliberately broken")\n    scenario = "import vllm.platforms"\n',
        (
            "tests/test_checks_engine.py",
            "tests/test_meta.py::test_engine_exits_1_on_every_engine_mutant",
        ),
    ),
    Break(
        "the probe buffers all of a plugin's output (100 MB) instead of keeping a tail",
        "conformance/probe.py",
        "            while self._tail_len - len(self.tail[0]) >= TAIL_BYTES:\n",
        "            while False:\n",
        ("tests/test_probe.py",),
    ),
)


def _insist_on_the_copy(python: str, tree: Path) -> None:
    where = subprocess.run(
        [python, "-c", "import conformance; print(conformance.__file__)"],
        cwd=tree,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not where.startswith(str(tree)):
        raise SystemExit(
            f"{python} imports conformance from {where or '(nowhere)'}, not from the copied "
            "tree (an editable install?): use an interpreter with a plain install, e.g. tox's "
            "`engine` env (.tox/engine/bin/python)."
        )


def run(brk: Break, python: str, broken: bool = True) -> bool:
    """Whether the break's tests failed (with the break applied), or passed (without it)."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        shutil.copytree(
            ROOT, tree, ignore=shutil.ignore_patterns(".git", ".tox", "site", "*.egg-info")
        )
        path = tree / brk.file
        text = path.read_text(encoding="utf-8")
        if brk.old not in text:
            raise SystemExit(f"{brk.file} changed: the break {brk.name!r} no longer applies")
        if broken:
            path.write_text(text.replace(brk.old, brk.new, 1), encoding="utf-8")
        _insist_on_the_copy(python, tree)
        done = subprocess.run(
            [python, "-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider", *brk.tests],
            cwd=tree,
            capture_output=True,
            text=True,
        )
    last = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    if not broken:
        print(f"{'green' if done.returncode == 0 else 'RED'} without the break: {last}")
        return done.returncode == 0
    print(f"{'caught' if done.returncode else 'MISSED'}: {brk.name} -> {last}")
    return done.returncode != 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="the interpreter to test with")
    args = parser.parse_args()
    # Each break's tests must pass on the unbroken tree first: a red control proves nothing.
    ok = [run(brk, args.python, broken=False) and run(brk, args.python) for brk in BREAKS]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
