"""Exim 4.96 from Debian's packages, in a real lab, in both roles (root, namespaces).

Rules kept here:
- Each test checks what Exim did on the wire (the capture's ladder), in the lab DNS log
  and in what was stored, against what was measured on Debian 12 and written in the
  module docstring of harness/mta/exim.py; nothing is skipped (a missing package fails).
- Exim delivers as Debian-exim, which cannot enter pytest's tmp_path (/tmp/pytest-of-root
  is 0700): each instance gets its own 0755 folder under /tmp (``open_folder``), removed
  afterwards.
- After each test no process runs the instance's configuration (the lab fixture checks
  that its namespaces are gone).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.capture.live import Capture
from harness.dns import DnsServer
from harness.lab import Lab
from harness.ladder.dissect import dissect
from harness.ladder.model import Ladder, Step
from harness.mta.base import Site, without_leading_fields
from harness.mta.exim import Adapter
from harness.runner import host_names
from harness.scenario import load_scenario
from harness.smtp.sender import ScriptStep

pytestmark = pytest.mark.lab

SEED = load_scenario(None)
MESSAGE = SEED.sender.message
RECIPIENTS = list(SEED.sender.recipients)  # aibo, c3po, r2d2 @receiver.com
IDLE_TIMEOUT_S = 10.0
RECEIVED_BY_EXIM = (
    b"Received: from mail.sender.com ([192.0.2.10])\r\n"
    b"\tby mail.receiver.com with smtp (Exim 4.96)\r\n"
)


@pytest.fixture(scope="module", autouse=True)
def prepared() -> None:
    Adapter.prepare()


@pytest.fixture
def folder(open_folder: Path) -> Path:
    return open_folder


def sender_exim(lab: Lab, folder: Path) -> Adapter:
    return Adapter(Site(lab, "sender", folder, "mail.sender.com", "sender.com"), "sender")


def receiver_exim(
    lab: Lab, folder: Path, adapter: type[Adapter] = Adapter, **knobs: str
) -> Adapter:
    site = Site(
        lab, "receiver", folder, "mail.receiver.com", "receiver.com", ("c3po", "r2d2"), extra=knobs
    )
    return adapter(site, "receiver")


class QualifyingExim(Adapter):
    """Exim told to qualify bare local parts from any host (not a harness knob)."""

    def _main_options(self) -> dict[str, str]:
        return super()._main_options() | {"recipient_unqualified_hosts": "*"}


def wait_idle(exim: Adapter) -> None:
    deadline = time.monotonic() + IDLE_TIMEOUT_S
    while not exim.idle():
        assert time.monotonic() < deadline, f"exim still busy:\n{exim.log_path.read_text()}"
        time.sleep(0.01)


def processes_of(exim: Adapter) -> list[int]:
    """Pids whose command line names the instance's configuration."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if str(exim.config).encode() in Path(entry.path, "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def ladder_of(capture: Capture, lab: Lab) -> Ladder:
    capture.stop()
    return dissect(str(capture.path), host_names(lab.topology))


def first(steps: list[Step], kind: str, src: str, text: str = "") -> Step:
    return next(s for s in steps if s.kind == kind and s.src == src and s.text.startswith(text))


def replies_to(transcript: list[dict], verb: str) -> list[int]:
    """The sender's reply codes to each command starting with ``verb``, in order."""
    codes, waiting = [], False
    for entry in transcript:
        if entry["kind"] == "sent":
            waiting = entry["lines"][0].startswith(verb)
        elif entry["kind"] == "reply" and waiting:
            codes.append(entry["code"])
            waiting = False
    return codes


# --- Exim as the sending MTA ----------------------------------------------------------------
def test_exim_delivers_by_mx_pipelining_and_closes_with_quit_and_fin(
    lab: Lab, dns: DnsServer, smtp_receiver: Callable, capture: Capture, folder: Path
) -> None:
    receiver = smtp_receiver(ptr_at="connect")
    exim = sender_exim(lab, folder)

    async def exchange() -> None:
        async with receiver:
            await receiver.start("192.0.2.25", 25)
            with exim:
                await asyncio.to_thread(exim.submit, "luke@sender.com", RECIPIENTS, MESSAGE)
                await asyncio.to_thread(wait_idle, exim)  # its bounce to luke, delivered locally
            await receiver.idle()

    asyncio.run(exchange())
    log = exim.log_path.read_text()
    # c3po and r2d2 got the seed message behind one Received field, nothing else changed
    assert sorted(m.recipient for m in receiver.stored) == RECIPIENTS[1:]
    for stored in receiver.stored:
        assert stored.data.startswith(
            b"Received: from root by mail.sender.com with local (Exim 4.96)"
        )
        assert exim.as_sent(stored.data) == MESSAGE
    # aibo was refused at RCPT; the bounce went to luke, kept in the sender's postmaster box
    assert "** aibo@receiver.com" in log and "after RCPT TO:<aibo@receiver.com>: 550" in log
    [bounce] = exim.mailbox("postmaster")
    assert b"X-Failed-Recipients: aibo@receiver.com\r\n" in bounce
    stored_as = Adapter.trace_fields["receiver"]
    assert without_leading_fields(bounce, stored_as).startswith(b"X-Failed-Recipients")

    steps = ladder_of(capture, lab).steps
    # DNS: MX, then A for the exchanger (glue ignored, no AAAA): once per recipient
    asked = [s.text for s in steps if s.kind == "dns-query" and s.src == "sender"]
    assert asked == ["receiver.com IN MX", "mail.receiver.com IN A"] * len(RECIPIENTS)
    syn = first(steps, "syn", "sender")
    assert syn.text == "SYN to port 25" and syn.dst == "receiver"
    commands = [s for s in steps if s.kind == "command"]
    assert commands[0].text == "EHLO mail.sender.com"
    # MAIL, the RCPTs and DATA go out together, before the reply to MAIL (PIPELINING)
    assert [c.text.split()[0] for c in commands[1:6]] == ["MAIL", "RCPT", "RCPT", "RCPT", "DATA"]
    assert len({c.evidence for c in commands[1:6]}) == 1
    assert commands[1].text == "MAIL FROM:<luke@sender.com> SIZE=1461"
    mail_reply = next(s for s in steps if s.kind == "reply" and s.index > commands[1].index)
    assert mail_reply.text == "250 OK" and mail_reply.index > commands[5].index
    # the message, QUIT and the sender's FIN in one segment, before the 250; then 221, FIN
    quit_, content = commands[-1], first(steps, "content", "sender")
    sender_fin, receiver_fin = first(steps, "fin", "sender"), first(steps, "fin", "receiver")
    final_reply, bye = (s for s in steps if s.kind == "reply" and s.index > quit_.index)
    assert quit_.text == "QUIT"
    assert content.evidence[-1] == quit_.evidence[-1] == sender_fin.evidence[-1]
    assert final_reply.text.startswith("250") and bye.text.startswith("221")
    assert quit_.index < sender_fin.index < final_reply.index < bye.index < receiver_fin.index
    assert processes_of(exim) == []


def test_exim_defers_when_nobody_listens_and_counts_as_idle(
    lab: Lab, dns: DnsServer, folder: Path
) -> None:
    with sender_exim(lab, folder) as exim:
        exim.submit("luke@sender.com", ["c3po@receiver.com"], MESSAGE)
        assert exim.idle()
        assert len(list((exim.spool / "input").glob("*-H"))) == 1
    assert "== c3po@receiver.com R=outbound T=remote_smtp defer (111)" in exim.log_path.read_text()
    assert processes_of(exim) == []


# --- Exim as the receiving MTA --------------------------------------------------------------
def test_exim_receives_the_seed_dialogue(
    lab: Lab, dns: DnsServer, smtp_sender: Callable, capture: Capture, folder: Path
) -> None:
    exim = receiver_exim(lab, folder)
    with exim:
        report = asyncio.run(smtp_sender().send())
        wait_idle(exim)
        boxes = {user: exim.mailbox(user) for user in ("c3po", "r2d2", "aibo")}
        assert processes_of(exim)  # the daemon
    # a bare local part from a remote host is not qualified: VRFY answers 501 to all three
    assert replies_to(report.transcript, "VRFY") == [501, 501, 501]
    aibo, c3po, r2d2 = (report.outcomes[r] for r in RECIPIENTS)
    assert (aibo.status, aibo.stage, aibo.code, aibo.text) == (
        "rejected",
        "RCPT",
        550,
        "Unrouteable address",
    )
    assert c3po.status == r2d2.status == "delivered"
    assert boxes["aibo"] == []
    for user in ("c3po", "r2d2"):
        [stored] = boxes[user]
        assert exim.as_sent(stored) == MESSAGE
        assert stored.startswith(
            b"Return-path: <luke@sender.com>\r\n"
            + f"Envelope-to: {user}@receiver.com\r\nDelivery-date: ".encode()
        )
        assert RECEIVED_BY_EXIM in stored

    # the PTR of the client, then the A of that name, from the receiver at connect (before 220)
    [ptr] = dns.log.find("10.2.0.192.in-addr.arpa", "PTR")
    assert ptr.client[0] == "192.0.2.25"
    steps = ladder_of(capture, lab).steps
    handshake = first(steps, "ack", "sender")
    lookups = [s.text for s in steps if s.kind == "dns-query" and s.src == "receiver"]
    assert lookups == ["10.2.0.192.in-addr.arpa IN PTR", "mail.sender.com IN A"]
    greeting = first(steps, "reply", "receiver", "220 mail.receiver.com ESMTP Exim 4.96")
    ptr_step = first(steps, "dns-query", "receiver")
    assert handshake.index < ptr_step.index < greeting.index
    # QUIT, 221, then the receiver closes first
    bye = first(steps, "reply", "receiver", "221")
    receiver_fin, sender_fin = first(steps, "fin", "receiver"), first(steps, "fin", "sender")
    assert bye.index <= receiver_fin.index < sender_fin.index
    exim.stop()  # safe twice
    assert processes_of(exim) == []


def test_exim_verifies_bare_local_parts_when_told_to_qualify_them(
    lab: Lab, dns: DnsServer, smtp_sender: Callable, folder: Path
) -> None:
    with receiver_exim(lab, folder, QualifyingExim) as exim:
        report = asyncio.run(smtp_sender().send())
        wait_idle(exim)
        assert [len(exim.mailbox(user)) for user in ("c3po", "r2d2")] == [1, 1]
    assert replies_to(report.transcript, "VRFY") == [550, 250, 250]
    assert report.outcomes["aibo@receiver.com"].stage == "VRFY"
    assert processes_of(exim) == []


def test_exim_with_vrfy_disabled_answers_252_to_a_mailbox_501_to_a_bare_name(
    lab: Lab, dns: DnsServer, smtp_sender: Callable, folder: Path
) -> None:
    """Without ``acl_smtp_vrfy`` Exim refuses VRFY its own way (RFC 5321 §7.3's 252), after
    its syntax check: a bare local part from a remote host is still a 501."""
    script = [ScriptStep(at="MAIL", send="VRFY c3po@receiver.com")]
    with receiver_exim(lab, folder, vrfy="disabled") as exim:
        report = asyncio.run(smtp_sender(script=script).send())
        wait_idle(exim)
    assert replies_to(report.transcript, "VRFY") == [501, 501, 501, 252]
    assert "acl_smtp_vrfy" not in exim.config.read_text()


def test_version_is_read_from_the_unpacked_binary() -> None:
    assert Adapter.version() == "4.96"
