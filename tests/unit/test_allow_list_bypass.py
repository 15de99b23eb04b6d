"""The allow-list judges where a URI really leads, as the SIP stack parses it, not the text.

Matched as text, ``sip:900@evil.example;x=@pbx.example.com`` fits ``sip:*@pbx.example.com``
while the INVITE goes to evil.example (found in review, confirmed against a running engine).
Every such form is refused: by the allow-list, by `Target` itself (naming the field), and by
the HTTP API, which dials nothing."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from tests.unit.test_http_api import AUTH, BRIEFING, SALES, TOKEN, MemoryService
from warmtransfer.server.http import HttpApi
from warmtransfer.server.metrics import Metrics
from warmtransfer.transfer.target import AllowList, Target, destination

ALLOW = AllowList(patterns=("sip:*@pbx.example.com", "tel:+1415555*"))

SMUGGLED = [
    "sip:900@203.0.113.9:5060;x=@pbx.example.com",  # a parameter's value holds the allowed host
    "sip:900@203.0.113.9?x=@pbx.example.com",  # a URI header's value does
    "sip:900@203.0.113.9;maddr=pbx.example.com",
    "sip:alice@pbx.example.com;maddr=203.0.113.9",  # the allowed host, sent elsewhere
    "sip:alice@pbx.example.com?Route=%3Csip:203.0.113.9%3E",  # a header added to the INVITE
    "sip:a@203.0.113.9@pbx.example.com",
    "tel:+14155550100;phone-context=+44",
]


@pytest.mark.parametrize("uri", SMUGGLED)
def test_a_uri_that_leads_elsewhere_is_never_allowed_nor_a_target(uri: str) -> None:
    assert not ALLOW.allows(uri)
    with pytest.raises(ValidationError, match=r"uri\n.*(not allowed|not a valid|number only)"):
        Target(uri=uri)


def test_patterns_match_the_parsed_destination() -> None:
    assert destination("tel:+1-415-555-0100") == "tel:+14155550100"  # separators are not digits
    assert ALLOW.allows("tel:+1-415-555-0100")
    assert ALLOW.allows("sip:alice@pbx.example.com")
    assert not ALLOW.allows("sip:alice@pbx.example.com.evil.example")
    assert destination("sips:alice@pbx.example.com:5061;transport=tls") == (
        "sips:alice@pbx.example.com:5061;transport=tls"
    )
    assert not ALLOW.allows("not a uri")


@pytest.mark.parametrize("uri", SMUGGLED[:3])
async def test_the_http_api_dials_nothing_for_a_smuggled_destination(uri: str) -> None:
    service = MemoryService()
    api = await HttpApi(
        service,
        token=TOKEN,
        plans={"sales": SALES},
        allow=AllowList(patterns=("sip:*@pbx.example.com",)),
        port=0,
        metrics=Metrics(),
    ).start()
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=10, headers=AUTH) as client:
            response = await client.post(
                "/v1/calls/c1/transfers",
                json={"plan": {"targets": [{"uri": uri}]}, "briefing": BRIEFING},
            )
    finally:
        await api.stop()
    assert response.status_code in (400, 403), response.text
    assert "not allowed" in response.text
    assert service.started == []
