"""Call and turn records in SQL: SQLite file by default, PostgreSQL (or any SQLAlchemy URL) otherwise.

Every method is synchronous and short: the asyncio server calls them through `asyncio.to_thread`.
Each call opens its own session, so one `Records` is safe to share between threads.

The tables are in `schema.py`, the engine set-up in `engine.py`, and schema changes are Alembic
revisions run by `migrate.py` (docs/storage.md). The names other modules import from here before
the split are re-exported below.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from voicebot.storage.engine import READ_ONLY, create_records_engine
from voicebot.storage.migrate import SchemaTooNewError, upgrade
from voicebot.storage.numbers import NumberVault, StoredNumber
from voicebot.storage.schema import ApiKeyRow, Base, CallRow, JSONType, TurnRow, UTCDateTime, utcnow
from voicebot.storage.views import (
    CallDetail,
    CallSummary,
    RetrievedHit,
    Turn,
    detail_view,
    retrieved_json,
    summary_view,
)

__all__ = [
    "ApiKeyRow",
    "Base",
    "CallDetail",
    "CallRow",
    "CallSummary",
    "JSONType",
    "Records",
    "Redacts",
    "RetrievedHit",
    "SchemaTooNewError",
    "Turn",
    "TurnRow",
    "UTCDateTime",
    "create_records_engine",
    "utcnow",
]


def _moment(value: datetime | None) -> datetime:
    """`value`, or now when None. Checked here so callers get a plain ValueError, not a StatementError."""
    if value is None:
        return utcnow()
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: pass an aware one, e.g. datetime.now(UTC)")
    return value


class Redacts(Protocol):
    def redact(self, text: str) -> str: ...

    def redact_obj(self, obj: Any) -> Any: ...


class Records:
    """Calls and their turns. Construct once per process; migrates the schema on start.

    `schema_version` is then the Alembic revision in force (see `migrate.upgrade`).

    With a `redactor`, turn texts, retrieved passages and slots are masked before they are written,
    so the database never holds the personal data a caller spoke.
    """

    def __init__(
        self,
        url: str,
        *,
        run_migrations: bool = True,
        redactor: Redacts | None = None,
        numbers: NumberVault | None = None,
    ) -> None:
        self.url = url
        self.redactor = redactor
        self.numbers = numbers
        self.engine = create_records_engine(url)
        self._writer = sessionmaker(self.engine, expire_on_commit=False)
        self._reader = sessionmaker(self.engine.execution_options(**{READ_ONLY: True}))
        self.schema_version: str | None = None
        if run_migrations:
            try:
                self.schema_version = upgrade(self.engine)
            except BaseException:
                self.engine.dispose()
                raise

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with self._writer.begin() as session:
            yield session

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._reader() as session:
            yield session

    def writing(self) -> contextlib.AbstractContextManager[Session]:
        """A write transaction, for the stores that share this database (API keys)."""
        return self._write()

    def reading(self) -> contextlib.AbstractContextManager[Session]:
        return self._read()

    # ----------------------------------------------------------------- calls

    def start_call(
        self,
        call_id: str | None = None,
        *,
        gateway: str,
        from_number: str = "",
        to_number: str = "",
        stream_id: str = "",
        started_at: datetime | None = None,
        metadata: Mapping[str, Any] | None = None,
        recording_path: str | None = None,
        direction: str = "inbound",
        outcome: str = "",
        external_id: str = "",
    ) -> str:
        """Record a new call and return its id (a new uuid4 hex when `call_id` is None).

        With a number vault, the numbers are stored as it says (encrypted or hashed, and masked).
        A duplicate id raises `sqlalchemy.exc.IntegrityError`.
        """
        call_id = call_id or uuid.uuid4().hex
        caller, callee = self._protect(from_number), self._protect(to_number)
        row = CallRow(
            id=call_id,
            gateway=gateway,
            from_number=caller.shown,
            to_number=callee.shown,
            from_secret=caller.secret,
            to_secret=callee.secret,
            from_hash=caller.digest,
            to_hash=callee.digest,
            external_id=external_id,
            stream_id=stream_id,
            started_at=_moment(started_at),
            ended_at=None,
            end_reason="",
            recording_path=recording_path,
            meta=dict(metadata or {}),
            direction=direction,
            outcome=outcome,
        )
        with self._write() as session:
            session.add(row)
        return call_id

    def _protect(self, number: str) -> StoredNumber:
        return self.numbers.protect(number) if self.numbers else StoredNumber(number, "", "")

    def protect_clear_numbers(self) -> int:
        """Encrypt or hash the numbers of calls stored in clear (before the vault, or in 'clear' mode)."""
        if self.numbers is None or self.numbers.mode == "clear":
            return 0
        changed = 0
        with self._write() as session:
            rows = session.scalars(
                select(CallRow).where(
                    ((CallRow.from_hash == "") & (CallRow.from_number != ""))
                    | ((CallRow.to_hash == "") & (CallRow.to_number != ""))
                )
            ).all()
            for row in rows:
                for side in ("from", "to"):
                    if getattr(row, f"{side}_hash") or not getattr(row, f"{side}_number"):
                        continue
                    stored = self.numbers.protect(getattr(row, f"{side}_number"))
                    setattr(row, f"{side}_number", stored.shown)
                    setattr(row, f"{side}_secret", stored.secret)
                    setattr(row, f"{side}_hash", stored.digest)
                changed += 1
        return changed

    def reveal_numbers(self, call_id: str) -> tuple[str, str]:
        """A call's numbers in clear (KeyError: no such call; ValueError: they cannot be shown)."""
        with self._read() as session:
            row = session.get(CallRow, call_id)
            if row is None:
                raise KeyError(call_id)
            sides = [
                StoredNumber(row.from_number, row.from_secret, row.from_hash),
                StoredNumber(row.to_number, row.to_secret, row.to_hash),
            ]
        if self.numbers is None:
            if any(side.digest for side in sides):
                raise ValueError("these numbers are protected; the secret key is needed to show them")
            return sides[0].shown, sides[1].shown
        return self.numbers.reveal(sides[0]), self.numbers.reveal(sides[1])

    def last_call_for(self, gateway: str, external_id: str) -> CallSummary | None:
        """The latest call a gateway stored under its own id for it (a Twilio CallSid), if any."""
        stmt = (
            select(CallRow)
            .where(CallRow.gateway == gateway, CallRow.external_id == external_id)
            .order_by(CallRow.started_at.desc())
            .limit(1)
        )
        with self._read() as session:
            row = session.scalars(stmt).first()
            return None if row is None else summary_view(row, 0)

    def last_activity(self, call_id: str) -> datetime | None:
        """When the call was last heard from: its latest turn, else its start. None: no such call."""
        with self._read() as session:
            row = session.get(CallRow, call_id)
            if row is None:
                return None
            latest = session.scalar(select(func.max(TurnRow.started_at)).where(TurnRow.call_id == call_id))
            return max(row.started_at, latest) if latest is not None else row.started_at

    def exists(self, call_id: str) -> bool:
        with self._read() as session:
            return session.get(CallRow, call_id) is not None

    def end_call(
        self,
        call_id: str,
        reason: str,
        recording_path: str | None = None,
        *,
        ended_at: datetime | None = None,
    ) -> bool:
        """Close a call. Returns False (and keeps the first reason) if it was already ended.

        Both the gateway (hangup) and the session (bot goodbye) may report an end: the first wins.
        A recording path is stored either way when the call had none.
        """
        with self._write() as session:
            row = session.get(CallRow, call_id, with_for_update=True)
            if row is None:
                raise KeyError(call_id)
            if recording_path and not row.recording_path:
                row.recording_path = recording_path
            if row.ended_at is not None:
                return False
            row.ended_at = _moment(ended_at)
            row.end_reason = reason
            return True

    def set_outcome(self, call_id: str, outcome: str) -> None:
        """Where an outbound call stands: ringing, answered, busy, no-answer, rejected, failed."""
        self._update_call(call_id, outcome=outcome)

    def set_transfer(self, call_id: str, target: str, status: str) -> None:
        """A handoff to a human: where to, and how it went (transferred, failed: 486, ...)."""
        self._update_call(call_id, transfer_target=target, transfer_status=status)

    def set_gateway_ids(self, call_id: str, *, stream_id: str, external_id: str) -> None:
        """The gateway's own ids for a call, once it has them (an outbound SIP call's Call-ID)."""
        self._update_call(call_id, stream_id=stream_id, external_id=external_id)

    def set_recording(self, call_id: str, recording_path: str) -> None:
        self._update_call(call_id, recording_path=recording_path)

    def _update_call(self, call_id: str, **values: Any) -> None:
        with self._write() as session:
            row = session.get(CallRow, call_id, with_for_update=True)
            if row is None:
                raise KeyError(call_id)
            for name, value in values.items():
                setattr(row, name, value)

    def mark_unfinished_calls(self, reason: str = "server_restart", *, exclude: Collection[str] = ()) -> int:
        """Close calls left open by a crash; returns how many. Run it at startup.

        `ended_at` becomes the call's last recorded activity (its last turn start, else its start), so
        durations don't include the downtime. With several workers on one database, pass the ids that
        are still live elsewhere (e.g. from `LiveCalls.list()`) as `exclude`.
        """
        last_turn = (
            select(func.max(TurnRow.started_at)).where(TurnRow.call_id == CallRow.id).scalar_subquery()
        )
        stmt = (
            update(CallRow)
            .where(CallRow.ended_at.is_(None))
            .values(ended_at=func.coalesce(last_turn, CallRow.started_at), end_reason=reason)
            .execution_options(synchronize_session=False)
        )
        if exclude:
            stmt = stmt.where(CallRow.id.not_in(list(exclude)))
        with self._write() as session:
            return session.execute(stmt).rowcount or 0

    # ----------------------------------------------------------------- turns

    def add_turn(
        self,
        call_id: str,
        *,
        index: int | None = None,
        started_at: datetime | None = None,
        caller_text: str = "",
        bot_text: str = "",
        route: str = "",
        retrieved: Sequence[RetrievedHit | Mapping[str, Any]] | None = None,
        dtmf: str = "",
        interrupted: bool = False,
        latency: Mapping[str, Any] | None = None,
        reason: str = "",
        intent: str = "",
        intent_confidence: float | None = None,
        sentiment: float | None = None,
        slots: Mapping[str, Any] | None = None,
    ) -> int:
        """Append a turn and return its row id. `index` defaults to the call's next turn number.

        Raises KeyError for an unknown call, IntegrityError for an index already taken.
        """
        with self._write() as session:
            # Row lock on PostgreSQL (SQLite's write lock already serialises) so two writers can't
            # pick the same next index.
            if session.get(CallRow, call_id, with_for_update=True) is None:
                raise KeyError(call_id)
            if index is None:
                last = session.scalar(select(func.max(TurnRow.index)).where(TurnRow.call_id == call_id))
                index = 0 if last is None else last + 1
            row = TurnRow(
                call_id=call_id,
                index=index,
                started_at=_moment(started_at),
                caller_text=self._clean(caller_text),
                bot_text=self._clean(bot_text),
                route=route,
                retrieved=self._clean_obj(retrieved_json(retrieved)),
                dtmf=self._clean(dtmf),
                interrupted=interrupted,
                latency=dict(latency or {}),
                reason=self._clean(reason),
                intent=intent,
                intent_confidence=intent_confidence,
                sentiment=sentiment,
                slots=self._clean_obj(dict(slots or {})),
            )
            session.add(row)
            session.flush()
            return row.id

    def update_turn(
        self,
        turn_id: int,
        *,
        caller_text: str | None = None,
        bot_text: str | None = None,
        route: str | None = None,
        retrieved: Sequence[RetrievedHit | Mapping[str, Any]] | None = None,
        dtmf: str | None = None,
        interrupted: bool | None = None,
        latency: Mapping[str, Any] | None = None,
    ) -> None:
        """Change a turn as later facts arrive. None leaves a field alone.

        `latency` is *merged* into the stored dict, because stages finish at different moments
        (the first audio frame is sent after the turn row exists). The other fields are replaced.
        """
        with self._write() as session:
            row = session.get(TurnRow, turn_id, with_for_update=True)
            if row is None:
                raise KeyError(turn_id)
            if caller_text is not None:
                row.caller_text = self._clean(caller_text)
            if bot_text is not None:
                row.bot_text = self._clean(bot_text)
            if route is not None:
                row.route = route
            if retrieved is not None:
                row.retrieved = self._clean_obj(retrieved_json(retrieved))
            if dtmf is not None:
                row.dtmf = self._clean(dtmf)
            if interrupted is not None:
                row.interrupted = interrupted
            if latency:
                # A new dict object: the JSON column does not track in-place mutation.
                row.latency = {**(row.latency or {}), **latency}

    def _clean(self, text: str) -> str:
        return self.redactor.redact(text) if self.redactor and text else text

    def _clean_obj(self, obj: Any) -> Any:
        return self.redactor.redact_obj(obj) if self.redactor else obj

    # ----------------------------------------------------------------- reading

    def list_calls(self, limit: int = 50, offset: int = 0, number: str = "") -> list[CallSummary]:
        """Newest calls first, each with its number of turns; `number`: only calls from or to it."""
        counts = (
            select(TurnRow.call_id, func.count(TurnRow.id).label("n")).group_by(TurnRow.call_id).subquery()
        )
        stmt = (
            select(CallRow, func.coalesce(counts.c.n, 0))
            .outerjoin(counts, counts.c.call_id == CallRow.id)
            .order_by(CallRow.started_at.desc(), CallRow.id.desc())
            .limit(limit)
            .offset(offset)
        )
        if number:
            digest = self.numbers.digest(number) if self.numbers else ""
            stmt = stmt.where(
                (CallRow.from_hash == digest)
                | (CallRow.to_hash == digest)
                | (CallRow.from_number == number)
                | (CallRow.to_number == number)
            )
        with self._read() as session:
            return [summary_view(row, int(n)) for row, n in session.execute(stmt)]

    def get_call(self, call_id: str) -> CallDetail | None:
        """One call with its turns in order, or None."""
        with self._read() as session:
            row = session.get(CallRow, call_id)
            if row is None:
                return None
            turns = session.scalars(
                select(TurnRow).where(TurnRow.call_id == call_id).order_by(TurnRow.index)
            ).all()
            return detail_view(row, turns)
