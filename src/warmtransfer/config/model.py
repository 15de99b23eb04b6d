"""The service's configuration, one TOML file, as pydantic models.

Every section refuses unknown keys (a misspelt key is an error, never a silent default), and
every secret (trunk and inbound passwords, API keys, the webhook secret, the HTTP token) is a
`SecretStr`: it is shown as ``**********`` in repr, str, logs and dumps, and read with
`get_secret_value()` only where it is used.

Checks that span sections (a TLS listener and its files, plans against the global allow-list,
the HTTP token's length, the trunk's transport…) are in `Config.problems()`, each naming the key
path to fix. `load_config` reports them with file and line; a `Config` built in Python runs them
too and raises a pydantic `ValidationError` listing them.

The global allow-list and the plans: ``[allow]`` is what the service may ever dial. A plan
without an ``allow`` of its own uses it; a plan with one may only narrow it: each of its
patterns must lie inside a global pattern (`globs.covers`), so one section says everything the
service can dial. ``Config.plans`` holds plans as written; ``Config.plan(name)`` gives the plan
to run, with its effective allow-list (a plan taken from ``plans`` directly keeps an empty list
when it had none, which dials nothing: the mistake fails safe).
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from warmtransfer.base_url import QUERY_PROBLEM, BaseUrl
from warmtransfer.config.errors import Problem, dotted
from warmtransfer.config.globs import covers
from warmtransfer.config.positions import KeyPath
from warmtransfer.sip.flow import DEFAULT_PORTS, transport_of
from warmtransfer.sip.uri import SipUri, SipUriError
from warmtransfer.transfer.plan import TransferPlan
from warmtransfer.transfer.target import AllowList, DestinationNotAllowed

if TYPE_CHECKING:
    from warmtransfer.engine import Engine

__all__ = [
    "AgentSection",
    "BriefingSection",
    "ChatSection",
    "Config",
    "ConsultSection",
    "HttpSection",
    "InboundCredential",
    "InboundSection",
    "Listen",
    "OpenAISTTConfig",
    "OpenAITTSConfig",
    "PiperTTSConfig",
    "PocketsphinxSTTConfig",
    "RecordsSection",
    "SipSection",
    "SpeechSection",
    "TlsSection",
    "TrunkSection",
    "WebhooksSection",
]

MIN_TOKEN_CHARS = 32
#: A webhook secret shorter than this is one a receiver's attacker could guess: refused.
MIN_WEBHOOK_SECRET_CHARS = 16
DEFAULT_API = "https://api.openai.com/v1"
_ENTRYPOINT = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
)
_PLAN_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_STRICT = ConfigDict(frozen=True, extra="forbid")


def _ip(value: str, what: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address; {what}") from None
    return value


def _http_url(value: str) -> str:
    # The value is not quoted: a URL may hold a token (a webhook's path, user:pass@).
    if not value.startswith(("http://", "https://")):
        raise ValueError("is not an http:// or https:// URL; write the full URL")
    return value.rstrip("/")


def _stripped(value: SecretStr | None) -> SecretStr | None:
    """A secret without surrounding whitespace: one read from a file or an environment
    variable filled from one often ends with a newline nobody meant (and nobody sends)."""
    return None if value is None else SecretStr(value.get_secret_value().strip())


def _sip_uri(value: str, what: str) -> str:
    try:
        uri = SipUri.parse(value)
        transport_of(uri)
    except (SipUriError, ValueError) as exc:
        raise ValueError(f"{exc}; write {what}, e.g. sip:sip.example.com;transport=tcp") from None
    if uri.scheme not in ("sip", "sips"):
        raise ValueError(f"{value!r} is not a sip: or sips: URI; write {what}")
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]


def _api_root(value: str) -> str:
    if BaseUrl.split(value).has_query:
        raise ValueError(f"{QUERY_PROBLEM}, e.g. https://api.openai.com/v1")
    return value


#: An API's base URL: paths are appended to it, so it cannot end in a query.
ApiRoot = Annotated[str, AfterValidator(_http_url), AfterValidator(_api_root)]


# -- [sip] ------------------------------------------------------------------------------------


class Listen(BaseModel):
    """One transport we accept SIP on. UDP and TCP share one port in this engine."""

    model_config = _STRICT

    transport: Literal["udp", "tcp", "tls"]
    port: int | None = Field(
        default=None, ge=0, le=65535, description="None = 5060 (udp, tcp) or 5061 (tls)"
    )

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else DEFAULT_PORTS[self.transport]


class TlsSection(BaseModel):
    """Certificates for SIP over TLS; relative paths are taken from the config file's folder."""

    model_config = _STRICT

    cert: Path | None = Field(default=None, description="our certificate chain (PEM)")
    key: Path | None = Field(default=None, description="its private key (PEM)")
    ca: Path | None = Field(default=None, description="CAs we trust; None = the system store")
    verify: bool = Field(default=True, description="check servers' certificates (keep on)")
    require_client_cert: bool = False


class SipSection(BaseModel):
    model_config = _STRICT

    host: str = Field(default="0.0.0.0", description="the IP address the sockets bind to")
    advertised_host: str | None = Field(
        default=None, description="public IP a NAT maps us to: what Via, Contact and SDP name"
    )
    user: str = Field(default="warmtransfer", min_length=1, max_length=64)
    listen: tuple[Listen, ...] = Field(
        default=(Listen(transport="udp"),), min_length=1, description="transports and ports"
    )
    tls: TlsSection | None = None
    session_timer: bool = Field(default=True, description="RFC 4028: end calls whose peer died")
    session_expires: int = Field(default=1800, ge=90, le=86400)

    @field_validator("host")
    @classmethod
    def _host_ip(cls, value: str) -> str:
        return _ip(value, "bind to an address of this machine, e.g. 0.0.0.0")

    @field_validator("advertised_host")
    @classmethod
    def _advertised_ip(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _ip(value, "use the public IP, not a name (it goes into SDP c= lines)")

    @property
    def transports(self) -> tuple[str, ...]:
        return tuple(item.transport for item in self.listen)

    def port_of(self, transport: str) -> int | None:
        for item in self.listen:
            if item.transport == transport:
                return item.effective_port
        return None


# -- [trunk], [inbound] -----------------------------------------------------------------------


class TrunkSection(BaseModel):
    """A SIP trunk (carrier or PBX) we register with and authenticate to."""

    model_config = _STRICT

    registrar: str = Field(description="sip: URI of the registrar, with ;transport= if not UDP")
    username: str = Field(min_length=1, max_length=128)
    password: SecretStr
    realm: str | None = Field(default=None, description="only answer this realm's challenges")
    outbound_proxy: str | None = Field(default=None, description="sip: URI every request goes to")
    aor: str | None = Field(default=None, description="address of record; None = user@registrar")
    expires: int = Field(default=300, ge=60, le=86400, description="registration lifetime (s)")
    registration: bool = Field(
        default=True,
        description="keep a registration at the registrar (false: only answer challenges)",
    )

    @field_validator("registrar", "outbound_proxy", "aor")
    @classmethod
    def _uri(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _sip_uri(value, f"{info.field_name} as a SIP URI")


class InboundCredential(BaseModel):
    model_config = _STRICT

    username: str = Field(min_length=1, max_length=128)
    password: SecretStr


class InboundSection(BaseModel):
    """Who may call us: source addresses and/or digest credentials (both, when both are set)."""

    model_config = _STRICT

    allow_ips: tuple[str, ...] | None = Field(
        default=None, description='addresses or networks, e.g. ["192.0.2.10", "10.0.0.0/8"]'
    )
    credentials: tuple[InboundCredential, ...] = ()
    realm: str = Field(default="warmtransfer", min_length=1)

    @field_validator("allow_ips")
    @classmethod
    def _networks(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for item in value or ():
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP address or network; write e.g. 192.0.2.10 or 10.0.0.0/8"
                ) from None
        return value

    @model_validator(mode="after")
    def _restricts(self) -> InboundSection:
        if self.allow_ips is None and not self.credentials:
            raise ValueError(
                "allows every caller, as no [inbound] section would; set allow_ips or "
                "credentials (or remove the section)"
            )
        return self


# -- [speech] ---------------------------------------------------------------------------------


class PiperTTSConfig(BaseModel):
    """Offline text-to-speech (the default)."""

    model_config = _STRICT

    provider: Literal["piper"] = "piper"
    model: Path | None = Field(default=None, description=".onnx voice; None = the bundled one")

    @field_validator("model")
    @classmethod
    def _exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"voice file {str(value)!r} does not exist; fix the path")
        return value


class OpenAITTSConfig(BaseModel):
    """Text-to-speech over the OpenAI audio API, or any server that speaks it."""

    model_config = _STRICT

    provider: Literal["openai"]
    base_url: ApiRoot = DEFAULT_API
    api_key: SecretStr
    model: str = Field(default="tts-1", min_length=1)
    voice: str = Field(default="alloy", min_length=1)
    timeout: float = Field(default=15.0, gt=0, le=120)


class PocketsphinxSTTConfig(BaseModel):
    """Offline speech-to-text (the default)."""

    model_config = _STRICT

    provider: Literal["pocketsphinx"] = "pocketsphinx"


class OpenAISTTConfig(BaseModel):
    """Speech-to-text over the OpenAI audio API, or any server that speaks it."""

    model_config = _STRICT

    provider: Literal["openai"]
    base_url: ApiRoot = DEFAULT_API
    api_key: SecretStr
    model: str = Field(default="whisper-1", min_length=1)
    language: str | None = None
    timeout: float = Field(default=15.0, gt=0, le=120)


TTSConfig = Annotated[PiperTTSConfig | OpenAITTSConfig, Field(discriminator="provider")]
STTConfig = Annotated[PocketsphinxSTTConfig | OpenAISTTConfig, Field(discriminator="provider")]


class SpeechSection(BaseModel):
    """`tts` and `stt`: a provider name (``tts = "piper"``) or a table with its settings
    (``[speech.tts] provider = "openai"``). `spoken_answers`, `answer_detection` and
    `voicemail_message` are as for `Engine`."""

    model_config = _STRICT

    tts: TTSConfig = Field(default_factory=PiperTTSConfig)
    stt: STTConfig = Field(default_factory=PocketsphinxSTTConfig)
    spoken_answers: bool = True
    answer_detection: bool = True
    voicemail_message: str | None = Field(default=None, min_length=1, max_length=2000)

    @field_validator("tts", "stt", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"provider": value} if isinstance(value, str) else value


# -- [consult], [briefing] --------------------------------------------------------------------


class ChatSection(BaseModel):
    """An OpenAI-compatible chat-completions endpoint."""

    model_config = _STRICT

    base_url: ApiRoot = DEFAULT_API
    api_key: SecretStr
    model: str = Field(min_length=1)
    timeout: float | None = Field(default=None, gt=0, le=120, description="None = the default")


class ConsultSection(BaseModel):
    """How the human is briefed and decides: scripted (speech and keys) or LLM-driven."""

    model_config = _STRICT

    mode: Literal["scripted", "llm"] = "scripted"
    chat: ChatSection | None = None


class BriefingSection(BaseModel):
    """How the whisper is written: extractive (the default) or by an LLM (`chat`, or
    ``[consult.chat]`` when this section has none)."""

    model_config = _STRICT

    mode: Literal["extractive", "llm"] = "extractive"
    chat: ChatSection | None = None


# -- [webhooks], [records], [http], [agent] ---------------------------------------------------


class WebhooksSection(BaseModel):
    model_config = _STRICT

    urls: tuple[HttpUrl, ...] = Field(default=(), description="each event is POSTed to each URL")
    secret: SecretStr | None = Field(default=None, description="signs every delivery (HMAC)")


class RecordsSection(BaseModel):
    model_config = _STRICT

    path: Path = Field(description="SQLite file of transfer records")


class HttpSection(BaseModel):
    model_config = _STRICT

    enabled: bool = True
    listen: str = Field(default="127.0.0.1:8080", description="host:port, [v6]:port")
    token: SecretStr | None = Field(
        default=None, description="bearer token of the API (surrounding whitespace dropped)"
    )

    @field_validator("token")
    @classmethod
    def _strip_token(cls, value: SecretStr | None) -> SecretStr | None:
        return _stripped(value)

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{value!r} is not host:port; write e.g. 127.0.0.1:8080")
        _ip(host, "bind to an address of this machine, e.g. 127.0.0.1")
        return value

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class AgentSection(BaseModel):
    """The AI agent run on each call: the built-in scripted one, or ``package.module:function``
    (imported by `check-config` and at start, not at load)."""

    model_config = _STRICT

    entrypoint: str = "scripted"
    plan: str | None = Field(
        default=None,
        description="the plan the scripted agent transfers with (default: the first plan)",
    )

    @field_validator("entrypoint")
    @classmethod
    def _form(cls, value: str) -> str:
        if value != "scripted" and not _ENTRYPOINT.match(value):
            raise ValueError(
                f"{value!r} is neither 'scripted' nor module:function; write e.g. "
                "'myapp.agent:handle_call'"
            )
        return value


class ServiceSection(BaseModel):
    """How `warmtransfer serve` runs."""

    model_config = _STRICT

    drain_timeout: float = Field(
        default=30.0,
        ge=0,
        description="on SIGTERM: seconds calls may go on before they are ended",
    )


# -- the file ---------------------------------------------------------------------------------


class Config(BaseModel):
    """One warmtransfer.toml. Build it with `load_config(path)` to get errors with lines."""

    model_config = _STRICT

    sip: SipSection = Field(default_factory=SipSection)
    trunk: TrunkSection | None = None
    inbound: InboundSection | None = None
    allow: AllowList = Field(default_factory=AllowList)
    plans: dict[str, TransferPlan] = Field(default_factory=dict)
    speech: SpeechSection = Field(default_factory=SpeechSection)
    consult: ConsultSection = Field(default_factory=ConsultSection)
    briefing: BriefingSection = Field(default_factory=BriefingSection)
    webhooks: WebhooksSection | None = None
    records: RecordsSection | None = None
    http: HttpSection | None = None
    agent: AgentSection = Field(default_factory=AgentSection)
    service: ServiceSection = Field(default_factory=ServiceSection)

    # Where it came from, for messages and the summary; never a secret's value.
    _source: Path | None = PrivateAttr(default=None)
    _env: dict[KeyPath, str] = PrivateAttr(default_factory=dict)

    @field_validator("plans")
    @classmethod
    def _plan_names(cls, value: dict[str, TransferPlan]) -> dict[str, TransferPlan]:
        for name in value:
            if not _PLAN_NAME.match(name):
                raise ValueError(
                    f"plan name {name!r} may hold only letters, digits, _ and -; rename it"
                )
        return value

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> Config:
        """Run `problems()`, unless the loader runs them itself (to place each in the file)."""
        if not (info.context or {}).get("defer_checks"):
            problems = self.problems()
            if problems:
                raise ValueError("\n".join(str(problem) for problem in problems))
        return self

    # -- what the rest of the service reads ---------------------------------------------------

    @property
    def source(self) -> Path | None:
        """The file this config was loaded from (None when built in Python)."""
        return self._source

    @property
    def from_env(self) -> dict[str, str]:
        """Which keys were read from which environment variables (names only, no values)."""
        return {dotted(path): name for path, name in self._env.items()}

    def plan(self, name: str) -> TransferPlan:
        """The plan to run: as written, with the global allow-list unless it narrows it."""
        plan = self.plans[name]
        if "allow" in plan.model_fields_set:
            return plan
        return plan.model_copy(update={"allow": self.allow})

    @property
    def effective_plans(self) -> dict[str, TransferPlan]:
        return {name: self.plan(name) for name in self.plans}

    def build_engine(self) -> Engine:
        """The engine this config describes (see `build.engine_from_config`)."""
        from warmtransfer.config.build import engine_from_config

        return engine_from_config(self)

    # -- cross-checks -------------------------------------------------------------------------

    def problems(self) -> list[Problem]:
        """Every rule that spans sections or touches files, each naming the key to fix."""
        found: list[Problem] = []
        found += self._listen_problems()
        found += self._tls_problems()
        found += self._trunk_problems()
        found += self._plan_problems()
        found += self._service_problems()
        return found

    def _listen_problems(self) -> list[Problem]:
        found: list[Problem] = []
        seen: dict[str, int] = {}
        for index, item in enumerate(self.sip.listen):
            if item.transport in seen:
                found.append(
                    Problem(
                        ("sip", "listen", index, "transport"),
                        f"{item.transport} is listed twice "
                        f"(also sip.listen[{seen[item.transport]}])",
                        "list each transport once",
                    )
                )
            seen.setdefault(item.transport, index)
        udp, tcp = self.sip.port_of("udp"), self.sip.port_of("tcp")
        if udp is not None and tcp is not None and udp != tcp:
            index = seen["tcp"]
            found.append(
                Problem(
                    ("sip", "listen", index, "port"),
                    f"tcp on {tcp} but udp on {udp}: the engine serves both on one port",
                    f"give both port {udp}",
                )
            )
        return found

    def _tls_problems(self) -> list[Problem]:
        tls = self.sip.tls
        if "tls" in self.sip.transports and (tls is None or tls.cert is None or tls.key is None):
            where: KeyPath = ("sip", "tls") if tls is not None else ("sip", "listen")
            return [
                Problem(
                    where,
                    "listening for TLS needs a certificate and its key",
                    "set cert and key in [sip.tls] (PEM files)",
                )
            ]
        if tls is None:
            return []
        found: list[Problem] = []
        for name in ("cert", "key", "ca"):
            path: Path | None = getattr(tls, name)
            if path is not None and not path.is_file():
                found.append(
                    Problem(
                        ("sip", "tls", name),
                        f"file {str(path)!r} does not exist",
                        "fix the path (a relative path is taken from the config file's folder)",
                    )
                )
        if found:
            return found
        if tls.cert is not None:
            found += _load_chain(tls.cert, tls.key)
        if tls.key is not None and tls.cert is None:
            found.append(Problem(("sip", "tls", "cert"), "key is set without cert", "set cert"))
        if tls.ca is not None:
            try:
                ssl.create_default_context(cafile=str(tls.ca))
            except (ssl.SSLError, OSError) as exc:
                found.append(
                    Problem(
                        ("sip", "tls", "ca"),
                        f"cannot be loaded ({_ssl_reason(exc)})",
                        "give a PEM file of CA certificates",
                    )
                )
        if tls.require_client_cert and tls.ca is None:
            found.append(
                Problem(
                    ("sip", "tls", "require_client_cert"),
                    "needs ca: whom to trust for client certificates",
                    "set ca",
                )
            )
        return found

    def _trunk_problems(self) -> list[Problem]:
        if self.trunk is None:
            return []
        found: list[Problem] = []
        for name in ("registrar", "outbound_proxy"):
            value = getattr(self.trunk, name)
            if value is None:
                continue
            kind = transport_of(SipUri.parse(value))
            if kind not in self.sip.transports:
                found.append(
                    Problem(
                        ("trunk", name),
                        f"reaching it needs {kind}, and [sip] listens on "
                        f"{', '.join(self.sip.transports)} only",
                        f'add {{ transport = "{kind}" }} to sip.listen',
                    )
                )
        return found

    def _plan_problems(self) -> list[Problem]:
        found: list[Problem] = []
        for name, plan in self.plans.items():
            if "allow" in plan.model_fields_set:
                for index, pattern in enumerate(plan.allow.patterns):
                    if not any(covers(outer, pattern) for outer in self.allow.patterns):
                        found.append(
                            Problem(
                                ("plans", name, "allow", "patterns", index),
                                f"{pattern!r} widens the global allow-list "
                                f"({', '.join(self.allow.patterns) or 'empty'}); a plan may "
                                "only narrow it",
                                "write a pattern inside a global one, or add it to [allow]",
                            )
                        )
                if found:
                    continue
            effective = self.plan(name)
            for index, target in enumerate(effective.targets):
                found += _not_allowed(effective, target.uri, ("plans", name, "targets", index))
            if effective.fallback is not None:
                where = ("plans", name, "on_failure", "target")
                found += _not_allowed(effective, effective.fallback.uri, where)
        return found

    def _service_problems(self) -> list[Problem]:
        found: list[Problem] = []
        http = self.http
        if http is not None and http.enabled:
            token = http.token.get_secret_value() if http.token is not None else ""
            if len(token) < MIN_TOKEN_CHARS:
                found.append(
                    Problem(
                        ("http", "token"),
                        f"is {len(token)} characters; the API needs at least {MIN_TOKEN_CHARS}",
                        'make one with: python -c "import secrets; '
                        'print(secrets.token_urlsafe(32))"',
                    )
                )
        found += self._webhook_problems()
        if self.consult.mode == "llm" and self.consult.chat is None:
            found.append(
                Problem(
                    ("consult", "chat"),
                    "mode = 'llm' needs a chat model",
                    "add [consult.chat] with base_url, api_key and model",
                )
            )
        if self.briefing.mode == "llm" and self.briefing_chat is None:
            found.append(
                Problem(
                    ("briefing", "chat"),
                    "mode = 'llm' needs a chat model",
                    "add [briefing.chat] (or [consult.chat], which it then shares)",
                )
            )
        if self.agent.plan is not None and self.agent.plan not in self.plans:
            known = ", ".join(self.plans) or "none"
            found.append(
                Problem(
                    ("agent", "plan"),
                    f"names plan {self.agent.plan!r}, which is not in the config (plans: {known})",
                    "name one of the [plans.NAME] sections, or add that plan",
                )
            )
        if self.records is not None and not self.records.path.parent.is_dir():
            found.append(
                Problem(
                    ("records", "path"),
                    f"folder {str(self.records.path.parent)!r} does not exist",
                    "create it, or fix the path",
                )
            )
        return found

    def _webhook_problems(self) -> list[Problem]:
        """Every delivery is signed: a missing, empty or short secret would let anyone who
        can reach a receiver forge them (an empty HMAC key is a key everyone knows)."""
        hooks = self.webhooks
        if hooks is None or not hooks.urls:
            return []
        if hooks.secret is None:
            return [
                Problem(
                    ("webhooks", "secret"),
                    "is required with urls: receivers check each delivery's signature",
                    'set secret (e.g. secret = "${WARMTRANSFER_WEBHOOK_SECRET}")',
                )
            ]
        length = len(hooks.secret.get_secret_value())
        if length < MIN_WEBHOOK_SECRET_CHARS:
            return [
                Problem(
                    ("webhooks", "secret"),
                    f"is {length} characters; signing needs at least {MIN_WEBHOOK_SECRET_CHARS}",
                    'make one with: python -c "import secrets; print(secrets.token_urlsafe(32))"',
                )
            ]
        return []

    def agent_problems(self) -> list[Problem]:
        """What the ``[agent]`` needs of the rest of the config (run where the agent is
        checked: `check_config`, which `check-config` and `serve` both run). Not part of
        `problems()`: a config built in Python for a service given its own agent (`Service(...,
        agent=...)`) needs no plan."""
        if self.agent.entrypoint == "scripted" and not self.plans:
            return [
                Problem(
                    ("agent", "entrypoint"),
                    "the scripted agent (the default) transfers with a plan, and there is none",
                    "add a [plans.NAME] section, or name your own agent (module:function)",
                )
            ]
        return []

    @property
    def briefing_chat(self) -> ChatSection | None:
        return self.briefing.chat if self.briefing.chat is not None else self.consult.chat


def _not_allowed(plan: TransferPlan, uri: str, where: KeyPath) -> list[Problem]:
    if plan.allow.allows(uri):
        return []
    error = DestinationNotAllowed(uri, plan.allow.patterns)
    rule = ", ".join(error.patterns) if error.patterns else "empty: nothing may be dialled"
    return [
        Problem(
            (*where, "uri"),
            f"{uri!r} is outside the allow-list ({rule})",
            "add a pattern that matches it to [allow] (or the plan's allow), or fix the URI",
        )
    ]


def _ssl_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else str(exc)


def _load_chain(cert: Path, key: Path | None) -> list[Problem]:
    """Load the certificate and key as the TLS listener will; name which one is at fault."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert), str(key) if key is not None else None)
    except ssl.SSLError as exc:
        reason = _ssl_reason(exc)
        if "KEY_VALUES_MISMATCH" in reason.upper():
            return [
                Problem(
                    ("sip", "tls", "key"),
                    f"does not belong to the certificate {str(cert)!r}",
                    "use the key the certificate was issued for",
                )
            ]
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(cert))
        except (ssl.SSLError, OSError):
            return [
                Problem(("sip", "tls", "cert"), f"cannot be loaded ({reason})", "give a PEM file")
            ]
        return [
            Problem(
                ("sip", "tls", "key"),
                f"cannot be loaded ({reason})",
                "give the PEM private key of the certificate (unencrypted)",
            )
        ]
    except OSError as exc:
        return [Problem(("sip", "tls", "cert"), f"cannot be read ({exc.strerror})", "fix it")]
    return []
