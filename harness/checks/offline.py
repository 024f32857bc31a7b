"""Judging a passive capture: each SMTP session with the registered checks, no lab.

Rules kept here:
- The judges are the matrix's (``harness.checks.base.registry``), each given one session
  as a run: its ladder (the capture's step numbers), its client as the sender host and
  its server as the receiver host.  Nothing else of a lab run exists: no scenario, no
  stored copies, no queue.
- A check a passive capture cannot judge is ``n/a`` with why, and its judge never runs:
  one that compares several lab runs (its setups), one with no precondition (it judges
  the whole run of its lab setup, e.g. the seed exchange), one whose precondition says
  what else of a lab run its judge reads (``Precondition.lab``).  A TLS session (implicit
  TLS, RFC 8314 §3) is n/a for every check: its SMTP is encrypted; so is a session of
  which the capture holds one direction only (a judge would take the missing side's
  silence for the peer's).  In a session that went on in TLS after STARTTLS and was not
  decrypted (an opaque ``tls`` step: no key log), a check that looks inside TLS
  (``Precondition.inside_tls``) is n/a, ``UNDECRYPTED``: a passive capture without the
  secrets is no fault of ours (in a lab run the key log is ours: there it is an error); any
  other verdict that cites a step from there on, or a fail that cites nothing, is n/a.  The
  ``tls-handshake`` step is read in the clear: citing it keeps a verdict.
- Every other check is judged by ``Check.judge``: its preconditions decide n/a, and its
  verdict is earned (cited steps of the session) as in the matrix.  A judge that raises
  is our fault: an ``error`` naming the exception, never a pass or a fail.
- Per recipient, the outcome the server's replies show (RFC 5321 §4.2): a RCPT refused
  (4yz deferred, 5yz rejected), or the reply to the end of the message data (DATA's
  ``<end-of-data>`` or ``BDAT ... LAST``, RFC 3030 §2) for every accepted recipient
  (2yz delivered to this server); a refused DATA decides them the same way.  A RSET
  abandons them, a transaction never finished leaves them undecided (status None).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from harness.checks.base import Check, Outcome, error, not_applicable, registry
from harness.checks.queries import Present, present
from harness.errors import InternalFault
from harness.ladder.dissect import endpoint_names
from harness.ladder.model import Ladder, Step, StepKind
from harness.ladder.sessions import Flow, FlowKind
from harness.outcome import OutcomeStatus, SendReport
from harness.result import RunResult
from harness.smtp.commands import parse_command
from harness.verdict import ExitCode, Verdict

TLS_REASON = "the session is TLS from its first byte (RFC 8314 §3): its SMTP is not readable"
UNDECRYPTED = "TLS not decrypted: no key log"
_BY_DIGIT = {2: OutcomeStatus.DELIVERED, 4: OutcomeStatus.DEFERRED, 5: OutcomeStatus.REJECTED}
_ENDS_DATA = frozenset({"<end-of-data>", "BDAT LAST"})  # what a reply to the message answers
# kinds read once here: an enum member read off its class costs ~70 ns, in a loop per step
_COMMAND, _REPLY, _TLS, _HANDSHAKE = (
    StepKind.COMMAND,
    StepKind.REPLY,
    StepKind.TLS,
    StepKind.TLS_HANDSHAKE,
)
PLANS = 4096  # plans kept (by what a session's ladder has); then forgotten and made again


def passive_reason(check: Check) -> str:
    """Why a passive capture cannot judge *check* ("" when it can)."""
    if len(check.setups) > 1:
        names = ", ".join(setup.name for setup in check.setups)
        return f"needs a lab: it compares {len(check.setups)} lab runs ({names})"
    if not check.requires:
        return f"needs a lab: it judges the whole run of the lab setup {check.setups[0].name!r}"
    labs = [pre.lab for pre in check.requires if pre.lab]
    return f"needs a lab: its judge reads {labs[0]}" if labs else ""


@dataclass(frozen=True)
class Ends:
    """What the judges read of a scenario, for a session seen passively: who is who."""

    sender_host: str
    receiver_host: str


@dataclass(frozen=True)
class Recipient:
    """What the server's replies say became of one recipient."""

    address: str
    status: OutcomeStatus | None  # None: no reply decided it
    stage: str  # RCPT, DATA, <end-of-data>, BDAT LAST, RSET, or "unfinished"
    code: int | None = None
    step: int | None = None  # the deciding reply's step number


class Judged(NamedTuple):
    """One check's verdict on a session (a named tuple: made at two thirds of a frozen
    dataclass's cost, one per check judged)."""

    check: Check
    outcome: Outcome


@dataclass
class SessionReport:
    flow: Flow
    client: str  # as the ladder names it
    server: str
    recipients: list[Recipient] = field(default_factory=list)
    judged: list[Judged] = field(default_factory=list)
    # the places in ``judged`` of each verdict, in any order: given by ``OfflineJudge``
    # (its plan has those of the verdicts made before judging), else found in one pass
    places: dict[Verdict, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.judged and not self.places:
            self.places = places_of(self.judged)

    def count(self, verdict: Verdict) -> int:
        return len(self.places.get(verdict, ()))

    def with_verdict(self, *verdicts: Verdict) -> list[Judged]:
        """The judged checks with one of ``verdicts``, in the order of ``judged``."""
        places = [at for verdict in verdicts for at in self.places.get(verdict, ())]
        return [self.judged[at] for at in sorted(places)]

    @property
    def exit_code(self) -> ExitCode:
        if self.with_verdict(Verdict.ERROR):
            return ExitCode.HARNESS_ERROR
        return ExitCode.FAIL if self.with_verdict(Verdict.FAIL) else ExitCode.OK


def places_of(judged: Iterable[Judged | None]) -> dict[Verdict, list[int]]:
    """The places of each verdict in *judged* (a None, a verdict not made yet, has none)."""
    found: dict[Verdict, list[int]] = {}
    for at, one in enumerate(judged):
        if one is not None:
            found.setdefault(one.outcome.verdict, []).append(at)
    return found


class OfflineJudge:
    """The registered checks (or those given), each with why a capture cannot judge it."""

    def __init__(self, checks: Sequence[Check] | None = None) -> None:
        chosen = list(registry().values()) if checks is None else list(checks)
        self.checks = [(check, passive_reason(check)) for check in chosen]
        # a lab-only check's n/a is the same in every session: judged once (they are most);
        # the others are judged in their places of the list, in the same order
        self._lab_only = [
            Judged(check, not_applicable(reason)) if reason else None
            for check, reason in self.checks
        ]
        undecrypted = not_applicable(UNDECRYPTED)
        self._judged_here = [
            (at, check, Judged(check, undecrypted) if _inside_tls(check) else None)
            for at, (check, reason) in enumerate(self.checks)
            if not reason
        ]
        self._plans: dict[tuple[frozenset, ...], tuple[Plan, Plan]] = {}
        self._folders: dict[str, Path] = {}
        self._unreadable: dict[str, tuple[Judged, ...]] = {}

    def session(self, flow: Flow, source: str, hosts: dict[str, str]) -> SessionReport:
        """The report of one SMTP or TLS session (``flow.session`` set)."""
        assert flow.client is not None and flow.server is not None  # a session is a connection
        client, server = endpoint_names(hosts, flow.client[0], flow.server)
        judged, places = self._judged(flow, source, hosts, Ends(client, server))
        return SessionReport(flow, client, server, recipients(flow.steps), judged, places)

    def _judged(
        self, flow: Flow, source: str, hosts: dict[str, str], ends: Ends
    ) -> tuple[list[Judged], dict[Verdict, list[int]]]:
        """Every check's verdict on the session, in the order of ``checks``; the places of
        each verdict in that list."""
        why_not = unreadable(flow, ends)
        if why_not:
            unjudged = self._unjudged(why_not)
            return list(unjudged), {Verdict.NA: list(range(len(unjudged)))}
        folder = self._folders.get(source) or self._folders.setdefault(source, Path(source))
        run = _as_run(flow.ladder(source, hosts), ends, folder)
        has = present(run.ladder)
        tls_at = _encrypted_from(flow) if _TLS in has.kinds else None
        blind = tls_at is not None and not _decrypted(flow)
        plan = self._plan(has)[blind]
        judged = list(plan.filled)
        places = {verdict: list(at) for verdict, at in plan.places.items()}
        for at, check in plan.judged:
            outcome = _judge(check, run, has, tls_at)
            judged[at] = Judged(check, outcome)
            places.setdefault(outcome.verdict, []).append(at)
        return judged, places  # type: ignore[return-value]  # every place is filled

    def _unjudged(self, why_not: str) -> tuple[Judged, ...]:
        """Every check n/a with why no check can judge the session: made once per reason
        (there are three)."""
        made = self._unreadable.get(why_not)
        if made is None:
            unjudged = not_applicable(why_not)
            made = self._unreadable[why_not] = tuple(Judged(c, unjudged) for c, _ in self.checks)
        return made

    def _plan(self, has: Present) -> tuple[Plan, Plan]:
        """The plans for a ladder that has ``has``, read in the clear and blind (TLS not
        decrypted): each judgeable check has its n/a made already when that ladder lacks
        what its first precondition needs (``Check.judge`` would say just that, its first
        precondition being the first it asks), or, blind, when it looks inside TLS (that n/a
        comes first): most sessions have the same few kinds, verbs and codes, so most
        checks of a session are never called."""
        key = (has.kinds, has.verbs, has.codes)
        plans = self._plans.get(key)
        if plans is None:
            if len(self._plans) >= PLANS:
                self._plans.clear()
            lacking = [
                (at, check, unseen, _lacking(check, has)) for at, check, unseen in self._judged_here
            ]
            plans = self._plans[key] = (
                self._planned([(at, check, made) for at, check, _unseen, made in lacking]),
                self._planned([(at, check, unseen or made) for at, check, unseen, made in lacking]),
            )
        return plans

    def _planned(self, made: list[tuple[int, Check, Judged | None]]) -> Plan:
        """A plan from each judgeable check's verdict made already (None: to judge)."""
        filled = list(self._lab_only)
        for at, _check, judged in made:
            filled[at] = judged
        judged = tuple((at, check) for at, check, judged in made if not judged)
        places = {verdict: tuple(at) for verdict, at in places_of(filled).items()}
        return Plan(tuple(filled), judged, places)


@dataclass(frozen=True)
class Plan:
    """Every check's place in a session's verdicts: those made before judging (each
    lab-only check's n/a, and each n/a its plan made already) filled, the others judged."""

    filled: tuple[Judged | None, ...]  # in the order of ``OfflineJudge.checks``; None: judged
    judged: tuple[tuple[int, Check], ...]  # the places to judge, in order, and their checks
    places: dict[Verdict, tuple[int, ...]]  # the places of each verdict in ``filled``


def _lacking(check: Check, has: Present) -> Judged | None:
    outcome = check.lacking(has)
    return None if outcome is None else Judged(check, outcome)


def _inside_tls(check: Check) -> bool:
    return any(pre.inside_tls for pre in check.requires)


def _as_run(ladder: Ladder, ends: Ends, folder: Path) -> RunResult:
    """A run of nothing but the session's ladder: what a passive capture gives a judge."""
    return RunResult(
        scenario=ends,  # type: ignore[arg-type]  # only who is who: see passive_reason
        folder=folder,
        report=SendReport({}),
        stored=[],
        receiver_log=[],
        dns_log=[],
        ladder=ladder,
    )


def unreadable(flow: Flow, ends: Ends) -> str:
    """Why no check can judge the session at all ("" when they can): TLS from the first
    byte, or one direction missing from the capture (a judge would read its silence as
    the peer's)."""
    if flow.kind is FlowKind.TLS:
        return TLS_REASON
    silent = _silent(flow.steps, {ends.receiver_host, ends.sender_host})
    for name, side in ((ends.receiver_host, "server"), (ends.sender_host, "client")):
        if name in silent:
            return f"the capture has nothing from the {side}: only one direction was captured"
    return ""


def _silent(steps: Iterable[Step], names: set[str]) -> set[str]:
    """Those of ``names`` that sent no step the capture holds (an ``inferred`` step was
    not captured): the scan ends once each has sent one."""
    left = set(names)
    for step in steps:
        if step.src in left and not step.get("inferred"):
            left.discard(step.src)
            if not left:
                break
    return left


def _encrypted_from(flow: Flow) -> int | None:
    """The step where the session went on in TLS (after STARTTLS), if it did."""
    return next((step.index for step in flow.steps if step.kind == _TLS), None)


def _decrypted(flow: Flow) -> bool:
    """Whether a key log decrypted the session's handshake (one read in the clear only
    says ``decrypted=False``)."""
    shakes = [s for s in flow.steps if s.kind == _HANDSHAKE]
    return any(s.get("decrypted") is not False for s in shakes)


def _judge(check: Check, run: RunResult, has: Present, tls_at: int | None) -> Outcome:
    try:
        outcome = check.judge([run], has)
    except Exception as exc:  # a judge's bug: our fault, reported as an error verdict
        return error(InternalFault.from_exception(f"judge of {check.id}", exc).line())
    return outcome if tls_at is None else _cleartext(outcome, run.ladder, tls_at)


def _cleartext(outcome: Outcome, ladder: Ladder, tls_at: int) -> Outcome:
    """A verdict stands only on what the capture could read: one that cites a step after
    the session turned to TLS (STARTTLS, RFC 3207 §4), bar the handshake read in the clear,
    or a fail about something missing (nothing cited) in such a session, is n/a: what came
    after is encrypted."""
    if outcome.verdict in (Verdict.NA, Verdict.ERROR):
        return outcome
    clear = {s.index for s in ladder.steps if s.kind == _HANDSHAKE}
    late = [index for _run, index in outcome.evidence if index >= tls_at and index not in clear]
    if late or not outcome.evidence:
        return not_applicable(
            f"the session went on in TLS from step {tls_at}: what it judged is encrypted"
        )
    return outcome


def recipients(steps: Iterable[Step]) -> list[Recipient]:
    """Per recipient, in the order of its RCPT, what the server's replies decided (a reply
    while no recipient is owed a reply or accepted decides nothing: not read)."""
    asked: list[str] = []  # RCPT addresses whose reply is owed, in order
    accepted: list[str] = []  # in the open transaction
    out: list[Recipient] = []
    for step in steps:
        if step.kind == _COMMAND and step.get("verb") == "RCPT":
            asked.append(_address(step))
        elif (asked or accepted) and step.kind == _REPLY and not step.get("incomplete"):
            answers, code = step.get("answers"), int(step.get("code") or 0)
            status = _BY_DIGIT.get(code // 100)
            if answers == "RCPT" and asked:
                address = asked.pop(0)
                if status is OutcomeStatus.DELIVERED:
                    accepted.append(address)
                else:
                    out.append(Recipient(address, status, "RCPT", code or None, step.index))
            elif answers in _ENDS_DATA or (answers == "DATA" and code != 354):
                out += [Recipient(a, status, str(answers), code, step.index) for a in accepted]
                accepted = []
            elif answers == "RSET":
                out += [Recipient(a, None, "RSET", code, step.index) for a in accepted]
                accepted = []
    return out + [Recipient(a, None, "unfinished") for a in [*accepted, *asked]]


def _address(step: Step) -> str:
    command = parse_command(step.text.encode("utf-8", "surrogateescape"))
    return command.address if command.address is not None else (command.argument or "")
