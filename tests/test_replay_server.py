"""``replay --as server``: the captured server side as the scripted receiver, the scripted
sender as the live client, judged by the ladder diff."""

from __future__ import annotations

import re
import subprocess

import pytest
from conftest import CLI, ROOT
from ladder_pcaps import seed_capture
from test_replay import PIPELINED
from test_replay_lab import SEED, replay_cli

from harness.checks.base import REFERENCE, registry
from harness.errors import HarnessError
from harness.ladder.compare import compare, format_diff
from harness.ladder.dissect import dissect
from harness.replay.emit import emit_scenario
from harness.replay.run import ReplayOptions, in_lab
from harness.replay.script import Mapping
from harness.replay.server import receiver_config, sender_config
from harness.replay.session import read_session
from harness.runner import host_names, run_scenario
from harness.scenario import load_scenario


def test_the_captured_server_is_one_rule_per_reply_and_the_client_its_envelope():
    session, seed = read_session(str(SEED)), load_scenario(None)
    config = receiver_config(session, seed.receiver)
    replies = [r for t in session.turns for r in t.replies]
    assert [(r.on, r.code, r.text) for r in config.rules] == [
        (r.answers, r.code, r.lines) for r in replies
    ]
    assert [r.nth for r in config.rules if r.on == "VRFY"] == [1, 2, 3]
    assert (config.hostname, config.greeting) == ("mail.receiver.com", "ESMTP smtp-harness")
    sender = sender_config(session, Mapping(session), seed.sender)
    assert sender.recipients == seed.sender.recipients  # aibo only verified, then dropped
    assert (sender.helo_name, sender.mail_from, sender.ehlo, sender.vrfy) == (
        "mail.sender.com",
        "luke@sender.com",
        False,
        True,
    )
    assert sender.message == seed.sender.message  # the content, dot-unstuffed


@pytest.mark.lab
def test_the_seed_as_server_against_the_scripted_sender_is_the_same(tmp_path):
    done, record = replay_cli(SEED, tmp_path, "--as", "server")
    assert done.returncode == 0, done.stdout + done.stderr
    outcomes = {o["recipient"]: (o["status"], o["stage"], o["code"]) for o in record["outcomes"]}
    assert outcomes == {  # the live client's own report: aibo refused at its VRFY
        "c3po@receiver.com": ("delivered", "<end-of-data>", 250),
        "r2d2@receiver.com": ("delivered", "<end-of-data>", 250),
        "aibo@receiver.com": ("rejected", "VRFY", 550),
    }
    assert "  aibo@receiver.com: rejected at VRFY 550\n" in done.stdout
    assert (record["as"], record["verdict"], record["faults"]) == ("server", "pass", [])
    assert "same as" in (tmp_path / "diff.txt").read_text()


@pytest.mark.lab
def test_a_pipelining_client_replayed_as_server_shows_the_replies_the_sender_waited_for(
    tmp_path,
):
    capture = seed_capture(tmp_path / "pipelined.pcap", dialogue=PIPELINED)
    done, record = replay_cli(capture, tmp_path / "run", "--as", "server")
    assert done.returncode == 1, done.stdout + done.stderr
    assert record["faults"] == []
    steps = read_session(str(capture)).steps
    grouped = {s.index for s in steps if s.kind == "reply" and s.get("answers") in ("MAIL", "RCPT")}
    text = (tmp_path / "run" / "diff.txt").read_text()
    missing = {int(n) for n in re.findall(r"^\S+?:(\d+): error: step missing$", text, re.M)}
    assert missing == grouped, text  # the scripted sender waited for each: no pipelining


def test_emit_scenario_writes_what_as_server_runs(tmp_path):
    path = tmp_path / "seed-session.toml"
    done = subprocess.run(
        [*CLI, "replay", str(SEED), "--as", "server", "--emit-scenario", str(path)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    emitted, seed = load_scenario(path), load_scenario(None)
    session = read_session(str(SEED))
    assert emitted.receiver.rules == receiver_config(session, seed.receiver).rules
    assert (tmp_path / "seed-session.eml").read_bytes() == seed.sender.message
    assert emitted.sender.recipients == seed.sender.recipients


def test_emit_scenario_into_a_missing_folder_is_one_line_and_exit_2(tmp_path):
    path = tmp_path / "no" / "such.toml"
    done = subprocess.run(
        [*CLI, "replay", str(SEED), "--as", "server", "--emit-scenario", str(path)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    message = path.with_suffix(".eml")
    assert (
        done.stderr == f"smtp-harness: error: {message}: cannot write: No such file or directory\n"
    )


@pytest.mark.lab
def test_the_emitted_seed_scenario_reruns_to_the_seed_ladder(tmp_path):
    path = tmp_path / "seed-session.toml"
    emitted = emit_scenario(in_lab(*_server_side()), str(SEED), path)
    result = run_scenario(emitted, tmp_path / "run")
    assert result.ok, result.problems
    topology = emitted.topology
    verdict = compare(result.ladder, dissect(str(SEED), host_names(topology)))
    assert verdict.ok, format_diff(verdict, str(result.pcap), str(SEED))


def _server_side():
    seed, session = load_scenario(None), read_session(str(SEED))
    return seed, session, Mapping(session), ReplayOptions(side="server")


@pytest.mark.lab
def test_the_seed_as_server_with_postfix_as_the_live_client_is_judged_by_its_commands(
    open_folder,
):
    out = open_folder / "run"
    done, record = replay_cli(SEED, out, "--as", "server", "--mta", "postfix")
    assert done.returncode == 1, done.stdout + done.stderr
    assert (record["as"], record["verdict"], record["faults"]) == ("server", "fail", [])
    assert (record["mta"]["name"], record["mta"]["role"]) == ("postfix", "sender")
    steps = {s.index: s for s in read_session(str(SEED)).steps}
    text = (out / "diff.txt").read_text()
    diff = dict(re.findall(r"^\S+?:(\d+): error: (.*)$", text, re.M))
    helo = next(i for i, s in steps.items() if s.text == "HELO mail.sender.com")
    assert (
        diff[str(helo)] == 'command differs: text "HELO mail.sender.com" -> "EHLO mail.sender.com"'
    )
    vrfys = [i for i, s in steps.items() if s.text.startswith("VRFY")]
    assert len(vrfys) == 3 and all(str(i) in diff for i in vrfys)  # Postfix never verifies
    content = next(i for i, s in steps.items() if s.kind == "content")
    assert diff[str(content)].startswith("content differs")  # Postfix adds its Received
    live = dissect(str(out / "capture.pcapng")).steps
    assert any(s.text.startswith("MAIL FROM:<luke@sender.com>") for s in live)  # the envelope
    delivered = {o["recipient"] for o in record["stored"]}
    assert {"c3po@receiver.com", "r2d2@receiver.com"} <= delivered
    said = {o["recipient"]: o["status"] for o in record["outcomes"]}  # read from Postfix
    assert set(said) == set(load_scenario(None).sender.recipients)
    assert (said["c3po@receiver.com"], said["r2d2@receiver.com"]) == ("delivered", "delivered")
    assert "mta: postfix" in done.stdout and " as sender" in done.stdout


def test_an_mta_cannot_send_for_a_null_reverse_path_one_line_exit_2(tmp_path):
    dialogue = [(side, data.replace(b"<luke@sender.com>", b"<>")) for side, data in PIPELINED]
    capture = seed_capture(tmp_path / "null.pcap", dialogue=dialogue)
    done, record = replay_cli(capture, tmp_path / "run", "--as", "server", "--mta", "postfix")
    assert (done.returncode, record) == (2, {}), done.stdout + done.stderr
    assert done.stderr == (
        "smtp-harness: error: sender.mail_from: postfix as sender needs a mailbox (luke's: "
        "its bounces go there), not the null path\n"
    )


def test_verified_users_without_a_rcpt_are_the_addresses_their_vrfy_named(tmp_path):
    dialogue = [
        ("s", b"220 mail.receiver.com ESMTP\r\n"),
        ("c", b"HELO mail.sender.com\r\n"),
        ("s", b"250 mail.receiver.com\r\n"),
        ("c", b"VRFY c3po\r\n"),
        ("s", b"250 <c3po@receiver.com>\r\n"),
        ("c", b"VRFY r2d2@receiver.com\r\n"),
        ("s", b"252 cannot verify, will try\r\n"),
        ("c", b"VRFY bb8\r\n"),  # no address anywhere: left out
        ("s", b"550 no such user\r\n"),
        ("c", b"MAIL FROM:<luke@sender.com>\r\n"),
        ("s", b"451 try later\r\n"),
        ("c", b"QUIT\r\n"),
        ("s", b"221 bye\r\n"),
    ]
    session = read_session(str(seed_capture(tmp_path / "vrfy.pcap", dialogue=dialogue)))
    sender = sender_config(session, Mapping(session), load_scenario(None).sender)
    assert sender.recipients == ("c3po@receiver.com", "r2d2@receiver.com")


EXTRA = [
    ("s", b"220 mail.receiver.com ESMTP\r\n"),
    ("c", b"HELO mail.sender.com\r\n"),
    ("s", b"250 mail.receiver.com\r\n"),
    ("c", b"VRFY c3po\r\n"),
    ("s", b"252 cannot verify\r\n"),
    ("c", b"VRFY c3po@receiver.com\r\n"),  # c3po verified twice: the second is not its own
    ("s", b"252 cannot verify\r\n"),
    ("c", b"NOOP\r\n"),
    ("s", b"250 OK\r\n"),
    ("c", b"XYZZY\r\n"),
    ("s", b"500 5.5.1 Command unrecognized\r\n"),  # what the scripted receiver says itself
    ("c", b"mail FROM:<luke@sender.com>\r\n"),
    ("s", b"250 OK\r\n"),
    ("c", b"RCPT TO:<c3po@receiver.com>\r\n"),
    ("s", b"250 OK\r\n"),
    ("c", b"RSET\r\n"),
    ("s", b"250 OK\r\n"),
    ("c", b"QUIT\r\n"),
    ("s", b"221 bye\r\n"),
]


def test_commands_the_sender_would_not_send_are_raw_steps_where_they_were_sent(tmp_path):
    session = read_session(str(seed_capture(tmp_path / "extra.pcap", dialogue=EXTRA)))
    sender = sender_config(session, Mapping(session), load_scenario(None).sender)
    steps = [(s.at, s.position, s.argument, s.send) for s in sender.script]
    assert steps == [
        ("MAIL", "before", "luke@sender.com", b"VRFY c3po@receiver.com\r\n"),
        ("MAIL", "before", "luke@sender.com", b"NOOP\r\n"),
        ("MAIL", "before", "luke@sender.com", b"XYZZY\r\n"),
        ("MAIL", "instead", "luke@sender.com", b"mail FROM:<luke@sender.com>\r\n"),
        ("QUIT", "before", None, b"RSET\r\n"),  # no DATA: the sender's next is QUIT
    ]
    receiver = receiver_config(session, load_scenario(None).receiver)
    assert "XYZZY" not in [r.on for r in receiver.rules]  # its own 500 is the captured one
    emitted = emit_scenario(
        in_lab(load_scenario(None), session, Mapping(session), ReplayOptions(side="server")),
        "extra.pcap",
        tmp_path / "extra.toml",
    )
    assert [(s.at, s.position, s.argument, s.send) for s in emitted.sender.script] == steps


def test_a_vrfy_of_another_form_is_sent_instead_of_the_senders_own(tmp_path):
    dialogue = [*EXTRA[:3], ("c", b"VRFY C3PO@receiver.com\r\n"), *EXTRA[4:5], *EXTRA[-2:]]
    session = read_session(str(seed_capture(tmp_path / "vrfy.pcap", dialogue=dialogue)))
    sender = sender_config(session, Mapping(session), load_scenario(None).sender)
    assert sender.recipients[:1] == ("C3PO@receiver.com",)  # the address its VRFY named
    assert [(s.at, s.position, s.argument, s.send) for s in sender.script] == [
        ("VRFY", "instead", "C3PO", b"VRFY C3PO@receiver.com\r\n")
    ]


def test_an_unknown_verb_answered_otherwise_than_the_receiver_would_is_refused(tmp_path):
    dialogue = [*EXTRA[:9], ("c", b"XYZZY\r\n"), ("s", b"250 magic\r\n"), *EXTRA[-2:]]
    session = read_session(str(seed_capture(tmp_path / "xyzzy.pcap", dialogue=dialogue)))
    with pytest.raises(HarnessError, match=r"step \d+: a reply to XYZZY cannot be scripted"):
        receiver_config(session, load_scenario(None).receiver)


@pytest.mark.parametrize("code", [421, 554])
def test_a_session_refused_at_the_greeting_is_its_greeting_rule_and_the_given_sender(
    code, tmp_path
):
    dialogue = [("s", b"%d mail.receiver.com not now\r\n" % code), *EXTRA[-2:]]
    session = read_session(str(seed_capture(tmp_path / "refused.pcap", dialogue=dialogue)))
    seed = load_scenario(None)
    receiver = receiver_config(session, seed.receiver)
    assert [(r.on, r.nth, r.code, r.text) for r in receiver.rules] == [
        ("<greeting>", 1, code, ("mail.receiver.com not now",)),
        ("QUIT", 1, 221, ("bye",)),
    ]
    sender = sender_config(session, Mapping(session), seed.sender)
    assert (sender.recipients, sender.mail_from, sender.helo_name, sender.message) == (
        seed.sender.recipients,  # the capture has none: the given scenario's
        seed.sender.mail_from,
        seed.sender.helo_name,
        seed.sender.message,
    )
    assert sender.script == []  # QUIT is its own


def test_a_server_that_opens_with_another_code_is_refused(tmp_path):
    dialogue = [("s", b"250 mail.receiver.com hello\r\n"), *EXTRA[-2:]]
    path = str(seed_capture(tmp_path / "250.pcap", dialogue=dialogue))
    with pytest.raises(HarnessError, match=r"does not open with a greeting \(220, 421 or 554\)"):
        read_session(path)


def test_the_emitted_scenario_keeps_the_given_hosts_link_faults_and_timeouts(tmp_path):
    given = registry()["tcp.syn-unanswered-next-mx"].setups[0].scenario(REFERENCE, "sender")
    given.sender.timeout, given.receiver.timeout = 7.5, 12.0
    session = read_session(str(SEED))
    played = in_lab(given, session, Mapping(session), ReplayOptions(side="server"))
    emitted = emit_scenario(played, str(SEED), tmp_path / "kept.toml")
    assert emitted.topology.host("silent").ipv4 == "192.0.2.26"
    assert (emitted.link_faults, emitted.network_seed) == (given.link_faults, 1)
    assert (emitted.sender.timeout, emitted.receiver.timeout) == (7.5, 12.0)


def test_a_command_the_capture_has_no_reply_to_is_a_step_that_waits_for_none(tmp_path):
    dialogue = [*EXTRA[:3], ("c", b"NOOP\r\n")]  # the server closed without answering it
    session = read_session(str(seed_capture(tmp_path / "noop.pcap", dialogue=dialogue)))
    sender = sender_config(session, Mapping(session), load_scenario(None).sender)
    assert [(s.at, s.position, s.send, s.reply) for s in sender.script] == [
        ("HELO", "after", b"NOOP\r\n", False)  # no command of its own follows
    ]
    emitted = emit_scenario(
        in_lab(load_scenario(None), session, Mapping(session), ReplayOptions(side="server")),
        "noop.pcap",
        tmp_path / "noop.toml",
    )
    assert [s.reply for s in emitted.sender.script] == [False]
