"""How a signal ends the harness, wherever it lands.

Rules kept here:
- SIGINT ends the harness with ``KeyboardInterrupt`` (exit 130), SIGTERM and SIGHUP with
  ``SystemExit(128 + n)`` (143, 129), so every ``with`` unwinds and every lab is taken down.
  ``end`` is the one handler that does it (the CLI's for all three; a ``Lab``'s while up).
- ``end`` raises only where Python propagates the exception as meant:
  - while a function marked ``@holding`` runs (a teardown, a thread's start: its frame is on
    the stack, from its very first step), the signal is held; ``release()``, the last thing
    such a function does, delivers it;
  - inside a running event loop the first signal never raises in whichever task the loop
    is stepping (asyncio would keep it in that task: "Task exception was never retrieved"):
    it is *noted*, and the loop's next callback cancels every task but the loop's own
    shutdown (not the handler itself, which may have interrupted asyncio completing a
    future); whoever owns the loop (``run_async``; a ``Lab``) ends with it once the loop is
    done, whatever the cancelled code raised.  A second one raises at once (a user pressing
    Ctrl-C twice insists), and the task it struck is retrieved so that nothing is logged;
  - swallowed where Python cannot propagate (a ``__del__``, a weakref callback: "Exception
    ignored in ..."), it is raised again at the next line or call of that thread outside
    the hook that saw it, through a trace function.  A tracer that was running (coverage,
    a debugger) stops there: Python removes the trace function of a thread where one
    raised.
- Importing this module loads no ``asyncio``: ``run_async`` imports it, and the handler
  looks for a running loop only once something has (``_asyncio``).  ``imported`` is the one
  way to import a module a command needs late: with the ending signals blocked.
- Once ``settle(True)`` has run (the command has its exit code) ``end`` does nothing: a signal
  then changes neither the code nor what is printed.
"""

from __future__ import annotations

import importlib
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from types import CodeType, FrameType, ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import asyncio

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
ENDING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
LOOP_SHUTDOWN = {  # asyncio.run's own last tasks, left to finish
    "BaseEventLoop.shutdown_default_executor",
    "BaseEventLoop.shutdown_asyncgens",
}

_holding: set[CodeType] = set()  # the code of every @holding function
_held: list[int] = []  # signals that landed in one, for release()
_noted: list[int] = []  # signals that cancelled a loop and wait for its owner
_struck: list[asyncio.Task] = []  # tasks a second signal raised in
_settled: list[bool] = []
# ``settle(True)``: from now on ``end`` does nothing (the command has its exit code).  A
# list's append, so the call is one C call: no signal lands between the decision and the flag.
settle = _settled.append
_previous_hook = sys.unraisablehook


def ending(signum: int) -> BaseException:
    """The exception that ends the harness on ``signum``."""
    return KeyboardInterrupt() if signum == signal.SIGINT else SystemExit(128 + signum)


def signal_of(exc: BaseException | None) -> int | None:
    """The signal ``exc`` ends the harness for, if it is one of ``ending``'s."""
    if isinstance(exc, KeyboardInterrupt):
        return signal.SIGINT
    if isinstance(exc, SystemExit) and exc.code in {128 + s for s in ENDING}:
        return exc.code - 128  # type: ignore[operator]
    return None


def end(signum: int, frame: FrameType | None) -> None:
    """The handler (see the module's rules for where it raises, holds or notes)."""
    if _settled:
        return
    if _on_stack(frame, {_unraisable.__code__}):
        _again_after_hook(signum)
    elif _on_stack(frame, _holding):
        _held.append(signum)
    else:
        _end_now(signum)


def holding(func: F) -> F:
    """Mark ``func``: a signal landing while it runs is held until its ``release()``."""
    _holding.add(func.__code__)
    return func


def release() -> None:
    """Deliver the first signal held by ``@holding`` functions, if any (the rest with it);
    in the main thread only, where they were held."""
    if _held and threading.current_thread() is threading.main_thread():
        signum = _held[0]
        _held.clear()
        _end_now(signum)


def raise_noted() -> None:
    """End with the signal that cancelled a loop, if one did; forget it."""
    for task in _struck:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: the loop's owner raises it, nothing is logged
    _struck.clear()
    if _noted:
        signum = _noted[0]
        _noted.clear()
        raise ending(signum) from None


def install() -> None:
    """The CLI's handlers: ``end`` for every ending signal, and the unraisable hook."""
    global _previous_hook
    for signum in ENDING:
        if signal.getsignal(signum) != signal.SIG_IGN:  # `smtp-harness ... &` in a script
            signal.signal(signum, end)
    if sys.unraisablehook is not _unraisable:
        _previous_hook, sys.unraisablehook = sys.unraisablehook, _unraisable


def imported(name: str) -> ModuleType:
    """The module *name*, imported (if it is not yet) with the ending signals blocked in this
    thread: one that arrives meanwhile lands after, as its quiet 130/143, never inside the
    module's body (where Python 3.11 makes it a RuntimeError, an enum's ``__set_name__``:
    "a bug").  For the imports deferred until a command needs them."""
    module = sys.modules.get(name)
    if module is not None:
        return module
    held = signal.pthread_sigmask(signal.SIG_BLOCK, ENDING)
    try:
        return importlib.import_module(name)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a pending one lands here


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, ending with the signal that cancelled it, if one did."""
    asyncio = imported("asyncio")  # here, not at the top: ``_asyncio`` says why
    raise_noted()  # one noted before, in a loop nobody ended with it
    try:
        result = asyncio.run(main)
    except BaseException:
        raise_noted()
        raise
    raise_noted()
    return result


def _end_now(signum: int) -> None:
    loop = _running_loop()
    if loop is None:
        raise ending(signum)
    if _noted:
        if (task := _asyncio().current_task(loop)) is not None:
            _struck.append(task)
        raise ending(signum)
    _noted.append(signum)
    loop.call_soon_threadsafe(_cancel_all, loop)  # between callbacks: cancelling from here,
    # mid-way through asyncio's own code, could cancel a future it is completing


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel every task but the loop's own shutdown (``asyncio.run`` closing: cancelled,
    its executor thread would still set its result, and asyncio log InvalidStateError)."""
    for task in _asyncio().all_tasks(loop):
        if getattr(task.get_coro(), "__qualname__", "") not in LOOP_SHUTDOWN:
            task.cancel()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The loop running in this thread, if any: none while asyncio is not (wholly) imported."""
    get = getattr(_asyncio(), "get_running_loop", None)
    try:
        return None if get is None else get()
    except RuntimeError:
        return None


def _asyncio() -> ModuleType | None:
    """``asyncio`` once something imported it (``run_async``, a lab's modules), else None: no
    loop can run before.  Deferred: asyncio (and ssl under it) is 10 MB resident that
    ``ladder`` and ``check`` never need; and the handler imports nothing (it may land while
    a module is half imported)."""
    return sys.modules.get("asyncio")


def _on_stack(frame: FrameType | None, codes: set[CodeType]) -> bool:
    while frame is not None:
        if frame.f_code in codes:
            return True
        frame = frame.f_back
    return False


# --- a signal's exception swallowed as unraisable --------------------------------------
def _unraisable(args: Any) -> None:
    """Raise a swallowed signal's exception again after this hook; anything else as before."""
    signum = signal_of(args.exc_value)
    if signum is None:
        _previous_hook(args)
        return
    _again_after_hook(signum)


def _again_after_hook(signum: int) -> None:
    """Raise ``ending(signum)`` at this thread's next line or call outside the unraisable
    hook (pdb's way: a trace function on the frames it returns to, and on the thread); the
    frames get their own trace functions back first, so none raises twice."""
    previous = sys.gettrace()
    outside = _frames_outside_hook(sys._getframe())
    traces = {f: f.f_trace for f in outside}

    def fire(frame: FrameType, event: str, arg: object) -> None:
        if _on_stack(frame, {_unraisable.__code__}):
            return None
        sys.settrace(previous)
        for f, trace in traces.items():
            f.f_trace = trace
        raise ending(signum)

    for f in outside:
        f.f_trace = fire
    sys.settrace(fire)


def _frames_outside_hook(frame: FrameType | None) -> list[FrameType]:
    while frame is not None and frame.f_code is not _unraisable.__code__:
        frame = frame.f_back
    frames = []
    while frame is not None and (frame := frame.f_back) is not None:
        frames.append(frame)
    return frames
