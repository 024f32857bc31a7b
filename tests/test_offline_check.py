"""``smtp-harness check CAPTURE`` without a golden, and ``ladder --format jsonl``: a capture
split into sessions as they end, each judged by the registered checks (issue 10, "Offline
judgement" and "Streaming, at speed")."""

from __future__ import annotations

import gc
import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import CLI, ROOT
from ladder_pcaps import (
    CORPUS,
    DNS,
    RECEIVER,
    SENDER,
    T0,
    Capture,
    Tcp,
    mx_answer,
)

from harness.capture.pcapfile import PcapWriter
from harness.checks import offline
from harness.checks.base import registry
from harness.checks.offline import OfflineJudge, recipients
from harness.checks.queries import present
from harness.checks.steps import commands, reply_to
from harness.ladder.dissect import dissect
from harness.ladder.sessions import Flow, Splitter
from harness.outcome import OutcomeStatus
from harness.progress import Progress

SEED = ROOT / "pcaps" / "seed.pcap"
SHARED = ROOT.parent / "shared" / "corpus" / "zeek"  # beside a worktree; absent on a clone
CAPTURES = sorted(CORPUS.glob("*.pcap*")) + sorted(SHARED.glob("*.pcap*")) + [SEED]

ONE_RCPT = [
    ("s", b"220 mail.receiver.com ESMTP\r\n"),
    ("c", b"EHLO mail.sender.com\r\n"),
    ("s", b"250-mail.receiver.com\r\n250 PIPELINING\r\n"),
    ("c", b"MAIL FROM:<luke@sender.com>\r\n"),
    ("s", b"250 OK\r\n"),
    ("c", b"RCPT TO:<c3po@receiver.com>\r\n"),
    ("s", b"250 OK\r\n"),
    ("c", b"DATA\r\n"),
    ("s", b"354 go ahead\r\n"),
    ("c", b"Subject: hi\r\n\r\nhello\r\n.\r\n"),
    ("s", b"250 queued\r\n"),
    ("c", b"QUIT\r\n"),
    ("s", b"221 bye\r\n"),
]


def smtp_harness(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, timeout=120, text=True)


def session(cap: Capture, dialogue, *, cport: int, port: int = 25, close: bool = True) -> Tcp:
    tcp = Tcp(cap, SENDER, RECEIVER, cport=cport, port=port)
    tcp.handshake()
    for side, data in dialogue:
        tcp.send(side, data)
    if close:
        tcp.fin("s")
        tcp.ack("c")
        tcp.fin("c")
        tcp.ack("s")
    return tcp


def two_sessions(path: Path, second=ONE_RCPT) -> Path:
    """A DNS lookup, then two SMTP sessions one after the other."""
    cap = Capture()
    query, answer = mx_answer()
    cap.dns(SENDER, DNS, query, reply=False)
    cap.dns(SENDER, DNS, answer, reply=True)
    session(cap, ONE_RCPT, cport=40001)
    session(cap, second, cport=40002)
    return cap.write(path)


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_two_sessions_each_with_its_outcome_and_checks(tmp_path):
    done = smtp_harness("check", str(two_sessions(tmp_path / "two.pcap")))
    assert (done.returncode, done.stderr) == (0, "")
    out = done.stdout
    assert f"session 1 (smtp): {SENDER}:40001 -> {RECEIVER}:25, steps 3-" in out
    assert f"session 2 (smtp): {SENDER}:40002 -> {RECEIVER}:25, steps " in out
    assert out.count("c3po@receiver.com: delivered (250 to <end-of-data>, step ") == 2
    assert out.endswith("2 SMTP sessions, 0 with a failed check\n")


def test_jsonl_lines_parse_and_step_numbers_are_the_capture_s(tmp_path):
    path = two_sessions(tmp_path / "two.pcap")
    done = smtp_harness("check", "--format", "jsonl", str(path))
    assert done.returncode == 0
    records = lines(done.stdout)
    assert [r["type"] for r in records] == ["session", "session", "summary"]
    first, second, summary = records
    assert summary["sessions"] == 2
    ladder = dissect(path)
    by_conn = {}
    for step in ladder.steps:
        by_conn.setdefault(step.conn, []).append(step.index)
    assert first["steps"] == [by_conn[first["conn"]][0], by_conn[first["conn"]][-1]]
    assert second["steps"][0] > first["steps"][1]  # capture order, one numbering
    verdicts = {c["id"]: c for c in second["checks"]}
    quit_221 = verdicts["close.quit-221"]
    assert quit_221["verdict"] == "pass"
    cited = [s for s in ladder.steps if s.index in quit_221["evidence"]]
    assert {s.conn for s in cited} == {second["conn"]}  # cites its own session's steps
    assert any(s.text == "221 bye" for s in cited)


def test_session_n_alone_cites_the_same_steps(tmp_path):
    path = two_sessions(tmp_path / "two.pcap")
    every = lines(smtp_harness("check", "--format", "jsonl", str(path)).stdout)
    alone = smtp_harness("check", "--format", "jsonl", "--session", "2", str(path))
    assert alone.returncode == 0
    records = lines(alone.stdout)
    assert [r["type"] for r in records] == ["session", "summary"]
    assert records[0] == every[1]
    text = smtp_harness("check", "--session", "2", str(path)).stdout
    assert text.startswith("session 2 (smtp)") and "session 1" not in text


def test_a_failed_check_names_its_evidence_and_exits_1(tmp_path):
    """The server closes after QUIT without a 221 (RFC 5321 §4.1.1.10)."""
    rude = [*ONE_RCPT[:-1]]  # no 221: the server's FIN follows the QUIT
    done = smtp_harness("check", str(two_sessions(tmp_path / "rude.pcap", second=rude)))
    assert done.returncode == 1, done.stdout + done.stderr
    block = done.stdout.split("session 2 (smtp)")[1]
    assert "FAIL close.quit-221: 221 to QUIT before the server closes" in block
    assert "RFC 5321 §4.1.1.10" in block
    ladder = dissect(tmp_path / "rude.pcap")
    conn2 = ladder.steps[-1].conn
    fin = next(s for s in ladder.steps if s.conn == conn2 and s.kind == "fin")
    assert f"step {fin.index} [session 2] {RECEIVER} -> {SENDER} fin: FIN" in block
    assert "FAIL" not in done.stdout.split("session 2 (smtp)")[0]  # session 1 is fine
    assert done.stdout.endswith("2 SMTP sessions, 1 with a failed check\n")


def test_a_capture_without_smtp_says_so_and_exits_0(tmp_path):
    cap = Capture()
    query, answer = mx_answer()
    cap.dns(SENDER, DNS, query, reply=False)
    cap.dns(SENDER, DNS, answer, reply=True)
    web = Tcp(cap, SENDER, RECEIVER, port=80)
    web.handshake()
    web.send("c", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    web.send("s", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    path = cap.write(tmp_path / "web.pcap")
    done = smtp_harness("check", str(path))
    assert (done.returncode, done.stdout, done.stderr) == (0, "no SMTP sessions\n", "")
    (summary,) = lines(smtp_harness("check", "--format", "jsonl", str(path)).stdout)
    assert (summary["type"], summary["sessions"]) == ("summary", 0)


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--session", "3"], "--session 3: "),
        (["--strict"], "--strict applies only with --expect"),
        (["--session", "1", "--expect", str(SEED)], "--session applies only without --expect"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, why):
    path = two_sessions(tmp_path / "two.pcap")
    done = smtp_harness("check", str(path), *args)
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith("smtp-harness: error: ") and why in line
    assert "Traceback" not in done.stderr


def test_an_unreadable_capture_is_exit_2(tmp_path):
    path = tmp_path / "bad.pcap"
    path.write_bytes(b"not a capture")
    done = smtp_harness("check", str(path))
    assert done.returncode == 2 and "not a pcap or pcapng file" in done.stderr


def test_checks_that_need_a_lab_are_na_with_why(tmp_path):
    path = two_sessions(tmp_path / "two.pcap")
    (first, *_rest) = lines(smtp_harness("check", "--format", "jsonl", str(path)).stdout)
    verdicts = {c["id"]: c for c in first["checks"]}
    assert verdicts["data.dot-stuffing"]["verdict"] == "n/a"
    assert "stored" in verdicts["data.dot-stuffing"]["note"]
    assert "2 lab runs" in verdicts["session.reply-first-digit"]["note"]
    assert "'seed'" in verdicts["seed.exchange"]["note"]
    assert verdicts["esmtp.pipelining-advertised-only"]["verdict"] == "n/a"  # PIPELINING
    assert verdicts["close.client-waits-221"]["verdict"] == "pass"


@pytest.mark.parametrize(
    ("check_id", "cut", "who"),
    [
        ("tcp.reset-after-rcpt", 7, "s"),  # the receiver's RST after its 250 to RCPT
        ("tcp.reset-after-354", 9, "s"),  # after its 354
        ("tcp.reset-before-250", 10, "s"),  # after the message, before any reply
        ("tcp.reset-after-250", 11, "s"),  # after its 250 to the message
    ],
)
def test_a_judge_of_the_sender_s_queue_is_na_with_why(tmp_path, check_id, cut, who):
    """What became of a recipient after a reset (RFC 5321 §3.8: "as if a 451 response had
    been received") is in the sender's queue, which a capture does not hold: n/a naming it,
    never an error of ours (the judge read a lab run's outcomes)."""
    cap = Capture()
    session(cap, ONE_RCPT[:cut], cport=40001, close=False).rst(who)
    done = smtp_harness("check", "--format", "jsonl", str(cap.write(tmp_path / "rst.pcap")))
    (first, *_rest) = lines(done.stdout)
    verdicts = {c["id"]: c for c in first["checks"]}
    assert verdicts[check_id]["verdict"] == "n/a"
    assert verdicts[check_id]["note"] == "needs a lab: its judge reads the sender's queue " + (
        "(what became of each recipient)"
    )
    assert [c["id"] for c in first["checks"] if c["verdict"] == "error"] == []


def test_a_planned_na_is_what_the_judge_itself_says(tmp_path):
    """``OfflineJudge`` skips a check whose first precondition lacks what the session has
    (its plan, kept per kinds, verbs and codes): every verdict, note and citation is the
    one ``Check.judge`` gives, on sessions with different plans and a plan used twice."""
    path = two_sessions(tmp_path / "two.pcap", second=[*ONE_RCPT[:-1]])
    splitter = Splitter({}, file_names=True)
    judge = OfflineJudge()
    for flow in [f for f in splitter.flows(str(path)) if f.session is not None] * 2:
        report = judge.session(flow, "two.pcap", splitter.hosts)
        run = offline._as_run(
            flow.ladder("two.pcap"), offline.Ends(report.client, report.server), path
        )
        for judged in report.judged:
            if not offline.passive_reason(judged.check):
                assert judged.outcome == judged.check.judge([run]), judged.check.id
    assert len(judge._plans) == 2  # the two sessions differ in what they have (221 or not)


def _judged_twice(path: Path):
    """(flow, report, hosts, judge) of each session of *path*, all judged twice by one
    ``OfflineJudge`` (the second time by the plans the first made)."""
    splitter = Splitter({}, file_names=True)
    judge = OfflineJudge()
    flows = [f for f in splitter.flows(str(path)) if f.session is not None]
    assert flows
    for flow in flows * 2:
        yield flow, judge.session(flow, path.name, splitter.hosts), splitter.hosts, judge


def test_a_blind_plan_is_what_the_judge_itself_says():
    """In a session whose TLS was not decrypted (no key log), the plan (kept per kinds,
    verbs and codes, used twice here) gives a check that looks inside TLS its n/a
    ``UNDECRYPTED``, and every other judgeable check the verdict its judge gives, read in
    the clear."""
    path = ROOT / "tests" / "crafted" / "tls" / "starttls-tls13.pcap"
    for flow, report, hosts, _judge in _judged_twice(path):
        ends = offline.Ends(report.client, report.server)
        run = offline._as_run(flow.ladder(path.name, hosts), ends, path)
        tls_at = offline._encrypted_from(flow)
        assert tls_at is not None and not offline._decrypted(flow)
        for judged in report.judged:
            if offline.passive_reason(judged.check):
                continue
            want = (
                offline.not_applicable(offline.UNDECRYPTED)
                if offline._inside_tls(judged.check)
                else offline._judge(judged.check, run, present(run.ladder), tls_at)
            )
            assert judged.outcome == want, judged.check.id


@pytest.mark.parametrize(
    "capture",
    [
        "tls/starttls-tls13.pcap",
        "smtp/d7-auth.pcap",
        "smtp/one-sided.pcap",
        "tls/implicit-tls13.pcap",
    ],
)
def test_the_places_a_report_is_given_are_those_of_its_verdicts(capture):
    """A report's ``places`` (each verdict's places in ``judged``, made from the plan's and
    the judges' verdicts as they come) are those one pass over ``judged`` finds: sessions
    judged in the clear, blind (TLS not decrypted), unreadable (one-sided, implicit TLS),
    each plan used twice."""
    for _flow, report, _hosts, judge in _judged_twice(ROOT / "tests" / "crafted" / capture):
        given = {verdict: sorted(at) for verdict, at in report.places.items() if at}
        assert given == offline.places_of(report.judged)
        assert sum(map(len, given.values())) == len(report.judged) == len(judge.checks)


def test_per_recipient_outcomes_as_the_replies_show_them(tmp_path):
    dialogue = [
        *ONE_RCPT[:5],
        ("c", b"RCPT TO:<c3po@receiver.com>\r\n"),
        ("s", b"550 no such user\r\n"),
        ("c", b"RCPT TO:<r2d2@receiver.com>\r\n"),
        ("s", b"451 try later\r\n"),
        ("c", b"RCPT TO:<bb8@receiver.com>\r\n"),
        ("s", b"250 OK\r\n"),
        *ONE_RCPT[7:],
    ]
    cap = Capture()
    session(cap, dialogue, cport=40001)
    ladder = dissect(cap.write(tmp_path / "mixed.pcap"))
    found = {r.address: r for r in recipients(ladder.steps)}
    code_of = {s.index: s.get("code") for s in ladder.steps}
    assert {a: (r.status, r.stage) for a, r in found.items()} == {
        "c3po@receiver.com": (OutcomeStatus.REJECTED, "RCPT"),
        "r2d2@receiver.com": (OutcomeStatus.DEFERRED, "RCPT"),
        "bb8@receiver.com": (OutcomeStatus.DELIVERED, "<end-of-data>"),
    }
    assert [code_of[r.step] for r in found.values()] == [550, 451, 250]


def test_bdat_and_its_chunk_share_one_reply(tmp_path):
    """RFC 3030 §2: one reply answers a BDAT command with its chunk.  Pairing them as two
    units shifted every later reply by one: the 221 answered nothing, and close.quit-221
    failed a server that did send it (Zeek's rfc3030-bdat-example1.pcap)."""
    dialogue = [*ONE_RCPT[:7], ("c", b"BDAT 5 LAST\r\nhello"), ("s", b"250 OK\r\n")]
    dialogue += ONE_RCPT[-2:]
    cap = Capture()
    session(cap, dialogue, cport=40001)
    path = cap.write(tmp_path / "bdat.pcap")
    ladder = dissect(path)
    (quit_,) = commands(ladder, "QUIT")
    assert reply_to(ladder, quit_).text == "221 bye"
    (record, _summary) = lines(smtp_harness("check", "--format", "jsonl", str(path)).stdout)
    assert {c["id"]: c["verdict"] for c in record["checks"]}["close.quit-221"] == "pass"
    assert record["recipients"][0]["stage"] == "BDAT LAST"


def test_implicit_tls_on_465_is_a_tls_session_with_nothing_judged(tmp_path):
    cap = Capture()
    tls = session(cap, [], cport=40001, port=465, close=False)
    tls.send("c", b"\x16\x03\x01\x00\x05hello")
    tls.send("s", b"\x16\x03\x03\x00\x05world")
    done = smtp_harness("check", str(cap.write(tmp_path / "smtps.pcap")))
    assert done.returncode == 0
    assert done.stdout.startswith(f"session 1 (tls): {SENDER}:40001 -> {RECEIVER}:465")
    assert "RFC 8314" in done.stdout and f"checks: {len(registry())} n/a" in done.stdout


def test_port_reads_a_server_that_does_not_greet_with_220(tmp_path):
    """A 554 greeting on port 10025 (RFC 5321 §3.1): only --port says that it is SMTP."""
    cap = Capture()
    dialogue = [("s", b"554 no service here\r\n"), ("c", b"QUIT\r\n"), ("s", b"221 bye\r\n")]
    session(cap, dialogue, cport=40001, port=10025)
    path = cap.write(tmp_path / "554.pcap")
    assert smtp_harness("check", str(path)).stdout == "no SMTP sessions\n"
    done = smtp_harness("check", "--port", "10025", "--format", "jsonl", str(path))
    (record, _summary) = lines(done.stdout)
    assert record["server"] == f"{RECEIVER}:10025"
    verdicts = {c["id"]: c["verdict"] for c in record["checks"]}
    assert verdicts["session.greeting-554"] == "pass"


@pytest.mark.parametrize("name", ["smtp-one-side-only.pcap", "smtp-attachment-msg.pcap"])
def test_a_one_sided_capture_is_not_judged(name):
    """Only the client's direction was captured: a judge would read the server's missing
    replies as silence (RFC 2920 pipelining "failed" on these)."""
    done = smtp_harness("check", "--format", "jsonl", str(CORPUS / name))
    (record, _summary) = lines(done.stdout)
    assert done.returncode == 0
    assert {c["verdict"] for c in record["checks"]} == {"n/a"}
    assert "only one direction was captured" in record["checks"][-1]["note"]


def test_after_starttls_what_is_encrypted_is_not_judged():
    """Zeek's smtp-starttls.pcap: the QUIT is inside TLS; "closed without QUIT" was a fail."""
    done = smtp_harness("check", "--format", "jsonl", str(CORPUS / "smtp-starttls.pcap"))
    (record, _summary) = lines(done.stdout)
    waits = {c["id"]: c for c in record["checks"]}["close.client-waits-221"]
    assert (done.returncode, waits["verdict"]) == (0, "n/a")
    assert "went on in TLS from step 9" in waits["note"]


def test_ladder_jsonl_has_every_step_of_the_json_ladder(tmp_path):
    path = two_sessions(tmp_path / "two.pcap")
    for capture in (path, CORPUS / "smtp.pcap", CORPUS / "connect-with-smtp.pcap"):
        done = smtp_harness("ladder", "--format", "jsonl", str(capture))
        assert done.returncode == 0
        records = lines(done.stdout)
        steps = {r["index"]: r for r in records if r["type"] == "step"}
        ladder = dissect(capture)
        assert sorted(steps) == [s.index for s in ladder.steps]
        for step in ladder.steps:
            record = steps[step.index]
            assert {k: v for k, v in record.items() if k not in ("type", "session")} == json.loads(
                json.dumps(step.to_dict())
            )
        assert records[-1]["type"] == "summary"
        flows = [r for r in records if r["type"] == "flow"]
        sessions = [f["session"] for f in flows if f["session"] is not None]
        assert sessions == list(range(1, len(sessions) + 1))
        assert records[-1]["sessions"] == len(sessions)


def timed_capture(path: Path, parts: list[tuple[int, Capture]]) -> Path:
    """Frames of several captures, each part starting at its own capture time (ns)."""
    with open(path, "wb") as f:
        writer = PcapWriter(f)
        for start, cap in parts:
            for n, frame in enumerate(cap.frames):
                writer.write(start + n * 1_000_000, frame)
    return path


def test_an_idle_flow_is_closed_and_given_out_before_the_end(tmp_path):
    """Session A never closes; B starts 20 s of capture time later.  With --idle 10, A is
    finished (and its steps given out) when B's first packet shows it idle."""
    quiet, later = Capture(), Capture()
    session(quiet, ONE_RCPT[:3], cport=40001, close=False)
    session(later, ONE_RCPT, cport=40002)
    path = timed_capture(tmp_path / "idle.pcap", [(T0, quiet), (T0 + 20 * 10**9, later)])
    flows = list(Splitter(idle=10).sessions(str(path)))
    assert [(f.client[1], f.end) for f in flows] == [(40001, "idle"), (40002, "fin")]
    flows = list(Splitter().sessions(str(path)))  # 10 minutes: A lasts to the end
    assert [(f.client[1], f.end) for f in flows] == [(40001, "end"), (40002, "fin")]
    done = smtp_harness("ladder", "--format", "jsonl", "--idle", "10", str(path))
    ends = [r["end"] for r in lines(done.stdout) if r["type"] == "flow"]
    assert ends == ["idle", "fin"]


def test_memory_is_flat_in_sessions(tmp_path):
    """60 sessions, one every 5 s of capture time (a closed connection lingers 1 s): never
    more than the open ones are held (counted as live Flow objects and held connections,
    not by time)."""
    parts = []
    for n in range(60):
        session(cap := Capture(), ONE_RCPT, cport=41000 + n)
        parts.append((T0 + n * 5 * 10**9, cap))
    path = timed_capture(tmp_path / "many.pcap", parts)
    splitter, most_held, most_live, seen = Splitter(), 0, 0, 0
    for flow in splitter.sessions(str(path)):
        seen += 1
        del flow
        most_held = max(most_held, splitter.open_flows)
        most_live = max(most_live, sum(type(o) is Flow for o in gc.get_objects()))
        assert not splitter.coverage  # handed over with each flow, not kept
    assert seen == 60
    assert most_held <= 2 and most_live <= 1


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.name)
def test_check_reads_every_corpus_file_and_finds_tshark_s_sessions(capture):
    done = smtp_harness("check", "--format", "jsonl", str(capture))
    assert done.returncode in (0, 1), done.stderr
    assert done.stderr == ""
    records = lines(done.stdout)
    ours = {frozenset({r["client"], r["server"]}) for r in records if r["type"] == "session"}
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed (make install adds it): no second opinion")
    fields = ["tcp.stream", "ip.src", "ipv6.src", "tcp.srcport", "ip.dst", "ipv6.dst"]
    argv = ["tshark", "-r", str(capture), "-Y", "smtp", "-T", "fields"]
    for name in [*fields, "tcp.dstport"]:
        argv += ["-e", name]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True).stdout
    theirs = set()
    for row in out.splitlines():
        _stream, src4, src6, sport, dst4, dst6, dport = row.split("\t")
        inner = [value.split(",")[-1] for value in (src4, src6, dst4, dst6)]  # IP in IP
        ends = (inner[0] or f"[{inner[1]}]", sport), (inner[2] or f"[{inner[3]}]", dport)
        theirs.add(frozenset(f"{addr}:{port}" for addr, port in ends))
    assert ours == theirs


def test_progress_shows_on_a_terminal_only():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    bar = Progress(unit="packets", stream=screen, every=0)
    bar.advance(1500, sessions=3)
    bar.close()
    assert "1,500 packets" in screen.getvalue() and ", 3 sessions" in screen.getvalue()
    assert screen.getvalue().endswith("\r")  # the line is erased at the end
    pipe = io.StringIO()
    with Progress(unit="packets", stream=pipe, every=0) as quiet:
        quiet.advance(1500, sessions=3)
    assert pipe.getvalue() == ""
    assert Progress(total=200, unit="packets").line(2.0).startswith("  0% 0/200 packets")


def test_judge_sees_a_session_and_only_it(tmp_path):
    """Each session is judged alone: the second one's failure does not leak to the first."""
    rude = [*ONE_RCPT[:-1]]
    path = two_sessions(tmp_path / "rude.pcap", second=rude)
    judge = OfflineJudge()
    splitter = Splitter()
    reports = [judge.session(f, "x", {}) for f in splitter.sessions(str(path))]
    failed = [[j.check.id for j in r.with_verdict("fail")] for r in reports]
    assert failed[0] == [] and "close.quit-221" in failed[1]
    assert [int(r.exit_code) for r in reports] == [0, 1]


def test_output_closed_early_is_one_line_and_exit_2():
    """``ladder --format jsonl | head -1``: the reader goes away mid-stream; that is not a
    fault of ours (it was exit 3 with a traceback file)."""
    argv = [*CLI, "ladder", "--format", "jsonl", str(CORPUS / "smtp-many-addresses.pcap")]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout.readline().startswith(b'{"type":"step"')
    child.stdout.close()  # 1,218 steps: far more than a pipe holds
    assert child.wait(timeout=120) == 2
    (line,) = child.stderr.read().decode().splitlines()
    child.stderr.close()
    assert line == "smtp-harness: error: stdout: closed before the end of the output"


def test_exchanges_kept_for_one_ladder_never_answer_for_another():
    """The judges' pairing is kept for the last ladder asked (checks.steps.exchanges): a
    second ladder, a longer one, or a caller that changes its list gets its own answer."""
    from harness.checks.steps import exchanges
    from harness.ladder.model import Ladder

    seed = dissect(str(SEED))
    conn = commands(seed)[0].conn
    first = exchanges(seed, conn)
    first.clear()  # the caller's list, not the one kept
    assert len(exchanges(seed, conn)) == len(commands(seed)) + 1  # the content too
    cut = Ladder(steps=seed.steps[: seed.steps.index(commands(seed)[1])])
    assert [x.unit for x in exchanges(cut, conn)] == commands(cut)
    cut.steps.append(commands(seed)[1])
    assert [x.unit for x in exchanges(cut, conn)] == commands(cut)
    assert exchanges(cut, conn)[-1].reply is None  # its reply is not in this ladder
