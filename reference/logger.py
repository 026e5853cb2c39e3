"""The `vllm` logger tree, configured as vLLM configures it.

Every reference module logs under a `vllm.*` name (not `reference.*`), so handlers that
observe real vLLM observe the reference unchanged.
"""

from __future__ import annotations

import logging
import sys

_ROOT = "vllm"
_configured = False
_warned: set[tuple[str, tuple]] = set()


def _configure_root() -> None:
    global _configured
    if _configured:
        return
    _configured = True
    from reference import envs

    root = logging.getLogger(_ROOT)
    if not envs.VLLM_CONFIGURE_LOGGING:
        return
    # vLLM's default config: one handler on the `vllm` logger, which does not propagate.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        logging.Formatter("%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s")
    )
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
