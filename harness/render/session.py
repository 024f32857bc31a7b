"""A judged session as text, for ``smtp-harness check CAPTURE``.

Rules kept here:
- One block per session: a head line (number, kind, client -> server, the steps it
  spans), one line per recipient (the outcome its replies show, the deciding reply),
  a count of verdicts, a line for each deviation-known (its note) and observation (its
  value), then each failed or errored check with its RFC words, its note and every step
  it cites, shown as the ladder shows it (number, session, who to whom, kind, the
  text's first line).
- Step numbers are the capture's, the same whether a session is shown alone or not.
"""

from __future__ import annotations

import bisect

from harness.checks.offline import TLS_REASON, Judged, Recipient, SessionReport
from harness.ladder.model import Step
from harness.ladder.sessions import FlowKind
from harness.render.jsonl import endpoint
from harness.verdict import Verdict

_SHOWN = (Verdict.FAIL, Verdict.ERROR)  # verdicts shown with their evidence
_ORDER = tuple(Verdict)


def render(report: SessionReport) -> str:
    flow = report.flow
    span = f", steps {flow.steps[0].index}-{flow.steps[-1].index}" if flow.steps else ""
    client, server = endpoint(flow.client), endpoint(flow.server)
    named = flow.client is not None and report.client != flow.client[0]
    names = f" ({report.client} -> {report.server})" if named else ""
    lines = [f"session {flow.session} ({flow.kind}): {client} -> {server}{names}{span}"]
    if flow.kind is FlowKind.TLS:
        lines.append(f"  {TLS_REASON}")
    lines += [f"  {_recipient(r)}" for r in report.recipients]
    counts = [(report.count(verdict), verdict) for verdict in _ORDER]
    lines.append("  checks: " + ", ".join(f"{n} {verdict}" for n, verdict in counts if n))
    for judged in report.with_verdict(Verdict.KNOWN, Verdict.OBSERVED):
        outcome = judged.outcome
        lines.append(f"  {outcome.verdict} {judged.check.id}: {outcome.value or outcome.note}")
    for judged in report.with_verdict(*_SHOWN):
        lines += _judged(judged, flow.session, flow.steps)
    return "\n".join(lines) + "\n"


def _recipient(r: Recipient) -> str:
    if r.stage == "unfinished":
        return f"{r.address}: undecided (no reply captured)"
    reply = f"{r.code} to {r.stage}, step {r.step}"
    if r.status is None:
        return f"{r.address}: undecided ({'abandoned: ' * (r.stage == 'RSET')}{reply})"
    return f"{r.address}: {r.status} ({reply})"


def _judged(judged: Judged, session: int | None, steps: list[Step]) -> list[str]:
    check, outcome = judged.check, judged.outcome
    out = [f"  {outcome.verdict.upper()} {check.id}: {check.title}", f"    {check.rfc}"]
    out.append(f"    {outcome.note}")
    for _run, index in outcome.evidence:
        step = _find(steps, index)
        text = step.text.split("\n")[0] if step else "(not in this session)"
        who = f"{step.src} -> {step.dst} {step.kind}: " if step else ""
        out.append(f"    step {index} [session {session}] {who}{text}")
    return out


def _find(steps: list[Step], index: int) -> Step | None:
    at = bisect.bisect_left(steps, index, key=lambda step: step.index)
    return steps[at] if at < len(steps) and steps[at].index == index else None


def summary(sessions: int, failed: int, warnings: dict[str, int]) -> str:
    if not sessions:
        head = "no SMTP sessions"
    else:
        head = f"{sessions} SMTP session{'s' * (sessions != 1)}, {failed} with a failed check"
    notes = ", ".join(f"{kind} {n}" for kind, n in sorted(warnings.items()))
    return head + (f"; decoder warnings: {notes}" if notes else "") + "\n"
