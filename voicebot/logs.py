"""Process logging: stderr, personal data redacted, control characters escaped.

Log lines quote what callers and peers sent (SIP headers, stream parameters, transcripts). A raw
newline there would forge a log line and an escape sequence would repaint a terminal, so every
record's message is escaped after it is formatted: control characters become `\\n`, `\\xNN`.
"""

from __future__ import annotations

import logging
import sys
from typing import Protocol

from voicebot.textsafe import terminal_safe as escape_controls


class EscapingFilter(logging.Filter):
    """Formats each record's message and escapes its control characters; tracebacks keep their lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = f"{record.msg} {record.args!r}"
        record.msg = escape_controls(message)
        record.args = None
        return True


class TextRedactor(Protocol):
    """Masks PII in text (`voicebot.nlu.pii.Redactor`)."""

    @property
    def enabled(self) -> bool: ...

    def redact(self, text: str) -> str: ...


class RedactingFilter(logging.Filter):
    """A logging filter that masks PII in each record before any handler writes it.

    The message is formatted with its args first (a phone number is usually an arg, not in the
    format string), redacted, and stored back with the args cleared. Tracebacks and stack info are
    pre-formatted and redacted too. Attach it to handlers (logger filters do not see records that
    propagate from child loggers): see `install`.
    """

    def __init__(self, redactor: TextRedactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.redactor.enabled:
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # bad format/args: keep what there is, still redacted
            message = f"{record.msg} {record.args!r}"
        record.msg = self.redactor.redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self.redactor.redact(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = self.redactor.redact(record.stack_info)
        return True


def install(redactor: TextRedactor, logger: logging.Logger | None = None) -> RedactingFilter:
    """Attach one RedactingFilter to every handler of `logger` (default: the root logger)."""
    log_filter = RedactingFilter(redactor)
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(log_filter)
    return log_filter


def configure_logging(level: str, redactor: TextRedactor | None = None) -> None:
    """Log to stderr; with a redactor, no log line carries a phone or card number in clear."""
    from loguru import logger as loguru_logger

    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        if redactor is not None:
            handler.addFilter(RedactingFilter(redactor))
        handler.addFilter(EscapingFilter())  # after redaction, which reads the plain text
    # Pipecat logs through loguru at DEBUG per frame event; keep it at our level or above INFO.
    loguru_logger.remove()
    loguru_logger.add(sys.stderr, level="WARNING" if level.upper() in ("INFO", "WARNING") else level.upper())

    def clean(message: str) -> str:
        return escape_controls(redactor.redact(message) if redactor is not None else message)

    loguru_logger.configure(patcher=lambda record: record.update(message=clean(record["message"])))
