"""The HTTP side of the Twilio gateway: where TwiML points Twilio, and whether a request is Twilio's.

- The `wss://` URL handed to Twilio comes from `VOICEBOT_PUBLIC_URL`, or from a `Host` header on
  `VOICEBOT_ALLOWED_HOSTS`; never from an arbitrary `Host` (it would send the call's audio to
  whoever sent the header). Anything else is a `BadRequest` (400), never a 500.
- With `VOICEBOT_TWILIO_AUTH_TOKEN` set, the voice webhook and the stream's WebSocket upgrade must
  carry a valid `X-Twilio-Signature`, checked with the `twilio` package's `RequestValidator`
  against the public URL the request was made to.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from twilio.request_validator import RequestValidator

from voicebot.config import Settings

STREAM_PATH = "/twilio/stream"
VOICE_PATH = "/twilio/voice"
# Form fields of the webhook passed on to the stream as custom parameters.
FORWARDED_FIELDS = ("From", "To", "CallSid")
MAX_FIELD_CHARS = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# A Host header: a DNS name, IPv4 or [IPv6], and an optional port; nothing else.
_HOST_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]{1,63})*|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?"
)


class BadRequest(ValueError):
    """The request cannot be served as sent (400, with this message)."""


def public_host(settings: Settings, host_header: str | None) -> str:
    """host[:port] of the public URL: VOICEBOT_PUBLIC_URL's, else an allowed Host header."""
    if settings.public_url:
        parts = urlsplit(settings.public_url if "//" in settings.public_url else f"//{settings.public_url}")
        return parts.netloc
    host = (host_header or "").strip()
    if not host or not _HOST_RE.fullmatch(host):
        raise BadRequest("missing or malformed Host header")
    if not _host_allowed(settings, host):
        raise BadRequest(
            f"Host {host!r} is not an allowed public name: set VOICEBOT_PUBLIC_URL, or add it to "
            "VOICEBOT_ALLOWED_HOSTS"
        )
    return host


def _host_allowed(settings: Settings, host: str) -> bool:
    allowed = {entry.strip().lower() for entry in settings.allowed_hosts.split(",") if entry.strip()}
    name = host.lower()
    bare = name.rsplit(":", 1)[0] if not name.endswith("]") else name
    return name in allowed or bare in allowed


def stream_url(settings: Settings, host_header: str | None) -> str:
    """The Media Streams URL for TwiML: always wss:// (Twilio connects to nothing else)."""
    return f"wss://{public_host(settings, host_header)}{STREAM_PATH}"


def stream_parameters(form: Mapping[str, object]) -> dict[str, str]:
    """The webhook fields the stream gets as custom parameters; BadRequest for unusable values."""
    params: dict[str, str] = {}
    for name in FORWARDED_FIELDS:
        if name not in form:
            continue
        value = form[name]
        if not isinstance(value, str):
            raise BadRequest(f"{name} must be a plain form field")
        if len(value) > MAX_FIELD_CHARS or _CONTROL.search(value):
            raise BadRequest(
                f"{name} is longer than {MAX_FIELD_CHARS} characters or holds control characters"
            )
        params[name] = value
    return params


def signature_valid(
    settings: Settings,
    signature: str | None,
    *,
    path: str,
    query: str,
    host_header: str | None,
    params: Mapping[str, str],
    schemes: tuple[str, ...],
) -> bool:
    """Whether `X-Twilio-Signature` signs this request, for any of the public URL's schemes.

    Twilio signs the URL it requested: https:// for the webhook; for the stream it is documented
    as the wss:// URL, so both forms are tried there.
    """
    if not signature:
        return False
    try:
        host = public_host(settings, host_header)
    except BadRequest:
        return False
    validator = RequestValidator(settings.twilio_auth_token)
    suffix = f"{path}?{query}" if query else path
    return any(
        validator.validate(f"{scheme}://{host}{suffix}", dict(params), signature) for scheme in schemes
    )
