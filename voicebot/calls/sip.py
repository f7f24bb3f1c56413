"""SIP calls for the app: the gateway's call handler, handoff by REFER, and the dialer.

The dialer is the interface campaigns use: :meth:`SipService.dial` stores an outbound call row,
places the call, follows it (ringing, answered, busy, no-answer, rejected, failed) into the
record, and runs the same pipeline as an inbound call once it is answered.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from telephony.sip.agent import SipCall
from telephony.sip.dialpolicy import AllowList
from telephony.sip.gateway import Admitted, Refusal, SipCallHandle, SipConfig, SipGateway
from voicebot.calls.admission import close_call, new_call_id, open_call, rate_limited
from voicebot.calls.call import CallInfo
from voicebot.calls.runner import INPUT_SAMPLE_RATE, run_call
from voicebot.calls.sip_transport import SipCallTransport
from voicebot.config import Settings
from voicebot.resources import OUTPUT_SAMPLE_RATE, Resources

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
    """The app's side of the SIP gateway. Every call, in or out, is opened (id, slot, record) by
    :func:`open_call` before the gateway has a handle for it, and the handle carries that id."""

    def __init__(self, res: Resources) -> None:
        self.res = res
        self.gateway = SipGateway(
            gateway_config(res.settings), self._on_call, admit=self._admit, release=self._release
        )
        self._placed: dict[str, Placed] = {}
        self._followers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.gateway.start()

    async def stop(self) -> None:
        await self.gateway.stop()

    async def _admit(self, call: SipCall) -> Admitted | Refusal:
        refusal = await asyncio.to_thread(rate_limited, self.res, call.remote.uri.user or "", call.peer[0])
        if refusal is not None:
            return Refusal(503, round(refusal[1]), refusal[0])
        info = CallInfo(
            call_id="",
            gateway="sip",
            from_number=str(call.remote.uri)[:64],
            to_number=str(call.local.uri)[:64],
            stream_id=call.call_id[:128],
            external_id=call.call_id[:128],
        )
        if not await asyncio.to_thread(open_call, self.res, info, new_call_id("sip")):
            return Refusal(486, 30, f"at capacity ({self.res.settings.max_calls} calls)")
        return Admitted(info.call_id)

    async def _release(self, call_id: str, reason: str) -> None:
        if call_id:
            await asyncio.to_thread(close_call, self.res, call_id, reason)

    # --- calls in and out ----------------------------------------------------------------

    async def _on_call(self, handle: SipCallHandle) -> None:
        if not handle.tag:
            log.error("SIP call %s reached the app without a call id; hanging up", handle.call_id)
            await handle.hangup()
            return
        info = CallInfo(
            call_id=handle.tag,
            gateway="sip",
            from_number=handle.from_uri[:64],
            to_number=handle.to_uri[:64],
            stream_id=handle.call_id[:128],
            direction=handle.direction,
            external_id=handle.call_id[:128],
        )
        log.info(
            "SIP call %s (%s, %s) -> pipeline as %s",
            handle.call_id,
            handle.direction,
            handle.codec,
            info.call_id,
        )

        async def handoff() -> bool:
            return await self._transfer(handle, info.call_id)

        transport = SipCallTransport(handle, INPUT_SAMPLE_RATE, OUTPUT_SAMPLE_RATE)
        try:
            await run_call(transport, info, self.res, on_handoff=handoff)
        finally:
            transport.closed = True

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
        self.gateway.check_target(target)  # a refused target leaves no record
        info = CallInfo(
            call_id="",
            gateway="sip",
            to_number=target[:64],
            direction="outbound",
            outcome="calling",
        )
        if not await asyncio.to_thread(open_call, self.res, info, new_call_id("out")):
            raise at_capacity
        call_id = info.call_id
        changes: asyncio.Queue[str] = asyncio.Queue()
        try:
            handle = await self.gateway.place_call(
                target,
                tag=call_id,
                listener=lambda h: changes.put_nowait(h.status),
                ring_timeout=ring_timeout,
            )
        except BaseException as exc:
            await asyncio.to_thread(self._not_placed, call_id, exc)
            raise
        placed = Placed(call_id, target, handle)
        self._placed[call_id] = placed
        sip_id = handle.call_id[:128]
        await asyncio.to_thread(
            self.res.records.set_gateway_ids, call_id, stream_id=sip_id, external_id=sip_id
        )
        task = asyncio.create_task(self._follow(placed, changes))
        self._followers.add(task)
        task.add_done_callback(self._followers.discard)
        log.info("dialling %s as call %s", target, call_id)
        return placed

    def _not_placed(self, call_id: str, exc: BaseException) -> None:
        try:
            self.res.records.set_outcome(call_id, "failed")
        finally:
            close_call(self.res, call_id, f"not placed: {exc}"[:200])

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
        except Exception:
            log.exception("call %s: could not record its progress", placed.call_id)
        finally:
            if handle.outcome != "answered":  # an answered call's runner closes it
                reason = handle.reason or handle.outcome or "failed"
                await asyncio.to_thread(close_call, self.res, placed.call_id, reason)

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
