"""`voicebot kb` through a running server, when that server holds the knowledge base.

milvus-lite lets one process at a time open the knowledge base. When a running server holds it, the
commands go through that server's `/api/kb` endpoints instead (VOICEBOT_HTTP_HOST and _PORT say where
it listens), with the same output and exit codes, and a line on stderr saying so.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from voicebot.cli.api_client import ApiClient, ApiError, multipart, server_url
from voicebot.cli.kb_calibrate import calibrate_command
from voicebot.cli.kb_output import export_entries, print_entries, print_hits, print_ingest
from voicebot.cli.keys import cli_key, drop_cli_key
from voicebot.config import Settings
from voicebot.kb.models import MAX_SOURCE_BYTES, Entry, Hit, KnowledgeBaseLocked, RowError
from voicebot.textsafe import terminal_safe

_PROBE_TIMEOUT_S = 2.0
_INGEST_TIMEOUT_S = 600.0  # embedding a large file on a busy CPU takes a while
_Row = TypeVar("_Row", Entry, Hit)


def through_server(settings: Settings, args: argparse.Namespace, locked: KnowledgeBaseLocked) -> int:
    """Run the command through the server that holds the knowledge base, or explain why not."""
    key = cli_key(settings)
    try:
        return _through_server_with(ApiClient(server_url(settings), key), settings, args, locked)
    finally:
        drop_cli_key(settings, key)


def _through_server_with(
    client: ApiClient, settings: Settings, args: argparse.Namespace, locked: KnowledgeBaseLocked
) -> int:
    problem = _server_problem(client, settings)
    if problem is not None:
        print(terminal_safe(f"error: {locked}"), file=sys.stderr)
        print(terminal_safe(problem), file=sys.stderr)
        return 1
    print(f"the server at {client.base_url} holds the knowledge base: going through its API", file=sys.stderr)
    try:
        if args.kb_command == "ingest":
            return _remote_ingest(client, args.paths)
        if args.kb_command in ("list", "export"):
            body = client.get("/api/kb/entries")
            found = [_from_json(Entry, entry) for entry in body["entries"]]
            return print_entries(found) if args.kb_command == "list" else export_entries(found, args.path)
        if args.kb_command == "calibrate":
            return calibrate_command(_RemoteKnowledgeBase(client), settings, args)
        body = client.get("/api/kb/search", {"q": args.text, "k": args.k})
        return print_hits([_from_json(Hit, hit) for hit in body["hits"]], float(body["threshold"]))
    except ApiError as exc:
        print(terminal_safe(f"error: {exc}"), file=sys.stderr)
        return 1
    except (KeyError, TypeError, ValueError) as exc:
        message = f"error: unexpected answer from the server at {client.base_url}: {exc!r}"
        print(terminal_safe(message), file=sys.stderr)
        return 1


@dataclass(frozen=True)
class _RemoteKnowledgeBase:
    """The server's knowledge base, for `calibrate`: its hits carry the vector and lexical scores the
    calibration replays, so it runs the same through the API as in-process."""

    client: ApiClient

    def entries(self) -> list[Entry]:
        return [_from_json(Entry, entry) for entry in self.client.get("/api/kb/entries")["entries"]]

    def search(self, text: str, k: int = 3) -> list[Hit]:
        hits = [
            _from_json(Hit, hit) for hit in self.client.get("/api/kb/search", {"q": text, "k": k})["hits"]
        ]
        if hits and all(hit.vector_score == 0.0 and hit.lexical_score == 0.0 for hit in hits):
            raise ApiError("the server's hits have no vector and lexical scores: update the server")
        return hits


def _from_json(cls: type[_Row], data: dict[str, Any]) -> _Row:
    """An Entry or Hit from its JSON, ignoring fields a newer server may add."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{name: value for name, value in data.items() if name in names})


def _server_problem(client: ApiClient, settings: Settings) -> str | None:
    """None when a ready server at `client` holds this knowledge base; else what is wrong."""
    try:
        client.get("/health", timeout=_PROBE_TIMEOUT_S)
        info = client.get("/api/kb", timeout=_PROBE_TIMEOUT_S * 5)
    except ApiError as exc:
        if exc.status is None:
            return f"no voicebot server answers at {client.base_url} to go through instead"
        if exc.status == 503:
            return f"the server at {client.base_url} is not ready ({exc}); try again when it is"
        if exc.status == 401:
            return (
                f"the server at {client.base_url} refused this command's API key: it uses another "
                "database than this data dir, or VOICEBOT_API_KEY is wrong; set VOICEBOT_API_KEY to one of "
                "its keys, or VOICEBOT_HTTP_PORT (and _HOST) to the server that uses this data dir"
            )
        return f"the server at {client.base_url} cannot take the command: {exc}"
    ours = settings.resolved_milvus_uri
    theirs = info.get("uri") if isinstance(info, dict) else None
    if not isinstance(theirs, str) or not _same_store(theirs, ours):
        return (
            f"the server at {client.base_url} uses the knowledge base at {theirs}, not {ours}; "
            "set VOICEBOT_HTTP_PORT (and _HOST) to the server that uses this one"
        )
    return None


def _same_store(a: str, b: str) -> bool:
    return a == b or ("://" not in a and "://" not in b and os.path.realpath(a) == os.path.realpath(b))


def _remote_ingest(client: ApiClient, paths: list[str]) -> int:
    from voicebot.web.api import MAX_UPLOAD_BYTES

    added: dict[str, int] = {}
    errors: list[str] = []
    kept: dict[str, int] = {}
    total: int | None = None
    # One file a request: the upload limit is per request, and an error names its file.
    for raw in paths:
        path = Path(raw)
        # The source a direct ingest would store the entries under, so either way replaces the other.
        source = str(path.resolve())
        data = _read_for_upload(path, source, errors)
        if data is None:
            continue
        body, content_type = multipart({"source": source}, "files", path.name, data)
        if len(body) > MAX_UPLOAD_BYTES:
            size, limit = f"{len(data) / 2**20:.1f} MiB", f"{MAX_UPLOAD_BYTES / 2**20:.0f} MiB"
            message = f"too large to send to the server ({size}, at most {limit} a request)"
            errors.append(_file_error(source, f"{message}: split it, or stop the server and ingest directly"))
            continue
        try:
            answer = client.post("/api/kb/ingest", body, content_type, timeout=_INGEST_TIMEOUT_S)
        except ApiError as exc:
            if exc.status == 422 and isinstance(exc.body, dict) and "added" in exc.body:
                # Not all of the file was stored: the answer says what was, and why not the rest.
                answer = exc.body
            elif exc.status is not None and exc.status < 500:  # this file's problem; go on with the others
                errors.append(_file_error(source, str(exc)))
                continue
            else:
                # The server is gone or failing: report what was stored, and stop.
                print_ingest(added, [*errors, _file_error(source, str(exc))], None, kept)
                return 1
        added.update({str(key): int(value) for key, value in answer["added"].items()})
        # A server from before `kept` existed does not send it.
        kept.update({str(key): int(value) for key, value in (answer.get("kept") or {}).items()})
        errors.extend(str(error) for error in answer["errors"])
        total = int(answer["entries"])
    if total is None:  # nothing was sent
        total = int(client.get("/api/kb", timeout=_PROBE_TIMEOUT_S * 5)["entries"])
    return print_ingest(added, errors, total, kept)


def _file_error(source: str, message: str) -> str:
    return str(RowError(source, None, message))


def _read_for_upload(path: Path, source: str, errors: list[str]) -> bytes | None:
    """The file's bytes, or None with the error a direct ingest would report for it."""
    try:
        encoded = source.encode()
    except UnicodeEncodeError:
        errors.append(_file_error(source, "the path is not valid UTF-8"))
        return None
    if len(encoded) > MAX_SOURCE_BYTES:
        errors.append(_file_error(source, f"path longer than {MAX_SOURCE_BYTES} bytes"))
        return None
    if not path.is_file():
        errors.append(_file_error(source, "no such file" if not path.exists() else "not a regular file"))
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        errors.append(_file_error(source, f"cannot read: {exc.strerror or exc}"))
        return None
