"""Compare and diff: what must match, what masks hide, and how a difference reads."""

from __future__ import annotations

from dataclasses import replace

import pytest
from ladder_pcaps import HOSTS, SEED_DIALOGUE, seed_capture

from harness.ladder.compare import compare, format_diff
from harness.ladder.dissect import dissect
from harness.ladder.model import Coverage, Ladder
from harness.ladder.normalise import normalise

RUN, GOLDEN = "/captures/run.pcap", "/pcaps/seed.pcap"


@pytest.fixture(scope="module")
def golden(tmp_path_factory) -> Ladder:
    return dissect(seed_capture(tmp_path_factory.mktemp("g") / "seed.pcap"), HOSTS)


def with_text(ladder: Ladder, old: str, new: str) -> Ladder:
    steps = [replace(s, text=new) if s.text == old else s for s in ladder.steps]
    assert steps != ladder.steps
    return replace(ladder, steps=steps)


def dialogue_with(old: bytes, new: bytes) -> list[tuple[str, bytes]]:
    return [(side, new if data == old else data) for side, data in SEED_DIALOGUE]


def test_identical_ladders_are_the_same(golden):
    verdict = compare(golden, golden)
    assert verdict.ok and verdict.mismatches == []
    assert format_diff(verdict, RUN, GOLDEN) == f"{RUN}: same as {GOLDEN}\n"


def test_a_changed_reply_code_is_one_mismatch_with_a_packetdrill_diff(tmp_path, golden):
    changed = dialogue_with(b"250 OK Mail accepted\r\n", b"451 try later\r\n")
    run = dissect(seed_capture(tmp_path / "run.pcap", dialogue=changed), HOSTS)
    verdict = compare(run, golden)
    assert not verdict.ok
    (m,) = verdict.mismatches
    assert (m.what, m.expected.index, m.actual.text) == ("changed", 26, "451 try later")
    diff = format_diff(verdict, RUN, GOLDEN)
    note = 'reply differs: code 250 -> 451, text "OK Mail accepted" -> "try later"'
    assert f"{GOLDEN}:26: error: {note}" in diff
    assert "expected: 26 mail.receiver.com → mail.sender.com  reply  250 OK Mail accepted" in diff
    assert "actual:   26 mail.receiver.com → mail.sender.com  reply  451 try later" in diff
    assert f"run:    {RUN}" in diff and f"golden: {GOLDEN}" in diff
    lines = diff.splitlines()
    minus = lines.index(next(x for x in lines if x.startswith("  -")))
    assert "content" in lines[minus - 1] and "QUIT" in lines[minus + 2]  # context both sides
    heading = next(x for x in lines if "golden" in x and "run" in x and "step" in x)
    golden_col, run_col = heading.index("golden") + len("golden"), heading.index("run") + 3
    assert lines[minus][golden_col - 2 : golden_col] == "26"  # numbers under their headings
    assert lines[minus][run_col - 4 : run_col].strip() == ""  # golden only: no run number
    plus = lines[minus + 1]
    assert plus.startswith("  +") and plus[run_col - 2 : run_col] == "26"
    assert plus[golden_col - 6 : golden_col].strip() == ""


def test_a_changed_code_with_the_same_text_says_only_code(golden):
    changed = with_text(golden, "250 OK Mail accepted", "450 OK Mail accepted")
    steps = [
        replace(s, detail=(("code", 450), *s.detail[1:])) if s.text.startswith("450") else s
        for s in changed.steps
    ]
    (m,) = compare(replace(golden, steps=steps), golden).mismatches
    assert m.note == "reply differs: code 250 -> 450"


def test_a_changed_direction_and_kind_are_named(golden):
    quit_ = next(s for s in golden.steps if s.text == "QUIT")
    turned = replace(quit_, src=quit_.dst, dst=quit_.src, kind="reply", text="QUIT")
    verdict = compare(
        replace(golden, steps=[turned if s is quit_ else s for s in golden.steps]), golden
    )
    (m,) = verdict.mismatches
    assert m.note == (
        "command differs: kind command -> reply, "
        "direction mail.sender.com → mail.receiver.com -> mail.receiver.com → mail.sender.com"
    )


def test_a_change_in_detail_only_names_the_detail(golden):
    reply = next(s for s in golden.steps if s.text == "250 OK Mail accepted")
    more = replace(reply, detail=tuple((k, 2 if k == "lines" else v) for k, v in reply.detail))
    steps = [more if s is reply else s for s in golden.steps]
    (m,) = compare(replace(golden, steps=steps), golden, strict=True).mismatches
    assert m.note == "reply differs: lines 1 -> 2"


def test_missing_steps_are_aligned_not_cascaded(golden):
    steps = [s for s in golden.steps if s.index not in (15, 16, 21, 22)]  # VRFY/RCPT r2d2
    verdict = compare(replace(golden, steps=steps), golden)
    assert {m.what for m in verdict.mismatches} == {"missing"}
    assert sorted(m.expected.text for m in verdict.mismatches) == [
        "250 OK",  # which of the equal 250 OKs is missing is the aligner's choice
        "250 R2D2 <r2d2@receiver.com>",
        "RCPT TO:<r2d2@receiver.com>",
        "VRFY r2d2",
    ]


def test_an_extra_rst_is_reported(golden):
    rst = replace(golden.steps[-1], kind="rst", text="RST", index=99)
    verdict = compare(replace(golden, steps=[*golden.steps, rst]), golden)
    assert [(m.what, m.actual.kind) for m in verdict.mismatches] == [("extra", "rst")]
    assert "unexpected step" in format_diff(verdict, RUN, GOLDEN)


def test_who_closes_first_matters(tmp_path, golden):
    run = dissect(seed_capture(tmp_path / "run.pcap", close="sender-first"), HOSTS)
    verdict = compare(run, golden)
    assert not verdict.ok
    assert {m.what for m in verdict.mismatches} >= {"changed"}
    assert any(m.expected and m.expected.kind == "fin" for m in verdict.mismatches)


def test_where_the_ack_of_a_fin_falls_matters_only_when_strict(golden):
    steps = list(golden.steps)
    fin_ack = next(i for i, s in enumerate(steps) if s.kind == "fin-ack")
    # the receiver's FIN before its 221 reply, the sender's ACK of it after the reply
    steps[27], steps[28] = steps[28], steps[27]
    moved = replace(golden, steps=steps)
    assert steps[fin_ack].kind == "fin-ack"
    assert not compare(moved, golden).ok  # the FIN now comes before the 221: that matters
    reordered = list(golden.steps)
    ack = reordered.pop(fin_ack)
    reordered.insert(fin_ack + 1, ack)  # the ACK of the FIN after the sender's own FIN
    assert compare(replace(golden, steps=reordered), golden).ok
    assert not compare(replace(golden, steps=reordered), golden, strict=True).ok


def test_queue_ids_dates_and_banners_are_masked(golden):
    def variant(queue_id: str, date: str) -> Ladder:
        ladder = with_text(golden, "250 OK Mail accepted", f"250 OK id={queue_id}")
        return with_text(
            ladder,
            "220 mail.receiver.com ESMTP ready",
            f"220 mail.receiver.com ESMTP Exim 4.96 {date}",
        )

    one = variant("1abcDe-000ABC-XY", "Mon, 01 Jan 2024 10:00:00 +0000")
    two = variant("1xyzQr-000DEF-ZZ", "Tue, 2 Jan 2024 11:30:07 +0100")
    assert compare(two, one).ok
    assert not compare(two, one, masks=()).ok
    normalised = normalise(one)
    assert "250 OK id=<QUEUEID-1>" in [s.text for s in normalised.steps]
    assert "220 mail.receiver.com <BANNER-1>" in [s.text for s in normalised.steps]


def test_stand_ins_keep_same_value_twice(golden):
    def variant(first: str, second: str) -> Ladder:
        ladder = with_text(golden, "250 OK Mail accepted", f"250 2.0.0 Ok: queued as {first}")
        return with_text(ladder, "221 mail.receiver.com closing", f"221 done {second}-A1B2C3-XY")

    exim_like = variant("4F2A31C0D2", "1abcDe")
    assert [s.text for s in normalise(exim_like).steps if s.text.startswith(("250 2", "221"))] == [
        "250 2.0.0 Ok: queued as <QUEUEID-1>",
        "221 done <QUEUEID-2>",
    ]
    same = with_text(golden, "250 OK Mail accepted", "250 OK id=1abcDe-000ABC-XY")
    same = with_text(same, "221 mail.receiver.com closing", "221 bye 1abcDe-000ABC-XY")
    other = with_text(golden, "250 OK Mail accepted", "250 OK id=1zzzzz-000ZZZ-ZZ")
    other_same = with_text(other, "221 mail.receiver.com closing", "221 bye 1zzzzz-000ZZZ-ZZ")
    other_differs = with_text(other, "221 mail.receiver.com closing", "221 bye 1yyyyy-000YYY-YY")
    assert compare(other_same, same).ok
    verdict = compare(other_differs, same)
    assert [m.expected.text for m in verdict.mismatches] == ["221 bye <QUEUEID-1>"]
    assert verdict.mismatches[0].actual.text == "221 bye <QUEUEID-2>"


def test_content_digest_is_compared_only_on_request(golden):
    content = next(s for s in golden.steps if s.kind == "content")
    changed = with_text(golden, content.text, content.text.replace("sha256:", "sha256:ff"))
    assert compare(changed, golden).ok
    assert not compare(changed, golden, digest=True).ok


def test_ack_coverage_is_compared(golden):
    run = replace(golden, coverage={1: Coverage(1, 21, (12,))})
    verdict = compare(run, golden)
    assert [m.what for m in verdict.mismatches] == ["coverage"]
    assert "1 of 21 SMTP units never acknowledged" in format_diff(verdict, RUN, GOLDEN)
    assert compare(replace(golden, coverage={1: Coverage(1, 21)}), golden).ok
    assert not compare(replace(golden, coverage={1: Coverage(1, 20)}), golden, strict=True).ok
