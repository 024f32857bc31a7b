"""Debian packages fetched into the project's cache and unpacked into private trees.

Rules kept here:

1. A package is never installed: ``apt-get download`` fetches its .deb into
   ``<cache>/<package>/`` and ``dpkg -x`` unpacks it into ``<cache>/<package>/root``, so
   MTAs that conflict as installed packages (all Provide mail-transport-agent) live side
   by side.
2. Idempotent and cheap: a stamp file written after a complete unpack makes every later
   call a single ``stat``.  A half-done unpack is never seen: it happens in a scratch
   folder renamed into place, under a per-package lock (parallel test runs, benches).
3. ``apt-get update`` runs only when the download failed because the package lists are
   missing or stale (no lists at all, or a 404 for the version they name).
4. Every failure is a ``HarnessError`` with a one-line message naming the package and the
   tool's last line of complaint.
5. Provenance: ``deb(package)`` is the cached .deb a tree was unpacked from: its package
   name and exact Debian version from its own control data (``dpkg-deb -f``), its file
   name and its sha256; read once per file per process (a changed file is read again).
6. A tree's binaries run with ``LD_LIBRARY_PATH`` listing every folder of the tree that
   holds shared objects (Postfix's ``usr/lib/postfix/libpostfix-*.so``, a library package
   unpacked beside an MTA), then the caller's own ``LD_LIBRARY_PATH``.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError

CACHE = Path(__file__).resolve().parents[2] / ".cache" / "debs"
APT_LISTS = Path("/var/lib/apt/lists")
BIN_DIRS = ("usr/sbin", "usr/bin", "sbin", "bin")
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")  # Debian policy §5.6.1
_STAMP = ".unpacked"
# as root, apt drops to _apt and warns that it cannot write into our cache folder
_APT_OPTIONS = ["-q", "-o", "APT::Sandbox::User=root"]


@dataclass(frozen=True)
class Deb:
    """One .deb an adapter runs from (rule 5)."""

    package: str
    version: str  # the exact Debian version, e.g. "4.96-15+deb12u11"
    file: str  # its file name in the cache
    sha256: str


def unpacked(package: str, *, cache: Path = CACHE) -> Path:
    """The root of ``package``'s unpacked tree, fetching and unpacking it the first time."""
    if not _PACKAGE.fullmatch(package):
        raise HarnessError(f"{package!r} is not a Debian package name")
    folder = cache / package
    root = folder / "root"
    if (folder / _STAMP).exists():
        return root
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise HarnessError(f"cannot fetch {package}: {tool} not found (Debian only)")
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder / ".lock"):
        if not (folder / _STAMP).exists():  # another process may have finished meanwhile
            _unpack(_download(package, folder), root)
            (folder / _STAMP).write_text(f"{package}\n")
    return root


def deb(package: str, *, cache: Path = CACHE) -> Deb:
    """Rule 5: the .deb ``package``'s tree was unpacked from (fetched first if need be)."""
    unpacked(package, cache=cache)
    found = sorted((cache / package).glob("*.deb"))
    if len(found) != 1:
        raise HarnessError(
            f"{package}: expected one .deb in {cache / package}, found {len(found)} "
            "(remove the folder to fetch it again)"
        )
    stat = found[0].stat()
    return _read_deb(found[0], stat.st_size, stat.st_mtime_ns)


@functools.cache
def _read_deb(path: Path, size: int, mtime_ns: int) -> Deb:
    """``path``'s provenance; ``size`` and ``mtime_ns`` key the cache (rule 5)."""
    done = subprocess.run(
        ["dpkg-deb", "-f", str(path), "Package", "Version"],
        capture_output=True,
        text=True,
        check=False,
    )
    fields = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    if done.returncode != 0 or set(fields) != {"Package", "Version"}:
        raise HarnessError(f"cannot read {path}: dpkg-deb -f: {_last(done.stderr)}")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return Deb(fields["Package"], fields["Version"], path.name, digest.hexdigest())


def binary(root: Path, name: str) -> Path:
    """The executable ``name`` in an unpacked tree (usr/sbin, usr/bin, sbin, bin)."""
    for sub in BIN_DIRS:
        path = root / sub / name
        if path.is_file():
            return path
    raise HarnessError(f"no {name} in {root} (looked in {', '.join(BIN_DIRS)})")


def environment(*roots: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the trees' libraries first."""
    env = dict(os.environ if base is None else base)
    dirs = [str(d) for root in roots for d in library_dirs(root)]
    if env.get("LD_LIBRARY_PATH"):
        dirs.append(env["LD_LIBRARY_PATH"])
    if dirs:
        env["LD_LIBRARY_PATH"] = ":".join(dirs)
    return env


def library_dirs(root: Path) -> list[Path]:
    """Every folder of the tree holding a shared object, sorted (rule 6)."""
    found = {p.parent for p in root.rglob("*.so*") if p.is_file() and _is_shared(p.name)}
    return sorted(found)


def run(root: Path, name: str, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a tree's binary to completion (``subprocess.run`` keywords; text mode, captured).

    Long-running programs (daemons, sinks): ``subprocess.Popen([binary(root, name), ...],
    env=environment(root))``."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("env", environment(root))
    return subprocess.run([str(binary(root, name)), *args], **kwargs)  # type: ignore[call-overload]


def _is_shared(name: str) -> bool:
    return name.endswith(".so") or ".so." in name


def _download(package: str, folder: Path) -> Path:
    """Fetch the candidate .deb into ``folder`` (rule 3); return its path."""
    for old in folder.glob("*.deb"):
        old.unlink()
    result = _apt_download(package, folder)
    if result.returncode != 0 and _lists_stale(result.stderr):
        update = subprocess.run(
            ["apt-get", *_APT_OPTIONS, "update"], capture_output=True, text=True, check=False
        )
        if update.returncode != 0:
            raise HarnessError(f"cannot fetch {package}: apt-get update: {_last(update.stderr)}")
        result = _apt_download(package, folder)
    if result.returncode != 0:
        raise HarnessError(f"cannot fetch {package}: apt-get download: {_last(result.stderr)}")
    debs = sorted(folder.glob("*.deb"))
    if len(debs) != 1:
        raise HarnessError(f"cannot fetch {package}: apt-get download left {len(debs)} .deb files")
    return debs[0]


def _apt_download(package: str, folder: Path) -> subprocess.CompletedProcess[str]:
    command = ["apt-get", *_APT_OPTIONS, "download", package]
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, check=False)


def _lists_stale(stderr: str) -> bool:
    missing = not any(APT_LISTS.glob("*_Packages*"))
    return missing or "404" in stderr


def _unpack(deb: Path, root: Path) -> None:
    """``dpkg -x`` into a scratch folder, then rename it into place (rule 2)."""
    scratch = root.with_name("root.partial")
    for stale in (scratch, root):
        if stale.exists():
            shutil.rmtree(stale)
    done = subprocess.run(
        ["dpkg", "-x", str(deb), str(scratch)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise HarnessError(f"cannot unpack {deb.name}: dpkg -x: {_last(done.stderr)}")
    scratch.rename(root)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _last(stderr: str) -> str:
    """The tool's last complaint (apt prints warnings first, the error last)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E:")]
    return (errors or lines or ["failed without a message"])[-1]
