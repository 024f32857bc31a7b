"""For every registered check: a crafted run that keeps its rule and one that breaks it
(or, for an observation, runs that show different values).

Each case is a function ``(scenario, folder) -> RunResult`` (a list of them for a check
with several setups) built with ``tests/wire.py``: packets as a run would capture them,
dissected by the real dissector, plus the outcomes and stored copies the run would
report (inside TLS: ``tests/tls_wire.py`` splices real dissections into the ladder a
decrypting dissector gives).  ``CASES[check_id]`` gives the role the case plays, the
passing cases, the failing (or deviation-known) ones with the verdict they must get, and
for observations the value each must show.  ``tests/test_check_registry.py`` walks the
registry: a check without its cases fails there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ladder_pcaps import seed_capture
from tls_wire import READY, TLS12, TLS13, inside, spliced, starttls, tls_run
from wire import DNS, MESSAGE, RECEIVER, SILENT, Smtp, Wire, run_of, stuffed

from harness.checks.tls import INJECTIONS, VARIANTS
from harness.ladder.model import Detail, Ladder
from harness.outcome import OutcomeStatus
from harness.result import RunResult
from harness.scenario import FIXTURES, Scenario
from harness.verdict import Verdict

DELIVERED, REJECTED, DEFERRED = (
    OutcomeStatus.DELIVERED,
    OutcomeStatus.REJECTED,
    OutcomeStatus.DEFERRED,
)
C3PO, R2D2, BB8 = "c3po@receiver.com", "r2d2@receiver.com", "bb8@receiver.com"
Build = Callable[[Sequence[Scenario], Path], list[RunResult]]  # one run per setup


@dataclass(frozen=True)
class Cases:
    role: str
    passing: tuple[Build, ...] = ()
    failing: tuple[tuple[Verdict, Build], ...] = ()  # verdict: fail, or deviation-known
    values: tuple[tuple[str, Build], ...] = ()  # observations: the value each must show


def one(wire: Callable[[], Wire | Path], **run: object) -> Build:
    """A case of one run: the wire, and the outcomes/stored copies the run reports."""

    def build(scenarios: Sequence[Scenario], folder: Path) -> list[RunResult]:
        return [run_of(scenarios[0], wire(), folder, **run)]  # type: ignore[arg-type]

    return build


def each(*builds: Build) -> Build:
    """A case of several runs, one build per setup."""

    def build(scenarios: Sequence[Scenario], folder: Path) -> list[RunResult]:
        pairs = enumerate(zip(scenarios, builds, strict=True))
        return [b([s], folder / f"run{i}")[0] for i, (s, b) in pairs]

    return build


def _seed_ok() -> Path:
    import tempfile

    return seed_capture(Path(tempfile.mkdtemp()) / "seed.pcap")


def _seed_without_data() -> Wire:
    s = Wire().seed_mx().smtp()
    s.say("HELO mail.sender.com", "250 mail.receiver.com")
    s.say("MAIL FROM:<luke@sender.com>", "250 OK")
    return s.quit()


def _delivered(rcpt: str = C3PO, message: bytes = MESSAGE) -> Smtp:
    s = Wire().seed_mx().smtp()
    s.ehlo("PIPELINING")
    return s.transaction([rcpt], message)


MX_10_20 = ("receiver.com. MX 20 down.receiver.com.", "receiver.com. MX 10 mail.receiver.com.")
MX_10_DOWN_20 = ("receiver.com. MX 10 down.receiver.com.", "receiver.com. MX 20 mail.receiver.com.")


def _mx_preference(first: str) -> Callable[[], Wire]:
    def wire() -> Wire:
        w = Wire().mx(*MX_10_20)
        if first == "down":
            w.refused(DNS)
        return w.smtp().transaction().wire

    return wire


def _fallback(reached: bool) -> Callable[[], Wire]:
    def wire() -> Wire:
        w = Wire().mx(*MX_10_DOWN_20).refused(DNS)
        if reached:
            s = w.smtp()
            s.ehlo()
            s.transaction()
        return w

    return wire


def _implicit(delivered: bool) -> Callable[[], Wire]:
    def wire() -> Wire:
        w = Wire().mx(qname="implicit.receiver.com")
        if delivered:
            w.dns("implicit.receiver.com", "A", "implicit.receiver.com. A 192.0.2.25")
            s = w.smtp()
            s.ehlo()
            s.transaction(["c3po@implicit.receiver.com"])
        return w

    return wire


def _mx_only(fallback: bool) -> Callable[[], Wire]:
    def wire() -> Wire:
        w = Wire().mx("receiver.com. MX 10 down.receiver.com.")
        w.dns("down.receiver.com", "A", "down.receiver.com. A 192.0.2.53").refused(DNS)
        if fallback:
            w.smtp().transaction()
        return w

    return wire


def _null_mx(then: str) -> Callable[[], Wire]:
    def wire() -> Wire:
        w = Wire().mx("receiver.com. MX 0 .")
        if then == "connect":
            w.smtp().transaction()
        if then == "implicit":
            w.dns("receiver.com", "A", "receiver.com. A 192.0.2.25")
        return w

    return wire


def _truncated(retried: bool) -> Callable[[], Wire]:
    def wire() -> Wire:
        w = Wire().mx(tc=True)
        if retried:
            w.mx("receiver.com. MX 10 mail.receiver.com.", tcp=True)
            w.dns("mail.receiver.com", "A", "mail.receiver.com. A 192.0.2.25")
            w.smtp().transaction()
        return w

    return wire


def _glue(used: bool) -> Callable[[], Wire]:
    def wire() -> Wire:
        trap = f"mail.receiver.com. A {DNS}"
        w = Wire().mx("receiver.com. MX 10 mail.receiver.com.", additional=[trap])
        if used:
            return w.refused(DNS)
        w.dns("mail.receiver.com", "A", "mail.receiver.com. A 192.0.2.25")
        return w.smtp().transaction().wire

    return wire


PTR_NAME = "10.2.0.192.in-addr.arpa"
PTR = f"{PTR_NAME}. PTR mail.sender.com."


def _ptr(at: str) -> Callable[[], Wire]:
    def wire() -> Wire:
        w = Wire()
        s = w.smtp(greeting=None)
        if at == "connect":
            w.dns(PTR_NAME, "PTR", PTR, client=RECEIVER)
        s.server("220 mail.receiver.com ESMTP")
        s.client("EHLO mail.sender.com")
        if at == "helo":
            w.dns(PTR_NAME, "PTR", PTR, client=RECEIVER)
        s.server("250 mail.receiver.com")
        return s.quit()

    return wire


def _helo_mismatch(code: int) -> Callable[[], Wire]:
    def wire() -> Wire:
        s = Wire().smtp()
        s.say("HELO mail.elsewhere.example", f"{code} mail.receiver.com")
        if code == 250:
            s.transaction()
        return s.quit()

    return wire


def _greeting_lines(early: bool) -> Callable[[], Wire]:
    def wire() -> Wire:
        s = Wire().seed_mx().smtp(greeting=None)
        s.server("220-mail.receiver.com ESMTP smtp-harness")
        if early:
            s.client("EHLO mail.sender.com")
        s.server("220-a second line")
        s.server("220 and a third")
        if not early:
            s.client("EHLO mail.sender.com")
        s.server("250 mail.receiver.com Hello")
        s.transaction([C3PO, R2D2])
        return s.quit()

    return wire


def _greeted(code: int, then: str) -> Callable[[], Wire]:
    def wire() -> Wire:
        s = Wire().seed_mx().smtp(greeting=f"{code} mail.receiver.com not now")
        if then == "quit":
            return s.quit()
        if then == "close":
            return s.close("sender-first")
        s.say("EHLO mail.sender.com", "503 5.5.1 no")
        s.say("MAIL FROM:<luke@sender.com>", "503 5.5.1 no")
        return s.quit()

    return wire


def _ehlo_502(helo: bool) -> Callable[[], Wire]:
    def wire() -> Wire:
        s = Wire().seed_mx().smtp()
        s.say("EHLO mail.sender.com", "502 5.5.2 no EHLO")
        if not helo:
            return s.quit()
        s.say("HELO mail.sender.com", "250 mail.receiver.com")
        s.transaction([C3PO, R2D2])
        return s.quit()

    return wire


def _vrfy(*pairs: tuple[str, int]) -> Callable[[], Wire]:
    def wire() -> Wire:
        s = Wire().smtp()
        s.say("HELO mail.sender.com", "250 mail.receiver.com")
        for argument, code in pairs:
            s.say(f"VRFY {argument}", f"{code} {argument}")
        return s.quit()

    return wire


def _mail_refused(code: int, went_on: bool = False) -> Callable[[], Wire]:
    def wire() -> Wire:
        s = Wire().seed_mx().smtp()
        s.say("HELO mail.sender.com", "250 mail.receiver.com")
        s.say("MAIL FROM:<luke@sender.com>", f"{code} no")
        if went_on:
            s.say(f"RCPT TO:<{C3PO}>", "503 5.5.1 need MAIL")
        return s.quit()

    return wire


def _partial(data: bool) -> Callable[[], Wire]:
    def wire() -> Wire:
        s = Wire().seed_mx().smtp()
        s.say("HELO mail.sender.com", "250 mail.receiver.com")
        s.say("MAIL FROM:<luke@sender.com>", "250 OK")
        for rcpt, code in ((C3PO, 550), (R2D2, 451), (BB8, 250)):
            s.say(f"RCPT TO:<{rcpt}>", f"{code} {rcpt}")
        if data:
            s.data(MESSAGE)
        return s.quit()

    return wire


LONG_NOOP = "NOOP " + "x" * 505
EXTRA = {  # command -> the reply a conformant server gives (the EXTRA_COMMANDS setup)
    "NOOP": "250 2.0.0 OK",
    "RSET": "250 2.0.0 OK",
    "XYZZY": "500 5.5.1 unrecognized",
    "NOOP x": "250 2.0.0 OK",
    LONG_NOOP: "250 2.0.0 OK",
}


def _extra(**wrong: str) -> Callable[[], Wire]:
    """The extra-commands session; ``wrong`` replaces the reply to one command (by name:
    noop, rset, xyzzy, noop_x, long, mail)."""
    names = {"noop": "NOOP", "rset": "RSET", "xyzzy": "XYZZY", "noop_x": "NOOP x"}
    names["long"] = LONG_NOOP

    def wire() -> Wire:
        replies = dict(EXTRA)
        for name, reply in wrong.items():
            if name in names:
                replies[names[name]] = reply
        s = Wire().smtp()
        s.say("HELO mail.sender.com", "250 mail.receiver.com")
        for command, reply in replies.items():
            s.say(command, reply)
        s.say("mail FROM:<luke@sender.com>", wrong.get("mail", "250 OK"))
        s.say(f"RCPT TO:<{C3PO}>", "250 OK")
        s.data(MESSAGE)
        return s.quit()

    return wire


def _noop_x_unanswered() -> Wire:
    s = Wire().smtp()
    s.say("HELO mail.sender.com", "250 mail.receiver.com")
    s.client("NOOP x")
    return s.close("receiver-first")


def _pipelining(extensions: tuple[str, ...], pipelined: tuple[str, ...]) -> Callable[[], Wire]:
    def wire() -> Wire:
        s = Wire().seed_mx().smtp()
        s.ehlo(*extensions)
        if pipelined:
            s.client(*pipelined)
            s.server("250 OK")
            s.server("250 OK")
            if pipelined[-1] == "DATA" or len(pipelined) > 2:
                s.server("354 go ahead")
                s.conn.send("c", b"Subject: x\r\n\r\nhi\r\n.\r\n")
                s.server("250 OK")
        else:
            s.transaction()
        return s.quit()

    return wire


def _params(mail: str) -> Callable[[], Wire]:
    def wire() -> Wire:
        s = Wire().seed_mx().smtp()
        s.ehlo()
        s.say(mail, "250 OK")
        s.say(f"RCPT TO:<{C3PO}>", "250 OK")
        s.data(MESSAGE)
        return s.quit()

    return wire


def _size(went_on: bool, mail: bool = True) -> Callable[[], Wire]:
    def wire() -> Wire:
        s = Wire().seed_mx().smtp()
        s.ehlo("PIPELINING", "8BITMIME", "SIZE 100")
        if not mail:  # bounced without offering it (Postfix, OpenSMTPD)
            return s.quit()
        s.say("MAIL FROM:<luke@sender.com> SIZE=500", "552 5.3.4 too big")
        if went_on:
            s.say(f"RCPT TO:<{C3PO}>", "503 5.5.1 need MAIL")
            s.data(MESSAGE, "503 5.5.1 need MAIL")
        return s.quit()

    return wire


def _no_8bitmime(message: bytes) -> Callable[[], Wire]:
    def wire() -> Wire:
        s = Wire().seed_mx().smtp()
        s.ehlo("PIPELINING", "SIZE 10240000")
        return s.transaction([C3PO], message).quit()

    return wire


EIGHT_BIT = "From: luke@sender.com\r\nSubject: x\r\n\r\nh\u00e9llo\r\n".encode()
SEVEN_BIT = (
    b"From: luke@sender.com\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\nh=C3=A9llo\r\n"
)


def _message_file(name: str) -> bytes:
    return (FIXTURES / "scenarios" / "checks" / name).read_bytes()


def _file(name: str) -> bytes:
    """A message file of the check setups, in wire form (CRLF, a final line break)."""
    data = _message_file(name).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def _wrapped(message: bytes, width: int = 990) -> bytes:
    """``message`` with every line over ``width`` octets cut into several."""
    lines = message.split(b"\r\n")
    cut = [line[i : i + width] for line in lines for i in range(0, max(len(line), 1), width)]
    return b"\r\n".join(cut)


def _stored(copy: bytes) -> Build:
    """The message on the wire as ``copy``, stored as it arrived, for C3PO."""
    return one(
        lambda: _delivered(C3PO, copy).quit(), outcomes={C3PO: DELIVERED}, stored={C3PO: [copy]}
    )


def _body_cases(name: str, broken: Callable[[bytes], bytes]) -> Cases:
    good = _file(name)
    return Cases(
        "sender", passing=(_stored(good),), failing=((Verdict.FAIL, _stored(broken(good))),)
    )


def _smuggle(look_alike: bytes, reply: str = "250 OK") -> Callable[[], Wire]:
    body = (
        b"From: luke@sender.com\r\nTo: c3po@receiver.com\r\nSubject: probe\r\n\r\nbefore the probe"
        + look_alike
        + b"MAIL FROM:<vader@sender.com>\r\nRCPT TO:<r2d2@receiver.com>\r\nDATA\r\n"
        + b"From: vader@sender.com\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n"
    )

    def wire() -> Wire:
        s = Wire().smtp()
        s.say("HELO mail.sender.com", "250 mail.receiver.com")
        s.say("MAIL FROM:<luke@sender.com>", "250 OK")
        s.say(f"RCPT TO:<{C3PO}>", "250 OK")
        s.raw_data(body, reply)
        return s.quit()

    return wire


def _smuggled_copy(look_alike: bytes) -> bytes:
    return (
        b"From: luke@sender.com\r\nTo: c3po@receiver.com\r\nSubject: probe\r\n\r\nbefore the probe"
        + look_alike
        + b"MAIL FROM:<vader@sender.com>\r\nRCPT TO:<r2d2@receiver.com>\r\nDATA\r\n"
        + b"From: vader@sender.com\r\nSubject: smuggled\r\n\r\nsmuggled\r\n"
    )


CUT = (
    b"From: luke@sender.com\r\nTo: c3po@receiver.com\r\nSubject: probe\r\n\r\nbefore the probe\r\n"
)
SMUGGLED_COPY = b"From: vader@sender.com\r\nSubject: smuggled\r\n\r\nsmuggled\r\n"


def _reset(then: str) -> Callable[[], Wire]:
    """c3po accepted, then the receiver's RST: after the 250 to RCPT ("after-rcpt"), after
    the 354 ("after-354"), after the message before any reply to it ("before") or after
    its 250 ("after-250"); or after the 354, part of the message, and the 421 of a
    receiver that stopped reading ("stopped-reading")."""

    def wire() -> Wire:
        s = Wire().seed_mx().smtp()
        s.ehlo("PIPELINING")
        s.say("MAIL FROM:<luke@sender.com>", "250 OK")
        s.say(f"RCPT TO:<{C3PO}>", "250 OK")
        if then == "after-rcpt":  # pipelined: the reset leaves r2d2 and DATA unanswered
            s.client(f"RCPT TO:<{R2D2}>", "DATA")
        else:
            s.say("DATA", "354 End data with <CR><LF>.<CR><LF>")
        if then in ("before", "after-250"):
            s.conn.send("c", stuffed(MESSAGE) + b".\r\n")
        if then == "after-250":
            s.server("250 OK")
        if then == "stopped-reading":  # the window closes mid-message; the idle timeout
            s.conn.send("c", MESSAGE[:100])
            s.server("421 4.4.2 mail.receiver.com Error: timeout exceeded")
        s.conn.rst("s")
        return s.wire

    return wire


def _reset_defers(then: str) -> Cases:
    """A reset that leaves the message with the sender: c3po deferred passes, delivered
    or bounced fails."""
    return Cases(
        "sender",
        passing=(one(_reset(then), outcomes={C3PO: DEFERRED}),),
        failing=(
            (Verdict.FAIL, one(_reset(then), outcomes={C3PO: DELIVERED})),
            (Verdict.FAIL, one(_reset(then), outcomes={C3PO: REJECTED})),
        ),
    )


MX_SILENT_20 = (
    "receiver.com. MX 10 silent.receiver.com.",
    "receiver.com. MX 20 mail.receiver.com.",
)


def _next_mx(first: str, wait: float, reached: bool = True) -> Callable[[], Wire]:
    """MX 10 refused ("refused": an RST to the SYN) or silent ("silent": the SYN never
    answered), then, ``wait`` seconds later, (or never) MX 20 taking c3po's message."""

    def wire() -> Wire:
        if first == "silent":
            w = Wire().mx(*MX_SILENT_20).syn(SILENT)
        else:
            w = Wire().mx(*MX_10_DOWN_20).refused(DNS)
        if reached:
            s = w.pause(wait).smtp()
            s.ehlo()
            s.transaction([C3PO])
        return w

    return wire


def _half_close(reply: bool) -> Callable[[], Wire]:
    """QUIT, the client's FIN at once, then (or not) the 221, and the server's FIN."""

    def wire() -> Wire:
        s = _delivered(C3PO)
        s.client("QUIT")
        s.conn.fin("c")
        if reply:
            s.server("221 2.0.0 bye")
        s.conn.fin("s")
        s.conn.ack("c")
        return s.wire

    return wire


def _quit(then: str) -> Callable[[], Wire]:
    def wire() -> Wire:
        s = _delivered(C3PO)
        if then == "no-221":
            s.client("QUIT")
            return s.close("receiver-first")
        if then == "no-quit":
            return s.close("sender-first")
        if then == "early-fin":
            s.client("QUIT")
            s.conn.fin("c")
            s.server("221 2.0.0 bye")
            s.conn.fin("s")
            s.conn.ack("c")
            return s.wire
        return s.quit(then)

    return wire


def _probe(suffix: str, look: bytes) -> Cases:
    return Cases(
        "receiver",
        passing=(
            one(_smuggle(look), outcomes={C3PO: DELIVERED}, stored={C3PO: [_smuggled_copy(look)]}),
            one(_smuggle(look, "421 4.5.0 bare LF"), outcomes={C3PO: DEFERRED}),
            one(_smuggle(look, "554 5.6.0 bare LF"), outcomes={C3PO: REJECTED}),
        ),
        failing=(
            (
                Verdict.FAIL,
                one(
                    _smuggle(look),
                    outcomes={C3PO: DELIVERED},
                    stored={C3PO: [CUT], R2D2: [SMUGGLED_COPY]},
                ),
            ),
            (Verdict.FAIL, one(_smuggle(look), outcomes={C3PO: DELIVERED}, stored={C3PO: [CUT]})),
        ),
    )


LOOK_ALIKES = {
    "lf-dot-lf": b"\n.\n",
    "lf-dot-crlf": b"\n.\r\n",
    "crlf-dot-lf": b"\r\n.\n",
    "cr-dot-cr": b"\r.\r",
    "crlf-dot-crcrlf": b"\r\n.\r\r\n",
}
TWO = {C3PO: DELIVERED, R2D2: DELIVERED}

CASES: dict[str, Cases] = {
    "seed.exchange": Cases(
        "sender",
        passing=(one(_seed_ok, outcomes={"aibo@receiver.com": REJECTED, **TWO}),),
        failing=((Verdict.FAIL, one(_seed_without_data, outcomes={C3PO: DEFERRED})),),
    ),
    "dns.mx-preference": Cases(
        "sender",
        passing=(one(_mx_preference("mail"), outcomes={C3PO: DELIVERED}),),
        failing=((Verdict.FAIL, one(_mx_preference("down"), outcomes={C3PO: DELIVERED})),),
    ),
    "dns.mx-fallback": Cases(
        "sender",
        passing=(one(_fallback(True), outcomes={C3PO: DELIVERED}),),
        failing=((Verdict.FAIL, one(_fallback(False), outcomes={C3PO: DEFERRED})),),
    ),
    "dns.implicit-mx": Cases(
        "sender",
        passing=(one(_implicit(True), outcomes={"c3po@implicit.receiver.com": DELIVERED}),),
        failing=(
            (
                Verdict.FAIL,
                one(_implicit(False), outcomes={"c3po@implicit.receiver.com": DEFERRED}),
            ),
        ),
    ),
    "dns.mx-without-implicit": Cases(
        "sender",
        passing=(one(_mx_only(False), outcomes={C3PO: DEFERRED}),),
        failing=((Verdict.FAIL, one(_mx_only(True), outcomes={C3PO: DELIVERED})),),
    ),
    "dns.null-mx": Cases(
        "sender",
        passing=(one(_null_mx("bounce"), outcomes={C3PO: REJECTED}),),
        failing=(
            (Verdict.FAIL, one(_null_mx("connect"), outcomes={C3PO: DELIVERED})),
            (Verdict.FAIL, one(_null_mx("bounce"), outcomes={C3PO: DEFERRED})),
            (Verdict.KNOWN, one(_null_mx("implicit"), outcomes={C3PO: REJECTED})),
        ),
    ),
    "dns.nxdomain-rejects": Cases(
        "sender",
        passing=(
            one(
                lambda: Wire().mx(qname="nosuch.receiver.com", rcode="NXDOMAIN"),
                outcomes={"c3po@nosuch.receiver.com": REJECTED},
            ),
        ),
        failing=(
            (
                Verdict.FAIL,
                one(
                    lambda: Wire().mx(qname="nosuch.receiver.com", rcode="NXDOMAIN"),
                    outcomes={"c3po@nosuch.receiver.com": DEFERRED},
                ),
            ),
        ),
    ),
    "dns.servfail-defers": Cases(
        "sender",
        passing=(one(lambda: Wire().mx(rcode="SERVFAIL"), outcomes={C3PO: DEFERRED}),),
        failing=(
            (Verdict.FAIL, one(lambda: Wire().mx(rcode="SERVFAIL"), outcomes={C3PO: REJECTED})),
            (
                Verdict.FAIL,
                one(
                    lambda: Wire().mx(rcode="SERVFAIL").smtp().transaction().quit(),
                    outcomes={C3PO: DELIVERED},
                ),
            ),
        ),
    ),
    "dns.timeout-defers": Cases(
        "sender",
        passing=(
            one(lambda: Wire().mx(answered=False).mx(answered=False), outcomes={C3PO: DEFERRED}),
        ),
        failing=(
            (Verdict.FAIL, one(lambda: Wire().mx(answered=False), outcomes={C3PO: REJECTED})),
            (
                Verdict.FAIL,
                one(lambda: Wire().mx(answered=False), outcomes={C3PO: OutcomeStatus.LOST}),
            ),
        ),
    ),
    "dns.truncation-tcp": Cases(
        "sender",
        passing=(one(_truncated(True), outcomes={C3PO: DELIVERED}),),
        failing=((Verdict.FAIL, one(_truncated(False), outcomes={C3PO: DEFERRED})),),
    ),
    "dns.glue-use": Cases(
        "sender",
        values=(
            ("used the glue", one(_glue(True), outcomes={C3PO: DEFERRED})),
            ("asked for the address", one(_glue(False), outcomes={C3PO: DELIVERED})),
        ),
    ),
    "dns.ptr-timing": Cases(
        "receiver",
        values=(
            ("before the 220", one(_ptr("connect"))),
            ("after HELO", one(_ptr("helo"))),
            ("never", one(_ptr("never"))),
        ),
    ),
    "dns.helo-mismatch-accepted": Cases(
        "receiver",
        passing=(one(_helo_mismatch(250), outcomes={C3PO: DELIVERED, R2D2: DELIVERED}),),
        failing=((Verdict.FAIL, one(_helo_mismatch(550), outcomes={C3PO: REJECTED})),),
    ),
    "session.greeting-multiline": Cases(
        "sender",
        passing=(one(_greeting_lines(early=False), outcomes=TWO),),
        failing=((Verdict.FAIL, one(_greeting_lines(early=True), outcomes=TWO)),),
    ),
    "session.greeting-421": Cases(
        "sender",
        passing=(one(_greeted(421, "quit"), outcomes={C3PO: DEFERRED, R2D2: DEFERRED}),),
        failing=(
            (Verdict.FAIL, one(_greeted(421, "mail"), outcomes={C3PO: DEFERRED, R2D2: DEFERRED})),
            (Verdict.FAIL, one(_greeted(421, "quit"), outcomes={C3PO: REJECTED, R2D2: REJECTED})),
        ),
    ),
    "session.greeting-554": Cases(
        "sender",
        passing=(one(_greeted(554, "quit"), outcomes={C3PO: REJECTED, R2D2: REJECTED}),),
        failing=(
            (Verdict.FAIL, one(_greeted(554, "mail"), outcomes={C3PO: REJECTED, R2D2: REJECTED})),
            (Verdict.KNOWN, one(_greeted(554, "close"), outcomes={C3PO: REJECTED, R2D2: REJECTED})),
        ),
    ),
    "session.ehlo-helo-fallback": Cases(
        "sender",
        passing=(one(_ehlo_502(True), outcomes=TWO),),
        failing=((Verdict.FAIL, one(_ehlo_502(False), outcomes={C3PO: DEFERRED, R2D2: DEFERRED})),),
    ),
    "session.vrfy-codes": Cases(
        "receiver",
        passing=(one(_vrfy(("aibo", 550), ("c3po", 250), ("r2d2", 252))),),
        failing=(
            (Verdict.FAIL, one(_vrfy(("aibo", 250)))),
            (Verdict.FAIL, one(_vrfy(("c3po", 501)))),
            (Verdict.FAIL, one(_vrfy(("c3po", 500)))),
        ),
    ),
    "session.vrfy-disabled-252": Cases(
        "receiver",
        passing=(one(_vrfy(("aibo", 252), ("c3po@receiver.com", 252))),),
        failing=(
            (Verdict.FAIL, one(_vrfy(("aibo", 502)))),
            (Verdict.FAIL, one(_vrfy(("c3po", 501), ("c3po@receiver.com", 252)))),
        ),
    ),
    "session.reply-first-digit": Cases(
        "sender",
        passing=(
            each(
                one(_mail_refused(451), outcomes={C3PO: DEFERRED, R2D2: DEFERRED}),
                one(_mail_refused(550), outcomes={C3PO: REJECTED, R2D2: REJECTED}),
            ),
        ),
        failing=(
            (
                Verdict.FAIL,
                each(
                    one(
                        _mail_refused(451, went_on=True), outcomes={C3PO: DEFERRED, R2D2: DEFERRED}
                    ),
                    one(_mail_refused(550), outcomes={C3PO: REJECTED, R2D2: REJECTED}),
                ),
            ),
            (
                Verdict.FAIL,
                each(
                    one(_mail_refused(451), outcomes={C3PO: REJECTED, R2D2: REJECTED}),
                    one(_mail_refused(550), outcomes={C3PO: REJECTED, R2D2: REJECTED}),
                ),
            ),
        ),
    ),
    "session.partial-rcpt": Cases(
        "sender",
        passing=(
            one(
                _partial(True),
                outcomes={C3PO: REJECTED, R2D2: DEFERRED, BB8: DELIVERED},
                stored={BB8: [MESSAGE]},
            ),
        ),
        failing=(
            (
                Verdict.FAIL,
                one(_partial(False), outcomes={C3PO: REJECTED, R2D2: DEFERRED, BB8: DEFERRED}),
            ),
            (
                Verdict.FAIL,
                one(
                    _partial(True),
                    outcomes={C3PO: REJECTED, R2D2: REJECTED, BB8: DELIVERED},
                    stored={BB8: [MESSAGE]},
                ),
            ),
        ),
    ),
    "session.noop": Cases(
        "receiver",
        passing=(one(_extra(), outcomes={C3PO: DELIVERED}),),
        failing=((Verdict.FAIL, one(_extra(noop="500 5.5.1 no"), outcomes={C3PO: DELIVERED})),),
    ),
    "session.rset": Cases(
        "receiver",
        passing=(one(_extra(), outcomes={C3PO: DELIVERED}),),
        failing=((Verdict.FAIL, one(_extra(rset="502 5.5.1 no"), outcomes={C3PO: DELIVERED})),),
    ),
    "session.unknown-command": Cases(
        "receiver",
        passing=(one(_extra(), outcomes={C3PO: DELIVERED}),),
        failing=((Verdict.FAIL, one(_extra(xyzzy="250 fine"), outcomes={C3PO: DELIVERED})),),
    ),
    "session.verb-case": Cases(
        "receiver",
        passing=(one(_extra(), outcomes={C3PO: DELIVERED}),),
        failing=((Verdict.FAIL, one(_extra(mail="500 5.5.1 what"), outcomes={C3PO: DEFERRED})),),
    ),
    "session.noop-argument": Cases(
        "receiver",
        passing=(one(_extra(), outcomes={C3PO: DELIVERED}),),
        failing=(
            (Verdict.FAIL, one(_noop_x_unanswered, outcomes={C3PO: DEFERRED})),
            (
                Verdict.KNOWN,
                one(_extra(noop_x="500 5.5.4 no arguments"), outcomes={C3PO: DELIVERED}),
            ),
        ),
    ),
    "session.command-line-512": Cases(
        "receiver",
        passing=(one(_extra(), outcomes={C3PO: DELIVERED}),),
        failing=(
            (Verdict.FAIL, one(_extra(long="500 5.5.2 too long"), outcomes={C3PO: DELIVERED})),
        ),
    ),
    "esmtp.pipelining-advertised-only": Cases(
        "sender",
        passing=(one(_pipelining((), ()), outcomes={C3PO: DELIVERED}),),
        failing=(
            (
                Verdict.FAIL,
                one(
                    _pipelining((), ("MAIL FROM:<luke@sender.com>", f"RCPT TO:<{C3PO}>", "DATA")),
                    outcomes={C3PO: DELIVERED},
                ),
            ),
        ),
    ),
    "esmtp.pipelining-group-end": Cases(
        "sender",
        passing=(
            one(
                _pipelining(
                    ("PIPELINING",), ("MAIL FROM:<luke@sender.com>", f"RCPT TO:<{C3PO}>", "DATA")
                ),
                outcomes={C3PO: DELIVERED},
            ),
        ),
        failing=(
            (
                Verdict.FAIL,
                one(
                    _pipelining(("PIPELINING",), ("NOOP", "MAIL FROM:<luke@sender.com>")),
                    outcomes={C3PO: DEFERRED},
                ),
            ),
        ),
    ),
    "esmtp.params-only-if-advertised": Cases(
        "sender",
        passing=(one(_params("MAIL FROM:<luke@sender.com>"), outcomes={C3PO: DELIVERED}),),
        failing=(
            (
                Verdict.FAIL,
                one(
                    _params("MAIL FROM:<luke@sender.com> BODY=8BITMIME"), outcomes={C3PO: DELIVERED}
                ),
            ),
        ),
    ),
    "esmtp.size-exceeded": Cases(
        "sender",
        passing=(
            one(_size(False), outcomes={C3PO: REJECTED}),
            one(_size(False, mail=False), outcomes={C3PO: REJECTED}),
        ),
        failing=(
            (Verdict.FAIL, one(_size(True), outcomes={C3PO: REJECTED})),
            (Verdict.FAIL, one(_size(False), outcomes={C3PO: DEFERRED})),
            (Verdict.FAIL, one(_size(False, mail=False), outcomes={C3PO: DEFERRED})),
        ),
    ),
    "esmtp.8bitmime": Cases(
        "sender",
        passing=(
            one(_no_8bitmime(SEVEN_BIT), outcomes={C3PO: DELIVERED}, stored={C3PO: [SEVEN_BIT]}),
        ),
        failing=(
            (
                Verdict.FAIL,
                one(
                    _no_8bitmime(EIGHT_BIT), outcomes={C3PO: DELIVERED}, stored={C3PO: [EIGHT_BIT]}
                ),
            ),
        ),
    ),
    "data.dot-stuffing": _body_cases("dots.eml", lambda m: m.replace(b"\r\n.\r\n", b"\r\n")),
    "data.final-crlf": _body_cases("no-final-crlf.eml", lambda m: m[:-2] + b"!\r\n"),
    "data.text-line-1000": _body_cases("line-998.eml", _wrapped),
    "data.long-line-sent": Cases(
        "sender",
        passing=(_stored(_wrapped(_file("line-1500.eml"))),),
        failing=((Verdict.FAIL, _stored(_file("line-1500.eml"))),),
    ),
    **{f"data.smuggle-{suffix}": _probe(suffix, look) for suffix, look in LOOK_ALIKES.items()},
    "close.quit-221": Cases(
        "receiver",
        passing=(
            one(_quit("receiver-first"), outcomes={C3PO: DELIVERED}, stored={C3PO: [MESSAGE]}),
        ),
        failing=((Verdict.FAIL, one(_quit("no-221"), outcomes={C3PO: DELIVERED})),),
    ),
    "close.client-waits-221": Cases(
        "sender",
        passing=(
            one(_quit("receiver-first"), outcomes={C3PO: DELIVERED}, stored={C3PO: [MESSAGE]}),
        ),
        failing=(
            (Verdict.FAIL, one(_quit("no-quit"), outcomes={C3PO: DELIVERED})),
            (Verdict.KNOWN, one(_quit("early-fin"), outcomes={C3PO: DELIVERED})),
            (Verdict.KNOWN, one(_quit("sender-rst"), outcomes={C3PO: DELIVERED})),
        ),
    ),
    "close.pattern": Cases(
        "sender",
        values=(
            ("both closed after the 221", one(_quit("receiver-first"))),
            ("both closed after the 221", one(_quit("sender-first"))),
            ("sender FIN before the 221", one(_quit("early-fin"))),
            ("sender RST after the 221", one(_quit("sender-rst"))),
        ),
    ),
    "tcp.reset-after-rcpt": _reset_defers("after-rcpt"),
    "tcp.reset-after-354": _reset_defers("after-354"),
    "tcp.reset-before-250": _reset_defers("before"),
    "tcp.zero-window-data": _reset_defers("stopped-reading"),
    "tcp.reset-after-250": Cases(
        "sender",
        passing=(one(_reset("after-250"), outcomes={C3PO: DELIVERED}),),
        failing=((Verdict.FAIL, one(_reset("after-250"), outcomes={C3PO: DEFERRED})),),
    ),
    "tcp.syn-unanswered-next-mx": Cases(
        "sender",
        passing=(one(_next_mx("silent", 5), outcomes={C3PO: DELIVERED}),),
        failing=(
            (Verdict.FAIL, one(_next_mx("silent", 5, reached=False), outcomes={C3PO: DEFERRED})),
            (Verdict.FAIL, one(_next_mx("silent", 5), outcomes={C3PO: DEFERRED})),
        ),
    ),
    "tcp.next-mx-delay": Cases(
        "sender",
        values=(
            (
                "after an RST: at once; after no answer: 5 s",
                each(one(_next_mx("refused", 0)), one(_next_mx("silent", 5.2))),
            ),
            (
                "after an RST: 2 s; after no answer: never",
                each(one(_next_mx("refused", 2)), one(_next_mx("silent", 0, reached=False))),
            ),
        ),
    ),
    "tcp.half-close-221": Cases(
        "receiver",
        passing=(one(_half_close(True), outcomes={C3PO: DELIVERED}, stored={C3PO: [MESSAGE]}),),
        failing=((Verdict.FAIL, one(_half_close(False), outcomes={C3PO: DELIVERED})),),
    ),
}


# --- STARTTLS (harness/checks/tls.py): ladders spliced as a decrypting dissector shows them
BEFORE, AFTER = "before.sender.com", "after.sender.com"
MAIL_BEHIND = b"MAIL FROM:<luke@sender.com>\r\n"
INJECTED_REPLY = b"250 injected\r\n"
Inner = Callable[[Smtp], object]


def _inner(*extensions: str, name: str = "mail.sender.com") -> Inner:
    """The dialogue inside TLS: EHLO (offering ``extensions``), a transaction, QUIT."""

    def write(s: Smtp) -> None:
        s.ehlo(*extensions, name=name)
        s.transaction()
        s.quit()

    return write


SESSION = _inner("PIPELINING")


def _secured(
    inner: Inner | None = SESSION,
    handshake: Detail | None = TLS13,
    later: Callable[[], Wire] | None = None,
    **outer: object,
) -> Callable[[Scenario, Path], Ladder]:
    """A STARTTLS session (``outer``: ``tls_wire.starttls``'s probes), then ``inner``
    inside TLS, then the ``later`` connections."""

    def make(scenario: Scenario, folder: Path) -> Ladder:
        w, s = starttls(**outer)  # type: ignore[arg-type]
        if inner is None:
            s.close("sender-rst")
            session = None
        else:
            session = inside()
            inner(session)
        return spliced(scenario, folder, w, session, handshake, later() if later else None)

    return make


def tls(make: Callable[[Scenario, Path], Ladder], **run: object) -> Build:
    """A case of one run whose ladder ``make`` splices."""

    def build(scenarios: Sequence[Scenario], folder: Path) -> list[RunResult]:
        return [tls_run(scenarios[0], folder, make(scenarios[0], folder), **run)]  # type: ignore[arg-type]

    return build


def _then(*lines: tuple[str, str]) -> Inner:
    """Inside TLS: EHLO, each (command, reply), then QUIT."""

    def write(s: Smtp) -> None:
        s.ehlo("PIPELINING")
        for command, reply in lines:
            s.say(command, reply)
        s.quit()

    return write


def _no_reply(s: Smtp) -> None:
    s.ehlo("PIPELINING")
    s.client("STARTTLS")
    s.close("receiver-first")


def _answers_first(s: Smtp) -> None:
    """A server that answers, inside TLS, what was pipelined behind STARTTLS."""
    s.server("250 2.0.0 Ok")
    SESSION(s)


def _took_injected(s: Smtp) -> None:
    """A client that read the injected 250 as its EHLO reply: MAIL leaves before it."""
    s.client("EHLO mail.sender.com")
    s.client("MAIL FROM:<luke@sender.com>")
    s.server("250 mail.receiver.com Hello")
    s.server("250 OK")
    s.say("RCPT TO:<c3po@receiver.com>", "250 OK")
    s.data(MESSAGE)
    s.quit()


def _no_ehlo(mail: str) -> Inner:
    def write(s: Smtp) -> None:
        s.say(mail, "250 OK")
        s.say("RCPT TO:<c3po@receiver.com>", "250 OK")
        s.data(MESSAGE)
        s.quit()

    return write


def _plain(s: Smtp) -> Wire:
    s.transaction()
    return s.quit()


def _mail_behind_454() -> Wire:
    """MAIL pipelined behind STARTTLS; the 454 and MAIL's 250 in one segment."""
    _wire, s = starttls(MAIL_BEHIND, "454 4.7.0 TLS not available", b"250 OK\r\n")
    return s.quit()


def _refused_454(then: str) -> Callable[[], Wire]:
    def wire() -> Wire:
        w, s = starttls(reply="454 4.7.0 TLS not available")
        if then == "plaintext":
            return _plain(s)
        s.quit()
        if then == "reconnect":
            _plain(w.smtp())
        return w

    return wire


def _left_after_injection(then: str) -> Callable[[], Wire]:
    """The client reads a reply injected behind the 220 and leaves that connection (closes
    it, no TLS), then (``then`` = "plaintext") delivers on a new one - Exim does."""

    def wire() -> Wire:
        w, s = starttls(injected=INJECTED_REPLY)
        s.close("client-first")
        if then == "plaintext":
            _plain(w.smtp())
        return w

    return wire


def _stripped(delivered: bool) -> Callable[[], Wire]:
    def wire() -> Wire:
        s = Wire().seed_mx().smtp()
        s.ehlo("PIPELINING", "8BITMIME")
        return _plain(s) if delivered else s.quit()

    return wire


def _reconnected() -> Wire:
    w = Wire()
    s = w.smtp()
    s.ehlo("PIPELINING")
    _plain(s)
    return w


def _received(name: str) -> bytes:
    trace = f"Received: from {name} (mail.sender.com [192.0.2.10])\r\n\tby mail.receiver.com"
    return f"{trace} with ESMTPS; Tue, 1 Dec 2026 17:00:00 +0000\r\n".encode() + MESSAGE


_FORGETS = _secured(_inner("PIPELINING", name=AFTER), name=BEFORE)
_DELIVERED_TLS = tls(_secured(), outcomes={C3PO: DELIVERED}, stored={C3PO: [MESSAGE]})
_DELIVERED_PLAIN = tls(
    _secured(None, None, _reconnected), outcomes={C3PO: DELIVERED}, stored={C3PO: [MESSAGE]}
)
_GAVE_UP = tls(_secured(None, None), outcomes={C3PO: DEFERRED})


def _clear_handshake(version: str, cipher: str) -> Detail:
    """A handshake read in the clear (no key log): version and cipher, no certificate."""
    return (("version", version), ("cipher", cipher), ("decrypted", False))


TLS10 = _clear_handshake("TLSv1.0", "0x002f")  # TLS_RSA_WITH_AES_128_CBC_SHA
TLS11 = _clear_handshake("TLSv1.1", "0xc009")  # TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA


def _certificate(variant: str) -> dict[str, Cases]:
    return {
        f"tls.certificate-{variant}": Cases(
            "sender",
            values=(
                ("delivered over TLS", _DELIVERED_TLS),
                ("delivered in plaintext", _DELIVERED_PLAIN),
                ("not delivered", _GAVE_UP),
            ),
        ),
        f"tls.certificate-{variant}-verify": Cases(
            "sender",
            passing=(_GAVE_UP,),
            failing=((Verdict.FAIL, _DELIVERED_TLS), (Verdict.FAIL, _DELIVERED_PLAIN)),
        ),
    }


def _injection_server(answered: bool) -> Build:
    def run(behind: str, inner: Inner) -> Build:
        return tls(_secured(inner, behind=behind.encode()), outcomes={C3PO: DELIVERED})

    first = _answers_first if answered else SESSION
    raws = list(INJECTIONS.values())
    return each(run(raws[0], first), *(run(raw, SESSION) for raw in raws[1:]))


DELIVERED_ONE = {C3PO: DELIVERED}
CASES.update(
    {
        "tls.no-starttls-after-tls": Cases(
            "receiver",
            passing=(tls(_secured()),),
            failing=((Verdict.FAIL, tls(_secured(_inner("PIPELINING", "STARTTLS")))),),
        ),
        "tls.second-starttls-refused": Cases(
            "receiver",
            passing=(
                tls(_secured(_then(("STARTTLS", "503 5.5.1 TLS already active")))),
                tls(_secured(_then(("STARTTLS", "554 5.5.1 Error: TLS already active")))),
            ),
            failing=(
                (Verdict.FAIL, tls(_secured(_then(("STARTTLS", "220 2.0.0 Ready"))))),
                (Verdict.FAIL, tls(_secured(_no_reply))),
                (Verdict.KNOWN, tls(_secured(_then(("STARTTLS", "454 4.7.0 try later"))))),
            ),
        ),
        "tls.forgets-ehlo": Cases(
            "receiver",
            passing=(tls(_FORGETS, outcomes=DELIVERED_ONE, stored={C3PO: [_received(AFTER)]}),),
            failing=(
                (
                    Verdict.FAIL,
                    tls(_FORGETS, outcomes=DELIVERED_ONE, stored={C3PO: [_received(BEFORE)]}),
                ),
            ),
        ),
        "tls.injection-server": Cases(
            "receiver",
            passing=(_injection_server(False),),
            failing=((Verdict.FAIL, _injection_server(True)),),
        ),
        "tls.nothing-after-starttls": Cases(
            "sender",
            passing=(tls(_secured(), outcomes=DELIVERED_ONE),),
            failing=((Verdict.FAIL, tls(_secured(behind=MAIL_BEHIND), outcomes=DELIVERED_ONE)),),
        ),
        "tls.starttls-last-in-group": Cases(
            "sender",
            passing=(tls(_secured(ahead=b"RSET\r\n", reply="250 2.0.0 Ok\r\n" + READY)),),
            failing=(
                (
                    Verdict.FAIL,
                    tls(
                        _secured(
                            ahead=b"RSET\r\n", reply="250 2.0.0 Ok\r\n" + READY, behind=MAIL_BEHIND
                        )
                    ),
                ),
                (Verdict.FAIL, one(_mail_behind_454)),
            ),
        ),
        "tls.injection-client": Cases(
            "sender",
            passing=(
                tls(_secured(_inner(), injected=INJECTED_REPLY), outcomes=DELIVERED_ONE),
                one(_left_after_injection("plaintext"), outcomes=DELIVERED_ONE),
                one(_left_after_injection("nothing"), outcomes={C3PO: DEFERRED}),
            ),
            failing=(
                (  # OpenSMTPD 6.8: its mta process aborts on the injected reply (double free)
                    Verdict.FAIL,
                    one(_left_after_injection("nothing"), outcomes={C3PO: OutcomeStatus.LOST}),
                ),
                (
                    Verdict.FAIL,
                    tls(_secured(_took_injected, injected=INJECTED_REPLY), outcomes=DELIVERED_ONE),
                ),
                (
                    Verdict.FAIL,
                    tls(_secured(_inner(), injected=INJECTED_REPLY), outcomes={C3PO: DEFERRED}),
                ),
            ),
        ),
        "tls.re-ehlo": Cases(
            "sender",
            passing=(tls(_secured()),),
            failing=(
                (Verdict.KNOWN, tls(_secured(_no_ehlo("MAIL FROM:<luke@sender.com>")))),
                (Verdict.FAIL, tls(_secured(_no_ehlo("MAIL FROM:<luke@sender.com> SIZE=68")))),
            ),
        ),
        "tls.454-policy": Cases(
            "sender",
            values=(
                ("carried on in plaintext", one(_refused_454("plaintext"))),
                ("tried a new connection", one(_refused_454("reconnect"))),
                ("gave up on the connection", one(_refused_454("quit"))),
            ),
        ),
        "tls.454-required": Cases(
            "sender",
            passing=(one(_refused_454("quit"), outcomes={C3PO: DEFERRED}),),
            failing=(
                (Verdict.FAIL, one(_refused_454("plaintext"), outcomes=DELIVERED_ONE)),
                (Verdict.FAIL, one(_refused_454("quit"), outcomes=DELIVERED_ONE)),
                (Verdict.FAIL, one(_refused_454("quit"), outcomes={C3PO: OutcomeStatus.LOST})),
                (Verdict.FAIL, one(_refused_454("quit"), outcomes={C3PO: OutcomeStatus.REJECTED})),
            ),
        ),
        "tls.downgrade": Cases(
            "sender",
            values=(
                ("delivered in plaintext", one(_stripped(True), outcomes=DELIVERED_ONE)),
                ("not delivered", one(_stripped(False), outcomes={C3PO: DEFERRED})),
            ),
        ),
        "tls.downgrade-required": Cases(
            "sender",
            passing=(
                each(
                    one(_stripped(False), outcomes={C3PO: DEFERRED}),
                    one(_stripped(False), outcomes={C3PO: DEFERRED}),
                ),
            ),
            failing=(
                (
                    Verdict.FAIL,
                    each(
                        one(_stripped(False), outcomes={C3PO: DEFERRED}),
                        one(_stripped(True), outcomes=DELIVERED_ONE),
                    ),
                ),
            ),
        ),
        **{k: v for variant in VARIANTS for k, v in _certificate(variant).items()},
        "tls.version": Cases(
            "receiver",
            passing=(tls(_secured()), tls(_secured(handshake=TLS12))),
            failing=(
                (Verdict.FAIL, tls(_secured(None, TLS10))),
                (Verdict.FAIL, tls(_secured(None, TLS11))),
            ),
        ),
        "tls.version-cipher": Cases(
            "receiver",
            values=(
                ("TLSv1.3 TLS_AES_256_GCM_SHA384", tls(_secured())),
                ("TLSv1.2 ECDHE-ECDSA-AES256-GCM-SHA384", tls(_secured(handshake=TLS12))),
                ("TLSv1.0 0x002f", tls(_secured(None, TLS10))),
            ),
        ),
    }
)
