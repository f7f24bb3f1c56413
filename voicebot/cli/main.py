"""`voicebot` command line. `python run.py` with no arguments is `voicebot serve`.

Subcommands import their modules lazily so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from voicebot.config import get_settings


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicebot", description="Telephony voice bot server.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="Start the HTTP/WebSocket server (the default).")
    serve.add_argument("--host", help="Override VOICEBOT_HTTP_HOST.")
    serve.add_argument("--port", type=int, help="Override VOICEBOT_HTTP_PORT.")

    kb = sub.add_parser("kb", help="Manage the knowledge base.")
    kb_sub = kb.add_subparsers(dest="kb_command", metavar="ACTION", required=True)
    ingest = kb_sub.add_parser("ingest", help="Ingest CSV (question,answer), Markdown or text files.")
    ingest.add_argument("paths", nargs="+", help="Files to ingest; re-ingesting a file replaces its entries.")
    kb_sub.add_parser("list", help="List the entries.")
    search = kb_sub.add_parser("search", help="Show the top hits for a text, with scores.")
    search.add_argument("text")
    search.add_argument("-k", type=int, default=5, help="How many hits (default 5).")
    export = kb_sub.add_parser(
        "export",
        help="Write every entry to a CSV file (question,answer,source,line,metadata...).",
        description="Cells a spreadsheet would run as a formula (starting with =, +, -, @) are written "
        "with a leading ' so opening the file runs nothing.",
    )
    export.add_argument("path", metavar="FILE.csv", help="Where to write; - for stdout.")
    from voicebot.cli.kb_calibrate import add_calibrate_parser

    add_calibrate_parser(kb_sub)

    from voicebot.cli.intents import add_parser as add_intents_parser

    add_intents_parser(sub)

    calls = sub.add_parser("calls", help="Inspect call records.")
    calls_sub = calls.add_subparsers(dest="calls_command", metavar="ACTION", required=True)
    calls_list = calls_sub.add_parser("list", help="List recent calls.")
    calls_list.add_argument("-n", type=int, default=50, help="How many calls (default 50).")
    calls_list.add_argument("--number", help="Only calls from or to this number (found by its keyed hash).")
    show = calls_sub.add_parser("show", help="Show one call with its turns (numbers masked).")
    show.add_argument("call_id")
    show.add_argument(
        "--reveal", action="store_true", help="Show the caller and callee numbers in clear (needs --reason)."
    )
    show.add_argument("--reason", help="Why the numbers are needed; written to DATA_DIR/audit.log.")

    keys = sub.add_parser("keys", help="Manage the API keys that /api and /docs require.")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = keys_sub.add_parser("create", help="Create a key and print it (shown only this once).")
    create.add_argument("name", help="What the key is for, e.g. 'crm integration'.")
    create.add_argument("--role", default="admin", help="admin (default), supervisor or operator.")
    keys_sub.add_parser("list", help="List keys (ids, names, roles, state; never the keys themselves).")
    revoke = keys_sub.add_parser("revoke", help="Revoke a key by its id.")
    revoke.add_argument("key_id")

    call = sub.add_parser(
        "call",
        help="Place an outbound SIP call (through the running server, or standalone) and follow it.",
    )
    call.add_argument("target", help="Who to call: sip:USER@HOST[:PORT].")
    call.add_argument(
        "--timeout", type=float, default=600.0, help="Stop following the call after this many seconds."
    )
    call.add_argument(
        "--ring-timeout",
        type=float,
        help="Give up (no-answer) if not answered by then; default VOICEBOT_SIP_RING_TIMEOUT_SECS.",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    settings = get_settings()
    command = args.command or "serve"
    if command == "serve":
        from voicebot.web.server import serve

        if getattr(args, "host", None):
            settings.http_host = args.host
        if getattr(args, "port", None):
            settings.http_port = args.port
        return serve(settings)
    if command == "kb":
        from voicebot.cli import kb as kb_cli

        return kb_cli.run(settings, args)
    if command == "call":
        from voicebot.cli import call as call_cli

        return call_cli.run(settings, args)
    if command == "intents":
        from voicebot.cli import intents as intents_cli

        return intents_cli.run(settings, args)
    if command == "calls":
        from voicebot.cli import calls as calls_cli

        return calls_cli.run(settings, args)
    if command == "keys":
        from voicebot.cli import keys as keys_cli

        return keys_cli.run(settings, args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
