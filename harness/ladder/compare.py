"""Compare a run's ladder with a golden one; explain a difference the way packetdrill does.

Rules this module keeps:

- Both ladders are normalised first (``normalise.py``), each with its own stand-ins.
- Compared exactly, in order: every DNS question and answer, SYN / SYN-ACK / ACK, every
  command, reply (code and text after masks), content and BDAT chunk (lines, size,
  first line), TLS, gap and anomaly step, who sends FIN first, and every RST: the key of
  a step is (kind, src, dst, text).
- Not compared by default: times, packet numbers, and where pure ACKs fell.  An ACK of a
  FIN is moved to just after the FIN it acknowledges, so its place among the SMTP steps
  (before or after a 221, say) does not matter - only the FIN/ACK sequence does.  ACK
  coverage is compared as "every SMTP unit of connection n was acknowledged: yes/no".
- ``strict=True`` compares every step where it fell, its details too (reply line counts,
  DNS flags, digests when kept, ...; not offsets or DNS ids), and the exact coverage.
- Steps are aligned (``difflib.SequenceMatcher`` over the keys), so one missing or extra
  step is reported as that, not as every step after it differing.
- A changed step says what changed, each as ``old -> new``: its kind, its direction, a
  reply's code (``detail``), its text (a reply's without the code), and only when none of
  those differ, the details that do: ``reply differs: code 250 -> 450, text "OK" -> "try
  later"``.  The context rows sit under column headings (``golden``, ``run``: the step's
  number in each ladder).
- A DNS retry in the run (``normalise.py``: the same question again after a lost
  datagram) that the golden ladder lacks is accepted, not an extra step; one the golden
  ladder has and the run lacks is still missing.  Duplicate datagrams are already folded.
"""

from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import dataclass, field

from harness.ladder.model import Coverage, Ladder, Step
from harness.ladder.normalise import MASKS, Mask, normalise

_FIN_ACKS = ("fin-ack", "close-ack")
# details that differ run to run even when strict: what the network did is not compared
_VOLATILE = frozenset({"offset", "id", "duplicates", "retry_of", "stray_rsts"})


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One difference: ``what`` is "changed", "missing", "extra" or "coverage"."""

    what: str
    expected: Step | None  # the golden step (None: extra)
    actual: Step | None  # the run's step (None: missing)
    row: int = -1  # its place in Verdict.rows (-1: coverage)
    note: str = ""


Row = tuple[Step | None, Step | None]  # (golden step, run step) as aligned


@dataclass(slots=True)
class Verdict:
    ok: bool
    mismatches: list[Mismatch]
    rows: list[Row] = field(default_factory=list)  # both ladders, aligned


def compare(
    run: Ladder,
    golden: Ladder,
    *,
    strict: bool = False,
    masks: tuple[Mask, ...] = MASKS,
    digest: bool = False,
) -> Verdict:
    """Does *run* do what *golden* did?"""
    run, golden = normalise(run, masks, digest=digest), normalise(golden, masks, digest=digest)
    expected = _sequence(golden, strict)
    actual = _accepted_retries_out(_sequence(run, strict), expected, strict)
    rows = _align(expected, actual, strict)
    mismatches = [_mismatch(n, e, r) for n, (e, r) in enumerate(rows) if _differs(e, r, strict)]
    mismatches += _coverage(golden.coverage, run.coverage, strict)
    return Verdict(not mismatches, mismatches, rows)


def key(step: Step, strict: bool = False) -> tuple:
    """What must be equal for two steps to be the same."""
    base = (step.kind, step.src, step.dst, step.text)
    if not strict:
        return base
    return (*base, tuple((k, v) for k, v in step.detail if k not in _VOLATILE))


def _sequence(ladder: Ladder, strict: bool) -> list[Step]:
    """The steps in compared order: each ACK of a FIN right after its FIN (unless strict)."""
    if strict:
        return list(ladder.steps)
    out: list[Step] = []
    for step in ladder.steps:
        fin = _fin_of(out, step) if step.kind in _FIN_ACKS else None
        if fin is None:
            out.append(step)
        else:
            out.insert(fin + 1, step)
    return out


def _fin_of(steps: list[Step], ack: Step) -> int | None:
    """The position of the FIN that *ack* acknowledges (the peer's last FIN)."""
    for i in range(len(steps) - 1, -1, -1):
        s = steps[i]
        if s.kind == "fin" and s.conn == ack.conn and s.src == ack.dst:
            return i
    return None


def _align(expected: list[Step], actual: list[Step], strict: bool) -> list[Row]:
    """Both step lists side by side; a step with no counterpart faces None."""
    a = [key(s, strict) for s in expected]
    b = [key(s, strict) for s in actual]
    rows: list[Row] = []
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for _, i1, i2, j1, j2 in matcher.get_opcodes():
        pairs = min(i2 - i1, j2 - j1)
        rows += zip(expected[i1 : i1 + pairs], actual[j1 : j1 + pairs], strict=True)
        rows += [(e, None) for e in expected[i1 + pairs : i2]]
        rows += [(None, r) for r in actual[j1 + pairs : j2]]
    return rows


def _differs(expected: Step | None, actual: Step | None, strict: bool) -> bool:
    return expected is None or actual is None or key(expected, strict) != key(actual, strict)


def _accepted_retries_out(actual: list[Step], expected: list[Step], strict: bool) -> list[Step]:
    """*actual* without the DNS retries (and answers to them) that *expected* lacks: the
    network lost a datagram and the client asked again (normalise.py, "DNS retries").  A
    retry the golden ladder has too stays, to be aligned with it."""
    golden = Counter(key(s, strict) for s in expected if s.get("retry_of") is not None)
    kept = []
    for step in actual:
        if step.get("retry_of") is not None:
            if golden[key(step, strict)] == 0:
                continue
            golden[key(step, strict)] -= 1
        kept.append(step)
    return kept


def _mismatch(row: int, expected: Step | None, actual: Step | None) -> Mismatch:
    if actual is None:
        return Mismatch("missing", expected, None, row, "step missing")
    if expected is None:
        return Mismatch("extra", None, actual, row, "unexpected step")
    what = ", ".join(differences(expected, actual)) or "detail"
    return Mismatch("changed", expected, actual, row, f"{expected.kind} differs: {what}")


def differences(expected: Step, actual: Step) -> list[str]:
    """What differs between two steps, each as ``what old -> new``: the kind, the
    direction, a reply's code (from ``detail``), the text (a reply's without its code),
    and, when nothing else does, the details that differ."""
    out = []
    if expected.kind != actual.kind:
        out.append(f"kind {expected.kind} -> {actual.kind}")
    if (expected.src, expected.dst) != (actual.src, actual.dst):
        out.append(f"direction {_direction(expected)} -> {_direction(actual)}")
    codes = expected.get("code"), actual.get("code")
    if codes[0] != codes[1] and None not in codes:
        out.append(f"code {codes[0]} -> {codes[1]}")
    texts = _without_code(expected), _without_code(actual)
    if texts[0] != texts[1]:
        out.append(f"text {_quoted(texts[0])} -> {_quoted(texts[1])}")
    if not out:
        keys = sorted({k for k, _ in (*expected.detail, *actual.detail)} - _VOLATILE)
        out += [
            f"{k} {expected.get(k)!r} -> {actual.get(k)!r}"
            for k in keys
            if expected.get(k) != actual.get(k)
        ]
    return out


def _direction(step: Step) -> str:
    return f"{step.src} → {step.dst}"


def _without_code(step: Step) -> str:
    """A reply's text without its code on each line (``250-``, ``250 ``); else the text."""
    code = step.get("code")
    if code is None:
        return step.text
    prefix = str(code)
    lines = step.text.split("\n")
    return "\n".join(line[4:] if line[:3] == prefix else line for line in lines)


def _quoted(text: str, width: int = 40) -> str:
    """The first line of *text*, in quotes, cut at *width* (the diff's lines show the rest)."""
    first, *more = text.split("\n")
    shown = first if len(first) <= width else first[: width - 1] + "…"
    return f'"{shown}"' + (f" (+{len(more)} lines)" if more else "")


def _coverage(
    golden: dict[int, Coverage], run: dict[int, Coverage], strict: bool
) -> list[Mismatch]:
    out = []
    for conn in sorted(golden.keys() | run.keys()):
        g, r = golden.get(conn), run.get(conn)
        if strict:
            same = (g and (g.units, len(g.unacked))) == (r and (r.units, len(r.unacked)))
        else:
            same = (g is None or g.complete) == (r is None or r.complete)
        if not same:
            note = f"connection {conn}: ACK coverage {_coverage_text(g)}, run {_coverage_text(r)}"
            out.append(Mismatch("coverage", None, None, -1, note))
    return out


def _coverage_text(c: Coverage | None) -> str:
    if c is None:
        return "absent"
    if c.complete:
        return f"all {c.units} SMTP units acknowledged"
    return f"{len(c.unacked)} of {c.units} SMTP units never acknowledged"


def format_diff(verdict: Verdict, run_path: str, golden_path: str, context: int = 3) -> str:
    """The verdict as text: each mismatch with its steps and the steps around it."""
    if verdict.ok:
        return f"{run_path}: same as {golden_path}\n"
    lines = [
        f"{len(verdict.mismatches)} mismatch(es) between the run and the golden capture",
        f"  run:    {run_path}",
        f"  golden: {golden_path}",
    ]
    for m in verdict.mismatches:
        lines.append("")
        if m.what == "coverage":
            lines.append(f"{golden_path}: error: {m.note}")
            continue
        number = (m.expected or m.actual).index
        lines.append(f"{golden_path}:{number}: error: {m.note}")
        lines.append(f"  expected: {describe(m.expected) if m.expected else '(nothing)'}")
        lines.append(f"  actual:   {describe(m.actual) if m.actual else '(nothing)'}")
        lines += _context(verdict, m, context)
    return "\n".join(lines) + "\n"


_HEADING = f"  {'':1} {'golden':>6} {'run':>4}  step (- golden only, + run only)"


def _context(verdict: Verdict, m: Mismatch, context: int) -> list[str]:
    """The aligned rows around a mismatch under their column headings: golden and run step
    numbers, ``-`` golden only, ``+`` run only (a changed step is both)."""
    lines = [_HEADING]
    for expected, actual in verdict.rows[max(0, m.row - context) : m.row + context + 1]:
        if expected is not None and actual is not None and key(expected) == key(actual):
            lines.append(_row(" ", expected, actual))
            continue
        if expected is not None:
            lines.append(_row("-", expected, None))
        if actual is not None:
            lines.append(_row("+", None, actual))
    return lines


def _row(sign: str, expected: Step | None, actual: Step | None) -> str:
    golden = f"{expected.index:>6}" if expected else " " * 6
    run = f"{actual.index:>4}" if actual else "    "
    return f"  {sign} {golden} {run}  {_body(expected or actual)}"


def describe(step: Step) -> str:
    """``12 receiver.com → sender.com  reply  250 OK`` (first line of text, line count)."""
    return f"{step.index} {_body(step)}"


def _body(step: Step) -> str:
    first, *more = step.text.split("\n")
    tail = f" (+{len(more)} lines)" if more else ""
    return f"{step.src} → {step.dst}  {step.kind}  {first}{tail}"
