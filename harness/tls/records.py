"""A sans-IO TLS record layer for captures: both directions' bytes in, handshake facts and
decrypted application data out, with the secrets of a key log (``harness.tls.keylog``).

The engine is our own, on the ``cryptography`` package, not tshark: it streams (records are
decrypted as the dissector reassembles them, memory bounded by one record and one handshake
message per direction), it keeps the dissector's evidence (each plaintext says the stream
offset of the record that carried it, so a step cites its packets), it needs no tshark at
run time (tshark stays the second opinion in the tests), and it costs one AEAD call per
record instead of a second pass over the file.

Rules this module keeps:

- Bytes in (``TlsSession.feed(direction, data)``, direction 0 the client, 1 the server),
  events out, no sockets, no clock.  Records (RFC 8446 §5.1, RFC 5246 §6.2) are cut from
  each direction's stream; handshake messages are reassembled across records.
- Facts: the ClientHello's random and SNI (RFC 6066 §3), the ServerHello's version (its
  supported_versions extension, RFC 8446 §4.2.1, over legacy_version) and cipher suite,
  the leaf certificate's subject, issuer and validity (``cryptography.x509``; ISO 8601 UTC).
  A HelloRetryRequest (RFC 8446 §4.1.3) is passed over: the next ServerHello decides.
- TLS 1.3 (TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256):
  keys and IVs by HKDF-Expand-Label from the logged traffic secrets (§7.1, §7.3), the
  per-record nonce (§5.3), the inner content type after the zero padding (§5.2); the
  handshake secrets until each side's Finished, the application secrets after it, and a
  KeyUpdate (§4.6.3) moves its sender to the next secret.  The middlebox-compatibility
  ChangeCipherSpec (Appendix D.4) is passed over.
- TLS 1.2 AEAD suites (ECDHE/DHE with AES-GCM, RFC 5288 / 5289; ChaCha20-Poly1305, RFC
  7905): the key block by the PRF from the logged master secret (RFC 5246 §5, §6.3),
  encryption from each side's ChangeCipherSpec on, GCM's explicit nonce, the additional
  data of §6.2.3.3.
- ``Established`` comes once both Finished are read (the handshake is over, ``decrypted``);
  application data comes as ``Plaintext`` with the offset in its direction's TLS bytes where
  its record ends.
- The handshake is read in the clear whatever the secrets: a session that will not be
  decrypted (no key log, or no entry for its client random; a version or suite outside the
  table, CBC and TLS 1.0/1.1 included) still gives its facts as ``Established`` with
  ``decrypted`` False, then its ``Problem``: at the ServerHello in TLS 1.3 (all after it is
  encrypted), at the first ChangeCipherSpec or alert before 1.3 (the certificate is in the
  clear before it, RFC 5246 §7.3).
- What cannot be read (the above; a record that fails authentication; a malformed message)
  is one ``Problem`` naming why; the session is then opaque in both directions for good.
  Nothing a peer sent raises.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from harness.tls.keylog import KeyLog, Label, Secrets

CLIENT, SERVER = 0, 1
SIDES = ("client", "server")
# record content types (RFC 8446 §5.1)
CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA, HEARTBEAT = 20, 21, 22, 23, 24
RECORD_TYPES = frozenset({CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA, HEARTBEAT})
# handshake message types (RFC 8446 §4)
CLIENT_HELLO, SERVER_HELLO, CERTIFICATE, FINISHED, KEY_UPDATE = 1, 2, 11, 20, 24
EXT_SERVER_NAME, EXT_SUPPORTED_VERSIONS = 0, 43
TLS12, TLS13 = 0x0303, 0x0304
VERSIONS = {
    0x0300: "SSLv3",
    0x0301: "TLSv1.0",
    0x0302: "TLSv1.1",
    TLS12: "TLSv1.2",
    TLS13: "TLSv1.3",
}
MAX_RECORD = (1 << 14) + 2048  # the largest TLSCiphertext fragment (RFC 5246 §6.2.3)
MAX_HANDSHAKE = 1 << 20  # a longer handshake message is taken as garbage
HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")
TAG = 16
ISO = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class Suite:
    name: str
    aead: Callable[[bytes], AESGCM | ChaCha20Poly1305]
    key_size: int
    hash: str  # hashlib name: the PRF's (1.2) or HKDF's (1.3)
    fixed_iv: int  # 1.2: the implicit part of the nonce (GCM 4, ChaCha20 12); 1.3: 12
    version: int = TLS12  # the version the suite belongs to

    @property
    def explicit_nonce(self) -> bool:
        return self.fixed_iv == 4


_GCM, _CHACHA = AESGCM, ChaCha20Poly1305
SUITES: dict[int, Suite] = {
    0x1301: Suite("TLS_AES_128_GCM_SHA256", _GCM, 16, "sha256", 12, TLS13),
    0x1302: Suite("TLS_AES_256_GCM_SHA384", _GCM, 32, "sha384", 12, TLS13),
    0x1303: Suite("TLS_CHACHA20_POLY1305_SHA256", _CHACHA, 32, "sha256", 12, TLS13),
    0x009E: Suite("TLS_DHE_RSA_WITH_AES_128_GCM_SHA256", _GCM, 16, "sha256", 4),
    0x009F: Suite("TLS_DHE_RSA_WITH_AES_256_GCM_SHA384", _GCM, 32, "sha384", 4),
    0xC02B: Suite("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", _GCM, 16, "sha256", 4),
    0xC02C: Suite("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", _GCM, 32, "sha384", 4),
    0xC02F: Suite("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", _GCM, 16, "sha256", 4),
    0xC030: Suite("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", _GCM, 32, "sha384", 4),
    0xCCA8: Suite("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", _CHACHA, 32, "sha256", 12),
    0xCCA9: Suite("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", _CHACHA, 32, "sha256", 12),
    0xCCAA: Suite("TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256", _CHACHA, 32, "sha256", 12),
}
_HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384}


@dataclass(frozen=True)
class Established:
    """The handshake is over; what it agreed and showed (None where it did not)."""

    version: str
    cipher: str
    sni: str | None
    subject: str | None
    issuer: str | None
    not_before: str | None
    not_after: str | None
    end: int  # the client's TLS offset where the record ending the handshake for it ends
    decrypted: bool = True  # False: read in the clear only, the records after it are not


@dataclass(frozen=True)
class Plaintext:
    direction: int
    data: bytes
    end: int  # offset in the direction's TLS bytes where the record carrying it ends


@dataclass(frozen=True)
class Problem:
    reason: str  # why the records are not read from here on


Event = Established | Plaintext | Problem


class _Malformed(Exception):
    """A handshake message or record that cannot be what it says (caught in ``feed``)."""


def hkdf_expand_label(secret: bytes, label: str, length: int, hash_name: str) -> bytes:
    """HKDF-Expand-Label with an empty context (RFC 8446 §7.1)."""
    full = b"tls13 " + label.encode()
    info = struct.pack("!HB", length, len(full)) + full + b"\0"
    return HKDFExpand(_HASHES[hash_name](), length, info).derive(secret)


def prf(secret: bytes, label: bytes, seed: bytes, length: int, hash_name: str) -> bytes:
    """The TLS 1.2 PRF, P_hash(secret, label + seed) (RFC 5246 §5)."""
    seed, out, a = label + seed, b"", label + seed
    while len(out) < length:
        a = hmac.digest(secret, a, hash_name)
        out += hmac.digest(secret, a + seed, hash_name)
    return out[:length]


@dataclass
class _Cipher:
    """One direction's record protection: an AEAD key, its IV and the sequence number."""

    suite: Suite
    key: bytes
    iv: bytes
    tls13: bool
    seq: int = 0
    aead: AESGCM | ChaCha20Poly1305 = field(init=False)

    def __post_init__(self) -> None:
        self.aead = self.suite.aead(self.key)

    @classmethod
    def tls13_from(cls, suite: Suite, secret: bytes) -> _Cipher:
        key = hkdf_expand_label(secret, "key", suite.key_size, suite.hash)
        return cls(suite, key, hkdf_expand_label(secret, "iv", 12, suite.hash), True)

    def decrypt(self, header: bytes, fragment: bytes) -> tuple[int, bytes]:
        """(content type, content) of one protected record; InvalidTag if it is not."""
        seq, self.seq = self.seq, self.seq + 1
        if self.tls13:
            inner = self.aead.decrypt(_xor(self.iv, seq), fragment, header).rstrip(b"\0")
            if not inner:
                raise _Malformed("a record with no content type")
            return inner[-1], inner[:-1]
        if self.suite.explicit_nonce:
            nonce, fragment = self.iv + fragment[:8], fragment[8:]
        else:
            nonce = _xor(self.iv, seq)
        size = len(fragment) - TAG
        if size < 0:
            raise _Malformed("a record shorter than its tag")
        aad = struct.pack("!Q", seq) + header[:3] + struct.pack("!H", size)
        return header[0], self.aead.decrypt(nonce, fragment, aad)


def _xor(iv: bytes, seq: int) -> bytes:
    return bytes(a ^ b for a, b in zip(iv, seq.to_bytes(len(iv), "big"), strict=True))


class _Reader:
    """Cursor over a message body; running past its end is ``_Malformed``."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _Malformed("a handshake message shorter than its fields")
        value = self.data[self.pos : self.pos + n]
        self.pos += n
        return value

    def int(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, n: int) -> bytes:
        return self.take(self.int(n))

    def extensions(self) -> dict[int, bytes]:
        if self.pos == len(self.data):
            return {}
        block, found = _Reader(self.vector(2)), {}
        while block.pos < len(block.data):
            kind = block.int(2)
            found[kind] = block.vector(2)
        return found


@dataclass
class _Side:
    buffer: bytearray = field(default_factory=bytearray)
    offset: int = 0  # TLS bytes of this direction cut into records so far
    messages: bytearray = field(default_factory=bytearray)  # handshake bytes not yet whole
    cipher: _Cipher | None = None
    pending: _Cipher | None = None  # 1.2: the cipher its ChangeCipherSpec turns on


class TlsSession:
    """One TLS connection seen from the wire (rules above)."""

    def __init__(self, keylog: KeyLog | None) -> None:
        self.keylog = keylog or KeyLog()  # None: the handshake is read in the clear only
        self.sides = (_Side(), _Side())
        self.failed: str | None = None
        self.established = False
        self._finished_by: set[int] = set()  # the sides whose Finished was read
        self.client_random = b""
        self.sni: str | None = None
        self.version = 0
        self.suite: Suite | None = None
        self.cipher = ""  # the suite's name (its code in hex when outside the table)
        self.secrets: Secrets = {}
        self.certificate: x509.Certificate | None = None
        self._traffic: dict[int, bytes] = {}  # 1.3: each direction's application secret
        self._unreadable: str | None = None  # why the records after the clear part are not read
        self._events: list[Event] = []

    def feed(self, direction: int, data: bytes) -> list[Event]:
        """The events the bytes complete; nothing once the session has failed."""
        if self.failed is not None:
            return []
        side = self.sides[direction]
        side.buffer += data
        while self.failed is None and len(side.buffer) >= 5:
            ctype, length = side.buffer[0], int.from_bytes(side.buffer[3:5], "big")
            if ctype not in RECORD_TYPES or length > MAX_RECORD:
                self.fail(f"{SIDES[direction]} record of type {ctype}, {length} octets: not TLS")
                break
            if len(side.buffer) < 5 + length:
                break
            header, fragment = bytes(side.buffer[:5]), bytes(side.buffer[5 : 5 + length])
            del side.buffer[: 5 + length]
            side.offset += 5 + length
            try:
                self._record(direction, ctype, header, fragment)
            except InvalidTag:
                self.fail(
                    f"{SIDES[direction]} record at TLS offset {side.offset - 5 - length} "
                    "fails authentication (damaged, or the wrong secret)"
                )
            except (_Malformed, ValueError) as exc:
                self.fail(f"{SIDES[direction]} record: {exc}")
        events, self._events = self._events, []
        return events

    def skip(self, direction: int, n: int) -> list[Event]:
        """*n* octets of *direction* missing from a capture: no record can be cut after
        them, so the session is opaque from here on (its ``Problem``)."""
        self.fail(f"{n} octets of the {SIDES[direction]}'s TLS bytes missing from the capture")
        events, self._events = self._events, []
        return events

    def fail(self, reason: str) -> None:
        """From here on the session is opaque; the reason is its one ``Problem``."""
        if self.failed is None:
            self.failed = reason
            self._events.append(Problem(reason))
            for side in self.sides:
                side.buffer.clear()

    def _record(self, d: int, ctype: int, header: bytes, fragment: bytes) -> None:
        side = self.sides[d]
        if self._unreadable is not None and ctype in (CHANGE_CIPHER_SPEC, ALERT):
            return self._clear_part_read()
        if ctype == CHANGE_CIPHER_SPEC:  # 1.3 (and before a ServerHello): compat only, §D.4
            if self.version == TLS12:
                if side.pending is None:  # no keys agreed: what follows cannot be read
                    return self.fail(f"{SIDES[d]} ChangeCipherSpec before any key")
                side.cipher, side.pending = side.pending, None
            return
        # 1.2 protects every record after ChangeCipherSpec, 1.3 those of type application data
        protected = self.version != TLS13 or ctype == APPLICATION_DATA
        if side.cipher is not None and protected:
            ctype, fragment = side.cipher.decrypt(header, fragment)
        elif ctype == APPLICATION_DATA:
            return self.fail(f"{SIDES[d]} application data before any key")
        if ctype == HANDSHAKE:
            self._handshake_bytes(d, fragment)
        elif ctype == APPLICATION_DATA and fragment:
            self._events.append(Plaintext(d, fragment, side.offset))

    def _handshake_bytes(self, d: int, data: bytes) -> None:
        messages = self.sides[d].messages
        messages += data
        while len(messages) >= 4:
            size = int.from_bytes(messages[1:4], "big")
            if size > MAX_HANDSHAKE:
                raise _Malformed(f"a handshake message of {size} octets")
            if len(messages) < 4 + size:
                return
            kind, body = messages[0], bytes(messages[4 : 4 + size])
            del messages[: 4 + size]
            self._message(d, kind, body)
            if self.failed:
                return

    def _message(self, d: int, kind: int, body: bytes) -> None:
        if d == CLIENT and kind == CLIENT_HELLO:
            self._client_hello(_Reader(body))
        elif d == SERVER and kind == SERVER_HELLO:
            self._server_hello(_Reader(body))
        elif d == SERVER and kind == CERTIFICATE and self.certificate is None:
            self._certificate(_Reader(body))
        elif kind == FINISHED:
            self._finished(d)
        elif kind == KEY_UPDATE and self.version == TLS13:
            self._key_update(d)

    def _client_hello(self, r: _Reader) -> None:
        r.take(2)
        self.client_random = r.take(32)
        r.vector(1), r.vector(2), r.vector(1)  # session id, cipher suites, compression
        name = r.extensions().get(EXT_SERVER_NAME)
        if name:
            names = _Reader(name)
            names.take(2)
            if names.int(1) == 0:  # host_name
                self.sni = names.vector(2).decode("ascii", "backslashreplace")

    def _server_hello(self, r: _Reader) -> None:
        legacy = r.int(2)
        server_random = r.take(32)
        if server_random == HRR_RANDOM:
            return  # a HelloRetryRequest: the ClientHello comes again, then the ServerHello
        r.vector(1)
        code = r.int(2)
        r.take(1)
        chosen = r.extensions().get(EXT_SUPPORTED_VERSIONS)
        self.version = int.from_bytes(chosen, "big") if chosen and len(chosen) == 2 else legacy
        self.suite = SUITES.get(code)
        self.cipher = self.suite.name if self.suite else f"{code:#06x}"
        version = self.version_name
        if self.suite is None or self.version not in (TLS12, TLS13):
            return self._not_decrypted(
                f"{version} with cipher suite {code:#06x}: not supported "
                "(only the AEAD suites of TLS 1.2 and 1.3 are decrypted)"
            )
        if self.suite.version != self.version:
            return self._not_decrypted(f"cipher suite {self.suite.name} with {version}")
        self.secrets = self.keylog.get(self.client_random)
        if self.version == TLS13:
            self._keys13()
        else:
            self._keys12(server_random)

    @property
    def version_name(self) -> str:
        return VERSIONS.get(self.version, f"{self.version:#06x}")

    def _not_decrypted(self, reason: str) -> None:
        """What follows will not be decrypted: the handshake is read on in the clear while
        it is (before 1.3), then its facts and the ``Problem``."""
        self._unreadable = reason
        if self.version == TLS13:
            self._clear_part_read()

    def _clear_part_read(self) -> None:
        self._events.append(self._established(decrypted=False))
        self.fail(self._unreadable or "")

    def _missing(self, labels: tuple[Label, ...]) -> bool:
        missing = [label.value for label in labels if label not in self.secrets]
        if missing:
            self._not_decrypted(
                f"no key log entry {', '.join(missing)} for client random "
                f"{self.client_random.hex()}"
            )
        return bool(missing)

    def _keys13(self) -> None:
        needed = (
            Label.CLIENT_HANDSHAKE,
            Label.SERVER_HANDSHAKE,
            Label.CLIENT_TRAFFIC,
            Label.SERVER_TRAFFIC,
        )
        if self._missing(needed):
            return
        suite = self.suite
        for d, label in ((CLIENT, Label.CLIENT_HANDSHAKE), (SERVER, Label.SERVER_HANDSHAKE)):
            self.sides[d].cipher = _Cipher.tls13_from(suite, self.secrets[label])
        self._traffic = {
            CLIENT: self.secrets[Label.CLIENT_TRAFFIC],
            SERVER: self.secrets[Label.SERVER_TRAFFIC],
        }

    def _keys12(self, server_random: bytes) -> None:
        if self._missing((Label.CLIENT_RANDOM,)):
            return
        suite = self.suite
        size, iv = suite.key_size, suite.fixed_iv
        block = prf(
            self.secrets[Label.CLIENT_RANDOM],
            b"key expansion",
            server_random + self.client_random,
            2 * (size + iv),
            suite.hash,
        )
        keys = (block[:size], block[size : 2 * size])
        ivs = (block[2 * size : 2 * size + iv], block[2 * size + iv :])
        for d in (CLIENT, SERVER):
            self.sides[d].pending = _Cipher(suite, keys[d], ivs[d], False)

    def _certificate(self, r: _Reader) -> None:
        if self.version == TLS13:
            r.vector(1)  # certificate_request_context
        chain = _Reader(r.vector(3))
        if chain.pos < len(chain.data):
            try:
                self.certificate = x509.load_der_x509_certificate(chain.vector(3))
            except ValueError:
                self.certificate = None  # shown as no certificate, the rest still read

    def _finished(self, d: int) -> None:
        """A Finished: the handshake is over once both sides sent theirs (RFC 5246 §7.3:
        in a full 1.2 handshake the server's comes last; RFC 8446 §2: in 1.3 the client's)."""
        if self.suite is None:
            raise _Malformed("a Finished before any ServerHello")
        if self.version == TLS13:
            self.sides[d].cipher = _Cipher.tls13_from(self.suite, self._traffic[d])
        self._finished_by.add(d)
        if len(self._finished_by) == 2 and not self.established:
            self.established = True
            self._events.append(self._established())

    def _key_update(self, d: int) -> None:
        suite = self.suite
        if suite is None:
            raise _Malformed("a KeyUpdate before any ServerHello")
        size = hashlib.new(suite.hash).digest_size
        secret = self._traffic[d] = hkdf_expand_label(
            self._traffic[d], "traffic upd", size, suite.hash
        )
        self.sides[d].cipher = _Cipher.tls13_from(suite, secret)

    def _established(self, decrypted: bool = True) -> Established:
        cert = self.certificate
        return Established(
            version=self.version_name,
            cipher=self.cipher,
            sni=self.sni,
            subject=None if cert is None else cert.subject.rfc4514_string(),
            issuer=None if cert is None else cert.issuer.rfc4514_string(),
            not_before=None if cert is None else _iso(cert.not_valid_before_utc),
            not_after=None if cert is None else _iso(cert.not_valid_after_utc),
            end=self.sides[CLIENT].offset,
            decrypted=decrypted,
        )


def _iso(when: datetime) -> str:
    return when.strftime(ISO)
