"""SIP/tel URIs and name-addr values: parsing, serialising, and refusing what RFC 3261 refuses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmtransfer.sip.uri import NameAddr, SipUri, SipUriError

# ---------------------------------------------------------------------------------------------
# SipUri


def test_parse_user_host_port_params() -> None:
    uri = SipUri.parse("sip:alice@127.0.0.1:5070;transport=udp")
    assert uri == SipUri("sip", "alice", "127.0.0.1", 5070, (("transport", "udp"),))
    assert str(uri) == "sip:alice@127.0.0.1:5070;transport=udp"
    assert uri.host_port() == ("127.0.0.1", 5070)


def test_host_is_lower_cased_user_and_scheme_case() -> None:
    uri = SipUri.parse("SIP:Alice@Example.COM")
    assert (uri.scheme, uri.user, uri.host) == ("sip", "Alice", "example.com")


def test_no_user_and_default_port() -> None:
    uri = SipUri.parse("sip:proxy.example.com;lr")
    assert uri.user is None
    assert uri.port is None
    assert uri.host_port() == ("proxy.example.com", 5060)
    assert uri.host_port(default_port=5061) == ("proxy.example.com", 5061)
    assert str(uri) == "sip:proxy.example.com;lr"


def test_ipv6_host_keeps_brackets_and_host_port_strips_them() -> None:
    uri = SipUri.parse("sips:bob@[2001:DB8::1]:5061;transport=tls")
    assert uri.scheme == "sips"
    assert uri.host == "[2001:db8::1]"
    assert uri.port == 5061
    assert uri.host_port() == ("2001:db8::1", 5061)
    assert str(uri) == "sips:bob@[2001:db8::1]:5061;transport=tls"
    assert SipUri.parse("sip:[::1]").host_port() == ("::1", 5060)


def test_params_flags_and_case_insensitive_lookup() -> None:
    uri = SipUri.parse("sip:h;Transport=TCP;lr;maddr=10.0.0.1")
    assert uri.params == (("Transport", "TCP"), ("lr", None), ("maddr", "10.0.0.1"))
    assert uri.param("transport") == "TCP"
    assert uri.param("lr") is None
    assert uri.has_param("LR")
    assert not uri.has_param("ttl")
    assert uri.param("ttl") is None


def test_with_params_replaces_in_place_and_appends() -> None:
    uri = SipUri.parse("sip:a@h;transport=udp;x=1")
    changed = uri.with_params(transport="tcp", lr=None)
    assert changed.params == (("transport", "tcp"), ("x", "1"), ("lr", None))
    assert str(changed) == "sip:a@h;transport=tcp;x=1;lr"
    assert uri.params == (("transport", "udp"), ("x", "1"))  # frozen: original untouched


def test_with_params_refuses_injection() -> None:
    uri = SipUri.parse("sip:a@h")
    with pytest.raises(SipUriError):
        uri.with_params(transport="udp\r\nX-Evil: 1")
    with pytest.raises(SipUriError):
        uri.with_params(x="a;b")


def test_tel_uri() -> None:
    uri = SipUri.parse("tel:+1-555-123-4567;phone-context=example.com")
    assert uri.scheme == "tel"
    assert uri.user == "+1-555-123-4567"
    assert uri.host == ""
    assert uri.param("phone-context") == "example.com"
    assert str(uri) == "tel:+1-555-123-4567;phone-context=example.com"
    assert SipUri.parse("tel:+15551234567").user == "+15551234567"


def test_percent_escapes_are_kept_as_given() -> None:
    uri = SipUri.parse("sip:sips%3Auser%40example.com@example.net")
    assert uri.user == "sips%3Auser%40example.com"
    assert uri.host == "example.net"
    assert str(SipUri.parse("sip:%75se%72@example.com")) == "sip:%75se%72@example.com"


def test_user_part_may_hold_semicolons_and_password() -> None:
    uri = SipUri.parse("sip:user;par=u%40example.net@example.com")
    assert uri.user == "user;par=u%40example.net"
    assert uri.host == "example.com"
    assert SipUri.parse("sip:alice:secret@h").user == "alice:secret"


def test_uri_headers_kept_for_replaces() -> None:
    text = "sip:bob@h?Replaces=abc%40h%3Bto-tag%3D1%3Bfrom-tag%3D2&Subject=x"
    uri = SipUri.parse(text)
    assert uri.headers == (("Replaces", "abc%40h%3Bto-tag%3D1%3Bfrom-tag%3D2"), ("Subject", "x"))
    assert str(uri) == text


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "scheme"),
        ("alice@example.com", "scheme"),
        ("http://example.com", "unsupported URI scheme"),
        ("<sip:a@h>", "not allowed"),
        ("sip:", "no host"),
        ("sip:@host", "empty user"),
        ("sip:a@", "no host"),
        ("sip:a b@h", "' ' is not allowed"),
        ("sip:a@h\r\nX-Evil: 1", "'\\r' is not allowed"),
        ("sip:a\x00@h", "'\\x00' is not allowed"),
        ('sip:"a"@h', "not allowed"),
        ("sip:a@h:", "port"),
        ("sip:a@h:99999", "above 65535"),
        ("sip:a@h:5o60", "port"),
        ("sip:a@[::1", "closing"),
        ("sip:a@[zz::1]", "IPv6"),
        ("sip:a@::1", "brackets"),
        ("sip:a@h;;lr", "empty URI parameter"),
        ("sip:a@h?Subject", "name=value"),
        ("sip:a@h/path", "host name"),
        ("tel:", "telephone number"),
        ("tel:abc xyz", "not allowed"),
        ("tel:+1 555", "not allowed"),
        ("tel:555?x=1", "telephone number"),
    ],
)
def test_bad_uris_raise_sip_uri_error_naming_text(text: str, problem: str) -> None:
    with pytest.raises(SipUriError) as caught:
        SipUri.parse(text)
    assert problem in str(caught.value)
    if text:
        assert repr(text)[1:10] in str(caught.value)


def test_sip_uri_error_is_a_value_error() -> None:
    assert issubclass(SipUriError, ValueError)


def test_direct_construction_refuses_crlf_and_bad_scheme() -> None:
    with pytest.raises(SipUriError):
        SipUri("sip", "a\r\nb", "h")
    with pytest.raises(SipUriError):
        SipUri("http", None, "h")


@given(st.text(max_size=60))
def test_uri_parse_never_raises_anything_else(text: str) -> None:
    try:
        uri = SipUri.parse(text)
    except SipUriError:
        return
    assert SipUri.parse(str(uri)) == uri


# ---------------------------------------------------------------------------------------------
# NameAddr


def test_quoted_display_name_with_escaped_quotes() -> None:
    value = NameAddr.parse('"J Rosenberg \\\\\\""       <sip:jdrosen@example.com> ; tag = 98asjd8')
    assert value.display_name == 'J Rosenberg \\"'
    assert value.uri == SipUri("sip", "jdrosen", "example.com")
    assert value.tag == "98asjd8"
    assert str(value) == '"J Rosenberg \\\\\\"" <sip:jdrosen@example.com>;tag=98asjd8'
    assert NameAddr.parse(str(value)) == value


def test_display_name_of_only_escaped_quotes() -> None:
    value = NameAddr.parse(
        '"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam =\tnewvalue'
    )
    assert value.display_name == 'Quoted string ""'
    assert value.param("newparam") == "newvalue"


def test_angle_only() -> None:
    value = NameAddr.parse("<sip:a@h>")
    assert value == NameAddr(SipUri("sip", "a", "h"))
    assert value.tag is None
    assert str(value) == "<sip:a@h>"


def test_params_after_bare_uri_belong_to_the_header() -> None:
    value = NameAddr.parse("sip:a@h;tag=1")
    assert value.uri.params == ()
    assert value.tag == "1"
    assert str(value) == "<sip:a@h>;tag=1"


def test_uri_params_inside_angles_header_params_outside() -> None:
    value = NameAddr.parse("<sip:a@h;transport=tcp>;tag=x;expires=60")
    assert value.uri.param("transport") == "tcp"
    assert value.tag == "x"
    assert value.param("EXPIRES") == "60"


def test_token_display_names_and_no_space_before_angle() -> None:
    assert NameAddr.parse("Alice Smith <sip:a@h>").display_name == "Alice Smith"
    lwsdisp = NameAddr.parse("caller<sip:caller@example.com>;tag=323")
    assert lwsdisp.display_name == "caller"
    assert lwsdisp.tag == "323"
    assert str(lwsdisp) == '"caller" <sip:caller@example.com>;tag=323'


def test_quoted_param_values_may_hold_separators() -> None:
    value = NameAddr.parse('<sip:a@h>;+sip.instance="<urn:uuid:1;2>";expires=60')
    assert value.param("+sip.instance") == '"<urn:uuid:1;2>"'
    assert value.param("expires") == "60"
    assert NameAddr.parse(str(value)) == value


def test_with_tag_adds_or_replaces() -> None:
    value = NameAddr.parse('"Bob" <sip:bob@h>;x=1')
    tagged = value.with_tag("abc")
    assert tagged.tag == "abc"
    assert tagged.params == (("x", "1"), ("tag", "abc"))
    assert tagged.with_tag("def").params == (("x", "1"), ("tag", "def"))
    with pytest.raises(SipUriError):
        value.with_tag("a b")


def test_display_name_quoting_escapes_quotes_backslashes_and_controls() -> None:
    value = NameAddr(SipUri("sip", "a", "h"), 'He said "hi" \\ \x07')
    text = str(value)
    assert text == '"He said \\"hi\\" \\\\ \\\x07" <sip:a@h>'
    assert NameAddr.parse(text) == value


def test_display_name_may_hold_commas_and_angles_when_quoted() -> None:
    value = NameAddr.parse('"Smith, John <boss>" <sip:j@h>')
    assert value.display_name == "Smith, John <boss>"


def test_tel_name_addr() -> None:
    value = NameAddr.parse("<tel:+15551234567>;tag=9")
    assert value.uri.user == "+15551234567"
    assert value.tag == "9"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ('"Mr. J. User <sip:j.user@example.com>', "never closed"),  # RFC 4475 quotbal
        ("Bell, Alexander <sip:a.g.bell@example.com>;tag=43", "tokens"),  # RFC 4475 baddn
        ('"Watson, Thomas" < sip:t.watson@example.org >', "not allowed"),  # RFC 4475 badaspec
        ("sip:user@example.com?Route=%3Csip:sip.example.com%3E", "enclosed in <>"),  # regbadct
        ('"Joe" <sip:joe@example.org>;;;;', "empty parameter"),  # RFC 4475 badinv01
        ("<sip:a@h", "closing '>'"),
        ("<sip:a@h> junk", "start with ';'"),
        ('"Joe" sip:joe@h', "followed by <URI>"),
        ("<sip:a@h>;tag=", "empty or invalid value"),
        ("<sip:a@h>;ta g=1", "not a token"),
        ('<sip:a@h>;x="open', "never closed"),
        ("*", "scheme"),
        ("sip:a@h\x00;tag=1", "not allowed"),
    ],
)
def test_bad_name_addrs(text: str, problem: str) -> None:
    with pytest.raises(SipUriError) as caught:
        NameAddr.parse(text)
    assert problem in str(caught.value)


def test_crlf_in_display_name_refused() -> None:
    with pytest.raises(SipUriError):
        NameAddr(SipUri("sip", "a", "h"), "x\r\nVia: evil")


@given(st.text(max_size=80))
def test_name_addr_parse_never_raises_anything_else(text: str) -> None:
    try:
        value = NameAddr.parse(text)
    except SipUriError:
        return
    assert NameAddr.parse(str(value)) == value
