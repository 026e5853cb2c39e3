"""The documentation site (mkdocs.yml) and docs/ stay in step.

`tox -e docs` builds the site with `--strict`, which also rejects a page left out of the nav;
these tests catch the same mistakes in a plain pytest run, before anyone builds the site: a new
page under docs/ that the nav forgets, a nav entry whose file was renamed or not written yet,
and a page the home page does not point to.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="reading mkdocs.yml needs PyYAML (mkdocs brings it)")

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "mkdocs.yml"


def _config() -> dict:
    """mkdocs.yml as data (plain YAML: the file uses no `!!python` or `!ENV` tags)."""
    return yaml.safe_load(CONFIG.read_text(encoding="utf-8"))


def _docs_dir() -> Path:
    return ROOT / _config().get("docs_dir", "docs")


def _nav_files(nav: object) -> Iterator[str]:
    """Every page path in a nav tree: items are `path`, `{title: path}` or `{title: [items]}`."""
    if isinstance(nav, str):
        if not re.match(r"[a-z][a-z0-9+.-]*://", nav):  # external links are not pages
            yield nav
    elif isinstance(nav, list):
        for item in nav:
            yield from _nav_files(item)
    elif isinstance(nav, dict):
        for value in nav.values():
            yield from _nav_files(value)


def _pages_on_disk() -> set[str]:
    docs = _docs_dir()
    return {p.relative_to(docs).as_posix() for p in docs.rglob("*.md")}


def test_nav_pages_exist() -> None:
    nav = list(_nav_files(_config()["nav"]))
    assert nav, "mkdocs.yml has an empty nav"
    assert len(nav) == len(set(nav)), f"a page appears twice in mkdocs.yml's nav: {nav}"
    missing = sorted(set(nav) - _pages_on_disk())
    assert not missing, (
        f"mkdocs.yml's nav names pages that are not in {_docs_dir()}: {missing}; "
        "write them or take them out of the nav"
    )


def test_every_page_is_in_the_nav() -> None:
    forgotten = sorted(_pages_on_disk() - set(_nav_files(_config()["nav"])))
    assert not forgotten, (
        f"pages under docs/ that mkdocs.yml's nav leaves out: {forgotten}; "
        "add each to the nav in mkdocs.yml"
    )


def test_home_page_links_every_page() -> None:
    """docs/index.md is the site's table of contents in prose: each page needs a line there."""
    config = _config()
    home = (_docs_dir() / "index.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", home))
    unlinked = sorted(set(_nav_files(config["nav"])) - linked - {"index.md"})
    assert not unlinked, f"docs/index.md does not link to {unlinked}; add a line for each"


def test_strict_build(tmp_path: Path) -> None:
    """The build `tox -e docs` runs: any warning (a broken link or anchor) fails it."""
    pytest.importorskip("mkdocs", reason="building the site needs mkdocs (`pip install .[docs]`)")
    # No --quiet: mkdocs 1.6 counts warnings for --strict only when they are logged, so a quiet
    # build with broken links would pass.
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(CONFIG), "-d", str(site)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}{proc.stderr}"
    assert (site / "checks.html").is_file(), "the catalog page was not built"
