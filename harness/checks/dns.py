"""DNS checks: how the sender finds the receiving host (RFC 5321 §5.1, RFC 7505, RFC 1035,
RFC 2181) and when the receiver asks for the client's PTR (RFC 5321 §4.1.4).

Rules kept here:
- The lab has one SMTP receiver (192.0.2.25); an MX host that must fail points at the DNS
  host's address (192.0.2.53), where nothing listens on port 25, so its SYN meets a RST:
  "cannot be reached", the next MX is due at once (§5.1).
- DNS data is written as extra records (``[dns] records``, replacing the RRsets they name),
  fault rules (``[[dns.faults]]``) and served glue (``[dns] glue``); the seed's zones stay
  as they are.
- Every check requires the answer (or the silence) it is about to have reached the
  sender: that answer is the stimulus, and without it the rule was not exercised.
- Outcomes that only the sender knows (bounced, queued, lost) come from the run, which
  reads a real MTA's queue and DSNs (``harness.mta.roles``).
- Glue trust and PTR timing are observations: RFC 2181 §5.4.1 ranks the additional
  section below authoritative data but states no MUST about using it, and RFC 5321
  §4.1.4 lets a server look the client up and fixes no time for it.
"""

from __future__ import annotations

from collections.abc import Callable

from harness.checks.base import (
    RECEIVER,
    SENDER,
    Kind,
    Outcome,
    Precondition,
    Seen,
    Setup,
    check,
    failed,
    known,
    observed,
    passed,
)
from harness.checks.steps import (
    accepted_data,
    address_questions,
    answer_to,
    code,
    commands,
    dns_answers,
    dns_questions,
    greetings,
    is_null_mx,
    mx_records,
    rcode,
    records,
    reply_to,
    syns,
    unlike,
    where,
)
from harness.ladder.model import Step, StepKind
from harness.outcome import OutcomeStatus
from harness.result import RunResult

DEAD = "down.receiver.com. A 192.0.2.53"  # an MX host with nothing on port 25: RST
TRAP = "192.0.2.53"  # inconsistent glue, the DNS host (RST on port 25): a SYN there is the
# glue trusted (an address no host has would show no SYN at all, only ARP)
ONE = {"recipients": ["c3po@receiver.com"]}
DOMAIN = "receiver.com"
IMPLICIT = "implicit.receiver.com"
NOSUCH = "nosuch.receiver.com"
MISMATCH = "mail.elsewhere.example"
LAB = "the lab's zones and the sender's whole run: its DNS questions, connections, queue"


def _mx(*records_: str, **sender: object) -> dict:
    return {"dns": {"records": list(records_)}, "sender": {**ONE, **sender}}


def _fault(action: str, *records_: str) -> dict:
    fault = {"name": DOMAIN, "type": "MX", "action": action}
    return {"dns": {"faults": [fault], "records": list(records_)}, "sender": ONE}


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
        "receiver": {"domains": ["receiver.com", IMPLICIT]},
        "sender": {"recipients": [f"c3po@{IMPLICIT}"]},
    },
)
MX_ONLY = Setup(
    "mx-without-implicit",
    _mx("receiver.com. MX 10 down.receiver.com.", DEAD, "receiver.com. A 192.0.2.25"),
)
NULL_MX = Setup("null-mx", _mx("receiver.com. MX 0 ."))
NXDOMAIN = Setup("nxdomain", {"sender": {"recipients": [f"c3po@{NOSUCH}"]}})
SERVFAIL = Setup("servfail", _fault("servfail", "receiver.com. A 192.0.2.25"))
TIMEOUT = Setup("dns-timeout", _fault("drop", "receiver.com. A 192.0.2.25"))
TRUNCATED = Setup("truncated", _fault("truncate"))
GLUE_TRAP = Setup("glue-trap", {"dns": {"glue": {"mail.receiver.com": TRAP}}, "sender": ONE})
HELO_MISMATCH = Setup("helo-mismatch", {"sender": {"helo": MISMATCH}})


# --- preconditions: the answer each rule is about reached the sender ---------------------
def answered(
    says: str, qname: str, test: Callable[[Step], bool], qtype: str = "MX"
) -> Precondition:
    """Answers to the sender's ``qname``/``qtype`` questions that pass ``test``."""

    def find(run: RunResult) -> list[Step]:
        found = dns_answers(run.ladder, qname, qtype, run.scenario.sender_host)
        return [a for a in found if test(a)]

    return Precondition(says, find, lab=LAB)


def _preferences(*wanted: int) -> Callable[[Step], bool]:
    return lambda a: sorted(p for p, _ in mx_records(a)) == sorted(wanted)


BOTH_MX = answered("an MX answer listing MX 10 and MX 20", DOMAIN, _preferences(10, 20))


def _refused_by(host: Callable[[RunResult], str]) -> Precondition:
    """The sender's SYN to ``host`` and the RST that refused it."""

    def find(run: RunResult) -> list[Step]:
        dead = host(run)
        tried = syns(run, dead)
        resets = [s for s in where(run.ladder, StepKind.RST, src=dead) if tried]
        return [*tried[:1], *resets[:1]] if tried and resets else []

    return Precondition("the sender tried the MX host and was refused (RST)", find, lab=LAB)


def _unanswered_mx(run: RunResult) -> list[Step]:
    questions = dns_questions(run.ladder, DOMAIN, "MX", run.scenario.sender_host)
    return [q for q in questions if answer_to(run.ladder, q) is None]


def _delivered(run: RunResult) -> Step | None:
    """The first 2yz to a message on the receiver, if any."""
    done = accepted_data(run.ladder)
    return done[0].reply if done else None


def _dead(run: RunResult) -> str:
    return run.scenario.topology.dns_host


# --- MX selection (RFC 5321 §5.1) -----------------------------------------------------------
@check(
    "dns.mx-preference",
    "Lowest MX preference first",
    "RFC 5321 §5.1: MX records are tried in order of preference, lowest first",
    SENDER,
    MX_PREFERENCE,
    requires=[BOTH_MX],
)
def mx_preference(seen: Seen) -> Outcome:
    run = seen.run
    tried = syns(run)
    if not tried:
        return failed("no connection at all after the MX answer")
    first = tried[0]
    if first.dst != run.scenario.receiver_host:
        return failed(f"first SYN went to {first.dst} (MX 20) before MX 10", first)
    dead = syns(run, _dead(run))
    if dead:
        return failed("MX 20 was tried although MX 10 took the mail", first, dead[0])
    return passed("MX 10 first (served second), MX 20 never tried", first, _delivered(run))


@check(
    "dns.mx-fallback",
    "Next MX when the first refuses",
    "RFC 5321 §5.1: the client MUST be able to try each relevant address in order",
    SENDER,
    MX_FALLBACK,
    requires=[BOTH_MX],
)
def mx_fallback(seen: Seen) -> Outcome:
    run = seen.run
    tried = syns(run)
    if not tried or tried[0].dst != _dead(run):
        return failed("MX 10 was not tried first", *tried[:1])
    later = syns(run, run.scenario.receiver_host)
    if not later:
        return failed("no fallback to MX 20 after MX 10 refused", tried[0])
    done = _delivered(run)
    if done is None:
        return failed("MX 20 reached but the message was not accepted", tried[0], later[0])
    resets = where(run.ladder, StepKind.RST, src=_dead(run))[:1]
    return passed("MX 10 refused (RST), MX 20 took the mail", tried[0], *resets, later[0], done)


def _nodata(answer: Step) -> bool:
    return rcode(answer) == "NOERROR" and not records(answer, rtype="MX")


@check(
    "dns.implicit-mx",
    "No MX: the domain's address",
    "RFC 5321 §5.1: with no MX records, the domain's address is an implicit MX",
    SENDER,
    IMPLICIT_MX,
    requires=[answered(f"a NODATA answer to the MX question for {IMPLICIT}", IMPLICIT, _nodata)],
)
def implicit_mx(seen: Seen) -> Outcome:
    run = seen.run
    addresses = address_questions(run, IMPLICIT)
    reached = syns(run, run.scenario.receiver_host)
    done = _delivered(run)
    if not addresses:
        return failed(f"never asked for the address of {IMPLICIT}")
    if not reached or done is None:
        return failed("NODATA for MX, but no delivery to the domain's address", addresses[0])
    return passed("NODATA for MX, delivered to the domain's A", addresses[0], reached[0], done)


@check(
    "dns.mx-without-implicit",
    "With an MX, never the domain's own address",
    "RFC 5321 §5.1: the implicit MX applies only when no MX records are found",
    SENDER,
    MX_ONLY,
    requires=[
        answered("an MX answer naming down.receiver.com", DOMAIN, _preferences(10)),
        _refused_by(_dead),
    ],
)
def mx_without_implicit(seen: Seen) -> Outcome:
    run = seen.run
    wrong = syns(run, run.scenario.receiver_host)
    if wrong:
        return failed("fell back to the domain's A although it has an MX", wrong[0])
    return passed("the only MX host refused; the domain's A was never used")


# --- no host to try (RFC 7505, RFC 5321 §5.1) ------------------------------------------------
def _no_syn(run: RunResult, why: str) -> Outcome | None:
    tried = syns(run)
    return failed(f"connected although {why}", tried[0]) if tried else None


def _ends(run: RunResult, wanted: OutcomeStatus, why: str) -> Outcome:
    """Every recipient ends ``wanted``, as read from the run (queue, DSN, reply)."""
    wrong = unlike(run, wanted)
    if wrong:
        return failed(f"{why}, yet " + "; ".join(f"{r}: {s}" for r, s in wrong.items()))
    return passed(f"{why}: no connection, {wanted}")


@check(
    "dns.null-mx",
    "Null MX: no delivery attempt, no implicit MX, immediate bounce",
    "RFC 7505 §3: a null MX means the domain accepts no mail (no implicit MX from its "
    "A/AAAA); §4.1: SMTP clients MUST NOT try to deliver to it and return the mail at once",
    SENDER,
    NULL_MX,
    requires=[answered("a null MX answer (MX 0 .)", DOMAIN, is_null_mx)],
)
def null_mx(seen: Seen) -> Outcome:
    run = seen.run
    wrong = _no_syn(run, "the domain has a null MX")
    if wrong:
        return wrong
    verdict = _ends(run, OutcomeStatus.REJECTED, "the domain has a null MX")
    if verdict.verdict != "pass":
        return verdict
    implicit = address_questions(run, DOMAIN, since=seen.found[0][0])
    if implicit:
        return known(
            "bounced without connecting, but looked for the domain's A/AAAA after its null MX",
            *implicit,
        )
    return verdict


@check(
    "dns.nxdomain-rejects",
    "NXDOMAIN bounces",
    "RFC 5321 §5.1: a domain that does not exist has no host to deliver to: an error",
    SENDER,
    NXDOMAIN,
    requires=[answered(f"NXDOMAIN for {NOSUCH}", NOSUCH, lambda a: rcode(a) == "NXDOMAIN")],
)
def nxdomain(seen: Seen) -> Outcome:
    run = seen.run
    return _no_syn(run, "the domain does not exist") or _ends(
        run, OutcomeStatus.REJECTED, "the domain does not exist"
    )


def _defers(run: RunResult, why: str) -> Outcome:
    wrong = syns(run, run.scenario.receiver_host)
    if wrong:
        return failed(f"connected to the domain's own address although {why}", wrong[0])
    return _ends(run, OutcomeStatus.DEFERRED, why)


@check(
    "dns.servfail-defers",
    "SERVFAIL keeps the message queued",
    "RFC 5321 §5.1: a temporary lookup failure is not an answer: the message waits",
    SENDER,
    SERVFAIL,
    requires=[answered("SERVFAIL for the MX question", DOMAIN, lambda a: rcode(a) == "SERVFAIL")],
)
def servfail(seen: Seen) -> Outcome:
    return _defers(seen.run, "the MX lookup failed (SERVFAIL)")


@check(
    "dns.timeout-defers",
    "DNS timeout keeps the message queued",
    "RFC 5321 §5.1: a lookup that times out is a temporary failure: the message waits",
    SENDER,
    TIMEOUT,
    requires=[Precondition("an MX question that got no answer", _unanswered_mx, lab=LAB)],
)
def dns_timeout(seen: Seen) -> Outcome:
    return _defers(seen.run, "the MX lookup timed out")


def _udp_truncated(answer: Step) -> bool:
    return bool(answer.get("tc")) and answer.get("transport") == "udp"


@check(
    "dns.truncation-tcp",
    "TC=1 over UDP: ask again over TCP",
    "RFC 1035 §4.2.1: a truncated UDP answer is retried over TCP (RFC 7766 §5)",
    SENDER,
    TRUNCATED,
    requires=[answered("a truncated (TC=1) UDP answer", DOMAIN, _udp_truncated)],
)
def truncation(seen: Seen) -> Outcome:
    run = seen.run
    truncated = seen.found[0][0]
    tcp = [
        q
        for q in dns_questions(run.ladder, DOMAIN, "MX", run.scenario.sender_host)
        if q.get("transport") == "tcp" and q.index > truncated.index
    ]
    if not tcp:
        return failed("TC=1 answer, but no retry over TCP")
    done = _delivered(run)
    if done is None:
        return failed("asked over TCP, but did not deliver", tcp[0])
    return passed("TC=1, asked over TCP, delivered", tcp[0], done)


def _trap_glue(answer: Step) -> bool:
    return any(data == TRAP for _n, _t, data in records(answer, "additional"))


@check(
    "dns.glue-use",
    "Where the MX host's address comes from: its own A/AAAA or the MX answer's glue",
    "RFC 2181 §5.4.1 ranks additional-section data below authoritative answers (no MUST)",
    SENDER,
    GLUE_TRAP,
    requires=[answered("an MX answer whose glue is a trap address", DOMAIN, _trap_glue)],
    kind=Kind.OBSERVATION,
)
def glue_use(seen: Seen) -> Outcome:
    run = seen.run
    trapped = syns(run, _dead(run))
    if trapped:
        return observed("used the glue", "connected to the glue address", trapped[0])
    reached = syns(run, run.scenario.receiver_host)
    if not reached:
        return observed("no connection", "connected to neither address")
    asked = [q for q in address_questions(run, "mail.receiver.com") if q.index < reached[0].index]
    if not asked:
        return observed("own address, not asked", "connected without asking", reached[0])
    return observed("asked for the address", "glue ignored", asked[0], reached[0])


# --- the receiving side ----------------------------------------------------------------------
def _connected(run: RunResult) -> list[Step]:
    return syns(run, run.scenario.receiver_host)[:1]


@check(
    "dns.ptr-timing",
    "When the receiver asks for the client's PTR",
    "RFC 5321 §4.1.4: a server MAY look the client's address up; no time is fixed",
    RECEIVER,
    requires=[Precondition("an SMTP connection reached the receiver", _connected, lab=LAB)],
    kind=Kind.OBSERVATION,
)
def ptr_timing(seen: Seen) -> Outcome:
    run = seen.run
    queries = dns_questions(run.ladder, qtype="PTR", src=run.scenario.receiver_host)
    hello = next(iter(greetings(run.ladder)), None)
    if not queries:
        return observed("never", "no PTR lookup of the client", hello)
    query = queries[0]
    if hello is None or query.index < hello.index:
        return observed("before the 220", "PTR looked up at connect", query, hello)
    helo = next((c for c in commands(run.ladder) if c.get("verb") in ("HELO", "EHLO")), None)
    if helo is not None and query.index > helo.index:
        return observed("after HELO", "PTR looked up after the client's HELO/EHLO", helo, query)
    return observed("after the 220", "PTR looked up after the greeting", hello, query)


def _mismatching_hello(run: RunResult) -> list[Step]:
    hellos = [c for c in commands(run.ladder) if c.get("verb") in ("HELO", "EHLO")]
    return [c for c in hellos if c.text.partition(" ")[2].strip().lower() == MISMATCH][:1]


@check(
    "dns.helo-mismatch-accepted",
    "HELO name not matching the PTR is no reason to refuse",
    "RFC 5321 §4.1.4: the server MUST NOT refuse a message because the HELO name does not "
    "match the client's address",
    RECEIVER,
    HELO_MISMATCH,
    requires=[Precondition(f"a HELO/EHLO naming {MISMATCH}", _mismatching_hello, lab=LAB)],
)
def helo_mismatch(seen: Seen) -> Outcome:
    run = seen.run
    hello = seen.found[0][0]
    reply = reply_to(run.ladder, hello)
    if (code(reply) or 0) // 100 != 2:
        return failed(f"answered {code(reply)} to a HELO whose name does not match", reply)
    done = _delivered(run)
    if done is None:
        return failed("HELO accepted, but the message was not", reply)
    return passed("mismatching HELO accepted, message accepted", reply, done)
