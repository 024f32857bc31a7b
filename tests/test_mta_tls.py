"""Each real MTA with TLS in both roles, in a real lab (root, namespaces, real MTAs).

Rules kept here:
- Server role: a client in the lab's sender host (Python's smtplib and ssl, its socket made
  in that namespace) delivers through STARTTLS to the MTA with ``tls = "offer"``, verifying
  the certificate served against the run's CA and the MX host name: the certificate it was
  served is the run's (subject and issuer read from it), and the message is stored.  With
  ``tls = "off"`` STARTTLS is not in the EHLO reply.
- Client role: two real MTAs in one lab, for the test only: each MTA as sender delivers to
  Exim as receiver (``tls = "offer"``), whose log says whether TLS was used and which
  certificate it served.  ``verify`` against the good certificate delivers in TLS; against
  a certificate naming another host it defers; ``opportunistic`` against ``tls = "off"``
  delivers in plaintext.
- Nothing is mocked or skipped: a missing MTA fails.  Each folder is a 0755 one under /tmp
  (``open_folder``: Exim and OpenSMTPD deliver as users of their own).
"""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from harness.dns import DnsServer
from harness.errors import HarnessError
from harness.lab import Lab
from harness.lab.netns import SocketFactory
from harness.mta.base import MtaAdapter, QueuedRecipient, Site, adapters
from harness.runner import lab_dns
from harness.scenario import load_scenario, scenario_from_data
from harness.tls.pki import LabPki, lab_pki

pytestmark = pytest.mark.lab

MTAS = ("postfix", "exim", "opensmtpd", "sendmail")
SEED = load_scenario(None)
RECEIVER, MX = "192.0.2.25", "mail.receiver.com"
MESSAGE = b"From: luke@sender.com\r\nTo: c3po@receiver.com\r\nSubject: tls\r\n\r\nover TLS\r\n"
TIMEOUT_S = 20.0


class LabSmtp(smtplib.SMTP):
    """smtplib with its socket made in a lab host."""

    def __init__(self, socket_factory: SocketFactory) -> None:
        self._factory = socket_factory
        super().__init__(local_hostname="mail.sender.com", timeout=TIMEOUT_S)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = self._factory(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect((host, port))
        return sock


def receiver(name: str, lab: Lab, folder: Path, pki: LabPki, **knobs: str) -> MtaAdapter:
    site = Site(
        lab, "receiver", folder / f"receiver-{name}", MX, "receiver.com", ("c3po", "r2d2"),
        extra=knobs, pki=pki,
    )  # fmt: skip
    return adapters()[name](site, "receiver")


def sender(name: str, lab: Lab, folder: Path, pki: LabPki, **knobs: str) -> MtaAdapter:
    site = Site(
        lab, "sender", folder / f"sender-{name}", "mail.sender.com", "sender.com", ("luke",),
        extra=knobs, pki=pki,
    )  # fmt: skip
    return adapters()[name](site, "sender")


def verifying_context(pki: LabPki, keylog: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.check_hostname = True
    if keylog is not None:
        context.keylog_filename = str(keylog)
    return context


TRAFFIC_SECRETS = (
    "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
    "SERVER_HANDSHAKE_TRAFFIC_SECRET",
    "CLIENT_TRAFFIC_SECRET_0",
    "SERVER_TRAFFIC_SECRET_0",
)


def traffic_secrets(keylog: Path) -> set[tuple[str, ...]]:
    """The TLS 1.3 traffic secrets of an NSS key log: (label, client random, secret)."""
    lines = (tuple(line.split()) for line in keylog.read_text().splitlines())
    return {line for line in lines if len(line) == 3 and line[0] in TRAFFIC_SECRETS}


def wait_for(mta: MtaAdapter, user: str, count: int = 1) -> list[bytes]:
    deadline = time.monotonic() + TIMEOUT_S
    while len(found := mta.mailbox(user)) < count:
        assert time.monotonic() < deadline, f"{mta.name}: nothing stored: {mta.last_log_line()}"
        time.sleep(0.05)
    return found


def wait_idle(mta: MtaAdapter) -> None:
    deadline = time.monotonic() + mta.delivery_timeout_s
    while not mta.idle():
        assert time.monotonic() < deadline, f"{mta.name} still busy: {mta.last_log_line()}"
        time.sleep(0.05)


# --- the MTA as the server ------------------------------------------------------------------
SERVERS = ("postfix", "exim", "sendmail")  # OpenSMTPD refuses tls = "offer" (below)


@pytest.mark.parametrize("name", SERVERS)
def test_mta_offers_starttls_with_the_runs_certificate_and_stores_the_message(
    name: str, lab: Lab, dns: DnsServer, open_folder: Path
) -> None:
    pki = lab_pki(open_folder / "tls")
    good = pki.server(MX)
    ours = open_folder / "client-keylog.txt"
    with receiver(name, lab, open_folder, pki, tls="offer") as mta:
        client = LabSmtp(lab.socket_factory("sender"))
        try:
            client.connect(RECEIVER, 25)
            client.ehlo()
            assert client.has_extn("starttls"), client.ehlo_resp
            client._host = MX  # the name the certificate must carry (smtplib's SNI too)
            code, _ = client.starttls(context=verifying_context(pki, ours))
            assert code == 220
            served = x509.load_der_x509_certificate(client.sock.getpeercert(binary_form=True))
            client.ehlo()
            assert not client.has_extn("starttls")  # RFC 3207 §4.2: not again inside TLS
            refused = client.sendmail("luke@sender.com", ["c3po@receiver.com"], MESSAGE)
            client.quit()
        finally:
            client.close()
        assert refused == {}
        stored = wait_for(mta, "c3po")
        assert mta.tls_policy()["tls"] == "offer"
    leaf = x509.load_pem_x509_certificate(good.leaf.read_bytes())
    assert served == leaf
    assert served.subject.rfc4514_string() == f"CN={MX}"
    assert served.issuer.rfc4514_string() == "CN=smtp-harness lab intermediate CA (test key)"
    assert stored[0].replace(b"\r\n", b"\n").endswith(b"\nover TLS\n")
    if name == "exim":  # GnuTLS's own key log (rule 10 of harness/mta/exim.py)
        theirs = pki.folder / "exim-keylog.txt"
        assert theirs.stat().st_mode & 0o777 == 0o600
        assert len(traffic_secrets(ours)) == 4
        assert traffic_secrets(theirs) == traffic_secrets(ours)


REFUSED = {"opensmtpd": "cannot sign in its privsep process"}  # measured: OpenSSL 3


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_mta_refuses_to_offer_tls_it_cannot_offer(
    name: str, lab: Lab, dns: DnsServer, open_folder: Path
) -> None:
    """At scenario load, and at start (defence in depth): never a receiver configured to
    offer STARTTLS that offers none."""
    knobs = {"tls": "offer", "certificate": "good"}
    with pytest.raises(HarnessError, match=REFUSED[name]):
        adapters()[name].accepts("receiver", MX, "receiver.com", ("c3po",), knobs)
    mta = receiver(name, lab, open_folder, lab_pki(open_folder / "tls"), **knobs)
    with pytest.raises(HarnessError, match=REFUSED[name]):
        mta.start()
    mta.stop()


def test_opensmtpd_refuses_never_only_against_a_receiver_offering_starttls() -> None:
    opensmtpd = adapters()["opensmtpd"]
    names = ("mail.sender.com", "sender.com", ("luke",))
    opensmtpd.accepts("sender", *names, {"starttls": "never"}, peer_offers_tls=False)
    with pytest.raises(HarnessError, match="cannot turn STARTTLS off"):
        opensmtpd.accepts("sender", *names, {"starttls": "never"}, peer_offers_tls=True)


@pytest.mark.parametrize("name", SERVERS)
def test_mta_serves_the_leaf_alone_when_the_certificate_lacks_its_intermediate(
    name: str, lab: Lab, dns: DnsServer, open_folder: Path
) -> None:
    """The variant is the MTA's too: nothing completes the chain behind the run's back."""
    pki = lab_pki(open_folder / "tls")
    with receiver(name, lab, open_folder, pki, tls="offer", certificate="no-intermediate"):
        client = LabSmtp(lab.socket_factory("sender"))
        try:
            client.connect(RECEIVER, 25)
            client.ehlo()
            client._host = MX
            with pytest.raises(ssl.SSLCertVerificationError, match="local issuer"):
                client.starttls(context=verifying_context(pki))
        finally:
            client.close()


@pytest.mark.parametrize("name", MTAS)
def test_mta_with_tls_off_does_not_offer_starttls(
    name: str, lab: Lab, dns: DnsServer, open_folder: Path
) -> None:
    pki = lab_pki(open_folder / "tls")
    with receiver(name, lab, open_folder, pki, tls="off"):
        client = LabSmtp(lab.socket_factory("sender"))
        try:
            client.connect(RECEIVER, 25)
            code, _ = client.ehlo()
            assert code == 250
            assert not client.has_extn("starttls"), client.ehlo_resp
            client.quit()
        finally:
            client.close()


# --- the MTA as the client: each sender to Exim as receiver ---------------------------------
@dataclass
class Delivery:
    """One message from an MTA sender to Exim as receiver, both stopped."""

    mta: MtaAdapter
    exim: MtaAdapter
    stored: list[bytes]  # what Exim stored for c3po
    queued: list[QueuedRecipient]  # the sender's queue, read before it stopped

    def arrival(self) -> str:
        """The one ``<=`` line of Exim's main log (the message's arrival, with ``X=``
        naming the TLS cipher when there was TLS)."""
        assert len(self.stored) == 1, self.mta.last_log_line()
        log = self.exim.log_path.read_text()
        lines = [line for line in log.splitlines() if " <= " in line]
        assert len(lines) == 1, log
        return lines[0]

    def assert_deferred(self) -> None:
        assert self.stored == []
        queued = [q.recipient for q in self.queued]
        assert queued == ["c3po@receiver.com"], self.mta.last_log_line()


def deliver(name: str, lab: Lab, folder: Path, starttls: str, **receiver_knobs: str) -> Delivery:
    """``name`` as sender with ``starttls`` delivers the message to Exim as receiver."""
    pki = lab_pki(folder / "tls")
    exim = receiver("exim", lab, folder, pki, **receiver_knobs)
    mta = sender(name, lab, folder, pki, starttls=starttls)
    folder.mkdir(mode=0o755, exist_ok=True)
    with exim, mta:
        mta.submit("luke@sender.com", ["c3po@receiver.com"], MESSAGE)
        wait_idle(mta)
        wait_idle(exim)
        return Delivery(mta, exim, exim.mailbox("c3po"), mta.queue())


SENDERS = ("postfix", "exim", "opensmtpd", "sendmail")
IN_TLS = " X=TLS1.3:"  # Exim's arrival line: the TLS session's cipher


@pytest.mark.parametrize("name", SENDERS)
def test_mta_sender_verifying_delivers_in_tls_to_the_good_certificate(
    name: str, lab: Lab, dns: DnsServer, open_folder: Path
) -> None:
    done = deliver(name, lab, open_folder, "verify", tls="offer")
    assert IN_TLS in done.arrival()
    assert b"with esmtps" in done.stored[0]
    assert done.mta.tls_policy()["starttls"] == "verify"
    assert (open_folder / "tls" / "exim-keylog.txt").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("name", SENDERS)
def test_mta_sender_verifying_defers_against_a_certificate_for_another_name(
    name: str, lab: Lab, dns: DnsServer, open_folder: Path
) -> None:
    deliver(
        name, lab, open_folder, "verify", tls="offer", certificate="wrong-name"
    ).assert_deferred()


@pytest.mark.parametrize("name", SENDERS)
def test_mta_sender_opportunistic_delivers_in_plaintext_when_tls_is_not_offered(
    name: str, lab: Lab, dns: DnsServer, open_folder: Path
) -> None:
    done = deliver(name, lab, open_folder, "opportunistic", tls="off")
    assert " X=" not in done.arrival()
    assert re.search(rb"with esmtp\s", done.stored[0])


@pytest.mark.parametrize("name", SENDERS)
def test_mta_sender_requiring_tls_takes_any_certificate_and_defers_without_starttls(
    name: str, lab: Lab, dns: DnsServer, open_folder: Path, lab_factory: Callable[[], Lab]
) -> None:
    done = deliver(name, lab, open_folder, "required", tls="offer", certificate="self-signed")
    assert IN_TLS in done.arrival()
    other = lab_factory()
    with lab_dns(other, SEED):
        deliver(name, other, open_folder / "off", "required", tls="off").assert_deferred()


@pytest.mark.parametrize("name", [n for n in SENDERS if n != "opensmtpd"])  # it cannot
def test_mta_sender_never_delivers_in_plaintext_to_a_receiver_offering_starttls(
    name: str, lab: Lab, dns: DnsServer, open_folder: Path
) -> None:
    assert " X=" not in deliver(name, lab, open_folder, "never", tls="offer").arrival()


# --- scenario load and run.json -------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "why"),
    [
        ({"receiver": {"mta": "opensmtpd", "tls": "offer"}}, "cannot sign in its privsep process"),
        (
            {"sender": {"mta": "opensmtpd", "starttls": "never"}, "receiver": {"tls": "offer"}},
            "cannot turn STARTTLS off",
        ),
    ],
)
def test_a_tls_policy_an_mta_cannot_keep_is_refused_at_scenario_load(data: dict, why: str) -> None:
    with pytest.raises(HarnessError, match=why) as refused:
        scenario_from_data(data, Path(__file__))
    assert "\n" not in str(refused.value)


def test_run_json_records_the_mta_tls_policy_in_force(scenario_run: Callable) -> None:
    result = scenario_run({"sender": {"mta": "postfix", "starttls": "opportunistic"}})
    result.assert_ok()  # the scripted receiver offers no STARTTLS here: plaintext
    assert result.mta["tls"] == {
        "starttls": "opportunistic",
        "starttls means": "smtp_tls_security_level = may",
    }
    assert (result.folder / "tls" / "ca.pem").is_file()
