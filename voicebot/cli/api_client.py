"""A client for a running server's HTTP API, for the commands that go through it (`voicebot kb`
beside a server holding the knowledge base, `voicebot call`): standard library only, no proxies.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

from voicebot.config import Settings

_READ_TIMEOUT_S = 60.0


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
