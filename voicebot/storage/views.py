"""What `Records` returns: frozen dataclasses built from the rows, detached from any session."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from voicebot.storage.schema import CallRow, TurnRow


@dataclass(frozen=True, slots=True)
class RetrievedHit:
    id: str
    score: float
    question: str


@dataclass(frozen=True, slots=True)
class Turn:
    id: int
    call_id: str
    index: int
    started_at: datetime
    caller_text: str
    bot_text: str
    route: str
    retrieved: list[dict[str, Any]]
    dtmf: str
    interrupted: bool
    latency: dict[str, Any]
    reason: str = ""
    intent: str = ""
    intent_confidence: float | None = None
    sentiment: float | None = None
    slots: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CallSummary:
    id: str
    gateway: str
    from_number: str
    to_number: str
    started_at: datetime
    ended_at: datetime | None
    end_reason: str
    turn_count: int
    direction: str = "inbound"
    outcome: str = ""
    external_id: str = ""
    from_hash: str = ""

    @property
    def duration_s(self) -> float | None:
        return None if self.ended_at is None else (self.ended_at - self.started_at).total_seconds()


@dataclass(frozen=True, slots=True)
class CallDetail:
    id: str
    gateway: str
    from_number: str
    to_number: str
    stream_id: str
    started_at: datetime
    ended_at: datetime | None
    end_reason: str
    recording_path: str | None
    metadata: dict[str, Any]
    turns: list[Turn]
    direction: str = "inbound"
    outcome: str = ""
    transfer_target: str = ""
    transfer_status: str = ""
    external_id: str = ""

    @property
    def duration_s(self) -> float | None:
        return None if self.ended_at is None else (self.ended_at - self.started_at).total_seconds()


def retrieved_json(retrieved: Sequence[RetrievedHit | Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    hits: list[dict[str, Any]] = []
    for hit in retrieved or ():
        if isinstance(hit, RetrievedHit):
            hits.append({"id": hit.id, "score": hit.score, "question": hit.question})
        else:
            hits.append(dict(hit))
    return hits


def turn_view(row: TurnRow) -> Turn:
    return Turn(
        id=row.id,
        call_id=row.call_id,
        index=row.index,
        started_at=row.started_at,
        caller_text=row.caller_text,
        bot_text=row.bot_text,
        route=row.route,
        retrieved=list(row.retrieved or []),
        dtmf=row.dtmf,
        interrupted=row.interrupted,
        latency=dict(row.latency or {}),
        reason=row.reason or "",
        intent=row.intent or "",
        intent_confidence=row.intent_confidence,
        sentiment=row.sentiment,
        slots=dict(row.slots or {}),
    )


def summary_view(row: CallRow, turn_count: int) -> CallSummary:
    return CallSummary(
        id=row.id,
        gateway=row.gateway,
        from_number=row.from_number,
        to_number=row.to_number,
        started_at=row.started_at,
        ended_at=row.ended_at,
        end_reason=row.end_reason,
        turn_count=turn_count,
        direction=row.direction,
        outcome=row.outcome,
        external_id=row.external_id,
        from_hash=row.from_hash,
    )


def detail_view(row: CallRow, turns: Sequence[TurnRow]) -> CallDetail:
    return CallDetail(
        id=row.id,
        gateway=row.gateway,
        from_number=row.from_number,
        to_number=row.to_number,
        stream_id=row.stream_id,
        started_at=row.started_at,
        ended_at=row.ended_at,
        end_reason=row.end_reason,
        recording_path=row.recording_path,
        metadata=dict(row.meta or {}),
        turns=[turn_view(t) for t in turns],
        direction=row.direction,
        outcome=row.outcome,
        transfer_target=row.transfer_target,
        transfer_status=row.transfer_status,
        external_id=row.external_id,
    )
