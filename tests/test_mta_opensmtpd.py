"""OpenSMTPD 6.8 (Debian's package, unpacked) in a real lab, as root, in both roles.

Each case runs ``REPEAT`` times, each time in a fresh lab; afterwards nothing of it is left
on the machine: no smtpd running our binary, none of the lab's namespaces, the same mounts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import subprocess
import time
from collections.abc import Iterator

import pytest

from harness.dns import DnsServer
from harness.lab import Lab
from harness.ladder.dissect import dissect
from harness.ladder.model import Ladder
from harness.mta import debs
from harness.mta.base import Site
from harness.mta.opensmtpd import Adapter
from harness.runner import host_names
from harness.scenario import FIXTURES
from harness.smtp.receiver import Receiver

pytestmark = pytest.mark.lab

REPEAT = 5
SEED = (FIXTURES / "messages" / "seed.eml").read_bytes()
RECIPIENTS = ["aibo@receiver.com", "c3po@receiver.com", "r2d2@receiver.com"]
IDLE_TIMEOUT_S = 10.0
# what OpenSMTPD prepends (its Received header: HELO name, rDNS name, address, protocol)
RELAYED = re.compile(
    rb"Received: from localhost \(localhost \[127\.0\.0\.1\]\)\r\n"
    rb"\tby mail\.sender\.com \(OpenSMTPD\) with ESMTP id [0-9a-f]{8};\r\n"
    rb"\t[A-Z][a-z]{2}, \d{1,2} [A-Z][a-z]{2} \d{4} [\d:]{8} \+0000 \(UTC\)\r\n"
)
BOUNCED = (  # no Return-Path: a bounce's sender is empty
    rb"Delivered-To: luke@sender\.com\n"
    rb"Received: from mail\.sender\.com \(mail\.sender\.com \[local\]\)\n"
    rb"\tby mail\.sender\.com \(OpenSMTPD\) with ESMTPA id [0-9a-f]{8}\n"
    rb"\tfor <luke@sender\.com>;\n"
    rb"\t[^\n]+\n"
    rb"Subject: Delivery status notification: failed\n"
    rb"From: Mailer Daemon <MAILER-DAEMON@mail\.sender\.com>\n"
)
ACCEPTED = r"2\.0\.0 [0-9a-f]{8} Message accepted for delivery"
DELIVERED = (
    rb"Return-Path: <luke@sender\.com>\n"
    rb"Delivered-To: %s@receiver\.com\n"
    rb"Received: from mail\.sender\.com \(mail\.sender\.com \[192\.0\.2\.10\]\)\n"
    rb"\tby mail\.receiver\.com \(OpenSMTPD\) with SMTP id [0-9a-f]{8};\n"
    rb"\t[A-Z][a-z]{2}, \d{1,2} [A-Z][a-z]{2} \d{4} [\d:]{8} \+0000 \(UTC\)\n"
)


@pytest.fixture(scope="module", autouse=True)
def prepared() -> None:
    Adapter.prepare()


@pytest.fixture
def leftovers() -> Iterator[dict[str, int]]:
    """Requested first, so set up before the lab and checked once it is gone; the test
    names its lab's namespaces (``_namespaces``)."""
    mounts = _mounts()
    namespaces: dict[str, int] = {}
    yield namespaces
    assert namespaces, "the test did not name its lab's namespaces"
    assert [ns for ns in namespaces if os.path.exists(f"/run/netns/{ns}")] == []
    assert _smtpd_in(namespaces) == []
    assert _mounts() == mounts


@pytest.mark.parametrize("run", range(REPEAT))
@pytest.mark.parametrize("family", ["any", "ipv4"])
def test_sender_relays_by_mx(
    run, family, leftovers, lab, dns, smtp_receiver, capture, tmp_path
) -> None:
    """With ``family = "any"`` the receiver listens on both its addresses and OpenSMTPD
    takes the AAAA one (refused, it would wait 2 s before trying the A one); with "ipv4"
    (the default) the receiver listens on 192.0.2.25 only."""
    leftovers.update(_namespaces(lab))
    extra = {"family": family}
    inet = family == "ipv4"
    folder = tmp_path / "opensmtpd"
    site = Site(lab, "sender", folder, "mail.sender.com", "sender.com", ("luke",), extra=extra)
    mta = Adapter(site, "sender")
    receiver = smtp_receiver()
    addresses = [lab.host("receiver").ipv4] if inet else lab.host("receiver").addresses
    luke = asyncio.run(_relay(mta, receiver, addresses, dns))
    assert _smtpd_in(_namespaces(lab)) == []  # stop() alone ends it
    capture.stop()
    ladder = dissect(str(capture.path), host_names(lab.topology))

    stored = {m.recipient: m.data for m in receiver.stored}
    assert sorted(stored) == ["c3po@receiver.com", "r2d2@receiver.com"]
    for data in stored.values():
        assert RELAYED.match(data), data[:200]
        assert mta.as_sent(data) == SEED
    (bounce,) = luke  # aibo's 550, reported to luke and delivered locally
    assert re.match(BOUNCED, bounce), bounce[:300]
    assert b"\naibo@receiver.com: 550 5.1.1 <aibo@receiver.com>: " in bounce
    _assert_relay_wire(ladder, ipaddress.ip_address(addresses[-1]).reverse_pointer)


@pytest.mark.parametrize("run", range(REPEAT))
def test_receiver_stores_for_its_users(
    run, leftovers, lab, dns, smtp_sender, capture, tmp_path
) -> None:
    leftovers.update(_namespaces(lab))
    users = ("c3po", "r2d2")
    site = Site(lab, "receiver", tmp_path / "opensmtpd", "mail.receiver.com", "receiver.com", users)
    mta = Adapter(site, "receiver")
    with mta:
        assert dns.log.entries() == []  # starting asks nothing
        report = asyncio.run(smtp_sender().send())
        _wait_idle(mta)
        boxes = {user: mta.mailbox(user) for user in (*users, "aibo")}
        assert mta.queue() == []
    assert _smtpd_in(_namespaces(lab)) == []  # stop() alone ends it
    capture.stop()
    ladder = dissect(str(capture.path), host_names(lab.topology))

    outcomes = {r: (o.status, o.stage, o.code) for r, o in report.outcomes.items()}
    assert outcomes == {
        "aibo@receiver.com": ("rejected", "RCPT", 550),
        "c3po@receiver.com": ("delivered", "<end-of-data>", 250),
        "r2d2@receiver.com": ("delivered", "<end-of-data>", 250),
    }
    assert report.outcomes["aibo@receiver.com"].text == "Invalid recipient: <aibo@receiver.com>"
    for user in users:
        assert re.fullmatch(ACCEPTED, report.outcomes[f"{user}@receiver.com"].text)
    # VRFY unrecognized (500), though RFC 5321 §4.5.1 lists it among the commands every
    # server implements (§3.5.3: 252 when it will not say): non-conformant, recorded
    vrfy = _replies_to(report.transcript, "VRFY")
    assert vrfy == [(500, ["5.5.1 Invalid command: Command unrecognized"])] * 3
    for user in users:
        (message,) = boxes[user]
        assert re.match(DELIVERED % user.encode(), message), message[:300]
        assert message.endswith(SEED.replace(b"\r\n", b"\n"))  # stored with LF line ends
        assert mta.as_sent(message) == SEED
    assert boxes["aibo"] == []
    asked = [(e.client[0], e.qname, e.qtype) for e in dns.log.entries()]
    assert asked == [
        ("192.0.2.10", "receiver.com.", "MX"),  # the scripted sender
        ("192.0.2.25", "10.2.0.192.in-addr.arpa.", "PTR"),  # OpenSMTPD, at connect
        ("192.0.2.25", "mail.sender.com.", "A"),  # ... and forward-confirms the name
    ]
    texts = [s.text for s in ladder.steps]
    greeting = texts.index("220 mail.receiver.com ESMTP OpenSMTPD")
    assert texts.index("10.2.0.192.in-addr.arpa IN PTR") < greeting  # at connect
    assert texts.index("mail.sender.com IN A") < greeting


def test_version_comes_from_the_package() -> None:
    assert Adapter.version() == "6.8.0p2"


# --- helpers -----------------------------------------------------------------------------
async def _relay(
    mta: Adapter, receiver: Receiver, addresses: list[str], dns: DnsServer
) -> list[bytes]:
    """Luke's message through OpenSMTPD to the scripted receiver (listening on
    ``addresses``); returns luke's mailbox."""
    async with receiver:
        for address in addresses:
            await receiver.start(address, 25)
        await asyncio.to_thread(mta.start)
        try:
            assert dns.log.entries() == []  # starting asks nothing
            await asyncio.to_thread(mta.submit, "luke@sender.com", RECIPIENTS, SEED)
            deadline = time.monotonic() + IDLE_TIMEOUT_S
            # idle, and aibo's bounce (made up to bounce_delay_s after idle) delivered
            while not (await asyncio.to_thread(mta.idle) and mta.mailbox("luke")):
                assert time.monotonic() < deadline, mta.queue()
                await asyncio.sleep(0.02)
            while not await asyncio.to_thread(mta.idle):  # the bounce's own envelope
                assert time.monotonic() < deadline, mta.queue()
                await asyncio.sleep(0.02)
            assert mta.queue() == []
            luke = mta.mailbox("luke")
        finally:
            await asyncio.to_thread(mta.stop)  # ends the connection it keeps for 10 s
        await receiver.idle()
    return luke


def _assert_relay_wire(ladder: Ladder, mx_pointer: str) -> None:
    steps = [s for s in ladder.steps if "sender" in (s.src, s.dst)]
    asked = [s.text for s in steps if s.kind == "dns-query"]
    # the submission from 127.0.0.1: its PTR, then the name it got from /etc/hosts, through
    # the search list of the hostname's domain; then the delivery
    assert asked[:3] == [
        "1.0.0.127.in-addr.arpa IN PTR",
        "localhost.sender.com IN A",
        "localhost IN A",
    ]
    assert asked[3] == "receiver.com IN MX"
    # the MX answer carries both addresses as glue: ignored, both asked again
    mx_answer = next(s for s in steps if s.kind == "dns-answer" and s.text.startswith("MX 10"))
    assert mx_answer.get("additional") == 2
    assert sorted(asked[4:6]) == ["mail.receiver.com IN A", "mail.receiver.com IN AAAA"]
    assert asked[6] == f"{mx_pointer} IN PTR"  # the address it chose, named
    assert len(asked) == 7
    syn = next(i for i, s in enumerate(steps) if s.kind == "syn")
    assert steps[syn].text == "SYN to port 25" and steps[syn].dst == "receiver"
    assert syn > max(i for i, s in enumerate(steps) if s.kind == "dns-answer")
    commands = [s.text for s in steps if s.kind == "command"]
    assert commands[:2] == ["EHLO mail.sender.com", "MAIL FROM:<luke@sender.com>"]
    # RCPT order follows OpenSMTPD's envelope ids (random), not the submission's
    assert sorted(commands[2:5]) == [f"RCPT TO:<{r}>" for r in RECIPIENTS]
    assert commands[5:] == ["DATA"]  # no QUIT: stop() ended the cached connection
    fins = [s.src for s in steps if s.kind == "fin"]
    assert fins == ["sender", "receiver"]


def _replies_to(transcript: list[dict], verb: str) -> list[tuple[int, list[str]]]:
    """The replies to each ``verb`` the scripted sender sent, in order."""
    found, waiting = [], False
    for entry in transcript:
        if entry["kind"] == "sent":
            waiting = entry["lines"][0].upper().startswith(verb)
        elif entry["kind"] == "reply" and waiting:
            found.append((entry["code"], entry["lines"]))
            waiting = False
    return found


def _wait_idle(mta: Adapter) -> None:
    deadline = time.monotonic() + IDLE_TIMEOUT_S
    while not mta.idle():
        assert time.monotonic() < deadline, mta.queue()
        time.sleep(0.02)


def _namespaces(lab: Lab) -> dict[str, int]:
    """The lab's network namespaces: name -> inode (a process keeps the inode alive)."""
    names = [lab.lan_ns, *(lab.ns(h.name) for h in lab.topology.hosts)]
    return {name: os.stat(f"/run/netns/{name}").st_ino for name in names}


def _mounts() -> list[str]:
    """The root mount namespace's mounts, but other labs' namespace handles (they come and
    go with other runs on this machine)."""
    out = subprocess.run(
        ["findmnt", "-rn", "-o", "TARGET,SOURCE,FSTYPE"], capture_output=True, text=True
    ).stdout
    return [line for line in out.splitlines() if not line.startswith("/run/netns/")]


def _smtpd_in(namespaces: dict[str, int]) -> list[int]:
    """Processes running our unpacked smtpd inside those namespaces (other runs on this
    machine may run their own)."""
    smtpd = str(debs.binary(debs.unpacked("opensmtpd"), "smtpd"))
    inodes = set(namespaces.values())
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            ours = os.stat(f"/proc/{pid}/ns/net").st_ino in inodes
            if ours and os.readlink(f"/proc/{pid}/exe") == smtpd:
                found.append(int(pid))
        except OSError:
            continue
    return found
