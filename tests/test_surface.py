"""The `vllm` mount: the import map, its errors, spawned children, and a torch-free core."""

from __future__ import annotations

import importlib

from conformance.probe import run_probe
from reference.surface import SURFACE, _intermediate_packages
from tests.conftest import add_plugin, code


def test_every_mapped_path_is_the_same_module_object():
    result = run_probe(
        code(
            """
            import importlib
            from reference.surface import SURFACE
            def same(path, target):
                try:
                    return importlib.import_module(path) is importlib.import_module(target)
                except ModuleNotFoundError as exc:
                    return exc.name == "torch"  # torch-backed parts need the engine extra
            probe.result["mismatches"] = [p for p, t in SURFACE.items() if not same(p, t)]
            import vllm.plugins, reference.plugins
            probe.result["attr"] = vllm.plugins is reference.plugins
            """
        )
    )
    assert result.ok, result.describe()
    assert result.values == {"mismatches": [], "attr": True}


def _import_target(target):
    """Import a table target; None where it needs torch and torch is absent."""
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name == "torch":
            return None
        raise


def test_the_table_targets_exist_and_synthetic_packages_shadow_nothing():
    """A synthetic package bound on a real module must not hide one of its attributes."""
    for target in sorted(set(SURFACE.values())):
        _import_target(target)
    for package in _intermediate_packages(SURFACE):
        parent, child = package.rsplit(".", 1)
        if parent in SURFACE and (module := _import_target(SURFACE[parent])) is not None:
            assert not hasattr(module, child), (
                f"{package} would overwrite {SURFACE[parent]}.{child}"
            )


def test_an_unmapped_path_raises_an_import_error_that_says_why():
    result = run_probe(
        "try:\n    import vllm.model_executor.not_there\n"
        "except ImportError as e:\n    probe.result['error'] = [type(e).__name__, str(e)]\n"
    )
    kind, message = result.values["error"]
    assert kind == "SurfaceError"
    assert "outside the reference's plugin surface" in message
    assert "--engine vllm" in message


def test_import_errors_are_catchable_as_module_not_found():
    result = run_probe(
        "try:\n    from vllm.not_a_module import x\nexcept ModuleNotFoundError as e:\n"
        "    probe.result['name'] = e.name\n"
    )
    assert result.values == {"name": "vllm.not_a_module"}


def test_vllm_attributes_come_from_the_reference_package():
    result = run_probe(
        "import vllm, reference\nprobe.result['v'] = [vllm.__version__, reference.__version__]\n"
    )
    version, ref_version = result.values["v"]
    assert version == ref_version and version.startswith("0.32.0+reference")


def test_the_mount_works_in_spawned_processes(overlay):
    add_plugin(
        overlay,
        "spawn-target",
        {},
        spawn_target=(
            "from vllm.platforms.interface import Platform\n"
            "def child(queue):\n"
            "    import vllm.plugins, reference.plugins\n"
            "    queue.put([vllm.plugins is reference.plugins, Platform.__module__])\n"
        ),
    )
    result = run_probe(
        code(
            """
            import multiprocessing as mp
            import spawn_target
            ctx = mp.get_context("spawn")
            queue = ctx.Queue()
            proc = ctx.Process(target=spawn_target.child, args=(queue,))
            proc.start()
            probe.result["child"] = queue.get(timeout=30)
            proc.join(60)
            probe.result["exitcode"] = proc.exitcode
            """
        ),
        overlay=overlay,
    )
    assert result.ok, result.describe()
    assert result.values == {"child": [True, "reference.platforms.interface"], "exitcode": 0}


def test_importing_the_mounted_core_never_imports_torch():
    result = run_probe(
        code(
            """
            import sys
            import vllm, vllm.plugins, vllm.platforms, vllm.envs, vllm.logger
            import vllm.platforms.interface, vllm.platforms.cpu, vllm.platforms.cuda
            import vllm.plugins as p
            for group in p.KNOWN_GROUPS:
                p.load_plugins_by_group(group)
            probe.result["torch"] = "torch" in sys.modules
            """
        )
    )
    assert result.ok, result.describe()
    assert result.values == {"torch": False}


def test_mount_refuses_when_a_real_vllm_is_already_imported(overlay):
    add_plugin(overlay, "fake-vllm", {}, **{"vllm.__init__": "REAL = True\n", "vllm.logger": ""})
    result = run_probe(
        code(
            """
            import vllm
            from reference.surface import mount
            try:
                mount()
            except RuntimeError as e:
                probe.result["error"] = str(e)
            """
        ),
        engine="vllm",
        overlay=overlay,
    )
    assert result.ok, result.describe()
    assert "a real vLLM" in result.values["error"] and "--engine vllm" in result.values["error"]


def test_unmount_forgets_the_vllm_modules():
    result = run_probe(
        code(
            """
            import sys
            import vllm.plugins
            from reference.surface import unmount, is_mounted
            unmount()
            probe.result["left"] = sorted(m for m in sys.modules if m == "vllm" or m.startswith("vllm."))
            probe.result["mounted"] = is_mounted()
            """
        )
    )
    assert result.values == {"left": [], "mounted": False}
