"""Who may use the HTTP API: an API key, never the client's address.

A request presents its key as `Authorization: Bearer <key>`, `X-API-Key: <key>`, or HTTP Basic with
the key as the password (so a browser can open /docs: it asks once, then sends it with every
request of the page). Loopback is not a credential: a reverse proxy on the same machine would make
every client look local.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import sys
from typing import TYPE_CHECKING

from fastapi import HTTPException, Request

if TYPE_CHECKING:
    from voicebot.storage.keys import ApiKey, ApiKeys

log = logging.getLogger(__name__)

_CHALLENGE = {"WWW-Authenticate": 'Bearer, Basic realm="voicebot API key (any user name)"'}


def presented_key(request: Request) -> str:
    """The key a request carries, or "" (malformed headers count as none)."""
    direct = request.headers.get("x-api-key", "").strip()
    if direct:
        return direct
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return ""
        return decoded.partition(":")[2].strip()
    return ""


async def require_api_key(request: Request) -> ApiKey:
    """FastAPI dependency: the request's valid API key, else 401 (503 before the key store is open)."""
    keys: ApiKeys | None = request.app.state.voicebot.keys
    if keys is None:
        raise HTTPException(503, "the server is still starting; try again in a moment")
    key = presented_key(request)
    found = await asyncio.to_thread(keys.verify, key) if key else None
    if found is None:
        client = request.client.host if request.client else "?"
        log.warning("refused %s %s from %s: %s", request.method, request.url.path, client,
                    "bad or revoked API key" if key else "no API key")  # fmt: skip
        raise HTTPException(
            401,
            "this endpoint needs an API key (Authorization: Bearer <key>); `python run.py keys create` "
            "makes one",
            headers=_CHALLENGE,
        )
    request.state.api_key = found
    return found


def ensure_first_key(keys: ApiKeys) -> str | None:
    """On a server's very first start (no key has ever existed), create an admin key and print it once.

    Printed to stderr, not logged: log lines travel to aggregators, and this key is shown only here.
    """
    if keys.list():
        return None
    _info, key = keys.create("first admin key", "admin")
    print(
        "\n"
        "  A first admin API key was created for this server. It is shown only this once:\n"
        f"  API key (shown once): {key}\n"
        "  Keep it somewhere safe; `python run.py keys create/list/revoke` manages keys.\n",
        file=sys.stderr,
        flush=True,
    )
    return key
