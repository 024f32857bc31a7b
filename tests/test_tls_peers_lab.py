"""The scripted peers' STARTTLS in real labs: the seed through TLS, the policies, the key
log and the injection probes, each a whole run (``scenario_run``).  Needs root."""

from __future__ import annotations

import json
import stat

import pytest

from harness.tls.pki import CertVariant

DELIVERED = ["c3po@receiver.com", "r2d2@receiver.com"]
ALL = ["aibo@receiver.com", *DELIVERED]
SEED_EXPECT = {"delivered": DELIVERED, "rejected": ["aibo@receiver.com"]}
REFUSED_FOR = {  # what OpenSSL names for each broken certificate
    CertVariant.WRONG_NAME: "Hostname mismatch",
    CertVariant.EXPIRED: "certificate has expired",
    CertVariant.SELF_SIGNED: "self-signed certificate",
    CertVariant.NO_INTERMEDIATE: "unable to get local issuer certificate",
}


def tls_seed(receiver: dict | None = None, sender: dict | None = None, expect=None) -> dict:
    """The seed with ``[receiver] tls = "offer"`` and an opportunistic EHLO sender."""
    return {
        "receiver": {"tls": "offer", **(receiver or {})},
        "sender": {"ehlo": True, "starttls": "opportunistic", **(sender or {})},
        "expect": SEED_EXPECT if expect is None else expect,
    }


def jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_seed_through_starttls_delivers_and_traces_the_inner_ehlo_name(scenario_run):
    result = scenario_run(tls_seed(sender={"ehlo_after_tls": "inside.sender.com"}))
    result.assert_ok()
    for rcpt in DELIVERED:
        (stored,) = (result.folder / "maildir" / rcpt / "new").iterdir()
        first = stored.read_bytes().split(b"\r\n", 1)[0]
        assert first.startswith(b"Received: from inside.sender.com ([192.0.2.10])")
    keylog = result.folder / "tls" / "keylog.txt"
    assert stat.S_IMODE(keylog.stat().st_mode) == 0o600
    labels = {line.split(" ", 1)[0] for line in keylog.read_text().splitlines()}
    assert {"CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0"} <= labels
    handshakes = json.loads((result.folder / "run.json").read_text())["tls"]
    assert [h["side"] for h in handshakes] == ["receiver", "sender"]
    assert all(h["version"].startswith("TLSv1.") and h["cipher"] for h in handshakes)
    hello = [e for e in result.receiver_log if e["kind"] == "hello-in-tls"]
    assert [(e["before"], e["after"]) for e in hello] == [("mail.sender.com", "inside.sender.com")]


@pytest.mark.parametrize("variant", list(CertVariant))
def test_verify_delivers_only_against_the_good_certificate(scenario_run, variant):
    good = variant is CertVariant.GOOD
    expect = SEED_EXPECT if good else {"deferred": ALL}
    result = scenario_run(
        tls_seed(
            receiver={"certificate": str(variant)}, sender={"starttls": "verify"}, expect=expect
        )
    )
    result.assert_ok()
    if not good:
        texts = {o.text for o in result.report.outcomes.values()}
        assert len(texts) == 1 and REFUSED_FOR[variant] in texts.pop()
        assert {o.stage for o in result.report.outcomes.values()} == {"STARTTLS"}


@pytest.mark.parametrize(
    ("policy", "expect"),
    [("opportunistic", SEED_EXPECT), ("required", {"deferred": ALL})],
)
def test_against_a_receiver_without_tls(scenario_run, policy, expect):
    result = scenario_run(
        tls_seed(receiver={"tls": "off"}, sender={"starttls": policy}, expect=expect)
    )
    result.assert_ok()
    sent = [line for e in result.report.transcript if e["kind"] == "sent" for line in e["lines"]]
    assert "STARTTLS" not in sent
    assert not (result.folder / "tls" / "keylog.txt").exists()  # no handshake, no secrets


@pytest.mark.parametrize("plaintext", ["discard", "answer"])
def test_rset_injected_behind_starttls(scenario_run, plaintext):
    result = scenario_run(
        tls_seed(
            receiver={"starttls_plaintext": plaintext},
            sender={"starttls_inject": "RSET\r\n"},
            expect={} if plaintext == "answer" else SEED_EXPECT,
        )
    )
    assert result.faults == []
    log = jsonl(result.folder / "receiver.jsonl")
    tls = next(i for i, e in enumerate(log) if e["kind"] == "tls")
    inside = [e["to"] for e in log[tls:] if e["kind"] == "reply"]
    assert [e["anomaly"] for e in log[:tls] if e["kind"] == "anomaly"] == [
        "plaintext after STARTTLS"
    ]
    if plaintext == "discard":
        result.assert_ok()
        assert "RSET" not in inside
    else:
        assert inside[0] == "RSET"
