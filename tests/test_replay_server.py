"""``replay --as server``: the captured server side as the scripted receiver, the scripted
sender as the live client, judged by the ladder diff."""

from __future__ import annotations

import re

import pytest
from ladder_pcaps import seed_capture
from test_replay import PIPELINED
from test_replay_lab import SEED, _replay

from harness.replay.script import Mapping
from harness.replay.server import receiver_config, sender_config
from harness.replay.session import read_session
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
    done, record = _replay(SEED, tmp_path, "--as", "server")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (record["as"], record["verdict"], record["faults"]) == ("server", "pass", [])
    assert "same as" in (tmp_path / "diff.txt").read_text()


@pytest.mark.lab
def test_a_pipelining_client_replayed_as_server_shows_the_replies_the_sender_waited_for(
    tmp_path,
):
    capture = seed_capture(tmp_path / "pipelined.pcap", dialogue=PIPELINED)
    done, record = _replay(capture, tmp_path / "run", "--as", "server")
    assert done.returncode == 1, done.stdout + done.stderr
    assert record["faults"] == []
    steps = read_session(str(capture)).steps
    grouped = {s.index for s in steps if s.kind == "reply" and s.get("answers") in ("MAIL", "RCPT")}
    text = (tmp_path / "run" / "diff.txt").read_text()
    missing = {int(n) for n in re.findall(r"^\S+?:(\d+): error: step missing$", text, re.M)}
    assert missing == grouped, text  # the scripted sender waited for each: no pipelining
