"""A capture's flows rendered as ``ladder`` and ``check`` stream them: one flow in; its
text, exit code and whether a check failed out.  The same function renders in one process
and in each worker (``harness.ladder.parallel``), so their outputs are the same bytes.

Rules kept here:
- ``ladder``: every flow as its JSON lines (``jsonl.flow_lines``), exit code 0.
- ``check``: a session (an SMTP or TLS flow) as its judgement (``OfflineJudge.session``),
  text or a JSON line; its exit code and whether a check failed are the report's.  A flow
  that is not a session renders as nothing.
- The judges are imported only when ``check`` asks for them: they are a third of
  ``ladder``'s start-up.
- ``hosts`` is the dissector's own mapping, read when each flow is rendered: names a
  capture gives later (pcapng's Name Resolution Blocks) apply to the flows after them.
"""

from __future__ import annotations

from collections.abc import Callable

from harness.ladder.sessions import Flow
from harness.render import jsonl

Rendered = tuple[str, int, bool]  # (text, exit code, failed) of one flow
Render = Callable[[Flow], Rendered]


def flow_renderer(mode: str, fmt: str, source: str, hosts: dict[str, str]) -> Render:
    """How *mode* ("ladder" or "check") renders a flow of the capture *source*; *fmt* is
    check's format ("text" or "jsonl")."""
    if mode == "ladder":
        return lambda flow: ("".join(jsonl.flow_lines(flow)), 0, False)
    from harness.checks.offline import OfflineJudge
    from harness.render import session as session_text
    from harness.verdict import Verdict

    judge = OfflineJudge()
    text = jsonl.session_line if fmt == "jsonl" else session_text.render

    def render(flow: Flow) -> Rendered:
        if flow.session is None:
            return "", 0, False
        report = judge.session(flow, source, hosts)
        return text(report), int(report.exit_code), bool(report.with_verdict(Verdict.FAIL))

    return render
