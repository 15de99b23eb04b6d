"""The config loader's parts: key lines from the TOML text, and glob inclusion for allow-lists."""

from __future__ import annotations

import fnmatch

import pytest

from warmtransfer.config.globs import covers
from warmtransfer.config.positions import key_lines, line_of

DOCUMENT = """\
# a comment with [brackets] and "quotes"
top = 1
[sip]
listen = [
  { transport = "udp", port = 5060 },  # trailing comment
  {transport="tls", port = 5061},
]
"quoted.key".inner = '''multi
line ] literal'''
after = "x"

[[plans.a.targets]]
uri = "sip:a@x"
[[plans.a.targets]]
uri = "sip:b@x"  # ]
[plans.a.hunting]
mode = "sequential"
[[x]]
[[x.y]]
z = 1
[[x]]
[[x.y]]
z = 2
"""


def test_key_lines_follow_tables_arrays_and_strings() -> None:
    lines = key_lines(DOCUMENT)
    assert lines[("top",)] == 2
    assert lines[("sip", "listen", 0, "transport")] == 5
    assert lines[("sip", "listen", 1, "port")] == 6
    assert lines[("sip", "quoted.key", "inner")] == 8
    assert lines[("sip", "after")] == 10
    assert lines[("plans", "a", "targets", 0, "uri")] == 13
    assert lines[("plans", "a", "targets", 1, "uri")] == 15
    assert lines[("plans", "a", "hunting", "mode")] == 17
    assert lines[("x", 0, "y", 0, "z")] == 20
    assert lines[("x", 1, "y", 0, "z")] == 23


def test_a_missing_key_is_placed_at_its_table() -> None:
    lines = key_lines(DOCUMENT)
    assert line_of(lines, ("plans", "a", "hunting", "rounds")) == 16
    assert line_of(lines, ("nowhere",)) is None


@pytest.mark.parametrize(
    ("outer", "inner", "inside"),
    [
        ("sip:*@pbx.example.com", "sip:*@pbx.example.com", True),
        ("sip:*@pbx.example.com", "sip:sales-*@pbx.example.com", True),
        ("sip:*@pbx.example.com", "sip:alice@pbx.example.com", True),
        ("tel:+1555*", "tel:+15550[0-9]*", True),
        ("sip:1???@pbx", "sip:1[0-9]??@pbx", True),
        ("sip:*@pbx.example.com", "sip:*", False),
        ("sip:*@pbx.example.com", "sip:*@pbx.example.com.evil.net", False),
        ("sip:a?c@x", "sip:a*c@x", False),  # a string match of the pattern is not enough
        ("tel:+1555*", "tel:+1*", False),
        ("sip:[ab]@x", "sip:[abc]@x", False),
    ],
)
def test_covers(outer: str, inner: str, inside: bool) -> None:
    assert covers(outer, inner) is inside


@pytest.mark.parametrize(
    "uri", ["sip:a*c@x", "sip:abbc@x", "tel:+15550123", "sip:1234@pbx", "sip:zz@x", "sip:*"]
)
def test_covers_is_sound_on_samples(uri: str) -> None:
    """Whenever `covers` says yes, every sample the inner pattern matches, the outer does."""
    patterns = ["sip:a?c@x", "sip:a*c@x", "tel:+1555*", "sip:1???@pbx", "sip:*", "*"]
    for outer in patterns:
        for inner in patterns:
            if covers(outer, inner) and fnmatch.fnmatchcase(uri, inner):
                assert fnmatch.fnmatchcase(uri, outer), (outer, inner, uri)
