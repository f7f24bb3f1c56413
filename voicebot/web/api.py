"""HTTP API for operators (JSON). Mounted under /api by the server.

Knowledge base:

- `POST /api/kb/ingest`: multipart/form-data with one or more files in the field `files`, each
  stored like `voicebot kb ingest` stores a file: re-sending a file replaces the entries it stored
  before. A file's entries are stored under its *source*, which must stay the same from one upload
  of the file to the next:
    * an optional `source` field per file (repeat it once per file, in the same order as `files`),
      an absolute path: the CLI sends the file's resolved path, so an upload through the server
      replaces exactly the entries a direct `voicebot kb ingest PATH` stored, and the other way round;
    * else the file name when it is an absolute path (`curl -F "files=@faq.csv;filename=/srv/faq.csv"`);
    * else `DATA_DIR/uploads/NAME`, so uploading `faq.csv` again replaces the earlier upload.
  Errors name the file, as the CLI does: `faq.csv:7: missing answer`. A bad row or an unsupported
  file type is reported in `errors` and the other files are stored all the same. A file with a bad
  row (or one that cannot be read at all) does not replace the entries it stored before: they stay,
  `kept` counts them, and an error says so (`faq.csv: not replaced: 2 bad rows; the 3 entries stored
  before are kept`); a file that had no entries stores its good rows. The whole request body may be
  at most `MAX_UPLOAD_BYTES` (10 MiB; more is refused with 413), with at most `MAX_UPLOAD_FILES`
  (100) files. Answers `{"added": {source: entries}, "errors": [...], "entries": total, "kept":
  {source: entries}}`, errors in file order: 200 when every file was stored whole, 422 (the same
  body) when any file or row was not. Then synthesizes the new answers into the phrase cache in the
  background.
- `GET /api/kb`: `{"uri", "collection", "entries"}`, where the knowledge base lives (the CLI checks
  that a server holds the knowledge base it wants before it goes through it).
- `GET /api/kb/entries`: `{"entries": [...], "count": n}`, in file and line order.
- `GET /api/kb/search?q=TEXT&k=5`: `{"query", "threshold", "hits": [...]}`, best first; a hit whose
  score is below `threshold` is one the bot would not speak.

Calls (the SIP dialer):

- `POST /api/calls` with `{"to": "sip:user@host:port"}` (and optionally `"ring_timeout"`, seconds,
  instead of `VOICEBOT_SIP_RING_TIMEOUT_SECS`): place an outbound SIP call (directly, or through
  `VOICEBOT_SIP_PROXY`); the bot runs the usual dialogue once it is answered. Answers 202
  with the call's status (below); 400 for a bad URI, 503 when the SIP gateway is off or at capacity.
  The target's host must be on `VOICEBOT_DIAL_ALLOW` (host names, `*.domain` wildcards, IPs, CIDRs)
  or, with a proxy, be the proxy's host; empty and no proxy, every call is refused. The bot's own
  SIP port, link-local, cloud metadata, unspecified, multicast and broadcast addresses are refused
  whatever the list says, by literal host and by resolved address. A refusal is 400 with the
  reason in `detail`.
- `GET /api/calls/{call_id}`: `{"call_id", "to", "direction", "status", "outcome", "reason"}`.
  `status` moves calling -> ringing -> answered -> ended; once ended, `outcome` is one of answered,
  busy, no-answer, rejected, failed. Calls placed before a restart are read from the records.
- `DELETE /api/calls/{call_id}`: hang up a call this server placed (CANCEL while it rings, BYE once
  answered). Answers its status; 404 for a call it is not running.

Errors are JSON, `{"detail": "..."}`: 401 without a valid API key, 503 while the server is still
starting (or failed to start), 413 for too large a body, 400 for a malformed one.

Access: every endpoint needs an API key (`Authorization: Bearer <key>`, see voicebot.web.auth), from
every client: loopback is not a credential. The server creates and prints one key on its first
start; `voicebot keys create/list/revoke` manages them.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import FormData, UploadFile
from starlette.types import Message, Receive

from voicebot.kb.models import RowError
from voicebot.kb.parsing import SUPPORTED_SUFFIXES, unsupported_type
from voicebot.kb.store import KnowledgeBase
from voicebot.web.auth import require_api_key

if TYPE_CHECKING:
    from voicebot.resources import Resources

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # one ingest request, multipart framing included
MAX_UPLOAD_FILES = 100
MAX_SEARCH_HITS = 16_384  # a Milvus search's limit


router = APIRouter(prefix="/api", dependencies=[Depends(require_api_key)])


def _resources(request: Request) -> Resources:
    state = request.app.state.voicebot
    if state.resources is None:
        if state.error:
            raise HTTPException(503, f"the server failed to start ({state.error}); see its log")
        raise HTTPException(503, "the server is still starting (loading models); try again in a moment")
    resources: Resources = state.resources
    return resources


Ready = Annotated["Resources", Depends(_resources)]


# ---------------------------------------------------------------- reading


@router.get("/kb")
async def kb_info(res: Ready) -> dict[str, Any]:
    kb: KnowledgeBase = res.kb
    return {"uri": kb.uri, "collection": kb.collection, "entries": await asyncio.to_thread(kb.count)}


@router.get("/kb/entries")
async def kb_entries(res: Ready) -> dict[str, Any]:
    entries = await asyncio.to_thread(res.kb.entries)
    return {"entries": [asdict(entry) for entry in entries], "count": len(entries)}


@router.get("/kb/search")
async def kb_search(
    res: Ready,
    q: Annotated[str, Query(description="What a caller might say.")],
    k: Annotated[int, Query(ge=1, le=MAX_SEARCH_HITS, description="How many hits.")] = 5,
) -> dict[str, Any]:
    hits = await res.kb.search_async(q, k)
    return {
        "query": q,
        "threshold": res.settings.kb_threshold,
        "hits": [asdict(hit) for hit in hits],
    }


# ---------------------------------------------------------------- ingest

_INGEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "source": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "Optional: one absolute path per file, naming the file's entries.",
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "/kb/ingest",
    openapi_extra=_INGEST_BODY,
    responses={422: {"description": "Some file or row was not stored (or not replaced); the same body."}},
)
async def kb_ingest(request: Request, res: Ready) -> JSONResponse:
    # The form is parsed here, not through File()/Form() parameters: FastAPI reads those before it runs
    # the dependencies, so it would read the whole body of a client without a key, or while the
    # server is starting, and it could not refuse too large a body up front.
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
        raise _too_large(int(declared))
    if request.headers.get("content-type", "").split(";", 1)[0].strip().lower() != "multipart/form-data":
        raise HTTPException(400, "send the files as multipart/form-data, in file parts named 'files'")
    limited = Request(request.scope, _limit_body(request.receive))
    async with limited.form(max_files=MAX_UPLOAD_FILES, max_fields=MAX_UPLOAD_FILES) as form:
        uploads = _uploads(form, res.settings.data_dir)
        added, errors, kept = await asyncio.to_thread(_ingest_uploads, res.kb, uploads)
    entries = await asyncio.to_thread(res.kb.count)
    if any(added.values()):
        _cache_warmer(request).request(res)
    log.info(
        "kb ingest from %s: %s, %d problem(s), %d entries now",
        request.client.host if request.client else "?",
        ", ".join(f"{source} ({n})" for source, n in added.items()) or "nothing stored",
        len(errors),
        entries,
    )
    # 422 and not 200 when anything was left out: a client that only checks the status must not take
    # a half-stored file, or a re-upload that changed nothing, for success.
    body = {"added": added, "errors": errors, "entries": entries, "kept": kept}
    return JSONResponse(body, status_code=422 if errors else 200)


def _limit_body(receive: Receive) -> Receive:
    """`receive`, refusing with 413 once the body passes MAX_UPLOAD_BYTES (a body sent without a length).

    Not FastAPI's `max_body_size`: that answers a declared length over the limit with a plain-text 413
    in place of any response, the 401, the 503 and our JSON errors included.
    """
    size = 0

    async def limited() -> Message:
        nonlocal size
        message = await receive()
        size += len(message.get("body", b""))
        if size > MAX_UPLOAD_BYTES:
            raise _too_large(None)
        return message

    return limited


def _too_large(size: int | None) -> HTTPException:
    sent = f" ({size / 2**20:.1f} MiB)" if size is not None else ""
    return HTTPException(
        413,
        f"request body too large{sent}: at most {MAX_UPLOAD_BYTES / 2**20:.0f} MiB per ingest request; "
        "send fewer or smaller files at a time",
    )


def _uploads(form: FormData, data_dir: Path) -> list[tuple[str, UploadFile] | str]:
    """(source, file) for each uploaded file, in order; an error message in place of a file left out."""
    fields, given = form.getlist("files"), form.getlist("source")
    files = [file for file in fields if not isinstance(file, str)]
    sources = [source for source in given if isinstance(source, str)]
    if not files or len(files) != len(fields):
        raise HTTPException(400, "send the files as multipart/form-data file parts named 'files'")
    if len(sources) != len(given):
        raise HTTPException(400, "send 'source' as plain form fields, not as files")
    if sources and len(sources) != len(files):
        raise HTTPException(
            400, f"{len(sources)} 'source' fields for {len(files)} files: send one per file, or none"
        )
    uploads: list[tuple[str, UploadFile] | str] = []
    for number, file in enumerate(files, start=1):
        filename = file.filename or ""
        try:
            source = _source(filename, sources[number - 1] if sources else None, data_dir)
        except ValueError as exc:
            uploads.append(f"{_basename(filename) or f'file {number}'}: {exc}")
            continue
        suffix = PurePosixPath(source).suffix
        if suffix.lower() not in SUPPORTED_SUFFIXES:
            uploads.append(str(RowError(source, None, unsupported_type(suffix))))
            continue
        uploads.append((source, file))
    return uploads


def _source(filename: str, given: str | None, data_dir: Path) -> str:
    """What a file's entries are stored under (see the module docstring). ValueError says why none."""
    if given is not None:
        if not _is_absolute(given):
            raise ValueError(f"source {given!r} is not an absolute path")
        return posixpath.normpath(given)
    if _is_absolute(filename):
        return posixpath.normpath(filename)
    name = _basename(filename)
    if not name or name in (".", "..") or "\x00" in name:
        raise ValueError("no file name: give the file part a filename, or send a 'source' field")
    return str(data_dir.resolve() / "uploads" / name)


def _basename(filename: str) -> str:
    return PurePosixPath(filename.replace("\\", "/")).name


def _is_absolute(path: str) -> bool:
    return path.startswith("/") and "\x00" not in path


def _ingest_uploads(
    kb: KnowledgeBase, uploads: list[tuple[str, UploadFile] | str]
) -> tuple[dict[str, int], list[str], dict[str, int]]:
    """Ingest the files in order: (entries stored per source, every error in file order, earlier
    entries kept per source not replaced)."""
    added: dict[str, int] = {}
    errors: list[str] = []
    kept: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="voicebot-upload-") as tmp:
        for number, upload in enumerate(uploads):
            if isinstance(upload, str):
                errors.append(upload)
                continue
            source, file = upload
            # Our own name, with the suffix that decides how the file is read; errors name the source.
            path = Path(tmp) / f"{number}{PurePosixPath(source).suffix.lower()}"
            with path.open("wb") as copy:
                shutil.copyfileobj(file.file, copy)
            report = kb.ingest_as([(path, source)])
            path.unlink()
            added.update(report.added)
            kept.update(report.kept)
            errors.extend(str(error) for error in report.errors)
    return added, errors, kept


# ---------------------------------------------------------------- phrase cache


class _CacheWarmer:
    """Synthesizes new answers into the phrase cache after an ingest, one run at a time.

    A request during a run schedules one more run after it, so answers ingested meanwhile are not missed.
    """

    def __init__(self, warm: Callable[[Resources], Awaitable[int]] | None = None) -> None:
        self._warm = warm or _warm_in_thread
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def request(self, res: Resources) -> None:
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.create_task(self._run(res), name="kb-phrase-cache")

    async def _run(self, res: Resources) -> None:
        while True:
            self._again = False
            try:
                added = await self._warm(res)
            except Exception:
                log.exception(
                    "phrase cache warm-up after ingest failed; new answers will be synthesized live"
                )
            else:
                if added:
                    log.info("phrase cache: synthesized %d new answers", added)
            if not self._again:
                return


async def _warm_in_thread(res: Resources) -> int:
    from voicebot.resources import warm_phrase_cache

    return await asyncio.to_thread(warm_phrase_cache, res)


def _cache_warmer(request: Request) -> _CacheWarmer:
    app_state = request.app.state
    warmer = getattr(app_state, "kb_cache_warmer", None)
    if warmer is None:
        warmer = app_state.kb_cache_warmer = _CacheWarmer()
    return warmer


# ---------------------------------------------------------------- calls


@router.post("/calls", status_code=202)
async def place_call(request: Request, res: Ready) -> dict[str, Any]:
    sip = request.app.state.voicebot.sip
    if sip is None:
        error = request.app.state.voicebot.sip_error or "the SIP gateway is disabled (VOICEBOT_SIP_ENABLED)"
        raise HTTPException(503, error)
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(400, 'send JSON: {"to": "sip:user@host:port"}') from None
    target = body.get("to") if isinstance(body, dict) else None
    if not isinstance(target, str) or not target.strip():
        raise HTTPException(400, 'missing "to": the SIP URI to call, e.g. sip:alice@192.0.2.10:5060')
    ring_timeout = body.get("ring_timeout")
    if ring_timeout is not None and (
        isinstance(ring_timeout, bool)
        or not isinstance(ring_timeout, (int, float))
        or not 0 < ring_timeout <= 600
    ):
        raise HTTPException(400, '"ring_timeout" must be a number of seconds, more than 0 and at most 600')
    try:
        placed = await sip.dial(target.strip(), ring_timeout=ring_timeout)
    except ValueError as err:
        raise HTTPException(400, str(err)) from None
    except RuntimeError as err:
        raise HTTPException(503, str(err)) from None
    except OSError as err:
        raise HTTPException(503, f"cannot place the call: {err}") from None
    result: dict[str, Any] = placed.view()
    return result


@router.get("/calls/{call_id}")
async def call_status(call_id: str, request: Request, res: Ready) -> dict[str, Any]:
    sip = request.app.state.voicebot.sip
    live = sip.status(call_id) if sip is not None else None
    if live is not None:
        return live
    detail = await asyncio.to_thread(res.records.get_call, call_id)
    if detail is None:
        raise HTTPException(404, f"no call {call_id!r}")
    return {
        "call_id": detail.id,
        "to": detail.to_number,
        "direction": detail.direction,
        "status": "ended" if detail.ended_at else "answered",
        "outcome": detail.outcome,
        "reason": detail.end_reason,
    }


@router.delete("/calls/{call_id}")
async def hang_up(call_id: str, request: Request, res: Ready) -> dict[str, Any]:
    sip = request.app.state.voicebot.sip
    view = await sip.hangup(call_id) if sip is not None else None
    if view is None:
        raise HTTPException(404, f"no call {call_id!r} placed by this server")
    result: dict[str, Any] = view
    return result
