"""Debian packages unpacked into private trees: Postfix's smtp-sink and smtp-source run
from the project cache and exchange real mail on loopback (apt works in CI, as root)."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.mta import debs


@pytest.fixture(scope="module")
def postfix() -> Path:
    return debs.unpacked("postfix")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def test_unpacked_tree_has_postfix_binaries_and_libraries(postfix: Path) -> None:
    assert debs.binary(postfix, "smtp-sink").is_file()
    assert postfix / "usr/lib/postfix" in debs.library_dirs(postfix)
    env = debs.environment(postfix, base={"LD_LIBRARY_PATH": "/elsewhere"})
    assert env["LD_LIBRARY_PATH"].split(":") == [str(postfix / "usr/lib/postfix"), "/elsewhere"]


def test_second_call_is_free(postfix: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached package ran a subprocess")

    monkeypatch.setattr(subprocess, "run", forbidden)
    started = time.perf_counter()
    assert debs.unpacked("postfix") == postfix
    assert time.perf_counter() - started < 0.05


def test_smtp_source_delivers_to_smtp_sink_on_loopback(postfix: Path) -> None:
    port = _free_port()
    sink = subprocess.Popen(
        [str(debs.binary(postfix, "smtp-sink")), "-u", "nobody", f"127.0.0.1:{port}", "10"],
        env=debs.environment(postfix),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_listening(port, time.monotonic() + 5)
        sent = debs.run(
            postfix, "smtp-source", "-s", "2", "-m", "5", f"127.0.0.1:{port}", timeout=20
        )
        assert sent.returncode == 0, sent.stderr
    finally:
        sink.terminate()
        sink.wait(timeout=5)


def test_bad_names_and_unknown_packages_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="not a Debian package name"):
        debs.unpacked("../etc", cache=tmp_path)
    with pytest.raises(HarnessError, match=r"cannot fetch no-such-package-zz9: apt-get") as err:
        debs.unpacked("no-such-package-zz9", cache=tmp_path)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "no-such-package-zz9" / "root").exists()


def test_missing_binary_names_the_tree(postfix: Path) -> None:
    with pytest.raises(HarnessError, match="no exim4 in"):
        debs.binary(postfix, "exim4")
