"""DNS checks: how the sender finds the receiving host (RFC 5321 §5.1, RFC 7505, RFC 2181)
and when the receiver asks for the client's PTR (RFC 5321 §4.1.4).

Rules kept here:
- The lab has one SMTP receiver (192.0.2.25); an MX host that must fail points at the DNS
  host's address (192.0.2.53), where nothing listens on port 25, so its SYN meets a RST:
  "cannot be reached", the next MX is due at once (§5.1).
- DNS data is written as extra records (``[dns] records``, replacing the RRsets they name),
  fault rules (``[[dns.faults]]``) and served glue (``[dns] glue``); the seed's zones stay
  as they are.  Glue is judged with a trap: the MX answer's additional section gives
  ``TRAP``, an address no lab host has, while the MX host's own A is the receiver's.
- Outcomes that only the sender knows (bounced or queued) come from the run's report.
"""

from __future__ import annotations

from harness.checks.base import (
    RECEIVER,
    SEED,
    SENDER,
    Outcome,
    Setup,
    check,
    failed,
    known,
    not_applicable,
    passed,
)
from harness.checks.steps import (
    accepted_data,
    answer_to,
    code,
    dns_questions,
    greeting,
    reply_to,
    smtp_conns,
    statuses,
    syns,
    where,
)
from harness.runner import RunResult

DEAD = "down.receiver.com. A 192.0.2.53"  # an MX host with nothing on port 25: RST
TRAP = "192.0.2.99"  # inconsistent glue: a SYN there (or none at all) means glue was trusted
ONE = {"recipients": ["c3po@receiver.com"]}


def _mx(*records: str, **sender: object) -> dict:
    return {"dns": {"records": list(records)}, "sender": {**ONE, **sender}}


def _fault(action: str, *records: str) -> dict:
    fault = {"name": "receiver.com", "type": "MX", "action": action}
    return {"dns": {"faults": [fault], "records": list(records)}, "sender": ONE}


MX_PREFERENCE = Setup(
    "mx-preference",
    _mx("receiver.com. MX 20 down.receiver.com.", "receiver.com. MX 10 mail.receiver.com.", DEAD),
)
MX_FALLBACK = Setup(
    "mx-fallback",
    _mx("receiver.com. MX 20 mail.receiver.com.", "receiver.com. MX 10 down.receiver.com.", DEAD),
)
IMPLICIT_MX = Setup(
    "implicit-mx",
    {
        "dns": {"records": ["implicit.receiver.com. A 192.0.2.25"]},
        "receiver": {"domains": ["receiver.com", "implicit.receiver.com"]},
        "sender": {"recipients": ["c3po@implicit.receiver.com"]},
    },
)
MX_ONLY = Setup(
    "mx-without-implicit",
    _mx("receiver.com. MX 10 down.receiver.com.", DEAD, "receiver.com. A 192.0.2.25"),
)
NULL_MX = Setup("null-mx", _mx("receiver.com. MX 0 ."))
NXDOMAIN = Setup("nxdomain", {"sender": {"recipients": ["c3po@nosuch.receiver.com"]}})
SERVFAIL = Setup("servfail", _fault("servfail", "receiver.com. A 192.0.2.25"))
TIMEOUT = Setup("dns-timeout", _fault("drop", "receiver.com. A 192.0.2.25"))
TRUNCATED = Setup("truncated", _fault("truncate"))
GLUE_TRAP = Setup("glue-trap", {"dns": {"glue": {"mail.receiver.com": TRAP}}, "sender": ONE})
HELO_MISMATCH = Setup("helo-mismatch", {"sender": {"helo": "mail.elsewhere.example"}})


def _delivered(run: RunResult) -> int | None:
    """The step of the first 2yz to a message on the receiver, if any."""
    done = accepted_data(run.ladder)
    return done[0].reply.index if done and done[0].reply else None


def _no_connection(run: RunResult, wanted: str, why: str) -> Outcome:
    """No SYN at all, and every recipient ends ``wanted`` (rejected or deferred)."""
    host = run.scenario.sender_host
    asked = where(run.ladder, "dns-query", src=host) + where(run.ladder, "dns-answer", dst=host)
    answers = sorted(s.index for s in asked)
    tried = syns(run)
    if tried:
        return failed(f"connected although {why}", *answers, tried[0].index)
    got = statuses(run)
    wrong = {r: s for r, s in got.items() if s != wanted}
    if wrong:
        return failed(f"{why}, yet {wrong} instead of {wanted}", *answers)
    return passed(f"{why}: no connection, {wanted}", *answers)


@check("dns.mx-preference", "Lowest MX preference first", "RFC 5321 §5.1", SENDER, MX_PREFERENCE)
def mx_preference(run: RunResult) -> Outcome:
    tried = syns(run)
    if not tried:
        return failed("no connection at all")
    first = tried[0]
    if first.dst != run.scenario.receiver_host:
        return failed(f"first SYN went to {first.dst} (MX 20) before MX 10", first.index)
    dead = syns(run, run.scenario.topology.dns_host)
    if dead:
        return failed("MX 20 was tried although MX 10 took the mail", dead[0].index)
    return passed("MX 10 first (served second), MX 20 never tried", first.index)


@check("dns.mx-fallback", "Next MX when the first refuses", "RFC 5321 §5.1", SENDER, MX_FALLBACK)
def mx_fallback(run: RunResult) -> Outcome:
    tried = syns(run)
    dead_host, good = run.scenario.topology.dns_host, run.scenario.receiver_host
    if not tried or tried[0].dst != dead_host:
        return failed("MX 10 was not tried first", *(s.index for s in tried[:1]))
    later = [s for s in tried if s.dst == good]
    if not later:
        return failed("no fallback to MX 20 after MX 10 refused", tried[0].index)
    done = _delivered(run)
    if done is None:
        return failed("MX 20 reached but the message was not accepted", later[0].index)
    resets = [s.index for s in where(run.ladder, "rst", src=dead_host)][:1]
    return passed("MX 10 refused (RST), MX 20 took the mail", tried[0].index, *resets, done)


@check("dns.implicit-mx", "No MX: the domain's address", "RFC 5321 §5.1", SENDER, IMPLICIT_MX)
def implicit_mx(run: RunResult) -> Outcome:
    domain = "implicit.receiver.com"
    mx = dns_questions(run.ladder, domain, "MX")
    addresses = dns_questions(run.ladder, domain, "A") + dns_questions(run.ladder, domain, "AAAA")
    if not mx:
        return failed(f"never asked for the MX of {domain}")
    done = _delivered(run)
    if not addresses or done is None:
        return failed("NODATA for MX, but no delivery to the domain's address", mx[0].index)
    return passed(
        "NODATA for MX, delivered to the domain's A", mx[0].index, addresses[0].index, done
    )


@check(
    "dns.mx-without-implicit",
    "With an MX, never the domain's own address",
    "RFC 5321 §5.1",
    SENDER,
    MX_ONLY,
)
def mx_without_implicit(run: RunResult) -> Outcome:
    wrong = syns(run, run.scenario.receiver_host)
    if wrong:
        return failed("fell back to the domain's A although it has an MX", wrong[0].index)
    return passed("only the MX host was tried", *(s.index for s in syns(run)[:1]))


@check("dns.null-mx", "Null MX: no connection, immediate bounce", "RFC 7505 §3", SENDER, NULL_MX)
def null_mx(run: RunResult) -> Outcome:
    return _no_connection(run, "rejected", "the domain has a null MX")


@check("dns.nxdomain-rejects", "NXDOMAIN bounces", "RFC 5321 §5.1", SENDER, NXDOMAIN)
def nxdomain(run: RunResult) -> Outcome:
    return _no_connection(run, "rejected", "the domain does not exist")


@check(
    "dns.servfail-defers", "SERVFAIL keeps the message queued", "RFC 5321 §5.1", SENDER, SERVFAIL
)
def servfail(run: RunResult) -> Outcome:
    return _no_connection(run, "deferred", "the MX lookup failed (SERVFAIL)")


@check(
    "dns.timeout-defers", "DNS timeout keeps the message queued", "RFC 5321 §5.1", SENDER, TIMEOUT
)
def dns_timeout(run: RunResult) -> Outcome:
    return _no_connection(run, "deferred", "the MX lookup timed out")


@check(
    "dns.truncation-tcp", "TC=1 over UDP: ask again over TCP", "RFC 1035 §4.2.1", SENDER, TRUNCATED
)
def truncation(run: RunResult) -> Outcome:
    questions = dns_questions(run.ladder, "receiver.com", "MX")
    udp = [q for q in questions if q.get("transport") == "udp"]
    truncated = [a for q in udp if (a := answer_to(run.ladder, q)) and a.get("tc")]
    tcp = [q for q in questions if q.get("transport") == "tcp"]
    if not truncated:
        return not_applicable("no truncated answer was served")
    if not tcp:
        return failed("TC=1 answer, but no retry over TCP", truncated[0].index)
    done = _delivered(run)
    if done is None:
        return failed("asked over TCP, but did not deliver", truncated[0].index, tcp[0].index)
    return passed("TC=1, asked over TCP, delivered", truncated[0].index, tcp[0].index, done)


@check(
    "dns.glue-ignored",
    "MX target address asked for, not taken from glue",
    "RFC 2181 §5.4.1",
    SENDER,
    GLUE_TRAP,
)
def glue_ignored(run: RunResult) -> Outcome:
    mx = dns_questions(run.ladder, "receiver.com", "MX")
    answers = [a for q in mx if (a := answer_to(run.ladder, q)) and TRAP in a.text]
    if not answers:
        return not_applicable("no MX answer carried the trap glue")
    trapped = syns(run, TRAP)
    if trapped:
        return failed("connected to the glue address", answers[0].index, trapped[0].index)
    reached = syns(run, run.scenario.receiver_host)
    if not reached:
        return failed("never connected to the MX host's own address", answers[0].index)
    asked = [
        q
        for t in ("A", "AAAA")
        for q in dns_questions(run.ladder, "mail.receiver.com", t)
        if q.index < reached[0].index
    ]
    if not asked:
        return failed("connected without asking for the MX host's address", reached[0].index)
    return passed(
        "asked for the MX host's address, ignored the glue",
        answers[0].index,
        asked[0].index,
        reached[0].index,
    )


def _ptr_query(run: RunResult):
    host = run.scenario.receiver_host
    queries = where(run.ladder, "dns-query", src=host)
    return next((q for q in queries if q.text.upper().endswith("IN PTR")), None)


@check(
    "dns.ptr-at-connect", "Receiver's PTR lookup before the 220", "RFC 5321 §4.1.4", RECEIVER, SEED
)
def ptr_at_connect(run: RunResult) -> Outcome:
    query = _ptr_query(run)
    conns = smtp_conns(run.ladder)
    hello = greeting(run.ladder, conns[0]) if conns else None
    if query is None or hello is None:
        return not_applicable("no PTR lookup of the client (or no greeting)")
    if query.index < hello.index:
        return passed("PTR looked up at connect, before the 220", query.index, hello.index)
    return known(
        "PTR looked up after the greeting (the seed's steps 8-9)", hello.index, query.index
    )


@check(
    "dns.helo-mismatch-accepted",
    "HELO name not matching the PTR is no reason to refuse",
    "RFC 5321 §4.1.4",
    RECEIVER,
    HELO_MISMATCH,
)
def helo_mismatch(run: RunResult) -> Outcome:
    hellos = [s for s in where(run.ladder, "command") if s.get("verb") in ("HELO", "EHLO")]
    if not hellos:
        return failed("no HELO/EHLO was answered")
    reply = reply_to(run.ladder, hellos[0])
    if (code(reply) or 0) // 100 != 2:
        return failed("refused a HELO whose name does not match the PTR", hellos[0].index)
    done = _delivered(run)
    if done is None:
        return failed("HELO accepted, but the message was not", hellos[0].index)
    return passed("mismatching HELO accepted, message accepted", hellos[0].index, reply.index, done)
