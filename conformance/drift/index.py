"""The vLLM API index: which modules, names and methods each indexed release has.

The index is gzip JSON shipped as package data (`data/index.json.gz`, written by
`python -m conformance.drift.build_index`). Every name is stored once with a bitset over the
release list (bit i set: present in `releases[i]`):

    {"schema": 1, "kind": "vllm-api-index", "releases": ["0.20.0", ...],
     "modules": {"vllm.x": mask}, "extensions": {"vllm._C": mask},
     "names": {"vllm.x": {"Name": mask}},
     "aliases": {"vllm.x": {"Name": [[mask, "vllm.y.Name"]]}},
     "classes": {"vllm.y.Name": {"bases": [[mask, ["vllm.z.Base"]]],
                                 "methods": {"m": [[mask, signature_number]]}}},
     "signatures": ["self,x,-y="], "identical": {"0.20.1": "0.20.0"}, "builder": {...}}

`aliases` maps re-exported names to the class they stand for; `identical` lists patch releases
left out because their API equals an indexed one. Reading it needs only the standard library.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from conformance.drift.signatures import Signature

SCHEMA = 1
KIND = "vllm-api-index"
DEFAULT_INDEX = Path(__file__).resolve().parent / "data" / "index.json.gz"
#: alias chains longer than this are treated as unresolvable (they would be cycles)
_MAX_HOPS = 8


class IndexFileError(ValueError):
    """The index file is missing or is not a vLLM API index this reader understands."""


def release_version(text: str) -> Version:
    """The release a version string names, without its local part (`0.32.0+cpu` → 0.32.0)."""
    return Version(text.split("+")[0])


class ApiIndex:
    """Queries over one loaded index; releases are addressed by their position in `releases`."""

    def __init__(self, data: dict[str, Any]) -> None:
        if data.get("kind") != KIND or data.get("schema") != SCHEMA:
            raise IndexFileError(
                f"not a schema-{SCHEMA} {KIND} (kind={data.get('kind')!r}, "
                f"schema={data.get('schema')!r})"
            )
        self.data = data
        self.releases: tuple[str, ...] = tuple(data["releases"])
        self.identical: dict[str, str] = dict(data.get("identical", {}))
        self._modules: dict[str, int] = data["modules"]
        self._extensions: dict[str, int] = data.get("extensions", {})
        self._names: dict[str, dict[str, int]] = data["names"]
        self._aliases: dict[str, dict[str, list[list[Any]]]] = data.get("aliases", {})
        self._classes: dict[str, dict[str, Any]] = data["classes"]
        self._signatures: list[str] = data["signatures"]

    @classmethod
    def load(cls, path: str | Path | None = None) -> ApiIndex:
        """Read a gzip JSON index (`.json` files are read uncompressed)."""
        path = Path(path) if path is not None else DEFAULT_INDEX
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise IndexFileError(
                f"cannot read the vLLM API index {path}: {exc}. Rebuild it with "
                "`python -m conformance.drift.build_index --out conformance/drift/data/"
                "index.json.gz` or reinstall vllm-plugin-conformance."
            ) from exc
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        try:
            return cls(json.loads(raw))
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexFileError(f"{path} is not a readable vLLM API index: {exc}") from exc

    # -- releases ---------------------------------------------------------------------------

    @property
    def all_mask(self) -> int:
        return (1 << len(self.releases)) - 1

    def mask_of(self, releases: Iterable[str]) -> int:
        mask = 0
        for release in releases:
            mask |= 1 << self.releases.index(release)
        return mask

    def releases_in(self, mask: int) -> list[str]:
        return [r for i, r in enumerate(self.releases) if mask >> i & 1]

    def release_for(self, version: str) -> str | None:
        """The newest indexed release at or below `version` (None if it is older than all)."""
        try:
            wanted = release_version(version)
        except InvalidVersion:
            return None
        older = [r for r in self.releases if release_version(r) <= wanted]
        return older[-1] if older else None

    # -- modules and names ------------------------------------------------------------------

    def module_mask(self, module: str) -> int:
        """Releases that have `module`, as a Python module or a compiled extension."""
        return self._modules.get(module, 0) | self._extensions.get(module, 0)

    def is_extension(self, module: str) -> bool:
        return module in self._extensions

    def names(self, module: str, release: str) -> set[str]:
        """Top-level names `module` defines or re-exports in `release` (submodules aside)."""
        bit = 1 << self.releases.index(release)
        return {n for n, m in self._names.get(module, {}).items() if m & bit}

    def modules(self, release: str) -> set[str]:
        bit = 1 << self.releases.index(release)
        return {m for m, mask in self._modules.items() if mask & bit}

    def import_mask(self, module: str, name: str | None = None) -> int:
        """Releases where `import module` (name None or "*") or `from module import name`
        works: the name is defined there, or `module.name` is a submodule."""
        mask = self.module_mask(module)
        if name is None or name == "*":
            return mask
        named = self._names.get(module, {}).get(name, 0)
        return mask & (named | self.module_mask(f"{module}.{name}"))

    # -- classes ----------------------------------------------------------------------------

    def resolve_class(self, path: str, release: str) -> str | None:
        """The defining path of the class `path` names in `release`, through re-exports."""
        bit = 1 << self.releases.index(release)
        for _ in range(_MAX_HOPS):
            if self._class_bases(path, bit) is not None:
                return path
            module, _, name = path.rpartition(".")
            target = next(
                (t for m, t in self._aliases.get(module, {}).get(name, []) if m & bit), None
            )
            if target is None:
                return None
            path = target
        return None

    def _class_bases(self, path: str, bit: int) -> list[str] | None:
        entry = self._classes.get(path)
        if entry is None:
            return None
        return next((bases for mask, bases in entry["bases"] if mask & bit), None)

    def method(self, path: str, name: str, release: str) -> tuple[str, Signature] | None:
        """(defining class, signature) of method `name` as class `path` has it in `release`:
        the first class along its bases (depth first, left to right) that defines it."""
        bit = 1 << self.releases.index(release)
        start = self.resolve_class(path, release)
        queue, seen = ([start] if start else []), set()
        while queue:
            current = queue.pop(0)
            if current in seen:
                continue
            seen.add(current)
            found = self._own_method(current, name, bit)
            if found is not None:
                return current, found
            bases = [self.resolve_class(b, release) for b in self._class_bases(current, bit) or []]
            queue[:0] = [b for b in bases if b]
        return None

    def _own_method(self, path: str, name: str, bit: int) -> Signature | None:
        versions = self._classes[path].get("methods", {}).get(name, [])
        number = next((n for mask, n in versions if mask & bit), None)
        return None if number is None else Signature.decode(self._signatures[number])
