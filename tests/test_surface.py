"""The `vllm` mount: the import map, its errors, spawned children, and a torch-free core."""

from __future__ import annotations

import importlib
import typing

import pytest
from packaging.version import Version

from conformance.probe import run_probe
from reference._version import CONTRACT_ENV, HARNESS_VERSION
from reference.surface import REMOVED_IN, SURFACE, _intermediate_packages
from tests.conftest import add_plugin, code

#: Imports every table path in a probe: the paths that are not the module object the table
#: names, and those that fail as removed (a `ModuleNotFoundError` naming the path, or the
#: removed package above it).
IMPORT_EVERY_PATH = code(
    """
    import importlib
    from reference.surface import REMOVED_IN, SURFACE
    def outcome(path, target):
        try:
            return importlib.import_module(path) is importlib.import_module(target)
        except ModuleNotFoundError as exc:
            if exc.name in REMOVED_IN and (path + ".").startswith(exc.name + "."):
                return "removed"  # the path, or the package above it, was removed
            return exc.name == "torch"  # torch-backed parts need the engine extra
    outcomes = {p: outcome(p, t) for p, t in SURFACE.items()}
    probe.result["mismatches"] = [p for p, o in outcomes.items() if o is False]
    probe.result["removed"] = sorted(p for p, o in outcomes.items() if o == "removed")
    import vllm.plugins, reference.plugins
    probe.result["attr"] = vllm.plugins is reference.plugins
    """
)


@pytest.mark.parametrize("contract", ["0.32.0", "0.33.0", "0.34.0"])
def test_every_mapped_path_is_the_same_module_object_unless_removed(contract):
    result = run_probe(IMPORT_EVERY_PATH, contract=contract)
    assert result.ok, result.describe()
    removed = sorted(p for p, v in REMOVED_IN.items() if Version(contract) >= Version(v))
    assert result.values == {"mismatches": [], "removed": removed, "attr": True}
    if contract == "0.34.0":
        assert "vllm.v1.sample.logits_processor" in removed


def test_a_removed_module_fails_as_on_the_release_that_removed_it():
    result = run_probe(
        "try:\n    from vllm.v1.sample.logits_processor import LogitsProcessor\n"
        "except ImportError as e:\n    probe.result['error'] = [type(e).__name__, str(e)]\n",
        contract="0.34.0",
    )
    assert result.values["error"] == [
        "ModuleNotFoundError",
        "No module named 'vllm.v1.sample.logits_processor'",
    ]


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


@pytest.mark.parametrize(("contract", "expected"), [(None, "0.34.0"), ("0.32.0", "0.32.0")])
def test_vllm_attributes_come_from_the_reference_package(monkeypatch, contract, expected):
    monkeypatch.delenv(CONTRACT_ENV, raising=False)
    result = run_probe(
        "import vllm, reference\nprobe.result['v'] = [vllm.__version__, reference.__version__]\n",
        contract=contract,
    )
    version, ref_version = result.values["v"]
    assert version == ref_version == f"{expected}+reference.{HARNESS_VERSION}"


def test_an_unsupported_contract_is_an_error_naming_the_variable():
    result = run_probe("import vllm\nvllm.__version__\n", env={CONTRACT_ENV: "0.31.0"})
    assert result.status == "setup-failed"
    assert result.exception.type == "ValueError"
    assert result.exception.message == (
        f"{CONTRACT_ENV}='0.31.0' is not a contract the reference engine models; "
        "supported: 0.32.0, 0.33.0, 0.34.0 (unset: 0.34.0)."
    )


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


# -- the modules added from the corpus census: signatures and behaviour beside vLLM ---------

#: Reference modules that answer the paths added from the census (docs/ecosystem.md); each
#: path mapped to one of them has rows in docs/fidelity-surface.md.
CENSUS_TARGETS = {
    "reference.distributed",
    "reference.logging_utils",
    "reference.forward_context",
    "reference.layers.linear",
    "reference.layers.logits_processor",
    "reference.layers.mamba_utils",
    "reference.layers.quantization",
    "reference.layers.utils",
    "reference.layers.vocab_parallel_embedding",
    "reference.math_utils",
    "reference.model_loader",
    "reference.models.interfaces",
    "reference.models.utils",
    "reference.reasoning",
    "reference.sequence",
    "reference.torch_utils",
    "reference.tool_parsers",
    "reference.hf_config_registry",
    "reference.argparse_utils",
    "reference.ec_transfer",
    "reference.sampler",
    "reference.engine.llm_engine",
}


#: Classes of those modules that predate the census, with their own documented reductions
#: (`WeightsMapper` models only the substring, prefix and suffix rules).
PREDATES_CENSUS = {"WeightsMapper"}


def _signature(cls: type, name: str):
    """The index's encoding of method `name` as `cls` defines it."""
    import inspect

    from conformance.drift.signatures import Param, Signature

    kinds = {
        inspect.Parameter.POSITIONAL_ONLY: "positional-only",
        inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional-or-keyword",
        inspect.Parameter.VAR_POSITIONAL: "var-positional",
        inspect.Parameter.KEYWORD_ONLY: "keyword-only",
        inspect.Parameter.VAR_KEYWORD: "var-keyword",
    }
    raw = inspect.getattr_static(cls, name)
    binding = {staticmethod: "static", classmethod: "class"}.get(type(raw), "instance")
    function = raw.__func__ if isinstance(raw, (staticmethod, classmethod)) else raw
    params = tuple(
        Param(p.name, kinds[p.kind], p.default is not p.empty)
        for p in inspect.signature(function).parameters.values()
    )
    return Signature(params, binding)


def _census_paths() -> dict[str, str]:
    return {path: target for path, target in SURFACE.items() if target in CENSUS_TARGETS}


def test_census_modules_have_vllm_032s_names_and_method_signatures():
    """Every public name of an added module that vLLM 0.32 has at that path is a class whose
    methods take the parameters vLLM's take (names, kinds, which have defaults), read from
    the shipped API index; and every path exists in 0.32."""
    pytest.importorskip("torch")
    from conformance.drift.index import ApiIndex

    index, release = ApiIndex.load(), "0.32.0"
    bit = 1 << index.releases.index(release)
    mismatches, checked = [], 0
    for path, target in sorted(_census_paths().items()):
        assert index.module_mask(path) & bit, f"{path} is not a vLLM {release} module"
        module = importlib.import_module(target)
        have = index.names(path, release)
        for name in module.__all__:
            obj = getattr(module, name)
            # `typing.Any` (a type alias such as `Tool` answered loosely) is a class from 3.11.
            alias = obj is typing.Any
            if name not in have or not isinstance(obj, type) or alias or name in PREDATES_CENSUS:
                continue
            defining = index.resolve_class(f"{path}.{name}", release)
            assert defining, f"{path}.{name} is not a class in vLLM {release}"
            for method, value in vars(obj).items():
                if isinstance(value, property) or not callable(getattr(obj, method, None)):
                    continue
                if method.startswith("_") and method != "__init__":
                    continue
                found = index.method(defining, method, release)
                if found is None:
                    continue
                checked += 1
                mine = _signature(obj, method).encode()
                if mine != found[1].encode():
                    mismatches.append(f"{path}.{name}.{method}: {mine} != {found[1].encode()}")
    assert mismatches == []
    assert checked >= 60  # the layers, quantization, loader, reasoning and group classes


def test_every_added_path_has_a_surface_fidelity_row():
    from conformance.surface_fidelity import MODULE_NAMES

    # The device communicator's path predates the census; the platform checks judge it.
    older = {"vllm.distributed.device_communicators.base_device_communicator"}
    assert set(_census_paths()) - older <= set(MODULE_NAMES)
    assert set(MODULE_NAMES) <= set(SURFACE)


def test_the_reference_still_gives_the_recorded_surface_fidelity_values():
    """The rows of docs/fidelity-surface.md, run again on the reference, give the values
    recorded beside vLLM 0.32's; every recorded disagreement is explained."""
    pytest.importorskip("torch")
    import json
    import sys
    from pathlib import Path

    from conformance.surface_fidelity import all_rows, compare, read_notes, run_rows

    recorded = json.loads(
        (Path(__file__).parent.parent / "benchmarks/results/surface-fidelity.json").read_text()
    )
    assert set(recorded["vllm"]) == set(all_rows()), "re-record: the rows changed"
    now = run_rows(sys.executable, "reference", all_rows())
    assert now == recorded["reference"]
    notes = read_notes()
    assert [r.name for r in compare(now, recorded["vllm"]) if not r.agrees] == sorted(
        n for n in notes if recorded["reference"].get(n) != recorded["vllm"].get(n)
    )


def test_one_rank_helpers_refuse_a_larger_world():
    from reference import distributed as dist

    dist.init_distributed_environment(world_size=1, rank=0)
    dist.ensure_model_parallel_initialized(1, 1)
    with pytest.raises(ValueError, match="one process"):
        dist.init_distributed_environment(world_size=2, rank=0)
    with pytest.raises(ValueError, match="tensor_parallel_size=2"):
        dist.initialize_model_parallel(2, 1)
    with pytest.raises(ValueError, match="one rank"):
        dist.GroupCoordinator([[0, 1]], 0, "gloo", False)
    with pytest.raises(AssertionError, match="not divisible"):
        dist.divide(5, 2)
    assert dist.parallel_state is dist and dist.get_tp_group() is dist.get_tp_group()


def test_reasoning_registration_rejects_what_vllm_rejects():
    from reference.reasoning import ReasoningParserManager as Manager

    with pytest.raises(TypeError, match="force must be a boolean"):
        Manager.register_module("x", force="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="subclass of ReasoningParser"):
        Manager.register_module("x", module=int)  # type: ignore[arg-type]
    Manager.register_lazy_module("h4-nowhere", "json", "dumps")
    with pytest.raises(TypeError, match="not a ReasoningParser subclass"):
        Manager.get_reasoning_parser("h4-nowhere")
    del Manager.lazy_parsers["h4-nowhere"]


def test_conv_state_layout_follows_the_environment(monkeypatch):
    pytest.importorskip("torch")
    from reference.layers import mamba_utils

    mamba_utils.get_conv_state_layout.cache_clear()
    monkeypatch.setenv("VLLM_SSM_CONV_STATE_LAYOUT", "DS")
    try:
        shape = mamba_utils.MambaStateShapeCalculator.mamba1_state_shape(1, 64, 16, 4)
        assert shape == ((64, 3), (64, 16))
    finally:
        mamba_utils.get_conv_state_layout.cache_clear()


def test_tool_helpers_read_each_kind_of_tool_by_its_fields():
    """Chat Completions tools (`function.name`), Responses function tools (`name`),
    namespaces (`<namespace>__<name>`) and custom tools (one string `input`) are found by
    name, as vLLM finds its pydantic classes; other tool types show no function."""
    from types import SimpleNamespace as NS

    from reference.tool_parsers import (
        ToolParser,
        find_tool_name,
        find_tool_properties,
        iter_response_function_tool_info,
    )

    props = {"properties": {"city": {"type": "string"}}}
    chat = NS(type="function", function=NS(name="weather", parameters=props))
    responses = NS(type="function", name="time", parameters=None)
    namespace = NS(
        type="namespace", name="files", tools=[NS(type="function", name="read", parameters=props)]
    )
    custom = NS(type="custom", name="shell")
    search = NS(type="web_search")
    tools = [chat, responses, namespace, custom, search]

    assert [find_tool_name(tools, n) for n in ("weather", "time", "files__read", "shell")] == [
        True
    ] * 4
    assert not find_tool_name(tools, "read") and not find_tool_name(tools, "web_search")
    assert find_tool_properties(tools, "weather") == props["properties"]
    assert find_tool_properties(tools, "files__read") == props["properties"]
    assert find_tool_properties(tools, "time") == {}
    assert find_tool_properties(tools, "shell") == {
        "input": {"type": "string", "description": "The freeform text payload for this tool."}
    }
    assert iter_response_function_tool_info(chat) == [], (
        "a Chat Completions tool is no Responses tool"
    )
    assert iter_response_function_tool_info(search) == []
    assert ToolParser(None, tools).tools == [chat, responses], "only function tools are kept"


def test_flexible_argument_parser_refuses_a_config_file_that_is_not_yaml(tmp_path):
    from reference.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    parser.add_argument("--port", type=int)
    with pytest.raises(ValueError, match="yaml/yml type. json supplied"):
        parser.parse_args(["--config", str(tmp_path / "c.json")])
    with pytest.raises(ValueError, match="No config file specified"):
        parser.parse_args(["--port", "1", "--config"])
