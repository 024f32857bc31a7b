"""SMTP: the sans-IO protocol core, the scripted receiver and the scripted sender.

The core (``protocol`` and the modules it uses) is the one place the SMTP grammar lives
(design rule 1); the peers and the dissector only ever talk to it through events.
"""

from harness.smtp.commands import format_command, parse_command, path_argument
from harness.smtp.events import (
    NEED_DATA,
    PAUSED,
    Anomaly,
    AnomalyKind,
    Command,
    ConnectionClosed,
    Content,
    Direction,
    EndOfChunk,
    EndOfData,
    Event,
    Gap,
    Opaque,
    Reply,
    Status,
    TlsStarted,
)
from harness.smtp.framing import (
    COMMAND_LINE_LIMIT,
    REPLY_LINE_LIMIT,
    TEXT_LINE_LIMIT,
    dot_stuff,
)
from harness.smtp.protocol import ClientConnection, Observer, ServerConnection
from harness.smtp.replies import format_reply, parse_reply_line
from harness.smtp.state import State

__all__ = [
    "COMMAND_LINE_LIMIT",
    "NEED_DATA",
    "PAUSED",
    "REPLY_LINE_LIMIT",
    "TEXT_LINE_LIMIT",
    "Anomaly",
    "AnomalyKind",
    "ClientConnection",
    "Command",
    "ConnectionClosed",
    "Content",
    "Direction",
    "EndOfChunk",
    "EndOfData",
    "Event",
    "Gap",
    "Observer",
    "Opaque",
    "Reply",
    "ServerConnection",
    "State",
    "Status",
    "TlsStarted",
    "dot_stuff",
    "format_command",
    "format_reply",
    "parse_command",
    "parse_reply_line",
    "path_argument",
]
