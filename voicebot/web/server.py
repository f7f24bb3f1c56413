"""The HTTP/WebSocket server: FastAPI app, readiness, and `voicebot serve`."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response, WebSocket
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse

from voicebot.calls.turns import preload as preload_turn_models
from voicebot.config import Settings
from voicebot.resources import (
    Resources,
    close_resources,
    load_resources,
    make_redactor,
    warm_llm,
    warm_phrase_cache,
)
from voicebot.web.auth import ensure_first_key, require_api_key
from voicebot.web.twilio import (
    STREAM_PATH,
    VOICE_PATH,
    BadRequest,
    signature_valid,
    stream_parameters,
    stream_url,
)

if TYPE_CHECKING:  # loaded once the server starts, off the import path of `voicebot --help`
    from voicebot.calls.sip import SipService
    from voicebot.storage.keys import ApiKeys
    from voicebot.storage.records import Records

log = logging.getLogger(__name__)


class AppState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.resources: Resources | None = None
        self.error: str | None = None
        self.started = time.monotonic()
        self.calls: set[asyncio.Task] = set()
        self.sip: SipService | None = None
        self.sip_error: str | None = None
        self.keys: ApiKeys | None = None  # once the database is open
        self._key_records: Records | None = None

    def open_keys(self) -> None:
        """The API key store, opened before the models load so keys work (and print) at once."""
        from voicebot.storage.keys import ApiKeys
        from voicebot.storage.records import Records

        self._key_records = Records(self.settings.resolved_database_url)
        keys = ApiKeys(self._key_records)
        ensure_first_key(keys)
        self.keys = keys

    def close_keys(self) -> None:
        if self._key_records is not None:
            self._key_records.close()

    async def load(self) -> None:
        try:
            resources = await asyncio.to_thread(load_resources, self.settings)
            await asyncio.to_thread(preload_turn_models)  # off the first call's turn
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
            log.info("phrase cache: synthesized %d answers (the rest were cached)", added)
        except Exception:
            log.exception("phrase cache warm-up failed; answers will be synthesized live")

    async def start_sip(self) -> None:
        from voicebot.calls.sip import SipService

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
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(state.open_keys)
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
        state.close_keys()

    # The docs and schema are served below, behind the API key, instead of FastAPI's open ones.
    app = FastAPI(title="voicebot", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.voicebot = state
    from voicebot.web.api import router as api_router

    app.include_router(api_router)

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_api_key)])
    async def openapi_schema() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(require_api_key)])
    async def docs() -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="voicebot API")

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

    @app.post(VOICE_PATH)
    async def twilio_voice(request: Request) -> Response:
        from telephony.twilio.twiml import connect_stream_twiml

        try:
            form = await request.form(max_files=0, max_fields=100)
        except Exception as exc:  # a malformed body is the client's fault, never a 500
            raise HTTPException(400, f"unreadable form body: {type(exc).__name__}") from None
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        if settings.twilio_auth_token and not signature_valid(
            settings,
            request.headers.get("x-twilio-signature"),
            path=request.url.path,
            query=request.url.query,
            host_header=request.headers.get("host"),
            params=fields,
            schemes=("https", "http"),
        ):
            log.warning("refused a voice webhook from %s: bad or missing X-Twilio-Signature", _peer(request))
            raise HTTPException(403, "invalid X-Twilio-Signature")
        try:
            url = stream_url(settings, request.headers.get("host"))
            twiml = connect_stream_twiml(url, stream_parameters(form))
        except (BadRequest, ValueError) as exc:
            raise HTTPException(400, str(exc)) from None
        return Response(twiml, media_type="application/xml")

    @app.websocket(STREAM_PATH)
    async def twilio_stream(websocket: WebSocket) -> None:
        from voicebot.calls.twilio import refuse, run_twilio_call

        signed = False
        if settings.twilio_auth_token:
            signed = signature_valid(
                settings,
                websocket.headers.get("x-twilio-signature"),
                path=websocket.url.path,
                query=websocket.url.query,
                host_header=websocket.headers.get("host"),
                params={},
                schemes=("wss", "https"),
            )
            if not signed:
                peer = websocket.client.host if websocket.client else "?"
                log.warning("refused a media stream from %s: bad or missing X-Twilio-Signature", peer)
                await websocket.close(code=1008)  # before accept: the client gets HTTP 403
                return
        if state.resources is None:
            await refuse(websocket, 1013, "server is starting, try again")
            return
        task = asyncio.current_task()
        assert task is not None
        state.calls.add(task)
        try:
            await run_twilio_call(websocket, state.resources, signed=signed)
        finally:
            state.calls.discard(task)

    return app


def trusted_proxies(settings: Settings) -> list[str]:
    return [entry.strip() for entry in settings.trusted_proxies.split(",") if entry.strip()]


def _peer(request: Request) -> str:
    return request.client.host if request.client else "?"


def serve(settings: Settings) -> int:
    import uvicorn

    from voicebot.logs import configure_logging

    configure_logging(settings.log_level, make_redactor(settings))
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
        # uvicorn's loggers propagate to ours, so its lines are redacted and escaped like ours.
        log_config=None,
        # X-Forwarded-For/-Proto only from the proxies named; uvicorn would trust 127.0.0.1 by default.
        proxy_headers=bool(trusted_proxies(settings)),
        forwarded_allow_ips=trusted_proxies(settings) or [],
        server_header=False,
    )
    try:
        uvicorn.Server(config).run()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.http_host, settings.http_port, exc)
        return 1
    return 0
