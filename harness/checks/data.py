"""Message-content checks: dot-stuffing, line ends and lengths, SMTP smuggling
(RFC 5321 §2.3.8, §4.1.1.4, §4.5.2, §4.5.3.1.6).

Rules kept here:
- Every check requires the message content to have gone on the wire (the smuggling probes:
  the look-alike ending, after a 354).  Judged by what the receiving side stored: the
  body (after the header section, which an MTA extends with trace fields) must be the body
  sent, line ends compared as lines (mailboxes may store LF where the wire had CRLF).
- Smuggling probes run only in the closed lab: our scripted sender sends, inside one
  message, a look-alike end of data followed by a second transaction for r2d2.  Only
  ``<CRLF>.<CRLF>`` ends DATA, so the one conformant result with a 250 is one copy for
  c3po that holds everything up to the real end, the smuggled lines included; refusing
  the whole message (4yz or 5yz: Sendmail's 421 to a bare LF) is conformant too.  Any
  copy for r2d2, a second copy for c3po, or a copy cut at the look-alike is the receiving
  side ending DATA early: fail.
"""

from __future__ import annotations

from harness.checks.base import (
    BOTH,
    RECEIVER,
    SENDER,
    Outcome,
    Precondition,
    Seen,
    Setup,
    check,
    failed,
    passed,
)
from harness.checks.steps import (
    all_exchanges,
    body,
    code,
    dns_questions,
    status,
    stored_for,
    where,
)
from harness.ladder.model import Step, StepKind
from harness.outcome import OutcomeStatus
from harness.result import RunResult
from harness.smtp.events import AnomalyKind

RCPT = "c3po@receiver.com"
VICTIM = "r2d2@receiver.com"
TEXT_LIMIT = 998  # octets before the CRLF (§4.5.3.1.6: 1000 with it)
LOOK_ALIKE = AnomalyKind.SMUGGLING.value  # an anomaly step's detail "anomaly"


def _message(name: str, file: str) -> Setup:
    return Setup(name, {"sender": {"recipients": [RCPT], "message": file}})


DOTS = _message("dots", "dots.eml")
NO_FINAL_CRLF = _message("no-final-crlf", "no-final-crlf.eml")
LINE_998 = _message("line-998", "line-998.eml")
LINE_1500 = _message("line-1500", "line-1500.eml")

SMUGGLED_TEXT = b"smuggled"  # the body of the smuggled message: must stay content
SMUGGLED = (
    "MAIL FROM:<vader@sender.com>\r\nRCPT TO:<r2d2@receiver.com>\r\nDATA\r\n"
    "From: vader@sender.com\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n"
)
PROBES = (  # (id suffix, the look-alike, what it is)
    ("lf-dot-lf", "\n.\n", "<LF>.<LF>"),
    ("lf-dot-crlf", "\n.\r\n", "<LF>.<CR><LF>"),
    ("crlf-dot-lf", "\r\n.\n", "<CR><LF>.<LF>"),
    ("cr-dot-cr", "\r.\r", "<CR>.<CR>"),
    ("crlf-dot-crcrlf", "\r\n.\r\r\n", "<CR><LF>.<CR><CR><LF>"),
)


def _probe(suffix: str, look_alike: str) -> Setup:
    raw = (
        f"From: luke@sender.com\r\nTo: {RCPT}\r\nSubject: probe\r\n\r\n"
        f"before the probe{look_alike}{SMUGGLED}"
    )
    step = {"at": "<message>", "position": "instead", "raw": raw}
    return Setup(f"smuggle-{suffix}", {"sender": {"recipients": [RCPT], "script": [step]}})


def _lines(data: bytes) -> list[bytes]:
    return data.replace(b"\r\n", b"\n").split(b"\n")


def _content_sent(run: RunResult) -> list[Step]:
    """The message contents the client sent, and the replies to them."""
    kinds = (StepKind.CONTENT, StepKind.BDAT)
    sent = [x for x in all_exchanges(run.ladder) if x.unit.kind in kinds]
    return [s for x in sent for s in (x.unit, x.reply) if s is not None]


STORED = "the copies the receiving side stored"
CONTENT_SENT = Precondition("the message content went on the wire", _content_sent, lab=STORED)


def _body_kept(run: RunResult, what: str) -> Outcome:
    """One stored copy whose body is the body sent (the sent one ending in a line break)."""
    sent = body(run.scenario.sender.message)
    copies = stored_for(run, RCPT)
    if len(copies) != 1:
        return failed(f"{len(copies)} stored copies for {RCPT}, want 1")
    if _lines(body(copies[0])) != _lines(sent if sent.endswith(b"\n") else sent + b"\r\n"):
        return failed(f"the stored body differs from the one sent ({what})")
    return passed(f"body stored as sent ({what})")


@check(
    "data.dot-stuffing",
    "Leading dots stuffed on the wire and removed on receipt",
    "RFC 5321 §4.5.2: the client doubles a leading '.', the server removes it",
    BOTH,
    DOTS,
    requires=[CONTENT_SENT],
)
def dot_stuffing(seen: Seen) -> Outcome:
    return _body_kept(seen.run, "lines starting with '.', one a lone '.'")


@check(
    "data.final-crlf",
    "A message without a final line break gets one before the end of data",
    "RFC 5321 §4.1.1.4: the content ends with CRLF before <CRLF>.<CRLF>",
    SENDER,
    NO_FINAL_CRLF,
    requires=[CONTENT_SENT],
)
def final_crlf(seen: Seen) -> Outcome:
    return _body_kept(seen.run, "no final CRLF in the submitted message")


@check(
    "data.text-line-1000",
    "A 998-octet text line (1000 with CRLF) passes intact",
    "RFC 5321 §4.5.3.1.6: a text line is up to 1000 octets, CRLF included",
    BOTH,
    LINE_998,
    requires=[CONTENT_SENT],
)
def text_line_1000(seen: Seen) -> Outcome:
    return _body_kept(seen.run, "a 998-octet line")


def _handled(run: RunResult) -> list[Step]:
    """The content on the wire; or, for a bounce without one, the sender's MX question."""
    sent = _content_sent(run)
    if sent or status(run, RCPT) is not OutcomeStatus.REJECTED:
        return sent
    return dns_questions(run.ladder, "receiver.com", "MX", run.scenario.sender_host)[:1]


@check(
    "data.long-line-sent",
    "No text line over 1000 octets on the wire: wrap, encode or bounce",
    "RFC 5321 §4.5.3.1.6: a client MUST NOT send a text line over 1000 octets",
    SENDER,
    LINE_1500,
    requires=[Precondition("the message went on the wire, or bounced", _handled, lab=STORED)],
)
def long_line_sent(seen: Seen) -> Outcome:
    run = seen.run
    copies = stored_for(run, RCPT)
    longest = max((len(line) for c in copies for line in _lines(c)), default=0)
    if longest > TEXT_LIMIT:
        return failed(f"a {longest}-octet line was sent as is")
    if copies:
        return passed(f"stored with lines of at most {longest} octets")
    return passed("bounced instead of sending an overlong line")


def look_alike_sent(run: RunResult) -> list[Step]:
    """The client's look-alike ending inside content its DATA got 354 for."""
    data = [x for x in all_exchanges(run.ladder) if x.unit.get("verb") == "DATA"]
    opened = [x.reply for x in data if code(x.reply) == 354]
    odd = where(run.ladder, StepKind.ANOMALY, src=run.scenario.sender_host)
    return [
        a
        for a in odd
        if a.get("anomaly") == LOOK_ALIKE
        and any(r is not None and r.conn == a.conn and r.index < a.index for r in opened)
    ][:1]


def smuggling(seen: Seen, name: str) -> Outcome:
    run = seen.run
    victims, copies = stored_for(run, VICTIM), stored_for(run, RCPT)
    if victims or len(copies) > 1:
        return failed(
            f"{name} ended DATA: {len(victims)} smuggled message(s) stored for {VICTIM}, "
            f"{len(copies)} for {RCPT}"
        )
    end = [x for x in all_exchanges(run.ladder) if x.unit.kind == StepKind.CONTENT][:1]
    reply = end[0].reply if end else None
    if copies:
        if SMUGGLED_TEXT not in body(copies[0]):
            return failed(f"{name} ended DATA: the stored copy stops at the look-alike", reply)
        return passed(f"{name} kept as content: one message, smuggled lines inside it", reply)
    if (code(reply) or 0) >= 400:
        return passed(f"message with {name} refused ({code(reply)}); nothing stored", reply)
    return failed(f"message with {name} answered {code(reply)}, but nothing was stored", reply)


for _suffix, _look, _name in PROBES:
    check(
        f"data.smuggle-{_suffix}",
        f"SMTP smuggling probe {_name}: only <CRLF>.<CRLF> ends DATA",
        "RFC 5321 §4.1.1.4: the mail data ends only with <CRLF>.<CRLF>; §2.3.8: bare CR and LF",
        RECEIVER,
        _probe(_suffix, _look),
        requires=[
            Precondition(
                f"the look-alike {_name} on the wire after a 354", look_alike_sent, lab=STORED
            )
        ],
    )(lambda seen, n=_name: smuggling(seen, n))
