"""`voicebot keys create/list/revoke`: the API keys that /api, /docs and /openapi.json require.

Works on the database directly (it is open to several processes), whether or not the server runs.
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta

from voicebot.config import Settings
from voicebot.storage.keys import ApiKey, ApiKeys
from voicebot.storage.records import Records
from voicebot.textsafe import terminal_safe

# A key the CLI mints for itself to reach the running server's API (see `cli_key`).
CLI_KEY_TTL = timedelta(minutes=10)


def run(settings: Settings, args: argparse.Namespace) -> int:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    records = Records(settings.resolved_database_url)
    try:
        keys = ApiKeys(records)
        if args.keys_command == "create":
            return _create(keys, args.name, args.role)
        if args.keys_command == "list":
            return _list(keys)
        if args.keys_command == "revoke":
            return _revoke(keys, args.key_id)
        return 2
    finally:
        records.close()


def _create(keys: ApiKeys, name: str, role: str) -> int:
    try:
        info, key = keys.create(name, role)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"Created key {info.id} ({info.role}) for {terminal_safe(info.name)!r}. It is shown only this once:"
    )
    print(key)
    return 0


def _state(key: ApiKey) -> str:
    if key.revoked_at is not None:
        return f"revoked {key.revoked_at:%Y-%m-%d %H:%M}"
    if not key.active:
        return "expired"
    return "active"


def _list(keys: ApiKeys) -> int:
    found = keys.list()
    if not found:
        print("No API keys. `voicebot keys create NAME` makes one.")
        return 0
    for key in found:
        used = f"{key.last_used_at:%Y-%m-%d %H:%M}" if key.last_used_at else "never"
        print(
            f"{key.id}  {key.role:<10} {_state(key):<24} created {key.created_at:%Y-%m-%d %H:%M}  "
            f"last used {used}  {terminal_safe(key.name)}"
        )
    return 0


def _revoke(keys: ApiKeys, key_id: str) -> int:
    if not keys.revoke(key_id):
        print(
            f"error: no key with id {terminal_safe(key_id)!r} (`voicebot keys list` shows them)",
            file=sys.stderr,
        )
        return 1
    print(f"Revoked key {terminal_safe(key_id)}.")
    return 0


def cli_key(settings: Settings) -> str:
    """The key the CLI sends to the running server: VOICEBOT_API_KEY, else a short-lived one it mints.

    Whoever can run the CLI on this data dir can already write the database, keys included, so
    minting is no new power; the key expires on its own and is revoked once the command is done.
    """
    if settings.api_key:
        return settings.api_key
    records = Records(settings.resolved_database_url)
    try:
        _info, key = ApiKeys(records).create("cli (temporary)", "admin", ttl=CLI_KEY_TTL)
    finally:
        records.close()
    return key


def drop_cli_key(settings: Settings, key: str) -> None:
    if settings.api_key or not key:
        return
    records = Records(settings.resolved_database_url)
    try:
        ApiKeys(records).revoke(key)
    finally:
        records.close()
