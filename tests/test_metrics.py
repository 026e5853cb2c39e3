"""Stat loggers: the interfaces, how the manager builds and feeds them, and plugin loading."""

from __future__ import annotations

import logging

import pytest

from conformance.probe import run_probe
from reference import metrics
from reference.config import CacheConfig, VllmConfig
from reference.metrics import (
    AggregatedLoggingStatLogger,
    AggregateStatLoggerBase,
    IterationStats,
    LoggingStatLogger,
    MultiModalCacheStats,
    PerEngineStatLoggerAdapter,
    PromptTokenStats,
    SchedulerStats,
    StatLoggerBase,
    StatLoggerManager,
    load_stat_logger_plugin_factories,
)
from tests.conftest import STAT_LOGGER, add_plugin, code

LOGGER_NAME = "vllm.v1.metrics.loggers"


class RecordingLogger(StatLoggerBase):
    """A per-engine logger that keeps how it was built and every call it received."""

    built: list[tuple[tuple, dict]] = []

    def __init__(self, *args, **kwargs):
        RecordingLogger.built.append((args, kwargs))
        self.engine_index = args[1] if len(args) > 1 else kwargs.get("engine_index", 0)
        self.calls: list[tuple[str, tuple, dict]] = []

    def record(self, *args, **kwargs):
        self.calls.append(("record", args, kwargs))

    def log_engine_initialized(self):
        self.calls.append(("log_engine_initialized", (), {}))

    def log(self):
        self.calls.append(("log", (), {}))

    def record_sleep_state(self, is_awake, level):
        self.calls.append(("record_sleep_state", (is_awake, level), {}))


class RecordingAggregate(AggregateStatLoggerBase):
    """An aggregate logger that keeps how it was built and every call it received."""

    built: list[tuple[tuple, dict]] = []

    def __init__(self, *args, **kwargs):
        RecordingAggregate.built.append((args, kwargs))
        self.calls: list[tuple[str, tuple, dict]] = []

    def record(self, *args, **kwargs):
        self.calls.append(("record", args, kwargs))

    def log_engine_initialized(self):
        self.calls.append(("log_engine_initialized", (), {}))

    def record_sleep_state(self, is_awake, level):
        self.calls.append(("record_sleep_state", (is_awake, level), {}))

    def record_admission_rejection(self, reason):
        self.calls.append(("record_admission_rejection", (reason,), {}))


class Minimal(StatLoggerBase):
    """Implements only what StatLoggerBase requires."""

    def __init__(self, vllm_config, engine_index=0):
        pass

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
        pass

    def log_engine_initialized(self):
        pass


class MinimalAggregate(AggregateStatLoggerBase):
    def __init__(self, vllm_config, engine_indexes):
        pass

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
        pass

    def log_engine_initialized(self):
        pass


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def at(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


@pytest.fixture(autouse=True)
def _fresh_recordings():
    RecordingLogger.built.clear()
    RecordingAggregate.built.clear()


@pytest.fixture
def config() -> VllmConfig:
    return VllmConfig()


@pytest.fixture
def captured():
    """The metrics logger at DEBUG with a handler on it (the `vllm` tree does not propagate)."""
    target = logging.getLogger(LOGGER_NAME)
    handler, level = Capture(), target.level
    target.addHandler(handler)
    target.setLevel(logging.DEBUG)
    yield handler
    target.removeHandler(handler)
    target.setLevel(level)


@pytest.fixture
def clock(monkeypatch):
    """A settable clock for LoggingStatLogger."""
    now = [1000.0]
    monkeypatch.setattr(LoggingStatLogger, "clock", staticmethod(lambda: now[0]))
    return now


# --------------------------------------------------------------------------------------------
# The interfaces


def test_a_stat_logger_must_implement_init_record_and_log_engine_initialized():
    class NoRecord(StatLoggerBase):
        def __init__(self, vllm_config, engine_index=0):
            pass

        def log_engine_initialized(self):
            pass

    with pytest.raises(TypeError, match="record"):
        NoRecord(None)


def test_log_and_record_sleep_state_are_optional_no_ops(config):
    logger = Minimal(config)
    assert logger.log() is None
    assert logger.record_sleep_state(0, 1) is None


def test_an_aggregate_logger_must_define_its_own_constructor():
    class NoInit(AggregateStatLoggerBase):
        def record(self, *args, **kwargs):
            pass

        def log_engine_initialized(self):
            pass

    with pytest.raises(TypeError, match="__init__"):
        NoInit(None, [0])


def test_record_admission_rejection_is_an_optional_no_op(config):
    assert MinimalAggregate(config, [0]).record_admission_rejection("queue full") is None


def test_the_stats_records_have_usable_defaults():
    stats = SchedulerStats()
    iteration = IterationStats()
    assert (stats.num_running_reqs, stats.num_waiting_reqs, stats.kv_cache_usage) == (0, 0, 0.0)
    assert iteration.finished_requests == [] and iteration.time_to_first_tokens_iter == []
    assert MultiModalCacheStats(queries=4, hits=1).hit_rate == 0.25


def test_the_stats_module_path_and_the_loggers_module_path_are_one_module():
    result = run_probe(
        "import vllm.v1.metrics.loggers as l, vllm.v1.metrics.stats as s\n"
        "probe.result['same'] = l is s and hasattr(s, 'IterationStats')\n"
    )
    assert result.values == {"same": True}, result.describe()


# --------------------------------------------------------------------------------------------
# StatLoggerManager: building


def test_a_per_engine_factory_is_called_positionally_once_per_engine_index(config):
    StatLoggerManager(config, engine_idxs=[0, 2], custom_stat_loggers=[RecordingLogger])
    assert RecordingLogger.built == [((config, 0), {}), ((config, 2), {})], (
        "per-engine factories are called as factory(vllm_config, engine_index), once per index"
    )


def test_a_plain_function_is_a_per_engine_factory_too(config):
    built = []

    def factory(vllm_config, engine_index):
        built.append(engine_index)
        return Minimal(vllm_config, engine_index)

    manager = StatLoggerManager(config, engine_idxs=[3], custom_stat_loggers=[factory])
    assert built == [3]
    assert isinstance(manager.stat_loggers[0], PerEngineStatLoggerAdapter)


def test_an_aggregate_class_is_built_once_with_keywords(config):
    StatLoggerManager(config, engine_idxs=[0, 1], custom_stat_loggers=[RecordingAggregate])
    assert RecordingAggregate.built == [((), {"vllm_config": config, "engine_indexes": [0, 1]})]


def test_engine_indexes_default_to_zero(config):
    for engine_idxs in (None, []):
        manager = StatLoggerManager(config, engine_idxs=engine_idxs, enable_default_loggers=False)
        assert manager.engine_indexes == [0], f"engine_idxs={engine_idxs!r} must mean [0]"


def test_custom_loggers_come_first_in_order_and_the_default_logger_last(config, captured):
    manager = StatLoggerManager(config, custom_stat_loggers=[RecordingAggregate, RecordingLogger])
    kinds = [type(logger) for logger in manager.stat_loggers]
    assert kinds == [RecordingAggregate, PerEngineStatLoggerAdapter, PerEngineStatLoggerAdapter]
    assert isinstance(manager.stat_loggers[1].per_engine_stat_loggers[0], RecordingLogger)
    assert isinstance(manager.stat_loggers[2].per_engine_stat_loggers[0], LoggingStatLogger)


def test_no_default_logger_when_default_loggers_are_disabled(config, captured):
    manager = StatLoggerManager(
        config, custom_stat_loggers=[RecordingLogger], enable_default_loggers=False
    )
    assert len(manager.stat_loggers) == 1, "only the custom logger is expected"


def test_no_default_logger_when_info_is_disabled(config, captured):
    logging.getLogger(LOGGER_NAME).setLevel(logging.WARNING)
    manager = StatLoggerManager(config)
    assert manager.stat_loggers == [], "INFO is off, so the logging logger would log nothing"


def test_several_api_servers_disable_the_default_logger_with_a_warning(config, captured):
    manager = StatLoggerManager(config, client_count=2)
    assert manager.stat_loggers == []
    assert captured.at(logging.WARNING) == [
        "AsyncLLM created with api_server_count more than 1; disabling stats logging to "
        "avoid incomplete stats."
    ]


def test_aggregate_engine_logging_selects_the_aggregated_default_logger(config, captured):
    manager = StatLoggerManager(config, engine_idxs=[0, 1], aggregate_engine_logging=True)
    assert [type(logger) for logger in manager.stat_loggers] == [AggregatedLoggingStatLogger]


# --------------------------------------------------------------------------------------------
# StatLoggerManager and the adapter: feeding


def test_the_adapter_forwards_record_with_keyword_mm_cache_stats_and_engine_idx(config):
    manager = StatLoggerManager(
        config,
        engine_idxs=[0, 1],
        custom_stat_loggers=[RecordingLogger],
        enable_default_loggers=False,
    )
    scheduler, iteration, mm = SchedulerStats(), IterationStats(), MultiModalCacheStats()
    manager.record(scheduler, iteration, mm_cache_stats=mm, engine_idx=1)
    engines = manager.stat_loggers[0].per_engine_stat_loggers
    assert engines[1].calls == [
        ("record", (scheduler, iteration), {"mm_cache_stats": mm, "engine_idx": 1})
    ]
    assert engines[0].calls == [], "only the engine named by engine_idx receives the record"


def test_an_unexpected_engine_idx_is_dropped_with_a_warning(config, captured):
    adapter = PerEngineStatLoggerAdapter(config, [0], RecordingLogger)
    adapter.record(SchedulerStats(), None, engine_idx=7)
    assert captured.at(logging.WARNING) == ["Unexpected engine_idx: 7"]
    assert adapter.per_engine_stat_loggers[0].calls == []


def test_the_manager_treats_a_missing_engine_idx_as_zero(config):
    manager = StatLoggerManager(
        config, custom_stat_loggers=[RecordingAggregate], enable_default_loggers=False
    )
    manager.record(None, None)
    assert manager.stat_loggers[0].calls == [
        ("record", (None, None), {"mm_cache_stats": None, "engine_idx": 0})
    ]


def test_log_and_log_engine_initialized_reach_every_engine(config):
    manager = StatLoggerManager(
        config,
        engine_idxs=[0, 1],
        custom_stat_loggers=[RecordingLogger],
        enable_default_loggers=False,
    )
    manager.log_engine_initialized()
    manager.log()
    for index, logger in manager.stat_loggers[0].per_engine_stat_loggers.items():
        names = [name for name, _, _ in logger.calls]
        assert names == ["log_engine_initialized", "log"], f"engine {index} got {names}"


def test_per_engine_loggers_never_receive_the_sleep_state(config):
    manager = StatLoggerManager(
        config,
        custom_stat_loggers=[RecordingAggregate, RecordingLogger],
        enable_default_loggers=False,
    )
    manager.record_sleep_state(1, 2)
    aggregate, adapter = manager.stat_loggers
    assert aggregate.calls == [("record_sleep_state", (1, 2), {})]
    assert adapter.per_engine_stat_loggers[0].calls == [], (
        "PerEngineStatLoggerAdapter does not forward record_sleep_state (as in vLLM 0.32)"
    )


def test_admission_rejections_reach_aggregate_loggers_only(config):
    manager = StatLoggerManager(
        config,
        custom_stat_loggers=[RecordingAggregate, RecordingLogger],
        enable_default_loggers=False,
    )
    manager.record_admission_rejection("queue full")
    aggregate, adapter = manager.stat_loggers
    assert aggregate.calls == [("record_admission_rejection", ("queue full",), {})]
    assert adapter.per_engine_stat_loggers[0].calls == []


# --------------------------------------------------------------------------------------------
# The default logging loggers


def _busy_step(prompt: int, generation: int) -> IterationStats:
    tokens = PromptTokenStats(computed=prompt, total=prompt)
    return IterationStats(prompt_token_stats=tokens, num_generation_tokens=generation)


def test_the_logging_logger_reports_throughput_over_the_interval(config, captured, clock):
    logger = LoggingStatLogger(config, engine_index=2)
    scheduler = SchedulerStats(num_running_reqs=3, num_waiting_reqs=2, kv_cache_usage=0.25)
    logger.record(scheduler, _busy_step(60, 30))
    logger.record(None, _busy_step(40, 20))
    clock[0] += 10.0
    logger.log()
    assert captured.at(logging.INFO) == [
        "Engine 002: Avg prompt throughput: 10.0 tokens/s, Avg generation throughput: 5.0 "
        "tokens/s, Running: 3 reqs, Waiting: 2 reqs, GPU KV cache usage: 25.0%, "
        "Prefix cache hit rate: 0.0%"
    ]


def test_the_logging_logger_starts_a_new_interval_after_each_log(config, captured, clock):
    logger = LoggingStatLogger(config)
    logger.record(None, _busy_step(100, 0))
    clock[0] += 10.0
    logger.log()
    logger.record(None, _busy_step(0, 20))
    clock[0] += 2.0
    logger.log()
    latest = captured.at(logging.INFO)[-1]
    assert "Avg prompt throughput: 0.0 tokens/s, Avg generation throughput: 10.0" in latest, latest


def test_an_idle_logging_logger_reports_at_debug(config, captured, clock):
    logger = LoggingStatLogger(config)
    logger.record(None, _busy_step(10, 0))
    for _ in range(3):
        clock[0] += 5.0
        logger.log()
    assert len(captured.at(logging.INFO)) == 2, "the busy report and the first idle one"
    assert len(captured.at(logging.DEBUG)) == 1, "later idle reports go to DEBUG"


def test_the_logging_logger_reports_the_prefix_cache_hit_rate(config, captured, clock):
    logger = LoggingStatLogger(config)
    scheduler = SchedulerStats()
    scheduler.prefix_cache_stats.queries, scheduler.prefix_cache_stats.hits = 8, 2
    logger.record(scheduler, _busy_step(8, 1))
    clock[0] += 1.0
    logger.log()
    assert captured.at(logging.INFO)[0].endswith("Prefix cache hit rate: 25.0%")


def test_log_engine_initialized_reports_the_kv_cache_size(captured):
    config = VllmConfig(cache_config=CacheConfig(block_size=16, num_gpu_blocks=128))
    LoggingStatLogger(config, engine_index=1).log_engine_initialized()
    assert captured.at(logging.INFO) == [
        "Engine 001: KV cache initialized with 128 blocks of 16 tokens"
    ]


def test_the_aggregated_logger_sums_requests_and_averages_kv_usage(config, captured, clock):
    logger = AggregatedLoggingStatLogger(config, [0, 1])
    logger.record(SchedulerStats(num_running_reqs=1, kv_cache_usage=0.2), _busy_step(5, 5), None, 0)
    logger.record(SchedulerStats(num_running_reqs=2, kv_cache_usage=0.4), _busy_step(5, 5), None, 1)
    clock[0] += 1.0
    logger.log()
    (message,) = captured.at(logging.INFO)
    assert message.startswith("2 Engines Aggregated: Avg prompt throughput: 10.0 tokens/s")
    assert "Running: 3 reqs" in message and "GPU KV cache usage: 30.0%" in message


# --------------------------------------------------------------------------------------------
# Loading plugin factories (in process, with the loader replaced)


def _fake_loader(plugins):
    def load(group):
        assert group == "vllm.stat_logger_plugins", f"loaded the wrong group {group!r}"
        return plugins

    return load


def test_the_loaded_classes_are_the_factories(monkeypatch):
    monkeypatch.setattr(metrics, "load_plugins_by_group", _fake_loader({"rec": RecordingLogger}))
    assert load_stat_logger_plugin_factories() == [RecordingLogger]


def test_a_non_class_plugin_is_a_type_error_with_vllms_message(monkeypatch):
    bad = object()
    monkeypatch.setattr(metrics, "load_plugins_by_group", _fake_loader({"bad": bad}))
    with pytest.raises(TypeError) as info:
        load_stat_logger_plugin_factories()
    assert str(info.value) == (
        f"Stat logger plugin 'bad' must be a subclass of StatLoggerBase (got {bad!r})."
    )


def test_a_class_that_is_not_a_stat_logger_is_a_type_error(monkeypatch):
    monkeypatch.setattr(metrics, "load_plugins_by_group", _fake_loader({"int": int}))
    with pytest.raises(TypeError, match=r"'int' must be a subclass of StatLoggerBase \(got <class"):
        load_stat_logger_plugin_factories()


# --------------------------------------------------------------------------------------------
# Loading plugin factories from entry points (probes)

LOAD_FACTORIES = code(
    """
    from vllm.config import ModelConfig, VllmConfig
    from vllm.v1.metrics.loggers import load_stat_logger_plugin_factories
    factories = load_stat_logger_plugin_factories()
    probe.result["factories"] = [f"{f.__module__}.{f.__qualname__}" for f in factories]
    # An engine always has a model (the fixture labels its metrics with the model's name).
    config = VllmConfig(model_config=ModelConfig(model="m"))
    probe.result["instances"] = [type(f(config)).__name__ for f in factories]
    """
)
DUMMY = "dummy_stat_logger.dummy_stat_logger.DummyStatLogger"


@pytest.fixture
def dummy_stat_logger(overlay):
    return overlay.add_fixture("vllm_add_dummy_stat_logger")


def test_the_stat_logger_fixture_is_loaded_from_its_entry_point(dummy_stat_logger):
    result = run_probe(LOAD_FACTORIES, overlay=dummy_stat_logger)
    assert result.ok, result.describe()
    assert result.values == {"factories": [DUMMY], "instances": ["DummyStatLogger"]}


def test_vllm_plugins_naming_the_fixture_loads_it(dummy_stat_logger):
    result = run_probe(
        LOAD_FACTORIES, overlay=dummy_stat_logger, env={"VLLM_PLUGINS": "dummy_stat_logger"}
    )
    assert result.values["factories"] == [DUMMY], result.describe()


def test_an_empty_vllm_plugins_loads_no_stat_logger(dummy_stat_logger):
    result = run_probe(LOAD_FACTORIES, overlay=dummy_stat_logger, env={"VLLM_PLUGINS": ""})
    assert result.values["factories"] == [], result.describe()


@pytest.mark.parametrize(
    ("source", "got"),
    [
        ("class NotALogger:\n    pass\n", "<class 'bad_logger.NotALogger'>"),
        ("def NotALogger(vllm_config, engine_index):\n    return None\n", "<function NotALogger"),
    ],
    ids=["plain-class", "factory-function"],
)
def test_an_entry_point_that_is_not_a_stat_logger_class_is_a_type_error(overlay, source, got):
    add_plugin(
        overlay, "bad-logger", {STAT_LOGGER: {"bad": "bad_logger:NotALogger"}}, bad_logger=source
    )
    result = run_probe(LOAD_FACTORIES, overlay=overlay)
    assert result.status == "raised" and result.exception.type == "TypeError", result.describe()
    message = result.exception.message
    assert message.startswith(
        f"Stat logger plugin 'bad' must be a subclass of StatLoggerBase (got {got}"
    ), message


def test_the_fixture_is_fed_per_engine_through_the_manager(dummy_stat_logger):
    result = run_probe(
        code(
            """
            from vllm.config import ModelConfig, VllmConfig
            from vllm.v1.metrics.loggers import (
                StatLoggerManager, load_stat_logger_plugin_factories)
            from vllm.v1.metrics.stats import IterationStats, SchedulerStats
            from dummy_stat_logger.dummy_stat_logger import DummyStatLogger
            manager = StatLoggerManager(
                VllmConfig(model_config=ModelConfig(model="m")), engine_idxs=[0, 1],
                custom_stat_loggers=load_stat_logger_plugin_factories(),
                enable_default_loggers=False)
            manager.log_engine_initialized()
            manager.record(SchedulerStats(), IterationStats(), engine_idx=1)
            manager.log()
            probe.result["loggers"] = [
                [d.engine_index, len(d.recorded), d.initialized, d.logged]
                for d in DummyStatLogger.instances
            ]
            probe.result["recorded_idx"] = DummyStatLogger.instances[1].recorded[0][3]
            """
        ),
        overlay=dummy_stat_logger,
    )
    assert result.ok, result.describe()
    assert result.values == {"loggers": [[0, 0, 1, 1], [1, 1, 1, 1]], "recorded_idx": 1}
