"""The lab PKI (harness/tls/pki.py): a real TLS handshake (Python's ssl over memory BIOs)
accepts the good certificate and refuses each variant for the reason it breaks."""

from __future__ import annotations

import ssl
import stat

import pytest

from harness.errors import InternalError
from harness.tls.pki import CertVariant, lab_pki, make_lab_pki

NAME = "mail.receiver.com"
REFUSED_BECAUSE = {
    CertVariant.WRONG_NAME: "Hostname mismatch",
    CertVariant.EXPIRED: "certificate has expired",
    CertVariant.SELF_SIGNED: "self-signed certificate",
    CertVariant.NO_INTERMEDIATE: "unable to get local issuer certificate",
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_lab_pki(tmp_path_factory.mktemp("run") / "tls")


def handshake(pki, variant: CertVariant) -> str:
    """The client's verdict on a handshake with a server serving ``variant``: "ok" or the
    verification error OpenSSL gives."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    creds = pki.server(NAME, variant)
    server_ctx.load_cert_chain(creds.chain, creds.key)
    client_ctx = ssl.create_default_context(cafile=pki.ca)
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=NAME)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side, outbox, peer_in in ((client, c_out, s_in), (server, s_out, c_in)):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLCertVerificationError as exc:
                return exc.verify_message
            peer_in.write(outbox.read())
        if client.version() and server.version():
            return "ok"
    raise AssertionError("handshake did not finish")


def test_the_good_certificate_verifies_against_the_lab_ca(pki):
    assert handshake(pki, CertVariant.GOOD) == "ok"


@pytest.mark.parametrize("variant", list(REFUSED_BECAUSE))
def test_each_variant_is_refused_for_the_one_thing_it_breaks(pki, variant):
    assert REFUSED_BECAUSE[variant] in handshake(pki, variant)


def test_private_keys_are_mode_0600_and_leaves_are_issued_once(pki):
    creds = pki.server(NAME)
    assert stat.S_IMODE(creds.key.stat().st_mode) == 0o600
    assert stat.S_IMODE((pki.folder / "ca.key").stat().st_mode) == 0o600
    assert pki.server(NAME) is creds
    assert creds.chain.read_bytes().count(b"BEGIN CERTIFICATE") == 2
    assert pki.server(NAME, "no-intermediate").chain.read_bytes().count(b"BEGIN CERT") == 1


def test_a_second_look_at_the_run_loads_the_same_root_and_leaves(pki):
    again = lab_pki(pki.folder)
    assert again.ca.read_bytes() == pki.ca.read_bytes()
    assert again.server(NAME).chain.read_bytes() == pki.server(NAME).chain.read_bytes()
    assert handshake(again, CertVariant.GOOD) == "ok"
    fresh = again.server("mx2.receiver.com")  # issued by the loaded intermediate
    assert fresh.chain.read_bytes().count(b"BEGIN CERTIFICATE") == 2


@pytest.mark.parametrize("name", ["a" * 24 + "-", "a" * 64 + ".example", "mail..example", ""])
def test_a_name_outside_the_scenario_grammar_is_our_fault(pki, name):
    """Names reach the PKI validated (RFC 1123 §2.1, the scenario's grammar); one that is
    not is the harness's bug, said at once (the old pattern took 2 s on the first)."""
    with pytest.raises(InternalError, match="is not a DNS name"):
        pki.server(name)
