"""Issue 10, "Streaming, at speed": a process that reads captures loads only what the capture
and the command need.  Every worker imports ``harness.ladder.sessions``, so what it pulls in
is paid once per process: ``cryptography`` (via the TLS record layer) waits for a connection
that carries TLS, ``asyncio`` for a command that runs a loop, the SVG and HTML renderers for
their format, the ladder comparison for ``check --expect``, the lab PKI's certificates for a
lab that makes them.  Each test runs a fresh
interpreter and reads its ``sys.modules``; none measures time or memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

PLAIN = ROOT / "tests" / "crafted" / "smtp" / "d7-auth.pcap"  # SMTP with AUTH, no TLS
NO_CONTENT = ROOT / "tests" / "crafted" / "tcp" / "quit-after-fin.pcap"  # EHLO, no DATA
TLS = ROOT / "tests" / "crafted" / "tls" / "starttls-tls13.pcap"
DEFERRED = ("cryptography", "asyncio", "ssl", "harness.tls.records", "harness.ladder.compare")
RENDERERS = ("harness.render.svg", "harness.render.html", "harness.render.mermaid")


def _modules_after(code: str) -> set[str]:
    """The modules a fresh Python holds after running *code* (from the repository's root)."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def _command_modules(tmp_path: Path, *argv: str) -> tuple[set[str], str]:
    """(the modules loaded, stdout) of ``smtp-harness ARGV`` through its real entry point,
    read as the process exits."""
    dump = tmp_path / "modules.json"
    code = (
        "import atexit, json, pathlib, sys\n"
        "from harness import entry\n"
        f"dump = pathlib.Path({str(dump)!r})\n"
        "atexit.register(lambda: dump.write_text(json.dumps(sorted(sys.modules))))\n"
        f"sys.argv = ['smtp-harness', *{list(argv)!r}]\n"
        "entry.main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(dump.read_text())), done.stdout


def test_the_stream_reader_imports_neither_cryptography_nor_asyncio() -> None:
    modules = _modules_after("import harness.ladder.sessions")
    assert "harness.ladder.dissect" in modules
    assert not [m for m in (*DEFERRED, *RENDERERS) if m in modules]


def test_a_worker_loads_no_multiprocessing_package() -> None:
    """What a worker process imports (``python -m harness.ladder.parallel``): its pipe is
    ``harness.ladder.pipe``, not ``multiprocessing`` (~2 MiB resident in each process)."""
    code = "import harness.ladder.parallel, harness.checks.offline, harness.render.jsonl"
    modules = _modules_after(code)
    assert "harness.ladder.pipe" in modules
    assert not [m for m in modules if m.split(".")[0] in ("multiprocessing", "_multiprocessing")]


def test_openssl_digests_wait_for_the_first_message_content(tmp_path) -> None:
    """A capture with no DATA nor BDAT content needs no SHA-256, so no ``hashlib`` (OpenSSL's
    libcrypto, ~3 MiB resident); one with content loads it and shows the digest."""
    modules, out = _command_modules(tmp_path, "ladder", "--format", "jsonl", str(NO_CONTENT))
    assert '"verb":"QUIT"' in out and '"kind":"content"' not in out
    assert not {"hashlib", "_hashlib"} & modules
    modules, out = _command_modules(tmp_path, "ladder", "--format", "jsonl", str(PLAIN))
    assert '"kind":"content"' in out and '"sha256":' in out
    assert "hashlib" in modules


LAB_ONLY = (  # what runs a lab: judging a capture has no use for it
    "harness.runner",
    "harness.scenario",
    "harness.lab.lab",
    "harness.dns.server",
    "harness.mta.base",
    "harness.tls.pki",
    "asyncio",
    "cryptography",
)


def test_the_offline_judges_import_nothing_that_runs_a_lab() -> None:
    """``check CAPTURE``'s judges, every check registered, load no runner, scenario, lab,
    DNS server, MTA adapter, PKI or asyncio (each worker paid ~7 MB and 0.3 s for them):
    ``harness.result`` is the run's data alone, and ``harness.lab``/``harness.dns`` import
    what runs a lab when it is first asked for."""
    modules = _modules_after("from harness.checks.offline import OfflineJudge; OfflineJudge()")
    assert {"harness.result", "harness.checks.tls", "harness.lab.topology"} <= modules
    assert not [m for m in LAB_ONLY if m in modules]


def test_the_lazy_packages_still_give_every_name() -> None:
    """``from harness.lab import Lab`` and ``from harness.dns import DnsServer`` still work:
    the name is imported from its module when asked for; a wrong name is an AttributeError."""
    import harness.dns
    import harness.lab

    for package in (harness.dns, harness.lab):
        for name in package.__all__:
            assert getattr(package, name) is not None, name
        with pytest.raises(AttributeError, match="no attribute 'Nope'"):
            package.Nope  # noqa: B018


@pytest.mark.parametrize("fmt", ["jsonl", "json", "text"])
def test_a_ladder_without_tls_loads_no_tls_loop_comparison_or_diagram(tmp_path, fmt) -> None:
    modules, out = _command_modules(tmp_path, "ladder", "--format", fmt, str(PLAIN))
    assert "AUTH" in out  # the capture was read, its dialogue shown
    assert not [m for m in (*DEFERRED, *RENDERERS) if m in modules]


def test_a_tls_connection_loads_the_record_layer_when_it_is_seen(tmp_path) -> None:
    keylog = str(TLS.with_suffix(".keylog"))
    modules, out = _command_modules(
        tmp_path, "ladder", "--format", "jsonl", str(TLS), "--keylog", keylog
    )
    assert '"kind":"tls-handshake"' in out
    assert {"harness.tls.records", "cryptography"} <= modules


@pytest.mark.parametrize("fmt", ["svg", "html", "mermaid"])
def test_a_diagram_loads_its_renderer_when_asked_for(tmp_path, fmt) -> None:
    modules, out = _command_modules(tmp_path, "ladder", "--format", fmt, str(PLAIN))
    assert "AUTH" in out
    assert f"harness.render.{fmt}" in modules


def test_check_expect_loads_the_comparison(tmp_path) -> None:
    modules, out = _command_modules(tmp_path, "check", str(PLAIN), "--expect", str(PLAIN))
    assert out == f"{PLAIN}: same as {PLAIN}\n"
    assert "harness.ladder.compare" in modules


def test_run_async_imports_asyncio_on_first_use() -> None:
    code = (
        "from harness import signals\n"
        "import sys\n"
        "assert 'asyncio' not in sys.modules\n"
        "async def seven():\n"
        "    return 7\n"
        "assert signals.run_async(seven()) == 7\n"
    )
    assert "asyncio" in _modules_after(code)
