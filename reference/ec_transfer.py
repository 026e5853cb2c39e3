"""Encoder-cache (EC) transfer, on one instance: the connector interface and its registry.

vLLM can move the encoder outputs of multimodal requests between instances (an encoder
instance produces them, a language-model instance consumes them) through an `ECConnector`
chosen by `VllmConfig.ec_transfer_config`. Platform plugins subclass `ECConnectorBase` and
register their connector with `ECConnectorFactory.register_connector` at plugin load. The
reference runs one instance and never sets `ec_transfer_config`, so no connector is ever
created: `ensure_ec_transfer_initialized` does nothing and `has_ec_transfer()` stays False,
as in vLLM 0.32 without an EC transfer config.

One module answers `vllm.distributed.ec_transfer`, its `ec_transfer_state`, and
`ec_transfer.ec_connector.base` / `.factory`. Like the rest of the reference's core it does
not import torch: tensors appear in signatures only.
"""

from __future__ import annotations

import enum
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from reference.logger import init_logger

logger = init_logger("vllm.distributed.ec_transfer.ec_connector.factory")

__all__ = [
    "ECConnectorBase",
    "ECConnectorFactory",
    "ECConnectorMetadata",
    "ECConnectorRole",
    "ECConnectorWorkerMetadata",
    "ensure_ec_transfer_initialized",
    "ensure_ec_transfer_shutdown",
    "get_ec_transfer",
    "has_ec_transfer",
]


class ECConnectorRole(enum.Enum):
    """Which process a connector runs in."""

    SCHEDULER = 0
    WORKER = 1


class ECConnectorMetadata(ABC):  # noqa: B024  (a marker base, as in vLLM)
    """What the scheduler-side connector sends the worker-side one for a step."""


class ECConnectorWorkerMetadata(ABC):
    """What each worker-side connector sends back; the engine folds them with `aggregate`."""

    @abstractmethod
    def aggregate(self, other: ECConnectorWorkerMetadata) -> ECConnectorWorkerMetadata:
        """This metadata combined with another worker's."""


class ECConnectorBase(ABC):
    """An encoder-cache connector: worker-side loading and saving of encoder outputs,
    scheduler-side bookkeeping. Subclasses implement the abstract methods; the rest have
    vLLM's do-nothing defaults. Constructing one without `ec_transfer_config` is an error."""

    def __init__(self, vllm_config: Any, role: ECConnectorRole):
        self._connector_metadata: ECConnectorMetadata | None = None
        self._vllm_config = vllm_config
        self._role = role
        ec_config = getattr(vllm_config, "ec_transfer_config", None)
        if ec_config is None:
            raise ValueError("ec_transfer_config must be set for ECConnectorBase")
        self._is_producer = ec_config.is_ec_producer
        self._is_consumer = ec_config.is_ec_consumer

    @property
    def role(self) -> ECConnectorRole:
        return self._role

    @property
    def is_producer(self) -> bool:
        return self._is_producer

    @property
    def is_consumer(self) -> bool:
        return self._is_consumer

    def shutdown(self) -> None:
        """Finish pending transfers and release resources at process shutdown."""
        return None

    # -- worker side ------------------------------------------------------------------------
    def bind_connector_metadata(self, connector_metadata: ECConnectorMetadata) -> None:
        """Keep the scheduler's metadata for the step about to run."""
        self._connector_metadata = connector_metadata

    def clear_connector_metadata(self) -> None:
        """Forget the step's metadata once the step has run."""
        self._connector_metadata = None

    def _get_connector_metadata(self) -> ECConnectorMetadata:
        assert self._connector_metadata is not None
        return self._connector_metadata

    def register_caches(self, ec_caches: dict[str, Any]):
        """Be handed the encoder caches (unused in vLLM 0.32)."""
        return

    @abstractmethod
    def start_load_caches(self, encoder_cache: dict[str, Any], **kwargs) -> None:
        """Load the step's encoder outputs into `encoder_cache` (mm hash -> tensor)."""

    @abstractmethod
    def save_caches(self, encoder_cache: dict[str, Any], mm_hash: str, **kwargs) -> None:
        """Save the encoder output of `mm_hash` from `encoder_cache` to the connector."""

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        """(sending, receiving) request ids whose asynchronous transfers finished."""
        return None, None

    def build_connector_worker_meta(self) -> ECConnectorWorkerMetadata | None:
        return None

    def get_ec_connector_stats(self) -> Any:
        return None

    # -- scheduler side ---------------------------------------------------------------------
    @abstractmethod
    def has_cache_item(self, identifier: str) -> bool:
        """Whether the encoder output of the media `identifier` is available."""

    def ensure_cache_available(self, request: Any, num_computed_tokens: int) -> bool:
        """True when every encoder output the request needs is local (or none is needed)."""
        return True

    def start_save_caches(self, **kwargs: Any) -> None:
        return

    def start_worker_services(self) -> None:
        return

    def take_unavailable_requests(self) -> set[str]:
        return set()

    def update_state_after_free(self, request: Any, index: int):
        return

    @abstractmethod
    def update_state_after_alloc(self, request: Any, index: int):
        """Record that encoder-cache entry `index` of `request` was allocated."""

    @abstractmethod
    def build_connector_meta(self, scheduler_output: Any) -> ECConnectorMetadata:
        """The metadata for this step (without modifying `scheduler_output`)."""

    def update_connector_output(self, connector_output: Any):
        return

    def request_finished(self, request: Any) -> tuple[bool, dict[str, Any] | None]:
        """(whether the cache is still being sent, transfer parameters) for a finished request."""
        return False, None

    def has_pending_push_work(self) -> bool:
        return False

    @classmethod
    def build_ec_connector_stats(cls, data: dict[str, Any] | None = None) -> Any:
        return None

    @classmethod
    def build_prom_metrics(
        cls,
        vllm_config: Any,
        metric_types: dict[type, type],
        labelnames: list[str],
        per_engine_labelvalues: dict[int, list[object]],
    ) -> Any:
        return None


class ECConnectorFactory:
    """Connector classes by name, each imported only when a config names it."""

    _registry: dict[str, Callable[[], type[ECConnectorBase]]] = {}

    @classmethod
    def register_connector(cls, name: str, module_path: str, class_name: str) -> None:
        """Register `module_path.class_name` under `name` without importing it; a name can be
        registered once (ValueError after)."""
        if name in cls._registry:
            raise ValueError(f"Connector '{name}' is already registered.")

        def load() -> type[ECConnectorBase]:
            return getattr(importlib.import_module(module_path), class_name)

        cls._registry[name] = load

    @classmethod
    def create_connector(cls, config: Any, role: ECConnectorRole) -> ECConnectorBase:
        """The connector `config.ec_transfer_config` names, built for `role`."""
        ec_config = getattr(config, "ec_transfer_config", None)
        if ec_config is None:
            raise ValueError("ec_transfer_config must be set to create a connector")
        connector_cls = cls.get_connector_class(ec_config)
        logger.info(
            "Creating connector with name: %s and engine_id: %s",
            connector_cls.__name__,
            getattr(ec_config, "engine_id", None),
        )
        return connector_cls(config, role)

    @classmethod
    def get_connector_class(cls, ec_transfer_config: Any) -> type[ECConnectorBase]:
        """A registered name, else `ec_connector` looked up in `ec_connector_module_path`."""
        name = ec_transfer_config.ec_connector
        if name is None:
            raise ValueError("EC connect must not be None")
        if name in cls._registry:
            return cls._registry[name]()
        module_path = getattr(ec_transfer_config, "ec_connector_module_path", None)
        if module_path is None:
            raise ValueError(f"Unsupported connector type: {name}")
        return getattr(importlib.import_module(module_path), name)


# vLLM 0.32's own connectors, registered by name as there (so a plugin cannot take their
# names); the reference does not ship their modules, so creating one is an import error.
for _name, _module in (
    ("ECExampleConnector", "example_connector"),
    ("ECCPUConnector", "cpu.connector"),
    ("ECMooncakeConnector", "mooncake_ec_connector"),
):
    ECConnectorFactory.register_connector(
        _name, f"vllm.distributed.ec_transfer.ec_connector.{_module}", _name
    )


# -- the process's connector (`ec_transfer_state`) ------------------------------------------
_EC_CONNECTOR_AGENT: ECConnectorBase | None = None


def get_ec_transfer() -> ECConnectorBase:
    """The worker's connector; an AssertionError where none was initialised."""
    assert _EC_CONNECTOR_AGENT is not None, "disaggregated EC cache is not initialized"
    return _EC_CONNECTOR_AGENT


def has_ec_transfer() -> bool:
    return _EC_CONNECTOR_AGENT is not None


def ensure_ec_transfer_initialized(vllm_config: Any) -> None:
    """Create the worker-side connector once, where the config asks for EC transfer; without
    an `ec_transfer_config` (always, on the reference) do nothing."""
    global _EC_CONNECTOR_AGENT
    ec_config = vllm_config.ec_transfer_config
    if ec_config is None:
        return
    if ec_config.is_ec_transfer_instance and _EC_CONNECTOR_AGENT is None:
        _EC_CONNECTOR_AGENT = ECConnectorFactory.create_connector(
            config=vllm_config, role=ECConnectorRole.WORKER
        )


def ensure_ec_transfer_shutdown() -> None:
    """Shut the connector down and forget it (nothing to do where there is none)."""
    global _EC_CONNECTOR_AGENT
    if _EC_CONNECTOR_AGENT is not None:
        _EC_CONNECTOR_AGENT.shutdown()
        _EC_CONNECTOR_AGENT = None
