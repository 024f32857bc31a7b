"""Build the crafted TLS captures of this folder: ``python tests/crafted/tls/build.py``.

Each capture is a REAL TLS session (Python's ssl over memory BIOs, the lab PKI's
certificate for mail.receiver.com, the client's secrets written by ``keylog_filename``)
carrying an SMTP dialogue, its bytes wrapped into TCP segments by scapy (one segment per
flight), behind a plaintext STARTTLS preamble (RFC 3207) or on port 465 (implicit TLS, RFC
8314 §3).  ``NAME.pcap`` comes with ``NAME.keylog`` and the hand-written ``NAME.ladder``.
TLS is random, so a rebuild gives other bytes (and the same ladder, but for the content of
the handshake step's certificate validity, fixed by the PKI's date).
"""

from __future__ import annotations

import datetime
import ssl
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # tests/, for ladder_pcaps
sys.path.insert(0, str(HERE.parents[2]))  # the repository, for harness

from ladder_pcaps import RECEIVER, SENDER, Capture, Tcp  # noqa: E402

from harness.tls.pki import make_lab_pki  # noqa: E402

Dialogue = list[tuple[str, bytes]]  # ("c" client or "s" server, the bytes it sends)
PKI_DATE = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
SERVER_NAME = "mail.receiver.com"

PREAMBLE: Dialogue = [
    ("s", b"220 mail.receiver.com ESMTP\r\n"),
    ("c", b"EHLO mail.sender.com\r\n"),
    ("s", b"250-mail.receiver.com\r\n250 STARTTLS\r\n"),
    ("c", b"STARTTLS\r\n"),
    ("s", b"220 2.0.0 ready to start TLS\r\n"),
]
INSIDE: Dialogue = [
    ("c", b"EHLO inside.sender.com\r\n"),
    ("s", b"250 mail.receiver.com\r\n"),
    ("c", b"MAIL FROM:<luke@sender.com>\r\n"),
    ("s", b"250 OK\r\n"),
    ("c", b"RCPT TO:<c3po@receiver.com>\r\n"),
    ("s", b"250 OK\r\n"),
    ("c", b"DATA\r\n"),
    ("s", b"354 go ahead\r\n"),
    ("c", b"Subject: hi\r\n\r\nHello\r\n.\r\n"),
    ("s", b"250 queued\r\n"),
    ("c", b"QUIT\r\n"),
    ("s", b"221 bye\r\n"),
]
GREETING: Dialogue = [("s", b"220 mail.receiver.com ESMTP\r\n")]


class TlsPair:
    """A client and a server TLS object over memory BIOs; every flight each sends is kept
    as ("c"|"s", bytes)."""

    def __init__(
        self, folder: Path, keylog: Path, *, tls12: bool = False, ciphers: str = "", curve: str = ""
    ):
        creds = make_lab_pki(folder / "pki", PKI_DATE).server(SERVER_NAME)
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(creds.chain, creds.key)
        if curve:  # the server's one group: a client whose key share is another gets a HRR
            server_ctx.set_ecdh_curve(curve)
        client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client_ctx.check_hostname, client_ctx.verify_mode = False, ssl.CERT_NONE
        client_ctx.keylog_filename = str(keylog)
        if tls12:
            client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        if ciphers:
            client_ctx.set_ciphers(ciphers)
        self.bios = {side: (ssl.MemoryBIO(), ssl.MemoryBIO()) for side in "cs"}  # (in, out)
        self.ends = {
            "c": client_ctx.wrap_bio(*self.bios["c"], server_hostname=SERVER_NAME),
            "s": server_ctx.wrap_bio(*self.bios["s"], server_side=True),
        }
        self.flights: Dialogue = []

    def _pump(self, side: str) -> None:
        data = self.bios[side][1].read()
        if data:
            self.flights.append((side, data))
            self.bios["s" if side == "c" else "c"][0].write(data)

    def handshake(self) -> None:
        done = set()
        while len(done) < 2:
            for side in "cs":
                try:
                    self.ends[side].do_handshake()
                    done.add(side)
                except ssl.SSLWantReadError:
                    pass
                self._pump(side)

    def send(self, side: str, data: bytes) -> None:
        self.ends[side].write(data)
        self._pump(side)
        peer = self.ends["s" if side == "c" else "c"]
        received = b""
        while len(received) < len(data):
            try:
                received += peer.read()
            except ssl.SSLWantReadError:
                break
        self._pump("s" if side == "c" else "c")  # a TLS 1.3 server's session tickets


def tls_flights(keylog: Path, inside: Dialogue = INSIDE, **tls) -> Dialogue:
    """The flights of a real TLS session carrying *inside*; its secrets go to *keylog*."""
    with tempfile.TemporaryDirectory() as scratch:
        pair = TlsPair(Path(scratch), keylog, **tls)
        pair.handshake()
        for side, data in inside:
            pair.send(side, data)
    return pair.flights


def tls_capture(
    path: Path, *, port: int = 25, plain: Dialogue = PREAMBLE, inside: Dialogue = INSIDE, **tls
) -> Path:
    """A capture of *plain* in plaintext, then a real TLS session carrying *inside*; its
    key log is written beside it (``.keylog``)."""
    keylog = path.with_suffix(".keylog")
    keylog.unlink(missing_ok=True)
    cap = Capture()
    conn = Tcp(cap, SENDER, RECEIVER, port=port)
    conn.handshake()
    for side, data in [*plain, *tls_flights(keylog, inside, **tls)]:
        conn.send(side, data)
    conn.fin("c")
    conn.ack("s")
    conn.fin("s")
    conn.ack("c")
    return cap.write(path)


CAPTURES: dict[str, Callable[[Path], Path]] = {
    "starttls-tls13": lambda p: tls_capture(p),
    "starttls-tls12": lambda p: tls_capture(p, tls12=True),
    "implicit-tls13": lambda p: tls_capture(p, port=465, plain=[], inside=GREETING + INSIDE),
}


def build(folder: Path = HERE) -> list[Path]:
    return [make(folder / f"{name}.pcap") for name, make in CAPTURES.items()]


if __name__ == "__main__":
    for path in build():
        print(path)
