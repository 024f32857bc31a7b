"""The lab's PKI: a certificate authority made for one run, and server certificates from it.

Rules kept here:

1. Every key is made fresh for the run, in the run's folder (``<run>/tls/``), written with
   mode 0600 before a byte of it is; nothing is read from or written to the machine's
   trust stores.  These are test keys: they protect nothing, and the README says so.
2. The hierarchy is the one real servers have: a root CA (the trust anchor a verifying
   peer is given, ``LabPki.ca``), an intermediate CA, and leaf certificates for the lab's
   MTA names (a DNS name in subjectAltName, RFC 6125 §6.4.4; no CN matching).  A served
   certificate file is the chain as a server sends it: the leaf, then the intermediate.
3. The variants a verifying client must refuse each break exactly one thing
   (``CertVariant``): ``wrong-name`` names another host, ``expired`` ended before the run,
   ``self-signed`` is its own issuer, ``no-intermediate`` is served without the
   intermediate (the leaf alone does not chain to the root).  ``good`` breaks nothing.
4. Keys are ECDSA P-256: every TLS stack of the lab (OpenSSL 3, GnuTLS, Python's ssl)
   takes them, and making one costs a millisecond where RSA-2048 costs a hundred.
5. One PKI per run: ``lab_pki(folder)`` makes it the first time and loads it from the
   folder after that, so both peers of a run (and a later look at the run) share one root.
   A leaf is issued once per (name, variant) and run, on demand; asking again returns the
   same files.  Names are validated by the scenario before they reach here; a name that
   is not a DNS name is our fault (``InternalError``).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from harness.errors import InternalError
from harness.grammar import Grammar, problem

VALID_FOR = datetime.timedelta(days=30)
_BEFORE = datetime.timedelta(hours=1)  # valid from an hour before the run: clocks differ
WRONG_NAME = "not-this-host.example"  # RFC 2606: a name that is nobody's


class CertVariant(StrEnum):
    """What a server certificate gets wrong (rule 3)."""

    GOOD = "good"
    WRONG_NAME = "wrong-name"
    EXPIRED = "expired"
    SELF_SIGNED = "self-signed"
    NO_INTERMEDIATE = "no-intermediate"


@dataclass(frozen=True)
class ServerCredentials:
    """What a TLS server is configured with: the chain it serves and its private key."""

    name: str
    variant: CertVariant
    chain: Path  # PEM: the leaf, then the intermediate (none for no-intermediate)
    key: Path  # PEM, PKCS#8, unencrypted, mode 0600
    leaf: Path  # PEM: the leaf alone


@dataclass
class _Authority:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate | None  # None while signing itself


@dataclass
class LabPki:
    """The run's CA (``ca``: the root's PEM, a verifying peer's trust anchor) and the
    server certificates issued from it, under ``folder``."""

    folder: Path
    now: datetime.datetime
    _root: _Authority
    _intermediate: _Authority
    _issued: dict[tuple[str, CertVariant], ServerCredentials] = field(default_factory=dict)

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    def server(self, name: str, variant: CertVariant = CertVariant.GOOD) -> ServerCredentials:
        """The credentials for a server called ``name``, broken as ``variant`` says."""
        variant = CertVariant(variant)
        if problem(Grammar.DOMAIN, name.rstrip(".")) is not None:  # the scenario's grammar
            raise InternalError(f"lab PKI: {name!r} is not a DNS name")
        if (name, variant) not in self._issued:
            self._issued[name, variant] = self._issued_before(name, variant) or self._issue(
                name.rstrip("."), variant
            )
        return self._issued[name, variant]

    def _issued_before(self, name: str, variant: CertVariant) -> ServerCredentials | None:
        creds = _credentials(self.folder, name.rstrip("."), variant)
        return creds if all(p.exists() for p in (creds.chain, creds.key, creds.leaf)) else None

    def _issue(self, name: str, variant: CertVariant) -> ServerCredentials:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _subject_name(name, variant))])
        issuer = _self_issuer(subject, key) if variant is CertVariant.SELF_SIGNED else None
        leaf = _certificate(
            subject,
            key,
            issuer or self._intermediate,
            *_validity(self.now, variant),
            san=_subject_name(name, variant),
        )
        alone = variant in (CertVariant.SELF_SIGNED, CertVariant.NO_INTERMEDIATE)
        chain = [leaf] if alone else [leaf, self._intermediate.certificate]
        creds = _credentials(self.folder, name, variant)
        _write_private(creds.key, _key_pem(key))
        _write_public(creds.chain, b"".join(map(_pem, chain)))
        _write_public(creds.leaf, _pem(leaf))
        return creds


def _credentials(folder: Path, name: str, variant: CertVariant) -> ServerCredentials:
    stem = f"{name}.{variant.value}"
    return ServerCredentials(
        name,
        variant,
        chain=folder / f"{stem}.crt",
        key=folder / f"{stem}.key",
        leaf=folder / f"{stem}.leaf.crt",
    )


def lab_pki(folder: Path) -> LabPki:
    """The run's PKI in ``folder``: loaded when an earlier call made it, else made (rule 5)."""
    if not (folder / "intermediate.key").exists():
        return make_lab_pki(folder)
    root, intermediate = (
        _Authority(
            x509.load_pem_x509_certificate((folder / pem).read_bytes()).subject,
            serialization.load_pem_private_key((folder / key).read_bytes(), None),
            x509.load_pem_x509_certificate((folder / pem).read_bytes()),
        )
        for key, pem in (("ca.key", "ca.pem"), ("intermediate.key", "intermediate.pem"))
    )
    return LabPki(folder, root.certificate.not_valid_before_utc + _BEFORE, root, intermediate)


def make_lab_pki(folder: Path, now: datetime.datetime | None = None) -> LabPki:
    """A fresh root and intermediate CA in ``folder`` (made, mode 0700), the root's
    certificate at ``folder/ca.pem``."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    now = now or datetime.datetime.now(datetime.UTC)
    start, end = now - _BEFORE, now + VALID_FOR
    root = _authority("smtp-harness lab root CA (test key)", None, start, end)
    intermediate = _authority("smtp-harness lab intermediate CA (test key)", root, start, end)
    _write_private(folder / "ca.key", _key_pem(root.key))
    _write_private(folder / "intermediate.key", _key_pem(intermediate.key))
    _write_public(folder / "ca.pem", _pem(root.certificate))
    _write_public(folder / "intermediate.pem", _pem(intermediate.certificate))
    return LabPki(folder, now, root, intermediate)


def _authority(
    common_name: str,
    parent: _Authority | None,
    start: datetime.datetime,
    end: datetime.datetime,
) -> _Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    issuer = parent or _self_issuer(name, key)
    return _Authority(name, key, _certificate(name, key, issuer, start, end, ca=True))


def _self_issuer(name: x509.Name, key: ec.EllipticCurvePrivateKey) -> _Authority:
    """The issuer of a self-signed certificate: itself (its certificate is not needed to
    sign)."""
    return _Authority(name, key, None)


def _certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: _Authority,
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


def _subject_name(name: str, variant: CertVariant) -> str:
    return WRONG_NAME if variant is CertVariant.WRONG_NAME else name


def _validity(
    now: datetime.datetime, variant: CertVariant
) -> tuple[datetime.datetime, datetime.datetime]:
    """(not before, not after): the run's hour and month, or a month that ended yesterday."""
    if variant is CertVariant.EXPIRED:
        return now - VALID_FOR - datetime.timedelta(days=1), now - datetime.timedelta(days=1)
    return now - _BEFORE, now + VALID_FOR


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes) -> None:
    """``data`` at ``path``, mode 0600 from the moment the file exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(data)


def _write_public(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.chmod(path, 0o644)
