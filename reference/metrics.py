"""Stat loggers: the interfaces stat-logger plugins implement, the stats they receive, and the
manager that builds and feeds them as vLLM 0.32's `AsyncLLM` does (`vllm.v1.metrics.loggers`).
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from reference.config import VllmConfig
from reference.logger import init_logger
from reference.plugins import STAT_LOGGER_PLUGINS_GROUP, load_plugins_by_group

logger = init_logger("vllm.v1.metrics.loggers")


# --------------------------------------------------------------------------------------------
# The stats records (`vllm.v1.metrics.stats`). vLLM says they are "not considered stable
# interfaces"; the reference keeps vLLM's field names for the fields it models.


@dataclass
class BaseCacheStats:
    """Lookups in a cache since the last report; `reset` says the cache was cleared meanwhile."""

    reset: bool = False
    requests: int = 0
    queries: int = 0
    hits: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


@dataclass
class PrefixCacheStats(BaseCacheStats):
    """Prefix-cache (KV block reuse) lookups, counted in tokens."""


@dataclass
class MultiModalCacheStats(BaseCacheStats):
    """Multi-modal processor cache lookups, counted in items."""


@dataclass
class SchedulerStats:
    """A snapshot of one engine's scheduler, sent with every batch of engine outputs."""

    num_running_reqs: int = 0
    num_waiting_reqs: int = 0
    step_counter: int = 0
    current_wave: int = 0
    #: Fraction of the KV cache in use, 0.0 to 1.0.
    kv_cache_usage: float = 0.0
    prefix_cache_stats: PrefixCacheStats = field(default_factory=PrefixCacheStats)


@dataclass
class FinishedRequestStats:
    """One request that finished in this iteration. Times are in seconds."""

    finish_reason: str
    e2e_latency: float = 0.0
    num_prompt_tokens: int = 0
    num_generation_tokens: int = 0
    queued_time: float = 0.0
    prefill_time: float = 0.0
    decode_time: float = 0.0


@dataclass
class PromptTokenStats:
    """Where one step's prompt tokens came from. Only local compute exists in the reference
    engine (no prefix cache, no KV transfer), so `computed == total` there."""

    computed: int = 0
    local_cache_hit: int = 0
    external_kv_transfer: int = 0
    cached_tokens: int = 0
    total: int = 0


@dataclass
class IterationStats:
    """What one engine step produced, as seen by the frontend. Times are in seconds.

    As in 0.32, `num_prompt_tokens` is a read-only view of `prompt_token_stats.total`."""

    iteration_timestamp: float = field(default_factory=time.time)
    prompt_token_stats: PromptTokenStats = field(default_factory=PromptTokenStats)
    num_generation_tokens: int = 0
    num_preempted_reqs: int = 0
    finished_requests: list[FinishedRequestStats] = field(default_factory=list)
    time_to_first_tokens_iter: list[float] = field(default_factory=list)
    inter_token_latencies_iter: list[float] = field(default_factory=list)

    @property
    def num_prompt_tokens(self) -> int:
        return self.prompt_token_stats.total


# --------------------------------------------------------------------------------------------
# The plugin interfaces.


class StatLoggerBase(ABC):
    """A stat logger for one engine (data-parallel rank).

    The engine calls `record()` once per batch of engine outputs, `log()` on the logging
    interval, and `log_engine_initialized()` once after construction. A plugin registered in
    the `vllm.stat_logger_plugins` group is the *class*; it is built as
    `cls(vllm_config, engine_index)` (positionally) once per engine index.
    """

    @abstractmethod
    def __init__(self, vllm_config: VllmConfig, engine_index: int = 0) -> None: ...

    @abstractmethod
    def record(
        self,
        scheduler_stats: SchedulerStats | None,
        iteration_stats: IterationStats | None,
        mm_cache_stats: MultiModalCacheStats | None = None,
        engine_idx: int = 0,
    ) -> None: ...

    @abstractmethod
    def log_engine_initialized(self) -> None: ...

    def log(self) -> None:  # noqa: B027  (an optional hook: doing nothing is the default)
        """Emit what was recorded since the last call."""

    def record_sleep_state(self, is_awake: int, level: int) -> None:  # noqa: B027
        """The engine was put to sleep or woken up (called positionally).

        vLLM 0.32's manager passes its own `sleep` flag (1 when going to sleep) in the
        `is_awake` position, so the first value's meaning depends on the caller.
        """


class AggregateStatLoggerBase(StatLoggerBase):
    """A stat logger that serves every engine at once; built once with keyword arguments,
    `cls(vllm_config=..., engine_indexes=[...])`, and told each record's `engine_idx`."""

    @abstractmethod
    def __init__(self, vllm_config: VllmConfig, engine_indexes: list[int]) -> None: ...

    def record_admission_rejection(self, reason: str) -> None:
        """The frontend refused a request before it reached an engine (queue full, ...)."""


#: Builds a per-engine logger: called as `factory(vllm_config, engine_index)`.
PerEngineStatLoggerFactory = Callable[[VllmConfig, int], StatLoggerBase]
#: An aggregate logger class: called as `cls(vllm_config=..., engine_indexes=...)`.
AggregateStatLoggerFactory = type[AggregateStatLoggerBase]
StatLoggerFactory = AggregateStatLoggerFactory | PerEngineStatLoggerFactory


# --------------------------------------------------------------------------------------------
# The default loggers.


class LoggingStatLogger(StatLoggerBase):
    """The default per-engine logger: throughput and scheduler state, logged on `log()`.

    A report with traffic since the last one (or right after traffic stopped) is logged at
    INFO; an idle engine's reports go to DEBUG so that they do not fill the log.
    """

    #: The clock throughput is measured with; replaceable for tests.
    clock: Callable[[], float] = staticmethod(time.monotonic)

    def __init__(self, vllm_config: VllmConfig, engine_index: int = 0) -> None:
        self.vllm_config = vllm_config
        self.engine_index = engine_index
        self.last_scheduler_stats = SchedulerStats()
        self.last_prompt_throughput = 0.0
        self.last_generation_throughput = 0.0
        self._start_interval(self.clock())

    def _start_interval(self, now: float) -> None:
        self.last_log_time = now
        self.num_prompt_tokens = 0
        self.num_generation_tokens = 0
        self.num_finished_requests = 0
        self.time_to_first_tokens: list[float] = []
        self.prefix_cache = PrefixCacheStats()
        self.mm_cache = MultiModalCacheStats()

    @property
    def log_prefix(self) -> str:
        return f"Engine {self.engine_index:03d}: "

    def record(
        self,
        scheduler_stats: SchedulerStats | None,
        iteration_stats: IterationStats | None,
        mm_cache_stats: MultiModalCacheStats | None = None,
        engine_idx: int = 0,
    ) -> None:
        if iteration_stats is not None:
            self.num_prompt_tokens += iteration_stats.num_prompt_tokens
            self.num_generation_tokens += iteration_stats.num_generation_tokens
            self.num_finished_requests += len(iteration_stats.finished_requests)
            self.time_to_first_tokens.extend(iteration_stats.time_to_first_tokens_iter)
        if scheduler_stats is not None:
            self.last_scheduler_stats = scheduler_stats
            _accumulate(self.prefix_cache, scheduler_stats.prefix_cache_stats)
        if mm_cache_stats is not None:
            _accumulate(self.mm_cache, mm_cache_stats)

    def log(self) -> None:
        now = self.clock()
        elapsed = max(now - self.last_log_time, 1e-9)
        prompt_throughput = self.num_prompt_tokens / elapsed
        generation_throughput = self.num_generation_tokens / elapsed
        was_busy = self.last_prompt_throughput or self.last_generation_throughput
        is_busy = prompt_throughput or generation_throughput
        log_fn = logger.info if (is_busy or was_busy) else logger.debug
        stats = self.last_scheduler_stats
        log_fn(
            "%sAvg prompt throughput: %.1f tokens/s, Avg generation throughput: %.1f tokens/s, "
            "Running: %d reqs, Waiting: %d reqs, GPU KV cache usage: %.1f%%, "
            "Prefix cache hit rate: %.1f%%",
            self.log_prefix,
            prompt_throughput,
            generation_throughput,
            stats.num_running_reqs,
            stats.num_waiting_reqs,
            stats.kv_cache_usage * 100,
            self.prefix_cache.hit_rate * 100,
        )
        self.last_prompt_throughput = prompt_throughput
        self.last_generation_throughput = generation_throughput
        self._start_interval(now)

    def log_engine_initialized(self) -> None:
        num_blocks = self.vllm_config.cache_config.num_gpu_blocks
        if num_blocks:
            logger.info(
                "%sKV cache initialized with %d blocks of %d tokens",
                self.log_prefix,
                num_blocks,
                self.vllm_config.cache_config.block_size,
            )


def _accumulate(total: BaseCacheStats, update: BaseCacheStats) -> None:
    if update.reset:
        total.reset, total.requests, total.queries, total.hits = True, 0, 0, 0
    total.requests += update.requests
    total.queries += update.queries
    total.hits += update.hits


class AggregatedLoggingStatLogger(LoggingStatLogger, AggregateStatLoggerBase):
    """The default logger with `aggregate_engine_logging`: one report for all engines, with
    running and waiting requests summed and KV cache usage averaged over the engines."""

    def __init__(self, vllm_config: VllmConfig, engine_indexes: list[int]) -> None:
        self.engine_indexes = list(engine_indexes)
        self.last_scheduler_stats_by_engine: dict[int, SchedulerStats] = {}
        super().__init__(vllm_config, engine_index=-1)

    @property
    def log_prefix(self) -> str:
        return f"{len(self.engine_indexes)} Engines Aggregated: "

    def record(
        self,
        scheduler_stats: SchedulerStats | None,
        iteration_stats: IterationStats | None,
        mm_cache_stats: MultiModalCacheStats | None = None,
        engine_idx: int = 0,
    ) -> None:
        super().record(scheduler_stats, iteration_stats, mm_cache_stats, engine_idx)
        if scheduler_stats is not None:
            self.last_scheduler_stats_by_engine[engine_idx] = scheduler_stats

    def log(self) -> None:
        snapshots = list(self.last_scheduler_stats_by_engine.values())
        if snapshots:
            self.last_scheduler_stats = SchedulerStats(
                num_running_reqs=sum(s.num_running_reqs for s in snapshots),
                num_waiting_reqs=sum(s.num_waiting_reqs for s in snapshots),
                kv_cache_usage=sum(s.kv_cache_usage for s in snapshots) / len(snapshots),
            )
        super().log()


class PerEngineStatLoggerAdapter(AggregateStatLoggerBase):
    """Serves a per-engine factory as an aggregate logger: one instance per engine index.

    Only `record`, `log` and `log_engine_initialized` reach the per-engine instances; as in
    vLLM 0.32, `record_sleep_state` and `record_admission_rejection` stop here.
    """

    def __init__(
        self,
        vllm_config: VllmConfig,
        engine_indexes: list[int],
        per_engine_stat_logger_factory: PerEngineStatLoggerFactory,
    ) -> None:
        self.engine_indexes = list(engine_indexes)
        # Positional on purpose: that is the call per-engine plugins are written against.
        self.per_engine_stat_loggers: dict[int, StatLoggerBase] = {
            index: per_engine_stat_logger_factory(vllm_config, index) for index in engine_indexes
        }

    def record(
        self,
        scheduler_stats: SchedulerStats | None,
        iteration_stats: IterationStats | None,
        mm_cache_stats: MultiModalCacheStats | None = None,
        engine_idx: int = 0,
    ) -> None:
        per_engine = self.per_engine_stat_loggers.get(engine_idx)
        if per_engine is None:
            logger.warning("Unexpected engine_idx: %d", engine_idx)
            return
        per_engine.record(
            scheduler_stats, iteration_stats, mm_cache_stats=mm_cache_stats, engine_idx=engine_idx
        )

    def log(self) -> None:
        for per_engine in self.per_engine_stat_loggers.values():
            per_engine.log()

    def log_engine_initialized(self) -> None:
        for per_engine in self.per_engine_stat_loggers.values():
            per_engine.log_engine_initialized()


# --------------------------------------------------------------------------------------------
# Loading and the manager.


def load_stat_logger_plugin_factories() -> list[StatLoggerFactory]:
    """The classes registered in `vllm.stat_logger_plugins` (the class is the factory).

    Raises TypeError for an entry point that is not a `StatLoggerBase` subclass: vLLM 0.32
    treats that as fatal at engine start-up.
    """
    factories: list[StatLoggerFactory] = []
    for name, plugin in load_plugins_by_group(STAT_LOGGER_PLUGINS_GROUP).items():
        # `isinstance(.., type)` first: `issubclass` itself raises on a non-class.
        if not isinstance(plugin, type) or not issubclass(plugin, StatLoggerBase):
            raise TypeError(
                f"Stat logger plugin {name!r} must be a subclass of StatLoggerBase "
                f"(got {plugin!r})."
            )
        factories.append(plugin)
    return factories


class StatLoggerManager:
    """Builds the stat loggers of one frontend and fans each call out to all of them.

    Custom factories come first, in order, then the default logging logger (only when
    `enable_default_loggers`, the `vllm.v1.metrics.loggers` logger is enabled for INFO, and
    there is a single API server). Aggregate classes are built once with keywords; anything
    else is wrapped in a `PerEngineStatLoggerAdapter`.
    """

    def __init__(
        self,
        vllm_config: VllmConfig,
        engine_idxs: list[int] | None = None,
        custom_stat_loggers: list[StatLoggerFactory] | None = None,
        enable_default_loggers: bool = True,
        aggregate_engine_logging: bool = False,
        client_count: int = 1,
    ) -> None:
        self.engine_indexes = list(engine_idxs) if engine_idxs else [0]
        factories: list[StatLoggerFactory] = list(custom_stat_loggers or [])
        if enable_default_loggers and logger.isEnabledFor(logging.INFO):
            if client_count > 1:
                logger.warning(
                    "AsyncLLM created with api_server_count more than 1; "
                    "disabling stats logging to avoid incomplete stats."
                )
            else:
                default = (
                    AggregatedLoggingStatLogger if aggregate_engine_logging else LoggingStatLogger
                )
                factories.append(default)
        self.stat_loggers: list[AggregateStatLoggerBase] = [
            self._build(vllm_config, factory) for factory in factories
        ]

    def _build(
        self, vllm_config: VllmConfig, factory: StatLoggerFactory
    ) -> AggregateStatLoggerBase:
        if isinstance(factory, type) and issubclass(factory, AggregateStatLoggerBase):
            return factory(vllm_config=vllm_config, engine_indexes=self.engine_indexes)
        return PerEngineStatLoggerAdapter(
            vllm_config=vllm_config,
            engine_indexes=self.engine_indexes,
            per_engine_stat_logger_factory=factory,
        )

    def record(
        self,
        scheduler_stats: SchedulerStats | None,
        iteration_stats: IterationStats | None,
        mm_cache_stats: MultiModalCacheStats | None = None,
        engine_idx: int | None = None,
    ) -> None:
        engine_idx = 0 if engine_idx is None else engine_idx
        for stat_logger in self.stat_loggers:
            stat_logger.record(
                scheduler_stats,
                iteration_stats,
                mm_cache_stats=mm_cache_stats,
                engine_idx=engine_idx,
            )

    def record_sleep_state(self, sleep: int = 0, level: int = 0) -> None:
        for stat_logger in self.stat_loggers:
            stat_logger.record_sleep_state(sleep, level)

    def record_admission_rejection(self, reason: str) -> None:
        for stat_logger in self.stat_loggers:
            stat_logger.record_admission_rejection(reason)

    def log(self) -> None:
        for stat_logger in self.stat_loggers:
            stat_logger.log()

    def log_engine_initialized(self) -> None:
        for stat_logger in self.stat_loggers:
            stat_logger.log_engine_initialized()
