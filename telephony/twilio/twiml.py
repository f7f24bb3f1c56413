"""TwiML that connects a call to our Media Streams WebSocket.

``<Connect><Stream>`` (not ``<Start><Stream>``) because only a connected stream is
bidirectional: it is the one that lets us send audio, marks and ``clear`` back.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit
from xml.etree import ElementTree

__all__ = ["connect_stream_twiml"]

_XML_DECLARATION: Final = '<?xml version="1.0" encoding="UTF-8"?>'
# XML 1.0 has no escape for these control characters; ElementTree would emit them raw.
_XML_FORBIDDEN: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _check_xml_text(label: str, text: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{label} must be a str, got {type(text).__name__}")
    if _XML_FORBIDDEN.search(text):
        raise ValueError(f"{label} contains a character XML cannot carry: {text!r}")


def _check_stream_url(ws_url: str) -> None:
    _check_xml_text("stream URL", ws_url)
    parts = urlsplit(ws_url)
    # Twilio fails the call (error 31922) on any scheme but wss.
    if parts.scheme != "wss" or not parts.netloc:
        raise ValueError(f"stream URL must be an absolute wss:// URL, got {ws_url!r}")
    # Twilio does not support query strings on stream URLs; values travel as <Parameter>s.
    if parts.query:
        raise ValueError(f"stream URL must not have a query string (use parameters): {ws_url!r}")


def connect_stream_twiml(ws_url: str, parameters: Mapping[str, str] | None = None) -> str:
    """TwiML answering a call with a bidirectional Media Stream to ``ws_url``.

    ``parameters`` arrive in the stream's ``start.customParameters``. Values are
    XML-escaped here, so caller-controlled text (numbers, names) is safe to pass.
    """
    _check_stream_url(ws_url)
    response = ElementTree.Element("Response")
    connect = ElementTree.SubElement(response, "Connect")
    stream = ElementTree.SubElement(connect, "Stream", url=ws_url)
    for name, value in (parameters or {}).items():
        _check_xml_text("parameter name", name)
        _check_xml_text(f"parameter {name!r}", value)
        ElementTree.SubElement(stream, "Parameter", name=name, value=value)
    return _XML_DECLARATION + ElementTree.tostring(response, encoding="unicode")
