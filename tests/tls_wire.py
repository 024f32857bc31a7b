"""Crafted STARTTLS runs: a ladder as a decrypting dissector shows it (TLSCOMMON.md).

The dissector on main reads what follows a 220 to STARTTLS as opaque TLS records, so a
crafted run inside TLS is spliced from real dissections: the plaintext part up to the 220
(``outer``: its STARTTLS, the 220 and any ``PLAINTEXT_AFTER_STARTTLS`` anomaly, all from
the real dissector), then one ``tls-handshake`` step, then the dialogue inside TLS
(``inner``: a session written as plaintext on its own wire, whose TCP handshake and
greeting are dropped, moved onto the outer connection and marked ``tls=True``), then
``later`` connections (plaintext, with their own connection ids).  Nothing here judges.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from wire import Smtp, Wire, run_of

from harness.ladder.dissect import dissect
from harness.ladder.model import Detail, Ladder, Step, StepKind, detail
from harness.outcome import OutcomeStatus
from harness.runner import RunResult, host_names
from harness.scenario import Scenario

TLS13 = detail(
    version="TLSv1.3",
    cipher="TLS_AES_256_GCM_SHA384",
    sni="mail.receiver.com",
    subject="CN=mail.receiver.com",
    issuer="CN=smtp-harness lab intermediate",
    not_before="2026-01-01T00:00:00Z",
    not_after="2027-01-01T00:00:00Z",
)
TLS12 = (*TLS13[2:], ("version", "TLSv1.2"), ("cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"))
OPENING = frozenset({StepKind.SYN, StepKind.SYN_ACK, StepKind.ACK})
INSIDE = frozenset({StepKind.COMMAND, StepKind.REPLY, StepKind.CONTENT, StepKind.BDAT})
STARTTLS_EHLO = ("PIPELINING", "8BITMIME", "STARTTLS")
READY = "220 2.0.0 Ready to start TLS"


def starttls(
    behind: bytes = b"",
    reply: str = READY,
    injected: bytes = b"",
    ahead: bytes = b"",
    name: str = "mail.sender.com",
) -> tuple[Wire, Smtp]:
    """The seed's MX look-up, a greeting, EHLO ``name`` offered STARTTLS, then STARTTLS
    with ``ahead`` before it and ``behind`` after it in its segment, and ``reply`` (its
    lines; a pipelined group's replies) with ``injected`` behind it in its segment."""
    w = Wire().seed_mx()
    s = w.smtp()
    s.ehlo(*STARTTLS_EHLO, name=name)
    s.client(ahead + b"STARTTLS\r\n" + behind)
    s.conn.send("s", f"{reply}\r\n".encode() + injected)
    return w, s


def inside() -> Smtp:
    """A session to write the dialogue inside TLS on (its greeting is dropped)."""
    return Wire().smtp(greeting="220 dropped")


def spliced(
    scenario: Scenario,
    folder: Path,
    outer: Wire,
    inner: Smtp | None = None,
    handshake: Detail | None = TLS13,
    later: Wire | None = None,
) -> Ladder:
    names = host_names(scenario.topology)
    folder.mkdir(parents=True, exist_ok=True)
    head = dissect(str(outer.write(folder / "outer.pcap")), names).steps
    conn = max(s.conn for s in head if s.conn is not None)
    steps = list(head)
    if handshake is not None:
        hosts = (scenario.receiver_host, scenario.sender_host)
        shake = Step(0, steps[-1].time, *hosts, StepKind.TLS_HANDSHAKE, "TLS", (), conn, handshake)
        steps.append(shake)
    if inner is not None:
        body = dissect(str(inner.wire.write(folder / "inner.pcap")), names).steps
        body = [s for s in body if s.kind not in OPENING and s.get("answers") != "<greeting>"]
        steps += [_inside(s, conn) for s in body]
    if later is not None:
        tail = dissect(str(later.write(folder / "later.pcap")), names).steps
        steps += [replace(s, conn=None if s.conn is None else s.conn + conn) for s in tail]
    return Ladder([replace(s, index=i) for i, s in enumerate(steps, 1)], hosts=names)


def _inside(step: Step, conn: int) -> Step:
    marked = (*step.detail, ("tls", True)) if step.kind in INSIDE else step.detail
    return replace(step, conn=conn, detail=marked)


def tls_run(
    scenario: Scenario,
    folder: Path,
    ladder: Ladder,
    outcomes: dict[str, OutcomeStatus] | None = None,
    stored: dict[str, list[bytes]] | None = None,
) -> RunResult:
    """A run whose ladder is ``ladder``, with the outcomes and stored copies it reports."""
    return replace(run_of(scenario, None, folder, outcomes, stored), ladder=ladder)
