"""TCP faults tied to protocol state: a first MX that never answers the SYN, a connection
reset after RCPT, after 354, around the end of data, a client that half-closes after QUIT
(RFC 5321 §5.1, §3.8, §6.1, §4.1.1.10; RFC 1047).

Rules kept here:
- A SYN never answered comes from the lab: a fourth host, ``silent`` (MX 10), whose link
  drops every IP packet it receives (``[[network.faults]]`` ``loss = 1.0``, direction in:
  ARP still answers, so the sender's SYNs go out and are captured, and time out).  The
  sender must then try MX 20 (§5.1: "MUST be able to try (and retry) each of the
  relevant addresses in this list in order, until a delivery attempt succeeds").  A real
  MTA gets ``timeouts = "short"`` (``harness.mta.base.SHORT_TIMEOUTS_S``) so its connect
  timeout fits a run.  The refused first MX (an RST to the SYN) is ``dns.mx-fallback``'s
  setup; how long after its first SYN to MX 10 the sender tried MX 20, after the RST and
  after the silence, is an observation (§5.1 fixes no time): to the nearest second,
  "at once" below half a second.
- The faults come from the scripted peers (``harness/smtp``): the receiver's reply rule
  ``reset`` sends an RST (SO_LINGER 0) once its reply is acknowledged, or instead of it
  (``raw = ""``); the sender's ``half_close`` sends its FIN right after QUIT.
- A connection reset before the message was accepted is, for the sender, a transient
  failure (§3.8: "SMTP clients that experience a connection close, reset, or other
  communications failure ... SHOULD ... treat the mail transaction as if a 451 response
  had been received"): after the 250 to RCPT, after the 354, each accepted recipient is
  deferred (to retry), never delivered (nothing was sent: the message would be lost) nor
  bounced at once.
- A connection reset after the final "." and before its reply leaves the outcome unknown
  to the sender: §6.1 gives it responsibility for the message until a 250 comes, so each
  accepted recipient is deferred (to retry), never delivered (the message might be
  lost: RFC 1047 "a lost message is not acceptable") nor bounced.  After the 250 the
  receiver has the message: each accepted recipient is delivered (deferring it sends
  the message again: a duplicate).
- The recipients judged are those the receiver accepted at RCPT on the connection before
  its RST; the preconditions find the RST (from the receiver, on that connection) right
  after the reply it follows (a 250 to RCPT, the 354, the 250 to the message: no other
  reply of the receiver between them), or after the message and before any reply to it.
- A receiver that stops reading after its 354 (``stop_reading``) closes its window on the
  message (``two-mib.eml``, 2 MiB: more than the kernel buffers both ends hold), and
  answers nothing until its idle timeout (``timeout_ms``, 20 s) sends 421 and an RST.
  The sender gives up before (``timeouts = "short"``: its data timeout, 8 s, where the
  MTA has one) or at that reset: either way a communications failure before the
  message was accepted, so each accepted recipient is deferred, as after a reset (§3.8;
  §4.5.3.2.5 times each send of a chunk of data), never delivered nor bounced.  The
  precondition sees the window closed on the wire: the message never complete there.
- A half-close is the client's FIN after QUIT and before any reply to it; the server
  still MUST send 221 (§4.1.1.10), and only then close.
"""

from __future__ import annotations

from harness.checks.base import (
    QUEUE,
    RECEIVER,
    SENDER,
    Kind,
    Outcome,
    Precondition,
    Seen,
    Setup,
    check,
    cites,
    failed,
    passed,
)
from harness.checks.dns import BOTH_MX, MX_FALLBACK
from harness.checks.steps import (
    accepted_data,
    closes,
    code,
    commands,
    complete,
    contents,
    reply_to,
    syns,
    unlike,
    where,
)
from harness.lab.topology import default_topology
from harness.ladder.model import Step, StepKind
from harness.outcome import OutcomeStatus
from harness.result import RunResult
from harness.smtp.commands import parse_command
from harness.verdict import Verdict

C3PO = "c3po@receiver.com"  # a user of the seed's receiver, the second recipient
SILENT, SILENT_IPV4 = "silent", "192.0.2.26"  # MX 10 of SYN_UNANSWERED: it drops every packet
_SEED_HOSTS = [
    {"name": h.name, "ipv4": h.ipv4, "ipv6": h.ipv6, "fqdn": h.fqdn}
    for h in default_topology().hosts
]
SYN_UNANSWERED = Setup(
    "syn-unanswered",
    {
        "hosts": [*_SEED_HOSTS, {"name": SILENT, "ipv4": SILENT_IPV4}],
        "dns": {
            "records": [
                "receiver.com. MX 10 silent.receiver.com.",
                "receiver.com. MX 20 mail.receiver.com.",
                f"silent.receiver.com. A {SILENT_IPV4}",
            ]
        },
        "network": {"faults": [{"host": SILENT, "direction": "in", "loss": 1.0}], "seed": 1},
        "sender": {"recipients": [C3PO], "timeouts": "short"},
    },
)

RESET_AFTER_RCPT = Setup(
    "reset-after-rcpt",
    by_role={
        "sender": {"receiver": {"replies": [{"on": "RCPT", "argument": C3PO, "reset": True}]}}
    },
)
RESET_AFTER_354 = Setup(
    "reset-after-354",
    by_role={"sender": {"receiver": {"replies": [{"on": "DATA", "reset": True}]}}},
)
RESET_BEFORE_250 = Setup(
    "reset-instead-of-250",
    by_role={
        "sender": {"receiver": {"replies": [{"on": "<end-of-data>", "raw": "", "reset": True}]}}
    },
)
RESET_AFTER_250 = Setup(
    "reset-after-250",
    by_role={"sender": {"receiver": {"replies": [{"on": "<end-of-data>", "reset": True}]}}},
)
ZERO_WINDOW = Setup(
    "zero-window-data",
    {"sender": {"recipients": [C3PO], "message": "two-mib.eml", "timeouts": "short"}},
    by_role={
        "sender": {
            "receiver": {
                "timeout_ms": 20000,
                "replies": [{"on": "DATA", "stop_reading": True}],
            }
        }
    },
)
HALF_CLOSE = Setup("half-close", by_role={"receiver": {"sender": {"half_close": True}}})


def _unanswered_syn(run: RunResult) -> list[Step]:
    """[the sender's first SYN to the silent host] when nothing ever came back from it."""
    tried = syns(run, SILENT)
    answers = [s for s in run.ladder.steps if s.src == SILENT]
    return tried[:1] if tried and not answers else []


def _refused_syn(run: RunResult) -> list[Step]:
    """[the sender's first SYN to MX 10, the RST that refused it] (``MX_FALLBACK``)."""
    dead = run.scenario.topology.dns_host
    for syn in syns(run, dead):
        rst = next((s for s in closes(run.ladder, syn.conn) if _reset_by(s, dead)), None)
        if rst is not None:
            return [syn, rst]
    return []


def _next_mx_syn(run: RunResult, first: Step) -> Step | None:
    """The sender's first SYN to MX 20 (the scenario's receiver) after ``first``."""
    later = syns(run, run.scenario.receiver_host)
    return next((s for s in later if s.index > first.index), None)


@check(
    "tcp.syn-unanswered-next-mx",
    "Next MX when the first never answers the SYN",
    'RFC 5321 §5.1: "the SMTP client MUST be able to try (and retry) each of the relevant '
    'addresses in this list in order, until a delivery attempt succeeds"',
    SENDER,
    SYN_UNANSWERED,
    requires=[BOTH_MX, Precondition("a SYN to MX 10 that was never answered", _unanswered_syn)],
)
def syn_unanswered_next_mx(seen: Seen) -> Outcome:
    run = seen.run
    first = seen.found[1][0]
    syn = _next_mx_syn(run, first)
    if syn is None:
        return failed("MX 10 never answered and MX 20 was never tried", first)
    done = accepted_data(run.ladder)
    if not done or done[0].reply.index < syn.index:
        return failed("MX 20 was tried, but it did not take the message", first, syn)
    wrong = unlike(run, OutcomeStatus.DELIVERED)
    if wrong:
        return failed(f"MX 20 took the message, yet {wrong}; want delivered", syn, done[0].reply)
    return passed("MX 10 never answered; MX 20 took the message", first, syn, done[0].reply)


def _waited(run: RunResult, first: Step) -> tuple[str, Step | None]:
    """How long after ``first`` the sender tried MX 20 ("at once", "5 s", "never"), and
    its SYN there."""
    syn = _next_mx_syn(run, first)
    if syn is None:
        return "never", None
    seconds = round((syn.time - first.time) / 1e9)  # OpenSMTPD's 2 s after an RST: 1.999
    return ("at once" if seconds < 1 else f"{seconds} s"), syn


@check(
    "tcp.next-mx-delay",
    "How soon the next MX is tried: after an RST to the SYN, after a SYN never answered",
    'RFC 5321 §5.1: "the SMTP client MUST be able to try (and retry) each of the relevant '
    'addresses in this list in order"; when, it does not say',
    SENDER,
    MX_FALLBACK,
    SYN_UNANSWERED,
    requires=[
        Precondition("a SYN to MX 10 refused with an RST", _refused_syn),
        Precondition("a SYN to MX 10 that was never answered", _unanswered_syn, run=1),
    ],
    kind=Kind.OBSERVATION,
)
def next_mx_delay(seen: Seen) -> Outcome:
    firsts = (seen.found[0][0], seen.found[1][0])
    waits = [_waited(run, first) for run, first in zip(seen.runs, firsts, strict=True)]
    value = f"after an RST: {waits[0][0]}; after no answer: {waits[1][0]}"
    evidence = [cite for n, (_, syn) in enumerate(waits) for cite in cites([syn], run=n)]
    note = "the first SYN to MX 20, counted from the first to MX 10"
    return Outcome(Verdict.OBSERVED, tuple(evidence), note, value)


def _receiver_reset(run: RunResult, after: Step) -> Step | None:
    """The receiver's RST on the connection of ``after``, later than it."""
    server = run.scenario.receiver_host
    ends = closes(run.ladder, after.conn)
    return next((s for s in ends if s.index > after.index and _reset_by(s, server)), None)


RESET = (StepKind.RST,)  # what every reset check needs in a ladder


def _reset_by(step: Step, host: str) -> bool:
    return step.kind == StepKind.RST and step.src == host


def _reset_right_after(run: RunResult, sent: list[Step], wanted: int) -> list[Step]:
    """[the step, its reply, the receiver's RST] for the first of ``sent`` answered
    ``wanted`` and then reset with no other reply of the receiver between; [] if none."""
    server = run.scenario.receiver_host
    for step in sent:
        reply = reply_to(run.ladder, step)
        if code(reply) != wanted:
            continue
        rst = _receiver_reset(run, reply)
        between = where(run.ladder, StepKind.REPLY, conn=step.conn, src=server)
        if rst is not None and not [r for r in between if reply.index < r.index < rst.index]:
            return [step, reply, rst]
    return []


def _reset_after_rcpt(run: RunResult) -> list[Step]:
    return _reset_right_after(run, commands(run.ladder, "RCPT"), 250)


def _reset_after_354(run: RunResult) -> list[Step]:
    return _reset_right_after(run, commands(run.ladder, "DATA"), 354)


def _reset_before_reply(run: RunResult) -> list[Step]:
    """[the content, the receiver's RST] of the first message reset before any reply."""
    for content in contents(run.ladder):
        reply = reply_to(run.ladder, content)
        rst = _receiver_reset(run, content)
        if rst is not None and (reply is None or reply.index > rst.index):
            return [content, rst]
    return []


def _reset_after_250(run: RunResult) -> list[Step]:
    return _reset_right_after(run, contents(run.ladder), 250)


def _accepted(run: RunResult, rst: Step) -> list[str]:
    """The recipients the receiver accepted at RCPT on the connection of ``rst``, before it."""
    out = []
    for rcpt in commands(run.ladder, "RCPT"):
        reply = reply_to(run.ladder, rcpt)
        answered = code(reply) or 0  # None: a pipelined RCPT the reset left unanswered
        if rcpt.conn == rst.conn and rcpt.index < rst.index and answered // 100 == 2:
            out.append(parse_command(rcpt.text.encode("utf-8", "surrogateescape")).address)
    return [a for a in out if a]


def _deferred_after(seen: Seen, what: str) -> Outcome:
    """§3.8: each recipient accepted before ``what`` (the last step found: the receiver's
    RST, or the 354 it stopped reading after) is deferred, as after a 451; the outcome
    cites every step found."""
    found = seen.found[0]
    accepted = _accepted(seen.run, found[-1])
    if not accepted:
        return failed(f"no recipient was accepted at RCPT before {what}", *found)
    wrong = unlike(seen.run, dict.fromkeys(accepted, OutcomeStatus.DEFERRED))
    if wrong:
        return failed(f"after {what}: {wrong}; want deferred", *found)
    return passed(f"{', '.join(accepted)} deferred after {what}", *found)


SECTION_3_8 = (
    'RFC 5321 §3.8: a client that meets a connection close or reset "SHOULD ... treat the '
    'mail transaction as if a 451 response had been received"; RFC 1047: a lost message is '
    "not acceptable"
)


@check(
    "tcp.reset-after-rcpt",
    "A reset after the 250 to RCPT defers; it neither delivers nor bounces",
    SECTION_3_8,
    SENDER,
    RESET_AFTER_RCPT,
    requires=[
        Precondition(
            "a 250 to RCPT, then the receiver's RST", _reset_after_rcpt, lab=QUEUE, needs=RESET
        )
    ],
)
def reset_after_rcpt(seen: Seen) -> Outcome:
    return _deferred_after(seen, "the reset after the 250 to RCPT")


@check(
    "tcp.reset-after-354",
    "A reset after the 354 to DATA defers; it neither delivers nor bounces",
    SECTION_3_8,
    SENDER,
    RESET_AFTER_354,
    requires=[
        Precondition(
            "a 354 to DATA, then the receiver's RST", _reset_after_354, lab=QUEUE, needs=RESET
        )
    ],
)
def reset_after_354(seen: Seen) -> Outcome:
    return _deferred_after(seen, "the reset after the 354")


def _window_closed(run: RunResult) -> list[Step]:
    """[DATA, its 354] when the message never got complete on the wire after it, and no
    reply but a 421 (the receiver's idle timeout) came on that connection."""
    server = run.scenario.receiver_host
    for data in commands(run.ladder, "DATA"):
        reply = reply_to(run.ladder, data)
        if code(reply) != 354:
            continue
        later = where(run.ladder, StepKind.REPLY, conn=data.conn, src=server)
        sent = where(run.ladder, StepKind.CONTENT, conn=data.conn)
        if any(complete(c) for c in sent if c.index > reply.index):
            continue
        if all(code(r) == 421 for r in later if r.index > reply.index):
            return [data, reply]
    return []


@check(
    "tcp.zero-window-data",
    "A receiver that stops reading after the 354: deferred, neither delivered nor bounced",
    SECTION_3_8
    + "; RFC 5321 §4.5.3.2.5: the client's DATA block timeout runs \"while awaiting the "
    'completion of each TCP SEND call transmitting a chunk of data"',
    SENDER,
    ZERO_WINDOW,
    requires=[
        Precondition(
            "a 354 to DATA, then the message never complete on the wire (a closed window) "
            "and no reply to it",
            _window_closed,
            lab=QUEUE,
            codes=(354,),
        )
    ],
)
def zero_window_data(seen: Seen) -> Outcome:
    return _deferred_after(seen, "the receiver stopped reading at its 354")


@check(
    "tcp.reset-before-250",
    "A reset after the final '.' and before its reply defers; it neither delivers nor bounces",
    "RFC 5321 §6.1: the sender keeps the message until the 250; RFC 1047: a duplicate is "
    "possible, a lost message is not acceptable",
    SENDER,
    RESET_BEFORE_250,
    requires=[
        Precondition(
            "the message, then the receiver's RST before any reply",
            _reset_before_reply,
            lab=QUEUE,
            needs=RESET,
        )
    ],
)
def reset_before_250(seen: Seen) -> Outcome:
    return _deferred_after(seen, "the reset before the 250")


@check(
    "tcp.reset-after-250",
    "A reset after the 250 to the message: delivered, never sent again",
    "RFC 5321 §6.1: with the 250 the receiver has accepted responsibility for the message",
    SENDER,
    RESET_AFTER_250,
    requires=[
        Precondition(
            "a 250 to the message, then the receiver's RST",
            _reset_after_250,
            lab=QUEUE,
            needs=RESET,
        )
    ],
)
def reset_after_250(seen: Seen) -> Outcome:
    run = seen.run
    content, reply, rst = seen.found[0]
    accepted = _accepted(run, rst)
    if not accepted:
        return failed("no recipient was accepted at RCPT before the message", content)
    wrong = unlike(run, dict.fromkeys(accepted, OutcomeStatus.DELIVERED))
    if wrong:
        return failed(f"after the 250 and a reset: {wrong}; want delivered", reply, rst)
    return passed(f"{', '.join(accepted)} delivered; the reset came after the 250", reply, rst)


def _half_closed(run: RunResult) -> list[Step]:
    """[QUIT, the client's FIN] when the FIN came before any reply to QUIT."""
    client = run.scenario.sender_host
    for quit_ in commands(run.ladder, "QUIT"):
        reply = reply_to(run.ladder, quit_)
        fin = next(
            (s for s in where(run.ladder, StepKind.FIN, conn=quit_.conn) if s.src == client), None
        )
        if (
            fin is not None
            and fin.index > quit_.index
            and (reply is None or reply.index > fin.index)
        ):
            return [quit_, fin]
    return []


@check(
    "tcp.half-close-221",
    "After QUIT and the client's FIN (a half-close), still a 221",
    "RFC 5321 §4.1.1.10: the receiver MUST send a 221 reply to QUIT; §3.8",
    RECEIVER,
    HALF_CLOSE,
    requires=[Precondition("QUIT, then the client's FIN before any reply", _half_closed)],
)
def half_close_221(seen: Seen) -> Outcome:
    run = seen.run
    quit_, fin = seen.found[0]
    reply = reply_to(run.ladder, quit_)
    if code(reply) != 221:
        return failed(f"QUIT after a half-close was answered {code(reply)}, not 221", quit_, fin)
    return passed("221 after the half-close", quit_, fin, reply)
