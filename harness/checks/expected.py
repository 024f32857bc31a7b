"""The expected matrix: what each MTA version is known to do, and how a result compares.

Rules kept here:
- The file (fixtures/expected-matrix.toml) is ``[MTA."VERSION"]`` tables, each with
  ``package`` (the exact Debian package version the cells were observed with, e.g.
  ``"4.96-15+deb12u11"``) and ``[MTA."VERSION".ROLE]`` tables of ``"check.id" = { verdict
  = "...", reason = "one line" }`` (an observation also gives the ``value`` seen).
  VERSION is an upstream version prefix ("3.7" matches 3.7.11; the longest matching
  prefix wins, "*" matches any); only that one table is used.  A rule check not listed
  is expected to pass; an observation not listed has no recorded value, which is a
  difference until it is recorded.
- Validated whole on load: an unknown verdict, a missing reason, an observation without
  its value (or a rule with one), an unknown check or role, or a check that does not play
  that role is a one-line ``HarnessError`` naming the key.
- A result that differs from its expectation is an improvement when it ranks higher
  (error < fail < n/a < deviation-known < pass, observed), a regression when lower, and
  ``changed`` when an observation's value differs; all three fail the matrix.  A run
  whose Debian package is another version than the table's is judged against the same
  table (backported fixes may change verdicts): ``Expected.written_for`` names the
  version, and the report says "expected file written for X, ran Y" at its top.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from harness.checks.base import ROLES, Check, Kind
from harness.errors import HarnessError
from harness.scenario import FIXTURES
from harness.verdict import Verdict

DEFAULT_EXPECTED = FIXTURES / "expected-matrix.toml"
RANK = {
    Verdict.ERROR: 0,
    Verdict.FAIL: 1,
    Verdict.NA: 2,
    Verdict.KNOWN: 3,
    Verdict.PASS: 4,
    Verdict.OBSERVED: 4,
}
ANY_VERSION = "*"


@dataclass(frozen=True)
class Entry:
    verdict: Verdict
    reason: str
    value: str | None = None  # an observation's recorded value


PASS = Entry(Verdict.PASS, "")
UNRECORDED = Entry(Verdict.OBSERVED, "not recorded yet")

# mta -> version prefix -> role -> check id -> entry
Table = dict[str, dict[str, dict[str, dict[str, Entry]]]]


@dataclass(frozen=True)
class Expected:
    table: Table
    source: str = ""
    packages: dict[tuple[str, str], str] | None = None  # (mta, version prefix) -> Debian's

    def entry(
        self, mta: str, version: str, role: str, check_id: str, kind: Kind = Kind.RULE
    ) -> Entry:
        unlisted = UNRECORDED if kind is Kind.OBSERVATION else PASS
        prefix = self._prefix(mta, version)
        if prefix is None:
            return unlisted
        return self.table[mta][prefix].get(role, {}).get(check_id, unlisted)

    def written_for(self, mta: str, version: str) -> str | None:
        """The Debian package version the table used for ``mta`` ``version`` records."""
        prefix = self._prefix(mta, version)
        return None if prefix is None else (self.packages or {}).get((mta, prefix))

    def _prefix(self, mta: str, version: str) -> str | None:
        fitting = [v for v in self.table.get(mta, {}) if _fits(v, version)]
        return max(fitting, key=lambda v: (v != ANY_VERSION, len(v))) if fitting else None


def _fits(prefix: str, version: str) -> bool:
    return prefix == ANY_VERSION or version == prefix or version.startswith(prefix + ".")


def difference(expected: Entry, actual: Verdict, value: str | None = None) -> str:
    """ "match", "improvement", "regression" or "changed" (an observation's value)."""
    if expected.verdict == actual:
        return "match" if actual is not Verdict.OBSERVED or expected.value == value else "changed"
    return "improvement" if RANK[actual] > RANK[expected.verdict] else "regression"


def load_expected(path: Path, checks: dict[str, Check]) -> Expected:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HarnessError(f"{path}: no such expected-matrix file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise HarnessError(f"{path}: cannot read: {exc}") from None
    try:
        table, packages = _table(data, checks)
    except HarnessError as exc:
        raise HarnessError(f"{path}: {exc}") from None
    return Expected(table, str(path), packages)


def _table(data: dict, checks: dict[str, Check]) -> tuple[Table, dict[tuple[str, str], str]]:
    table: Table = {}
    packages: dict[tuple[str, str], str] = {}
    for mta, versions in data.items():
        for version, roles in _tables(versions, mta).items():
            where = f"{mta}.{version}"
            roles = dict(_tables(roles, where))
            package = roles.pop("package", None)
            if package is not None:
                if not isinstance(package, str) or not package.strip():
                    raise HarnessError(f"{where}.package: a Debian version string required")
                packages[(mta, version)] = package
            table.setdefault(mta, {})[version] = {
                role: _entries(cells, f"{where}.{role}", role, checks)
                for role, cells in roles.items()
            }
    return table, packages


def _entries(cells: object, where: str, role: str, checks: dict[str, Check]) -> dict[str, Entry]:
    if role not in ROLES:
        raise HarnessError(f"{where}: role must be one of {ROLES} (or the key package)")
    return {
        check_id: _entry(value, f"{where}.{check_id}", checks.get(check_id), role)
        for check_id, value in _tables(cells, where).items()
    }


def _tables(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise HarnessError(f"{where}: must be a table")
    return value


def _entry(value: object, where: str, check: Check | None, role: str) -> Entry:
    if check is None:
        raise HarnessError(f"{where}: no such check")
    if role not in check.roles:
        raise HarnessError(f"{where}: the check does not run with the MTA as {role}")
    table = _tables(value, where)
    unknown = set(table) - {"verdict", "reason", "value"}
    if unknown:
        raise HarnessError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    verdict, reason, seen = table.get("verdict"), table.get("reason"), table.get("value")
    if verdict not in set(Verdict):
        raise HarnessError(
            f"{where}.verdict: {verdict!r} is not one of {[str(v) for v in Verdict]}"
        )
    if not isinstance(reason, str) or not reason.strip() or "\n" in reason:
        raise HarnessError(f"{where}.reason: one non-empty line required")
    observation = check.kind is Kind.OBSERVATION
    if verdict == Verdict.OBSERVED and (not observation or not isinstance(seen, str)):
        raise HarnessError(f"{where}: 'observed' is for observations, with the value seen")
    if observation and verdict not in (Verdict.OBSERVED, Verdict.NA, Verdict.ERROR):
        raise HarnessError(f"{where}.verdict: an observation is observed, n/a or error")
    if seen is not None and verdict != Verdict.OBSERVED:
        raise HarnessError(f"{where}.value: only an observed cell has a value")
    return Entry(Verdict(verdict), reason, seen)
