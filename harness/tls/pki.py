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
6. ``cryptography`` is loaded (``harness.tls.certs``, the keys and certificates) when a PKI
   is first made or loaded, not with this module: every process that imports the runner
   (``check``'s offline judges too) imports this one.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from harness import signals
from harness.errors import InternalError
from harness.grammar import Grammar, problem

if TYPE_CHECKING:
    from harness.tls.certs import Authority

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
class LabPki:
    """The run's CA (``ca``: the root's PEM, a verifying peer's trust anchor) and the
    server certificates issued from it, under ``folder``."""

    folder: Path
    now: datetime.datetime
    _root: Authority
    _intermediate: Authority
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
        certs = _certs()
        key = certs.new_key()
        subject = certs.name(_subject_name(name, variant))
        issuer = certs.self_issuer(subject, key) if variant is CertVariant.SELF_SIGNED else None
        leaf = certs.certificate(
            subject,
            key,
            issuer or self._intermediate,
            *_validity(self.now, variant),
            san=_subject_name(name, variant),
        )
        alone = variant in (CertVariant.SELF_SIGNED, CertVariant.NO_INTERMEDIATE)
        chain = [leaf] if alone else [leaf, self._intermediate.certificate]
        creds = _credentials(self.folder, name, variant)
        _write_private(creds.key, certs.key_pem(key))
        _write_public(creds.chain, b"".join(map(certs.pem, chain)))
        _write_public(creds.leaf, certs.pem(leaf))
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
    certs = _certs()
    root, intermediate = (
        certs.loaded((folder / key).read_bytes(), (folder / pem).read_bytes())
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
    certs = _certs()
    root = certs.authority("smtp-harness lab root CA (test key)", None, start, end)
    intermediate = certs.authority("smtp-harness lab intermediate CA (test key)", root, start, end)
    _write_private(folder / "ca.key", certs.key_pem(root.key))
    _write_private(folder / "intermediate.key", certs.key_pem(intermediate.key))
    _write_public(folder / "ca.pem", certs.pem(root.certificate))
    _write_public(folder / "intermediate.pem", certs.pem(intermediate.certificate))
    return LabPki(folder, now, root, intermediate)


def _certs() -> ModuleType:
    """``harness.tls.certs``, imported when a PKI is first made or loaded: it loads
    ``cryptography`` (10 MB resident), which every process that imports the runner (``check``
    through its offline judges) would pay without ever making a certificate."""
    return signals.imported("harness.tls.certs")


def _subject_name(name: str, variant: CertVariant) -> str:
    return WRONG_NAME if variant is CertVariant.WRONG_NAME else name


def _validity(
    now: datetime.datetime, variant: CertVariant
) -> tuple[datetime.datetime, datetime.datetime]:
    """(not before, not after): the run's hour and month, or a month that ended yesterday."""
    if variant is CertVariant.EXPIRED:
        return now - VALID_FOR - datetime.timedelta(days=1), now - datetime.timedelta(days=1)
    return now - _BEFORE, now + VALID_FOR


def _write_private(path: Path, data: bytes) -> None:
    """``data`` at ``path``, mode 0600 from the moment the file exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(data)


def _write_public(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.chmod(path, 0o644)
