"""JSON lines, written as a capture streams by: a ladder flow by flow, a check session by
session.  One JSON object per line, each with a ``type``.

Rules kept here:
- ``ladder --format jsonl``: a ``step`` line per step (``Step.to_dict`` plus ``session``:
  its SMTP session's number, or null), the steps of one flow together and in capture
  order, then (for a TCP connection) a ``flow`` line: its kind, session, connection,
  client and server as ``addr:port``, why it ended, its ACK coverage; flows come in the
  order they end.  The last line is the ``summary``: source, hosts, the decoder's
  warnings, the count of flows and sessions.
- ``check --format jsonl``: a ``session`` line per session judged (client, server, the
  steps it spans, per-recipient outcomes, every check's verdict with its note, value and
  cited step numbers), then the ``summary``.
- Step numbers are the capture's, so lines from one run of a file agree with every other.
- One encoding whichever encoder writes a line: compact separators, non-ASCII as itself
  (``ensure_ascii=False``), keys in insertion order (``line``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:  # the judges' import is a third of ``ladder``'s start-up: ``check`` only
    from harness.checks.offline import Recipient, SessionReport
    from harness.ladder.model import Coverage
    from harness.ladder.sessions import Flow

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def line(record: dict[str, Any]) -> str:
    """*record* as one line of compact JSON, UTF-8 unescaped.  orjson writes what ``json``
    writes for every value a record holds (str, int, bool, None, lists, dicts; no floats),
    5x faster; what it refuses (text with lone surrogates, from bytes that were not UTF-8,
    ints beyond 64 bits) goes to ``json``, which writes them as before."""
    try:
        return orjson.dumps(record).decode() + "\n"
    except TypeError:
        return _encode(record) + "\n"


def endpoint(end: tuple[str, int] | None) -> str | None:
    """``addr:port`` (``[addr]:port`` for IPv6), as a URL writes it."""
    if end is None:
        return None
    addr, port = end
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def flow_lines(flow: Flow) -> Iterator[str]:
    """The step lines of one flow, then its flow line (a TCP connection's only)."""
    for step in flow.steps:
        yield line({"type": "step", "session": flow.session, **step.to_dict()})
    if flow.conn is not None:
        yield line(
            {
                "type": "flow",
                "kind": flow.kind.value,
                "session": flow.session,
                "conn": flow.conn,
                "client": endpoint(flow.client),
                "server": endpoint(flow.server),
                "end": flow.end,
                "steps": len(flow.steps),
                "coverage": [_coverage(c) for c in flow.coverage.values()],
            }
        )


def _coverage(coverage: Coverage) -> dict[str, Any]:
    return {"conn": coverage.conn, "units": coverage.units, "unacked": list(coverage.unacked)}


def session_line(report: SessionReport) -> str:
    flow = report.flow
    steps = [flow.steps[0].index, flow.steps[-1].index] if flow.steps else []
    return line(
        {
            "type": "session",
            "session": flow.session,
            "kind": flow.kind.value,
            "conn": flow.conn,
            "client": endpoint(flow.client),
            "server": endpoint(flow.server),
            "client_name": report.client,
            "server_name": report.server,
            "steps": steps,
            "recipients": [_recipient(r) for r in report.recipients],
            "checks": [
                {
                    "id": j.check.id,
                    "verdict": j.outcome.verdict.value,
                    "note": j.outcome.note,
                    "value": j.outcome.value,
                    "evidence": [index for _run, index in j.outcome.evidence],
                }
                for j in report.judged
            ],
        }
    )


def _recipient(r: Recipient) -> dict[str, Any]:
    status = None if r.status is None else r.status.value
    return {
        "address": r.address,
        "status": status,
        "stage": r.stage,
        "code": r.code,
        "step": r.step,
    }


def summary_line(source: str, hosts: dict[str, str], warnings: dict[str, int], **counts) -> str:
    return line(
        {"type": "summary", "source": source, "hosts": hosts, "warnings": warnings, **counts}
    )
