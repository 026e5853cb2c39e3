"""A minimal in-tree PEP 517/660 build backend for the tests' plugin projects.

It needs nothing installed (`requires = []`), so pip builds with it offline, with build
isolation on. It packs the one package named in `[tool.tiny-backend] package`, the project's
dependencies and its entry points; an editable wheel holds a `.pth` line to the project.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import tomllib


def _project() -> dict:
    return tomllib.loads(Path("pyproject.toml").read_text(encoding="utf-8"))


def _dist_info(project: dict) -> tuple[str, dict[str, str]]:
    meta = project["project"]
    name, version = meta["name"].replace("-", "_"), meta["version"]
    lines = ["Metadata-Version: 2.1", f"Name: {meta['name']}", f"Version: {version}"]
    lines += [f"Requires-Dist: {dep}" for dep in meta.get("dependencies", [])]
    points = []
    for group, entries in meta.get("entry-points", {}).items():
        points.append(f"[{group}]")
        points += [f"{key} = {value}" for key, value in entries.items()]
    files = {
        "METADATA": "\n".join(lines) + "\n",
        "WHEEL": "Wheel-Version: 1.0\nGenerator: tiny-backend\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
        "entry_points.txt": "\n".join(points) + "\n",
    }
    return f"{name}-{version}", files


def _wheel(directory: str, contents: dict[str, bytes]) -> str:
    stem, files = _dist_info(_project())
    info = f"{stem}.dist-info"
    contents.update({f"{info}/{k}": v.encode() for k, v in files.items()})
    record = []
    for path, data in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    contents[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(Path(directory) / wheel, "w") as archive:
        for path, data in contents.items():
            archive.writestr(path, data)
    return wheel


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    package = _project()["tool"]["tiny-backend"]["package"]
    contents = {path.as_posix(): path.read_bytes() for path in Path(package).rglob("*.py")}
    return _wheel(wheel_directory, contents)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    stem, _ = _dist_info(_project())
    return _wheel(wheel_directory, {f"{stem}.pth": f"{Path.cwd()}\n".encode()})
