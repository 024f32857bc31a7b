"""Issue 13, "Start-up" and "The CLI": each subcommand imports what it uses when it is called;
``-h`` and the exit codes in every command's help; ``check --help`` says what ``--expect`` is;
``matrix --list`` names every check (id, title, RFC words, roles) and the MTAs."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import click
import pytest
from conftest import ROOT

from harness.checks.base import registry
from harness.cli import COMMANDS, main, run_cli
from harness.mta.base import adapters
from harness.verdict import EXIT_CODES_HELP, ExitCode

HEAVY = ("harness.runner", "harness.ladder.dissect", "harness.checks.base", "scapy")


def _imported_by(argv: list[str]) -> set[str]:
    """The modules a fresh Python holds after ``smtp-harness ARGV`` (through run_cli)."""
    code = (
        "import contextlib, io, json, sys\n"
        "from harness.cli import run_cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    code = run_cli({argv!r})\n"
        "print(json.dumps([code, sorted(sys.modules)]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    code, modules = json.loads(done.stdout)
    assert code == 0, done.stderr
    return set(modules)


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["--version"], ["lab", "-h"]])
def test_help_imports_neither_the_runner_nor_the_dissector(argv) -> None:
    modules = _imported_by(argv)
    assert not [m for m in HEAVY if m in modules]


def test_a_command_imports_its_module_when_called() -> None:
    modules = _imported_by(["matrix", "--list"])
    assert "harness.checks.commands" in modules
    assert not {"harness.lab.commands", "harness.dns.commands", "harness.commands"} & modules


def _help(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_cli([*argv, "-h"]) == ExitCode.OK
    return out.getvalue()


def _every_command() -> list[tuple[str, ...]]:
    found = []
    for name, lazy in COMMANDS.items():
        command = lazy.load()
        found.append((name,))
        found += [(name, sub) for sub in getattr(command, "commands", {})]
    return found


@pytest.mark.parametrize("argv", [(), *_every_command()], ids=" ".join)
def test_every_command_takes_h_and_lists_the_exit_codes(argv) -> None:
    text = _help(*argv)
    assert text.startswith(f"Usage: smtp-harness {' '.join(argv)}".rstrip())
    assert "-h, --help" in text
    own = argv in {("lab", "up"), ("dns", "serve")}  # ends with Ctrl-C: their own exit codes
    codes = "Exit codes: 0 stopped with Ctrl-C" if own else " ".join(EXIT_CODES_HELP.split())
    assert codes in " ".join(text.split())


def test_the_command_list_names_every_command_with_its_own_summary() -> None:
    """The table ``--help`` lists from (importing nothing) says what each command says."""
    listed = _help()
    assert set(main.list_commands(click.Context(main))) == set(COMMANDS)
    for name, lazy in COMMANDS.items():
        own = " ".join(lazy.load().help.split("\n\n")[0].split())
        assert lazy.summary == own, name
        assert f"  {name} " in listed


def test_check_help_says_what_expect_is_and_the_exit_codes() -> None:
    flat = " ".join(_help("check").split())
    assert "--expect GOLDEN Compare with the golden capture GOLDEN (pcap or pcapng" in flat
    assert "With --expect GOLDEN: exit 0 when they do the same, 1 when they differ" in flat
    assert "Without --expect: every check a passive capture can meet, per session." in flat


def _listed(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_cli(["matrix", "--list", *args]) == ExitCode.OK
    return out.getvalue()


def test_matrix_list_names_each_check_with_title_rfc_and_roles() -> None:
    lines = _listed().splitlines()
    checks = list(registry().values())
    assert len(lines) == 3 * len(checks) + 1
    for i, check in enumerate(checks):
        head, title, rfc = lines[3 * i : 3 * i + 3]
        assert head == f"{check.id}  [{check.kind}; MTA as {', '.join(check.roles)}]"
        assert (title, rfc) == (f"    {check.title}", f"    {check.rfc}")
    mtas = ", ".join(["harness", *adapters()])
    assert lines[-1] == f"{len(checks)} checks; MTAs (--mta): {mtas}"


def test_matrix_list_follows_check_and_role() -> None:
    lines = _listed("--check", "dns.mx-*", "--role", "receiver").splitlines()
    assert lines == ["0 checks; MTAs (--mta): " + ", ".join(["harness", *adapters()])]
    lines = _listed("--check", "close.*", "--role", "receiver").splitlines()
    heads = [line for line in lines if not line.startswith(" ")][:-1]
    expected = [c for c in registry().values() if c.id.startswith("close.")]
    expected = [c for c in expected if "receiver" in c.roles]
    assert heads == [f"{c.id}  [{c.kind}; MTA as receiver]" for c in expected]
