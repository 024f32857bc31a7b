"""Session state of one SMTP connection, shared by client, server and observer.

Rules kept here:

1. The state changes only on a *reply*: the server decides, so the state a server builds
   from its own replies and the state an observer builds from the captured replies are
   the same.  Each reply answers the oldest command still waiting for one (FIFO, which is
   what PIPELINING needs, RFC 2920); the greeting and the end of DATA wait like commands.
2. ``SUCCESS`` says where a positive (2yz/3yz) reply leads; a key absent from a state's row
   leaves the state unchanged.  ``FAILURE`` lists the few negative replies that move it;
   421 closes from anywhere (RFC 5321 §3.8, §4.2.3).
3. A command is legal in a state if that state's row names it, or if it is one of the
   ``ANYTIME`` commands in an open session (RFC 5321 §4.1.4: NOOP, HELP, EXPN, VRFY, RSET
   at any time; EHLO/HELO reset; QUIT always).  Legality is judged against the state the
   session will be in once every waiting command has succeeded (that is how a pipelining
   client sees it), except that nothing is legal before the greeting (§3.1).
4. The reply to DATA or STARTTLS says what the client's next bytes are, whatever the
   state: content after a 3yz to DATA (354), TLS after a 2yz to STARTTLS (220), commands
   after any other reply - as a client acts on it (``SWITCH``).  An observer takes the
   server's word; the legality table (rule 3) is still what a server answers 503 from.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from harness.fifo import Fifo


class State(Enum):
    GREETING = "awaiting greeting"
    HELLO = "awaiting HELO/EHLO"
    READY = "ready for MAIL"
    MAIL = "MAIL accepted"
    RCPT = "recipient accepted"
    DATA = "receiving DATA content"
    BDAT = "receiving BDAT chunks"
    REFUSED = "refused at greeting; only QUIT"
    TLS = "TLS (opaque)"
    CLOSED = "closed"

    # members are singletons: hashed by identity, in C (Enum's own hash is a Python call,
    # and the tables below look a state up for each command and each reply)
    __hash__ = object.__hash__


GREETING = "<greeting>"  # the server's first reply answers this
END_OF_DATA = "<end-of-data>"  # the reply after CRLF.CRLF answers this

_HELLO = {"HELO": State.READY, "EHLO": State.READY, "QUIT": State.CLOSED}
_ABORT = {**_HELLO, "RSET": State.READY}

SUCCESS: dict[State, dict[str, State]] = {
    State.GREETING: {GREETING: State.HELLO},
    State.HELLO: _HELLO,
    State.READY: {**_HELLO, "MAIL": State.MAIL, "STARTTLS": State.TLS},
    State.MAIL: {**_ABORT, "RCPT": State.RCPT},
    State.RCPT: {
        **_ABORT,
        "RCPT": State.RCPT,
        "DATA": State.DATA,
        "BDAT": State.BDAT,
        "BDAT LAST": State.READY,
    },
    State.DATA: {END_OF_DATA: State.READY},
    State.BDAT: {**_ABORT, "BDAT": State.BDAT, "BDAT LAST": State.READY},
    State.REFUSED: {"QUIT": State.CLOSED},
    State.TLS: {},
    State.CLOSED: {},
}

FAILURE: dict[tuple[State, str], State] = {
    (State.GREETING, GREETING): State.REFUSED,  # 554 greeting: wait for QUIT (§3.1)
    (State.DATA, END_OF_DATA): State.READY,  # the transaction is over either way (§4.1.1.4)
}

SWITCH: dict[str, tuple[int, State]] = {"DATA": (3, State.DATA), "STARTTLS": (2, State.TLS)}

ANYTIME = frozenset({"NOOP", "HELP", "VRFY", "EXPN", "RSET", "QUIT", "HELO", "EHLO"})
_OPEN = (State.HELLO, State.READY, State.MAIL, State.RCPT, State.BDAT)

LEGAL: dict[State, frozenset[str]] = {
    state: frozenset(row) | (ANYTIME if state in _OPEN else frozenset())
    for state, row in SUCCESS.items()
}


def next_state(state: State, key: str | None, code: int) -> State:
    """The state after reply ``code`` to the command known as ``key`` (None: unsolicited)."""
    if code == 421:
        return State.CLOSED
    if key is None:
        return state
    if key in SWITCH:
        reply_class, target = SWITCH[key]
        return target if code // 100 == reply_class else state
    if 200 <= code < 400:
        return SUCCESS[state].get(key, state)
    return FAILURE.get((state, key), state)


class Session:
    """The confirmed state plus the commands still waiting for their replies.

    ``expected()`` is kept up to date as commands and replies come, not recomputed from
    the whole queue for each command: a capture with one side missing queues every
    command unanswered, and walking that queue each time made it quadratic."""

    def __init__(self, *, after_tls: bool = False) -> None:
        """A new session: awaiting the greeting, or (``after_tls``) the one a TLS handshake
        starts, which has no greeting and awaits EHLO (RFC 3207 §4.2: both ends discard
        what they knew, and the client SHOULD send EHLO first)."""
        self.state = State.HELLO if after_tls else State.GREETING
        self._waiting: Fifo[str] = Fifo() if after_tls else Fifo([GREETING])
        self._expected = self.state

    @property
    def waiting(self) -> tuple[str, ...]:
        return tuple(self._waiting)

    @property
    def oldest(self) -> str | None:
        """The key of the oldest command waiting for its reply; None if none is."""
        return self._waiting[0] if self._waiting else None

    def expected(self) -> State:
        """The state once every waiting command has succeeded (see rule 3)."""
        return self._expected

    def allows(self, key: str) -> bool:
        return key in LEGAL[self._expected]

    def command(self, key: str) -> bool:
        """Record a command (or END_OF_DATA) awaiting a reply; return whether it is legal."""
        legal = self.allows(key)
        self._waiting.append(key)
        self._expected = _expect(self._expected, (key,))
        return legal

    def skip_to(self, keys: frozenset[str]) -> tuple[str, ...] | None:
        """Take the commands waiting before the first of *keys* as answered by replies a
        capture lacks, each as it succeeds (a STARTTLS or DATA as refused: no switch is
        assumed); the keys passed, () when the oldest waiting one is of *keys*, None when
        none is."""
        waiting = self._waiting
        if waiting and waiting[0] in keys:
            return ()
        if keys.isdisjoint(waiting):
            return None
        passed = []
        while waiting[0] not in keys:
            key = waiting.popleft()
            passed.append(key)
            if key not in SWITCH:
                self.state = SUCCESS[self.state].get(key, self.state)
        self._expected = _expect(self.state, waiting)
        return tuple(passed)

    def reply(self, code: int | None) -> str | None:
        """Apply a reply; return the key it answers (None if nothing was waiting)."""
        key = self._waiting.popleft() if self._waiting else None
        before = self.state
        if code is not None:
            self.state = next_state(before, key, code)
        if key == GREETING or self.state is not SUCCESS[before].get(key, before):
            self._expected = _expect(self.state, self._waiting)  # not the path foreseen
        return key


def _expect(state: State, waiting: Iterable[str]) -> State:
    """The state after every key of *waiting* succeeds; nothing moves before the greeting."""
    for key in waiting:
        if key == GREETING:
            return State.GREETING
        state = SUCCESS[state].get(key, state)
    return state
