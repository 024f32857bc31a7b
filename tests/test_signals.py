"""harness.signals: each moment a signal can land, made certain, ends as its rules say (the
exit code of the signal, nothing printed, nothing left).  Each script runs in a process of
its own, as the CLI would, with the harness's own handlers."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import CLI, PYTHON, ROOT

from harness.verdict import ExitCode


def _run(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-c", script, *args], capture_output=True, text=True, cwd=ROOT, env=env,
        timeout=60,
    )  # fmt: skip


TWO_PENDING_AT_START_UP = """
import os, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
for name in sys.argv[1:]:  # pending, blocked: as if sent while Python started (the launcher)
    os.kill(os.getpid(), getattr(signal, name))
sys.argv = ["smtp-harness", "--version"]
from harness.entry import main
main()
"""


@pytest.mark.parametrize(
    ("first", "second", "code"),
    [("SIGHUP", "SIGINT", 129), ("SIGINT", "SIGTERM", 130), ("SIGTERM", "SIGINT", 130)],
)
def test_two_signals_pending_at_start_up_end_with_one_quietly(first, second, code) -> None:
    """Found in review: the first raised inside the command, the second (CPython keeps it
    pending) landed where entry re-blocked signals, outside any try: a traceback.  CPython
    handles pending signals by number, so the lower-numbered one gives the code."""
    done = _run(TWO_PENDING_AT_START_UP, first, second)
    assert done.returncode == code
    assert "Traceback" not in done.stderr and done.stdout == ""


TWO_CTRL_C_IN_A_BUSY_TASK = """
import asyncio, os, signal, sys, threading, time
from harness import signals
signals.install()

async def busy():
    try:
        await asyncio.sleep(5)
    finally:  # cleanup after the cancel: CPU work in the task, when the second one lands
        t = time.monotonic()
        while time.monotonic() - t < 0.5:
            pass

async def main():
    side = asyncio.create_task(busy())
    await asyncio.sleep(5)

def press():
    time.sleep(0.2); os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2); os.kill(os.getpid(), signal.SIGINT)

threading.Thread(target=press, daemon=True).start()
try:
    signals.run_async(main())
except KeyboardInterrupt:
    print("interrupted")
import gc; gc.collect()  # a task holding an unretrieved exception would be logged now
"""


def test_a_second_ctrl_c_in_a_busy_task_is_quiet() -> None:
    """Found in review: the second Ctrl-C raised in the task the loop was stepping, and
    asyncio logged 'Task exception was never retrieved' with a traceback."""
    done = _run(TWO_CTRL_C_IN_A_BUSY_TASK)
    assert (done.stdout, done.stderr) == ("interrupted\n", "")


SIGTERM_AT_THE_FIRST_STEP_OF_LAB_EXIT = """
import signal, sys
from harness.lab import Lab

def at_exit(frame, event, arg):  # the moment made certain: SIGTERM as Lab.__exit__ begins
    if event == "call" and frame.f_code is Lab.__exit__.__code__:
        sys.setprofile(None)
        signal.raise_signal(signal.SIGTERM)

with Lab() as lab:
    print(lab.id, flush=True)
    sys.setprofile(at_exit)
"""


@pytest.mark.lab
def test_sigterm_as_teardown_begins_waits_for_it(tmp_path) -> None:
    """Found in review: teardown held signals only once it was under way; one landing as
    Lab.__exit__ began raised there, and the whole lab was left."""
    env = {**os.environ, "SMTP_HARNESS_STATE": str(tmp_path / "labs")}
    done = _run(SIGTERM_AT_THE_FIRST_STEP_OF_LAB_EXIT, env=env)
    lab_id = done.stdout.strip()
    try:
        assert lab_id.startswith("sh"), done.stderr
        assert (done.returncode, done.stderr) == (ExitCode.SIGTERM, "")
        assert sorted(Path("/run/netns").glob(f"{lab_id}-*")) == []
        assert sorted((tmp_path / "labs").glob(f"{lab_id}.*")) == []
    finally:
        subprocess.run([*CLI, "lab", "clean"], capture_output=True, env=env)


def test_an_ignored_sigint_stays_ignored() -> None:
    """`smtp-harness ... &` in a script starts with SIGINT ignored: the harness keeps it so
    (and so does a lab), as a shell's background job expects."""
    script = (
        "import signal\nfrom harness import signals\nsignals.install()\n"
        "print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)"
    )
    done = subprocess.run(
        [PYTHON, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    assert done.stdout == "True\n", done.stderr


def test_the_launcher_runs_the_installed_harness_not_one_in_the_working_folder(
    tmp_path,
) -> None:
    """Found in review: `python3 -m harness` put the working folder first on sys.path, so a
    `harness/` there ran instead (as root).  The launcher runs Python with -P."""
    planted = tmp_path / "harness"
    planted.mkdir()
    (planted / "__init__.py").write_text("")
    (planted / "__main__.py").write_text("print('planted')\n")
    launcher = Path(PYTHON).with_name("smtp-harness")
    done = subprocess.run([launcher, "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert (done.returncode, "planted" in done.stdout) == (ExitCode.OK, False), done.stdout


CANCELLED_BY_THE_NEXT_CALLBACK = """
import asyncio, signal
from harness import signals
signals.install()

async def main():
    signal.raise_signal(signal.SIGINT)  # the handler runs here, mid-step
    print("cancelling while the step runs:", asyncio.current_task().cancelling())
    try:
        await asyncio.sleep(1)
    except asyncio.CancelledError:
        print("cancelled at the next await")
        raise

try:
    signals.run_async(main())
except KeyboardInterrupt:
    print("interrupted")
"""


def test_a_signal_in_the_loop_cancels_between_callbacks_not_inside_the_step() -> None:
    """Found by the torture (1 of 100 SIGINTed postfix-receiver runs): cancelling the tasks
    from the handler, which had interrupted asyncio completing an executor's future between
    its 'cancelled?' check and set_result, logged InvalidStateError with a traceback."""
    done = _run(CANCELLED_BY_THE_NEXT_CALLBACK)
    assert done.stdout.splitlines() == [
        "cancelling while the step runs: 0",
        "cancelled at the next await",
        "interrupted",
    ]
    assert done.stderr == ""


SIGTERM_AS_ASYNCIO_RUN_SHUTS_DOWN = """
import asyncio, os, signal, threading, time
from harness import signals
signals.install()

async def main():
    asyncio.get_running_loop().run_in_executor(None, time.sleep, 0.6)  # outlives main
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()  # lands in close

try:
    signals.run_async(main())
except SystemExit as ended:
    print("ended", ended.code)
"""


def test_a_signal_as_asyncio_run_shuts_down_its_executor_is_quiet() -> None:
    """Found by the torture (1 of 100 SIGTERMed postfix-receiver runs): the signal cancelled
    asyncio.run's shutdown_default_executor task too; its thread then set the cancelled
    future's result, and asyncio logged InvalidStateError with a traceback."""
    done = _run(SIGTERM_AS_ASYNCIO_RUN_SHUTS_DOWN)
    assert (done.stdout, done.stderr) == ("ended 143\n", "")


A_SIGNAL_WHILE_A_LATE_IMPORT_RUNS = """
import os, signal, sys
from harness import signals
signals.install()
sys.path.insert(0, sys.argv[1])
try:
    signals.imported("late_module")
finally:  # the module is whole when the signal lands, or gone if it landed inside
    print(getattr(sys.modules.get("late_module"), "Kind", "gone"), flush=True)
"""
LATE_MODULE = """
import enum, os, signal
os.kill(os.getpid(), signal.SIGTERM)  # lands while the module body runs, unless blocked


class Kind(enum.Enum):  # Python 3.11 turns a signal's exception here into a RuntimeError
    A = "a"
    B = "b"
"""


def test_a_signal_during_a_late_import_lands_after_it(tmp_path) -> None:
    """``signals.imported`` (a renderer, the TLS record layer imported mid-command): the
    module is whole, then the signal ends the process as the quiet 143."""
    (tmp_path / "late_module.py").write_text(LATE_MODULE)
    done = _run(A_SIGNAL_WHILE_A_LATE_IMPORT_RUNS, str(tmp_path))
    assert done.returncode == ExitCode.SIGTERM, done.stderr
    assert done.stdout == "<enum 'Kind'>\n" and "Traceback" not in done.stderr
