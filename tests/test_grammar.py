"""The scenario grammars (harness/grammar.py): each accepts what its RFC allows and refuses
the rest with the first thing wrong and its offset."""

from __future__ import annotations

import pytest

from harness.errors import HarnessError
from harness.grammar import RULES, Grammar, documentation_address, problem, require, shown

G = Grammar
GOOD = [
    (G.DOMAIN, "mail.receiver.com"),
    (G.DOMAIN, "a-b.c0.example"),
    (G.DOMAIN, "3com.com"),  # RFC 1123 §2.1: a label may start with a digit
    (G.DOMAIN, "localhost"),
    (G.DOMAIN, ".".join(["a" * 63] * 3) + "." + "b" * 61),  # 253 octets
    (G.DNS_NAME, "receiver.com."),
    (G.DNS_NAME, "_25._tcp.mail.receiver.com"),
    (G.DNS_NAME, "10.2.0.192.in-addr.arpa"),
    (G.LOCAL_PART, "c3po"),
    (G.LOCAL_PART, "first.last"),
    (G.LOCAL_PART, "${run{/bin/id}}"),  # all atext: the adapters quote it, not the grammar
    (G.LOCAL_PART, "!#$%&'*+-/=?^_`{|}~"),
    (G.LOCAL_PART, "x" * 64),
    (G.MAILBOX, "c3po@receiver.com"),
    (G.REVERSE_PATH, ""),
    (G.REVERSE_PATH, "luke@sender.com"),
    (G.HELO, "mail.sender.com"),
    (G.HELO, "[192.0.2.10]"),
    (G.HELO, "[IPv6:2001:db8::10]"),
    (G.HELO, "[ipv6:2001:db8::10]"),  # ABNF strings are case-insensitive
    (G.HOST_NAME, "sender"),
    (G.HOST_NAME, "mx-2"),
    (G.HOST_NAME, "a" * 15),
    (G.EHLO_LINE, "PIPELINING"),
    (G.EHLO_LINE, "SIZE 10240000"),
    (G.EHLO_LINE, "AUTH PLAIN LOGIN"),
    (G.DNS_QUESTION, "receiver.com MX"),
    (G.DNS_QUESTION, "10.2.0.192.in-addr.arpa ptr"),
    (G.REPLY_TEXT, "mail.receiver.com ESMTP ok: 100% <fine>"),
    (G.REPLY_TEXT, ""),
    (G.COMMAND_LINE, "mail FROM:<luke@sender.com>"),
    (G.COMMAND_LINE, "NOOP " + "x" * 600),  # overlong lines are probes
    (G.PROSE, "Grüße, Luke — 日本"),
    (G.SCENARIO_NAME, "smuggle-lf-dot-lf"),
    (G.SCENARIO_NAME, "v1.2_x"),
    (G.STATUS, "5"),
    (G.STATUS, "4.4"),
    (G.STATUS, "5.1.1"),
    (G.STATUS, "5.1.10"),
    (G.STATUS, "5.123.999"),
    (G.STATUS, "2.0.0"),  # RFC 3463 class 2; only the DSN expectations refuse it
    (G.ADDRESS, "192.0.2.25"),
    (G.ADDRESS, "198.51.100.1"),
    (G.ADDRESS, "203.0.113.254"),
    (G.ADDRESS, "2001:db8:ffff::1"),
]
BAD = [
    (G.DOMAIN, "mail.receiver.com\nx", "control character U+000A at offset 17"),
    (G.DOMAIN, "mail.receiver.com.", "a trailing dot"),
    (G.DOMAIN, "mail..receiver.com", "empty label at offset 5"),
    (G.DOMAIN, "-mail.receiver.com", "starts or ends with a hyphen"),
    (G.DOMAIN, "mail_x.receiver.com", "'_' at offset 4 is not a letter, digit or hyphen"),
    (G.DOMAIN, "x" * 64 + ".com", "label at offset 0 is 64 octets; at most 63"),
    (G.DOMAIN, ".".join(["a" * 63] * 4), "255 octets; at most 253"),
    (G.DOMAIN, "192.0.2.10", "the last label is all digits"),
    (G.DOMAIN, "mail.receiver.com')esyscmd(`x')", '"\'" at offset 17 is not a letter'),
    (G.DOMAIN, "bücher.example", "U+00FC at offset 1 is not printable ASCII"),
    (G.DNS_NAME, "receiver com", "' ' at offset 8 is not a letter, digit or hyphen"),
    (G.DNS_NAME, ".", "empty label at offset 0"),
    (G.LOCAL_PART, "c3\npo", "control character U+000A at offset 2"),
    (G.LOCAL_PART, "esyscmd(COMMAND)", "'(' at offset 7 is not atext"),
    (G.LOCAL_PART, '"quoted"', "a quoted string"),
    (G.LOCAL_PART, "a..b", "empty atom at offset 2"),
    (G.LOCAL_PART, ".a", "empty atom at offset 0"),
    (G.LOCAL_PART, "x" * 65, "65 octets; at most 64"),
    (G.LOCAL_PART, "a b", "' ' at offset 1 is not atext"),
    (G.MAILBOX, "c3po", "no @"),
    (G.MAILBOX, "@receiver.com", "an empty local part"),
    (G.MAILBOX, "c3po@[192.0.2.25]", "an address literal"),
    (G.MAILBOX, "c3po@receiver..com", "empty label at offset 14"),
    (G.MAILBOX, "c(3po@receiver.com", "'(' at offset 1 is not atext"),
    (G.REVERSE_PATH, "luke@sender.com\r\n", "control character U+000D at offset 15"),
    (G.HELO, "[8.8.8.8]", "8.8.8.8 is outside the documentation networks"),
    (G.HELO, "[IPv6:2001:4860::8888]", "is outside the documentation networks"),
    (G.HELO, "[192.0.2.10", "without its closing ]"),
    (G.HELO, "[mail.sender.com]", "not an address literal"),
    (G.HELO, "${run{x}}", "'$' at offset 0 is not a letter, digit or hyphen"),
    (G.HOST_NAME, "Bad", "not [a-z]"),
    (G.HOST_NAME, "a-", "not [a-z]"),
    (G.HOST_NAME, "lan", "reserved"),
    (G.HOST_NAME, "a" * 16, "16 octets; at most 15"),
    (G.HOST_NAME, "a/b", "not [a-z]"),
    (G.EHLO_LINE, "-X", "the keyword '-X'"),
    (G.EHLO_LINE, "AUTH=LOGIN", "the keyword 'AUTH=LOGIN'"),  # §4.1.1.1: no "=" in a keyword
    (G.EHLO_LINE, "SIZE  100", "empty parameter at offset 5"),
    (G.EHLO_LINE, "SIZE\t100", "control character U+0009 at offset 4"),
    (G.DNS_QUESTION, "receiver.com", "not NAME TYPE"),
    (G.DNS_QUESTION, "receiver.com.  MX", "not NAME TYPE"),
    (G.DNS_QUESTION, "receiver.com. MX", "ends in a dot"),
    (G.DNS_QUESTION, "receiver.com FROB", "not a DNS type"),
    (G.REPLY_TEXT, "ok\r\n250 smuggled", "control character U+000D at offset 2"),
    (G.REPLY_TEXT, "tab\there", "control character U+0009 at offset 3"),
    (G.REPLY_TEXT, "x\u2028y", "control character U+2028 at offset 1"),
    (G.REPLY_TEXT, "x" * 507, "507 octets; at most 506"),
    (G.COMMAND_LINE, "", "empty"),
    (G.COMMAND_LINE, "NOOP\x00", "control character U+0000 at offset 4"),
    (G.PROSE, "bell\x07", "control character U+0007 at offset 4"),
    (G.PROSE, "next\x85line", "control character U+0085 at offset 4"),
    (G.SCENARIO_NAME, "../../etc", "not a letter or digit"),
    (G.SCENARIO_NAME, "a/b", "not a letter or digit"),
    (G.SCENARIO_NAME, ".hidden", "not a letter or digit"),
    (G.STATUS, "6.0.0", "not class"),
    (G.STATUS, "5.1.1000", "not class"),
    (G.STATUS, "5.", "not class"),
    (G.ADDRESS, "8.8.8.8", "outside the documentation networks"),
    (G.ADDRESS, "::ffff:192.0.2.1", "outside the documentation networks"),
    (G.ADDRESS, "192.0.2.256", "not an IP address"),
    (G.ADDRESS, "192.0.2.1\n", "control character U+000A"),
]


@pytest.mark.parametrize(("grammar", "value"), GOOD)
def test_accepted(grammar: Grammar, value: str) -> None:
    assert problem(grammar, value) is None


@pytest.mark.parametrize(("grammar", "value", "reason"), BAD)
def test_refused_with_the_first_thing_wrong(grammar: Grammar, value: str, reason: str) -> None:
    found = problem(grammar, value)
    assert found is not None and reason in found, found


def test_every_grammar_refuses_every_control_character() -> None:
    for grammar in Grammar:
        for code in [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]:
            wrong = problem(grammar, f"a{chr(code)}b")
            assert wrong == f"control character U+{code:04X} at offset 1", (grammar, code)


def test_require_names_the_key_in_one_line() -> None:
    with pytest.raises(HarnessError) as caught:
        require(Grammar.LOCAL_PART, "c3\npo", "receiver.users[1]")
    assert str(caught.value) == (
        'receiver.users[1]: "c3\\npo" is not a local part (RFC 5321 §4.1.2): '
        "control character U+000A at offset 2"
    )
    assert require(Grammar.LOCAL_PART, "c3po", "x") == "c3po"


def test_every_grammar_has_its_source_and_bound() -> None:
    assert set(RULES) == set(Grammar)
    for grammar, rule in RULES.items():
        assert rule.cite and rule.what and rule.most > 0, grammar
        assert problem(grammar, "x" * (rule.most + 1)) is not None, grammar


def test_documentation_address_one_check_for_every_address() -> None:
    assert str(documentation_address("2001:DB8::25", "k")) == "2001:db8::25"
    with pytest.raises(HarnessError, match=r"^k: \"8\.8\.8\.8\" is not a documentation address"):
        documentation_address("8.8.8.8", "k")
    with pytest.raises(HarnessError, match=r"^k: \"2001:db8::1\" is not an IPv4 address$"):
        documentation_address("2001:db8::1", "k", version=4)


def test_shown_values_stay_on_one_line_and_short() -> None:
    assert shown("a\r\nb") == '"a\\r\\nb"'
    long = shown("x" * 500)
    assert len(long) == 60 and long.endswith('..."')
    nested = shown([[["\u2028" * 100]]] * 100)
    assert len(nested) <= 60 and len(nested.splitlines()) == 1
