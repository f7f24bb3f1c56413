"""The Milvus client under a knowledge base, and the error that says why it would not open.

`uri` is a Milvus server URI or a milvus-lite `.db` path. milvus-lite runs inside this process and holds
an exclusive lock on the `.db` folder until the process exits (or `close()`): a second process, such as
`voicebot kb ingest` beside a running server, cannot open the same path at the same time
(`KnowledgeBaseLocked`; the CLI then goes through the server's `/api/kb` endpoints instead).
"""

from __future__ import annotations

import fcntl
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from voicebot.kb.models import KnowledgeBaseError, KnowledgeBaseLocked

if TYPE_CHECKING:
    from pymilvus import MilvusClient


def is_local(uri: str) -> bool:
    return uri.endswith(".db") and "://" not in uri


class _QuietLockFailure(logging.Filter):
    """Drops milvus-lite's traceback for a `.db` another process holds: `_open_failure` says it better."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        while error is not None:
            if type(error).__name__ == "DataDirLockedError":
                return False
            error = error.__cause__
        return True


_QUIET_LOCK_FAILURE = _QuietLockFailure()


def connect(uri: str) -> MilvusClient:
    from pymilvus import MilvusClient

    if is_local(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        logging.getLogger("milvus_lite.server_manager").addFilter(_QUIET_LOCK_FAILURE)  # idempotent
    try:
        return MilvusClient(uri)
    except Exception as exc:
        raise _open_failure(uri, exc) from exc


def _open_failure(uri: str, exc: Exception) -> KnowledgeBaseError:
    if is_local(uri) and _locked_elsewhere(Path(uri) / "LOCK"):
        return KnowledgeBaseLocked(
            f"cannot open the knowledge base at {uri}: another process holds it (milvus-lite allows one "
            "process per .db; stop the server, or point VOICEBOT_MILVUS_URI at a Milvus server)"
        )
    detail = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return KnowledgeBaseError(f"cannot open the knowledge base at {uri}: {detail}")


def _locked_elsewhere(lock_file: Path) -> bool:
    if not lock_file.exists():
        return False
    with lock_file.open("rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False
