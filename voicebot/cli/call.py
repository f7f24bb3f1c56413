"""`voicebot call sip:USER@HOST:PORT`: place an outbound SIP call and follow it to its outcome.

With a server running (VOICEBOT_HTTP_HOST/_PORT), the call goes through its `/api/calls` endpoint
and the server's models. Without one, this process loads the models, starts its own SIP gateway
and runs the call itself. Either way it prints each status (calling, ringing, answered, ended)
and the outcome; the exit status is 0 for an answered call and 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from typing import Any

from voicebot.cli.api_client import ApiClient, ApiError, server_url
from voicebot.cli.keys import cli_key, drop_cli_key
from voicebot.config import Settings

POLL_SECS = 0.25


def run(settings: Settings, args: argparse.Namespace) -> int:
    client = ApiClient(server_url(settings))
    try:
        health = client.get("/health", timeout=2.0)
    except ApiError as exc:
        health = None if exc.status is None else {"status": "starting"}
    if health is not None:
        if health.get("status") != "ok":
            print(f"error: the server at {client.base_url} is still starting; try again", file=sys.stderr)
            return 1
        key = cli_key(settings)
        try:
            return _through_server(
                ApiClient(client.base_url, key), args.target, args.timeout, args.ring_timeout
            )
        finally:
            drop_cli_key(settings, key)
    return asyncio.run(_standalone(settings, args.target, args.timeout, args.ring_timeout))


def _print_status(view: dict[str, Any]) -> None:
    line = f"{view['call_id']}: {view['status']}"
    if view["status"] == "ended":
        line += f" ({view.get('outcome') or 'failed'}"
        line += f": {view['reason']})" if view.get("reason") else ")"
    print(line, flush=True)


def _through_server(client: ApiClient, target: str, timeout: float, ring_timeout: float | None) -> int:
    import json

    body: dict[str, Any] = {"to": target}
    if ring_timeout is not None:
        body["ring_timeout"] = ring_timeout
    try:
        view = client.post("/api/calls", json.dumps(body).encode(), "application/json", 10.0)
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _print_status(view)
    deadline = time.monotonic() + timeout
    last = view["status"]
    while last != "ended" and time.monotonic() < deadline:
        time.sleep(POLL_SECS)
        try:
            view = client.get(f"/api/calls/{view['call_id']}")
        except ApiError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if view["status"] != last:
            last = view["status"]
            _print_status(view)
    if last != "ended":
        print(f"{view['call_id']}: still {last} after {timeout:.0f} s; it goes on in the server", flush=True)
    return 0 if view.get("outcome") == "answered" else 1


async def _standalone(settings: Settings, target: str, timeout: float, ring_timeout: float | None) -> int:
    from voicebot.calls.sip import SipService
    from voicebot.calls.turns import preload as preload_turn_models
    from voicebot.logs import configure_logging
    from voicebot.resources import close_resources, load_resources, make_redactor

    configure_logging(
        "WARNING" if settings.log_level.upper() == "INFO" else settings.log_level, make_redactor(settings)
    )
    print("no server running: loading the models here (about 10 s)", file=sys.stderr, flush=True)
    res = await asyncio.to_thread(load_resources, settings)
    await asyncio.to_thread(preload_turn_models)
    service = SipService(res)
    try:
        try:
            await service.start()
        except OSError:
            # Something else holds the SIP port: an outbound call can use any port.
            service.gateway.config = _any_port(service.gateway.config)
            await service.start()
        try:
            placed = await service.dial(target, ring_timeout=ring_timeout)
        except (ValueError, RuntimeError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        handle = placed.handle
        last = ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            view = placed.view()
            if view["status"] != last:
                last = view["status"]
                _print_status(view)
            if last == "ended":
                break
            await asyncio.sleep(POLL_SECS)
        else:
            await handle.hangup()
        await asyncio.sleep(0.5)  # let the records settle
        return 0 if handle.outcome == "answered" else 1
    finally:
        await service.stop()
        await asyncio.to_thread(close_resources, res)
        logging.shutdown()


def _any_port(config: Any) -> Any:
    import dataclasses

    return dataclasses.replace(config, port=0)
