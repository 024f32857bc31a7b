"""Postfix 3.7 (Debian's package, unpacked) in both roles, in real namespaces, as root.

Each scenario runs once per module; every test reads that run.  Nothing may be left
behind: no lab of this process, no process of the instance's master, nothing mounted on
the adapter's VIEW in the root mount namespace.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.lab.registry import all_records
from harness.mta import postfix, process
from harness.mta.base import Site
from harness.runner import RunResult, run_scenario
from harness.scenario import FIXTURES, load_scenario

pytestmark = pytest.mark.lab

SEED_MESSAGE = (FIXTURES / "messages" / "seed.eml").read_bytes()
SCENARIOS = FIXTURES / "scenarios"
OUTCOMES = {
    "aibo@receiver.com": "rejected",
    "c3po@receiver.com": "delivered",
    "r2d2@receiver.com": "delivered",
}


def _run(name: str, folder) -> RunResult:
    result = run_scenario(load_scenario(SCENARIOS / f"{name}.toml"), folder)
    assert result.ok, result.problems
    return result


@pytest.fixture(scope="module")
def as_sender(tmp_path_factory) -> RunResult:
    return _run("postfix-sender", tmp_path_factory.mktemp("postfix-sender"))


@pytest.fixture(scope="module")
def as_receiver(tmp_path_factory) -> RunResult:
    return _run("postfix-receiver", tmp_path_factory.mktemp("postfix-receiver"))


def _adapter(role: str) -> postfix.Adapter:
    """An adapter not started: what it knows of its own trace fields (``as_sent``)."""
    site = Site(None, role, Path("/nonexistent"), f"mail.{role}.com", f"{role}.com")
    return postfix.Adapter(site, role)


def _steps(result: RunResult) -> list[tuple[str, str, str]]:
    return [(s.kind, s.src, s.text) for s in result.ladder.steps]


def _lab_namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in listed.splitlines() if line.startswith("sh")}


def _assert_nothing_left(result: RunResult, role: str) -> None:
    assert not [r for r in all_records() if r.owner_pid == os.getpid()]
    # a namespace without a lab record, both before and after the records are read (other
    # runs on this machine make and remove labs meanwhile: a record comes before its
    # namespaces and goes after them)
    before = _lab_namespaces()
    recorded = {ns for r in all_records() for ns in r.namespaces}
    assert (before & _lab_namespaces()) <= recorded
    pid_file = result.folder / f"{role}-postfix" / "spool" / "pid" / "master.pid"
    assert not process.group_members(int(pid_file.read_text().split()[0]))
    assert not os.path.ismount(postfix.VIEW)


# --- Postfix as the sending MTA --------------------------------------------------------------
def test_sender_delivers_to_c3po_and_r2d2_and_aibo_is_refused_at_rcpt(as_sender) -> None:
    assert {r: o.status for r, o in as_sender.report.outcomes.items()} == OUTCOMES
    aibo = as_sender.report.outcomes["aibo@receiver.com"]
    assert (aibo.stage, aibo.code) == ("RCPT", 550)
    assert sorted(m.recipient for m in as_sender.stored) == sorted(OUTCOMES)[1:]


def test_sender_asks_mx_then_a_then_connects_and_says_ehlo(as_sender) -> None:
    steps = _steps(as_sender)
    assert steps[:5] == [
        ("dns-query", "sender", "receiver.com IN MX"),
        ("dns-answer", "dns", steps[1][2]),  # the answer carries glue: Postfix ignores it
        ("dns-query", "sender", "mail.receiver.com IN A"),
        ("dns-answer", "dns", "A 192.0.2.25"),
        ("syn", "sender", "SYN to port 25"),
    ]
    assert "+ A mail.receiver.com. 192.0.2.25" in steps[1][2]
    commands = [text for kind, _, text in steps if kind == "command"]
    assert commands[0] == "EHLO mail.sender.com"
    assert commands[1].startswith("MAIL FROM:<luke@sender.com> SIZE=")
    assert "VRFY" not in " ".join(commands)


def test_sender_copies_equal_the_message_once_its_received_field_is_removed(as_sender) -> None:
    for copy in as_sender.stored:
        assert re.match(
            rb"Received: by mail\.sender\.com \(Postfix, from userid 0\)\r\n\t", copy.data
        )
        assert _adapter("sender").as_sent(copy.data) == SEED_MESSAGE


def test_sender_run_leaves_nothing_behind(as_sender) -> None:
    _assert_nothing_left(as_sender, "sender")
    assert "status=sent" in (as_sender.folder / "sender-postfix" / "postfix.log").read_text()


# --- Postfix as the receiving MTA ------------------------------------------------------------
def test_receiver_answers_vrfy_550_for_aibo_and_252_for_known_users(as_receiver) -> None:
    assert {r: o.status for r, o in as_receiver.report.outcomes.items()} == OUTCOMES
    vrfy = {}
    sent = None
    for entry in as_receiver.report.transcript:
        if entry["kind"] == "sent":
            sent = entry["lines"][0]
        elif entry["kind"] == "reply" and sent and sent.startswith("VRFY "):
            vrfy[sent[5:]] = (entry["code"], entry["lines"][-1])
    assert vrfy["aibo"][0] == 550
    assert vrfy["aibo"][1].startswith("5.1.1 <aibo>: Recipient address rejected: User unknown")
    assert vrfy["c3po"] == (252, "2.0.0 c3po")
    assert vrfy["r2d2"] == (252, "2.0.0 r2d2")


def test_receiver_maildir_holds_the_message_after_the_trace_fields(as_receiver) -> None:
    boxes = as_receiver.folder / "receiver-postfix" / "mail"
    assert sorted(p.name for p in boxes.iterdir()) == ["c3po", "r2d2"]
    for user in ("c3po", "r2d2"):
        (stored,) = (boxes / user / "new").iterdir()
        raw = stored.read_bytes()
        head = raw.split(b"\n")[:4]
        assert head[:3] == [
            b"Return-Path: <luke@sender.com>",
            b"X-Original-To: " + user.encode() + b"@receiver.com",
            b"Delivered-To: " + user.encode() + b"@receiver.com",
        ]
        assert head[3].startswith(b"Received: from mail.sender.com (mail.sender.com [192.0.2.10])")
        assert raw.endswith(SEED_MESSAGE.replace(b"\r\n", b"\n"))
    for copy in as_receiver.stored:
        assert _adapter("receiver").as_sent(copy.data) == SEED_MESSAGE
        assert copy.mail_from == "luke@sender.com"


def test_receiver_looks_up_the_client_ptr_through_the_lab_dns_at_connect(as_receiver) -> None:
    asked = [(e.client[0], e.qname.rstrip("."), e.qtype) for e in as_receiver.dns_log]
    assert ("192.0.2.25", "10.2.0.192.in-addr.arpa", "PTR") in asked
    steps = _steps(as_receiver)
    ptr = steps.index(("dns-query", "receiver", "10.2.0.192.in-addr.arpa IN PTR"))
    greeting = next(i for i, (kind, src, _) in enumerate(steps) if kind == "reply")
    handshake = steps.index(("ack", "sender", "ACK"))
    assert handshake < ptr < greeting
    assert steps[greeting][2].startswith("220 mail.receiver.com ESMTP Postfix")


def test_receiver_run_leaves_nothing_behind(as_receiver) -> None:
    _assert_nothing_left(as_receiver, "receiver")
    log = (as_receiver.folder / "receiver-postfix" / "postfix.log").read_text()
    assert "status=sent (delivered to maildir)" in log


# --- scenario keys ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[receiver]\nmta = "qmail"', 'receiver.mta: no adapter named "qmail"'),
        ('[receiver]\nmta = "postfix"\nvrfy = "252"', 'receiver.vrfy: "252" for postfix: expected'),
        ('[receiver]\nmta = "postfix"\nptr_at = "connect"', "receiver.ptr_at: applies to the"),
        ('[sender]\nmta = "postfix"\n[[sender.script]]\nat = "DATA"', "sender.script: applies"),
        (
            '[sender]\nmta = "postfix"\n[receiver]\nmta = "postfix"',
            "receiver.mta and sender.mta: one side",
        ),
        ('[sender]\nmta = "postfix"\n[receiver]\nport = 2525', "receiver.port: postfix as sender"),
    ],
)
def test_mta_keys_are_validated(tmp_path, text: str, error: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f'[dns]\nzones = "{FIXTURES / "zones"}"\n{text}\n')
    with pytest.raises(HarnessError, match=re.escape(f"{path}: {error}")):
        load_scenario(path)


def test_mta_keys_default_to_scripted_peers() -> None:
    seed = load_scenario(None)
    assert (seed.sender_mta, seed.receiver_mta) == (None, None)
    assert load_scenario(SCENARIOS / "postfix-sender.toml").sender_mta == "postfix"
