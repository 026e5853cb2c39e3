"""The `vllm` logger tree, configured as vLLM configures it.

Every reference module logs under a `vllm.*` name (not `reference.*`), so handlers that
observe real vLLM observe the reference unchanged.
"""

from __future__ import annotations

import json
import logging
import logging.config
import sys
from pathlib import Path
from typing import Any

_ROOT = "vllm"
_FORMAT = "%(levelname)s %(asctime)s [%(fileinfo)s:%(lineno)d] %(message)s"
_DATE_FORMAT = "%m-%d %H:%M:%S"
_configured = False


def _default_logging_config() -> dict[str, Any]:
    """The configuration vLLM applies to its `vllm` logger, as a `logging.config.dictConfig`
    dict; plugins copy parts of it for their own loggers. The formatter is named by the
    reference's dotted path, which resolves with or without the `vllm` mount."""
    from reference import envs

    level = envs.VLLM_LOGGING_LEVEL
    formatter = {
        "()": "reference.logging_utils.NewLineFormatter",
        "datefmt": _DATE_FORMAT,
        "format": _FORMAT,
        "log_level": level,
    }
    return {
        "formatters": {
            "vllm": formatter,
            "vllm_color": {**formatter, "()": "reference.logging_utils.ColoredFormatter"},
        },
        "handlers": {
            "vllm": {
                "class": "logging.StreamHandler",
                "formatter": "vllm",
                "level": level,
                "stream": "ext://sys.stdout",
            }
        },
        "loggers": {"vllm": {"handlers": ["vllm"], "level": level, "propagate": False}},
        "version": 1,
        "disable_existing_loggers": False,
    }


_warned: set[tuple[str, tuple]] = set()


def _configure_root() -> None:
    global _configured
    if _configured:
        return
    _configured = True
    from reference import envs

    root = logging.getLogger(_ROOT)
    if not envs.VLLM_CONFIGURE_LOGGING:
        if envs.VLLM_LOGGING_CONFIG_PATH:
            raise RuntimeError(
                "VLLM_CONFIGURE_LOGGING=0 and VLLM_LOGGING_CONFIG_PATH are both set: the "
                "configuration file is only read when vLLM configures logging; unset one."
            )
        return
    if envs.VLLM_LOGGING_CONFIG_PATH:
        # As vLLM: the file (JSON, for logging.config.dictConfig) replaces the default config.
        path = Path(envs.VLLM_LOGGING_CONFIG_PATH)
        if not path.is_file():
            raise RuntimeError(f"VLLM_LOGGING_CONFIG_PATH names {str(path)!r}, which is no file.")
        logging.config.dictConfig(json.loads(path.read_text(encoding="utf-8")))
        return
    # vLLM's default config (`DEFAULT_LOGGING_CONFIG`): one handler on the `vllm` logger,
    # which does not propagate. Added, not applied with dictConfig, which would drop handlers
    # already on the logger (a harness's log capture).
    from reference.logging_utils import NewLineFormatter

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(NewLineFormatter(_FORMAT, _DATE_FORMAT))
    handler.set_name("vllm")
    root.addHandler(handler)
    root.setLevel(envs.VLLM_LOGGING_LEVEL)
    root.propagate = False


def init_logger(name: str) -> logging.Logger:
    """Return the logger `name` (a `vllm.*` name), configuring the `vllm` tree once."""
    _configure_root()
    return logging.getLogger(name)


def warning_once(logger: logging.Logger, msg: str, *args: object) -> None:
    """Log `msg % args` at WARNING the first time this exact message is seen in the process."""
    key = (msg, args)
    if key not in _warned:
        _warned.add(key)
        logger.warning(msg, *args)


# As in vLLM, importing the logger module configures the `vllm` tree.
_configure_root()
DEFAULT_LOGGING_CONFIG: dict[str, Any] = _default_logging_config()
#: vLLM's own module logger.
logger = init_logger("vllm.logger")
