"""Digest authentication, sans-IO: published test vectors, round trips, hostile input."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warmtransfer.sip.digest import (
    ALGORITHMS,
    Authorization,
    Challenge,
    Credentials,
    DigestError,
    DigestUnsupported,
    DigestVerifier,
    NonceCounts,
    Verdict,
    authorize,
    choose,
    parse_authorization,
    parse_challenge,
)

# RFC 7616 §3.9.1: the same request answered with MD5 and with SHA-256.
RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
MUFASA = Credentials("Mufasa", "Circle of Life")


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_example(algorithm: str, expected: str) -> None:
    header = (
        'Digest realm="http-auth@example.org", qop="auth, auth-int", '
        f'algorithm={algorithm}, nonce="{RFC7616_NONCE}", opaque="{RFC7616_OPAQUE}"'
    )
    challenge = parse_challenge(header)
    assert challenge == Challenge(
        "http-auth@example.org",
        RFC7616_NONCE,
        opaque=RFC7616_OPAQUE,
        algorithm=algorithm,
        qop=("auth", "auth-int"),
    )
    answer = authorize(challenge, MUFASA, "GET", "/dir/index.html", cnonce=RFC7616_CNONCE)
    assert answer.response == expected
    assert (answer.nc, answer.qop, answer.opaque) == ("00000001", "auth", RFC7616_OPAQUE)
    assert parse_authorization(str(answer)) == answer  # what we send reads back the same


def test_rfc2617_example_and_its_authorization_header() -> None:
    header = (
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    challenge = parse_challenge(header)
    assert challenge.algorithm == "MD5"  # the default when absent
    answer = authorize(
        challenge,
        Credentials("Mufasa", "Circle Of Life"),
        "GET",
        "/dir/index.html",
        cnonce="0a4f113b",
    )
    assert answer.response == "6629fae49393a05397450978507c4ef1"
    # The RFC's own Authorization header parses to the same values.
    rfc_header = (
        'Digest username="Mufasa", realm="testrealm@host.com", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, '
        'nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", '
        'opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    assert parse_authorization(rfc_header) == answer


def test_rfc2069_style_without_qop_has_no_nc_or_cnonce() -> None:
    # RFC 2069 response = H(HA1:nonce:HA2); the RFC 2617 §3.5 inputs, computed by hand.
    import hashlib

    def md5(text: str) -> str:
        return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()

    challenge = parse_challenge('Digest realm="r", nonce="n1"')
    answer = authorize(challenge, Credentials("u", "p"), "INVITE", "sip:bob@example.com")
    ha1, ha2 = md5("u:r:p"), md5("INVITE:sip:bob@example.com")
    assert answer.response == md5(f"{ha1}:n1:{ha2}")
    assert answer.nc is None and answer.cnonce is None and answer.qop is None
    assert "nc=" not in str(answer) and "qop" not in str(answer)


def test_sess_algorithms_hash_the_nonce_and_cnonce_into_ha1() -> None:
    import hashlib

    def sha(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    challenge = Challenge("r", "n", algorithm="SHA-256-sess", qop=("auth",))
    answer = authorize(challenge, Credentials("u", "p"), "REGISTER", "sip:r", cnonce="c")
    ha1 = sha(f"{sha('u:r:p')}:n:c")
    expected = sha(f"{ha1}:n:00000001:c:auth:{sha('REGISTER:sip:r')}")
    assert answer.response == expected


def test_nc_counts_per_nonce() -> None:
    counts = NonceCounts()
    first = Challenge("r", "nonce-a", qop=("auth",))
    second = Challenge("r", "nonce-b", qop=("auth",))
    ncs = [
        authorize(c, MUFASA, "INVITE", "sip:x", counts=counts).nc
        for c in (first, first, second, first)
    ]
    assert ncs == ["00000001", "00000002", "00000001", "00000003"]


def test_choose_prefers_sha256_and_skips_what_it_cannot_answer() -> None:
    values = [
        'Digest realm="r", nonce="n", algorithm=MD5, qop="auth"',
        'Digest realm="r", nonce="n", algorithm=SHA-512-256, qop="auth"',
        'Digest realm="r", nonce="n", algorithm=SHA-256, qop="auth"',
        'Basic realm="r"',
    ]
    assert choose(values).algorithm == "SHA-256"
    assert choose(values[:1]).algorithm == "MD5"


def test_unanswerable_challenges_are_refused_clearly() -> None:
    with pytest.raises(DigestUnsupported, match="auth-int"):
        choose(['Digest realm="r", nonce="n", qop="auth-int"'])
    with pytest.raises(DigestUnsupported, match="SHA-512-256"):
        choose(['Digest realm="r", nonce="n", algorithm=SHA-512-256'])
    with pytest.raises(DigestUnsupported, match="Basic"):
        choose(['Basic realm="r"'])
    with pytest.raises(DigestUnsupported, match="no challenge header"):
        choose([])
    # Credentials pinned to a realm are never offered to another one.
    with pytest.raises(DigestUnsupported, match="realm 'evil'"):
        choose(['Digest realm="evil", nonce="n"'], Credentials("u", "p", realm="carrier"))


def test_stale_and_quoted_escapes_are_read() -> None:
    challenge = parse_challenge(
        'digest realm="a \\"quoted\\" realm", nonce="n", stale=TRUE, algorithm=md5-sess'
    )
    assert challenge.realm == 'a "quoted" realm'
    assert challenge.stale and challenge.algorithm == "MD5-sess"
    assert parse_challenge(str(challenge)) == challenge


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Digest",
        'Digest realm="r"',  # no nonce
        'Digest nonce="n"',  # no realm
        'Digest realm="r, nonce="n"',  # unclosed quote
        'Digest realm="r" nonce="n"',  # no comma
        'Digest realm="r", realm="s", nonce="n"',  # duplicate
        'Digest realm=, nonce="n"',
        'Digest realm="r", nonce="n\\',
        'Digest realm="r\x01", nonce="n"',
        "Digest =x",
        'Digest realm="r", nonce="n", ' + "x" * 5000,
    ],
)
def test_malformed_challenges_raise_digest_error(text: str) -> None:
    with pytest.raises(DigestError):
        parse_challenge(text)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_a_challenge_or_a_digest_error(text: str) -> None:
    for candidate in (text, "Digest " + text):
        with contextlib.suppress(DigestError):
            parse_challenge(candidate)
        with contextlib.suppress(DigestError):
            parse_authorization(candidate)


_PRINTABLE = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f"),
    min_size=1,
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(
    username=_PRINTABLE,
    password=st.text(max_size=40).filter(lambda p: not set(p) & set("\r\n\x00")),
    realm=_PRINTABLE,
    algorithm=st.sampled_from(["SHA-256", "MD5"]),
    method=st.sampled_from(["INVITE", "REGISTER", "BYE"]),
    user_part=st.from_regex(r"[a-z0-9+]{1,12}", fullmatch=True),
)
def test_what_we_challenge_and_answer_verifies(
    username: str, password: str, realm: str, algorithm: str, method: str, user_part: str
) -> None:
    now = 1_700_000_000.0
    verifier = DigestVerifier(realm, [Credentials(username, password)])
    offered = [str(c) for c in verifier.challenges(now)]
    challenge = choose(offered)
    assert challenge.algorithm == "SHA-256"
    challenge = next(parse_challenge(v) for v in offered if algorithm in v.split("algorithm=")[1])
    uri = f"sip:{user_part}@example.com"
    answer = authorize(challenge, Credentials(username, password), method, uri)
    wire = parse_authorization(str(answer))  # through its text form, as it travels
    assert verifier.verify(wire, method, now + 1) is Verdict.OK
    assert verifier.verify(wire, method, now + 2) is Verdict.INVALID  # the same answer again
    wrong = authorize(challenge, Credentials(username, password + "x"), method, uri)
    assert verifier.verify(wrong, method, now) is Verdict.INVALID
    other_method = authorize(challenge, Credentials(username, password), "OPTIONS", uri)
    assert verifier.verify(other_method, method, now) is Verdict.INVALID


def test_nonces_expire_to_stale_and_forgeries_are_invalid() -> None:
    verifier = DigestVerifier("r", [Credentials("u", "p")], lifetime=300)
    (challenge,) = verifier.challenges(1000.0)[:1]
    answer = authorize(challenge, Credentials("u", "p"), "INVITE", "sip:x")
    assert verifier.verify(answer, "INVITE", 1301.0) is Verdict.STALE  # right password, old nonce
    assert verifier.nonce_state(challenge.nonce, 1299.0) is Verdict.OK
    # Another process (another secret) issued it, or someone edited the timestamp: invalid.
    other = DigestVerifier("r", [Credentials("u", "p")])
    assert other.nonce_state(challenge.nonce, 1000.0) is Verdict.INVALID
    stamp, salt, mac = challenge.nonce.split(".")
    forged = f"{int(stamp, 16) + 200:x}.{salt}.{mac}"
    assert verifier.nonce_state(forged, 1300.0) is Verdict.INVALID
    assert verifier.nonce_state("garbage", 1000.0) is Verdict.INVALID


def test_verifier_refuses_downgrades_and_unknown_users() -> None:
    verifier = DigestVerifier("r", [Credentials("u", "p")], algorithms=("SHA-256",))
    nonce = verifier.nonce(1000.0)
    md5 = authorize(
        Challenge("r", nonce, algorithm="MD5", qop=("auth",)),
        Credentials("u", "p"),
        "INVITE",
        "sip:x",
    )
    assert verifier.verify(md5, "INVITE", 1000.0) is Verdict.INVALID  # MD5 was not offered
    no_qop = authorize(
        Challenge("r", nonce, algorithm="SHA-256"), Credentials("u", "p"), "INVITE", "sip:x"
    )
    assert verifier.verify(no_qop, "INVITE", 1000.0) is Verdict.INVALID  # RFC 2069 downgrade
    stranger = authorize(
        Challenge("r", nonce, algorithm="SHA-256", qop=("auth",)),
        Credentials("x", "p"),
        "INVITE",
        "sip:x",
    )
    assert verifier.verify(stranger, "INVITE", 1000.0) is Verdict.INVALID


def test_replay_memory_is_bounded() -> None:
    verifier = DigestVerifier("r", [Credentials("u", "p")], replay_limit=8)
    challenge = verifier.challenges(1000.0)[0]
    counts = NonceCounts()
    for _ in range(50):
        answer = authorize(challenge, Credentials("u", "p"), "INVITE", "sip:x", counts=counts)
        assert verifier.verify(answer, "INVITE", 1000.0) is Verdict.OK
    assert len(verifier._seen) == 8


def test_credentials_refuse_line_breaks() -> None:
    with pytest.raises(ValueError, match="CR, LF"):
        Credentials("u\r\nX-Evil: 1", "p")
    assert "p4ss" not in repr(Credentials("u", "p4ss"))


def test_authorization_header_escapes_quotes() -> None:
    answer = Authorization('a"b\\c', "r", "n", "sip:x", "00", algorithm="MD5")
    assert parse_authorization(str(answer)).username == 'a"b\\c'
    assert ALGORITHMS[0] == "SHA-256-sess"
