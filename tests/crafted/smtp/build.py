"""Build the crafted SMTP captures of this folder: ``python tests/crafted/smtp/build.py``.

Each capture holds one defect class of the dissector's SMTP layer (issue 10); its expected
ladder, ``NAME.ladder`` beside it, was written by hand from the dialogue below, not by the
dissector.  The frames are scapy's with fixed addresses, ports, sequence numbers and times,
so a rebuild gives the same bytes (tests/test_crafted_smtp.py checks it).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # tests/, for ladder_pcaps

from ladder_pcaps import RECEIVER, SENDER, Capture, Tcp  # noqa: E402

Dialogue = list[tuple[str, bytes]]  # ("c" client or "s" server, the bytes it sends)

MESSAGE = b"Subject: hi\r\n\r\nHello\r\n.\r\n"  # content, then the end of data

TRANSACTION: Dialogue = [
    ("c", b"MAIL FROM:<luke@sender.com>\r\n"),
    ("s", b"250 OK\r\n"),
    ("c", b"RCPT TO:<c3po@receiver.com>\r\n"),
    ("s", b"250 OK\r\n"),
    ("c", b"DATA\r\n"),
    ("s", b"354 go ahead\r\n"),
    ("c", MESSAGE),
    ("s", b"250 queued\r\n"),
]
QUIT: Dialogue = [("c", b"QUIT\r\n"), ("s", b"221 bye\r\n")]

MIDSESSION: Dialogue = [  # the capture starts after the greeting: no handshake, no 220
    ("c", b"EHLO mail.sender.com\r\n"),
    ("s", b"250 mail.receiver.com\r\n"),
    *TRANSACTION,
    *QUIT,
]

GREETING_NO_CRLF: Dialogue = [  # the greeting has no line ending: it runs into EHLO's 250
    ("s", b"220 mail.receiver.com ESMTP"),
    ("c", b"EHLO mail.sender.com\r\n"),
    ("s", b"250 mail.receiver.com\r\n"),
    *TRANSACTION,
    *QUIT,
]

AUTH: Dialogue = [  # RFC 4954 §4: LOGIN cancelled, LOGIN refused, PLAIN accepted
    ("s", b"220 mail.receiver.com ESMTP\r\n"),
    ("c", b"EHLO mail.sender.com\r\n"),
    ("s", b"250-mail.receiver.com\r\n250 AUTH LOGIN PLAIN\r\n"),
    ("c", b"AUTH LOGIN\r\n"),
    ("s", b"334 VXNlcm5hbWU6\r\n"),
    ("c", b"*\r\n"),
    ("s", b"501 5.7.0 cancelled\r\n"),
    ("c", b"AUTH LOGIN\r\n"),
    ("s", b"334 VXNlcm5hbWU6\r\n"),
    ("c", b"bHVrZQ==\r\n"),
    ("s", b"334 UGFzc3dvcmQ6\r\n"),
    ("c", b"d3Jvbmc=\r\n"),
    ("s", b"535 5.7.8 authentication failed\r\n"),
    ("c", b"AUTH PLAIN\r\n"),
    ("s", b"334 \r\n"),
    ("c", b"AGx1a2UAZm9yY2U=\r\n"),
    ("s", b"235 2.7.0 authenticated\r\n"),
    *TRANSACTION,
    *QUIT,
]

ONE_SIDED: Dialogue = [  # only the client's direction was captured; two messages
    ("s", b"220 mail.receiver.com ESMTP\r\n"),
    ("c", b"EHLO mail.sender.com\r\n"),
    ("s", b"250 mail.receiver.com\r\n"),
    *TRANSACTION,
    *TRANSACTION,
    *QUIT,
]

BDAT_CHUNK = b"Subject: hi\r\n\r\nHello\r\n"
ONE_SIDED_BDAT: Dialogue = [  # RFC 3030, only the client's direction captured
    ("s", b"220 mail.receiver.com ESMTP\r\n"),
    ("c", b"EHLO mail.sender.com\r\n"),
    ("s", b"250-mail.receiver.com\r\n250 CHUNKING\r\n"),
    ("c", b"MAIL FROM:<luke@sender.com>\r\n"),
    ("s", b"250 OK\r\n"),
    ("c", b"RCPT TO:<c3po@receiver.com>\r\n"),
    ("s", b"250 OK\r\n"),
    ("c", b"BDAT %d LAST\r\n" % len(BDAT_CHUNK) + BDAT_CHUNK),
    ("s", b"250 queued\r\n"),
    *QUIT,
]


class _ClientOnly(Tcp):
    """A connection whose server-to-client packets the capture missed: the client's
    packets still acknowledge the server's bytes."""

    def _send(self, side: str, flags: str, data: bytes = b"", seq: int | None = None) -> None:
        if side == "c":
            super()._send(side, flags, data, seq)


def _capture(path: Path, dialogue: Dialogue, *, tcp: type[Tcp] = Tcp, handshake: bool = True):
    cap = Capture()
    conn = tcp(cap, SENDER, RECEIVER)
    if handshake:
        conn.handshake()
    for side, data in dialogue:
        conn.send(side, data)
    conn.fin("s")
    conn.ack("c")
    conn.fin("c")
    conn.ack("s")
    return cap.write(path)


CAPTURES: dict[str, Callable[[Path], Path]] = {
    "d1-midsession": lambda p: _capture(p, MIDSESSION, handshake=False),
    "d1-greeting-no-crlf": lambda p: _capture(p, GREETING_NO_CRLF),
    "d7-auth": lambda p: _capture(p, AUTH),
    "one-sided": lambda p: _capture(p, ONE_SIDED, tcp=_ClientOnly),
    "one-sided-bdat": lambda p: _capture(p, ONE_SIDED_BDAT, tcp=_ClientOnly),
}


def build(folder: Path = HERE) -> list[Path]:
    return [make(folder / f"{name}.pcap") for name, make in CAPTURES.items()]


if __name__ == "__main__":
    for path in build():
        print(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)
