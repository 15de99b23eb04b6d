"""What `warmtransfer check-config` prints for a good file: what the service will do, read back.

An operator checks a config by reading what was understood (which transports, which trunk, whom
each plan dials, which speech providers), not by re-reading the TOML. Secrets appear only as
where they come from (an environment variable's name, or "in the file"), never as values, and
URLs only as where they lead (`redact.redact_url`): a webhook's path or query is often a token.
"""

from __future__ import annotations

from pydantic import BaseModel, SecretStr
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from warmtransfer.config.errors import dotted
from warmtransfer.config.model import Config
from warmtransfer.config.redact import redact_url

__all__ = ["describe", "secret_sources"]


def secret_sources(config: Config) -> dict[str, str]:
    """Each secret that is set, by key path: ``env NAME`` or ``in the file``."""
    from_env = config.from_env
    found: dict[str, str] = {}

    def walk(value: object, path: tuple[str | int, ...]) -> None:
        if isinstance(value, SecretStr):
            key = dotted(path)
            found[key] = f"env {from_env[key]}" if key in from_env else "in the file"
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name), (*path, name))
        elif isinstance(value, tuple):
            for index, item in enumerate(value):
                walk(item, (*path, index))
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, (*path, str(key)))

    walk(config, ())
    return found


def _table(title: str) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    return table


def _row(table: Table, key: str, value: str) -> None:
    table.add_row(Text(key), Text(value))  # Text: config values are never read as markup


def describe(config: Config) -> RenderableType:
    """A summary of `config` for the terminal."""
    sip = config.sip
    parts: list[RenderableType] = []

    signalling = _table("SIP")
    for item in sip.listen:
        _row(signalling, item.transport, f"{sip.host}:{item.effective_port}")
    if sip.advertised_host:
        _row(signalling, "advertised", sip.advertised_host)
    if sip.tls is not None:
        _row(signalling, "tls cert", str(sip.tls.cert))
        _row(signalling, "tls ca", str(sip.tls.ca) if sip.tls.ca else "system store")
    _row(signalling, "session timer", f"{sip.session_expires} s" if sip.session_timer else "off")
    parts.append(signalling)

    peers = _table("Trunk and inbound")
    if config.trunk is not None:
        trunk = config.trunk
        action = "registers at" if trunk.registration else "authenticates to"
        _row(peers, "trunk", f"{trunk.username} {action} {trunk.registrar}")
        if trunk.outbound_proxy:
            _row(peers, "outbound proxy", trunk.outbound_proxy)
    else:
        _row(peers, "trunk", "none")
    inbound = config.inbound
    if inbound is None:
        _row(peers, "inbound", "open: any address may call (add [inbound] to restrict)")
    else:
        if inbound.allow_ips is not None:
            _row(peers, "inbound from", ", ".join(inbound.allow_ips) or "nobody")
        if inbound.credentials:
            names = ", ".join(c.username for c in inbound.credentials)
            _row(peers, "inbound digest", f"{names} (realm {inbound.realm})")
    parts.append(peers)

    plans = _table("Plans")
    _row(plans, "allow", ", ".join(config.allow.patterns) or "(empty: nothing may be dialled)")
    if not config.plans:
        _row(plans, "(none)", "")
    for name, plan in config.effective_plans.items():
        targets = ", ".join(target.label for target in plan.targets)
        _row(plans, name, f"{plan.hunting.mode}: {targets}")
        if "allow" in config.plans[name].model_fields_set:
            _row(plans, "", f"narrowed to {', '.join(plan.allow.patterns) or 'nothing'}")
        if plan.fallback is not None:
            _row(plans, "", f"fallback {plan.fallback.label}")
    parts.append(plans)

    speech = _table("Speech, consult, briefing")
    tts, stt = config.speech.tts, config.speech.stt
    _row(
        speech,
        "tts",
        tts.provider
        if tts.provider == "piper"
        else f"openai {tts.model} at {redact_url(tts.base_url)}",
    )
    _row(
        speech,
        "stt",
        stt.provider
        if stt.provider == "pocketsphinx"
        else f"openai {stt.model} at {redact_url(stt.base_url)}",
    )
    answers = [
        name
        for name, on in (
            ("spoken answers", config.speech.spoken_answers),
            ("answer detection", config.speech.answer_detection),
        )
        if on
    ]
    _row(speech, "listening for", ", ".join(answers) or "keys only")
    consult = config.consult
    chat = consult.chat
    _row(
        speech,
        "consult",
        consult.mode
        if chat is None or consult.mode == "scripted"
        else f"llm {chat.model} at {redact_url(chat.base_url)}",
    )
    brief = config.briefing_chat
    _row(
        speech,
        "briefing",
        config.briefing.mode
        if brief is None or config.briefing.mode == "extractive"
        else f"llm {brief.model} at {redact_url(brief.base_url)}",
    )
    agent = config.agent.entrypoint
    if agent == "scripted":
        scripted_plan = config.agent.plan or next(iter(config.plans), None)
        agent = (
            f"scripted, transfers with plan {scripted_plan}"
            if scripted_plan
            else "scripted (no plan)"
        )
    _row(speech, "agent", agent)
    parts.append(speech)

    service = _table("Service")
    http = config.http
    _row(service, "http", f"{http.listen} (token set)" if http and http.enabled else "off")
    hooks = config.webhooks
    shown = [redact_url(url) for url in hooks.urls] if hooks else []
    _row(service, "webhooks", ", ".join(shown) or "none")
    _row(service, "records", str(config.records.path) if config.records else "not kept")
    _row(service, "drain timeout", f"{config.service.drain_timeout:g} s")
    parts.append(service)

    secrets = _table("Secrets (values never shown)")
    sources = secret_sources(config)
    for key, source in sources.items():
        _row(secrets, key, source)
    if not sources:
        _row(secrets, "(none)", "")
    parts.append(secrets)
    return Group(*parts)
