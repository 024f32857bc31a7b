"""Scenarios end to end in real namespaces: the seed's 33 steps, scripted faults, bad input."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CLI, ROOT

from harness.lab import Lab
from harness.mta.base import Site, adapters
from harness.runner import RunResult, lab_dns, run_scenario
from harness.scenario import FIXTURES, load_scenario

pytestmark = pytest.mark.lab

SEED_PATH = FIXTURES / "messages" / "seed.eml"
SEED_MESSAGE = SEED_PATH.read_bytes()


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory):
    return run_scenario(load_scenario(None), tmp_path_factory.mktemp("seed"))


def _kinds(log: list[dict]) -> list[str]:
    out = []
    for e in log:
        if e["kind"] == "command":
            out.append(e["line"])
        elif e["kind"] == "reply":
            out.append(e["lines"][-1][:3])
        elif e["kind"] in ("dns-query", "dns-answer"):
            out.append(f"{e['kind']} {e.get('qtype', 'PTR')}")
        elif e["kind"] in ("connect", "close"):
            out.append(e["kind"])
    return out


def test_seed_receiver_sees_the_ladder_order(seed_run) -> None:
    assert seed_run.ok, seed_run.problems
    assert _kinds(seed_run.receiver_log) == [
        "connect", "220",
        "HELO mail.sender.com", "dns-query PTR", "dns-answer PTR", "250",
        "VRFY aibo", "550", "VRFY c3po", "250", "VRFY r2d2", "250",
        "MAIL FROM:<luke@sender.com>", "250",
        "RCPT TO:<c3po@receiver.com>", "250", "RCPT TO:<r2d2@receiver.com>", "250",
        "DATA", "354", "250",
        "QUIT", "221", "close",
    ]  # fmt: skip


def test_seed_dns_questions_in_order(seed_run) -> None:
    asked = [(e.client[0], e.qname.rstrip("."), e.qtype) for e in seed_run.dns_log]
    assert asked == [
        ("192.0.2.10", "receiver.com", "MX"),
        ("192.0.2.25", "10.2.0.192.in-addr.arpa", "PTR"),
    ]


def test_seed_messages_stored_byte_exact(seed_run) -> None:
    outcomes = {r: o.status for r, o in seed_run.report.outcomes.items()}
    assert outcomes == {
        "aibo@receiver.com": "rejected",
        "c3po@receiver.com": "delivered",
        "r2d2@receiver.com": "delivered",
    }
    for rcpt in ("c3po@receiver.com", "r2d2@receiver.com"):
        (stored,) = (seed_run.folder / "maildir" / rcpt / "new").iterdir()
        assert stored.read_bytes() == SEED_MESSAGE
        assert b"Hello Robots, May the force be with you. Luke" in stored.read_bytes()
    assert not (seed_run.folder / "maildir" / "aibo@receiver.com").exists()


def test_seed_aibo_never_in_rcpt(seed_run) -> None:
    lines = [e["line"] for e in seed_run.receiver_log if e["kind"] == "command"]
    assert "VRFY aibo" in lines
    assert not [line for line in lines if line.startswith("RCPT") and "aibo" in line]


def test_seed_receiver_sends_the_first_fin(seed_run) -> None:
    fins = subprocess.run(
        ["tshark", "-r", str(seed_run.folder / "capture.pcapng"), "-Y", "tcp.flags.fin == 1",
         "-T", "fields", "-e", "ip.src"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert fins == ["192.0.2.25", "192.0.2.10"]


def _scenario(tmp_path: Path, body: str) -> Path:
    """``body`` with the fixtures' zones and message, in its own [dns]/[sender] if any."""
    path = tmp_path / "s.toml"
    text = textwrap.dedent(body)
    fixed = {"dns": f'zones = "{FIXTURES / "zones"}"', "sender": f'message = "{SEED_PATH}"'}
    for section, key in fixed.items():
        header = f"[{section}]\n"
        text = (
            text.replace(header, header + key + "\n", 1)
            if header in text
            else header + key + "\n" + text
        )
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ('on = "MAIL"\ncode = 451', {"aibo": "rejected", "c3po": "deferred", "r2d2": "deferred"}),
        ('on = "MAIL"\ncode = 550', {"aibo": "rejected", "c3po": "rejected", "r2d2": "rejected"}),
        (
            'on = "RCPT"\nargument = "c3po@receiver.com"\ncode = 450',
            {"aibo": "rejected", "c3po": "deferred", "r2d2": "delivered"},
        ),
        (
            'on = "<end-of-data>"\ncode = 554',
            {"aibo": "rejected", "c3po": "rejected", "r2d2": "rejected"},
        ),
        (
            'on = "<greeting>"\ncode = 421\nclose = true',
            {"aibo": "deferred", "c3po": "deferred", "r2d2": "deferred"},
        ),
    ],
)
def test_scripted_replies_change_the_outcome(tmp_path, rule, expected) -> None:
    path = _scenario(tmp_path, f"[[receiver.replies]]\n{rule}\n")
    result = run_scenario(load_scenario(path), tmp_path / "run")
    got = {r.split("@")[0]: o.status for r, o in result.report.outcomes.items()}
    assert got == expected
    stored = {m.recipient.split("@")[0] for m in result.stored}
    assert stored == {r for r, s in expected.items() if s == "delivered"}


def test_ptr_at_connect_asks_before_the_greeting(tmp_path) -> None:
    path = _scenario(tmp_path, '[receiver]\nptr_at = "connect"\n')
    result = run_scenario(load_scenario(path), tmp_path / "run")
    assert _kinds(result.receiver_log)[:4] == ["connect", "dns-query PTR", "dns-answer PTR", "220"]


def test_bad_input_then_a_good_session_in_the_lab(tmp_path) -> None:
    """Raw probes from the sender host get RFC replies; the seed exchange still works after."""
    probes = [
        {"at": "HELO", "raw": "HELO " + "x" * 600 + "\r\n"},
        {"at": "HELO", "raw": "NOOP\u0000\r\n"},
        {"at": "HELO", "raw": "FROB\r\n"},
        {"at": "HELO", "raw": "RCPT TO:<c3po@receiver.com>\r\n"},
    ]
    body = "".join(
        f'[[sender.script]]\nat = "{p["at"]}"\nraw = {_toml_str(p["raw"])}\n' for p in probes
    )
    result = run_scenario(load_scenario(_scenario(tmp_path, body)), tmp_path / "run")
    replies = [e["lines"][-1][:3] for e in result.receiver_log if e["kind"] == "reply"]
    assert replies[1:5] == ["500", "500", "500", "503"]
    assert result.ok and len(result.stored) == 2


def _toml_str(raw: str) -> str:
    return (
        '"' + "".join(c if c.isalnum() or c in " <>@.:" else f"\\u{ord(c):04x}" for c in raw) + '"'
    )


def test_cli_run_exit_codes(tmp_path) -> None:
    ok = subprocess.run([*CLI, "run", "--out", str(tmp_path / "a")], capture_output=True,
                        text=True, cwd=ROOT)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "verdict: PASS" in ok.stdout and "VRFY aibo" in ok.stdout
    wrong = _scenario(tmp_path, '[expect]\ndelivered = ["aibo@receiver.com"]\n')
    fail = subprocess.run([*CLI, "run", str(wrong), "--out", str(tmp_path / "b")],
                          capture_output=True, text=True)  # fmt: skip
    assert fail.returncode == 1 and "verdict: FAIL" in fail.stdout
    bad = subprocess.run([*CLI, "run", str(tmp_path / "none.toml")], capture_output=True,
                         text=True)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


# --- real MTAs: outcomes from DSNs, knobs, glue -----------------------------------------------
MTAS = ("postfix", "exim", "opensmtpd", "sendmail")


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A 0755 run folder: Exim delivers as Debian-exim, who cannot enter pytest's tmp_path."""
    path = Path(tempfile.mkdtemp(prefix="smtp-harness-run-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def _mta_run(folder: Path, body: str) -> RunResult:
    path = _scenario(folder, body)
    return run_scenario(load_scenario(path), folder / "run")


def _outcomes(result: RunResult) -> dict[str, tuple[str, str]]:
    return {r: (o.status, o.stage) for r, o in result.report.outcomes.items()}


@pytest.mark.parametrize("mta", MTAS)
def test_mta_sender_bounces_are_read_from_its_dsns(open_folder, mta) -> None:
    """NXDOMAIN: no session at all, the MTA's DSN says failed; r2d2 is delivered."""
    rcpts = '["r2d2@receiver.com", "c3po@nosuch.receiver.com"]'
    body = f'[sender]\nmta = "{mta}"\nrecipients = {rcpts}\n'
    result = _mta_run(open_folder, body)
    assert _outcomes(result) == {
        "r2d2@receiver.com": ("delivered", "<end-of-data>"),
        "c3po@nosuch.receiver.com": ("rejected", "dsn"),
    }
    bounced = result.report.outcomes["c3po@nosuch.receiver.com"]
    assert bounced.evidence[0].startswith("DSN failed 5.") and bounced.status_code[0] == "5"


@pytest.mark.parametrize("mta", MTAS)
def test_mta_sender_mail_451_defers_despite_pipelined_503s(open_folder, mta) -> None:
    body = f'[sender]\nmta = "{mta}"\nrecipients = ["c3po@receiver.com", "r2d2@receiver.com"]\n'
    result = _mta_run(open_folder, body + '[[receiver.replies]]\non = "MAIL"\ncode = 451\n')
    assert _outcomes(result) == {
        "c3po@receiver.com": ("deferred", "queue"),
        "r2d2@receiver.com": ("deferred", "queue"),
    }
    assert result.stored == []


QUALIFIED_VRFY = {"postfix": 502, "exim": 252, "opensmtpd": 500, "sendmail": 252}


@pytest.mark.parametrize("mta", MTAS)
def test_mta_receiver_vrfy_disabled_is_the_mtas_own(open_folder, mta) -> None:
    body = f'[receiver]\nmta = "{mta}"\nvrfy = "disabled"\n'
    body += '[[sender.script]]\nat = "MAIL"\nsend = "VRFY c3po@receiver.com"\n'
    result = _mta_run(open_folder, body)
    vrfy = [s for s in result.ladder.steps if s.kind == "command" and s.text.startswith("VRFY c3")]
    reply = next(s for s in result.ladder.steps if s.kind == "reply" and s.index > vrfy[-1].index)
    assert int(reply.text[:3]) == QUALIFIED_VRFY[mta], reply.text


@pytest.mark.parametrize("mta", MTAS)
def test_mta_receiver_family_any_listens_on_ipv6_too(open_folder, mta) -> None:
    with Lab() as lab, lab_dns(lab, load_scenario(None)):
        site = Site(lab, "receiver", open_folder / mta, "mail.receiver.com", "receiver.com",
                    ("c3po",), extra={"family": "any"})  # fmt: skip
        with adapters()[mta](site, "receiver"):
            for address in lab.host("receiver").addresses:
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                with lab.socket_factory("sender")(family, socket.SOCK_STREAM) as sock:
                    sock.settimeout(10)
                    sock.connect((address, 25))
                    assert sock.recv(512).startswith(b"220 "), address


@pytest.mark.parametrize(
    ("use_glue", "expected"), [(True, "deferred"), (False, "delivered")], ids=["glue", "asked"]
)
def test_trap_glue_catches_a_sender_that_trusts_it(tmp_path, use_glue, expected) -> None:
    body = '[dns]\nglue = { "mail.receiver.com" = "192.0.2.99" }\n'
    body += f'[sender]\nuse_glue = {str(use_glue).lower()}\nrecipients = ["c3po@receiver.com"]\n'
    result = run_scenario(load_scenario(_scenario(tmp_path, body)), tmp_path / "run")
    assert result.report.outcomes["c3po@receiver.com"].status == expected
    answers = [s.text for s in result.ladder.steps if s.kind == "dns-answer"]
    assert answers[0] == "MX 10 mail.receiver.com. + A mail.receiver.com. 192.0.2.99"
