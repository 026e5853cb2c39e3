"""ModelRegistry (contract §10): registration rules, lazy loading, resolution, plugin use."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import reference
from conformance.probe import run_probe
from reference._version import CONTRACT_ENV, SUPPORTED_CONTRACTS
from reference.models import registry as registry_module
from reference.models.registry import (
    ModelRegistry,
    _ModelRegistry,
    builtin_models,
    vllm_builtin_architectures,
)
from tests.conftest import code

LOGGER = "vllm.model_executor.models.registry"
BUILTINS = {
    "LlamaForCausalLM": ("LlamaForCausalLM", False),
    "OPTForCausalLM": ("OPTForCausalLM", False),
    "GPT2LMHeadModel": ("GPT2LMHeadModel", False),
    # The architecture "LlamaModel" is an embedding model; the class `LlamaModel` is the
    # backbone, as in vLLM.
    "LlamaModel": ("LlamaEmbeddingModel", True),
}
DUMMY_ARCHS = ["MyOPTForCausalLM", "MyLlamaEmbedding"]


@pytest.fixture
def registry() -> _ModelRegistry:
    """A fresh registry holding the built-ins, so tests never touch the process-wide one."""
    # Loading is cached per (architecture, registration), as in vLLM; start each test afresh.
    registry_module._try_load_model_cls.cache_clear()
    registry_module._try_inspect_model_cls.cache_clear()
    return _ModelRegistry(builtin_models())


@pytest.fixture
def records():
    """Every record the registry logger emits (the `vllm` tree does not propagate to root)."""
    captured: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = captured.append
    logger = logging.getLogger(LOGGER)
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield captured
    logger.removeHandler(handler)
    logger.setLevel(previous)


# --- registration ----------------------------------------------------------------------------


def test_a_non_string_architecture_is_a_type_error(registry):
    with pytest.raises(TypeError) as info:
        registry.register_model(42, "pkg.mod:Model")
    assert str(info.value) == "`model_arch` should be a string, not a <class 'int'>"


@pytest.mark.parametrize("target", ["pkg.mod.Model", "pkg:mod:Model", ""])
def test_a_lazy_target_must_split_into_module_and_class(registry, target):
    with pytest.raises(ValueError) as info:
        registry.register_model("Arch", target)
    assert str(info.value) == "Expected a string in the format `<module>:<class>`"
    assert "Arch" not in registry.get_supported_archs()


@pytest.mark.parametrize(
    ("model_cls", "type_name"),
    [(42, "<class 'int'>"), (dict, "<class 'type'>"), (None, "<class 'NoneType'>")],
    ids=["int", "plain-class", "none"],
)
def test_a_target_that_is_neither_a_string_nor_a_module_class_is_a_type_error(
    registry, model_cls, type_name
):
    with pytest.raises(TypeError) as info:
        registry.register_model("Arch", model_cls)
    assert str(info.value) == (
        f"`model_cls` should be a string or PyTorch model class, not a {type_name}"
    )


def test_a_lazy_registration_imports_nothing(registry):
    registry.register_model("Ghost", "no_such_package_for_registry_tests.models:Ghost")
    assert "Ghost" in registry.get_supported_archs()
    assert "no_such_package_for_registry_tests" not in sys.modules, "registration must not import"


def test_supported_archs_is_a_live_view(registry):
    archs = registry.get_supported_archs()
    registry.register_model("Later", "pkg.mod:Later")
    assert "Later" in archs, "a view taken before a registration must show it"


def test_overwriting_an_architecture_is_logged_at_debug(registry, records):
    registry.register_model("LlamaForCausalLM", "my_plugin.llama:MyLlama")
    assert [(r.levelname, r.getMessage()) for r in records] == [
        (
            "DEBUG",
            "Model architecture LlamaForCausalLM is already registered, and will be "
            "overwritten by the new model class my_plugin.llama:MyLlama.",
        )
    ]
    assert registry.models["LlamaForCausalLM"].module_name == "my_plugin.llama"


def test_a_first_registration_logs_nothing(registry, records):
    registry.register_model("Fresh", "pkg.mod:Fresh")
    assert records == []


def test_the_builtins_are_registered_lazily():
    assert set(BUILTINS) <= set(ModelRegistry.get_supported_archs())
    for arch in BUILTINS:
        assert ModelRegistry.models[arch].module_name.startswith("reference.models.")


def test_vllm_exports_the_one_registry():
    from reference import models

    assert reference.ModelRegistry is models.ModelRegistry is registry_module.ModelRegistry


def test_the_registry_and_its_builtin_metadata_need_no_torch():
    script = textwrap.dedent(
        """
        import sys
        from reference.models import ModelRegistry
        ModelRegistry.register_model("Lazy", "pkg.mod:Lazy")
        assert ModelRegistry.is_pooling_model("LlamaModel")
        assert ModelRegistry.is_text_generation_model(["LlamaForCausalLM"])
        print("torch" in sys.modules, "transformers" in sys.modules)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.split() == ["False", "False"], "neither torch nor transformers imported"


# --- resolution ------------------------------------------------------------------------------


def test_an_unknown_architecture_names_it_and_the_supported_ones(registry):
    with pytest.raises(ValueError) as info:
        registry.resolve_model_cls(["NoSuchModel"])
    assert str(info.value) == (
        "Model architectures ['NoSuchModel'] are not supported for now. "
        f"Supported architectures: {registry.get_supported_archs()}"
    )


def test_no_architectures_is_a_value_error(registry):
    with pytest.raises(ValueError, match="No model architectures are specified"):
        registry.resolve_model_cls([])


def test_a_lazy_target_is_imported_on_resolution(registry):
    registry.register_model("Ordered", "collections:OrderedDict")
    from collections import OrderedDict

    assert registry.resolve_model_cls("Ordered") == (OrderedDict, "Ordered")
    assert registry.load_model_cls("Ordered") is OrderedDict


def test_resolution_takes_the_first_architecture_that_is_registered(registry):
    registry.register_model("Ordered", "collections:OrderedDict")
    assert registry.resolve_model_cls(["Unknown", "Ordered"])[1] == "Ordered"


def test_a_lazy_target_that_fails_to_import_is_logged_and_raises(registry, records):
    registry.register_model("Broken", "no_such_package_for_registry_tests:Model")
    with pytest.raises(ValueError) as info:
        registry.resolve_model_cls(["Broken"])
    assert str(info.value) == (
        "Model architectures ['Broken'] failed to be inspected. "
        "Please check the logs for more details."
    )
    assert isinstance(info.value.__cause__, ModuleNotFoundError), "the import error is the cause"
    [record] = [r for r in records if r.levelname == "ERROR"]
    assert record.getMessage() == "Error in loading model architecture 'Broken'"
    assert record.exc_info and record.exc_info[1] is info.value.__cause__, (
        "logged with the import error's traceback"
    )


def test_a_missing_class_in_an_importable_module_fails_the_same_way(registry):
    registry.register_model("Missing", "collections:NoSuchClass")
    with pytest.raises(ValueError, match="failed to be inspected") as info:
        registry.load_model_cls("Missing")
    assert isinstance(info.value.__cause__, AttributeError)


def test_builtin_kinds_are_known_without_importing_them(registry):
    assert registry.is_pooling_model("LlamaModel")
    assert not registry.is_text_generation_model("LlamaModel")
    assert registry.is_text_generation_model("GPT2LMHeadModel")
    assert not registry.is_pooling_model("OPTForCausalLM")


# --- vLLM's built-in architectures --------------------------------------------------------------

#: Architectures vLLM added or dropped between the contract releases (read from their registries).
ONLY_SINCE_0_33 = "AliceAIForCausalLM"
ONLY_UNTIL_0_33 = "KeyeForConditionalGeneration"


def test_vllms_builtin_names_are_listed_per_contract_release():
    # simulst's register() raises unless vLLM ships HYV3ForCausalLM (built in since 0.31).
    by_release = {c: builtin_models(c) for c in SUPPORTED_CONTRACTS}
    assert all(len(models) > 300 for models in by_release.values()), "hundreds, as vLLM ships"
    assert all("HYV3ForCausalLM" in models for models in by_release.values())
    assert ONLY_SINCE_0_33 not in by_release["0.32.0"]
    assert ONLY_SINCE_0_33 in by_release["0.33.0"] and ONLY_SINCE_0_33 in by_release["0.34.0"]
    assert ONLY_UNTIL_0_33 in by_release["0.33.0"] and ONLY_UNTIL_0_33 not in by_release["0.34.0"]
    hyv3 = by_release["0.32.0"]["HYV3ForCausalLM"]
    assert (hyv3.module_name, hyv3.class_name) == (
        "vllm.model_executor.models.hy_v3",
        "HYV3ForCausalLM",
    ), "vLLM's own module path and class"


def test_the_process_wide_registry_follows_the_modelled_contract():
    script = "from reference.models import ModelRegistry as R; print(len(R.get_supported_archs()))"
    counts = {}
    for contract in ("0.32.0", "0.34.0"):
        result = subprocess.run(
            [sys.executable, "-c", script],
            cwd=Path(__file__).resolve().parents[1],
            env={**os.environ, CONTRACT_ENV: contract},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        counts[contract] = int(result.stdout)
    assert counts == {c: len(builtin_models(c)) for c in counts}
    assert counts["0.32.0"] != counts["0.34.0"]


def test_the_reference_stand_ins_win_over_vllms_entries():
    models = builtin_models("0.32.0")
    for arch, (class_name, _) in BUILTINS.items():
        assert models[arch].module_name.startswith("reference.models."), arch
        assert models[arch].class_name == class_name
    # vLLM serves LlamaModel with its LlamaForCausalLM adapted; the stand-in is its own class.
    assert vllm_builtin_architectures("0.32.0")["LlamaModel"].endswith(":LlamaForCausalLM")


def test_every_recorded_module_is_vllms_at_that_release():
    from conformance.checks.drift import api_index

    index = api_index()
    for release in SUPPORTED_CONTRACTS:
        bit = 1 << index.releases.index(release)
        modules = {t.partition(":")[0] for t in vllm_builtin_architectures(release).values()}
        assert modules, release
        assert [m for m in sorted(modules) if not index.import_mask(m) & bit] == [], release


def test_a_builtin_the_reference_does_not_run_fails_with_vllms_module_path(registry, records):
    with pytest.raises(ValueError, match="failed to be inspected") as info:
        registry.resolve_model_cls(["HYV3ForCausalLM"])
    cause = info.value.__cause__
    assert isinstance(cause, ModuleNotFoundError), "no vLLM here: its module cannot be found"
    assert "vllm.model_executor.models.hy_v3".startswith(cause.name), cause.name
    with pytest.raises(ValueError, match="failed to be inspected"):
        registry.is_text_generation_model(["HYV3ForCausalLM"])


RESOLVE_BUILTINS = code(
    """
    from vllm import ModelRegistry

    def resolve(arch):
        try:
            ModelRegistry.resolve_model_cls([arch])
        except ValueError as exc:
            cause = exc.__cause__
            kind = "ModuleNotFoundError" if isinstance(cause, ModuleNotFoundError) else "other"
            kind = "ImportError" if type(cause) is ImportError else kind
            return [kind, cause.name, str(cause)]
        return None

    probe.result["hy_v3"] = resolve("HYV3ForCausalLM")
    probe.result["llama_class"] = resolve("LlamaBidirectionalModel")
    probe.result["llama_alias"] = resolve("LLaMAForCausalLM")
    """
)


def test_resolving_builtins_in_the_mounted_reference_names_what_vllm_has():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    result = run_probe(RESOLVE_BUILTINS, env={CONTRACT_ENV: "0.32.0"})
    assert result.ok, result.describe()
    module = "vllm.model_executor.models.hy_v3"
    kind, name, message = result.values["hy_v3"]
    assert (kind, name) == ("ModuleNotFoundError", module)
    assert message.startswith(f"No module named '{module}'"), message
    # The reference answers vLLM's llama module, but not all of its classes.
    llama = "vllm.model_executor.models.llama"
    assert result.values["llama_class"] == [
        "ImportError",
        llama,
        f"cannot import name 'LlamaBidirectionalModel' from '{llama}'",
    ]
    assert result.values["llama_alias"] is None, "an alias of a class the reference has resolves"


def test_replacing_a_vllm_builtin_is_logged_at_debug_as_vllm_does(registry, records):
    registry.register_model("ModernBertModel", "my_plugin.bert:MyBert")
    assert [r.levelname for r in records] == ["DEBUG"]
    assert "ModernBertModel is already registered" in records[0].getMessage()
    assert registry.models["ModernBertModel"].module_name == "my_plugin.bert"


# --- with torch -------------------------------------------------------------------------------


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def test_a_module_class_is_registered_and_inspected_at_once(registry, torch):
    class Generator(torch.nn.Module):
        def compute_logits(self, hidden_states):
            return hidden_states

    class Embedder(torch.nn.Module):
        is_pooling_model = True

    registry.register_model("Generator", Generator)
    registry.register_model("Embedder", Embedder)
    assert registry.resolve_model_cls("Generator") == (Generator, "Generator")
    assert registry.is_text_generation_model("Generator")
    assert registry.is_pooling_model("Embedder")
    assert not registry.is_text_generation_model("Embedder")


@pytest.mark.parametrize("arch", sorted(BUILTINS))
def test_each_builtin_resolves_to_a_model_of_its_declared_kind(registry, torch, arch):
    pytest.importorskip("transformers")
    model_cls, resolved = registry.resolve_model_cls([arch])
    class_name, pooling = BUILTINS[arch]
    assert (model_cls.__name__, resolved) == (class_name, arch)
    assert issubclass(model_cls, torch.nn.Module)
    assert bool(getattr(model_cls, "is_pooling_model", False)) is pooling
    assert callable(getattr(model_cls, "compute_logits", None)) is not pooling


# --- the dummy model plugin, in probes --------------------------------------------------------

REGISTER = code(
    """
    import sys
    from vllm import ModelRegistry
    from vllm.plugins import load_general_plugins

    load_general_plugins()
    archs = ModelRegistry.get_supported_archs()
    probe.result["registered"] = [a for a in ARCHS if a in archs]
    probe.result["imported"] = sorted(m for m in sys.modules if m.startswith("vllm_add_dummy_model."))
    probe.result["torch"] = "torch" in sys.modules
    """
).replace("ARCHS", repr(DUMMY_ARCHS))


@pytest.fixture
def dummy_model(overlay):
    return overlay.add_fixture("vllm_add_dummy_model")


def test_the_dummy_model_plugin_registers_both_architectures_lazily(dummy_model):
    result = run_probe(REGISTER, overlay=dummy_model)
    assert result.ok, result.describe()
    assert result.values["registered"] == DUMMY_ARCHS
    assert result.values["imported"] == [], "lazy registration imports no model module"
    assert result.values["torch"] is False, "registering must not import torch"


def test_the_dummy_model_plugin_is_reentrant(dummy_model):
    result = run_probe(
        REGISTER
        + code(
            """
            import vllm_add_dummy_model
            before = dict(ModelRegistry.models)
            mark = probe.mark()
            vllm_add_dummy_model.register()
            vllm_add_dummy_model.register()
            probe.result["unchanged"] = dict(ModelRegistry.models) == before
            probe.result["logged"] = [r["message"] for r in probe.records(since=mark)]
            """
        ),
        overlay=dummy_model,
    )
    assert result.ok, result.describe()
    assert result.values["unchanged"], "calling register() again must change nothing"
    assert result.values["logged"] == [], "calling register() again must log nothing"


def test_vllm_plugins_empty_leaves_the_dummy_architectures_unregistered(dummy_model):
    result = run_probe(REGISTER, overlay=dummy_model, env={"VLLM_PLUGINS": ""})
    assert result.ok, result.describe()
    assert result.values["registered"] == []


def test_the_dummy_models_run_on_the_reference_engine(dummy_model, torch):
    pytest.importorskip("transformers")
    from fixtures.generators.checkpoint import tiny_llama, tiny_opt, with_architecture

    opt_dir = with_architecture(tiny_opt(), "MyOPTForCausalLM")
    embed_dir = with_architecture(tiny_llama(), "MyLlamaEmbedding")
    result = run_probe(
        REGISTER
        + code(
            f"""
            import torch
            from reference.models.hf import build_from_checkpoint
            from reference.models.pooler import PoolingMetadata
            opt_cls, _ = ModelRegistry.resolve_model_cls(["MyOPTForCausalLM"])
            opt = build_from_checkpoint(opt_cls, {str(opt_dir)!r})
            embed_cls, _ = ModelRegistry.resolve_model_cls(["MyLlamaEmbedding"])
            embed = build_from_checkpoint(embed_cls, {str(embed_dir)!r})
            ids = torch.tensor([1, 40, 50, 60])
            with torch.inference_mode():
                logits = opt.compute_logits(opt(ids, torch.arange(4)))
                hidden = embed(ids, torch.arange(4))
                # Two sequences of 2 tokens, one per embedding task of vLLM 0.32.
                pooled = embed.pooler(hidden, PoolingMetadata([2, 2], ["embed", "token_embed"]))
                backbone = embed.model(ids, torch.arange(4))
            probe.result["greedy"] = logits.argmax(dim=-1).tolist()
            probe.result["shapes"] = [list(t.shape) for t in pooled]
            probe.result["embedding_abs_sum"] = float(sum(t.abs().sum() for t in pooled))
            # The backbone itself computes something: only the plugin's forward zeroes it.
            probe.result["backbone_abs_sum"] = float(backbone.abs().sum())
            probe.result["tasks"] = sorted(embed.pooler.get_supported_tasks())
            probe.result["pooling"] = ModelRegistry.is_pooling_model("MyLlamaEmbedding")
            """
        ),
        overlay=dummy_model,
        timeout=180,
    )
    assert result.ok, result.describe()
    assert result.values["greedy"] == [0, 0, 0, 0], "MyOPTForCausalLM always picks token 0"
    assert result.values["shapes"] == [[128], [2, 128]], "one vector; one per token"
    assert result.values["embedding_abs_sum"] == 0.0, "MyLlamaEmbedding embeds as zeros"
    assert result.values["backbone_abs_sum"] > 0.0, "the loaded backbone is not all zeros"
    assert result.values["tasks"] == ["embed", "token_embed"]
    assert result.values["pooling"] is True


# --- the tool that records vLLM's architectures -----------------------------------------------

REGISTRY_SOURCE = code(
    """
    import sys
    _TEXT_GENERATION_MODELS = {
        "LlamaForCausalLM": ("llama", "LlamaForCausalLM"),
        "NewForCausalLM": ("vllm.models.new", "NewForCausalLM"),
    }
    _EMBEDDING_MODELS: dict[str, tuple[str, str]] = {
        "BertModel": ("bert", "BertEmbeddingModel"),
        **{k: v for k, v in _TEXT_GENERATION_MODELS.items() if v[1] == "LlamaForCausalLM"},
    }
    _PREVIOUSLY_SUPPORTED_MODELS = {"OldForCausalLM": "0.10.2"}
    _VLLM_MODELS = {**_TEXT_GENERATION_MODELS, **_EMBEDDING_MODELS}
    """
)


@pytest.fixture(scope="module")
def tool():
    """`benchmarks/builtin_architectures.py`, loaded from its path (benchmarks is no package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "builtin_architectures.py"
    spec = importlib.util.spec_from_file_location("builtin_architectures_tool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tool_reads_the_merged_table_as_vllm_resolves_it(tool):
    assert tool.builtin_architectures(REGISTRY_SOURCE) == {
        "BertModel": "vllm.model_executor.models.bert:BertEmbeddingModel",
        "LlamaForCausalLM": "vllm.model_executor.models.llama:LlamaForCausalLM",
        "NewForCausalLM": "vllm.models.new:NewForCausalLM",
    }, "relative modules live in vllm.model_executor.models; absolute ones stay"


def test_the_tool_evaluates_no_call_but_items(tool):
    hostile = '_X_MODELS = {"A": __import__("os").getcwd()}\n_VLLM_MODELS = {**_X_MODELS}\n'
    with pytest.raises(tool.SourceError, match="only `table.items\\(\\)` may be called"):
        tool.builtin_architectures(hostile)
    with pytest.raises(tool.SourceError, match="no _VLLM_MODELS"):
        tool.builtin_architectures('_X_MODELS = {"A": ("a", "A")}\n')


def test_the_tool_reads_a_wheel_and_merges_its_release(tool, tmp_path):
    import zipfile

    wheel = tmp_path / "vllm-0.99.0-cp38-abi3-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(tool.REGISTRY, REGISTRY_SOURCE)
        archive.writestr("vllm/_version.py", "__version__ = version = '0.99.0+cpu'\n")
    output = tmp_path / "data.json"
    output.write_text('{"releases": {"0.98.0": {"A": "m:A"}}}')
    assert tool.main([str(wheel), "--output", str(output)]) == 0
    releases = json.loads(output.read_text())["releases"]
    assert list(releases) == ["0.98.0", "0.99.0"], "the other release is kept; local label dropped"
    assert releases["0.99.0"]["BertModel"] == "vllm.model_executor.models.bert:BertEmbeddingModel"
