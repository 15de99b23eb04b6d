"""From a loaded `Config` to the objects that run: the engine (user agent, TLS, speech,
consultant), the briefing's summarizer, and the trunk registration.

Kept apart from the models so that loading and checking a config (`check-config`) imports no
speech engine or SIP machinery beyond what validation needs; each builder imports what it makes.
Secrets leave their `SecretStr` here and nowhere else, straight into the object that uses them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from warmtransfer.config.model import ChatSection, Config, TrunkSection

if TYPE_CHECKING:
    from warmtransfer.consult.chat import ChatClient
    from warmtransfer.consult.summary import Summarizer
    from warmtransfer.engine import Engine
    from warmtransfer.sip.digest import Credentials
    from warmtransfer.sip.flow import Flow
    from warmtransfer.sip.transports import TlsConfig
    from warmtransfer.sip.useragent import InboundPolicy, Registration
    from warmtransfer.speech.stt import SpeechToText
    from warmtransfer.speech.tts import TextToSpeech

__all__ = [
    "TrunkRegistrationError",
    "chat_client",
    "engine_from_config",
    "inbound_policy",
    "register_trunk",
    "speech_to_text",
    "summarizer_from_config",
    "text_to_speech",
    "tls_config",
    "trunk_credentials",
]


def tls_config(config: Config) -> TlsConfig | None:
    """`[sip.tls]` as the transport layer takes it, listening on the TLS port of `sip.listen`."""
    from warmtransfer.sip.transports import TlsConfig

    tls = config.sip.tls
    if tls is None:
        return None
    return TlsConfig(
        certfile=tls.cert,
        keyfile=tls.key,
        cafile=tls.ca,
        verify=tls.verify,
        port=config.sip.port_of("tls") or 0,
        require_client_cert=tls.require_client_cert,
    )


def trunk_credentials(trunk: TrunkSection | None) -> Credentials | None:
    from warmtransfer.sip.digest import Credentials

    if trunk is None:
        return None
    return Credentials(trunk.username, trunk.password.get_secret_value(), trunk.realm)


def inbound_policy(config: Config) -> InboundPolicy | None:
    from warmtransfer.sip.digest import Credentials
    from warmtransfer.sip.useragent import InboundPolicy

    inbound = config.inbound
    if inbound is None:
        return None
    users = [Credentials(c.username, c.password.get_secret_value()) for c in inbound.credentials]
    return InboundPolicy(
        allow_ips=inbound.allow_ips, credentials=users or None, realm=inbound.realm
    )


def text_to_speech(config: Config) -> TextToSpeech:
    tts = config.speech.tts
    if tts.provider == "openai":
        from warmtransfer.speech.openai import OpenAITTS

        return OpenAITTS(
            tts.base_url,
            tts.api_key.get_secret_value(),
            tts.model,
            tts.voice,
            timeout=tts.timeout,
        )
    from warmtransfer.speech.tts import PiperTTS

    return PiperTTS(tts.model)


def speech_to_text(config: Config) -> SpeechToText | None:
    """The transcriber for an LLM consult; None for pocketsphinx, which the engine makes (and
    closes) itself."""
    stt = config.speech.stt
    if stt.provider == "openai":
        from warmtransfer.speech.openai import OpenAISTT

        return OpenAISTT(
            stt.base_url,
            stt.api_key.get_secret_value(),
            stt.model,
            language=stt.language,
            timeout=stt.timeout,
        )
    return None


def chat_client(chat: ChatSection) -> ChatClient:
    from warmtransfer.consult.chat import ChatClient

    if chat.timeout is None:
        return ChatClient(chat.base_url, chat.api_key.get_secret_value(), chat.model)
    return ChatClient(
        chat.base_url, chat.api_key.get_secret_value(), chat.model, timeout=chat.timeout
    )


def engine_from_config(config: Config) -> Engine:
    """The engine the config describes; start it (`await engine.start()`, or ``async with``),
    then `register_trunk` if there is a trunk. Building touches no socket or model."""
    from warmtransfer.engine import Engine
    from warmtransfer.sip.session_timer import SessionTimerConfig

    sip = config.sip
    udp_or_tcp = sip.port_of("udp") if "udp" in sip.transports else sip.port_of("tcp")
    chat = None
    if config.consult.mode == "llm" and config.consult.chat is not None:
        chat = chat_client(config.consult.chat)
    return Engine(
        sip.host,
        udp_or_tcp if udp_or_tcp is not None else 0,
        user=sip.user,
        tts=text_to_speech(config),
        listen=sip.transports,
        tls=tls_config(config),
        spoken_answers=config.speech.spoken_answers,
        answer_detection=config.speech.answer_detection,
        voicemail_message=config.speech.voicemail_message,
        credentials=trunk_credentials(config.trunk),
        inbound=inbound_policy(config),
        advertised_host=sip.advertised_host,
        session_timer=(
            SessionTimerConfig(interval=sip.session_expires) if sip.session_timer else None
        ),
        chat=chat,
        stt=speech_to_text(config) if chat is not None else None,
    )


def summarizer_from_config(config: Config) -> Summarizer:
    """The briefing's summarizer: extractive, or the LLM one (which falls back to extractive
    on any failure, see `LlmSummarizer`)."""
    from warmtransfer.consult.summary import ExtractiveSummarizer

    chat = config.briefing_chat
    if config.briefing.mode == "llm" and chat is not None:
        from warmtransfer.consult.llm_summary import LlmSummarizer

        key = chat.api_key.get_secret_value()
        if chat.timeout is None:
            return LlmSummarizer(chat.base_url, key, chat.model)
        return LlmSummarizer(chat.base_url, key, chat.model, chat.timeout)
    return ExtractiveSummarizer()


class TrunkRegistrationError(RuntimeError):
    """The registrar of ``[trunk]`` did not take our registration; the message names the
    registrar, the username and the SIP status (never the password)."""


async def register_trunk(engine: Engine, config: Config) -> Registration | None:
    """Register at the trunk's registrar (through its outbound proxy), kept fresh by the
    user agent until it closes; None when there is no trunk or `registration = false`.
    Raises `TrunkRegistrationError` if the registrar refuses or does not answer."""
    from warmtransfer.sip.call import CallFailed
    from warmtransfer.sip.uri import SipUri

    trunk = config.trunk
    if trunk is None or not trunk.registration:
        return None
    registrar = SipUri.parse(trunk.registrar)
    aor = trunk.aor or str(SipUri(registrar.scheme, trunk.username, registrar.host, registrar.port))
    proxy = await _proxy_flow(trunk.outbound_proxy) if trunk.outbound_proxy else None
    try:
        return await engine.ua.register(registrar, expires=trunk.expires, aor=aor, proxy=proxy)
    except CallFailed as exc:
        where = f"[trunk] registration at {trunk.registrar} as {trunk.username!r}"
        if exc.status == 408:
            raise TrunkRegistrationError(
                f"{where}: no answer; check registrar and outbound_proxy, and that SIP gets there"
            ) from None
        hint = " (check [trunk] username and password)" if exc.status in (401, 403, 407) else ""
        raise TrunkRegistrationError(f"{where} refused: {exc}{hint}") from None


async def _proxy_flow(uri_text: str) -> Flow:
    """The proxy's flow: a name is resolved for UDP; a stream keeps it (TLS checks it)."""
    from warmtransfer.sip.flow import Flow, flow_for
    from warmtransfer.sip.uri import SipUri

    flow = flow_for(SipUri.parse(uri_text))
    if flow.transport != "udp":
        return flow
    infos = await asyncio.get_running_loop().getaddrinfo(flow.host, flow.port, type=2)
    return Flow(str(infos[0][4][0]), int(infos[0][4][1]))
