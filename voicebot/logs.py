"""Process logging: stderr, personal data redacted, control characters escaped.

Log lines quote what callers and peers sent (SIP headers, stream parameters, transcripts). A raw
newline there would forge a log line and an escape sequence would repaint a terminal, so every
record's message is escaped after it is formatted: control characters become `\\n`, `\\xNN`.
"""

from __future__ import annotations

import logging
import sys

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


def configure_logging(level: str, redact_patterns: str = "") -> None:
    """Log to stderr; with redaction on, no log line carries a phone or card number in clear."""
    from loguru import logger as loguru_logger

    from voicebot.nlu.pii import RedactingFilter, Redactor, parse_patterns

    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    patterns = parse_patterns(redact_patterns)
    redactor = Redactor(patterns) if patterns else None
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
