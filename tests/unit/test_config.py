"""The service's config file: every bad case names the file, the line (or key) and the fix, and
no secret ever shows in a config's repr or in an error."""

from __future__ import annotations

import shutil
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from pydantic import ValidationError

from warmtransfer.config import Config, ConfigError, check_config, load_config
from warmtransfer.config.summary import secret_sources

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SECRET = "hunter2-RECOGNISABLE-s3cret-value-0123456789"
TOKEN = "t" * 40
GOOD = """\
[sip]
listen = [{ transport = "udp", port = 0 }]

[allow]
patterns = ["sip:*@pbx.example.com"]

[[plans.support.targets]]
uri = "sip:alice@pbx.example.com"
"""

Write = Callable[..., Path]


@pytest.fixture
def write(tmp_path: Path) -> Write:
    def write(text: str, name: str = "warmtransfer.toml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


def error_of(path: Path, **env: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        check_config(path, environ=env)
    return caught.value


def only(error: ConfigError) -> str:
    assert len(error.problems) == 1, str(error)
    return str(error.problems[0])


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def test_a_good_file_loads(write: Write) -> None:
    config = load_config(write(GOOD))
    assert config.sip.transports == ("udp",)
    assert config.plan("support").allow.patterns == ("sip:*@pbx.example.com",)
    assert config.plans["support"].allow.patterns == ()  # as written: dials nothing if misused


def test_unknown_key_names_line_key_and_a_close_match(write: Write) -> None:
    text = GOOD + '\n[trunk]\nregistrar = "sip:sip.example.com"\nusername = "u"\n'
    text += f'password = "{SECRET}"\nexpirse = 60\n'
    path = write(text)
    message = only(error_of(path))
    assert message == (
        f"{path}:{line_of(text, 'expirse')}: trunk.expirse: unknown key; did you mean 'expires'?"
    )


def test_unknown_key_in_a_plan_target(write: Write) -> None:
    text = GOOD + "ring_timout = 10\n"
    path = write(text)
    message = only(error_of(path))
    assert message.startswith(f"{path}:{line_of(text, 'ring_timout')}: ")
    assert "plans.support.targets[0].ring_timout: unknown key; did you mean 'ring_timeout'?" in (
        message
    )


def test_unknown_section_lists_the_keys_there(write: Write) -> None:
    path = write(GOOD + "\n[speach]\ntts = 'piper'\n")
    message = only(error_of(path))
    assert ": speach: unknown key; did you mean 'speech'?" in message


def test_wrong_type_says_what_to_write(write: Write) -> None:
    text = GOOD.replace("port = 0", 'port = "five"')
    path = write(text)
    assert only(error_of(path)) == (
        f"{path}:2: sip.listen[0].port: should be a whole number, not a string; "
        "write a number without quotes, e.g. 5060"
    )


def test_bad_transport_in_a_multiline_array(write: Write) -> None:
    text = GOOD.replace(
        'listen = [{ transport = "udp", port = 0 }]',
        'listen = [\n  { transport = "udp", port = 0 },\n  { transport = "ws", port = 0 },\n]',
    )
    path = write(text)
    assert only(error_of(path)) == (
        f"{path}:{line_of(text, 'ws')}: sip.listen[1].transport: 'ws' is not supported; "
        "use udp, tcp or tls"
    )


def test_bad_speech_provider(write: Write) -> None:
    text = GOOD + '\n[speech.tts]\nprovider = "azure"\n'
    path = write(text)
    assert only(error_of(path)) == (
        f"{path}:{line_of(text, 'azure')}: speech.tts.provider: 'azure' is not supported; "
        "use piper or openai"
    )


def test_malformed_toml_reports_its_line(write: Write) -> None:
    text = GOOD + "\n[http]\nlisten = \n"
    path = write(text)
    message = only(error_of(path))
    assert message.startswith(f"{path}:{len(text.splitlines())}: invalid TOML: ")
    assert "fix the syntax" in message


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    message = only(error_of(tmp_path / "nope.toml"))
    assert message.startswith(f"{tmp_path / 'nope.toml'}: cannot be read")


def test_missing_environment_variable_is_named(write: Write) -> None:
    text = GOOD + (
        '\n[trunk]\nregistrar = "sip:sip.example.com"\nusername = "u"\n'
        'password = "${TRUNK_PASSWORD}"\n\n[http]\ntoken = { env = "API_TOKEN" }\n'
    )
    path = write(text)
    error = error_of(path, API_TOKEN=TOKEN)
    assert only(error) == (
        f"{path}:{line_of(text, 'TRUNK_PASSWORD')}: trunk.password: environment variable "
        "TRUNK_PASSWORD is not set; set TRUNK_PASSWORD in the service's environment, or write "
        "the value here"
    )
    config = check_config(path, environ={"API_TOKEN": TOKEN, "TRUNK_PASSWORD": SECRET})
    assert config.trunk is not None and config.trunk.password.get_secret_value() == SECRET
    assert config.from_env == {"trunk.password": "TRUNK_PASSWORD", "http.token": "API_TOKEN"}
    assert secret_sources(config) == {
        "trunk.password": "env TRUNK_PASSWORD",
        "http.token": "env API_TOKEN",
    }


def test_target_outside_the_allow_list(write: Write) -> None:
    text = GOOD + '\n[[plans.support.targets]]\nuri = "tel:+19005550100"\n'
    path = write(text)
    assert only(error_of(path)) == (
        f"{path}:{line_of(text, '+1900')}: plans.support.targets[1].uri: 'tel:+19005550100' is "
        "outside the allow-list (sip:*@pbx.example.com); add a pattern that matches it to "
        "[allow] (or the plan's allow), or fix the URI"
    )


def test_fallback_outside_the_allow_list(write: Write) -> None:
    text = GOOD + (
        '\n[plans.support.on_failure]\naction = "fallback"\n'
        'target = { uri = "sip:q@evil.example" }\n'
    )
    path = write(text)
    message = only(error_of(path))
    assert message.startswith(
        f"{path}:{line_of(text, 'evil')}: plans.support.on_failure.target.uri"
    )


def test_a_plan_may_narrow_but_not_widen_the_global_allow_list(write: Write) -> None:
    narrowed = write(GOOD + '\n[plans.support.allow]\npatterns = ["sip:al*@pbx.example.com"]\n')
    assert load_config(narrowed).plan("support").allow.patterns == ("sip:al*@pbx.example.com",)

    text = GOOD + '\n[plans.support.allow]\npatterns = ["sip:*@pbx.example.com", "sip:*"]\n'
    path = write(text)
    assert only(error_of(path)) == (
        f"{path}:{len(text.splitlines())}: plans.support.allow.patterns[1]: 'sip:*' widens the "
        "global allow-list (sip:*@pbx.example.com); a plan may only narrow it; write a pattern "
        "inside a global one, or add it to [allow]"
    )


def test_a_narrowed_plan_still_checks_its_targets(write: Write) -> None:
    text = GOOD + '\n[plans.support.allow]\npatterns = ["sip:bob@pbx.example.com"]\n'
    message = only(error_of(write(text)))
    assert "plans.support.targets[0].uri: 'sip:alice@pbx.example.com' is outside" in message


def test_short_api_token(write: Write) -> None:
    text = GOOD + f'\n[http]\nlisten = "127.0.0.1:8080"\ntoken = "{SECRET[:20]}"\n'
    path = write(text)
    error = error_of(path)
    assert only(error) == (
        f"{path}:{line_of(text, 'token')}: http.token: is 20 characters; the API needs at "
        'least 32; make one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'
    )
    assert SECRET[:20] not in str(error)
    disabled = write(GOOD + "\n[http]\nenabled = false\n", "off.toml")
    assert load_config(disabled).http is not None


@pytest.mark.parametrize(
    ("entrypoint", "expected"),
    [
        ("no_such_module_xyz:run", "cannot import module 'no_such_module_xyz'"),
        ("json:no_such_function", "module 'json' has no 'no_such_function'"),
        ("json:__name__", "json:__name__ is not a function"),
    ],
)
def test_bad_agent_entrypoint(write: Write, entrypoint: str, expected: str) -> None:
    text = GOOD + f'\n[agent]\nentrypoint = "{entrypoint}"\n'
    path = write(text)
    load_config(path)  # the import is check-config's (and start's), not every load's
    message = only(error_of(path))
    assert message.startswith(f"{path}:{line_of(text, 'entrypoint')}: agent.entrypoint: ")
    assert expected in message
    assert check_config(write(GOOD + '\n[agent]\nentrypoint = "json:dumps"\n', "ok.toml"))


def test_agent_entrypoint_form(write: Write) -> None:
    path = write(GOOD + '\n[agent]\nentrypoint = "just a name"\n')
    assert "agent.entrypoint: 'just a name' is neither 'scripted' nor module:function" in only(
        error_of(path)
    )


def tls_text(cert: str = "certs/sip.pem", key: str = "certs/sip.key") -> str:
    return GOOD.replace(
        'listen = [{ transport = "udp", port = 0 }]',
        f'listen = [{{ transport = "tls", port = 0 }}]\n\n'
        f'[sip.tls]\ncert = "{cert}"\nkey = "{key}"',
    )


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    folder = tmp_path / "certs"
    folder.mkdir()
    ca = trustme.CA()
    leaf = ca.issue_cert("warmtransfer.example.com")
    leaf.cert_chain_pems[0].write_to_path(str(folder / "sip.pem"))
    leaf.private_key_pem.write_to_path(str(folder / "sip.key"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    trustme.CA().issue_cert("other.example.com").private_key_pem.write_to_path(
        str(folder / "other.key")
    )
    return folder


def test_tls_with_good_files_loads(write: Write, certs: Path) -> None:
    config = load_config(write(tls_text()))
    assert config.sip.tls is not None and config.sip.tls.cert == certs / "sip.pem"


def test_tls_missing_file(write: Write, certs: Path) -> None:
    text = tls_text(key="certs/missing.key")
    path = write(text)
    assert only(error_of(path)) == (
        f"{path}:{line_of(text, 'missing.key')}: sip.tls.key: file "
        f"'{certs / 'missing.key'}' does not exist; fix the path (a relative path is taken "
        "from the config file's folder)"
    )


def test_tls_key_not_matching(write: Write, certs: Path) -> None:
    text = tls_text(key="certs/other.key")
    path = write(text)
    assert only(error_of(path)) == (
        f"{path}:{line_of(text, 'other.key')}: sip.tls.key: does not belong to the certificate "
        f"'{certs / 'sip.pem'}'; use the key the certificate was issued for"
    )


def test_tls_listener_without_certificate(write: Write) -> None:
    text = GOOD.replace('"udp"', '"tls"')
    message = only(error_of(write(text)))
    assert message.endswith(
        "sip.listen: listening for TLS needs a certificate and its key; set cert and key in "
        "[sip.tls] (PEM files)"
    )


def test_trunk_transport_must_be_listened_on(write: Write) -> None:
    text = GOOD + (
        '\n[trunk]\nregistrar = "sip:sip.example.com;transport=tcp"\nusername = "u"\n'
        'password = "p"\n'
    )
    path = write(text)
    assert only(error_of(path)) == (
        f"{path}:{line_of(text, 'registrar')}: trunk.registrar: reaching it needs tcp, and "
        '[sip] listens on udp only; add { transport = "tcp" } to sip.listen'
    )


def test_udp_and_tcp_share_a_port(write: Write) -> None:
    text = GOOD.replace(
        '[{ transport = "udp", port = 0 }]',
        '[{ transport = "udp", port = 5060 }, { transport = "tcp", port = 5070 }]',
    )
    message = only(error_of(write(text)))
    assert "sip.listen[1].port: tcp on 5070 but udp on 5060" in message
    assert message.endswith("give both port 5060")


def test_several_problems_are_all_reported_in_file_order(write: Write) -> None:
    text = GOOD.replace("port = 0", "port = -1") + "\n[consult]\nmode = 'magic'\n"
    error = error_of(write(text))
    assert [p.key for p in error.problems] == ["sip.listen[0].port", "consult.mode"]
    assert [p.line for p in error.problems] == [2, line_of(text, "magic")]


def test_secrets_never_show_in_repr_str_or_errors(write: Write) -> None:
    text = GOOD + (
        '\n[trunk]\nregistrar = "sip:sip.example.com"\nusername = "u"\n'
        'password = "${PW}"\n'
        '\n[inbound]\ncredentials = [{ username = "pbx", password = "${PW}" }]\n'
        '\n[speech.tts]\nprovider = "openai"\napi_key = "${PW}"\n'
        '\n[webhooks]\nurls = ["https://hooks.example.com/x"]\nsecret = "${PW}"\n'
        '\n[http]\ntoken = "${PW}"\n'
    )
    config = check_config(write(text), environ={"PW": SECRET})
    for shown in (repr(config), str(config), config.model_dump_json(), repr(config.trunk)):
        assert SECRET not in shown
    assert len(secret_sources(config)) == 5

    # The same secrets in a file with problems, one of them on a secret itself.
    broken = text.replace('[http]\ntoken = "${PW}"', '[http]\ntoken = "${SHORT}"\nlisten = 1')
    broken = broken.replace('username = "u"', 'username = "u"\nexpirse = "${PW}"')
    error = error_of(write(broken, "broken.toml"), PW=SECRET, SHORT=SECRET[:10])
    rendered = "".join(traceback.format_exception(error)) + repr(error) + str(error)
    assert "expirse" in rendered and "http.listen" in rendered
    assert SECRET not in rendered and SECRET[:10] not in rendered
    tokenless = broken.replace("listen = 1", "").replace('expirse = "${PW}"', "")
    error = error_of(write(tokenless, "short.toml"), PW=SECRET, SHORT=SECRET[:10])
    assert "http.token: is 10 characters" in str(error) and SECRET[:10] not in str(error)


def test_a_config_built_in_python_runs_the_cross_checks() -> None:
    with pytest.raises(ValidationError, match=r"http\.token: is 5 characters"):
        Config.model_validate({"http": {"token": "short"}})
    assert Config().sip.transports == ("udp",)


def test_inbound_must_restrict_something(write: Write) -> None:
    text = GOOD + "\n[inbound]\nrealm = 'x'\n"
    message = only(error_of(write(text)))
    assert "inbound: allows every caller, as no [inbound] section would; set allow_ips" in message


def test_llm_consult_needs_a_chat_model(write: Write) -> None:
    message = only(error_of(write(GOOD + "\n[consult]\nmode = 'llm'\n")))
    assert message.endswith(
        "consult.chat: mode = 'llm' needs a chat model; add [consult.chat] with base_url, "
        "api_key and model"
    )


def test_trunk_example_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARMTRANSFER_TRUNK_PASSWORD", SECRET)
    monkeypatch.setenv("WARMTRANSFER_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("WARMTRANSFER_API_TOKEN", TOKEN)
    config = check_config(EXAMPLES / "warmtransfer.toml")
    assert config.sip.transports == ("udp", "tcp")
    assert set(config.plans) == {"support", "billing"}
    assert config.plan("billing").allow.patterns == ("tel:+14155550*",)
    assert config.agent.plan == "support" and config.service.drain_timeout == 30


def test_pbx_example_loads_beside_its_certificates(tmp_path: Path, certs: Path) -> None:
    shutil.copy(EXAMPLES / "pbx.toml", tmp_path / "pbx.toml")
    shutil.copy(certs / "sip.pem", certs / "warmtransfer.pem")
    shutil.copy(certs / "sip.key", certs / "warmtransfer.key")
    shutil.copy(certs / "ca.pem", certs / "pbx-ca.pem")
    env = {
        "PBX_EXTENSION_PASSWORD": SECRET,
        "PBX_INBOUND_PASSWORD": SECRET,
        "OPENAI_API_KEY": SECRET,
        "WARMTRANSFER_API_TOKEN": TOKEN,
        "WARMTRANSFER_WEBHOOK_SECRET": SECRET,
    }
    config = check_config(tmp_path / "pbx.toml", environ=env)
    assert config.agent.plan == "helpdesk" and config.service.drain_timeout == 60
    assert config.sip.transports == ("tls",)
    assert config.consult.mode == "llm" and config.briefing_chat is config.consult.chat
    plan = config.plan("helpdesk")
    assert plan.fallback is not None and plan.allow.allows(plan.fallback.uri)


@pytest.mark.parametrize("secret", ["", "short-secret"])
def test_webhook_secret_may_not_be_empty_or_short(write: Write, secret: str) -> None:
    """Every delivery is signed with it: an empty key (or a guessable one) signs nothing."""
    text = GOOD + f'\n[webhooks]\nurls = ["https://hooks.example.com/x"]\nsecret = "{secret}"\n'
    path = write(text)
    error = error_of(path)
    assert only(error) == (
        f"{path}:{line_of(text, 'secret =')}: webhooks.secret: is {len(secret)} characters; "
        'signing needs at least 16; make one with: python -c "import secrets; '
        'print(secrets.token_urlsafe(32))"'
    )
    if secret:
        assert secret not in str(error)


def test_the_summary_shows_urls_without_their_tokens(write: Write) -> None:
    from rich.console import Console

    from warmtransfer.config.summary import describe

    text = GOOD + (
        '\n[webhooks]\nurls = ["https://hooks.slack.example/services/T0/B0/sEcReT1",'
        ' "https://bob:sEcReT2@receiver.example.com:8443/?token=sEcReT3"]\n'
        f'secret = "{SECRET}"\n'
        '\n[speech.tts]\nprovider = "openai"\nbase_url = "https://me:sEcReT4@tts.example.com/v1"\n'
        f'api_key = "{SECRET}"\n'
    )
    console = Console(record=True, width=200)
    console.print(describe(load_config(write(text))))
    shown = console.export_text()
    assert "sEcReT" not in shown and "bob" not in shown
    assert "https://hooks.slack.example/…, https://receiver.example.com:8443/…" in shown
    assert "openai tts-1 at https://tts.example.com/…" in shown


def test_an_api_base_url_with_a_query_is_refused_without_showing_it(write: Write) -> None:
    """Paths are appended to a base URL, so a ``?key=`` there can only be a key put in the
    wrong place: refused, naming the line and the fix, never quoting the key."""
    text = GOOD + (
        '\n[speech.tts]\nprovider = "openai"\nbase_url = "https://tts.example.com/v1?key=sEcReT4"\n'
        f'api_key = "{SECRET}"\n'
    )
    path = write(text)
    message = only(error_of(path))
    line = text.splitlines().index('base_url = "https://tts.example.com/v1?key=sEcReT4"') + 1
    assert message.startswith(f"{path}:{line}: speech.tts.base_url: base_url must not carry")
    assert "put the key in api_key" in message and "sEcReT" not in message


def test_check_config_refuses_the_scripted_agent_without_plans(write: Write) -> None:
    """What `serve` refuses, `check-config` reports (they run the same checks)."""
    text = '[sip]\nlisten = [{ transport = "udp", port = 0 }]\n'
    path = write(text)
    load_config(path)  # a config for an agent given in Python needs no plan
    assert only(error_of(path)) == (
        f"{path}: agent.entrypoint: the scripted agent (the default) transfers with a plan, "
        "and there is none; add a [plans.NAME] section, or name your own agent "
        "(module:function)"
    )
    assert check_config(write(text + '\n[agent]\nentrypoint = "json:dumps"\n', "own.toml"))


def test_the_api_token_is_taken_without_surrounding_whitespace(write: Write) -> None:
    """A token from a secret file keeps its newline; nobody sends it, so it is dropped (and
    the length is counted without it)."""
    path = write(GOOD + '\n[http]\ntoken = "${TOKEN}"\n')
    config = check_config(path, environ={"TOKEN": f"  {TOKEN}\n"})
    assert config.http is not None and config.http.token is not None
    assert config.http.token.get_secret_value() == TOKEN
    short = error_of(path, TOKEN=f"{TOKEN[:31]}\n")
    assert "http.token: is 31 characters" in only(short)
