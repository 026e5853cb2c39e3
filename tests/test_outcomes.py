"""Outcomes with an owner: harness faults are `error` (exit 4), one mistake is one failure (the
rest `blocked`), and no harness code hides in strings."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

import conformance.context
from conformance.cli import main
from conformance.framework import load_catalog, prerequisites
from conformance.overlay import Overlay
from conformance.probes import runtime
from conformance.probes.data import ExceptionInfo, Frame, from_json, to_json
from conformance.runner import SUITE_FAILED
from conformance.target import EntryPointInfo, Target

ROOT = Path(__file__).resolve().parents[1]
GENERAL = "vllm.general_plugins"
MAX_STATEMENTS = 10


def _code_strings(path: Path) -> list[tuple[int, int]]:
    """(line, statements) of every string constant in `path` that parses as Python with more
    than MAX_STATEMENTS statements."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        try:
            tree = ast.parse(textwrap.dedent(node.value))
        except (SyntaxError, ValueError):
            continue
        statements = sum(isinstance(n, ast.stmt) for n in ast.walk(tree))
        if statements > MAX_STATEMENTS:
            found.append((node.lineno, statements))
    return found


@pytest.mark.parametrize("tree", ["conformance", "benchmarks"])
def test_no_harness_code_lives_in_strings(tree):
    offenders = {
        str(path.relative_to(ROOT)): found
        for path in sorted((ROOT / tree).rglob("*.py"))
        if "fixtures" not in path.relative_to(ROOT).parts and (found := _code_strings(path))
    }
    assert offenders == {}, "move this code into conformance/probes/ (line, statements)"


def test_the_string_walker_finds_code():
    # The walker itself must be able to fail: a module with a long code string.
    body = "\n".join(f"x{i} = {i}" for i in range(MAX_STATEMENTS + 1))
    assert _code_strings_of(f"CODE = {body!r}\n") == [(1, MAX_STATEMENTS + 1)]
    assert _code_strings_of("CODE = 'x = 1'\nTEXT = 'not python at all!'\n") == []


def _code_strings_of(source: str, tmp: Path | None = None) -> list[tuple[int, int]]:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as handle:
        handle.write(source)
    path = Path(handle.name)
    try:
        return _code_strings(path)
    finally:
        path.unlink()


def test_every_prerequisite_is_a_catalog_check_and_there_is_no_cycle():
    catalog = load_catalog()
    for check in catalog.values():
        assert set(check.requires) <= set(catalog), check.id
        assert check.id not in prerequisites(check.id)


# --- exceptions as data --------------------------------------------------------------------


def test_an_exception_info_round_trips_through_json():
    info = ExceptionInfo(
        type="KeyError",
        module="builtins",
        message="'x'",
        frames=[Frame("/p/plugin.py", 3, "register", "d['x']", "plugin")],
        owner="plugin",
        causes=["ValueError: v"],
        missing_module=None,
    )
    assert from_json(ExceptionInfo, to_json(info)) == info
    assert from_json(ExceptionInfo | None, None) is None


def test_from_json_refuses_fields_the_dataclass_does_not_have():
    with pytest.raises(ValueError, match="no field"):
        from_json(
            Frame, {"file": "f", "line": 1, "function": "g", "source": "", "owner": "x", "extra": 1}
        )


def test_capture_blames_the_innermost_frame_of_interest(tmp_path, monkeypatch):
    plugin = tmp_path / "plug"
    plugin.mkdir()
    (plugin / "bad.py").write_text("def boom():\n    raise RuntimeError('plugin broke')\n")
    monkeypatch.syspath_prepend(str(plugin))
    runtime.configure([str(plugin)])
    try:
        import bad  # type: ignore[import-not-found]

        _, error = runtime.attempt(bad.boom)
        assert error is not None and error.owner == "plugin"
        assert error.frames_of_interest()[-1].file.endswith("bad.py")
        # The standard machinery failing right below the boundary is the plugin's doing.
        _, missing = runtime.attempt(__import__, "no_such_module_anywhere")
        assert missing is not None and missing.owner == "plugin"
        assert missing.missing_module == "no_such_module_anywhere"

        # The harness's own code raising outside the boundary is the harness's.
        try:
            runtime.target_entry_point(GENERAL, "no-such-entry-point")
        except LookupError as exc:
            assert runtime.capture(exc).owner == "harness"
        else:
            pytest.fail("target_entry_point found an entry point that does not exist")
    finally:
        runtime.configure([])


# --- a harness fault is the suite's failure, never the plugin's -----------------------------


def test_a_fault_in_a_harness_helper_is_error_not_failed_and_exits_4(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("injected harness fault")

    # Every check that reads a probe observation goes through this helper.
    monkeypatch.setattr(conformance.context, "observation", broken)
    code = main(
        [
            "certify",
            "vllm_add_dummy_stat_logger",
            "--check",
            "stat_logger.*",
            "--check",
            "package.*",
        ]
    )
    out = capsys.readouterr().out
    assert code == 4, out
    assert "FAILED" not in out, "a harness fault is never the plugin's failure"
    assert "ERROR" in out and SUITE_FAILED.split(";")[0] in out
    assert "injected harness fault" in out
    assert "suite-failed" in out.splitlines()[-2]


def test_a_fault_inside_a_probe_function_is_error(tmp_path, monkeypatch, capsys):
    # sitecustomize runs in every probe interpreter: it breaks a harness helper there.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import conformance.probes.general as g\n"
        "def _broken(*a, **k):\n"
        "    raise RuntimeError('injected probe-side fault')\n"
        "g.registered_models = _broken\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(site))
    code = main(
        [
            "certify",
            "vllm_add_dummy_model",
            "--check",
            "general.*",
            "--exclude",
            "general.models-run",
        ]
    )
    out = capsys.readouterr().out
    assert code == 4, out
    assert "injected probe-side fault" in out
    statuses = {line.split()[0] for line in out.splitlines() if line[:1].isupper()}
    assert "FAILED" not in statuses


# --- one mistake is one failure ---------------------------------------------------------------


def _missing_module_target() -> Target:
    files = {"typo_plugin/__init__.py": "def register():\n    pass\n"}
    value = "typo_plgin:register"  # the entry point names a module that does not exist
    overlay = Overlay().add_inline("typo-plugin", files, {GENERAL: {"typo": value}})
    eps = (EntryPointInfo(GENERAL, "typo", value),)
    return Target("typo-plugin", "0.1.0", "project", eps, ("vllm>=0.30",), None, overlay)


def test_an_entry_point_naming_a_missing_module_is_one_failure_and_the_rest_blocked(capsys):
    from conformance.report import render_console
    from conformance.runner import run_checks

    results = run_checks(_missing_module_target())
    failed = [r for r in results if r.status in ("failed", "error")]
    assert [r.id for r in failed] == ["package.entry-points-resolve"]
    assert "no module named 'typo_plgin'" in failed[0].message
    general = [r for r in results if r.group == "general"]
    assert general and all(r.status == "blocked" for r in general)
    assert {r.blocked_by for r in general} == {"package.entry-points-resolve"}
    text = render_console(results)
    assert (
        text.splitlines()[0].startswith("FAILED")
        and "package.entry-points-resolve" in (text.splitlines()[0])
    )


def test_the_cli_reports_a_missing_module_in_under_40_lines_root_cause_first(tmp_path, capsys):
    project = tmp_path / "typo"
    (project / "typo_plugin").mkdir(parents=True)
    (project / "typo_plugin" / "__init__.py").write_text("def register():\n    pass\n")
    (project / "pyproject.toml").write_text(
        '[project]\nname = "typo-plugin"\nversion = "0.1.0"\ndependencies = ["vllm>=0.30"]\n'
        '[project.entry-points."vllm.general_plugins"]\ntypo = "typo_plgin:register"\n'
    )
    assert main(["certify", str(project), "--engine", "reference"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) < 40, "\n".join(lines)
    statuses = [line.split()[0] for line in lines if line.split() and line.split()[0].isupper()]
    assert statuses.count("FAILED") == 2, "once as it finished, once among the root causes"
    first_failure = next(i for i, line in enumerate(lines) if line.startswith("FAILED"))
    first_blocked = next(i for i, line in enumerate(lines) if line.startswith("BLOCKED"))
    assert first_failure < first_blocked, "the root cause comes before what it blocked"
    causes = lines.index("Root causes:")
    assert "package.entry-points-resolve" in lines[causes + 1]
    assert "no module named 'typo_plgin'" in lines[causes + 3]
