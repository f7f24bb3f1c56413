"""`voicebot kb ingest|list|search|export|calibrate`: manage, probe and calibrate the knowledge base.

`export FILE.csv` (`-` for stdout) writes every entry as question,answer,source,line and one column
per metadata name. Each cell goes through `csv_safe_cell`, so a cell a spreadsheet would run as a
formula (`=cmd|' /C calc'!A0`) starts with a `'` instead.

`calibrate FILE.csv` (columns text,expected) searches every row, chooses the lexical weight and the
answer, related and clarify thresholds from the results (`voicebot.kb.calibrate`), prints them with
the precision and recall behind them, and writes DATA_DIR/kb-thresholds.json, which the server reads
at start (`voicebot.kb.load_thresholds`).

Exit codes: 0 on success; 1 when the knowledge base cannot be opened, or when `ingest` met any bad
file or row; 2 for bad arguments. A file with a bad row that is new to the knowledge base stores its
good rows all the same (so a first CSV with one typo still loads), but one that had entries keeps
them as they were until it ingests without a bad row: a broken re-upload never empties a FAQ.

Everything printed from stored data goes through `terminal_safe`: an entry cannot send escape
sequences to the terminal of whoever lists it.

milvus-lite lets one process at a time open the knowledge base. When a running server holds it, the
commands go through that server's `/api/kb` endpoints instead (VOICEBOT_HTTP_HOST and _PORT say where
it listens), with the same output and exit codes, and a line on stderr saying so.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO, TypeVar

from voicebot.config import Settings
from voicebot.kb import (
    MAX_SOURCE_BYTES,
    TARGET_PRECISION,
    Calibration,
    Entry,
    FileRejected,
    Hit,
    KnowledgeBase,
    KnowledgeBaseError,
    KnowledgeBaseLocked,
    RowError,
    calibrate,
    ensure_demo,
    load_thresholds,
    observe,
    read_calibration_csv,
    thresholds_path,
    write_thresholds,
)
from voicebot.cli.keys import cli_key, drop_cli_key
from voicebot.textsafe import csv_safe_cell, terminal_safe

_ANSWER_WIDTH = 60
_Row = TypeVar("_Row", Entry, Hit)


def add_calibrate_parser(kb_sub: Any) -> None:
    """Add `calibrate` to the `kb` subcommand's subparsers."""
    calibrate_parser = kb_sub.add_parser(
        "calibrate",
        help="Compute the answer thresholds and lexical weight from labelled caller questions.",
        description="FILE.csv has columns text,expected: what a caller says, and the knowledge-base "
        "question it should match (empty when the knowledge base has no answer). Writes "
        "DATA_DIR/kb-thresholds.json; VOICEBOT_KB_* variables set explicitly still win over it.",
    )
    calibrate_parser.add_argument("path", type=Path, metavar="FILE.csv")
    calibrate_parser.add_argument(
        "--precision",
        type=float,
        default=TARGET_PRECISION,
        help=f"Precision the direct-answer threshold must keep (default {TARGET_PRECISION}).",
    )
    calibrate_parser.add_argument(
        "--dry-run", action="store_true", help="Print the values without writing the file."
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    from voicebot.nlu.embeddings import lazy_embedder

    if args.kb_command == "search" and args.k < 1:
        print("error: -k must be at least 1", file=sys.stderr)
        return 2
    if args.kb_command == "calibrate" and not 0.0 < args.precision <= 1.0:
        print("error: --precision must be in (0, 1]", file=sys.stderr)
        return 2
    thresholds = load_thresholds(settings)
    try:
        # Lazy: `kb list` never embeds, and should not pay the model's ~5 s load.
        kb = KnowledgeBase(
            settings.resolved_milvus_uri,
            settings.kb_collection,
            lazy_embedder(settings.embedder),
            lexical_weight=thresholds.lexical_weight,
        )
    except KnowledgeBaseLocked as exc:
        return _through_server(settings, args, exc)
    except KnowledgeBaseError as exc:
        print(f"error: {terminal_safe(str(exc))}", file=sys.stderr)
        return 1
    try:
        if args.kb_command == "ingest":
            return _ingest(kb, args.paths)
        _load_demo_if_wanted(kb, settings)
        if args.kb_command == "list":
            return _list(kb)
        if args.kb_command == "export":
            return _export(kb.entries(), args.path)
        if args.kb_command == "calibrate":
            return _calibrate(kb, settings, args)
        return _search(kb, args.text, args.k, thresholds.answer)
    finally:
        kb.close()


# ---------------------------------------------------------------- calibrate


class _Searchable(Protocol):
    def entries(self) -> list[Entry]: ...

    def search(self, text: str, k: int = 3) -> list[Hit]: ...


def _calibrate(kb: _Searchable, settings: Settings, args: argparse.Namespace) -> int:
    try:
        rows = read_calibration_csv(args.path)
    except FileRejected as exc:
        where = f"{args.path}:{exc.line}" if exc.line else str(args.path)
        print(terminal_safe(f"error: {where}: {exc}"), file=sys.stderr)
        return 1
    try:
        observations = observe(kb, rows)
    except KnowledgeBaseError as exc:
        print(terminal_safe(f"error: {args.path}: {exc}"), file=sys.stderr)
        return 1
    result = calibrate(observations, embedder=settings.embedder, target_precision=args.precision)
    print_calibration(result)
    if args.dry_run:
        return 0
    path = thresholds_path(settings)
    write_thresholds(path, result, str(args.path.resolve()))
    print(f"wrote {path}")
    explicit = sorted(name for name in result.settings() if name in settings.model_fields_set)
    if explicit:
        names = ", ".join(f"VOICEBOT_{name.upper()}" for name in explicit)
        print(f"note: {names} set explicitly, and wins over the file", file=sys.stderr)
    return 0


def print_calibration(result: Calibration) -> None:
    """The calibrated values, each with the figures behind it."""
    print(
        f"{result.rows} questions ({result.in_kb} in the knowledge base, {result.out_of_kb} not), "
        f"embedder {result.embedder or '?'}"
    )
    print("lexical weight  top-1   top-3   answer threshold  precision  recall")
    for row in result.weights:
        mark = "*" if row.lexical_weight == result.lexical_weight else " "
        print(
            f"{mark} {row.lexical_weight:<12.2f}  {row.top1:6.1%}  {row.top3:6.1%}  "
            f"{row.answer.threshold:<16.3f}  {row.answer.precision:8.1%}  {row.answer.recall:6.1%}"
        )
    answer, related, clarify = result.answer, result.related, result.clarify
    print(
        f"kb_lexical_weight    = {result.lexical_weight:.2f}   top-1 {result.top1:.1%}, "
        f"top-3 {result.top3:.1%} of in-KB questions"
    )
    print(
        f"kb_threshold         = {answer.threshold:.3f}  direct answers: precision {answer.precision:.1%} "
        f"(target {result.target_precision:.0%}), recall {answer.recall:.1%}, decisions right "
        f"{answer.accuracy:.1%}, out-of-KB answered {answer.false_accept:.1%}"
    )
    print(
        f"kb_related_threshold = {related.threshold:.3f}  right passage retrieved for {related.recall:.1%} "
        f"of in-KB questions; {related.out_of_kb_pass:.1%} of out-of-KB questions pass"
    )
    print(
        f"kb_clarify_margin    = {clarify.margin:.3f}  asks on {clarify.caught:.1%} of wrong top-1 "
        f"answers ({clarify.resolvable:.0%} of them offer the right one) and {clarify.needless:.1%} "
        "of right ones"
    )


def _ingest(kb: KnowledgeBase, paths: list[str]) -> int:
    report = kb.ingest(paths)
    return _print_ingest(report.added, [str(error) for error in report.errors], kb.count(), report.kept)


def _print_ingest(
    added: dict[str, int], errors: Sequence[str], total: int | None, kept: dict[str, int] | None = None
) -> int:
    for source, count in added.items():
        print(terminal_safe(f"{_short(source)}: {count} entries"))
    for error in errors:
        print(terminal_safe(error), file=sys.stderr)
    if errors:
        outcome = "the other rows were stored" if added else "nothing was stored"
        if kept:
            files = "1 file was" if len(kept) == 1 else f"{len(kept)} files were"
            outcome = f"{files} not replaced (the entries stored before are kept); {outcome}"
        print(f"{len(errors)} problem(s); {outcome}", file=sys.stderr)
    if total is not None:
        print(f"{total} entries in the knowledge base")
    return 1 if errors else 0


def _load_demo_if_wanted(kb: KnowledgeBase, settings: Settings) -> None:
    # The same rule as server start, so `list` and `search` show what the bot would answer from.
    if settings.kb_demo and ensure_demo(kb) is not None:
        print("loaded the demo knowledge base (VOICEBOT_KB_DEMO=false turns this off)", file=sys.stderr)


def _list(kb: KnowledgeBase) -> int:
    return _print_entries(kb.entries())


def _print_entries(entries: list[Entry]) -> int:
    if not entries:
        print("the knowledge base is empty: add files with `voicebot kb ingest PATH...`")
        return 0
    for entry in entries:
        location = f"{_short(entry.source)}:{entry.line}"
        answer = _truncate(entry.answer, _ANSWER_WIDTH)
        print(terminal_safe(f"{entry.id:>6}  {location}  {entry.question}  | {answer}"))
    print(f"{len(entries)} entries")
    return 0


# Columns of an export before the metadata ones.
_EXPORT_COLUMNS = ("question", "answer", "source", "line")


def _export(entries: list[Entry], target: str) -> int:
    """Write the entries as CSV to `target` ("-": stdout), every cell through `csv_safe_cell`."""
    keys = list(dict.fromkeys(key for entry in entries for key in entry.metadata))
    # A FAQ may have its own "source" or "line" column: it gets a name of its own, not ours.
    header = [*_EXPORT_COLUMNS, *(f"metadata.{key}" if key in _EXPORT_COLUMNS else key for key in keys)]
    rows = [
        [
            entry.question,
            entry.answer,
            entry.source,
            str(entry.line),
            *(_cell(entry.metadata.get(key)) for key in keys),
        ]
        for entry in entries
    ]
    if target == "-":
        # Shown on a terminal rather than piped on, it is read by a person: no escape sequences either.
        shown = sys.stdout.isatty()
        _write_csv(sys.stdout, [header, *rows], terminal_safe if shown else None)
        return 0
    try:
        with open(target, "w", newline="", encoding="utf-8") as f:
            _write_csv(f, [header, *rows])
    except OSError as exc:
        print(terminal_safe(f"error: cannot write {target}: {exc.strerror or exc}"), file=sys.stderr)
        return 1
    print(terminal_safe(f"{len(entries)} entries written to {target}"))
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _write_csv(out: TextIO, rows: list[list[str]], shown: Callable[[str], str] | None = None) -> None:
    writer = csv.writer(out)
    for row in rows:
        cells = [csv_safe_cell(cell) for cell in row]
        writer.writerow([shown(cell) for cell in cells] if shown else cells)


def _search(kb: KnowledgeBase, text: str, k: int, threshold: float) -> int:
    return _print_hits(kb.search(text, k=k), threshold)


def _print_hits(hits: list[Hit], threshold: float) -> int:
    if not hits:
        print("no entries")
        return 0
    for rank, hit in enumerate(hits, start=1):
        print(_format_hit(rank, hit, threshold))
    return 0


def _format_hit(rank: int, hit: Hit, threshold: float) -> str:
    # Mark what the bot would not speak, which is what one checks when tuning VOICEBOT_KB_THRESHOLD.
    note = "" if hit.score >= threshold else f"  (below threshold {threshold:.2f})"
    parts = f"[vector {hit.vector_score:.3f}, lexical {hit.lexical_score:.3f}]"
    question, answer = terminal_safe(hit.question), terminal_safe(hit.answer)
    return f"{rank}. {hit.score:.3f}  {question}{note}\n   {answer}  {parts}"


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def _short(source: str) -> str:
    """The path relative to the working directory when inside it; absolute otherwise."""
    path = Path(source)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return os.fspath(path)


# ---------------------------------------------------------------- through a running server

_PROBE_TIMEOUT_S = 2.0
_READ_TIMEOUT_S = 60.0
_INGEST_TIMEOUT_S = 600.0  # embedding a large file on a busy CPU takes a while


class ApiError(Exception):
    """The server answered with an error status (`body`: its JSON, if any), or not at all."""

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


@dataclass(frozen=True)
class ApiClient:
    """The server's /api/kb endpoints, with the standard library (no proxies: the server is local)."""

    base_url: str
    api_key: str = ""

    def get(self, path: str, params: dict[str, Any] | None = None, timeout: float = _READ_TIMEOUT_S) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return self._send(urllib.request.Request(f"{self.base_url}{path}{query}"), timeout)

    def post(self, path: str, body: bytes, content_type: str, timeout: float) -> Any:
        request = urllib.request.Request(
            f"{self.base_url}{path}", data=body, method="POST", headers={"Content-Type": content_type}
        )
        return self._send(request, timeout)

    def _send(self, request: urllib.request.Request, timeout: float) -> Any:
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            body = _json_body(exc)
            raise ApiError(_error_detail(exc, body), exc.code, body) from exc
        except (OSError, ValueError) as exc:  # URLError, timeouts and resets are OSErrors
            reason = getattr(exc, "reason", None) or exc
            raise ApiError(f"no answer from the server at {self.base_url}: {reason}") from exc


def _json_body(exc: urllib.error.HTTPError) -> Any:
    try:
        return json.loads(exc.read())
    except (OSError, ValueError):
        return None


def _error_detail(exc: urllib.error.HTTPError, body: Any) -> str:
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):  # FastAPI's validation errors
        detail = "; ".join(str(item.get("msg", item)) for item in detail if isinstance(item, dict))
    return f"the server answered {exc.code}: {detail or exc.reason}"


def server_url(settings: Settings) -> str:
    """Where this machine reaches the server: a wildcard listen address is reached on loopback."""
    host = settings.http_host.strip() or "127.0.0.1"
    if host in ("0.0.0.0", "::", "[::]", "*"):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.http_port}"


def _through_server(settings: Settings, args: argparse.Namespace, locked: KnowledgeBaseLocked) -> int:
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
            return _print_entries(found) if args.kb_command == "list" else _export(found, args.path)
        if args.kb_command == "calibrate":
            return _calibrate(_RemoteKnowledgeBase(client), settings, args)
        body = client.get("/api/kb/search", {"q": args.text, "k": args.k})
        return _print_hits([_from_json(Hit, hit) for hit in body["hits"]], float(body["threshold"]))
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
                _print_ingest(added, [*errors, _file_error(source, str(exc))], None, kept)
                return 1
        added.update({str(key): int(value) for key, value in answer["added"].items()})
        # A server from before `kept` existed does not send it.
        kept.update({str(key): int(value) for key, value in (answer.get("kept") or {}).items()})
        errors.extend(str(error) for error in answer["errors"])
        total = int(answer["entries"])
    if total is None:  # nothing was sent
        total = int(client.get("/api/kb", timeout=_PROBE_TIMEOUT_S * 5)["entries"])
    return _print_ingest(added, errors, total, kept)


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


def multipart(fields: dict[str, str], file_field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with text fields and one file; returns (body, content type)."""
    boundary = f"voicebot-{uuid.uuid4().hex}"
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
        )
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(file_field)}"; '
        f'filename="{_quote(filename)}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
        + data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _quote(value: str) -> str:
    # As browsers do (WHATWG): percent-encode what would end the quoted string or the header line.
    return value.replace("\r", "%0D").replace("\n", "%0A").replace('"', "%22")
