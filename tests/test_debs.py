"""Debian packages unpacked into private trees: Postfix's smtp-sink and smtp-source run
from the project cache and exchange real mail on loopback (apt works in CI, as root)."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.mta import debs
from harness.mta.base import adapters


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


# --- provenance: the exact Debian version and the sha256 of each .deb -------------------------
def test_a_deb_is_named_with_its_own_control_data_and_digest(postfix: Path) -> None:
    found = debs.deb("postfix")
    [path] = (debs.CACHE / "postfix").glob("*.deb")
    control = subprocess.run(
        ["dpkg-deb", "-f", str(path), "Version"], capture_output=True, text=True, check=True
    )
    assert found == debs.Deb(
        "postfix", control.stdout.strip(), path.name, hashlib.sha256(path.read_bytes()).hexdigest()
    )
    assert found.file.startswith(f"postfix_{found.version.split(':')[-1]}_")


def test_a_tree_without_its_deb_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "postfix" / "root").mkdir(parents=True)
    (tmp_path / "postfix" / ".unpacked").write_text("postfix\n")  # unpacked, .deb removed
    with pytest.raises(HarnessError, match=r"^postfix: expected one \.deb in .*, found 0 "):
        debs.deb("postfix", cache=tmp_path)


@pytest.mark.lab  # root: prepare() makes the MTAs' system users
@pytest.mark.parametrize("name", ["postfix", "exim", "opensmtpd", "sendmail"])
def test_each_adapter_names_its_debian_version_and_every_deb_it_uses(name: str) -> None:
    adapter = adapters()[name]
    adapter.prepare()
    own, *others = adapter.debs()
    assert own.package == adapter.packages[0]
    assert adapter.package_version() == own.version
    assert own.version.startswith(adapter.version() + "-")  # upstream, then Debian's
    assert {d.package for d in (own, *others)} >= set(adapter.packages)
    assert all(len(d.sha256) == 64 for d in (own, *others))


@pytest.mark.lab
def test_prepare_prints_the_debian_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "harness.mta", "prepare", "exim"], capture_output=True, text=True
    )
    exim = adapters()["exim"]
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"exim {exim.version()} (Debian {exim.package_version()}): ")
