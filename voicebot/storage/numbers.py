"""Caller and callee numbers at rest: encrypted, or kept only as a keyed hash, never in clear.

`VOICEBOT_NUMBER_STORAGE` picks how a call's numbers are written:

- ``encrypt`` (default): the number is stored Fernet-encrypted under the server's secret key, so
  `calls show --reveal` can show it (and logs that it did, with the reason given).
- ``hash``: only a keyed hash is kept; the number can be searched for but never shown again.
- ``clear``: stored as it came (a deployment whose database is itself the protected place).

In the first two modes the row also holds a masked form for display ("*******4567") and an
HMAC-SHA256 of the normalized number, keyed from the secret key, so `calls list --number` finds a
caller's calls without anyone reading the numbers. The hash is keyed because phone numbers are few
enough to hash them all: a plain SHA-256 would be reversed by enumeration.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Literal

from cryptography.fernet import Fernet, InvalidToken

NumberStorage = Literal["encrypt", "hash", "clear"]
_TOKEN_PREFIX = "enc1:"
_SEPARATORS = re.compile(r"[\s().\-]")
_SHOWN_DIGITS = 4


@dataclass(frozen=True)
class StoredNumber:
    shown: str  # what lists print: masked, or the number itself in 'clear' mode
    secret: str  # the Fernet token ('encrypt'), else ""
    digest: str  # keyed hash of the normalized number, else ""


def normalize(number: str) -> str:
    """The part of a number that identifies the caller: a SIP URI's user part, without separators."""
    value = number.strip()
    if value.lower().startswith(("sip:", "sips:", "tel:")):
        value = value.split(":", 1)[1]
        value = value.split("@", 1)[0] if "@" in value else value
        value = value.split(";", 1)[0]
    return _SEPARATORS.sub("", value).lower()


def mask(number: str) -> str:
    """Every digit but the last four starred; letters (a SIP user name) starred but the first."""
    value = normalize(number)
    if not value:
        return ""
    digits = sum(ch.isdigit() for ch in value)
    if digits >= _SHOWN_DIGITS:
        keep_from = len(value)
        seen = 0
        for index in range(len(value) - 1, -1, -1):
            if value[index].isdigit():
                seen += 1
                if seen == _SHOWN_DIGITS:
                    keep_from = index
                    break
        return "".join("*" if ch.isalnum() else ch for ch in value[:keep_from]) + value[keep_from:]
    return value[:1] + "*" * (len(value) - 1)


class NumberVault:
    """Turns numbers into what the records store, and back where the mode allows it."""

    def __init__(self, mode: NumberStorage, key: bytes) -> None:
        self.mode = mode
        self._fernet = Fernet(key)
        self._hash_key = hashlib.sha256(b"voicebot number hash\x00" + key).digest()

    def protect(self, number: str) -> StoredNumber:
        if not number or self.mode == "clear":
            return StoredNumber(number, "", "")
        secret = (
            _TOKEN_PREFIX + self._fernet.encrypt(number.encode()).decode() if self.mode == "encrypt" else ""
        )
        return StoredNumber(mask(number), secret, self.digest(number))

    def digest(self, number: str) -> str:
        return hmac.new(self._hash_key, normalize(number).encode(), hashlib.sha256).hexdigest()

    def reveal(self, stored: StoredNumber) -> str:
        """The number in clear. ValueError when it was kept only as a hash, or under another key."""
        if not stored.digest:
            return stored.shown  # stored in clear
        if not stored.secret.startswith(_TOKEN_PREFIX):
            raise ValueError("this number was stored as a keyed hash only (VOICEBOT_NUMBER_STORAGE=hash)")
        try:
            return self._fernet.decrypt(stored.secret[len(_TOKEN_PREFIX) :].encode()).decode()
        except InvalidToken:
            raise ValueError("this number was encrypted under another secret key") from None
