"""Keys and certificates for the lab's PKI (``harness.tls.pki``), on ``cryptography``.

Rules kept here:

1. This module is the PKI's one user of ``cryptography``; ``harness.tls.pki`` imports it
   when a PKI is first made or loaded, so a process that only reads captures never loads
   ``cryptography`` for it.
2. Keys are ECDSA P-256 (``pki``'s rule 4); certificates are X.509 v3 signed with SHA-256:
   a CA's with basicConstraints CA and keyCertSign/cRLSign, a leaf's with digitalSignature,
   serverAuth and its one DNS name in subjectAltName (RFC 5280 §4.2.1; RFC 6125 §6.4.4).
3. PEM out (certificates; keys as unencrypted PKCS#8), PEM in (``loaded``): what
   ``pki`` writes to and reads from the run's folder.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Authority:
    """A CA: its name, its key and its certificate."""

    name: x509.Name
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate | None  # None while signing itself


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def authority(
    common_name: str,
    parent: Authority | None,
    start: datetime.datetime,
    end: datetime.datetime,
) -> Authority:
    """A fresh CA signed by ``parent`` (None: by itself), valid from ``start`` to ``end``."""
    key, subject = new_key(), name(common_name)
    issuer = parent or self_issuer(subject, key)
    return Authority(subject, key, certificate(subject, key, issuer, start, end, ca=True))


def self_issuer(subject: x509.Name, key: ec.EllipticCurvePrivateKey) -> Authority:
    """The issuer of a self-signed certificate: itself (its certificate is not needed to
    sign)."""
    return Authority(subject, key, None)


def loaded(key_pem: bytes, certificate_pem: bytes) -> Authority:
    """The CA whose key and certificate these PEM files hold."""
    cert = x509.load_pem_x509_certificate(certificate_pem)
    return Authority(cert.subject, serialization.load_pem_private_key(key_pem, None), cert)


def certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: Authority,
    start: datetime.datetime,
    end: datetime.datetime,
    *,
    ca: bool = False,
    san: str | None = None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), False
        )
    )
    if ca:
        usage = _key_usage(cert_sign=True)
        builder = builder.add_extension(usage, critical=True)
    else:
        builder = builder.add_extension(_key_usage(cert_sign=False), critical=True)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(san or "")]), critical=False
        )
    return builder.sign(issuer.key, hashes.SHA256())


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
