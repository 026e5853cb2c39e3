"""`vllm.logging_utils`: the formatters vLLM's logging configuration names.

Plugins reuse them when they extend vLLM's logging config for their own loggers
(`DEFAULT_LOGGING_CONFIG` in `vllm.logger` names `NewLineFormatter` by its dotted path).
"""

from __future__ import annotations

import logging

__all__ = ["ColoredFormatter", "NewLineFormatter"]


class NewLineFormatter(logging.Formatter):
    """Repeats the record's header (level, time, file) in front of every line of a multi-line
    message, so that each line of the log reads on its own; sets `record.fileinfo` (the file
    name) for the format to use. `log_level` is accepted as vLLM's formatter accepts it (a
    dictConfig `"()"` key)."""

    def __init__(
        self,
        fmt: str | None,
        datefmt: str | None = None,
        style: str = "%",
        *,
        log_level: str | None = None,
    ) -> None:
        super().__init__(fmt, datefmt, style)  # type: ignore[arg-type]
        self.log_level = log_level

    def format(self, record: logging.LogRecord) -> str:
        record.fileinfo = record.filename
        text = super().format(record)
        message = record.getMessage()
        if message and "\n" in text:
            header = text.partition(message)[0]
            text = text.replace("\n", "\r\n" + header)
        return text


class ColoredFormatter(NewLineFormatter):
    """`NewLineFormatter` with the level name in ANSI colour (for a terminal)."""

    COLORS = {"DEBUG": "\033[37m", "INFO": "\033[32m", "WARNING": "\033[33m", "ERROR": "\033[31m"}
    RESET = "\033[0m"

    def format(self, record: logging.LogRecord) -> str:
        plain = record.levelname
        color = self.COLORS.get(plain, self.COLORS["ERROR"] if record.levelno > 30 else "")
        record.levelname = f"{color}{plain}{self.RESET}" if color else plain
        try:
            return super().format(record)
        finally:
            record.levelname = plain
