"""How a signal ends the harness, wherever it lands.

Rules kept here:
- SIGINT ends the harness with ``KeyboardInterrupt`` (exit 130), SIGTERM and SIGHUP with
  ``SystemExit(128 + n)`` (143, 129), so every ``with`` unwinds and every lab is taken down.
- A signal raises only where Python propagates the exception as meant:
  - inside a running event loop it never raises in whichever task the loop is stepping
    (asyncio would keep it in that task: "Task exception was never retrieved"): the first one
    cancels every task and is *noted*; whoever owns the loop (``run_async``; a ``Lab`` for a
    library user) ends with it once the loop is done, whatever the cancelled code raised;
  - swallowed where Python cannot propagate (a ``__del__``, a weakref callback: "Exception
    ignored in ..."), it is raised again, quietly, at the main thread's next step after the
    hook that saw it (raised inside the hook, it would be swallowed again);
  - ``deferred()`` holds signals, from every thread, while a teardown runs, and delivers them
    afterwards; ``harness.entry`` blocks them while the harness imports.
- A second signal while one is noted raises at once: a user pressing Ctrl-C twice insists.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")
ENDING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
TERMINATING = (signal.SIGTERM, signal.SIGHUP)

_noted: list[int] = []  # signals that cancelled a loop and wait for its owner
_previous_hook = sys.unraisablehook


def ending(signum: int) -> BaseException:
    """The exception that ends the harness on ``signum``."""
    return KeyboardInterrupt() if signum == signal.SIGINT else SystemExit(128 + signum)


def signal_of(exc: BaseException | None) -> int | None:
    """The signal ``exc`` ends the harness for, if it is one of ``ending``'s."""
    if isinstance(exc, KeyboardInterrupt):
        return signal.SIGINT
    if isinstance(exc, SystemExit) and exc.code in {128 + s for s in TERMINATING}:
        return exc.code - 128  # type: ignore[operator]
    return None


def end(signum: int, frame: object) -> None:
    """The handler: raise ``ending(signum)``, or cancel the running loop and note it."""
    if _in_hook(frame):
        _again_after_hook(signum)
        return
    loop = _running_loop()
    if loop is None or _noted:
        raise ending(signum)
    _noted.append(signum)
    for task in asyncio.all_tasks(loop):
        task.cancel()
    loop.call_soon_threadsafe(lambda: None)  # the loop wakes up to see the cancellations


def raise_noted() -> None:
    """End with the signal that cancelled a loop, if one did; forget it."""
    if _noted:
        signum = _noted.pop(0)
        _noted.clear()
        raise ending(signum) from None


def install() -> None:
    """The CLI's handlers: ``end`` for every ending signal, and the unraisable hook."""
    global _previous_hook
    for signum in ENDING:
        signal.signal(signum, end)
    if sys.unraisablehook is not _unraisable:
        _previous_hook, sys.unraisablehook = sys.unraisablehook, _unraisable


@contextmanager
def raising(signums: tuple[int, ...] = TERMINATING) -> Iterator[None]:
    """``end`` handles ``signums`` inside the block (main thread only); the old ones after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {signum: signal.signal(signum, end) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold the ending signals while the block runs, whichever thread the kernel hands them
    to; deliver them afterwards (main thread only: elsewhere Python handles none)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    old = {s: signal.getsignal(s) for s in ENDING}
    replaced = {s: h for s, h in old.items() if callable(h) or h == signal.SIG_DFL}
    for signum in replaced:
        signal.signal(signum, lambda signum, _frame: held.append(signum))
    try:
        yield
    finally:
        for signum, handler in replaced.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(held):
            signal.raise_signal(signum)


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, ending with the signal that cancelled it, if one did."""
    _noted.clear()
    try:
        result = asyncio.run(main)
    except BaseException:
        raise_noted()
        raise
    raise_noted()
    return result


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _unraisable(args: Any) -> None:
    """A signal's exception swallowed where Python reports it as unraisable: raise it again
    at the main thread's next step instead of printing it; anything else as before."""
    signum = signal_of(args.exc_value)
    if signum is None:
        _previous_hook(args)
        return
    _again_after_hook(signum)


def _in_hook(frame: Any) -> bool:
    while frame is not None:
        if frame.f_code is _unraisable.__code__:
            return True
        frame = frame.f_back
    return False


def _again_after_hook(signum: int) -> None:
    """Raise ``signum``'s exception at the main thread's next step outside the unraisable
    hook: the next line of a frame the hook returns to, or the next call (pdb's way: a trace
    function on those frames and on the thread, removed as it fires)."""
    previous = sys.gettrace()
    outside = _frames_outside_hook(sys._getframe())

    def fire(frame: Any, event: str, arg: object) -> None:
        if _in_hook(frame):
            return None
        sys.settrace(previous)
        for f in outside:
            f.f_trace = None
        raise ending(signum)

    for f in outside:
        f.f_trace = fire
    sys.settrace(fire)


def _frames_outside_hook(frame: Any) -> list[Any]:
    while frame is not None and frame.f_code is not _unraisable.__code__:
        frame = frame.f_back
    frames = []
    while frame is not None and (frame := frame.f_back) is not None:
        frames.append(frame)
    return frames
