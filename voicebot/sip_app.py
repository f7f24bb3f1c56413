"""SIP calls for the app: the gateway's call handler, handoff by REFER, and the dialer.

The dialer is the interface campaigns use: :meth:`SipService.dial` stores an outbound call row,
places the call, follows it (ringing, answered, busy, no-answer, rejected, failed) into the
record, and runs the same pipeline as an inbound call once it is answered.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from telephony.sip.agent import SipCall
from telephony.sip.dialpolicy import AllowList
from telephony.sip.gateway import Refusal, SipCallHandle, SipConfig, SipGateway
from telephony.sip.transport import SipCallTransport
from voicebot.config import Settings
from voicebot.resources import OUTPUT_SAMPLE_RATE, Resources
from voicebot.session import (
    INPUT_SAMPLE_RATE,
    CallInfo,
    admit_call,
    rate_limited,
    release_call,
    run_call,
)

log = logging.getLogger(__name__)

FINAL_OUTCOMES = ("answered", "busy", "no-answer", "rejected", "failed")


def gateway_config(settings: Settings) -> SipConfig:
    return SipConfig(
        host=settings.sip_host,
        port=settings.sip_port,
        public_host=settings.sip_public_host,
        codecs=settings.sip_codec_list,
        rtp_ports=settings.sip_rtp_port_range,
        max_calls=settings.max_calls,
        allow=settings.sip_allow,
        invite_rate=settings.sip_invite_rate,
        invite_burst=settings.sip_invite_burst,
        proxy=settings.sip_proxy,
        dial_allow=dial_allow_list(settings),
        username=settings.sip_username,
        password=settings.sip_password,
        from_user=settings.sip_from_user,
        transfer_uri=settings.sip_transfer_uri,
        ring_timeout=settings.sip_ring_timeout_secs,
        rtp_timeout=settings.sip_rtp_timeout_secs,
        in_rate=INPUT_SAMPLE_RATE,
        out_rate=OUTPUT_SAMPLE_RATE,
    )


@dataclass
class Placed:
    """An outbound call this process placed, as the API reports it."""

    call_id: str
    target: str
    handle: SipCallHandle

    def view(self) -> dict[str, Any]:
        handle = self.handle
        ended = handle.status == "ended"
        return {
            "call_id": self.call_id,
            "to": self.target,
            "direction": "outbound",
            "status": handle.status,
            "outcome": handle.outcome if ended or handle.outcome == "answered" else "",
            "reason": handle.reason if ended else "",
        }


class SipService:
    def __init__(self, res: Resources) -> None:
        self.res = res
        self.gateway = SipGateway(
            gateway_config(res.settings), self._on_call, admit=self._admit, release=self._release
        )
        # Server call ids of admitted inbound calls, by the agent's call key, until the app takes them.
        self._admitted: dict[str, str] = {}
        self._placed: dict[str, Placed] = {}
        self._by_handle: dict[int, str] = {}
        # Set once an outbound call's row is stored: a loopback callee can answer before that, and
        # the pipeline must not write to a row that is not there yet.
        self._stored: dict[str, asyncio.Event] = {}
        self._followers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.gateway.start()

    async def stop(self) -> None:
        await self.gateway.stop()

    def _admit(self, call: SipCall) -> Refusal | None:
        # Redis round trips on loopback (well under a millisecond): fine on the event loop.
        refusal = rate_limited(self.res, call.remote.uri.user or "", call.peer[0])
        if refusal is not None:
            return Refusal(503, round(refusal[1]), refusal[0])
        info = CallInfo(call_id="", gateway="sip", from_number=str(call.remote.uri)[:64])
        if not admit_call(self.res, info, f"sip-{uuid.uuid4().hex[:24]}"):
            return Refusal(486, 30, f"at capacity ({self.res.settings.max_calls} calls)")
        self._admitted[call.key] = info.call_id
        return None

    def _release(self, call: SipCall) -> None:
        call_id = self._admitted.pop(call.key, None)
        if call_id is not None:
            release_call(self.res, call_id)

    # --- calls in and out ----------------------------------------------------------------

    async def _on_call(self, transport: SipCallTransport, handle: SipCallHandle) -> None:
        call_id = self._by_handle.get(id(handle))
        stored = self._stored.get(call_id) if call_id is not None else None
        if stored is not None:
            await stored.wait()
            call_id = self._by_handle.get(id(handle))  # None if the row could not be stored
        admitted = self._admitted.pop(handle.sip.key, None)
        info = CallInfo(
            call_id=call_id or admitted or "",
            gateway="sip",
            from_number=handle.from_uri[:64],
            to_number=handle.to_uri[:64],
            stream_id=handle.call_id[:128],
            direction=handle.direction,
            recorded=call_id is not None,
            external_id=handle.call_id[:128],
        )
        # An outbound call whose row could not be stored takes a slot now.
        if not info.call_id and not await asyncio.to_thread(
            admit_call, self.res, info, f"out-{uuid.uuid4().hex[:24]}"
        ):
            await handle.hangup()
            return
        log.info(
            "SIP call %s (%s, %s) -> pipeline as %s",
            handle.call_id,
            handle.direction,
            handle.codec,
            info.call_id,
        )

        async def handoff() -> bool:
            return await self._transfer(handle, info.call_id)

        await run_call(transport, info, self.res, on_handoff=handoff)

    async def _transfer(self, handle: SipCallHandle, call_id: str) -> bool:
        target = self.res.settings.sip_transfer_uri
        result = await handle.transfer()
        log.info("call %s: handoff to %r: %s", call_id, target, result.detail)
        await asyncio.to_thread(self.res.records.set_transfer, call_id, target, result.detail)
        if result.ok:
            await handle.hangup()  # the caller is with the agent now; our leg is done
        return result.ok

    async def dial(self, target: str, ring_timeout: float | None = None) -> Placed:
        """Place an outbound call; raises ValueError for a bad target, RuntimeError at capacity."""
        at_capacity = RuntimeError(f"at capacity ({self.res.settings.max_calls} calls)")
        if self.gateway.active_calls >= self.res.settings.max_calls:
            raise at_capacity
        slot = CallInfo(call_id="", gateway="sip", to_number=target[:64], direction="outbound")
        if not await asyncio.to_thread(admit_call, self.res, slot, f"out-{uuid.uuid4().hex[:24]}"):
            raise at_capacity
        call_id = slot.call_id
        changes: asyncio.Queue[str] = asyncio.Queue()
        try:
            handle = await self.gateway.place_call(
                target, listener=lambda h: changes.put_nowait(h.status), ring_timeout=ring_timeout
            )
        except BaseException:
            await asyncio.to_thread(release_call, self.res, call_id)
            raise
        placed = Placed(call_id, target, handle)
        self._placed[call_id] = placed
        self._by_handle[id(handle)] = call_id
        stored = self._stored[call_id] = asyncio.Event()
        try:
            await asyncio.to_thread(
                self.res.records.start_call,
                call_id,
                gateway="sip",
                from_number=handle.from_uri[:64],
                to_number=target[:64],
                stream_id=handle.call_id[:128],
                direction="outbound",
                outcome="calling",
            )
        except BaseException:
            self._by_handle.pop(id(handle), None)  # the pipeline (if answered) records it as inbound does
            await asyncio.to_thread(release_call, self.res, call_id)
            await handle.hangup()
            raise
        finally:
            stored.set()
            self._stored.pop(call_id, None)
        task = asyncio.create_task(self._follow(placed, changes))
        self._followers.add(task)
        task.add_done_callback(self._followers.discard)
        log.info("dialling %s as call %s", target, call_id)
        return placed

    async def _follow(self, placed: Placed, changes: asyncio.Queue[str]) -> None:
        """Write each status change into the record, in order, until the call ends."""
        handle = placed.handle
        records = self.res.records
        status = handle.status
        try:
            while status != "ended":
                status = await changes.get()
                if status in ("ringing", "answered"):
                    await asyncio.to_thread(records.set_outcome, placed.call_id, status)
            await asyncio.to_thread(records.set_outcome, placed.call_id, handle.outcome or "failed")
            if handle.outcome != "answered":
                await asyncio.to_thread(records.end_call, placed.call_id, handle.reason or handle.outcome)
        except Exception:
            log.exception("call %s: could not record its progress", placed.call_id)
        finally:
            self._by_handle.pop(id(handle), None)
            if handle.outcome != "answered":  # an answered call's pipeline gives its slot back
                await asyncio.to_thread(release_call, self.res, placed.call_id)

    def status(self, call_id: str) -> dict[str, Any] | None:
        placed = self._placed.get(call_id)
        return placed.view() if placed is not None else None

    async def hangup(self, call_id: str) -> dict[str, Any] | None:
        placed = self._placed.get(call_id)
        if placed is None:
            return None
        await placed.handle.hangup()
        return placed.view()


def dial_allow_list(settings: Settings) -> AllowList:
    """VOICEBOT_DIAL_ALLOW, parsed, named so in the dialer's refusals. Raises ValueError."""
    return AllowList.parse(settings.dial_allow, source="VOICEBOT_DIAL_ALLOW")
