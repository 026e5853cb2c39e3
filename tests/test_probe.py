"""Probes come back with a result, in bounded time and memory, whatever the code does."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import conformance
from conformance.overlay import Overlay
from conformance.probe import run_probe
from tests.conftest import BUILTIN_GENERAL, GENERAL, add_plugin, code

MiB = 1024 * 1024
#: Probe code that writes 100 MiB to stdout, in 1 MiB chunks.
FLOOD_100_MB = (
    "import sys\nchunk = 'x' * 1048576\nfor _ in range(100):\n    sys.stdout.write(chunk)\n"
)


def test_values_and_timings_come_back():
    result = run_probe("probe.result['answer'] = 6 * 7\n")
    assert result.status == "ok"
    assert result.values == {"answer": 42}
    assert result.code_s is not None and 0 <= result.code_s <= result.wall_s


def test_an_exception_is_reported_with_type_message_and_traceback():
    result = run_probe("def plugin():\n    raise KeyError('boom')\nplugin()\n")
    assert result.status == "raised"
    assert result.exception.type == "KeyError"
    assert result.exception.message == "'boom'"
    assert "in plugin" in result.exception.render()


def test_system_exit_is_a_reported_exception_not_a_lost_probe():
    result = run_probe("import sys\nprobe.result['before'] = 1\nsys.exit(3)\n")
    assert result.status == "raised"
    assert result.exception.type == "SystemExit"
    assert result.values == {"before": 1}, "values stored before the exit are kept"


def test_os_exit_is_a_crash_with_its_exit_code():
    result = run_probe("import os\nos._exit(7)\n")
    assert result.status == "crashed"
    assert result.exit_code == 7
    assert "exited with code 7" in result.describe()


def test_a_segfault_is_a_crash_with_its_signal_and_where_it_died():
    result = run_probe(
        "import ctypes\ndef native_kernel():\n    ctypes.string_at(0)\nnative_kernel()\n"
    )
    assert result.status == "crashed"
    assert result.signal == 11
    described = result.describe()
    assert "SIGSEGV" in described
    assert "Fatal Python error: Segmentation fault in ctypes/__init__.py:" in described
    assert "string_at <- " in described and " native_kernel" in described


#: Probe code whose child process dies of SIGILL in `attention_kernel`, after which the probe
#: prints more than its stderr tail keeps, and ends normally.
CHILD_CRASHES_THEN_NOISE = """
import subprocess, sys
child = "import os, signal\\ndef attention_kernel():\\n    os.kill(os.getpid(), signal.SIGILL)\\nattention_kernel()\\n"
subprocess.run([sys.executable, "-c", child])
for _ in range(200):
    print("ERROR the engine core died; see the stack trace above " * 2, file=sys.stderr)
"""


def test_a_crash_report_from_a_process_the_probe_started_outlives_the_tail():
    from conformance.probe import crash_summary

    result = run_probe(CHILD_CRASHES_THEN_NOISE)
    assert result.status == "ok"
    assert "Fatal Python error" not in result.stderr_tail, "the noise pushed it out of the tail"
    assert result.crash_report.startswith("Fatal Python error: Illegal instruction")
    summary = crash_summary(result.crash_report)
    assert summary.startswith("Fatal Python error: Illegal instruction in <string>:3 ")
    assert "attention_kernel" in summary


def test_the_crash_mark_is_found_where_it_straddles_two_reads():
    import threading

    from conformance.probe import _TailReader

    class Chunks:
        def __init__(self, parts):
            self.parts = list(parts)

        def read1(self, _size):
            return self.parts.pop(0) if self.parts else b""

    text = b"noise\nFatal Python error: Aborted\n\nCurrent thread 0x1 (most recent call first):\n"
    cut = text.index(b"Python") + 3
    reader = _TailReader(Chunks([text[:cut], text[cut:]]), threading.Event(), 1 << 20)
    reader.run()
    assert reader.crash_report().startswith("Fatal Python error: Aborted")


def test_a_hang_is_killed_at_the_timeout():
    result = run_probe("import time\ntime.sleep(60)\n", timeout=1.5)
    assert result.status == "timeout"
    assert result.wall_s < 10


def test_a_hang_in_a_grandchild_process_is_killed_too():
    result = run_probe(
        "import subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "import time\ntime.sleep(60)\n",
        timeout=1.5,
    )
    assert result.status == "timeout"


def test_100_mb_of_output_is_a_flood_that_the_probe_lets_go_on():
    result = run_probe(FLOOD_100_MB + "probe.result['after'] = True\n", timeout=60)
    assert result.ok and result.values == {"after": True}, result.describe()
    assert result.flooded and result.output_bytes >= 100 * MiB
    assert len(result.stdout_tail) <= 4096, "only the tail of the output comes back"


def test_100_mb_of_output_is_drained_keeping_only_its_tail_in_memory():
    # Measured in a fresh interpreter: the test worker's own peak RSS is whatever the heaviest
    # earlier test reached, which would hide any growth here. Not with ru_maxrss, which Linux
    # carries across fork and exec (the child starts at the worker's peak): with VmHWM, the
    # peak of the new interpreter's own memory. The limit is above the output so that all
    # 100 MB pass through the parent (a flood would stop the probe after 8 MB).
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc/self/status (VmHWM) to see this interpreter's own peak")
    measure = f"""
import json, re
from pathlib import Path
from conformance.probe import run_probe
def peak():
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) * 1024
before = peak()
result = run_probe({FLOOD_100_MB!r}, timeout=60, output_limit={200 * MiB})
print(json.dumps({{"status": result.status, "tail": len(result.stdout_tail), "growth": peak() - before}}))
"""
    root = Path(conformance.__file__).resolve().parents[1]
    path = [str(root), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    done = subprocess.run(
        [sys.executable, "-c", measure], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout.splitlines()[-1])
    assert measured["status"] == "ok" and measured["tail"] <= 4096, measured
    assert measured["growth"] < 32 * MiB, (
        f"draining 100 MB of output grew the parent's peak RSS by {measured['growth'] / MiB:.0f} MiB;"
        " expected under 32 MiB: the parent must keep only the tail, not buffer the output"
    )


def test_output_under_the_limit_keeps_its_tail():
    result = run_probe("print('hello from the plugin')\n")
    assert result.ok
    assert result.stdout_tail.strip() == "hello from the plugin"


def test_a_keyboard_interrupt_raised_by_code_is_reported():
    result = run_probe("raise KeyboardInterrupt('plugin pressed ctrl-c')\n")
    assert result.status == "raised" and result.exception.type == "KeyboardInterrupt"


def test_a_non_daemon_thread_does_not_hang_the_probe():
    result = run_probe(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()\n"
        "probe.result['started'] = True\n",
        timeout=20,
    )
    assert result.status == "ok" and result.wall_s < 15


def test_vllm_log_records_are_captured_at_every_level():
    result = run_probe(
        "import logging\nlog = logging.getLogger('vllm.someplugin')\n"
        "log.debug('d')\nlog.warning('w %s', 1)\n"
    )
    assert [(r["level"], r["message"]) for r in result.records] == [
        ("DEBUG", "d"),
        ("WARNING", "w 1"),
    ]


def test_the_environment_is_given_and_inherited_vllm_variables_are_dropped(monkeypatch):
    monkeypatch.setenv("VLLM_PLUGINS", "inherited")
    monkeypatch.setenv("SOME_OTHER", "kept")
    body = (
        "import os\nprobe.result['env'] = [os.environ.get(k) for k in "
        "('VLLM_PLUGINS', 'SOME_OTHER', 'VLLM_TARGET_DEVICE')]\n"
    )
    dropped = run_probe(body, env={"VLLM_TARGET_DEVICE": "cpu"})
    inherited = run_probe(body, inherit_vllm_env=True, env={"SOME_OTHER": None})
    assert dropped.values["env"] == [None, "kept", "cpu"]
    assert inherited.values["env"] == ["inherited", None, None]


def test_exclusive_probes_hide_plugins_installed_outside_the_overlay(overlay, tmp_path):
    outside = add_plugin(
        Overlay(tmp_path / "site"),
        "installed",
        {GENERAL: {"out": "out_mod:f"}},
        out_mod="def f(): pass\n",
    )
    add_plugin(overlay, "in-overlay", {GENERAL: {"in": "in_mod:f"}}, in_mod="def f(): pass\n")
    body = "import vllm.plugins as p\nprobe.result['names'] = sorted(p.load_plugins_by_group(p.DEFAULT_PLUGINS_GROUP))\n"
    env = {"PYTHONPATH": outside.path + ":" + str(__import__("pathlib").Path(__file__).parents[1])}
    exclusive = run_probe(body, overlay=overlay, env=env)
    shared = run_probe(body, overlay=overlay, env=env, exclusive=False)
    assert exclusive.values["names"] == sorted([*BUILTIN_GENERAL, "in"])
    assert shared.values["names"] == sorted([*BUILTIN_GENERAL, "in", "out"])


def test_an_unknown_engine_is_a_usage_error():
    with pytest.raises(ValueError, match="Unknown engine 'tgi'"):
        run_probe("pass", engine="tgi")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="a real vLLM is installed")
def test_engine_vllm_without_vllm_installed_is_a_setup_failure():
    result = run_probe("pass", engine="vllm")
    assert result.status == "setup-failed"
    assert "could not set up the engine" in result.describe()


def test_results_are_json_even_for_unserialisable_values():
    result = run_probe("probe.result['obj'] = object()\n")
    assert result.ok and result.values["obj"].startswith("<object object")


def test_the_probe_runs_the_same_interpreter():
    result = run_probe("import sys\nprobe.result['exe'] = sys.executable\n")
    assert result.values["exe"] == sys.executable


def test_probe_code_sees_the_overlay_first(overlay):
    add_plugin(overlay, "shadow", {}, colorsys="SHADOW = True\n")
    result = run_probe(
        code("import colorsys\nprobe.result['shadowed'] = getattr(colorsys, 'SHADOW', False)\n"),
        overlay=overlay,
    )
    assert result.values == {"shadowed": True}


def test_processes_a_probe_leaves_running_are_stopped_when_it_ends():
    # Like an engine's core and worker processes when the interpreter ends without shutdown.
    result = run_probe(
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "probe.result['child'] = child.pid\n"
    )
    assert result.ok, result.describe()
    pid = result.values["child"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    assert not _alive(pid), f"the probe's child {pid} outlived the probe"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child that nobody has reaped yet is a zombie: gone for our purpose.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def test_a_logging_flood_is_bounded_and_the_probe_goes_on():
    code = (
        "import logging\nlog = logging.getLogger('vllm.plugin_flood')\n"
        "for i in range(50000):\n    log.debug('x' * 5000)\n"
        "log.warning('still here')\nprobe.result['after'] = True\n"
    )
    result = run_probe(code, timeout=60)
    assert result.ok and result.values == {"after": True}, result.describe()
    assert 2000 <= len(result.records) <= 2001
    assert max(len(r["message"]) for r in result.records) == 2000
    assert result.records[-1]["message"] == "still here", "warnings are still captured"
