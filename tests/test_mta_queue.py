"""Reading each real MTA's queue (issue 8, "Outcomes from evidence"), in both roles.

Rules kept here:
- The deferrals are real: as sender, the lab DNS answers SERVFAIL to the MX question
  (``[[dns.faults]]``), or the scripted receiver answers 451 to one RCPT; as receiver, a
  mailbox the MTA cannot write (read-only Maildir folders for the MTAs that deliver as a
  user of their own, a file in the way for Sendmail, which delivers as root).  Each time
  ``queue()`` must list exactly the recipients left, with the MTA's own reason and the
  RFC 3463 code where that reason (or, for Postfix, its log line) has one; after a
  delivery it must be empty.  The reasons asserted were measured on Debian 12.
- A queue that cannot be read is ``QueueUnreadable`` naming the command, never [].
- The parsers are also checked without a lab, on listings captured from these runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from pathlib import Path

import pytest

from harness.lab import Lab
from harness.mta import exim, opensmtpd, postfix, sendmail
from harness.mta.base import MtaAdapter, QueuedRecipient, QueueUnreadable, Site, adapters
from harness.mta.roles import mta_site
from harness.runner import lab_dns, resolver_for
from harness.scenario import FIXTURES, load_scenario, scenario_from_data
from harness.smtp.receiver import Receiver
from harness.smtp.sender import Sender

MTAS = ("postfix", "exim", "opensmtpd", "sendmail")
TWO = ["c3po@receiver.com", "r2d2@receiver.com"]
TRY_LATER = "451 4.3.0 Try later"
SERVFAIL = {"dns": {"faults": [{"name": "receiver.com", "type": "MX", "action": "servfail"}]}}
RCPT_451 = {
    "receiver": {
        "replies": [
            {"on": "RCPT", "argument": "r2d2@receiver.com", "code": 451, "text": "4.3.0 Try later"}
        ]
    }
}
# what each MTA says, as sender, when the MX question gets SERVFAIL (and the code it logs)
SERVFAIL_REASONS = {
    "postfix": ("Name service error for name=receiver.com type=MX", "4.4.3"),
    "exim": ("R=outbound defer (-1): host lookup did not complete", None),
    "opensmtpd": ("Temporary failure in MX lookup", None),
    "sendmail": ("host map: lookup (receiver.com): deferred", None),
}
# ... and as receiver, when it cannot write c3po's mailbox
BLOCKED_REASONS = {
    "postfix": ("maildir delivery failed: create maildir file", "Permission denied"),
    "exim": ("R=local_users T=local_maildir defer (13)", "Permission denied"),
    "opensmtpd": ("mail.maildir", "Permission denied"),
    "sendmail": ("Deferred: local mailer", "exited with EX_TEMPFAIL"),
}
SETTLE_S = 20.0


# --- the parsers, on captured listings --------------------------------------------------------
POSTQUEUE = (
    '{"queue_name": "deferred", "queue_id": "4D16820C434", "arrival_time": 1796114056, '
    '"message_size": 393, "forced_expire": false, "sender": "luke@sender.com", "recipients": '
    '[{"address": "r2d2@receiver.com", "delay_reason": "host mail.receiver.com[192.0.2.25] '
    'said: 451 4.3.0 Try later (in reply to RCPT TO command)"}]}\n'
)
EXIM_BP = (
    " 0m   425 1xYJJZ-0006uo-0H <luke@sender.com>\n"
    "        D c3po@receiver.com\n"
    "          r2d2@receiver.com\n\n"
)
EXIM_LOG = (
    "2026-12-01 08:34:17 1xYJJZ-0006uo-0H => c3po@receiver.com R=outbound T=remote_smtp\n"
    "2026-12-01 08:34:17 1xYJJZ-0006uo-0H == r2d2@receiver.com R=outbound T=remote_smtp "
    "defer (-44) H=mail.receiver.com [192.0.2.25]: SMTP error from remote mail server after "
    "RCPT TO:<r2d2@receiver.com>: 451 4.3.0 Try later\n"
)
MAILQ = (
    "\t\t/tmp/q/mqueue (2 requests)\n"
    "-----Q-ID----- --Size-- -Priority- ---Q-Time--- --------Sender/Recipient--------\n"
    "6B18Yurh026999       46      60273 Dec  1 08:34 luke@sender.com\n"
    "                 (Deferred: 451 4.3.0 Try later)\n"
    "\t\t\t\t\t\tr2d2@receiver.com\n"
    "\t\t (Deferred: 451 4.3.0 Try later)\n"
    "6B18YvKL027036       46      60273 Dec  1 08:34 luke@sender.com\n"
    "                 (host map: lookup (receiver.com): deferred)\n"
    "\t\t\t\t\t\tc3po@receiver.com\n"
    "\t\tTotal requests: 2\n"
)
SHOW_QUEUE = (
    "5eb13dcead201d98|inet4|mta||luke@sender.com|r2d2@receiver.com|r2d2@receiver.com|"
    "1796114059|1796114059|0|1|pending|390|451 4.3.0 Try later\n"
)


def test_postqueue_reason_and_code_and_the_log_as_fallback() -> None:
    [entry] = postfix.parse_postqueue(POSTQUEUE, {})
    assert entry == QueuedRecipient(
        "r2d2@receiver.com",
        "4D16820C434",
        "host mail.receiver.com[192.0.2.25] said: 451 4.3.0 Try later (in reply to RCPT TO "
        "command)",
        "4.3.0",
    )
    without = POSTQUEUE.replace("451 4.3.0 Try later", "lost connection")
    [entry] = postfix.parse_postqueue(without, {("4D16820C434", "r2d2@receiver.com"): "4.4.2"})
    assert entry.status_code == "4.4.2"
    with pytest.raises(QueueUnreadable, match=r"^postfix: postqueue -j line 2: "):
        postfix.parse_postqueue(POSTQUEUE + "not json\n", {})


def test_exim_listing_skips_delivered_recipients_and_takes_the_logged_deferral() -> None:
    [entry] = exim.parse_queue(EXIM_BP, EXIM_LOG)
    assert (entry.recipient, entry.queue_id, entry.status_code) == (
        "r2d2@receiver.com",
        "1xYJJZ-0006uo-0H",
        "4.3.0",
    )
    assert entry.reason.startswith("R=outbound T=remote_smtp defer (-44) H=mail.receiver.com")
    assert entry.reason.endswith(TRY_LATER)
    [untried] = exim.parse_queue(EXIM_BP, "")
    assert (untried.reason, untried.status_code) == ("not tried yet", None)
    with pytest.raises(QueueUnreadable, match=r"^exim: exim -bp: unexpected line '\*\*\* spool"):
        exim.parse_queue(EXIM_BP + "    *** spool read error: No such file ***\n", "")


def test_mailq_gives_each_recipient_its_own_reason_else_the_message_s() -> None:
    assert sendmail.parse_mailq(MAILQ) == [
        QueuedRecipient("r2d2@receiver.com", "6B18Yurh026999", "Deferred: " + TRY_LATER, "4.3.0"),
        QueuedRecipient(
            "c3po@receiver.com", "6B18YvKL027036", "host map: lookup (receiver.com): deferred"
        ),
    ]
    assert sendmail.parse_mailq("\t\t/tmp/q/mqueue is empty\n\t\tTotal requests: 0\n") == []
    with pytest.raises(QueueUnreadable, match=r"^sendmail: sendmail -bp -v: unexpected line"):
        sendmail.parse_mailq(MAILQ + "something else\n")


def test_show_queue_envelope_is_its_recipient_with_the_error_line() -> None:
    [fields] = opensmtpd.parse_envelopes(SHOW_QUEUE)
    assert opensmtpd.queued(fields) == QueuedRecipient(
        "r2d2@receiver.com", "5eb13dce", TRY_LATER, "4.3.0"
    )
    with pytest.raises(QueueUnreadable, match=r"^opensmtpd: smtpctl show queue: 'oops'"):
        opensmtpd.parse_envelopes("oops\n")


# --- for real: the sender role ----------------------------------------------------------------
@pytest.fixture
def folder(open_folder: Path) -> Path:
    return open_folder


def _as_sender(mta: str, setup: dict, folder: Path) -> tuple[list[QueuedRecipient], int]:
    """``mta`` sends luke's message to c3po and r2d2 under ``setup``; its queue once it is
    idle and the receiver stored what it accepted, and how many copies were stored."""
    data = {**setup, "sender": {"mta": mta, "recipients": TWO}}
    scenario = scenario_from_data(data, FIXTURES / "scenarios" / "queue.toml")
    with Lab(scenario.topology) as lab, lab_dns(lab, scenario):
        config = dataclasses.replace(scenario.receiver, maildir=folder / "stored")
        receiver = Receiver(
            config,
            resolve=resolver_for(lab, "receiver"),
            socket_factory=lab.socket_factory("receiver"),
        )
        adapter = adapters()[mta](mta_site(lab, scenario, folder, "sender"), "sender")

        async def exchange() -> list[QueuedRecipient]:
            async with receiver:
                await receiver.start(lab.host("receiver").ipv4, 25)
                await asyncio.to_thread(adapter.start)
                try:
                    message = scenario.sender.message
                    await asyncio.to_thread(adapter.submit, "luke@sender.com", TWO, message)
                    return await asyncio.to_thread(_settled_queue, adapter, receiver)
                finally:
                    await asyncio.to_thread(adapter.stop)

        queue = asyncio.run(exchange())
    return queue, len(receiver.stored)


def _settled_queue(adapter: MtaAdapter, receiver: Receiver) -> list[QueuedRecipient]:
    """The queue once the MTA is idle and every recipient is stored or queued (bounded)."""
    deadline = time.monotonic() + adapter.delivery_timeout_s
    while True:
        queue = adapter.queue()
        if adapter.idle() and len(queue) + len(receiver.stored) >= len(TWO):
            return adapter.queue()
        assert time.monotonic() < deadline, (queue, adapter.last_log_line())
        time.sleep(0.05)


# case -> its setup, the recipients left queued, how many copies the receiver stores, and
# per MTA the words its reason holds and its status code
SENDER_CASES = {
    "servfail": (SERVFAIL, TWO, 0, SERVFAIL_REASONS),
    "rcpt-451": (RCPT_451, ["r2d2@receiver.com"], 1, dict.fromkeys(MTAS, (TRY_LATER, "4.3.0"))),
    "delivered": ({}, [], 2, {}),
}


@pytest.mark.lab
@pytest.mark.parametrize("case", SENDER_CASES)
@pytest.mark.parametrize("mta", MTAS)
def test_as_sender_the_queue_holds_what_was_deferred_with_the_reason(
    mta: str, case: str, folder: Path
) -> None:
    setup, queued, stored, reasons = SENDER_CASES[case]
    queue, copies = _as_sender(mta, setup, folder)
    assert copies == stored
    assert sorted(q.recipient for q in queue) == queued
    assert len({q.queue_id for q in queue}) == min(len(queue), 1) and all(q.queue_id for q in queue)
    for entry in queue:
        reason, code = reasons[mta]
        assert reason in entry.reason, entry
        assert entry.status_code == code


# --- for real: the receiver role --------------------------------------------------------------
def _blocked(adapter: MtaAdapter, user: str) -> None:
    """A mailbox ``adapter`` cannot write: read-only Maildir folders for an MTA that
    delivers as its own user, a file in the way for Sendmail (it delivers as root)."""
    box = adapter.mailboxes / user
    if adapter.name == "sendmail":
        box.write_text("in the way\n")
        return
    for sub in ("", "new", "cur", "tmp"):
        (box / sub).mkdir(exist_ok=True)
        os.chmod(box / sub, 0o555)


@pytest.mark.lab
@pytest.mark.parametrize("block", [False, True], ids=["delivered", "blocked"])
@pytest.mark.parametrize("mta", MTAS)
def test_as_receiver_the_queue_holds_what_it_could_not_deliver(
    mta: str, block: bool, lab: Lab, dns: object, folder: Path
) -> None:
    site = Site(
        lab, "receiver", folder / mta, "mail.receiver.com", "receiver.com", ("c3po", "r2d2")
    )
    adapter = adapters()[mta](site, "receiver")
    seed = load_scenario(None)
    sender = Sender(
        dataclasses.replace(seed.sender, recipients=tuple(TWO), vrfy=False),
        resolve=resolver_for(lab, "sender"),
        socket_factory=lab.socket_factory("sender"),
    )
    with adapter:
        if block:
            _blocked(adapter, "c3po")
        report = asyncio.run(sender.send())
        deadline = time.monotonic() + SETTLE_S
        while not (
            adapter.idle() and adapter.mailbox("r2d2") and len(adapter.queue()) == int(block)
        ):
            assert time.monotonic() < deadline, (adapter.queue(), adapter.last_log_line())
            time.sleep(0.05)
        queue = adapter.queue()
        boxes = [len(adapter.mailbox(user)) for user in ("c3po", "r2d2")]
    assert {o.status for o in report.outcomes.values()} == {"delivered"}  # 250 to both
    if not block:
        assert (queue, boxes) == ([], [1, 1])
        return
    assert boxes == [0, 1]
    [entry] = queue
    where, why = BLOCKED_REASONS[mta]
    assert entry.recipient == "c3po@receiver.com" and entry.queue_id
    assert where in entry.reason and why in entry.reason, entry


# --- a queue that cannot be read --------------------------------------------------------------
def _break(adapter: MtaAdapter) -> str:
    """Make ``adapter``'s queue unreadable for real; the command that will say so."""
    if adapter.name == "opensmtpd":
        adapter.stop()  # its queue lives in its own mount namespace, gone with it
        return "smtpctl show queue"
    config = {"postfix": "etc/main.cf", "exim": "exim.conf", "sendmail": "sendmail.cf"}
    (adapter.folder / config[adapter.name]).unlink()
    return {"postfix": "postqueue -j", "exim": "exim -bp", "sendmail": "sendmail -bp -v"}[
        adapter.name
    ]


@pytest.mark.lab
@pytest.mark.parametrize("mta", MTAS)
def test_an_unreadable_queue_is_an_error_naming_the_command(
    mta: str, lab: Lab, dns: object, folder: Path
) -> None:
    site = Site(lab, "sender", folder / mta, "mail.sender.com", "sender.com", ("luke",))
    with adapters()[mta](site, "sender") as adapter:
        assert adapter.queue() == []
        command = _break(adapter)
        with pytest.raises(QueueUnreadable, match=rf"^{mta}: {command}") as error:
            adapter.queue()
    assert "\n" not in str(error.value)
