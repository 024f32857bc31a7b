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
- With an MTA as sender, a recipient's outcome is decided, in this order, by:
  1. a copy stored by the scripted receiver: delivered;
  2. the MTA's own DSNs in the sender's mailbox (RFC 3464 ``message/delivery-status``,
     matched on ``Final-Recipient``): ``Action: failed`` -> rejected, ``delayed`` ->
     deferred (failed wins over delayed);
  3. the scripted receiver's replies: a 5yz to the recipient's RCPT or VRFY, or to the
     MAIL, DATA or end of data of its transaction -> rejected.  After a refused MAIL the
     transaction's fate is the MAIL reply's: the 503s to RCPTs pipelined behind it decide
     nothing.  Where a DSN says the same, the reply is kept (its stage and code are the
     better evidence);
  4. otherwise deferred, stage "queue": still in the MTA's queue.
  DSNs are read once the MTA is idle, and for up to its ``bounce_delay_s`` more while a
  recipient is neither delivered nor covered by a DSN (bounces made asynchronously).
- With an MTA as receiver, ``stored`` is read back from its mailboxes once every
  recipient it accepted has a copy and the MTA is idle: a message it took that the
  sender did not mean to send (smuggled) is in a mailbox too (bounded by
  ``delivery_timeout_s``).
"""

from __future__ import annotations

import asyncio
import email
import functools
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

from harness.errors import HarnessError
from harness.lab import Lab
from harness.mta.base import MtaAdapter, Site, adapters
from harness.scenario import Scenario
from harness.smtp.receiver import Receiver, StoredMessage
from harness.smtp.sender import Outcome, SendReport

POLL_S = 0.02
DSN_ACTIONS = {"failed": "rejected", "delayed": "deferred"}  # RFC 3464 §2.3.3 -> outcome
QUEUED = "not delivered, no DSN: still in the MTA's queue"


@dataclass
class Exchange:
    """What an exchange left for the judge."""

    report: SendReport
    stored: list[StoredMessage]
    receiver_log: list[dict]
    as_sent: Callable[[bytes], bytes] = bytes


def mta_site(lab: Lab, scenario: Scenario, folder: Path, role: str) -> Site:
    """Where the scenario's MTA for ``role`` runs, under which names, with which knobs."""
    knobs = dict(scenario.mta_knobs[role])
    folder = folder.resolve()
    if role == "receiver":
        conf = scenario.receiver
        name, host, port = scenario.receiver_mta, scenario.receiver_host, scenario.receiver_port
        where = (conf.hostname, conf.domains[0], conf.users)
        return Site(lab, host, folder / f"receiver-{name}", *where, port=port, extra=knobs)
    local, _, domain = scenario.sender.mail_from.rpartition("@")
    where = (scenario.sender.helo_name, domain, (local,))  # bounces stay in its mailbox
    own = folder / f"sender-{scenario.sender_mta}"
    return Site(lab, scenario.sender_host, own, *where, extra=knobs)


def _adapter(lab: Lab, scenario: Scenario, folder: Path, role: str) -> MtaAdapter:
    name = scenario.receiver_mta if role == "receiver" else scenario.sender_mta
    assert name is not None
    return adapters()[name](mta_site(lab, scenario, folder, role), role)


# --- an MTA as receiver ---------------------------------------------------------------------
async def to_mta(
    lab: Lab, scenario: Scenario, folder: Path, send: Callable[[], Awaitable[SendReport]]
) -> Exchange:
    """``send`` (the scripted sender) delivers to a real MTA; its mailboxes are read back."""
    mta = _adapter(lab, scenario, folder, "receiver")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, mta.start)
    try:
        report = await send()
        stored = await loop.run_in_executor(None, read_back, mta, report)
    finally:
        await loop.run_in_executor(None, mta.stop)
    return Exchange(report, stored, [], mta.as_sent)


def read_back(mta: MtaAdapter, report: SendReport) -> list[StoredMessage]:
    """Every stored message, once each recipient the MTA accepted has its copy and the
    MTA is idle (bounded)."""
    users = {u.lower(): u for u in mta.site.users}
    wanted: dict[str, int] = {}
    for rcpt, outcome in report.outcomes.items():
        local = rcpt.rpartition("@")[0].lower()
        if outcome.status == "delivered" and local in users:
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
async def from_mta(
    lab: Lab, scenario: Scenario, folder: Path, receiver: Receiver
) -> tuple[SendReport, Callable[[bytes], bytes]]:
    """A real MTA delivers the scenario's message by MX to the scripted receiver; the
    outcomes follow the rules above."""
    mta = _adapter(lab, scenario, folder, "sender")
    conf = scenario.sender
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, mta.start)
    try:
        submit = functools.partial(mta.submit, conf.mail_from, list(conf.recipients), conf.message)
        await loop.run_in_executor(None, submit)
        await settled(mta, receiver)
        stored = {m.recipient.lower() for m in receiver.stored}
        pending = [r for r in conf.recipients if r.lower() not in stored]
        dsns = await loop.run_in_executor(None, bounces, mta, pending)
    finally:
        await loop.run_in_executor(None, mta.stop)
    outcomes = mta_outcomes(conf.recipients, receiver.log.entries, receiver.stored, dsns)
    return SendReport(outcomes, []), mta.as_sent


async def settled(mta: MtaAdapter, receiver: Receiver) -> None:
    """Until the MTA's queue is idle and the receiver's sessions are over (bounded)."""
    loop = asyncio.get_running_loop()
    bound = mta.delivery_timeout_s
    deadline = loop.time() + bound
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


def bounces(mta: MtaAdapter, pending: Iterable[str]) -> dict[str, Outcome]:
    """The DSN outcomes in the sender's mailbox, waiting up to ``bounce_delay_s`` while
    a ``pending`` recipient has none."""
    local = mta.site.users[0]
    wanted = {r.lower() for r in pending}
    deadline = time.monotonic() + mta.bounce_delay_s
    while True:
        found = dsn_outcomes(mta.mailbox(local))
        if wanted <= set(found) or time.monotonic() > deadline:
            return found
        time.sleep(POLL_S)


def dsn_outcomes(messages: Iterable[bytes]) -> dict[str, Outcome]:
    """Lower-cased recipient -> the outcome its DSNs report (failed wins over delayed)."""
    found: dict[str, Outcome] = {}
    for message in messages:
        for fields in _recipient_fields(email.message_from_bytes(message)):
            outcome = _dsn_outcome(fields)
            if outcome is None:
                continue
            key = outcome.recipient.lower()
            if key not in found or outcome.status == "rejected":
                found[key] = outcome
    return found


def _recipient_fields(message: Message) -> list[Message]:
    """The per-recipient field groups of every ``message/delivery-status`` part (the
    email package parses each group of that part as a header block)."""
    groups = []
    for part in message.walk():
        if part.get_content_type() == "message/delivery-status":
            groups += [g for g in part.get_payload() if g.get("Final-Recipient")]
    return groups


def _dsn_outcome(fields: Message) -> Outcome | None:
    action = str(fields.get("Action", "")).strip().lower()
    status = DSN_ACTIONS.get(action)
    if status is None:  # delivered, relayed, expanded: not a failure
        return None
    recipient = str(fields["Final-Recipient"]).partition(";")[2].strip().strip("<>")
    code = str(fields.get("Status", "")).strip()
    diagnostic = " ".join(str(fields.get("Diagnostic-Code", "")).split())
    text = f"DSN {action} {code}" + (f": {diagnostic}" if diagnostic else "")
    return Outcome(recipient, status, "dsn", None, text)


_ADDRESS = re.compile(r"<([^>]*)>")
_SESSION_WIDE = ("MAIL", "DATA", "<end-of-data>")


def mta_outcomes(
    recipients: tuple[str, ...],
    log: list[dict],
    stored: list[StoredMessage],
    dsns: dict[str, Outcome],
) -> dict[str, Outcome]:
    """Per recipient, the outcome of a real MTA's delivery, by the rules above."""
    kept = {m.recipient.lower() for m in stored}
    judged = _session_outcomes(recipients, log, kept)
    outcomes = {}
    for rcpt in recipients:
        key = rcpt.lower()
        if key in kept:
            outcome = judged.get(key, Outcome(rcpt, "delivered", "<end-of-data>"))
        else:
            outcome = _decided(judged.get(key), dsns.get(key), rcpt)
        outcomes[rcpt] = outcome
    return outcomes


def _decided(judged: Outcome | None, dsn: Outcome | None, rcpt: str) -> Outcome:
    """Rules 2-4 for a recipient without a stored copy."""
    if judged is not None and (dsn is None or dsn.status == judged.status):
        return judged
    return dsn or Outcome(rcpt, "deferred", "queue", text=QUEUED)


def _session_outcomes(
    recipients: tuple[str, ...], log: list[dict], kept: set[str]
) -> dict[str, Outcome]:
    """What the scripted receiver's replies decided, by lower-cased recipient; the first
    decision about a recipient stands."""
    decided: dict[str, Outcome] = {}
    named: dict[int, list[str]] = {}  # session -> recipients of its current transaction
    last: dict[int, str] = {}  # session -> its last command line
    refused: dict[int, bool] = {}  # session -> its current MAIL was refused
    for entry in log:
        session = entry.get("session", 0)
        if entry["kind"] == "command":
            last[session] = entry["line"]
        elif entry["kind"] == "reply":
            rcpts = named.setdefault(session, [])
            if entry["to"] == "MAIL":
                refused[session] = int(entry["lines"][-1][:3]) >= 400
            if refused.get(session) and entry["to"] != "MAIL":
                continue  # rule 3: the MAIL reply decided this transaction
            for outcome in _judged(entry, last.get(session, ""), rcpts, recipients, kept):
                decided.setdefault(outcome.recipient.lower(), outcome)
    return decided


def _judged(
    reply: dict, line: str, named: list[str], recipients: tuple[str, ...], kept: set[str]
) -> list[Outcome]:
    """The outcomes one reply of the scripted receiver decides."""
    key, last = reply["to"], reply["lines"][-1]
    code, text = int(last[:3]), last[4:]
    address = _ADDRESS.search(line)
    if key == "MAIL":
        named.clear()
    if key == "RCPT" and address:
        named.append(address.group(1))
        hit = [address.group(1)] if code >= 500 else []
    elif key == "VRFY" and code >= 500:
        user = line.partition(" ")[2].strip("<>").lower()
        hit = [r for r in recipients if r.lower().partition("@")[0] == user]
    elif key in _SESSION_WIDE and code >= 500:
        hit = list(named) or list(recipients)
    elif key == "<end-of-data>" and code < 300:
        return [Outcome(r, "delivered", key, code, text) for r in named if r.lower() in kept]
    else:
        hit = []
    return [Outcome(r, "rejected", key, code, text) for r in hit]
