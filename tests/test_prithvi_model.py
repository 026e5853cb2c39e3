"""The Prithvi-like segmentation model the IO-processor fixture registers: its seeded checkpoint,
the model itself, its lazy and re-entrant registration, and an offline round trip (request ->
windows -> model -> GeoTIFF) without an engine."""

from __future__ import annotations

import importlib
import json
import sys
from types import SimpleNamespace

import pytest

from conformance.overlay import Overlay, fixtures_root
from conformance.probe import run_probe
from tests.conftest import code

FIXTURE_DIR = fixtures_root() / "prithvi_io_processor"
ARCH = "PrithviLikeSegmentation"


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_CONFORMANCE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def checkpoint():
    """The default cached checkpoint (built once per machine)."""
    pytest.importorskip("numpy")
    pytest.importorskip("safetensors")
    from fixtures.generators.segmentation import tiny_segmentation

    return tiny_segmentation()


# --------------------------------------------------------------------------------------------
# The generator


def test_the_checkpoint_declares_its_architecture_processor_and_sizes(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["architectures"] == [ARCH]
    assert config["io_processor_plugin"] == "prithvi_to_tiff"
    assert (config["num_bands"], config["num_classes"], config["window_size"]) == (6, 2, 32)
    assert (checkpoint / "model.safetensors").is_file()


def test_the_generator_is_cached_and_deterministic(isolated_cache, tmp_path, monkeypatch):
    pytest.importorskip("numpy")
    pytest.importorskip("safetensors")
    from fixtures.generators.segmentation import tiny_segmentation

    first = tiny_segmentation(seed=0)
    assert tiny_segmentation(seed=0) == first, "the same inputs reuse the cached directory"
    assert first.is_relative_to(isolated_cache)
    assert tiny_segmentation(seed=1) != first, "another seed is another directory"
    monkeypatch.setenv("VLLM_CONFORMANCE_CACHE", str(tmp_path / "elsewhere"))
    rebuilt = tiny_segmentation(seed=0)
    assert rebuilt != first
    for name in ("config.json", "model.safetensors"):
        assert (rebuilt / name).read_bytes() == (first / name).read_bytes(), f"{name} differs"


def test_the_weights_have_the_model_parameters_shapes():
    np = pytest.importorskip("numpy")
    from fixtures.generators.segmentation import segmentation_weights

    weights = segmentation_weights(seed=0)
    assert {name: list(w.shape) for name, w in weights.items()} == {
        "stem.weight": [8, 6, 3, 3],
        "stem.bias": [8],
        "body.weight": [8, 8, 3, 3],
        "body.bias": [8],
        "head.weight": [2, 8, 1, 1],
        "head.bias": [2],
    }
    assert all(w.dtype == np.float32 for w in weights.values())
    with pytest.raises(ValueError, match="2 classes"):
        segmentation_weights(classes=3)


# --------------------------------------------------------------------------------------------
# The model, in this process


@pytest.fixture(scope="module")
def model_module():
    """`prithvi_io_processor.model` imported from the fixture's source (no vLLM needed)."""
    pytest.importorskip("torch")
    pytest.importorskip("numpy")
    sys.path.insert(0, str(FIXTURE_DIR))
    try:
        yield importlib.import_module("prithvi_io_processor.model")
    finally:
        sys.path.remove(str(FIXTURE_DIR))
        for name in [m for m in sys.modules if m.split(".")[0] == "prithvi_io_processor"]:
            del sys.modules[name]


def vllm_config_for(config: dict, dtype: str = "auto") -> SimpleNamespace:
    """The parts of a VllmConfig the model reads."""
    return SimpleNamespace(
        model_config=SimpleNamespace(hf_config=SimpleNamespace(**config), dtype=dtype)
    )


@pytest.fixture
def model(model_module, checkpoint):
    from safetensors.torch import load_file

    config = json.loads((checkpoint / "config.json").read_text())
    model = model_module.PrithviLikeSegmentation(vllm_config=vllm_config_for(config))
    loaded = model.load_weights(load_file(str(checkpoint / "model.safetensors")).items())
    assert loaded == {name for name, _ in model.named_parameters()}, "every parameter is set"
    return model


def test_forward_takes_one_window_or_a_batch_as_numpy_or_tensor(model):
    import numpy as np
    import torch

    window = np.random.default_rng(0).normal(size=(6, 32, 32)).astype(np.float32)
    one = model.forward(None, None, multi_modal_data={"image": {"pixel_values": window}})
    assert one.shape == (2, 32, 32) and one.dtype == torch.float32
    assert model.pool(one) is one, "pool hands the per-pixel scores over unchanged"
    batch = torch.from_numpy(np.stack([window, -window]))
    many = model(torch.tensor([1, 1]), None, multi_modal_data={"image": {"pixel_values": batch}})
    assert many.shape == (2, 2, 32, 32)
    torch.testing.assert_close(many[0], one)
    # Other window sizes work too: the network is fully convolutional.
    odd = np.zeros((6, 17, 9), dtype=np.float32)
    assert model(None, None, multi_modal_data={"image": {"pixel_values": odd}}).shape == (2, 17, 9)


def test_the_seeded_weights_segment_band_0_above_zero(model):
    import numpy as np

    window = np.random.default_rng(1).normal(size=(6, 32, 32)).astype(np.float32)
    scores = model(None, None, multi_modal_data={"image": {"pixel_values": window}})
    assert np.array_equal(scores.argmax(0).numpy(), window[0] > 0)


def test_bad_inputs_and_mismatched_weights_name_the_problem(model, model_module):
    import numpy as np
    import torch

    with pytest.raises(ValueError, match="multi_modal_data"):
        model(None, None)
    with pytest.raises(ValueError, match=r"expected \(6, H, W\)"):
        model(None, None, multi_modal_data={"image": {"pixel_values": np.zeros((3, 32, 32))}})
    with pytest.raises(ValueError, match="does not have"):
        model.load_weights([("encoder.weight", torch.zeros(1))])
    with pytest.raises(ValueError, match="num_bands"):
        model.load_weights([("stem.weight", torch.zeros(8, 4, 3, 3))])
    with pytest.raises(ValueError, match="positive integer"):
        model_module.PrithviLikeSegmentation(vllm_config=vllm_config_for({"num_bands": "six"}))
    with pytest.raises(ValueError, match="dtype"):
        model_module.PrithviLikeSegmentation(vllm_config=vllm_config_for({}, dtype="int8"))


def test_a_wrapper_prefix_in_checkpoint_names_is_accepted(model_module, model):
    fresh = model_module.PrithviLikeSegmentation(vllm_config=vllm_config_for({}))
    loaded = fresh.load_weights((f"model.{n}", p) for n, p in model.named_parameters())
    assert loaded == {name for name, _ in fresh.named_parameters()}


# --------------------------------------------------------------------------------------------
# Registration and the offline round trip, on the mounted reference engine (probes)


@pytest.fixture(scope="module")
def prithvi_overlay(tmp_path_factory):
    return Overlay(tmp_path_factory.mktemp("prithvi-model") / "overlay").add_fixture(
        "prithvi_io_processor"
    )


def test_the_general_plugin_registers_lazily_and_re_entrantly(prithvi_overlay):
    result = run_probe(
        code(
            """
            import sys
            from vllm.plugins import load_general_plugins
            from vllm.model_executor.models.registry import ModelRegistry
            from prithvi_io_processor import register_model

            load_general_plugins()
            entry = ModelRegistry.models["PrithviLikeSegmentation"]
            probe.result["target"] = f"{entry.module_name}:{entry.class_name}"
            probe.result["imported"] = sorted(
                {"torch", "prithvi_io_processor.model"} & set(sys.modules))
            register_model()
            register_model()
            probe.result["same"] = ModelRegistry.models["PrithviLikeSegmentation"] is entry
            # A user's own registration of the name is left alone.
            ModelRegistry.register_model("PrithviLikeSegmentation", "user.models:Mine")
            register_model()
            probe.result["kept"] = ModelRegistry.models["PrithviLikeSegmentation"].module_name
            probe.result["warnings"] = [r["message"] for r in probe.records()
                                        if r["level"] in ("WARNING", "ERROR")]
            """
        ),
        overlay=prithvi_overlay,
    )
    assert result.ok, result.describe()
    assert result.values == {
        "target": "prithvi_io_processor.model:PrithviLikeSegmentation",
        "imported": [],
        "same": True,
        "kept": "user.models",
        "warnings": [],
    }


ROUND_TRIP = """
import base64, inspect, io, json
from pathlib import Path
import numpy as np, tifffile, torch
from safetensors.torch import load_file
from vllm.config import HfConfig, ModelConfig, PoolerConfig, VllmConfig
from vllm.model_executor.models.registry import ModelRegistry
from vllm.outputs import PoolingOutput, PoolingRequestOutput
from vllm.plugins import load_general_plugins
from vllm.plugins.io_processors import get_io_processor
from vllm.plugins.io_processors.interface import BaseRenderer
from prithvi_io_processor.imaging import decode_geotiff, normalise

checkpoint = Path(CHECKPOINT)
load_general_plugins()
hf_config = HfConfig.from_pretrained(checkpoint)
served = ModelConfig(
    model=str(checkpoint), hf_config=hf_config, runner_type="pooling", pooler_config=PoolerConfig()
)
vllm_config = VllmConfig(model_config=served)
model_cls, arch = ModelRegistry.resolve_model_cls(hf_config.architectures)
probe.result["resolved"] = [f"{model_cls.__module__}.{model_cls.__qualname__}", arch]
probe.result["pooling"] = ModelRegistry.is_pooling_model(hf_config.architectures)
model = model_cls(vllm_config=vllm_config)
loaded = model.load_weights(load_file(str(checkpoint / "model.safetensors")).items())
probe.result["all_loaded"] = loaded == {name for name, _ in model.named_parameters()}

# No plugin name given: the processor is the one config.json asks for.
processor = get_io_processor(vllm_config, BaseRenderer())
request = type(processor).conformance_sample_request()
prompts = processor.pre_process(processor.parse_data(request), request_id="seg")
extra = {"num_cached_tokens": 0} if "num_cached_tokens" in inspect.signature(
    PoolingRequestOutput).parameters else {}
outputs = []
for index, prompt in enumerate(prompts):
    ids = torch.tensor(prompt["prompt_token_ids"])
    hidden = model(ids, torch.arange(len(ids)), multi_modal_data=prompt["multi_modal_data"])
    outputs.append(PoolingRequestOutput(
        request_id=f"seg-{index}", outputs=PoolingOutput(data=model.pool(hidden)),
        prompt_token_ids=prompt["prompt_token_ids"], finished=True, **extra))
probe.result["windows"] = len(outputs)
probe.result["score_shape"] = list(outputs[0].outputs.data.shape)
response = processor.post_process(outputs, request_id="seg")
probe.result["response"] = [response["type"], response["format"]]
mask = tifffile.imread(io.BytesIO(base64.b64decode(response["data"])))
probe.result["mask"] = [mask.dtype.name, list(mask.shape), sorted(np.unique(mask).tolist())]
band0 = normalise(decode_geotiff(base64.b64decode(request["data"])).pixels)[0]
wrong = mask != (band0 > 0)
# The seeded weights compute band 0 exactly; only a pixel at zero could round either way.
probe.result["wrong_far_from_zero"] = int((wrong & (np.abs(band0) > 1e-4)).sum())
"""


def test_an_offline_round_trip_through_the_model_gives_the_segmentation(
    prithvi_overlay, checkpoint
):
    for module in ("torch", "tifffile", "safetensors"):
        pytest.importorskip(module)
    result = run_probe(
        f"CHECKPOINT = {str(checkpoint)!r}\n" + ROUND_TRIP, overlay=prithvi_overlay, timeout=120
    )
    assert result.ok, result.describe()
    assert result.values == {
        "resolved": ["prithvi_io_processor.model.PrithviLikeSegmentation", ARCH],
        "pooling": True,
        "all_loaded": True,
        "windows": 6,  # 50 x 70 pads to 64 x 96: 2 rows of 3 windows
        "score_shape": [2, 32, 32],
        "response": ["b64_json", "tiff"],
        "mask": ["uint8", [50, 70], [0, 1]],
        "wrong_far_from_zero": 0,
    }
