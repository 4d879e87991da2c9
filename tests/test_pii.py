"""PII redaction: what must be caught, what must be left alone, unicode tricks, and the shortcuts that
skip a scan (never where the scan would have found something)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safety.pii import (
    _CARD,
    _PHONE_NATIONAL,
    _redact_secrets,
    _secret_hint,
    iban_valid,
    luhn_valid,
    normalise,
    redact,
)


@pytest.mark.parametrize(
    ("text", "kind", "secret"),
    [
        ("mail me at john.doe+tag@example.co.uk please", "EMAIL", "john.doe+tag@example.co.uk"),
        ("write to jane [at] example [dot] org", "EMAIL", "example"),
        ("call +44 20 7946 0958 now", "PHONE", "7946 0958"),
        ("call +1 (555) 123-4567", "PHONE", "123-4567"),
        ("US: (555) 123-4567.", "PHONE", "123-4567"),
        ("US: 555-123-4567", "PHONE", "555-123-4567"),
        ("US: 555.123.4567", "PHONE", "555.123.4567"),
        ("toll free 1-800-555-1234", "PHONE", "555-1234"),
        ("FR: 06 12 34 56 78", "PHONE", "06 12 34 56 78"),
        ("DE: 0171 1234567", "PHONE", "1234567"),
        ("DE intl: 0049 30 1234567", "PHONE", "1234567"),
        ("UK: 020 7946 0958", "PHONE", "7946 0958"),
        ("card 4111 1111 1111 1111 exp", "CARD", "1111 1111"),
        ("card 4111-1111-1111-1111", "CARD", "4111-1111"),
        ("amex 378282246310005", "CARD", "378282246310005"),
        ("card 4111111111111111 2 times", "CARD", "4111111111111111"),
        ("+44 20 7946 0958 4111 1111 1111 1111 adjacent", "CARD", "4111 1111 1111"),
        ("+44 20 7946 0958 4111 1111 1111 1111 adjacent", "PHONE", "7946 0958"),
        ("iban DE89 3704 0044 0532 0130 00 ok", "IBAN", "3704"),
        ("iban GB82WEST12345698765432", "IBAN", "GB82WEST12345698765432"),
        ("iban fr1420041010050500013m02606", "IBAN", "20041010050500013"),
        ("server 192.168.1.20 is down", "IP", "192.168.1.20"),
        ("v6 2001:db8::8a2e:370:7334 here", "IP", "2001:db8::8a2e:370:7334"),
        ("loopback ::1 and fe80::1%eth0", "IP", "fe80::1"),
        ("key sk-proj-abcdefghijklmnop1234567890", "SECRET", "abcdefghijklmnop"),
        ("aws AKIAIOSFODNN7EXAMPLE", "SECRET", "AKIAIOSFODNN7EXAMPLE"),
        ("gh ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", "SECRET", "ghp_aBcD"),
        ("Authorization: Bearer abc.def-ghi_jkl123", "SECRET", "abc.def-ghi_jkl123"),
        ("url?api_key=9f86d081884c7d659a2feaa0c55ad015&x=1", "SECRET", "9f86d081884c7d659a2f"),
        ('{"token": "dGhpcyBpcyBhIHNlY3JldCB0b2tlbg=="}', "SECRET", "dGhpcyBp"),
        ("password: hunter2hunter", "SECRET", "hunter2"),
        ("my key is fw-chat-Zx9_aB3-kL0pQr7sTu1vWx2y ok", "SECRET", "Zx9_aB3-kL0pQr7"),
        ("admin fw-admin-AbCdEfGhIjKlMnOpQrStUvWx", "SECRET", "AbCdEfGhIjKl"),
    ],
)
def test_redacts(text: str, kind: str, secret: str) -> None:
    result = redact(text)
    assert secret not in result.text, result.text
    assert result.kinds.get(kind, 0) >= 1, (result.text, result.kinds)
    assert f"[{kind}]" in result.text


@pytest.mark.parametrize(
    "text",
    [
        "order 4111 1111 1111 1112 shipped",  # 16 digits failing Luhn: not a card
        "tracking 1234567812345678",  # 16 digits, not Luhn
        "iban DE89370400440532013001",  # bad mod-97 checksum
        "meeting on 2024-01-15 at 12:30:45",
        "date 01.02.2024 and 15/03/2025",
        "version 1.2.3.4.5 and python 3.11.4",
        "it costs 1,000,000 dollars, or 12345 euros",
        "order number 123456789",
        "mac 00:1A:2B:3C:4D:5E",
        "a plain sentence about keys and tokens in general",
        "the token budget is 4096",
        "sha 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    ],
)
def test_leaves_innocent_text(text: str) -> None:
    result = redact(text)
    assert result.kinds == {}, (result.text, result.kinds)
    assert result.text == text


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ", "EMAIL"),  # fullwidth
        ("jo\u200bhn@exa\u200dmple.com", "EMAIL"),  # zero-width chars inside
        ("card ４１１１ １１１１ １１１１ １１１１", "CARD"),  # fullwidth digits
        ("card 4111\u20131111\u20131111\u20131111", "CARD"),  # en dashes
        ("card 4111\u00a01111\u202f1111\u20091111", "CARD"),  # exotic spaces
        ("card 41\u200b11111111111111", "CARD"),
        ("call \u0665\u0665\u0665-\u0661\u0662\u0663-\u0664\u0665\u0666\u0667", "PHONE"),  # Arabic-Indic digits
        ("ip １９２．１６８．０．１", "IP"),
        ("key s\u200bk-abcdefghijklmnopqrstuv", "SECRET"),
    ],
)
def test_unicode_tricks(text: str, kind: str) -> None:
    result = redact(text)
    assert result.kinds.get(kind, 0) >= 1, (result.text, result.kinds)


def test_counts_and_idempotence() -> None:
    text = "a@b.com, c@d.org, 4111 1111 1111 1111, +33 6 12 34 56 78"
    first = redact(text)
    assert first.kinds == {"EMAIL": 2, "CARD": 1, "PHONE": 1}
    second = redact(first.text)
    assert second.text == first.text
    assert second.kinds == {}


def test_checksums() -> None:
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")
    assert iban_valid("DE89370400440532013000")
    assert not iban_valid("DE89370400440532013001")
    assert normalise("a\u200bb\uff10") == "ab0"
    assert redact("").text == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("no digits, no at sign: jane (at) example (dot) org", "no digits, no at sign: [EMAIL]"),
        ("a digit-free IPv6 abcd:ef01::beef here", "a digit-free IPv6 [IP] here"),
        ("fullwidth digits ４１１１ １１１１ １１１１ １１１１ are digits", "fullwidth digits [CARD] are digits"),
        ("one: colon and (brackets) stay as they are", "one: colon and (brackets) stay as they are"),
    ],
)
def test_text_without_the_characters_a_pattern_needs_skips_only_that_pattern(text: str, expected: str) -> None:
    """redact() skips a scan where its pattern cannot match (no '@' or bracket, fewer than two ':', no
    digit after the unicode fold); text that has what a pattern needs is still redacted."""
    assert redact(text).text == expected


# Pieces that make secret patterns match or nearly match, and the unicode letters that (?i) equates with ASCII.
_SECRET_PIECES = [
    "sk-", "Sk-", "AKIA", "ASIA", "ghp_", "github_pat_", "xoxb-", "AIza", "glpat-", "fw-chat-", "fw-admin-",
    "eyJ", ".", "-----BEGIN RSA PRIVATE KEY-----", "-----END RSA PRIVATE KEY-----", "Bearer ", "basıc ",
    "BASİC ", "api_key", "ApiKey", "credentıal", "passwd", "PWD", "auth", "token", "secret", "private-key",
    "=", ": ", '"', "'", " ", "\n", "abcdEFGH1234", "0123456789abcdefghij", "ſecret", "\u212aey", "x",
]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_SECRET_PIECES), max_size=12).map("".join))
def test_secret_hint_is_never_stricter_than_the_secret_patterns(text: str) -> None:
    """redact() skips the secret scans when _secret_hint says none can match: they must then find nothing."""
    text = normalise(text)
    if not _secret_hint(text):
        assert _redact_secrets(text, {}) == text


@pytest.mark.parametrize(
    "text",
    [
        "-----BEGIN EC PRIVATE KEY-----\nMHcC\n-----END EC PRIVATE KEY-----",
        "eyJhbGciOiJIUzI1.eyJzdWIiOiIx.SflKxwRJSMeKKF2QT4",
        "sk-abcdefghijklmnop1234",
        "rk_live_abcdefghijklmnop1234",
        "AKIAIOSFODNN7EXAMPLE",
        "ghs_abcdefghijklmnopqrstuvwxyz0123456789",
        "github_pat_abcdefghijklmnopqrstuvwxyz0123456789",
        "xoxp-1234567890-abc",
        "AIzaSyA1234567890abcdefghijklmnopqrstuv",
        "glpat-abcdefghijklmnopqrstu",
        "fw-admin-abcdefghijklmnop12",
        "BEARER abcdefgh123",
        "basıc dXNlcjpwYXNz",  # dotless i: (?i) still reads "basic"
        "BASİC dXNlcjpwYXNz",
        "credentİal=abcd1234",
        "ſecret: abcd1234",  # long s: NFKC makes it "s"
        "API_\u212aEY=abcd1234",  # Kelvin sign: NFKC makes it "K"
        "PassWord = 'hunter22'",
        "x_pwd=abcd1234",
        "Auth: abcd1234",
        "my_token_value: abcd1234",
    ],
)
def test_secret_hint_sees_every_secret_pattern(text: str) -> None:
    text = normalise(text)
    assert _redact_secrets(text, {}) != text  # the sample is a secret the scans catch ...
    assert _secret_hint(text)  # ... so the hint must let them run


@pytest.mark.parametrize(
    "text", ["Say hello to the benchmark.", "The weather in Paris is mild in May.", "how do I sort a list?"]
)
def test_plain_chat_text_skips_the_secret_scans(text: str) -> None:
    assert not _secret_hint(text)


# The plain forms of the patterns that pii.py writes with the look-behind after their first character.
_PLAIN_FORMS = [
    (re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,60}(?![\w])"), _CARD),
    (re.compile(r"(?<![\w.+-])0\d{1,4}(?:[\s./-]?\d{2,4}){1,5}(?![\w])"), _PHONE_NATIONAL),
]


_NUMBERISH = st.lists(
    st.sampled_from(["0", "4111", "0171", "12", "123", "1234567", "4111111111111111", " ", "-", ".", "/", "+",
                     "_", "a", "\n"]),
    max_size=14,
).map("".join)  # fmt: skip


@settings(max_examples=800, deadline=None)
@given(_NUMBERISH)
def test_look_behind_after_the_first_character_matches_the_same_spans(text: str) -> None:
    for plain, fast in _PLAIN_FORMS:
        assert [m.span() for m in fast.finditer(text)] == [m.span() for m in plain.finditer(text)]
