"""Duplicate datagrams folded, DNS retries shown as retries and accepted by the golden
comparison (issue 14, "verdicts that hold"; normalise.py's rules)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from harness.capture.live import Capture
from harness.dns import DnsServer, FaultRule
from harness.lab import Lab
from harness.ladder.compare import compare
from harness.ladder.dissect import dissect
from harness.ladder.model import Ladder, Step, StepKind
from harness.ladder.normalise import DUPLICATE_WINDOW_NS, fold_datagrams, fold_stray_rsts
from harness.runner import host_names, resolver_for

MS = 1_000_000
Q, A = StepKind.DNS_QUERY, StepKind.DNS_ANSWER


def _dns(index: int, ms: int, kind: StepKind, ident: int = 7, transport: str = "udp") -> Step:
    client, server = "sender", "dns"
    src, dst = (client, server) if kind == Q else (server, client)
    text = "receiver.com IN MX" if kind == Q else "MX 10 mail.receiver.com."
    detail = (("id", ident), ("qname", "receiver.com"), ("qtype", "MX"), ("qclass", "IN"))
    return Step(index, ms * MS, src, dst, kind, text, detail=(*detail, ("transport", transport)))


SYN = Step(9, 900 * MS, "sender", "receiver:25", StepKind.SYN, "SYN", conn=1)


def test_a_copy_within_the_window_is_folded_and_counted() -> None:
    steps = fold_datagrams([_dns(1, 0, Q), _dns(2, 0, Q), _dns(3, 1, A), _dns(4, 2, A), SYN])
    assert [s.index for s in steps] == [1, 3, 9]
    assert steps[0].get("duplicates") == 1 and steps[1].get("duplicates") == 1
    assert [s.text for s in steps[:2]] == ["receiver.com IN MX", "MX 10 mail.receiver.com."]


def test_the_same_datagram_after_the_window_is_a_retry_with_its_answer() -> None:
    late = DUPLICATE_WINDOW_NS // MS + 1
    steps = fold_datagrams([_dns(1, 0, Q), _dns(2, 1, A), _dns(3, late, Q), _dns(4, late + 2, A)])
    assert [(s.text, s.get("retry_of")) for s in steps] == [
        ("receiver.com IN MX", None),
        ("MX 10 mail.receiver.com.", None),
        ("receiver.com IN MX (retry)", 1),
        ("MX 10 mail.receiver.com. (retry)", 2),
    ]


def test_a_new_id_is_a_retry_and_the_one_answer_after_two_questions_is_not() -> None:
    steps = fold_datagrams([_dns(1, 0, Q, 7), _dns(2, 1, Q, 8), _dns(3, 2, A, 8)])
    assert [s.get("retry_of") for s in steps] == [None, 1, None]


def test_tcp_after_truncation_is_neither_duplicate_nor_retry() -> None:
    steps = fold_datagrams([_dns(1, 0, Q), _dns(2, 1, A), _dns(3, 2, Q, transport="tcp")])
    assert [s.get("retry_of") for s in steps] == [None, None, None]
    assert all(s.get("duplicates") is None for s in steps)


def test_compare_accepts_a_retry_and_folds_a_duplicate_but_not_a_missing_step() -> None:
    golden = Ladder([_dns(1, 0, Q), _dns(2, 1, A), SYN])
    late = DUPLICATE_WINDOW_NS // MS + 10
    run = Ladder([_dns(1, 0, Q), _dns(2, 0, Q), _dns(3, late, Q, 8), _dns(4, late, A, 8), SYN])
    assert compare(run, golden).ok
    assert compare(run, golden, strict=True).ok
    lost = Ladder([_dns(1, 0, Q), _dns(2, late, Q, 8), SYN])
    verdict = compare(lost, golden)
    assert [m.what for m in verdict.mismatches] == ["missing"]
    asked_twice = Ladder([*golden.steps[:2], _dns(3, late, Q, 8), _dns(4, late, A, 8), SYN])
    assert not compare(golden, asked_twice).ok  # the golden's retry is the client's behaviour


def test_a_different_question_is_not_a_retry() -> None:
    other = replace(_dns(2, 1, Q, 8), text="receiver.com IN A", detail=(("qtype", "A"),))
    other = replace(other, detail=(*other.detail, ("transport", "udp")))
    assert fold_datagrams([_dns(1, 0, Q), other])[1].get("retry_of") is None


@pytest.mark.lab
def test_a_late_answer_makes_a_real_retry_that_the_comparison_accepts(
    lab: Lab, dns: DnsServer, tmp_path
) -> None:
    """The DNS server answers after 2.5 s; our stub asks again after 2 s (the same
    datagram): the capture shows question, retry, answer, the retry's answer."""
    resolve = resolver_for(lab, "sender")
    clean, slow = tmp_path / "clean.pcap", tmp_path / "slow.pcap"
    with Capture(lab, clean):
        asyncio.run(resolve("receiver.com", "MX"))
    dns.faults.add(
        FaultRule.from_dict({"name": "receiver.com", "type": "MX", "action": "delay", "ms": 2500})
    )
    with Capture(lab, slow):
        asyncio.run(resolve("receiver.com", "MX"))
    names = host_names(lab.topology)
    run, golden = dissect(str(slow), names), dissect(str(clean), names)
    assert [s.kind for s in run.steps] == [Q, Q, A]  # the retry's answer comes at 4.5 s
    assert [s.get("retry_of") for s in fold_datagrams(run.steps)] == [None, 1, None]
    assert compare(run, golden).ok


def _tcp(index: int, kind: StepKind, src: str = "receiver:25", dst: str = "sender") -> Step:
    return Step(index, index * MS, src, dst, kind, kind.upper(), conn=1)


def test_an_rst_after_both_fins_were_acknowledged_is_folded_into_the_close() -> None:
    fin, ack = StepKind.FIN, StepKind.FIN_ACK
    closing = [
        _tcp(1, fin),
        _tcp(2, ack, "sender", "receiver:25"),
        _tcp(3, fin, "sender", "receiver:25"),
    ]
    golden = Ladder([*closing, _tcp(4, StepKind.CLOSE_ACK)])
    stray = Ladder([*golden.steps, _tcp(5, StepKind.RST, "sender", "receiver:25")])
    assert compare(stray, golden).ok and compare(stray, golden, strict=True).ok
    assert fold_stray_rsts(stray.steps)[-1].get("stray_rsts") == 1
    early = Ladder([*closing, _tcp(4, StepKind.RST, "sender", "receiver:25")])  # Postfix's
    assert [m.what for m in compare(early, golden).mismatches] == ["changed"]
