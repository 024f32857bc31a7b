"""The scripted peers speak STARTTLS (RFC 3207): real TLS over loopback TCP, the run's PKI.

DNS is the in-process table of test_smtp_peers; the SMTP and TLS traffic is real, on
127.0.0.1 only.  The lab runs are in test_tls_peers_lab.py.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from test_smtp_peers import RECIPIENTS, SEED, exchange, kinds, run

from harness.errors import HarnessError
from harness.scenario import scenario_from_data
from harness.smtp.receiver import Receiver, ReceiverConfig, ReplyRule
from harness.smtp.sender import SenderConfig
from harness.tls.pki import CertVariant, LabPki, lab_pki

SEED_OUTCOMES = {
    "aibo@receiver.com": "rejected",
    "c3po@receiver.com": "delivered",
    "r2d2@receiver.com": "delivered",
}
# what OpenSSL says of each broken certificate (harness.tls.pki rule 3)
REFUSED_FOR = {
    CertVariant.WRONG_NAME: "Hostname mismatch, certificate is not valid for 'mail.receiver.com'.",
    CertVariant.EXPIRED: "certificate has expired",
    CertVariant.SELF_SIGNED: "self-signed certificate",
    CertVariant.NO_INTERMEDIATE: "unable to get local issuer certificate",
}


@pytest.fixture
def pki(tmp_path: Path) -> LabPki:
    return lab_pki(tmp_path / "tls")


def offering(tmp_path: Path, pki: LabPki, variant: str = "good", **keys) -> ReceiverConfig:
    """The seed's receiver with ``tls = "offer"``, serving ``variant``."""
    return ReceiverConfig(
        maildir=tmp_path / "mail",
        log_path=tmp_path / "receiver.jsonl",
        tls=keys.pop("tls", "offer"),
        credentials=pki.server("mail.receiver.com", CertVariant(variant)),
        keylog=pki.folder / "keylog.txt",
        **keys,
    )


def sending(pki: LabPki, policy: str, **keys) -> SenderConfig:
    """The seed's sender with EHLO and the STARTTLS ``policy``."""
    return SenderConfig(
        recipients=RECIPIENTS,
        message=SEED,
        ehlo=True,
        starttls=policy,
        ca=pki.ca,
        keylog=pki.folder / "keylog.txt",
        **keys,
    )


def statuses(report) -> dict[str, str]:
    return {r: str(o.status) for r, o in report.outcomes.items()}


def sent(report) -> list[str]:
    return [line for e in kinds(report.transcript, "sent") for line in e["lines"]]


def after(log: list[dict], kind: str) -> list[dict]:
    """The entries of ``log`` after its first ``kind`` entry."""
    index = next(i for i, e in enumerate(log) if e["kind"] == kind)
    return log[index + 1 :]


# --- the seed through TLS -----------------------------------------------------------------
def test_the_seed_goes_through_tls_and_the_inner_ehlo_name_is_the_one_traced(tmp_path, pki):
    config = sending(pki, "opportunistic", ehlo_after_tls="inside.sender.com")
    report, rx = run(exchange(tmp_path, receiver=offering(tmp_path, pki), sender=config))
    assert statuses(report) == SEED_OUTCOMES
    assert sent(report)[:4] == [
        "EHLO mail.sender.com",
        "STARTTLS",
        "EHLO inside.sender.com",
        "VRFY aibo",
    ]
    ehlo_before, ehlo_inside = [e for e in kinds(report.transcript, "reply") if e["code"] == 250][
        :2
    ]
    assert "STARTTLS" in ehlo_before["lines"]
    # RFC 3207 §4.2: not offered again after the handshake
    assert ehlo_inside["lines"][0] == "mail.receiver.com Hello inside.sender.com"
    assert "STARTTLS" not in ehlo_inside["lines"]
    (tls,) = kinds(rx.log.entries, "tls")
    assert tls["version"].startswith("TLSv1.") and tls["cipher"]
    assert tls["ehlo_before"] == "mail.sender.com"
    hellos = kinds(rx.log.entries, "hello-in-tls")
    assert [(e["before"], e["after"]) for e in hellos] == [("mail.sender.com", "inside.sender.com")]
    assert sorted(m.recipient for m in rx.stored) == ["c3po@receiver.com", "r2d2@receiver.com"]
    for message in rx.stored:
        assert message.data == SEED  # the content as received, what the judge compares
        assert message.trace.startswith(b"Received: from inside.sender.com ([127.0.0.1])\r\n")
        assert b"with ESMTPS (TLSv1." in message.trace
        assert message.path.read_bytes() == message.trace + SEED


def test_the_sender_without_ehlo_after_tls_greets_with_its_helo_name_again(tmp_path, pki):
    report, _ = run(
        exchange(tmp_path, receiver=offering(tmp_path, pki), sender=sending(pki, "required"))
    )
    assert statuses(report) == SEED_OUTCOMES
    assert sent(report)[:3] == ["EHLO mail.sender.com", "STARTTLS", "EHLO mail.sender.com"]
    (tls,) = kinds(report.transcript, "tls")
    assert tls["sni"] == "mail.receiver.com"


# --- the receiver inside TLS: a new session (RFC 3207 §4.2) -------------------------------
async def _talk(config: ReceiverConfig, lines_in_tls: list[str]) -> tuple[list[str], list[str]]:
    """Greeting, EHLO and STARTTLS in plaintext, then ``lines_in_tls`` one by one inside
    TLS: the replies before TLS and inside, each as its last line."""
    async with Receiver(config) as rx:
        _, port = await rx.start("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        before = [await _reply(reader)]
        for line in ("EHLO client.example", "STARTTLS"):
            writer.write(line.encode() + b"\r\n")
            before.append(await _reply(reader))
        inside = []
        if before[-1].startswith("220"):
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            await writer.start_tls(context, server_hostname="mail.receiver.com")
            for line in lines_in_tls:
                writer.write(line.encode() + b"\r\n")
                inside.append(await _reply(reader))
        writer.close()
        await rx.idle()
    assert rx.internal_faults == []
    return before, inside


async def _reply(reader: asyncio.StreamReader) -> str:
    """A whole reply, its lines joined by "|"."""
    lines = [(await reader.readline()).decode().rstrip("\r\n")]
    while lines[-1][3:4] == "-":
        lines.append((await reader.readline()).decode().rstrip("\r\n"))
    return "|".join(lines)


def test_inside_tls_the_receiver_forgets_the_ehlo_and_refuses_a_second_starttls(tmp_path, pki):
    before, inside = run(
        _talk(offering(tmp_path, pki), ["MAIL FROM:<luke@sender.com>", "EHLO c", "STARTTLS"])
    )
    assert before[1].endswith("|250 STARTTLS") and before[2].startswith("220 ")
    mail, ehlo, starttls = inside
    assert mail.startswith("503 ")  # no EHLO yet in this session
    assert ehlo.startswith("250-mail.receiver.com Hello c|") and "STARTTLS" not in ehlo
    assert starttls == "503 5.5.1 TLS already active"


def test_without_tls_offer_starttls_stays_502_and_unlisted(tmp_path, pki):
    before, inside = run(_talk(offering(tmp_path, pki, tls="off"), []))
    assert "STARTTLS" not in before[1]
    assert before[2] == "502 5.5.1 STARTTLS not available" and inside == []


# --- the sender's policies ----------------------------------------------------------------
@pytest.mark.parametrize("variant", list(CertVariant))
def test_verify_takes_only_the_good_certificate(tmp_path, pki, variant):
    receiver = offering(tmp_path, pki, variant)
    report, rx = run(exchange(tmp_path, receiver=receiver, sender=sending(pki, "verify")))
    if variant is CertVariant.GOOD:
        assert statuses(report) == SEED_OUTCOMES
        return
    assert statuses(report) == dict.fromkeys(RECIPIENTS, "deferred")
    for outcome in report.outcomes.values():
        assert outcome.stage == "STARTTLS"
        assert outcome.text == f"TLS with mail.receiver.com failed: {REFUSED_FOR[variant]}"
    assert sent(report) == ["EHLO mail.sender.com", "STARTTLS"]  # no QUIT: TLS is broken
    assert kinds(rx.log.entries, "tls-failed") and rx.stored == []


@pytest.mark.parametrize("variant", [CertVariant.EXPIRED, CertVariant.SELF_SIGNED])
@pytest.mark.parametrize("policy", ["opportunistic", "required"])
def test_the_other_policies_take_any_certificate(tmp_path, pki, variant, policy):
    receiver = offering(tmp_path, pki, variant)
    report, _ = run(exchange(tmp_path, receiver=receiver, sender=sending(pki, policy)))
    assert statuses(report) == SEED_OUTCOMES


@pytest.mark.parametrize(
    ("policy", "outcomes"),
    [
        ("opportunistic", SEED_OUTCOMES),
        ("required", dict.fromkeys(RECIPIENTS, "deferred")),
        ("verify", dict.fromkeys(RECIPIENTS, "deferred")),
    ],
)
def test_starttls_not_offered(tmp_path, pki, policy, outcomes):
    receiver = offering(tmp_path, pki, tls="off")
    report, _ = run(exchange(tmp_path, receiver=receiver, sender=sending(pki, policy)))
    assert statuses(report) == outcomes
    assert "STARTTLS" not in sent(report)
    if policy == "opportunistic":
        assert [e["why"] for e in kinds(report.transcript, "plaintext")] == [
            "mail.receiver.com does not offer STARTTLS"
        ]
        return
    for outcome in report.outcomes.values():
        assert (outcome.stage, outcome.code) == ("STARTTLS", None)
        assert outcome.text == f"mail.receiver.com does not offer STARTTLS (starttls = {policy})"
    assert sent(report) == ["EHLO mail.sender.com", "QUIT"]


@pytest.mark.parametrize(
    ("policy", "outcomes"),
    [("opportunistic", SEED_OUTCOMES), ("required", dict.fromkeys(RECIPIENTS, "deferred"))],
)
def test_a_454_to_starttls(tmp_path, pki, policy, outcomes):
    refusing = [ReplyRule(on="STARTTLS", code=454, text="4.7.0 TLS not available")]
    receiver = offering(tmp_path, pki, rules=refusing)
    report, rx = run(exchange(tmp_path, receiver=receiver, sender=sending(pki, policy)))
    assert statuses(report) == outcomes
    assert kinds(rx.log.entries, "tls") == []
    if policy == "required":
        assert {(o.stage, o.code) for o in report.outcomes.values()} == {("STARTTLS", 454)}
        assert sent(report) == ["EHLO mail.sender.com", "STARTTLS", "QUIT"]


# --- the injection probes (RFC 3207 §4.2) -------------------------------------------------
@pytest.mark.parametrize("plaintext", ["discard", "answer"])
def test_a_command_pipelined_behind_starttls_is_answered_only_by_the_vulnerable_receiver(
    tmp_path, pki, plaintext
):
    receiver = offering(tmp_path, pki, starttls_plaintext=plaintext)
    sender = sending(pki, "opportunistic", starttls_inject=b"RSET\r\n")
    report, rx = run(exchange(tmp_path, receiver=receiver, sender=sender))
    assert kinds(report.transcript, "sent")[1]["lines"] == ["STARTTLS", "RSET"]  # one write
    log = rx.log.entries
    (dropped,) = kinds(log, "anomaly")
    assert dropped["anomaly"] == "plaintext after STARTTLS"
    answered = [e["line"] for e in kinds(after(log, "tls"), "command")]
    if plaintext == "discard":
        assert answered[0] == "EHLO mail.sender.com" and "RSET" not in answered
        assert statuses(report) == SEED_OUTCOMES
    else:
        assert answered[:2] == ["RSET", "EHLO mail.sender.com"]
        assert kinds(log, "plaintext-answered")[0]["data"] == "RSET\r\n"
        assert kinds(after(log, "tls"), "reply")[0]["to"] == "RSET"


@pytest.mark.parametrize("plaintext", ["discard", "keep"])
def test_a_reply_behind_the_220_is_taken_only_by_the_vulnerable_sender(tmp_path, pki, plaintext):
    receiver = offering(tmp_path, pki, starttls_inject=b"250 injected\r\n")
    sender = sending(pki, "opportunistic", starttls_plaintext=plaintext)
    report, rx = run(exchange(tmp_path, receiver=receiver, sender=sender))
    (reply,) = [e for e in kinds(rx.log.entries, "reply") if e["to"] == "STARTTLS"]
    assert reply["lines"] == ["220 2.0.0 Ready to start TLS", "250 injected"]  # one write
    inner_ehlo = kinds(after(report.transcript, "tls"), "reply")[0]
    if plaintext == "discard":
        assert [e["anomaly"] for e in kinds(report.transcript, "anomaly")] == [
            "plaintext after STARTTLS"
        ]
        assert inner_ehlo["lines"][0] == "mail.receiver.com Hello mail.sender.com"
        assert statuses(report) == SEED_OUTCOMES
    else:
        assert inner_ehlo["lines"] == ["injected"]
        assert kinds(report.transcript, "plaintext-kept")[0]["data"] == "250 injected\r\n"


# --- the scenario keys --------------------------------------------------------------------
def _scenario(data: dict):
    return scenario_from_data(data, Path(__file__))


def test_the_scenario_keys_reach_the_peers() -> None:
    scenario = _scenario(
        {
            "receiver": {
                "tls": "offer",
                "certificate": "expired",
                "starttls_inject": "250 x\r\n",
                "starttls_plaintext": "answer",
            },
            "sender": {
                "ehlo": True,
                "starttls": "verify",
                "ehlo_after_tls": "inside.sender.com",
                "starttls_inject": "RSET\r\n",
                "starttls_plaintext": "keep",
            },
        }
    )
    r, s = scenario.receiver, scenario.sender
    assert (r.tls, r.certificate, r.starttls_inject, r.starttls_plaintext) == (
        "offer",
        "expired",
        b"250 x\r\n",
        "answer",
    )
    assert (s.starttls, s.ehlo_after_tls, s.starttls_inject, s.starttls_plaintext) == (
        "verify",
        "inside.sender.com",
        b"RSET\r\n",
        "keep",
    )


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (
            {"sender": {"starttls": "opportunistic"}},
            'sender.starttls: "opportunistic" needs EHLO (STARTTLS is offered in the EHLO '
            "reply, RFC 3207 §4): set sender.ehlo = true",
        ),
        (
            {"sender": {"ehlo_after_tls": "inside.sender.com"}},
            'sender.ehlo_after_tls: never acts: sender.starttls is "never"',
        ),
        (
            {"sender": {"starttls_plaintext": "keep"}},
            'sender.starttls_plaintext: never acts: sender.starttls is "never"',
        ),
        (
            {"receiver": {"starttls_inject": "250 x\r\n"}},
            'receiver.starttls_inject: never acts: receiver.tls is "off"',
        ),
        (
            {"receiver": {"starttls_plaintext": "answer"}},
            'receiver.starttls_plaintext: never acts: receiver.tls is "off"',
        ),
    ],
)
def test_a_starttls_key_that_cannot_act_is_a_one_line_error(data, error) -> None:
    with pytest.raises(HarnessError) as raised:
        _scenario(data)
    assert str(raised.value) == f"{Path(__file__)}: {error}"


def test_half_close_is_not_tried_inside_tls(tmp_path, pki):
    """Found in review: ``write_eof`` on a TLS stream raises (asyncio: "SSL doesn't support
    half-closes"), a fault of ours; the QUIT goes out plainly inside TLS."""
    config = sending(pki, "required", half_close=True)
    report, _ = run(exchange(tmp_path, receiver=offering(tmp_path, pki), sender=config))
    assert statuses(report) == SEED_OUTCOMES
    assert [e["kind"] for e in report.transcript[-3:]] == ["reply", "eof", "close"]


def test_a_script_step_at_the_inner_ehlo_sends_a_second_starttls_which_is_refused(tmp_path, pki):
    """``ehlo_after_tls`` is an EHLO argument a script step can name (scenario.py)."""
    scenario = _scenario(
        {
            "sender": {
                "ehlo": True,
                "starttls": "required",
                "ehlo_after_tls": "inside.sender.com",
                "script": [
                    {"at": "EHLO", "argument": "inside.sender.com", "position": "after",
                     "send": "STARTTLS"},
                ],
            }
        }
    )  # fmt: skip
    config = sending(
        pki, "required", ehlo_after_tls="inside.sender.com", script=scenario.sender.script
    )
    report, _ = run(exchange(tmp_path, receiver=offering(tmp_path, pki), sender=config))
    assert statuses(report) == SEED_OUTCOMES
    assert sent(report)[:4] == [
        "EHLO mail.sender.com",
        "STARTTLS",
        "EHLO inside.sender.com",
        "STARTTLS",
    ]
    replies = kinds(after(report.transcript, "tls"), "reply")
    assert (replies[1]["code"], replies[1]["lines"]) == (503, ["5.5.1 TLS already active"])


def test_starttls_given_in_extensions_is_listed_inside_tls_too(tmp_path, pki):
    """A receiver built to fail the RFC 3207 §4.2 check: ``extensions`` are sent as given."""
    extensions = ("PIPELINING", "STARTTLS")
    before, inside = run(_talk(offering(tmp_path, pki, extensions=extensions), ["EHLO c"]))
    assert before[1].endswith("|250-PIPELINING|250 STARTTLS")
    assert inside == ["250-mail.receiver.com Hello c|250-PIPELINING|250 STARTTLS"]


def test_swaks_verifies_the_receiver_and_delivers_inside_tls(tmp_path, pki):
    """Another TLS stack (swaks: Perl's Net::SSLeay) takes our receiver's handshake, with
    the run's CA and the host's name checked."""

    async def swaks() -> tuple[int, str, Receiver]:
        async with Receiver(offering(tmp_path, pki)) as rx:
            _, port = await rx.start("127.0.0.1", 0)
            process = await asyncio.create_subprocess_exec(
                *("swaks", "--server", f"127.0.0.1:{port}", "--ehlo", "swaks.example"),
                *("--to", "c3po@receiver.com", "--from", "luke@sender.com", "--tls"),
                *("--tls-verify", "--tls-ca-path", str(pki.ca), "--tls-sni", "mail.receiver.com"),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await process.communicate()
            await rx.idle()
        return process.returncode, out.decode(), rx

    code, said, rx = run(swaks())
    assert code == 0, said
    assert "=== TLS started with cipher TLSv1." in said
    assert rx.internal_faults == []
    (stored,) = rx.stored
    assert stored.trace.startswith(b"Received: from swaks.example ([127.0.0.1])\r\n")


# --- handshakes that fail: the peer's doing, never a fault of ours -------------------------
@pytest.mark.parametrize(
    ("after_220", "timeout", "error"),
    [
        (b"EHLO still.plain\r\n", 30.0, "SSLError: [SSL: WRONG_VERSION_NUMBER]"),
        (b"", 0.5, "ConnectionAbortedError: SSL handshake is taking longer than 0.5 seconds"),
    ],
    ids=["plaintext instead of a ClientHello", "silence"],
)
def test_a_client_that_does_not_shake_hands_ends_its_session_only(
    tmp_path, pki, after_220, timeout, error
):
    """Found in review (silence): asyncio does not report a connection lost mid-handshake
    to the protocol, so the session never ended and ``Receiver.idle`` waited forever."""

    async def client() -> Receiver:
        rx = Receiver(offering(tmp_path, pki, timeout=timeout))
        _, port = await rx.start("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await _reply(reader)
        writer.write(b"EHLO c\r\nSTARTTLS\r\n")
        await _reply(reader)
        assert (await _reply(reader)).startswith("220 ")
        writer.write(after_220)
        assert await reader.read() == b""  # the receiver closed
        writer.close()
        await asyncio.wait_for(rx.idle(), 10)  # a session that never ends fails here
        await rx.stop()
        return rx

    rx = run(client())
    assert rx.internal_faults == []
    (failed,) = kinds(rx.log.entries, "tls-failed")
    assert failed["error"].startswith(error)
    assert rx.log.entries[-1]["kind"] == "close"


def test_a_server_that_answers_220_but_no_handshake_defers(tmp_path, pki):
    """STARTTLS listed and answered 220 by a reply rule with tls = "off": the server never
    answers the ClientHello; the handshake times out."""
    receiver = offering(
        tmp_path,
        pki,
        tls="off",
        extensions=("STARTTLS",),
        rules=[ReplyRule(on="STARTTLS", code=220, text="2.0.0 go ahead")],
    )
    sender = sending(pki, "opportunistic", timeout=0.5)
    report, rx = run(exchange(tmp_path, receiver=receiver, sender=sender))
    assert statuses(report) == dict.fromkeys(RECIPIENTS, "deferred")
    assert {o.stage for o in report.outcomes.values()} == {"STARTTLS"}
    assert kinds(report.transcript, "tls-failed")
    assert kinds(rx.log.entries, "tls-failed")[0]["error"].startswith("no TLS offered")


def test_a_receiver_stopped_mid_handshake_ends_the_session_as_cut_short(tmp_path, pki):
    """Found in review: stopping cancels the handshake, and asyncio then never reports the
    connection lost: ``Receiver.stop`` waited forever."""

    async def stopped() -> Receiver:
        rx = Receiver(offering(tmp_path, pki))
        _, port = await rx.start("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await _reply(reader)
        writer.write(b"EHLO c\r\nSTARTTLS\r\n")
        await _reply(reader)
        await _reply(reader)  # the 220: the receiver now waits for a ClientHello
        await asyncio.wait_for(rx.stop(), 10)  # a session that never ends fails here
        writer.close()
        return rx

    rx = run(stopped())
    (fault,) = rx.internal_faults
    assert fault.summary.startswith("session cut short: the receiver stopped")
    assert rx.log.entries[-1]["kind"] == "close"
