"""The corpus of real vLLM plugins on PyPI: fetch the pinned distributions, take their census,
render docs/ecosystem.md. Not run by CI: fetching needs the network.

    python benchmarks/corpus.py fetch              # download every pinned file, check it
    python benchmarks/corpus.py census --render    # results/census.json and docs/ecosystem.md
    python benchmarks/corpus.py render             # docs/ecosystem.md again from census.json
    python benchmarks/corpus.py pin NAME==VERSION  # a [[plugin]] stanza for corpus.toml

The pins live in `benchmarks/corpus.toml`: one distribution file per plugin, with its sha256
and the `vllm.*` entry-point groups it must declare. Wheels are fetched with
`pip download --no-deps`, given the platform and Python tags of the pinned file, so a macOS or
cp311-only wheel comes down on any machine. An sdist is fetched from the file URL PyPI's JSON
API lists for the pinned version instead: `pip download` would build it to read its metadata,
which runs the plugin's setup.py and installs its build requirements (torch, for one).
Every file is checked against its sha256, unpacked, and its entry points read from its own
metadata (`*.dist-info` or `*.egg-info/entry_points.txt`) must match the pinned groups.

The cache is `--cache DIR`, else `$VLLM_CONFORMANCE_CACHE/corpus`, else
`~/.cache/vllm-plugin-conformance/corpus`: `files/` holds the downloads, `unpacked/<file>/`
their contents (an unpacked wheel is a site directory, dist-info included). Take the census
where torch is installed (the engine extra): whether the reference has a name is looked up on
its own modules, and some of them need torch; without it those names read "not judged".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import RESULTS, ROOT
from packaging.utils import canonicalize_name, parse_wheel_filename

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from conformance.census import ArchiveError, corpus_census, dumps, open_archive, render_markdown
from reference._version import CONTRACT_VERSION, __version__

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

CORPUS = ROOT / "benchmarks" / "corpus.toml"
CENSUS = RESULTS / "census.json"
ECOSYSTEM = ROOT / "docs" / "ecosystem.md"
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
    data = corpus_census(archives, vllm_release=CONTRACT_VERSION)
    data["skipped"] = skipped
    data["generated"] = {
        "command": "python benchmarks/corpus.py census --render",
        "date": time.strftime("%Y-%m-%d"),
        "reference": __version__,
        "corpus": "benchmarks/corpus.toml",
    }
    return data


def render(data: dict[str, Any]) -> None:
    ECOSYSTEM.write_text(render_markdown(data), encoding="utf-8")
    print(f"wrote {ECOSYSTEM}")


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
        if args.command == "render":
            render(json.loads(CENSUS.read_text(encoding="utf-8")))
            return 0
        print(pin_stanza(args.requirement, cache))
        return 0
    except CorpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
