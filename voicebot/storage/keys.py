"""API keys: created once and shown once, stored only as a hash, revocable, each with a role.

A key reads `vb_<id>_<secret>`: the id finds the row, the secret is 256 random bits. The row keeps
SHA-256 of the whole key. A slow password hash (argon2) guards secrets people choose; a 256-bit
random secret cannot be guessed, so a fast hash costs an attacker nothing more and keeps every API
request cheap. Roles: `admin` today; the console adds `supervisor` and `operator`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from voicebot.storage.records import ApiKeyRow, Records, utcnow

ROLES = ("admin", "supervisor", "operator")
_KEY_RE = re.compile(r"vb_([0-9a-f]{8})_([A-Za-z0-9_-]{43})")


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    role: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > utcnow())


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _view(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        row.id, row.name, row.role, row.created_at, row.expires_at, row.revoked_at, row.last_used_at
    )


class ApiKeys:
    """The keys table, through the records' engine (the same database, migrations and locks)."""

    def __init__(self, records: Records) -> None:
        self._records = records

    def create(self, name: str, role: str = "admin", ttl: timedelta | None = None) -> tuple[ApiKey, str]:
        """A new key: its record, and the key itself, which is not stored and cannot be shown again."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r} (known: {', '.join(ROLES)})")
        name = name.strip()
        if not name or len(name) > 200 or not name.isprintable():
            raise ValueError("a key needs a printable name of 1-200 characters")
        key_id = secrets.token_hex(4)
        key = f"vb_{key_id}_{secrets.token_urlsafe(32)}"
        row = ApiKeyRow(
            id=key_id,
            name=name,
            role=role,
            key_hash=_hash(key),
            created_at=utcnow(),
            expires_at=utcnow() + ttl if ttl else None,
            revoked_at=None,
            last_used_at=None,
        )
        with self._records.writing() as session:
            session.add(row)
        return _view(row), key

    def verify(self, key: str) -> ApiKey | None:
        """The active key this is, or None (unknown, malformed, revoked or expired)."""
        found = _KEY_RE.fullmatch(key.strip())
        if found is None:
            return None
        with self._records.writing() as session:
            row = session.get(ApiKeyRow, found.group(1))
            if row is None or not hmac.compare_digest(row.key_hash, _hash(key.strip())):
                return None
            view = _view(row)
            if not view.active:
                return None
            row.last_used_at = utcnow()
            return _view(row)

    def list(self) -> list[ApiKey]:
        with self._records.reading() as session:
            rows = session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at)).all()
            return [_view(row) for row in rows]

    def any_active(self) -> bool:
        return any(key.active for key in self.list())

    def revoke(self, key_id: str) -> bool:
        """Revoke a key by id (or by the whole key); False if there is no such key."""
        found = _KEY_RE.fullmatch(key_id.strip())
        key_id = found.group(1) if found else key_id.strip()
        with self._records.writing() as session:
            row = session.get(ApiKeyRow, key_id)
            if row is None:
                return False
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            return True
