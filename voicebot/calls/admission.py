"""Whether a call may start, and the one place a call gets its id, its slot and its record.

Every gateway goes through :func:`open_call` before anything else is keyed by the call: the id
is minted once (a validated gateway id, suffixed when it is taken, or one we make), a slot is taken
atomically across every worker sharing Redis, and the call row is written. :func:`close_call`
ends the row and gives the slot back.
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import UTC, datetime

from voicebot.calls.call import CallInfo
from voicebot.resources import Resources
from voicebot.storage.numbers import mask

log = logging.getLogger(__name__)

LIVE_TTL_SECS = 3600
# Abnormal ends after which an unsigned stream of the same call, from the same number, may resume it.
ABNORMAL_ENDS = ("error", "server shutdown", "server restarted", "connection lost")
# What the server's own call ids look like: they name recordings and key memory, so nothing else.
CALL_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def rate_limited(res: Resources, number: str, source_ip: str) -> tuple[str, float] | None:
    """Why a new call from this number / address is over its rate, and when to retry; None: admit.

    Token buckets in Redis, shared by every worker: one per caller number, one per source address.
    """
    settings = res.settings
    checks = (
        ("number", number, settings.rate_limit_number_per_min, settings.rate_limit_number_burst),
        ("ip", source_ip, settings.rate_limit_ip_per_min, settings.rate_limit_ip_burst),
    )
    for kind, key, per_min, burst in checks:
        if not key or per_min <= 0:
            continue
        try:
            verdict = res.limiter.hit(kind, key, per_min, burst)
        except Exception:
            log.exception("rate limiter unavailable; admitting the call")
            return None
        if not verdict.allowed:
            who = "this caller number" if kind == "number" else "this address"
            retry = max(1.0, float(verdict.retry_after_secs))
            return f"rate limited: too many calls from {who}, retry in {retry:.0f} s", retry
    return None


def new_call_id(prefix: str) -> str:
    """A fresh server call id for a gateway that has no id of its own we may use (SIP, the dialer)."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def open_call(res: Resources, call: CallInfo, base_id: str) -> bool:
    """Give the call its server id, a call slot and its record, in that order; False: at capacity.

    The id is `base_id` (a validated gateway id, or one from :func:`new_call_id`), suffixed when a
    call already holds it; it is final from here on. Redis unreachable: the call is admitted, logged.
    """
    if not _take_slot(res, call, base_id):
        return False
    try:
        res.records.start_call(
            call.call_id,
            gateway=call.gateway,
            from_number=call.from_number,
            to_number=call.to_number,
            stream_id=call.stream_id,
            direction=call.direction,
            outcome=call.outcome,
            external_id=call.external_id,
        )
    except BaseException:
        release_slot(res, call.call_id)
        raise
    return True


def _take_slot(res: Resources, call: CallInfo, base_id: str) -> bool:
    if not CALL_ID_RE.fullmatch(base_id):
        raise ValueError(f"not a server call id: {base_id!r}")
    info = {"gateway": call.gateway, "from": mask(call.from_number)}
    for attempt in range(5):
        candidate = base_id if attempt == 0 else f"{base_id}-{uuid.uuid4().hex[:6]}"
        if attempt == 0 and res.records.exists(candidate):
            continue
        try:
            verdict = res.live.admit(candidate, info, res.settings.max_calls, LIVE_TTL_SECS)
        except Exception:
            log.exception("live-call registry unavailable; admitting call %s without a slot", candidate)
            verdict = "admitted"
        if verdict == "full":
            return False
        if verdict == "admitted":
            call.call_id = candidate
            return True
    raise RuntimeError(f"could not find a free call id for {base_id}")


def release_slot(res: Resources, call_id: str) -> None:
    """Give back a call slot (the call ended, or never started)."""
    try:
        res.live.remove(call_id)
    except Exception:
        log.exception("could not release the slot of call %s; it expires on its own", call_id)


def close_call(res: Resources, call_id: str, reason: str, recording_path: str | None = None) -> None:
    """End the call's record and give its slot back; the slot goes back even if the record fails."""
    try:
        res.records.end_call(call_id, reason, recording_path)
    finally:
        release_slot(res, call_id)


def resumable_call(res: Resources, call: CallInfo, *, signed: bool) -> str:
    """The earlier call whose memory a reconnecting stream may continue, or "".

    Asked before :func:`open_call` writes this call's own record. Signed by Twilio: the CallSid is
    Twilio's word that this is the same phone call. Unsigned: only the same caller number, within
    VOICEBOT_RESUME_WINDOW_SECS of an abnormal end (a crash, an error), may continue it; a reused
    CallSid from another number, or after a normal hangup, starts empty.
    """
    if not call.external_id:
        return ""
    earlier = res.records.last_call_for(call.gateway, call.external_id)
    if earlier is None:
        return ""
    if signed:
        return earlier.id
    window = res.settings.resume_window_secs
    if window <= 0 or not call.from_number or not earlier.from_hash:
        return ""
    if res.records.numbers is None or res.records.numbers.digest(call.from_number) != earlier.from_hash:
        return ""
    if earlier.ended_at is not None and earlier.end_reason not in ABNORMAL_ENDS:
        return ""
    # A call that crashed has no end: it was last alive at its latest turn, not at its start.
    last_seen = earlier.ended_at or res.records.last_activity(earlier.id) or earlier.started_at
    if (datetime.now(UTC) - last_seen).total_seconds() > window:
        return ""
    return earlier.id
