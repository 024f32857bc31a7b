"""The ladder inside TLS (issue 12, "Seeing inside"): key logs, the record layer, the ladder.

Every capture here holds a REAL TLS session (Python's ssl over memory BIOs, the lab PKI's
certificate, the client's ``keylog_filename``: tests/crafted/tls/build.py) carrying an SMTP
dialogue, wrapped into TCP segments by scapy.  The committed ones give their hand-written
ladders; fresh ones are made on every run, for each supported suite, and tshark (with
``-o tls.keylog_file``) is the second opinion on the commands and replies inside.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import re
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from ladder_pcaps import HOSTS, RECEIVER, SENDER, Capture, Tcp
from test_crafted_smtp import actual, expected

from harness.capture import pcapng
from harness.capture.pcapfile import PcapWriter, read
from harness.errors import HarnessError
from harness.ladder.dissect import dissect
from harness.ladder.model import Ladder, StepKind
from harness.tls.keylog import KeyLog, from_capture
from harness.tls.pki import make_lab_pki
from harness.tls.records import HRR_RANDOM, Problem, TlsSession, hkdf_expand_label, prf

CRAFTED = Path(__file__).resolve().parent / "crafted" / "tls"
_SPEC = importlib.util.spec_from_file_location("crafted_tls_build", CRAFTED / "build.py")
build = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(build)  # tests/crafted/tls/build.py, under a name of its own

NAMES = sorted(build.CAPTURES)
Dialogue = build.Dialogue
CLI = [sys.executable, "-m", "harness"]
INNER = [  # (kind, text) of the dialogue inside TLS, as build.INSIDE sends it
    ("command", "EHLO inside.sender.com"),
    ("reply", "250 mail.receiver.com"),
    ("command", "MAIL FROM:<luke@sender.com>"),
    ("reply", "250 OK"),
    ("command", "RCPT TO:<c3po@receiver.com>"),
    ("reply", "250 OK"),
    ("command", "DATA"),
    ("reply", "354 go ahead"),
    ("content", '3 lines, 22 bytes, sha256:af1a81683d32c0bf, "Subject: hi"'),
    ("reply", "250 queued"),
    ("command", "QUIT"),
    ("reply", "221 bye"),
]
OPENSSL_SUITES = """openssl_conf = default_conf
[default_conf]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
Ciphersuites = {suite}
"""


def decrypted(pcap: Path, keylog: Path | None = None) -> Ladder:
    keys = KeyLog.from_files([keylog or pcap.with_suffix(".keylog")])
    return dissect(str(pcap), HOSTS, keylog=keys)


def inner(ladder: Ladder) -> list[tuple[str, str]]:
    return [(s.kind, s.text) for s in ladder.steps if s.get("tls")]


def handshake(ladder: Ladder):
    (step,) = [s for s in ladder.steps if s.kind == StepKind.TLS_HANDSHAKE]
    return step


def tshark_inside(pcap: Path, keylog: Path) -> list[str]:
    """tshark's commands and reply codes of the capture, decrypted with *keylog*."""
    fields = ["-T", "fields", "-e", "smtp.req.command", "-e", "smtp.response.code"]
    decrypt = ["-o", f"tls.keylog_file:{keylog}", "-d", "tcp.port==465,tls"]
    out = subprocess.run(
        ["tshark", "-r", str(pcap), *decrypt, "-Y", "smtp", *fields],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [field for line in out.splitlines() for field in line.split("\t") if field]


def ours(ladder: Ladder) -> list[str]:
    """Ours in tshark's terms: verbs on four letters, reply codes."""
    steps = [s for s in ladder.steps if s.kind in ("command", "reply")]
    return [s.get("verb")[:4] if s.kind == "command" else str(s.get("code")) for s in steps]


# --- the committed captures


@pytest.mark.parametrize("name", NAMES)
def test_a_crafted_tls_capture_gives_its_hand_written_ladder(name):
    steps, warnings = expected(name, CRAFTED)
    ladder = decrypted(CRAFTED / f"{name}.pcap")
    assert actual(ladder, [info for *_, info in steps]) == steps
    assert ladder.warnings == warnings


@pytest.mark.parametrize("name", NAMES)
def test_tshark_agrees_on_the_commands_and_replies_inside(name):
    pcap = CRAFTED / f"{name}.pcap"
    assert tshark_inside(pcap, pcap.with_suffix(".keylog")) == ours(decrypted(pcap))


@pytest.mark.parametrize("name", NAMES)
def test_the_handshake_step_cites_its_packets_and_the_inner_steps_come_after(name):
    ladder = decrypted(CRAFTED / f"{name}.pcap")
    step = handshake(ladder)
    assert len(step.evidence) >= 3  # ClientHello, the server's flight, the client's Finished
    after = [s for s in ladder.steps if s.get("tls")]
    assert min(min(s.evidence) for s in after) > min(step.evidence)
    assert all(s.index > step.index for s in after)
    assert ladder.coverage[1].complete


# --- fresh sessions, each suite


def fresh(tmp_path: Path, suite13: str = "", **tls) -> Path:
    """A new real session: TLS 1.3 suites are chosen by OpenSSL's configuration (Python's
    ssl has no call for them), so those are built in a child with OPENSSL_CONF set."""
    pcap = tmp_path / "fresh.pcap"
    if not suite13:
        return build.tls_capture(pcap, **tls)
    conf = tmp_path / "openssl.cnf"
    conf.write_text(OPENSSL_SUITES.format(suite=suite13))
    code = f"import runpy; b = runpy.run_path({str(CRAFTED / 'build.py')!r}); "
    code += f"b['tls_capture'](__import__('pathlib').Path({str(pcap)!r}))"
    env = {**os.environ, "OPENSSL_CONF": str(conf)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    return pcap


SUITES = {  # id -> (build options, version, cipher)
    "tls13-aes128": ({"suite13": "TLS_AES_128_GCM_SHA256"}, "TLSv1.3", "TLS_AES_128_GCM_SHA256"),
    "tls13-aes256": ({"suite13": "TLS_AES_256_GCM_SHA384"}, "TLSv1.3", "TLS_AES_256_GCM_SHA384"),
    "tls13-chacha": (
        {"suite13": "TLS_CHACHA20_POLY1305_SHA256"},
        "TLSv1.3",
        "TLS_CHACHA20_POLY1305_SHA256",
    ),
    "tls12-aes128": (
        {"tls12": True, "ciphers": "ECDHE-ECDSA-AES128-GCM-SHA256"},
        "TLSv1.2",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    ),
    "tls12-aes256": (
        {"tls12": True, "ciphers": "ECDHE-ECDSA-AES256-GCM-SHA384"},
        "TLSv1.2",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    ),
    "tls12-chacha": (
        {"tls12": True, "ciphers": "ECDHE-ECDSA-CHACHA20-POLY1305"},
        "TLSv1.2",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
}


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_each_supported_suite_is_decrypted_and_tshark_agrees(tmp_path, suite):
    options, version, cipher = SUITES[suite]
    pcap = fresh(tmp_path, **options)
    ladder = decrypted(pcap)
    step = handshake(ladder)
    assert (step.get("version"), step.get("cipher")) == (version, cipher)
    assert step.get("sni") == "mail.receiver.com"
    assert step.get("subject") == "CN=mail.receiver.com"
    assert inner(ladder) == INNER
    assert ladder.warnings == {}
    assert tshark_inside(pcap, pcap.with_suffix(".keylog")) == ours(ladder)


# --- what cannot be read


def test_without_a_key_log_tls_is_opaque_and_a_warning_says_so():
    """The records after the handshake stay opaque; the handshake itself is read in the
    clear (the ServerHello is plaintext in every version): version, cipher, SNI, and in
    TLS 1.3 no certificate (it is encrypted)."""
    ladder = dissect(str(CRAFTED / "starttls-tls13.pcap"), HOSTS)
    kinds = [s.kind for s in ladder.steps if s.kind in ("tls", "tls-handshake")]
    assert sorted(kinds) == ["tls", "tls", "tls-handshake"]
    assert not inner(ladder)
    warning = "TLS after STARTTLS on connection 1: no key log, the dialogue inside is not seen"
    assert ladder.warnings == {warning: 1}
    clear, seen = handshake(ladder), handshake(decrypted(CRAFTED / "starttls-tls13.pcap"))
    assert clear.get("decrypted") is False and seen.get("decrypted") is None
    for key in ("version", "cipher", "sni"):
        assert clear.get(key) == seen.get(key) is not None, key
    assert clear.get("subject") is None and seen.get("subject") is not None


def test_without_a_key_log_a_tls12_certificate_is_read_in_the_clear():
    """Before TLS 1.3 the server's Certificate precedes ChangeCipherSpec (RFC 5246 §7.3)."""
    pcap = CRAFTED / "starttls-tls12.pcap"
    clear, seen = handshake(dissect(str(pcap), HOSTS)), handshake(decrypted(pcap))
    assert clear.get("version") == "TLSv1.2" and clear.get("decrypted") is False
    keys = ("cipher", "sni", "subject", "issuer", "not_before", "not_after")
    assert [clear.get(k) for k in keys] == [seen.get(k) for k in keys]
    assert clear.get("subject") is not None


def test_a_key_log_without_the_sessions_secrets_names_the_client_random():
    ladder = decrypted(CRAFTED / "starttls-tls13.pcap", CRAFTED / "starttls-tls12.keylog")
    (warning,) = ladder.warnings
    assert "no key log entry CLIENT_HANDSHAKE_TRAFFIC_SECRET" in warning
    kinds = [s.kind for s in ladder.steps if s.kind in ("tls", "tls-handshake")]
    assert sorted(kinds) == ["tls", "tls", "tls-handshake"]
    assert handshake(ladder).get("decrypted") is False
    assert not inner(ladder)


def test_a_cbc_suite_stays_opaque_with_a_warning_naming_why(tmp_path):
    pcap = fresh(tmp_path, tls12=True, ciphers="ECDHE-ECDSA-AES128-SHA256")
    ladder = decrypted(pcap)
    (warning,) = ladder.warnings
    assert "TLSv1.2 with cipher suite 0xc023: not supported" in warning
    assert [s.kind for s in ladder.steps if s.kind == "tls"] == ["tls", "tls"]
    assert not inner(ladder)
    shake = handshake(ladder)  # what was negotiated is still shown, from the clear part
    assert (shake.get("version"), shake.get("cipher")) == ("TLSv1.2", "0xc023")
    assert shake.get("decrypted") is False and shake.get("subject") is not None


def test_a_damaged_record_is_a_warning_and_the_steps_before_it_stay(tmp_path):
    pcap = fresh(tmp_path, tls12=True)
    frames = pcap.read_bytes()
    # TLS 1.2 application data records start 0x17 0x03 0x03: the 5th is the client's RCPT
    records = [i for i in range(len(frames) - 3) if frames[i : i + 3] == b"\x17\x03\x03"]
    damaged = tmp_path / "damaged.pcap"
    data = bytearray(frames)
    data[records[4] + 12] ^= 0xFF  # inside the ciphertext of the 5th application record
    damaged.write_bytes(bytes(data))
    ladder = decrypted(damaged, pcap.with_suffix(".keylog"))
    (warning,) = ladder.warnings
    assert "fails authentication" in warning and warning.startswith("TLS on connection 1: ")
    assert inner(ladder) == INNER[:4]  # EHLO, 250, MAIL, 250: RCPT's record was damaged


def test_a_capture_cut_inside_tls_keeps_the_steps_before_the_cut(tmp_path):
    source = CRAFTED / "starttls-tls13.pcap"
    mail_reply = [s for s in decrypted(source).steps if s.get("tls")][3]
    cut = tmp_path / "cut.pcap"
    with open(cut, "wb") as f:
        writer = PcapWriter(f)
        for record in read(str(source)):
            if record.number <= max(mail_reply.evidence):
                writer.write(record.time, record.data, record.origlen)
    ladder = decrypted(cut, source.with_suffix(".keylog"))
    assert inner(ladder) == INNER[:4]
    assert ladder.warnings == {}


# --- key logs


BAD_LINES = {
    "client-random 00 11": "not a key log label: 'client-random'",
    "CLIENT_RANDOM " + "00" * 32: "expected LABEL CLIENT_RANDOM SECRET, got 2 fields",
    "CLIENT_RANDOM zz" + "00" * 31 + " " + "11" * 48: "the client random is not hex",
    "CLIENT_RANDOM " + "00" * 31 + " " + "11" * 48: "the client random has 31 octets, not 32",
    "CLIENT_RANDOM " + "00" * 32 + " " + "11" * 32: "a CLIENT_RANDOM secret of 32 octets",
    "CLIENT_TRAFFIC_SECRET_0 " + "00" * 32 + " 1": "the secret is not hex",
}


@pytest.mark.parametrize("line", sorted(BAD_LINES))
def test_a_bad_key_log_line_is_a_one_line_error_with_file_and_line(tmp_path, line):
    keylog = tmp_path / "keys.txt"
    keylog.write_text(f"# a comment\n\n{line}\n")
    with pytest.raises(HarnessError) as caught:
        KeyLog.from_files([keylog])
    assert str(caught.value) == f"{keylog}:3: {BAD_LINES[line]}"


def test_the_cli_gives_a_bad_key_log_line_exit_2_and_one_line(tmp_path):
    keylog = tmp_path / "keys.txt"
    keylog.write_text("CLIENT_RANDOM 00\n")
    pcap = CRAFTED / "starttls-tls13.pcap"
    for command in ("ladder", "check"):
        done = subprocess.run(
            [*CLI, command, str(pcap), "--keylog", str(keylog)], capture_output=True, text=True
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and f"{keylog}:1:" in done.stderr
        assert "Traceback" not in done.stderr


def test_the_cli_decrypts_with_keylog_and_marks_the_steps_in_tls():
    pcap = CRAFTED / "starttls-tls13.pcap"
    for fmt in ("text", "svg", "html", "mermaid"):
        done = subprocess.run(
            [
                *CLI,
                "ladder",
                str(pcap),
                "--keylog",
                str(pcap.with_suffix(".keylog")),
                "--format",
                fmt,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        shown = 2 if fmt == "html" else 1  # the HTML page holds the SVG and a table
        assert done.stdout.count("[in TLS] EHLO inside.sender.com") == shown, fmt
        assert "[in TLS] STARTTLS" not in done.stdout


def test_check_judges_the_dialogue_inside_tls():
    """With the key log the session's checks meet the transaction inside TLS (the delivery,
    passes); without it nothing inside is judged, and the checks about it say why (TLS not
    decrypted: no key log, not "did not happen"), while the handshake, read in the clear,
    still gives tls.version and tls.version-cipher; the warning says why."""
    pcap = CRAFTED / "starttls-tls12.pcap"
    keylog = str(pcap.with_suffix(".keylog"))
    seen = subprocess.run([*CLI, "check", str(pcap), "--keylog", keylog], capture_output=True)
    blind = subprocess.run([*CLI, "check", str(pcap)], capture_output=True)
    assert (seen.returncode, blind.returncode) == (0, 0)
    seen_text, blind_text = seen.stdout.decode(), blind.stdout.decode()
    assert "c3po@receiver.com: delivered (250 to <end-of-data>" in seen_text
    assert re.search(r"checks: [1-9]\d* pass", seen_text)
    assert "delivered" not in blind_text
    assert "no key log, the dialogue inside is not seen" in blind_text
    done = subprocess.run(
        [*CLI, "check", str(pcap), "--format", "jsonl"], capture_output=True, check=True
    )
    (session,) = [json.loads(line) for line in done.stdout.splitlines()[:1]]
    judged = {c["id"]: c for c in session["checks"]}
    for inside in ("tls.re-ehlo", "tls.no-starttls-after-tls", "tls.second-starttls-refused"):
        assert (judged[inside]["verdict"], judged[inside]["note"]) == (
            "n/a",
            "TLS not decrypted: no key log",
        ), inside
    assert judged["tls.version"]["verdict"] == "pass"
    assert (
        judged["tls.version-cipher"]["value"] == "TLSv1.2 TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"
    )
    assert judged["tls.version"]["evidence"] == judged["tls.version-cipher"]["evidence"] != []
    failed = [c["id"] for c in judged.values() if c["verdict"] in ("fail", "error")]
    assert not failed


# --- the Decryption Secrets Block


def test_a_pcapng_with_a_secrets_block_is_decrypted_with_no_option(tmp_path):
    """The run's capture (pcapng.rewrite, as runner._finish_capture calls it) carries the key
    log: our ladder and ``tshark -Y smtp`` read the dialogue inside with no option."""
    source = CRAFTED / "starttls-tls13.pcap"
    target = tmp_path / "capture.pcapng"
    secrets = source.with_suffix(".keylog").read_bytes()
    pcapng.rewrite(
        source, target, application="t", section_comments=(), names={}, comments={}, secrets=secrets
    )
    assert len(from_capture(target)) == 1
    done = subprocess.run(
        [*CLI, "ladder", str(target), "--format", "json"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert inner(Ladder.from_json(done.stdout)) == INNER
    out = subprocess.run(
        ["tshark", "-r", str(target), "-Y", "smtp", "-T", "fields", "-e", "smtp.req.command"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["EHLO", "STAR", "EHLO", "MAIL", "RCPT", "DATA", "QUIT"]


def test_no_secrets_write_no_secrets_block(tmp_path):
    target = tmp_path / "capture.pcapng"
    source = CRAFTED / "starttls-tls13.pcap"
    pcapng.rewrite(source, target, application="t", section_comments=(), names={}, comments={})
    assert len(from_capture(target)) == 0
    assert b"TLSK"[::-1] not in target.read_bytes()[:200]


# --- known answers and a key update


def test_hkdf_expand_label_gives_rfc_8448s_handshake_key_and_iv():
    """RFC 8448 §3, the server's handshake traffic secret and the key and IV from it."""
    secret = bytes.fromhex("b67b7d690cc16c4e75e54213cb2d37b4e9c912bcded9105d42befd59d391ad38")
    assert (
        hkdf_expand_label(secret, "key", 16, "sha256").hex() == "3fce516009c21727d0f2e4e86ee403bc"
    )
    assert hkdf_expand_label(secret, "iv", 12, "sha256").hex() == "5d313eb2671276ee13000b30"


def test_the_tls12_prf_gives_the_published_p_sha256_vector():
    """The P_SHA256 test vector posted to the IETF TLS list (secret, seed, "test label")."""
    out = prf(
        bytes.fromhex("9bbe436ba940f017b17652849a71db35"),
        b"test label",
        bytes.fromhex("a0ba9f936cda311827a6f796ffd5198c"),
        100,
        "sha256",
    )
    assert out.hex().startswith("e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61e")
    assert out.hex().endswith("5a5110fff70187347b66")


S_CLIENT = ["openssl", "s_client", "-tls1_3", "-crlf", "-servername", build.SERVER_NAME]


def _openssl_session(tmp_path: Path, lines: list[bytes]) -> tuple[Dialogue, Path]:
    """A TLS 1.3 session of ``openssl s_client`` (on loopback) with a Python server over
    memory BIOs that records each flight and answers each line 250 (221 to QUIT).  A line
    ``k`` is s_client's command to send a KeyUpdate (RFC 8446 §4.6.3); each line is typed
    only once the server has answered the one before, so s_client reads it alone.  Commands
    are in lower case: s_client takes a line starting with Q as its own command to quit."""
    creds = make_lab_pki(tmp_path / "pki", build.PKI_DATE).server(build.SERVER_NAME)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(creds.chain, creds.key)
    keylog = tmp_path / "openssl.keylog"
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = subprocess.Popen(
        [*S_CLIENT, "-connect", f"127.0.0.1:{port}", "-keylogfile", str(keylog)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    flights: Dialogue = []
    try:
        conn, _ = listener.accept()
        conn.settimeout(30)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_side=True)

        def exchange() -> bytes:
            """Send what the server has to send, then take one flight from the client."""
            if data := outgoing.read():
                flights.append(("s", data))
                conn.sendall(data)
            data = conn.recv(65536)
            flights.append(("c", data))
            incoming.write(data)
            return data

        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                exchange()
        for line in lines:
            client.stdin.write(line + b"\n")
            client.stdin.flush()
            if line == b"k":  # no reply: the next line waits for the KeyUpdate's record
                exchange()
                continue
            received = b""
            while not received.endswith(b"\n"):
                exchange()
                with contextlib.suppress(ssl.SSLWantReadError):
                    received += tls.read()
            tls.write(b"221 bye\r\n" if line == b"quit" else b"250 OK\r\n")
        if data := outgoing.read():
            flights.append(("s", data))
            conn.sendall(data)
        conn.close()
    finally:
        client.stdin.close()
        client.wait(timeout=30)
        listener.close()
    return flights, keylog


def test_a_key_update_moves_its_sender_to_the_next_secret(tmp_path):
    flights, keylog = _openssl_session(tmp_path, [b"noop", b"k", b"noop", b"quit"])
    cap = Capture()
    conn = Tcp(cap, SENDER, RECEIVER)
    conn.handshake()
    for side, data in [*build.PREAMBLE, *flights]:
        conn.send(side, data)
    pcap = cap.write(tmp_path / "key-update.pcap")
    ladder = decrypted(pcap, keylog)
    assert inner(ladder) == [
        ("command", "noop"),
        ("reply", "250 OK"),
        ("command", "noop"),
        ("reply", "250 OK"),
        ("command", "quit"),
        ("reply", "221 bye"),
    ]
    assert ladder.warnings == {}
    assert [f.upper() for f in tshark_inside(pcap, keylog)] == ours(ladder)


# --- damage and injection around TLS


def _capture(tmp_path: Path, plain: Dialogue, flights: Dialogue, lost: int = -1) -> Path:
    """*plain*, then the TLS *flights* (flight number *lost* sent but not captured)."""
    cap = Capture()
    conn = Tcp(cap, SENDER, RECEIVER)
    conn.handshake()
    for side, data in plain:
        conn.send(side, data)
    for n, (side, data) in enumerate(flights):
        if n == lost:
            conn.lose(side, data)
        else:
            conn.send(side, data)
    conn.fin("c")
    return cap.write(tmp_path / "capture.pcap")


def test_a_gap_inside_tls_ends_the_reading_with_a_warning(tmp_path):
    keylog = tmp_path / "keys.txt"
    flights = build.tls_flights(keylog, tls12=True)  # 1.2: one flight per line inside
    mail = len(flights) - len(build.INSIDE) + 2
    assert flights[mail][0] == "c"
    ladder = decrypted(_capture(tmp_path, build.PREAMBLE, flights, lost=mail), keylog)
    assert inner(ladder) == INNER[:2]  # EHLO and its 250: MAIL's record was not captured
    (warning,) = ladder.warnings
    assert "octets of the client's TLS bytes missing from the capture" in warning
    assert [s.kind for s in ladder.steps].count("gap") == 1


def test_plaintext_behind_the_220_is_an_anomaly_and_the_dialogue_inside_is_read(tmp_path):
    """The client-side injection probe (RFC 3207 §4.2): a reply sent behind the 220 in the
    same segment is reported, never read as a reply inside TLS."""
    keylog = tmp_path / "keys.txt"
    plain = [*build.PREAMBLE[:-1], ("s", b"220 2.0.0 go ahead\r\n250 injected\r\n")]
    ladder = decrypted(_capture(tmp_path, plain, build.tls_flights(keylog)), keylog)
    (anomaly,) = [s for s in ladder.steps if s.kind == "anomaly"]
    assert anomaly.get("anomaly") == "plaintext after STARTTLS" and not anomaly.get("tls")
    assert inner(ladder) == INNER
    assert ladder.warnings == {}


def test_commands_pipelined_behind_starttls_are_an_anomaly_not_commands_inside(tmp_path):
    """The server-side injection probe: STARTTLS\\r\\nRSET\\r\\n in one segment."""
    keylog = tmp_path / "keys.txt"
    plain = [*build.PREAMBLE[:3], ("c", b"STARTTLS\r\nRSET\r\n"), build.PREAMBLE[4]]
    ladder = decrypted(_capture(tmp_path, plain, build.tls_flights(keylog)), keylog)
    (anomaly,) = [s for s in ladder.steps if s.kind == "anomaly"]
    assert anomaly.get("anomaly") == "plaintext after STARTTLS"
    assert "RSET" not in [s.text for s in ladder.steps]
    assert inner(ladder) == INNER


@pytest.mark.parametrize("tls12", [False, True])
def test_damaged_records_never_raise(tmp_path, tls12):
    """Nothing a peer sends raises: each of 300 copies of a real session with a few bytes
    changed (seeded) is read to the end, at worst as one Problem."""
    keylog = tmp_path / "keys.txt"
    flights = build.tls_flights(keylog, tls12=tls12)
    keys = KeyLog.from_files([keylog])
    rng = random.Random(12)
    problems = 0
    for _ in range(300):
        session = TlsSession(keys)
        damaged = [(side, bytearray(data)) for side, data in flights]
        for _ in range(rng.randint(1, 3)):
            _, data = rng.choice(damaged)
            data[rng.randrange(len(data))] = rng.randrange(256)
        events = [e for side, data in damaged for e in session.feed("cs".index(side), data)]
        problems += sum(isinstance(e, Problem) for e in events) == 1
    assert problems > 200  # most changes are seen (some fall on bytes nobody checks)


def test_a_hello_retry_request_is_passed_over_and_the_next_server_hello_decides(tmp_path):
    """RFC 8446 §4.1.3: a server with one group (P-384) answers the client's X25519 key
    share with a HelloRetryRequest; the client says hello again, with the same random."""
    pcap = fresh(tmp_path, curve="secp384r1")
    assert HRR_RANDOM in pcap.read_bytes()
    ladder = decrypted(pcap)
    assert handshake(ladder).get("version") == "TLSv1.3"
    assert inner(ladder) == INNER
    assert ladder.warnings == {}
    assert tshark_inside(pcap, pcap.with_suffix(".keylog")) == ours(ladder)


def test_the_streamed_ladder_reads_inside_tls_too():
    pcap = CRAFTED / "implicit-tls13.pcap"
    keylog = str(pcap.with_suffix(".keylog"))
    done = subprocess.run(
        [*CLI, "ladder", str(pcap), "--keylog", keylog, "--format", "jsonl"],
        capture_output=True,
        text=True,
        check=True,
    )
    steps = [json.loads(line) for line in done.stdout.splitlines()]
    inside = [(s["kind"], s["text"]) for s in steps if s.get("detail", {}).get("tls")]
    assert inside == [("reply", "220 mail.receiver.com ESMTP"), *INNER]
