"""``replay CAPTURE --rerun``: the captured exchange re-run by the two scripted peers must give
the captured ladder again (the seed golden, the matrix's reference cells); an edited capture
or scenario shows up as a diff at its step."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import dnslib
import pytest
from conftest import CLI, ROOT
from ladder_pcaps import DNS as DNS_HOST
from ladder_pcaps import SENDER, Capture
from scapy.all import DNS, IP, UDP, rdpcap, wrpcap

from harness.checks.base import REFERENCE, registry
from harness.ladder.dissect import dissect
from harness.replay.rerun import asked, rerun
from harness.replay.run import ReplayOptions
from harness.runner import run_scenario
from harness.scenario import FIXTURES, load_scenario

SEED = ROOT / "pcaps" / "seed.pcap"
# (check, role): reference cells of several kinds: MX choice, EHLO's fallback to HELO,
# mixed RCPT replies, a refused MAIL (no RCPT: the recipients are the VRFY'd), a pipelined
# group, dot-stuffing, a look-alike ending sent raw, a client's FIN with its QUIT, a server's
# RST where a reply was due (after a RCPT, after the content), commands the emitted sender
# sends only as script steps (a qualified VRFY; NOOP, RSET, XYZZY, a lower-case MAIL), a
# session refused at its greeting (421, 554: QUIT only), and no SMTP session at all: DNS
# stopped the sender (null MX, NXDOMAIN, SERVFAIL, a timeout) or its connection was refused,
# a host of the cell's own that drops every packet (its [[hosts]] and [network] kept), and a
# sender whose STARTTLS policy (required) makes it QUIT at a 454 or a STARTTLS not offered
REFERENCE_CELLS = [
    ("seed.exchange", "receiver"),
    ("dns.mx-preference", "sender"),
    ("session.ehlo-helo-fallback", "sender"),
    ("session.partial-rcpt", "sender"),
    ("session.reply-first-digit", "sender"),
    ("esmtp.pipelining-group-end", "sender"),
    ("data.dot-stuffing", "sender"),
    ("data.smuggle-crlf-dot-lf", "receiver"),
    ("tcp.half-close-221", "receiver"),
    ("tcp.reset-after-rcpt", "sender"),
    ("tcp.reset-before-250", "sender"),
    ("session.vrfy-disabled-252", "receiver"),
    ("session.noop", "receiver"),
    ("session.greeting-421", "sender"),
    ("session.greeting-554", "sender"),
    ("dns.null-mx", "sender"),
    ("dns.nxdomain-rejects", "sender"),
    ("dns.servfail-defers", "sender"),
    ("dns.timeout-defers", "sender"),
    ("dns.mx-without-implicit", "sender"),
    ("dns.glue-use", "sender"),
    ("tcp.syn-unanswered-next-mx", "sender"),
    ("tls.454-required", "sender"),
    ("tls.downgrade-required", "sender"),
]
_ERROR_STEP = re.compile(r"^\S+?:(\d+): error: (.*)$", re.MULTILINE)


def rerun_cli(capture: Path, out: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    argv = [*CLI, "replay", str(capture), "--rerun", "--out", str(out), *args]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=300)
    record = out / "rerun.json"
    return done, json.loads(record.read_text()) if record.exists() else {}


def _diff_steps(out: Path) -> dict[int, str]:
    return {int(n): what for n, what in _ERROR_STEP.findall((out / "diff.txt").read_text())}


@pytest.mark.lab
def test_the_seed_golden_reruns_to_its_own_ladder(tmp_path):
    done, record = rerun_cli(SEED, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (record["verdict"], record["mismatches"], record["faults"]) == ("pass", [], [])
    assert "same as" in (tmp_path / "diff.txt").read_text()
    emitted = load_scenario(tmp_path / "scenario.toml")  # what ran, as a user would run it
    assert emitted.sender.message == load_scenario(None).sender.message
    run = dissect(str(tmp_path / "run" / "capture.pcapng")).steps
    assert len(run) == len(dissect(str(SEED)).steps)


@pytest.mark.lab
@pytest.mark.parametrize(
    ("check_id", "role"), REFERENCE_CELLS, ids=[f"{c}/{r}" for c, r in REFERENCE_CELLS]
)
def test_a_reference_cell_reruns_to_its_own_ladder(check_id, role, tmp_path):
    setup = registry()[check_id].setups[0]
    scenario = setup.scenario(REFERENCE, role)  # as the matrix runs the harness column
    cell = run_scenario(scenario, tmp_path / "cell")
    assert not cell.faults, cell.faults
    again = rerun(cell.pcap, scenario, tmp_path / "rerun", ReplayOptions())
    assert not again.run.faults, again.run.faults
    assert again.diff is not None and again.diff.ok, again.diff_text
    assert again.run.problems == []
    assert str(again.verdict) == "pass"
    steps = again.run.ladder.steps
    assert len(steps) == len(cell.ladder.steps) and "dns-query" in {s.kind for s in steps}


@pytest.mark.lab
def test_an_edited_capture_differs_at_the_edited_step(tmp_path):
    packets = rdpcap(str(SEED))
    answer = packets[3]  # frame 4, step 2: the MX answer
    answer[DNS].an[0].preference = 20
    del answer[IP].len, answer[IP].chksum, answer[UDP].len, answer[UDP].chksum
    edited = tmp_path / "edited.pcap"
    wrpcap(str(edited), packets)
    done, record = rerun_cli(edited, tmp_path / "run")
    assert done.returncode == 1, done.stdout + done.stderr
    assert record["verdict"] == "fail" and record["faults"] == []
    diff = _diff_steps(tmp_path / "run")
    assert list(diff) == [2], diff
    assert "MX 20 mail.receiver.com." in (tmp_path / "run" / "diff.txt").read_text()


@pytest.mark.lab
def test_an_edited_scenario_differs_at_the_steps_it_changes(tmp_path):
    scenario = tmp_path / "mx-20.toml"
    scenario.write_text(
        f'[dns]\nzones = "{FIXTURES / "zones"}"\n'
        'records = ["receiver.com. MX 20 mail.receiver.com."]\n'
    )
    done, record = rerun_cli(SEED, tmp_path / "run", "--scenario", str(scenario))
    assert done.returncode == 1, done.stdout + done.stderr
    assert record["faults"] == []
    assert list(_diff_steps(tmp_path / "run")) == [2]
    kept = load_scenario(tmp_path / "run" / "scenario.toml")
    assert kept.data["dns"]["records"] == ["receiver.com. MX 20 mail.receiver.com."]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--as", "client"), "replay: give one of --as client, --as server or --rerun"),
        (("--mta", "postfix"), "replay: --rerun runs the scripted peers only: no --mta"),
    ],
)
def test_rerun_with_a_side_or_an_mta_is_one_line_and_exit_2(args, said, tmp_path):
    done, record = rerun_cli(SEED, tmp_path / "run", *args)
    assert (done.returncode, done.stderr, record) == (2, f"smtp-harness: error: {said}\n", {})
    assert not (tmp_path / "run").exists()


@pytest.mark.lab
def test_the_replay_fixture_reruns_a_capture(replay):
    again = replay(SEED, rerun=True)
    assert (str(again.verdict), again.run.faults) == ("pass", [])
    edited = replay(SEED, rerun=True, maps=("c3po@receiver.com=bb8@receiver.com",))
    assert str(edited.verdict) == "fail"  # the seed's RCPT was c3po's, not bb8's
    assert any("RCPT TO:<bb8@receiver.com>" in s.text for s in edited.run.ladder.steps)


def _dns_only(path: Path, *names: str) -> Path:
    capture = Capture()
    for name in names:
        query = dnslib.DNSRecord.question(name, "MX")
        capture.dns(SENDER, DNS_HOST, query, reply=False)
        answer = query.reply()
        answer.header.rcode = dnslib.RCODE.NXDOMAIN
        capture.dns(SENDER, DNS_HOST, answer, reply=True)
    return capture.write(path)


def test_no_smtp_session_asks_the_captured_mx_questions(tmp_path):
    capture = _dns_only(tmp_path / "dns.pcap", "receiver.com", "example.org.")
    asked_for = asked(load_scenario(None), dissect(str(capture)))
    seed = load_scenario(None).sender.recipients  # all at receiver.com
    assert asked_for.sender.recipients == (*seed, "postmaster@example.org")
    assert (asked_for.sender.script, asked_for.receiver.rules) == ([], [])


@pytest.mark.parametrize(
    ("capture", "args", "said"),
    [
        (
            "tests/data/fuzz/dns-naptr-not-utf8.pcap",
            (),
            "tests/data/fuzz/dns-naptr-not-utf8.pcap: no SMTP session and no MX question to re-run",
        ),
        (
            "tests/data/fuzz/dns-naptr-not-utf8.pcap",
            ("--session", "2"),
            "tests/data/fuzz/dns-naptr-not-utf8.pcap: no SMTP session in the capture",
        ),
    ],
)
def test_no_smtp_session_and_nothing_to_ask_is_one_line_and_exit_2(capture, args, said, tmp_path):
    done, record = rerun_cli(Path(capture), tmp_path / "run", *args)
    assert (done.returncode, done.stderr, record) == (2, f"smtp-harness: error: {said}\n", {})
    assert not (tmp_path / "run").exists()


def test_a_map_for_a_capture_with_no_smtp_session_is_one_line_and_exit_2(tmp_path):
    capture = _dns_only(tmp_path / "dns.pcap", "receiver.com")
    done, record = rerun_cli(capture, tmp_path / "run", "--map", "c3po@receiver.com=x@y.com")
    said = f"--map 'c3po@receiver.com=x@y.com': {capture} has no SMTP session"
    assert (done.returncode, done.stderr, record) == (2, f"smtp-harness: error: {said}\n", {})


@pytest.mark.lab
def test_a_dns_only_capture_reruns_its_questions_and_differs_where_the_answers_do(tmp_path):
    capture = _dns_only(tmp_path / "dns.pcap", "nosuch.receiver.com")
    done, record = rerun_cli(capture, tmp_path / "run")  # the seed's zones: NXDOMAIN too
    assert done.returncode == 0, done.stdout + done.stderr
    assert (record["session"], record["verdict"], record["mismatches"]) == (None, "pass", [])
    assert "its DNS questions (no SMTP session)" in done.stdout
    other = _dns_only(tmp_path / "other.pcap", "receiver.com")  # the seed's zones answer it
    done, record = rerun_cli(other, tmp_path / "other")
    assert (done.returncode, record["verdict"]) == (1, "fail"), done.stdout + done.stderr
    assert 2 in _diff_steps(tmp_path / "other")  # the answer: an MX, not NXDOMAIN
