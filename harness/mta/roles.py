"""A real MTA in a run: where it runs, how the runner waits for it, what it decided.

Rules kept here:
- ``mta_site`` names the MTA's site from the scenario alone: the role's host, its folder
  ``<run>/<role>-<mta>/`` (absolute: MTAs refuse relative paths in their configuration,
  and a run folder may be given relative), its names, and its knobs (``[receiver]
  vrfy``, ``[role] family``) in ``Site.extra``.  As sender, its one local user is the
  envelope sender's local part (luke): the MTA's bounces stay in that mailbox, off the
  wire.
- Every wait on an MTA is a deadline loop, polling every ``POLL_S``: it ends as soon as
  its condition holds, and at the adapter's own bound (``delivery_timeout_s``) with a
  ``HarnessError`` naming the MTA's log.  The blocking adapter calls run in executor
  threads.
- Outcomes are read, never assumed.  With an MTA as sender, once it is idle its queue is
  read (before it stops: OpenSMTPD's queue lives in its own mount namespace) and its DSNs
  collected (RFC 3464); then a recipient's outcome is, in this order:
  1. a copy stored by the scripted receiver: delivered;
  2. a 5yz from the scripted receiver to the recipient's RCPT or VRFY, to the MAIL of its
     transaction, or to its DATA or end of data once the recipient was accepted: rejected,
     at that stage, with the status code of a DSN that agrees (after a refused MAIL the
     transaction's fate is the MAIL reply's, and after a refused RCPT the recipient's is
     the RCPT reply's: the 503s pipelined behind them decide nothing);
  3. a DSN with ``Action: failed``: rejected, with the DSN's status code;
  4. the recipient in the MTA's queue: deferred, with the reason and status code the MTA
     gives (a ``delayed`` DSN adds its status);
  5. none of these: lost — the queue was read and does not hold it, no DSN came back and
     nothing was stored (RFC 5321 §6.1), a fail of the run; or the MTA's daemon died
     during the run (``MtaDied``: a crash, not stopped by us), and its queue with it.
  A queue that cannot be read is a ``QueueUnreadable``: the harness's fault (an error),
  never a guess.  DSNs are read once the MTA is idle, and for up to its ``bounce_delay_s``
  more while a recipient is neither delivered nor covered by a DSN.
- The scripted receiver's part comes from its own typed records (``Receiver.answered``),
  never from re-reading its log.
- With an MTA as receiver, ``stored`` is every message in every mailbox of its site, read
  once every recipient it accepted has a copy and the MTA is idle (bounded): a message it
  took that the sender did not mean to send (smuggled) is in a mailbox too.
- ``Exchange.mta`` records the MTA for ``run.json``: name, role, upstream and Debian
  versions, every .deb it ran from with its sha256, and the TLS policy in force (the
  role's TLS knobs and what each became in the MTA's own configuration).
"""

from __future__ import annotations

import asyncio
import dataclasses
import email
import functools
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from email.message import Message
from pathlib import Path

from harness.errors import HarnessError, InternalFault
from harness.lab import Lab
from harness.message import Allowance
from harness.mta.base import MtaAdapter, MtaDied, QueuedRecipient, Site, adapters
from harness.outcome import Dsn, Outcome, OutcomeStatus, SendReport
from harness.scenario import Scenario
from harness.smtp.receiver import Answered, Receiver, StoredMessage
from harness.smtp.sender import Sender
from harness.tls.pki import lab_pki

POLL_S = 0.02
LOST = "the queue was read and does not hold it, no DSN came back, nothing was stored"
_STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")  # an RFC 3463 code in a text


@dataclass
class Exchange:
    """What an exchange left for the judge."""

    report: SendReport
    stored: list[StoredMessage]
    receiver_log: list[dict]
    faults: list[InternalFault] = field(default_factory=list)
    mta: dict | None = None
    allowances: dict[str, tuple[Allowance, ...]] = field(default_factory=dict)


def mta_site(lab: Lab, scenario: Scenario, folder: Path, role: str) -> Site:
    """Where the scenario's MTA for ``role`` runs, under which names, with which knobs."""
    knobs = dict(scenario.mta_knobs[role])
    folder = folder.resolve()
    pki = lab_pki(folder / "tls") if needs_tls(knobs) else None
    if role == "receiver":
        conf = scenario.receiver
        name, host, port = scenario.receiver_mta, scenario.receiver_host, scenario.receiver_port
        where = (conf.hostname, conf.domains[0], conf.users)
        own = folder / f"receiver-{name}"
        return Site(lab, host, own, *where, port=port, extra=knobs, pki=pki)
    local, _, domain = scenario.sender.mail_from.rpartition("@")
    where = (scenario.sender.helo_name, domain, (local,))  # bounces stay in its mailbox
    own = folder / f"sender-{scenario.sender_mta}"
    return Site(lab, scenario.sender_host, own, *where, extra=knobs, pki=pki)


def needs_tls(knobs: dict[str, str]) -> bool:
    """Whether an MTA with these knobs takes part in TLS (and so needs the run's PKI)."""
    return knobs.get("tls", "off") != "off" or knobs.get("starttls", "never") != "never"


def _adapter(lab: Lab, scenario: Scenario, folder: Path, role: str) -> MtaAdapter:
    name = scenario.receiver_mta if role == "receiver" else scenario.sender_mta
    assert name is not None
    return adapters()[name](mta_site(lab, scenario, folder, role), role)


def mta_record(mta: MtaAdapter) -> dict:
    """The MTA as ``run.json`` records it."""
    return {
        "name": mta.name,
        "role": mta.role,
        "version": mta.version(),
        "package_version": mta.package_version(),
        "debs": [asdict(deb) for deb in mta.debs()],
        "tls": mta.tls_policy(),
    }


# --- an MTA as receiver ---------------------------------------------------------------------
async def to_mta(lab: Lab, scenario: Scenario, folder: Path, sender: Sender) -> Exchange:
    """The scripted sender delivers to a real MTA; its mailboxes are read back."""
    mta = _adapter(lab, scenario, folder, "receiver")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, mta.start)
    try:
        with mta.waiting("to answer our SMTP session"):
            report = await sender.send()
        stored = await loop.run_in_executor(None, read_back, mta, report)
    finally:
        await loop.run_in_executor(None, mta.stop)
    allow = {"receiver": mta.allowances("receiver")}
    faults = list(sender.internal_faults)
    return Exchange(report, stored, [], faults, mta_record(mta), allow)


def read_back(mta: MtaAdapter, report: SendReport) -> list[StoredMessage]:
    """Every stored message, once each recipient the MTA accepted has its copy and the
    MTA is idle (bounded)."""
    users = {u.lower(): u for u in mta.site.users}
    wanted: dict[str, int] = {}
    for rcpt, outcome in report.outcomes.items():
        local = rcpt.rpartition("@")[0].lower()
        if outcome.status is OutcomeStatus.DELIVERED and local in users:
            wanted[users[local]] = wanted.get(users[local], 0) + 1
    deadline = time.monotonic() + mta.delivery_timeout_s
    while True:
        idle = mta.idle()
        boxes = {user: mta.mailbox(user) for user in mta.site.users}
        copied = all(len(boxes[u]) >= n for u, n in wanted.items())
        if (idle and copied) or time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
    return [
        StoredMessage(f"{user}@{mta.site.domain}", _return_path(data), None, data)
        for user, messages in boxes.items()
        for data in messages
    ]


def _return_path(stored: bytes) -> str:
    """The envelope sender a final delivery recorded in Return-Path (RFC 5321 §4.4)."""
    found = re.match(rb"Return-Path: *<([^>]*)>", stored, re.IGNORECASE)
    return found.group(1).decode("utf-8", "replace") if found else ""


# --- an MTA as sender -----------------------------------------------------------------------
async def from_mta(lab: Lab, scenario: Scenario, folder: Path, receiver: Receiver) -> Exchange:
    """A real MTA delivers the scenario's message by MX to the scripted receiver; the
    outcomes follow the rules above."""
    mta = _adapter(lab, scenario, folder, "sender")
    conf = scenario.sender
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, mta.start)
    died: MtaDied | None = None
    try:
        submit = functools.partial(mta.submit, conf.mail_from, list(conf.recipients), conf.message)
        await loop.run_in_executor(None, submit)
        await settled(mta, receiver)
        stored = {m.recipient.lower() for m in receiver.stored}
        pending = [r for r in conf.recipients if r.lower() not in stored]
        dsns = await loop.run_in_executor(None, bounces, mta, pending)
        queued = await loop.run_in_executor(None, mta.queue)
    except MtaDied as exc:  # its crash: what it had not delivered is lost (rule 5)
        died, dsns, queued = exc, [], []
    finally:
        await loop.run_in_executor(None, mta.stop)
    outcomes = mta_outcomes(conf.recipients, receiver.answered, receiver.stored, dsns, queued)
    if died is not None:
        outcomes = {r: _died(o, died) for r, o in outcomes.items()}
    report = SendReport(outcomes, dsns=dsns)
    allow = {"sender": mta.allowances("sender")}
    return Exchange(report, [], [], [], mta_record(mta), allow)


async def settled(mta: MtaAdapter, receiver: Receiver) -> None:
    """Until the MTA's queue is idle and the receiver's sessions are over (bounded)."""
    loop = asyncio.get_running_loop()
    bound = mta.delivery_timeout_s
    deadline = loop.time() + bound
    with mta.waiting("to deliver (its queue to settle)"):
        while not await loop.run_in_executor(None, mta.idle):
            if loop.time() > deadline:
                raise HarnessError(
                    f"{mta.name}: still delivering after {bound:.0f} s (log: {mta.log_path})"
                )
            await asyncio.sleep(POLL_S)
    try:
        await asyncio.wait_for(receiver.idle(), max(deadline - loop.time(), POLL_S))
    except TimeoutError:
        raise HarnessError(
            f"{mta.name}: its SMTP session did not end (log: {mta.log_path})"
        ) from None


def bounces(mta: MtaAdapter, pending: Iterable[str]) -> list[Dsn]:
    """The DSNs in the sender's mailbox, waiting up to ``bounce_delay_s`` while a
    ``pending`` recipient has none."""
    local = mta.site.users[0]
    wanted = {r.lower() for r in pending}
    deadline = time.monotonic() + mta.bounce_delay_s
    with mta.waiting(f"to bounce {', '.join(sorted(wanted))}"):
        while True:
            found = dsns_in(mta.mailbox(local))
            if wanted <= {d.recipient.lower() for d in found} or time.monotonic() > deadline:
                return found
            time.sleep(POLL_S)


def dsns_in(messages: Iterable[bytes]) -> list[Dsn]:
    """Every per-recipient group of every ``message/delivery-status`` part (RFC 3464 §2.3;
    the email package parses each group of that part as a header block)."""
    found = []
    for message in messages:
        for part in email.message_from_bytes(message).walk():
            if part.get_content_type() == "message/delivery-status":
                found += [_dsn(g) for g in part.get_payload() if g.get("Final-Recipient")]
    return found


def _dsn(fields: Message) -> Dsn:
    recipient = str(fields["Final-Recipient"]).partition(";")[2].strip().strip("<>")
    return Dsn(
        recipient,
        str(fields.get("Action", "")).strip().lower(),
        str(fields.get("Status", "")).strip(),
        " ".join(str(fields.get("Diagnostic-Code", "")).split()),
    )


def mta_outcomes(
    recipients: tuple[str, ...],
    answered: list[Answered],
    stored: list[StoredMessage],
    dsns: list[Dsn],
    queued: list[QueuedRecipient],
) -> dict[str, Outcome]:
    """Per recipient, the outcome of a real MTA's delivery, by the rules above."""
    kept = {m.recipient.lower() for m in stored}
    replies = _session_outcomes(recipients, answered, kept)
    outcomes = {}
    for rcpt in recipients:
        key = rcpt.lower()
        found = [d for d in dsns if d.recipient.lower() == key]
        waiting = [q for q in queued if q.recipient.lower() == key]
        if key in kept:
            outcome = replies.get(key) or Outcome(rcpt, OutcomeStatus.DELIVERED, "<end-of-data>")
        else:
            outcome = _undelivered(rcpt, replies.get(key), found, waiting)
        outcomes[rcpt] = outcome
    return outcomes


def _died(outcome: Outcome, died: MtaDied) -> Outcome:
    """A recipient's outcome once the MTA died: lost, with why, unless it was delivered or
    refused before (rule 5)."""
    if outcome.status is not OutcomeStatus.LOST:
        return outcome
    return dataclasses.replace(outcome, text=f"the MTA died: {died}")


def _undelivered(
    rcpt: str, reply: Outcome | None, dsns: list[Dsn], queued: list[QueuedRecipient]
) -> Outcome:
    """Rules 2-5 for a recipient without a stored copy."""
    failed = [d for d in dsns if d.action == "failed"]
    said = tuple(f"DSN {d.action} {d.status}: {d.diagnostic}".rstrip(": ") for d in dsns)
    if reply is not None and reply.status is OutcomeStatus.REJECTED:  # the reply's stage
        status = next((d.status for d in failed if d.status), reply.status_code)
        return dataclasses.replace(reply, status_code=status, evidence=reply.evidence + said)
    if failed:
        dsn = failed[0]
        return Outcome(rcpt, OutcomeStatus.REJECTED, "dsn", None, dsn.diagnostic, dsn.status, said)
    if queued:
        entry = queued[0]
        status = entry.status_code or next((d.status for d in dsns if d.status), None)
        evidence = (f"queue {entry.queue_id}: {entry.reason}", *said)
        return Outcome(rcpt, OutcomeStatus.DEFERRED, "queue", None, entry.reason, status, evidence)
    return Outcome(rcpt, OutcomeStatus.LOST, "queue", None, LOST, None, said)


def _session_outcomes(
    recipients: tuple[str, ...], answered: list[Answered], kept: set[str]
) -> dict[str, Outcome]:
    """What the scripted receiver's replies decided, by lower-cased recipient; the first
    decision about a recipient stands."""
    decided: dict[str, Outcome] = {}
    named: dict[int, list[str]] = {}  # session -> recipients of its current transaction
    refused: dict[int, bool] = {}  # session -> its current MAIL was refused
    for reply in answered:
        rcpts = named.setdefault(reply.session, [])
        if reply.key == "MAIL":
            refused[reply.session] = reply.code is None or reply.code >= 400
        elif refused.get(reply.session):
            continue  # rule 3: the MAIL reply decided this transaction
        for outcome in _judged(reply, rcpts, recipients, kept):
            decided.setdefault(outcome.recipient.lower(), outcome)
    return decided


_SESSION_WIDE = ("DATA", "<end-of-data>")


def _judged(
    reply: Answered, named: list[str], recipients: tuple[str, ...], kept: set[str]
) -> list[Outcome]:
    """The outcomes one reply of the scripted receiver decides."""
    key, text = reply.key, reply.lines[-1] if reply.lines else ""
    code = 500 if reply.code is None else reply.code  # unreadable: permanent (§4.2.1)
    status = _STATUS.match(text)
    evidence = (f"{key} answered {code} {text}".rstrip(),)
    if key == "MAIL":
        named.clear()
    if key == "RCPT" and reply.address is not None:
        named += [reply.address] if code < 400 else []  # the transaction's accepted ones
        hit = [reply.address] if code >= 500 else []
    elif key == "VRFY" and code >= 500:
        user = (reply.argument or "").strip("<>").lower()
        hit = [r for r in recipients if r.lower().partition("@")[0] == user]
    elif key == "MAIL" and code >= 500:
        hit = list(recipients)
    elif key in _SESSION_WIDE and code >= 500:
        hit = list(named)  # a 503 to DATA after every RCPT was refused decides nothing
    elif key == "<end-of-data>" and code < 300:
        return [
            Outcome(r, OutcomeStatus.DELIVERED, key, code, text, None, evidence)
            for r in named
            if r.lower() in kept
        ]
    else:
        hit = []
    code_of = status.group(1) if status else None
    return [Outcome(r, OutcomeStatus.REJECTED, key, code, text, code_of, evidence) for r in hit]
