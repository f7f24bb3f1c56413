"""The SIP gateway: a UDP endpoint that runs the sans-IO agent, and one RTP session per call.

It hands the application one :class:`SipCallHandle` per answered call (inbound or outbound),
through the ``on_call`` coroutine: the RTP session that carries its media, its state, and the
application's own id for it (``tag``). It knows nothing of what the application runs on a call.
It places calls with :meth:`SipGateway.place_call` (the dialer interface). Policy that is the
gateway's own lives here: capacity (486), codec choice (488), the allowlist and INVITE rate
(:mod:`telephony.sip.guard`), ring and media timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, cast

from telephony.sip.agent import (
    AgentConfig,
    CallAnswered,
    CallConfirmed,
    CallEnded,
    CallProgress,
    Credentials,
    Datagram,
    DtmfInfo,
    IncomingCall,
    Malformed,
    Output,
    Reinvite,
    SipAgent,
    SipCall,
    TransferUpdate,
)
from telephony.sip.dialpolicy import AllowList, OwnSip, destination_refusal, target_refusal
from telephony.sip.guard import Guard, parse_networks
from telephony.sip.media import RtpSession
from telephony.sip.message import SipParseError, SipUri, parse_uri
from telephony.sip.sdp import (
    Negotiated,
    SdpError,
    SessionDescription,
    accept_answer,
    build_answer,
    build_offer,
    negotiate,
    parse_sdp,
)

log = logging.getLogger(__name__)

MEDIA_CHECK_SECS: Final = 1.0
MALFORMED_LOG_WINDOW: Final = 10.0
MALFORMED_LOG_MAX: Final = 5


@dataclass(frozen=True)
class Refusal:
    """Why the application turns an incoming call away: a SIP status and when to try again."""

    status: int
    retry_after_s: int
    reason: str


@dataclass(frozen=True)
class Admitted:
    """The application takes an incoming call, under its own id for it (carried on the handle)."""

    tag: str = ""


#: Decides whether an incoming call may start (from its caller and source). An admission may
#: reserve a call slot and a record: `release` gives them back when the call never reaches the app.
Admission = Callable[[SipCall], Awaitable["Admitted | Refusal"]]
Release = Callable[[str, str], Awaitable[None]]  # (tag, why the call never started)


async def admit_every_call(_call: SipCall) -> Admitted:
    return Admitted()


async def release_nothing(_tag: str, _reason: str) -> None:
    return None


@dataclass(frozen=True)
class SipConfig:
    host: str = "127.0.0.1"
    port: int = 5060
    public_host: str = ""  # advertised in Via/Contact/SDP; empty: host (or a guess when host is 0.0.0.0)
    codecs: tuple[str, ...] = ("PCMU", "PCMA")
    rtp_ports: tuple[int, int] | None = None
    max_calls: int = 16
    allow: str = ""
    invite_rate: float = 2.0
    invite_burst: int = 10
    proxy: str = ""
    dial_allow: AllowList = field(default_factory=AllowList)  # who may be dialled; empty, no proxy: nobody
    username: str = ""
    password: str = ""
    from_user: str = "bot"
    transfer_uri: str = ""
    ring_timeout: float = 30.0
    rtp_timeout: float = 60.0
    user_agent: str = "voicebot"


@dataclass(frozen=True)
class TransferResult:
    ok: bool
    status: int
    detail: str


@dataclass(eq=False)
class SipCallHandle:
    """One call as the application sees it."""

    gateway: SipGateway
    sip: SipCall
    media: RtpSession
    status: str = "calling"  # calling, ringing, answered, ended (outbound); answered, ended (inbound)
    outcome: str = ""  # final: answered, busy, no-answer, rejected, failed, cancelled, hangup
    reason: str = ""
    tag: str = ""  # the application's own id for the call, given at admission or when dialling
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    listeners: list[Callable[[SipCallHandle], None]] = field(default_factory=list)
    _transfer: asyncio.Future[TransferResult] | None = None
    _end_reason: str = ""

    @property
    def direction(self) -> str:
        return self.sip.direction

    @property
    def call_id(self) -> str:
        return self.sip.call_id

    @property
    def from_uri(self) -> str:
        return str(self.sip.remote.uri if self.direction == "inbound" else self.sip.local.uri)

    @property
    def to_uri(self) -> str:
        return str(self.sip.local.uri if self.direction == "inbound" else self.sip.remote.uri)

    @property
    def codec(self) -> str:
        return self.media.negotiated.codec.name if self.media.negotiated else ""

    @property
    def end_reason(self) -> str:
        return self._end_reason

    async def hangup(self) -> None:
        self.gateway._hangup(self)

    async def transfer(self, target: str = "", timeout: float = 20.0) -> TransferResult:
        """Blind transfer by REFER; resolves on the transferee's final NOTIFY (or a refusal)."""
        return await self.gateway._transfer(self, target, timeout)

    def _set_status(self, status: str) -> None:
        self.status = status
        for listener in list(self.listeners):
            try:
                listener(self)
            except Exception:
                log.exception("call status listener failed")


CallHandler = Callable[[SipCallHandle], Awaitable[None]]


class SipGateway(asyncio.DatagramProtocol):
    def __init__(
        self,
        config: SipConfig,
        on_call: CallHandler,
        admit: Admission = admit_every_call,
        release: Release = release_nothing,
    ) -> None:
        self.config = config
        self._on_call = on_call
        self._admit = admit
        self._release = release
        self._guard = Guard(parse_networks(config.allow), config.invite_rate, config.invite_burst)
        self._agent: SipAgent | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._handles: dict[str, SipCallHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._resolved: dict[str, str] = {}
        self._malformed_window = (0.0, 0)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(self.config.host, self.config.port))
        assert self._transport is not None
        host, port = self._transport.get_extra_info("sockname")[:2]
        advertised = self.config.public_host or _advertised_host(host)
        self._agent = SipAgent(
            AgentConfig(advertised, port, user=self.config.from_user, user_agent=self.config.user_agent),
            invite_gate=lambda addr, now: self._guard.take_invite(addr[0], now),
        )
        self._check_task = self._spawn(self._check_media())
        log.info("SIP listening on udp:%s:%d (advertising %s)", host, port, advertised)

    @property
    def port(self) -> int:
        assert self._agent is not None
        return self._agent.config.port

    @property
    def agent(self) -> SipAgent:
        assert self._agent is not None, "gateway not started"
        return self._agent

    @property
    def active_calls(self) -> int:
        return sum(1 for h in self._handles.values() if h.status != "ended")

    async def stop(self) -> None:
        for handle in list(self._handles.values()):
            self._hangup(handle)
        await asyncio.sleep(0.05)  # let the BYEs out
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.close()

    # --- datagrams in ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not a subclass of asyncio.DatagramTransport; it quacks like one.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._agent is None:
            return
        host, port = addr[0], addr[1]
        if not self._guard.allowed(host):
            return
        try:
            self._agent.receive(data, (host, port), self._now())
        except Exception:  # a bug must cost one datagram, never the gateway
            log.exception("SIP: unhandled error on a datagram from %s:%d", host, port)
        self._pump()

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP socket error: %s", exc)

    # --- outbound --------------------------------------------------------------------------

    async def place_call(
        self,
        target: str,
        *,
        tag: str = "",
        listener: Callable[[SipCallHandle], None] | None = None,
        ring_timeout: float | None = None,
    ) -> SipCallHandle:
        """Dial ``target`` (sip:user@host[:port]); the pipeline runs once it is answered.

        Raises ValueError for a bad target, or one :mod:`telephony.sip.dialpolicy` refuses (off
        ``config.dial_allow``; the bot itself, link-local, metadata, ...). The handle's ``outcome``
        tells how it went."""
        uri = self.check_target(target)
        proxy = parse_uri(_as_uri(self.config.proxy)) if self.config.proxy else None
        own = self._own_sip()
        dest_host, dest_port = proxy.host_port() if proxy else uri.host_port()
        dest = (await self._resolve(dest_host.strip("[]")), dest_port)
        # After DNS, on the very address the INVITE goes to: a listed name may point anywhere.
        refusal = destination_refusal(dest[0], dest_port, own)
        if refusal is not None:
            raise ValueError(refusal)
        media = await RtpSession.open(self._bind_host(), self.config.rtp_ports)
        offer = build_offer(
            self.agent.config.host, media.local_port, random.getrandbits(31), 1, self.config.codecs
        )
        creds = Credentials(self.config.username, self.config.password) if self.config.username else None
        sip_call = self.agent.invite(str(uri), offer, self._now(), dest=dest, credentials=creds)
        handle = SipCallHandle(self, sip_call, media, tag=tag)
        if listener is not None:
            handle.listeners.append(listener)
        self._handles[sip_call.key] = handle
        self._pump()
        self._spawn(self._ring_timeout(handle, ring_timeout or self.config.ring_timeout))
        return handle

    def check_target(self, target: str) -> SipUri:
        """The parsed target, if the dial policy lets it be dialled; raises ValueError.

        Before DNS: a name that is refused anyway is never looked up. :meth:`place_call` checks
        the address it resolves to as well."""
        try:
            uri = parse_uri(target)
        except SipParseError as err:
            raise ValueError(f"bad SIP URI {target!r}: {err}") from None
        if uri.scheme not in ("sip", "sips"):
            raise ValueError(f"only sip: URIs can be dialled, not {target!r}")
        proxy = parse_uri(_as_uri(self.config.proxy)) if self.config.proxy else None
        refusal = target_refusal(uri, self.config.dial_allow, self._own_sip(), proxy.host if proxy else "")
        if refusal is not None:
            raise ValueError(refusal)
        return uri

    async def _ring_timeout(self, handle: SipCallHandle, seconds: float) -> None:
        try:
            await asyncio.wait_for(handle.answered.wait(), seconds)
        except TimeoutError:
            if handle.status != "ended":
                reason = f"no answer after {seconds:g} s"
                log.info("call %s: %s", handle.call_id, reason)
                handle.outcome = "no-answer"
                handle.reason = reason
                # RFC 3261 9.1: no CANCEL before a provisional response. The agent sends it once one
                # comes (and ACKs and BYEs a late 2xx), but the call must not wait for that, or for
                # timer B's 32 s when nothing ever answers: it is over for us now.
                self._hangup(handle)
                self._end_unanswered(handle, reason)

    def _end_unanswered(self, handle: SipCallHandle, reason: str) -> None:
        """End an outbound call we gave up on, ahead of the agent. Its transaction goes on; the
        CallEnded it reports at last finds no handle and is ignored (see :meth:`_ended`)."""
        if handle.status == "ended":
            return
        if self._handles.get(handle.sip.key) is handle:
            del self._handles[handle.sip.key]
        handle._end_reason = reason
        log.info("SIP call %s ended: %s (%s)", handle.call_id, handle.outcome, reason)
        handle._set_status("ended")
        handle.ended.set()
        handle.media.close()

    def _own_sip(self) -> OwnSip:
        """Where this gateway takes SIP, for the dial policy: a call there would reach the bot."""
        bound = self.config.host
        hosts = {bound, self.agent.config.host}
        if bound in ("0.0.0.0", "::"):
            hosts.add(_advertised_host(bound))  # the address peers on this network reach us at
        return OwnSip.of(hosts, self.port)

    # --- events ----------------------------------------------------------------------------

    def _pump(self) -> None:
        if self._agent is None:
            return
        # Dispatching can queue more output (a re-INVITE answered in place): drain until empty, or
        # that 200 OK would wait for the next timer tick and go out twice.
        while outputs := self._agent.drain():
            for output in outputs:
                self._dispatch(output)
        self._arm_timer()

    def _dispatch(self, output: Output) -> None:
        if isinstance(output, Datagram):
            self._send(output)
        elif isinstance(output, IncomingCall):
            self._spawn(self._incoming_guarded(output.call, output.offer))
        elif isinstance(output, Reinvite):
            self._reinvite(output.call, output.offer)
        elif isinstance(output, CallConfirmed):
            log.debug("call %s confirmed", output.call.call_id)
        elif isinstance(output, CallProgress):
            self._progress(output)
        elif isinstance(output, CallAnswered):
            self._answered(output.call, output.answer)
        elif isinstance(output, CallEnded):
            self._ended(output)
        elif isinstance(output, TransferUpdate):
            self._transfer_update(output)
        elif isinstance(output, DtmfInfo):
            handle = self._handles.get(output.call.key)
            if handle is not None:
                handle.media.push_dtmf(output.digit)
        elif isinstance(output, Malformed):
            self._log_malformed(output)

    async def _incoming_guarded(self, call: SipCall, offer: bytes) -> None:
        try:
            await self._incoming(call, offer)
        except Exception:  # a bug must cost this call (500), never leave the INVITE hanging
            log.exception("SIP: could not handle the INVITE of call %s", call.call_id)
            if not call.ended and call.state != "confirmed":
                self.agent.reject(call, 500, self._now())
                self._pump()

    async def _incoming(self, call: SipCall, offer: bytes) -> None:
        agent = self.agent
        if self.active_calls >= self.config.max_calls:
            log.warning("SIP: refusing call %s from %s: at capacity", call.call_id, call.remote.uri)
            agent.reject(call, 486, self._now(), headers=(("Retry-After", "30"),))
            self._pump()
            return
        try:
            parsed = parse_sdp(offer)
            negotiated = negotiate(parsed, self.config.codecs)
        except SdpError as err:  # before admission: a call we cannot carry takes no slot, no record
            log.warning("SIP: refusing call %s: %s", call.call_id, err)
            agent.reject(call, 488, self._now(), headers=(("Warning", f'305 - "{_warn_text(err)}"'),))
            self._pump()
            return
        # The admission may take a call slot (atomically, for every worker): it is given back below
        # unless the call reaches the app, which releases it when the call ends.
        verdict = await self._admit(call)
        if isinstance(verdict, Refusal):
            refusal = verdict
            log.warning("SIP: refusing call %s from %s: %s", call.call_id, call.remote.uri, refusal.reason)
            retry = (("Retry-After", str(max(1, refusal.retry_after_s))),)
            agent.reject(call, refusal.status, self._now(), headers=retry)
            self._pump()
            return
        handle: SipCallHandle | None = None
        try:
            handle = await self._set_up(call, parsed, negotiated, verdict.tag)
        finally:
            if handle is None:  # refused, cancelled or failed before the app had it
                why = "caller hung up before the answer" if call.ended else "call could not be answered"
                await self._release(verdict.tag, why)
        if handle is not None:
            await self._run(handle)

    async def _set_up(
        self, call: SipCall, offer: SessionDescription, negotiated: Negotiated, tag: str
    ) -> SipCallHandle | None:
        """Ring, open RTP and answer; the handle, or None when the call did not start."""
        agent = self.agent
        agent.ringing(call, self._now())
        self._pump()
        try:
            media = await RtpSession.open(self._bind_host(), self.config.rtp_ports)
        except OSError as err:
            log.error("SIP: refusing call %s: %s", call.call_id, err)
            agent.reject(call, 503, self._now())
            self._pump()
            return None
        if call.ended:  # cancelled while we set up
            media.close()
            return None
        media.configure(negotiated)
        answer = build_answer(offer, negotiated, agent.config.host, media.local_port, _session_id(), 1)
        handle = SipCallHandle(self, call, media, status="answered", tag=tag)
        self._handles[call.key] = handle
        agent.accept(call, answer, self._now())
        self._pump()
        log.info(
            "SIP call %s from %s answered (%s, RTP %s:%d)",
            call.call_id,
            call.remote.uri,
            negotiated.codec.name,
            negotiated.remote_host,
            negotiated.remote_port,
        )
        handle.answered.set()
        return handle

    def _reinvite(self, call: SipCall, offer: bytes) -> None:
        handle = self._handles.get(call.key)
        if handle is None:
            self.agent.reject(call, 481, self._now())
            return
        if not offer:
            self.agent.accept(call, call.local_sdp, self._now())  # offerless re-INVITE: repeat ours
            return
        try:
            parsed = parse_sdp(offer)
            negotiated = negotiate(parsed, self.config.codecs)
        except SdpError as err:
            self.agent.reject(call, 488, self._now())
            log.warning("SIP call %s: refused re-INVITE: %s", call.call_id, err)
            return
        handle.media.configure(negotiated)
        session_id, version = _next_origin(call.local_sdp)
        answer = build_answer(
            parsed, negotiated, self.agent.config.host, handle.media.local_port, session_id, version
        )
        self.agent.accept(call, answer, self._now())
        log.info("SIP call %s: re-INVITE (%s)", call.call_id, "hold" if negotiated.on_hold else "resume")

    def _progress(self, event: CallProgress) -> None:
        handle = self._handles.get(event.call.key)
        if handle is not None and handle.status == "calling":
            handle._set_status("ringing")

    def _answered(self, call: SipCall, answer: bytes) -> None:
        handle = self._handles.get(call.key)
        if handle is None:
            return
        try:
            negotiated = accept_answer(parse_sdp(answer), self.config.codecs)
        except SdpError as err:
            log.warning("SIP call %s: unusable answer (%s); hanging up", call.call_id, err)
            handle.outcome = "failed"
            handle.reason = f"bad SDP answer: {err}"
            self._hangup(handle)
            return
        handle.media.configure(negotiated)
        handle.outcome = "answered"
        handle.answered.set()
        handle._set_status("answered")
        self._spawn(self._run(handle))

    def _ended(self, event: CallEnded) -> None:
        handle = self._handles.pop(event.call.key, None)
        if handle is None:
            return
        if handle.direction == "inbound" or handle.outcome not in ("answered", "no-answer"):
            handle.outcome = event.outcome  # outbound: an answered call stays answered however it ends
        handle.reason = handle.reason or event.reason
        handle._end_reason = event.reason
        if handle._transfer is not None and not handle._transfer.done():
            handle._transfer.set_result(TransferResult(False, 481, "call ended during transfer"))
        log.info("SIP call %s ended: %s (%s)", event.call.call_id, handle.outcome, event.reason)
        handle._set_status("ended")
        handle.ended.set()
        handle.media.close()

    async def _run(self, handle: SipCallHandle) -> None:
        try:
            await self._on_call(handle)
        except Exception:
            log.exception("SIP call %s: the call handler failed", handle.call_id)
        finally:
            if handle.status != "ended":
                self._hangup(handle)

    # --- transfer and hangup -----------------------------------------------------------------

    async def _transfer(self, handle: SipCallHandle, target: str, timeout: float) -> TransferResult:
        target = target or self.config.transfer_uri
        if not target:
            return TransferResult(False, 0, "no transfer target configured (VOICEBOT_SIP_TRANSFER_URI)")
        if handle.status == "ended":
            return TransferResult(False, 481, "call already ended")
        future: asyncio.Future[TransferResult] = asyncio.get_running_loop().create_future()
        handle._transfer = future
        self.agent.refer(handle.sip, target, self._now())
        self._pump()
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return TransferResult(False, 408, f"no transfer result within {timeout:.0f} s")
        finally:
            handle._transfer = None

    def _transfer_update(self, event: TransferUpdate) -> None:
        handle = self._handles.get(event.call.key)
        if handle is None or handle._transfer is None or handle._transfer.done():
            return
        if not event.final:
            log.info("SIP call %s: transfer progress %d", event.call.call_id, event.status)
            return
        ok = 200 <= event.status < 300
        detail = "transferred" if ok else f"transfer failed with {event.status}"
        handle._transfer.set_result(TransferResult(ok, event.status, detail))

    def _hangup(self, handle: SipCallHandle) -> None:
        if self._agent is None or handle.sip.ended:
            return
        self._agent.hangup(handle.sip, self._now())
        self._pump()

    # --- timers and media watch ------------------------------------------------------------

    def _arm_timer(self) -> None:
        deadline = self.agent.next_deadline()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.agent.tick(self._now())
        except Exception:
            log.exception("SIP: timer processing failed")
        self._pump()

    async def _check_media(self) -> None:
        """Hang up calls whose RTP stopped: a BYE lost for good must not hold a call slot forever."""
        while True:
            await asyncio.sleep(MEDIA_CHECK_SECS)
            now = time.monotonic()
            for handle in list(self._handles.values()):
                negotiated = handle.media.negotiated
                if handle.status != "answered" or negotiated is None or negotiated.on_hold:
                    continue
                if now - handle.media.last_received > self.config.rtp_timeout:
                    log.warning(
                        "SIP call %s: no RTP for %.0f s; hanging up", handle.call_id, self.config.rtp_timeout
                    )
                    handle.reason = "media timeout"
                    self._hangup(handle)

    # --- helpers -----------------------------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _bind_host(self) -> str:
        return self.config.host

    def _send(self, datagram: Datagram) -> None:
        if self._transport is None:
            return
        host, port = datagram.addr
        if _is_ip(host):
            self._transport.sendto(datagram.data, (host, port))
            return
        cached = self._resolved.get(host)
        if cached is not None:
            self._transport.sendto(datagram.data, (cached, port))
            return
        self._spawn(self._send_resolved(datagram))

    async def _send_resolved(self, datagram: Datagram) -> None:
        host, port = datagram.addr
        try:
            address = await self._resolve(host)
        except OSError as err:
            log.warning("SIP: cannot resolve %s: %s", host, err)
            return
        if self._transport is not None:
            self._transport.sendto(datagram.data, (address, port))

    async def _resolve(self, host: str) -> str:
        if _is_ip(host):
            return host
        if host in self._resolved:
            return self._resolved[host]
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=2)  # SOCK_DGRAM
        address = str(infos[0][4][0])
        self._resolved[host] = address
        return address

    def _log_malformed(self, event: Malformed) -> None:
        start, count = self._malformed_window
        now = time.monotonic()
        if now - start > MALFORMED_LOG_WINDOW:
            if count > MALFORMED_LOG_MAX:
                log.warning("SIP: %d more malformed datagrams not logged", count - MALFORMED_LOG_MAX)
            start, count = now, 0
        count += 1
        self._malformed_window = (start, count)
        if count <= MALFORMED_LOG_MAX:
            log.warning("SIP: dropped a malformed datagram from %s:%d: %s", *event.addr, event.error)


def _warn_text(err: Exception) -> str:
    """An error for a Warning header's quoted text: it may quote the peer's SDP, so keep it to
    printable ASCII without quotes or backslashes (a NUL or CR there would make the response fail)."""
    text = "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in str(err))
    return text[:80]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _as_uri(proxy: str) -> str:
    return proxy if proxy.startswith(("sip:", "sips:")) else f"sip:{proxy}"


def _advertised_host(bound: str) -> str:
    if bound not in ("0.0.0.0", "::"):
        return bound
    import socket

    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent; this only picks the outgoing interface
        return str(probe.getsockname()[0])
    return "127.0.0.1"


def _session_id() -> int:
    return random.getrandbits(31)


def _next_origin(previous_sdp: bytes) -> tuple[int, int]:
    """Our o= session id, kept, and its version, bumped: RFC 3264 section 8."""
    for line in previous_sdp.decode("utf-8", "replace").splitlines():
        parts = line[2:].split() if line.startswith("o=") else []
        if len(parts) >= 3 and parts[1].isdigit() and parts[2].isdigit():
            return int(parts[1]), int(parts[2]) + 1
    return _session_id(), 2
