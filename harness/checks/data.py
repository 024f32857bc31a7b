"""Message-content checks: dot-stuffing, line ends and lengths, SMTP smuggling
(RFC 5321 §2.3.8, §4.1.1.4, §4.5.2, §4.5.3.1.6).

Rules kept here:
- Judged by what the receiving side stored: the body (after the header section, which an
  MTA extends with trace fields) must be the body sent, line ends compared as lines
  (mailboxes may store LF where the wire had CRLF).
- Smuggling probes run only in the closed lab: our scripted sender sends, inside one
  message, a look-alike end of data followed by a second transaction for r2d2.  Only
  ``<CRLF>.<CRLF>`` ends DATA, so any copy stored for r2d2, or a second copy for c3po,
  is the receiving side cutting the message at the look-alike: fail.
"""

from __future__ import annotations

from harness.checks.base import (
    BOTH,
    RECEIVER,
    SENDER,
    Outcome,
    Setup,
    check,
    failed,
    not_applicable,
    passed,
)
from harness.checks.steps import all_exchanges, body, statuses, stored_for, where
from harness.runner import RunResult

RCPT = "c3po@receiver.com"
VICTIM = "r2d2@receiver.com"
TEXT_LIMIT = 998  # octets before the CRLF (§4.5.3.1.6: 1000 with it)


def _message(name: str, file: str) -> Setup:
    return Setup(name, {"sender": {"recipients": [RCPT], "message": file}})


DOTS = _message("dots", "dots.eml")
NO_FINAL_CRLF = _message("no-final-crlf", "no-final-crlf.eml")
LINE_998 = _message("line-998", "line-998.eml")
LINE_1500 = _message("line-1500", "line-1500.eml")

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


def _content(run: RunResult) -> list[int]:
    """The client's anomalies, the message content and the replies to it."""
    odd = [s.index for s in where(run.ladder, "anomaly", src=run.scenario.sender_host)]
    sent = [x for x in all_exchanges(run.ladder) if x.unit.kind in ("content", "bdat")]
    return sorted(odd + [s.index for x in sent for s in (x.unit, x.reply) if s])


def _body_kept(run: RunResult, what: str) -> Outcome:
    """One stored copy whose body is the body sent (the sent one ending in a line break)."""
    sent = body(run.scenario.sender.message)
    copies = stored_for(run, RCPT)
    if len(copies) != 1:
        return failed(f"{len(copies)} stored copies, want 1", *_content(run))
    if _lines(body(copies[0])) != _lines(sent if sent.endswith(b"\n") else sent + b"\r\n"):
        return failed(f"the stored body differs from the one sent ({what})", *_content(run))
    return passed(f"body stored as sent ({what})", *_content(run))


@check(
    "data.dot-stuffing",
    "Leading dots stuffed on the wire and removed on receipt",
    "RFC 5321 §4.5.2",
    BOTH,
    DOTS,
)
def dot_stuffing(run: RunResult) -> Outcome:
    return _body_kept(run, "lines starting with '.', one a lone '.'")


@check(
    "data.final-crlf",
    "A message without a final line break gets one before the end of data",
    "RFC 5321 §4.1.1.4",
    SENDER,
    NO_FINAL_CRLF,
)
def final_crlf(run: RunResult) -> Outcome:
    return _body_kept(run, "no final CRLF in the submitted message")


@check(
    "data.text-line-1000",
    "A 998-octet text line (1000 with CRLF) passes intact",
    "RFC 5321 §4.5.3.1.6",
    BOTH,
    LINE_998,
)
def text_line_1000(run: RunResult) -> Outcome:
    return _body_kept(run, "a 998-octet line")


@check(
    "data.long-line-sent",
    "No text line over 1000 octets on the wire: wrap, encode or bounce",
    "RFC 5321 §4.5.3.1.6",
    SENDER,
    LINE_1500,
)
def long_line_sent(run: RunResult) -> Outcome:
    copies = stored_for(run, RCPT)
    longest = max((len(line) for c in copies for line in _lines(c)), default=0)
    if longest > TEXT_LIMIT:
        return failed(f"a {longest}-octet line was sent as is", *_content(run))
    if copies:
        return passed(f"stored with lines of at most {longest} octets", *_content(run))
    if statuses(run)[RCPT] == "rejected":
        return passed("bounced instead of sending an overlong line")
    return not_applicable("the message was neither stored nor bounced")


def _smuggling(run: RunResult, name: str) -> Outcome:
    victims = stored_for(run, VICTIM)
    copies = stored_for(run, RCPT)
    if victims or len(copies) > 1:
        return failed(
            f"{name} ended DATA: {len(victims)} smuggled message(s) stored for {VICTIM}",
            *_content(run),
        )
    if copies:
        return passed(f"{name} kept as content: one message, nothing smuggled", *_content(run))
    return passed(f"{name}: message refused, nothing smuggled", *_content(run))


for _suffix, _look_alike, _name in PROBES:
    check(
        f"data.smuggle-{_suffix}",
        f"SMTP smuggling probe {_name}: only <CRLF>.<CRLF> ends DATA",
        "RFC 5321 §4.1.1.4, §2.3.8",
        RECEIVER,
        _probe(_suffix, _look_alike),
    )(lambda run, n=_name: _smuggling(run, n))
