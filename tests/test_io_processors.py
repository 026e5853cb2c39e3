"""IO processors: the 0.32 `IOProcessor` interface and how `get_io_processor` picks a plugin."""

from __future__ import annotations

import asyncio
import logging

import pytest

from conformance.probe import run_probe
from reference import io_processors
from reference.config import HfConfig, ModelConfig, VllmConfig
from reference.io_processors import (
    BaseRenderer,
    IOProcessor,
    get_io_processor,
    has_io_processor,
)
from reference.pooling_params import PoolingParams
from reference.sampling_params import SamplingParams
from tests.conftest import IO_PROCESSOR, add_plugin, code


class RecordingProcessor(IOProcessor):
    """Keeps its constructor arguments and what pre/post-processing received."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.init_args, self.init_kwargs = args, kwargs
        self.calls: list[tuple[str, tuple, dict]] = []

    def pre_process(self, prompt, request_id=None, **kwargs):
        self.calls.append(("pre_process", (prompt, request_id), kwargs))
        return [prompt]

    def post_process(self, model_output, request_id=None, **kwargs):
        self.calls.append(("post_process", (model_output, request_id), kwargs))
        return model_output


QUALNAME = f"{RecordingProcessor.__module__}.{RecordingProcessor.__qualname__}"


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def captured():
    """The IO processor logger at DEBUG with a handler on it (the `vllm` tree does not propagate)."""
    target = logging.getLogger("vllm.plugins.io_processors")
    handler, level = Capture(), target.level
    target.addHandler(handler)
    target.setLevel(logging.DEBUG)
    yield handler
    target.removeHandler(handler)
    target.setLevel(level)


def config_naming(plugin: str | None = None) -> VllmConfig:
    """A config whose model's config.json names `plugin` (or no plugin)."""
    values = {} if plugin is None else {"io_processor_plugin": plugin}
    return VllmConfig(model_config=ModelConfig(hf_config=HfConfig(values)))


@pytest.fixture
def installed(monkeypatch):
    """Replace the loader: `installed({"name": func, ...})` is what the group holds."""
    calls: list[str] = []

    def install(plugins):
        def load(group):
            assert group == "vllm.io_processor_plugins", f"loaded the wrong group {group!r}"
            calls.append(group)
            return plugins

        monkeypatch.setattr(io_processors, "load_plugins_by_group", load)
        return calls

    return install


# --------------------------------------------------------------------------------------------
# The interface


def test_pre_process_and_post_process_are_abstract():
    class Incomplete(IOProcessor):
        def pre_process(self, prompt, request_id=None, **kwargs):
            return []

    with pytest.raises(TypeError, match="post_process"):
        Incomplete(VllmConfig(), BaseRenderer())


def test_the_constructor_keeps_the_config():
    config = VllmConfig()
    assert RecordingProcessor(config, BaseRenderer()).vllm_config is config


def test_parse_data_is_not_implemented_by_default():
    processor = RecordingProcessor(VllmConfig(), BaseRenderer())
    with pytest.raises(NotImplementedError, match="parse_data"):
        processor.parse_data({"data": 1})


def test_merge_sampling_params_keeps_the_given_params_or_makes_defaults():
    processor = RecordingProcessor(VllmConfig(), BaseRenderer())
    given = SamplingParams(temperature=0.0)
    assert processor.merge_sampling_params(given) is given
    assert processor.merge_sampling_params() == SamplingParams()


def test_merge_pooling_params_defaults_to_the_plugin_task():
    processor = RecordingProcessor(VllmConfig(), BaseRenderer())
    assert processor.merge_pooling_params() == PoolingParams(task="plugin")


def test_merge_pooling_params_keeps_the_given_params():
    processor = RecordingProcessor(VllmConfig(), BaseRenderer())
    given = PoolingParams(task="encode", softmax=False)
    assert processor.merge_pooling_params(given) is given


def test_pre_process_async_delegates_to_pre_process():
    processor = RecordingProcessor(VllmConfig(), BaseRenderer())
    result = asyncio.run(processor.pre_process_async("img", "req-1", extra=True))
    assert result == ["img"]
    assert processor.calls == [("pre_process", ("img", "req-1"), {"extra": True})]


def test_post_process_async_hands_outputs_over_in_prompt_order():
    processor = RecordingProcessor(VllmConfig(), BaseRenderer())

    async def finished_out_of_order():
        for pair in [(2, "c"), (0, "a"), (1, "b")]:
            yield pair

    result = asyncio.run(processor.post_process_async(finished_out_of_order(), request_id="r"))
    assert result == ["a", "b", "c"], "outputs must be sorted by their prompt index"
    assert processor.calls == [("post_process", (["a", "b", "c"], "r"), {})]


# --------------------------------------------------------------------------------------------
# Selection (in process, with the loader replaced)


def test_has_io_processor_follows_the_init_argument_then_the_hf_config(installed):
    calls = installed({})
    assert has_io_processor(config_naming(), "my_plugin") is True
    assert has_io_processor(config_naming("my_plugin")) is True
    assert has_io_processor(config_naming()) is False
    assert calls == [], "has_io_processor only looks at the names; it loads no plugin"


def test_no_requested_plugin_gives_none_with_a_debug_message(installed, captured):
    calls = installed({"my_plugin": lambda: QUALNAME})
    assert get_io_processor(config_naming(), BaseRenderer()) is None
    assert [(r.levelname, r.getMessage()) for r in captured.records] == [
        ("DEBUG", "No IOProcessor plugins requested by the model")
    ]
    assert calls == [], "nothing is loaded when no plugin is requested"


def test_the_init_argument_selects_the_plugin(installed):
    installed({"my_plugin": lambda: QUALNAME})
    assert isinstance(get_io_processor(config_naming(), None, "my_plugin"), RecordingProcessor)


def test_the_hf_config_field_selects_the_plugin(installed):
    installed({"my_plugin": lambda: QUALNAME})
    assert isinstance(get_io_processor(config_naming("my_plugin"), None), RecordingProcessor)


def test_the_init_argument_wins_over_the_hf_config(installed):
    installed({"my_plugin": lambda: QUALNAME, "other": lambda: None})
    processor = get_io_processor(config_naming("wrong_plugin"), None, "my_plugin")
    assert isinstance(processor, RecordingProcessor)


def test_an_empty_init_argument_falls_back_to_the_hf_config(installed):
    installed({"my_plugin": lambda: QUALNAME})
    assert isinstance(get_io_processor(config_naming("my_plugin"), None, ""), RecordingProcessor)


def test_nothing_installed_is_a_value_error(installed):
    installed({})
    with pytest.raises(ValueError) as info:
        get_io_processor(config_naming(), None, "my_plugin")
    assert str(info.value) == "No IOProcessor plugins installed but one is required (my_plugin)."


def test_a_wrong_name_is_a_value_error_that_lists_the_available_plugins(installed):
    installed({"my_plugin": lambda: QUALNAME, "inactive": lambda: None})
    with pytest.raises(ValueError) as info:
        get_io_processor(config_naming("wrong_plugin"), None)
    assert str(info.value) == (
        "The model requires the 'wrong_plugin' IO Processor plugin but it is not installed. "
        "Available plugins: ['my_plugin']"
    ), "plugins whose function returns None are not available"


def test_every_plugin_function_is_called_not_only_the_requested_one(installed):
    called = []
    installed(
        {
            "first": lambda: called.append("first"),
            "my_plugin": lambda: called.append("my_plugin") or QUALNAME,
            "last": lambda: called.append("last"),
        }
    )
    get_io_processor(config_naming(), None, "my_plugin")
    assert called == ["first", "my_plugin", "last"]


def test_a_raising_plugin_function_is_a_warning_and_is_skipped(installed, captured):
    def boom():
        raise RuntimeError("no GPU here")

    installed({"boom": boom, "my_plugin": lambda: QUALNAME})
    assert isinstance(get_io_processor(config_naming(), None, "my_plugin"), RecordingProcessor)
    (record,) = [r for r in captured.records if r.levelno == logging.WARNING]
    assert record.getMessage() == "Failed to load plugin boom."
    assert record.exc_info and "no GPU here" in str(record.exc_info[1]), "traceback attached"


def test_the_processor_is_built_with_config_and_renderer_positionally(installed):
    installed({"my_plugin": lambda: QUALNAME})
    config, renderer = config_naming(), BaseRenderer()
    processor = get_io_processor(config, renderer, "my_plugin")
    assert processor.init_args == (config, renderer) and processor.init_kwargs == {}


# --------------------------------------------------------------------------------------------
# Selection from entry points (probes)

MY_PLUGIN = """
from vllm.plugins.io_processors.interface import IOProcessor

class MyProcessor(IOProcessor):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.init_args = args

    def pre_process(self, prompt, request_id=None, **kwargs):
        return [prompt]

    def post_process(self, model_output, request_id=None, **kwargs):
        return model_output

def register():
    return "my_io.MyProcessor"

def broken():
    raise RuntimeError("broken on purpose")
"""

SELECT = code(
    """
    from vllm.config import HfConfig, ModelConfig, PoolerConfig, VllmConfig
    from vllm.plugins.io_processors import get_io_processor, has_io_processor
    from vllm.plugins.io_processors.interface import BaseRenderer
    hf = HfConfig({"io_processor_plugin": HF_NAME} if HF_NAME else {})
    served = ModelConfig(hf_config=hf, runner_type="pooling", pooler_config=PoolerConfig())
    config = VllmConfig(model_config=served)
    renderer = BaseRenderer(config)
    probe.result["has"] = has_io_processor(config, INIT_NAME)
    try:
        processor = get_io_processor(config, renderer, INIT_NAME)
    except ValueError as exc:
        probe.result["error"] = str(exc)
    else:
        probe.result["class"] = processor and type(processor).__qualname__
        probe.result["args_ok"] = getattr(processor, "init_args", None) == (config, renderer)
    """
)


def select(init_name: str | None = None, hf_name: str | None = None) -> str:
    return f"INIT_NAME = {init_name!r}\nHF_NAME = {hf_name!r}\n" + SELECT


@pytest.fixture
def my_plugin(overlay):
    return add_plugin(
        overlay, "my-io", {IO_PROCESSOR: {"my_plugin": "my_io:register"}}, my_io=MY_PLUGIN
    )


def test_an_installed_plugin_is_selected_by_the_init_argument(my_plugin):
    result = run_probe(select(init_name="my_plugin"), overlay=my_plugin)
    assert result.ok, result.describe()
    assert result.values == {"has": True, "class": "MyProcessor", "args_ok": True}


def test_an_installed_plugin_is_selected_by_the_model_config(my_plugin):
    result = run_probe(select(hf_name="my_plugin"), overlay=my_plugin)
    assert result.values == {"has": True, "class": "MyProcessor", "args_ok": True}


def test_vllm_plugins_without_the_plugin_leaves_nothing_installed(my_plugin):
    result = run_probe(select(init_name="my_plugin"), overlay=my_plugin, env={"VLLM_PLUGINS": "x"})
    assert result.values["error"] == (
        "No IOProcessor plugins installed but one is required (my_plugin)."
    ), result.describe()


def test_a_wrong_name_lists_the_installed_plugins(my_plugin):
    result = run_probe(select(init_name="prithvi_to_tiff"), overlay=my_plugin)
    assert result.values["error"] == (
        "The model requires the 'prithvi_to_tiff' IO Processor plugin but it is not installed. "
        "Available plugins: ['my_plugin']"
    ), result.describe()


def test_a_raising_entry_function_is_logged_and_the_others_still_load(overlay):
    add_plugin(
        overlay,
        "my-io",
        {IO_PROCESSOR: {"broken": "my_io:broken", "my_plugin": "my_io:register"}},
        my_io=MY_PLUGIN,
    )
    result = run_probe(select(init_name="my_plugin"), overlay=overlay)
    assert result.values["class"] == "MyProcessor", result.describe()
    warnings = result.records_at("WARNING")
    assert [w["message"] for w in warnings] == ["Failed to load plugin broken."]
    assert "broken on purpose" in warnings[0]["exc"], "the warning carries the traceback"


def test_the_prithvi_fixture_is_selected_by_its_entry_point_name(overlay):
    pytest.importorskip("numpy")
    pytest.importorskip("tifffile")
    overlay.add_fixture("prithvi_io_processor")
    result = run_probe(select(init_name="prithvi_to_tiff"), overlay=overlay)
    assert result.ok, result.describe()
    assert result.values["class"] == "PrithviMultimodalDataProcessor", result.describe()
