"""The HTTP/WebSocket server: FastAPI app, readiness, and `voicebot serve`."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from contextlib import asynccontextmanager, suppress
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request, Response, WebSocket
from fastapi.responses import JSONResponse

from voicebot.config import Settings
from voicebot.resources import Resources, close_resources, load_resources, warm_llm, warm_phrase_cache

log = logging.getLogger(__name__)


class AppState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.resources: Resources | None = None
        self.error: str | None = None
        self.started = time.monotonic()
        self.calls: set[asyncio.Task] = set()
        self.sip: Any = None  # voicebot.sip_app.SipService once started
        self.sip_error: str | None = None

    async def load(self) -> None:
        try:
            resources = await asyncio.to_thread(load_resources, self.settings)
            await warm_llm(resources)
            self.resources = resources
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("start-up failed; /health will answer 503")
            return
        if self.settings.sip_enabled:
            await self.start_sip()
        log.info("ready to take calls after %.1f s", time.monotonic() - self.started)
        try:
            added = await asyncio.to_thread(warm_phrase_cache, self.resources)
            if added:
                log.info("phrase cache: synthesized %d answers", added)
        except Exception:
            log.exception("phrase cache warm-up failed; answers will be synthesized live")

    async def start_sip(self) -> None:
        from voicebot.sip_app import SipService

        assert self.resources is not None
        service = SipService(self.resources)
        try:
            await service.start()
        except (OSError, ValueError) as exc:
            settings = self.settings
            self.sip_error = f"cannot listen on udp:{settings.sip_host}:{settings.sip_port}: {exc}"
            log.error("SIP gateway not started (%s); WebSocket calls still work", self.sip_error)
            return
        self.sip = service

    async def stop_sip(self) -> None:
        if self.sip is not None:
            await self.sip.stop()
            self.sip = None


def create_app(settings: Settings) -> FastAPI:
    state = AppState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = asyncio.create_task(state.load())
        yield
        loader.cancel()
        with suppress(asyncio.CancelledError):
            await loader
        await state.stop_sip()
        for task in list(state.calls):
            task.cancel()
        if state.calls:
            await asyncio.wait(state.calls, timeout=5)
        if state.resources is not None:
            await asyncio.to_thread(close_resources, state.resources)

    app = FastAPI(title="voicebot", lifespan=lifespan)
    app.state.voicebot = state
    from voicebot.api import router as api_router

    app.include_router(api_router)

    @app.get("/health")
    async def health() -> Response:
        res = state.resources
        if res is None:
            body = {"status": "failed" if state.error else "starting", "error": state.error}
            return JSONResponse(body, status_code=503)
        calls = await asyncio.to_thread(res.live.count)
        body: dict[str, Any] = {"status": "ok", "active_calls": calls, "kb_entries": res.kb.count()}
        if state.sip is not None:
            body["sip"] = {"port": state.sip.gateway.port, "active_calls": state.sip.gateway.active_calls}
        elif state.sip_error:
            body["sip"] = {"error": state.sip_error}
        return JSONResponse(body)

    @app.post("/twilio/voice")
    async def twilio_voice(request: Request) -> Response:
        from telephony.twilio.twiml import connect_stream_twiml

        form = await request.form()
        url = stream_url(settings, request)
        params = {k: str(form[k]) for k in ("From", "To", "CallSid") if k in form}
        return Response(connect_stream_twiml(url, params), media_type="application/xml")

    @app.websocket("/twilio/stream")
    async def twilio_stream(websocket: WebSocket) -> None:
        from voicebot.session import refuse, run_twilio_call

        if state.resources is None:
            await refuse(websocket, 1013, "server is starting, try again")
            return
        task = asyncio.current_task()
        assert task is not None
        state.calls.add(task)
        try:
            await run_twilio_call(websocket, state.resources)
        finally:
            state.calls.discard(task)

    return app


def stream_url(settings: Settings, request: Request) -> str:
    """The Media Streams URL for TwiML. Twilio connects only to wss://, so that is what we hand out:
    from VOICEBOT_PUBLIC_URL when set, else from the Host header the webhook came in on (behind a
    TLS-terminating proxy that is the public name)."""
    if settings.public_url:
        host = urlsplit(settings.public_url).netloc or settings.public_url.strip("/")
    else:
        host = request.headers.get("host", f"{settings.http_host}:{settings.http_port}")
    return f"wss://{host}/twilio/stream"


def configure_logging(level: str, redact_patterns: str = "") -> None:
    """Log to stderr; with redaction on, no log line carries a phone or card number in clear."""
    from loguru import logger as loguru_logger

    from voicebot.pii import RedactingFilter, Redactor, parse_patterns

    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    patterns = parse_patterns(redact_patterns)
    # Pipecat logs through loguru at DEBUG per frame event; keep it at our level or above INFO.
    loguru_logger.remove()
    loguru_logger.add(sys.stderr, level="WARNING" if level.upper() in ("INFO", "WARNING") else level.upper())
    if not patterns:
        return
    redactor = Redactor(patterns)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter(redactor))
    loguru_logger.configure(patcher=lambda record: record.update(message=redactor.redact(record["message"])))


def serve(settings: Settings) -> int:
    import uvicorn

    configure_logging(settings.log_level, settings.pii_redact)
    app = create_app(settings)
    log.info(
        "voicebot listening on http://%s:%d (Twilio webhook POST /twilio/voice, media stream "
        "ws://%s:%d/twilio/stream)%s, data in %s",
        settings.http_host,
        settings.http_port,
        settings.http_host,
        settings.http_port,
        f", SIP on udp:{settings.sip_host}:{settings.sip_port} once models are loaded"
        if settings.sip_enabled
        else "",
        settings.data_dir.resolve(),
    )
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        ws_max_size=settings.ws_max_message_bytes * 4,  # our own check, with a clearer reason, comes first
        lifespan="on",
    )
    try:
        uvicorn.Server(config).run()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.http_host, settings.http_port, exc)
        return 1
    return 0
