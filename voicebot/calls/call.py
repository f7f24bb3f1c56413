"""What the server knows of one call, from admission to its last record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class CallInfo:
    call_id: str  # the server's own id: the call row, the live entry, the memory key, the recording
    gateway: str
    from_number: str = ""
    to_number: str = ""
    stream_id: str = ""
    direction: str = "inbound"
    outcome: str = ""  # outbound calls: where the call stands (calling, ringing, answered, ...)
    external_id: str = ""  # the gateway's id for the call (Twilio CallSid, SIP Call-ID): data only
    resume_from: str = ""  # an earlier call whose memory this one continues (an authenticated reconnect)
    # Whether the gateway lost the call without a hangup (a Twilio socket closed with no 'stop').
    connection_lost: Callable[[], bool] | None = None
