"""Fault rules: make the fake DNS misbehave on purpose, per (name, type).

Rules this module keeps:

* A rule names one owner name (case-insensitive, trailing dot optional), one type
  mnemonic or ``*`` for every type, and one action:
  ``servfail`` · ``refused`` · ``drop`` (no reply at all: the client times out) ·
  ``delay`` (``ms``, then the normal reply) · ``truncate`` (over UDP: TC=1 and no records;
  over TCP: the full reply) · ``fail_times`` (reply ``rcode``, SERVFAIL by default,
  ``times`` times, then normally).
* An exact-type rule beats a ``*`` rule for the same name; adding a rule for a
  (name, type) that already has one replaces it.
* Rules come from plain dicts (a scenario's TOML tables) or from the CLI's
  ``NAME/TYPE=ACTION[:ARG]``; bad ones are one-line ``HarnessError``s naming the key.
* ``FaultRules`` is safe to change from any thread while a server reads it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dnslib import RCODE, DNSError

from harness.dns.zones import Key, name_key, qtype_code
from harness.errors import HarnessError

ACTIONS = ("servfail", "refused", "drop", "delay", "truncate", "fail_times")
# The keys each action accepts beyond name/type/action, with their defaults.
_EXTRA_KEYS: dict[str, dict[str, Any]] = {
    "delay": {"ms": None},
    "fail_times": {"times": None, "rcode": "SERVFAIL"},
}


@dataclass(frozen=True)
class FaultRule:
    """One fault: what to do to queries for ``name``/``type``."""

    name: str
    type: str
    action: str
    ms: int = 0
    times: int = 0
    rcode: str = "SERVFAIL"

    @classmethod
    def from_dict(cls, table: Mapping[str, Any], *, where: str = "fault") -> FaultRule:
        """Build and validate a rule; errors name ``where`` and the key at fault."""
        for key in ("name", "type", "action"):
            if not isinstance(table.get(key), str) or not table[key]:
                raise HarnessError(f"{where}: key {key!r} must be a non-empty string")
        action = table["action"]
        if action not in ACTIONS:
            raise HarnessError(
                f"{where}: key 'action': unknown action {action!r} (one of {', '.join(ACTIONS)})"
            )
        extras = _EXTRA_KEYS.get(action, {})
        unknown = sorted(set(table) - {"name", "type", "action", *extras})
        if unknown:
            raise HarnessError(f"{where}: key {unknown[0]!r} is not allowed for {action!r}")
        values = {key: table.get(key, default) for key, default in extras.items()}
        for key in ("ms", "times"):
            if key in values:
                values[key] = _count(values[key], f"{where}: key {key!r}", key == "times")
        if "rcode" in values:
            values["rcode"] = _rcode_name(values["rcode"], f"{where}: key 'rcode'")
        type_ = table["type"].upper()
        if type_ != "*":
            try:
                qtype_code(type_)
            except HarnessError:
                raise HarnessError(f"{where}: key 'type': unknown DNS type {type_!r}") from None
        name = table["name"].rstrip(".").lower() + "."
        return cls(name=name, type=type_, action=action, **values)

    @classmethod
    def parse(cls, spec: str) -> FaultRule:
        """Parse the CLI form ``NAME/TYPE=ACTION[:ARG]`` (ARG is ``ms`` or ``times``)."""
        target, _, what = spec.partition("=")
        name, _, type_ = target.partition("/")
        action, _, arg = what.partition(":")
        if not (name and type_ and action):
            raise HarnessError(f"--fault {spec!r}: expected NAME/TYPE=ACTION[:ARG]")
        table: dict[str, Any] = {"name": name, "type": type_, "action": action}
        if arg:
            arg_key = {"delay": "ms", "fail_times": "times"}.get(action)
            if arg_key is None or not arg.isdigit():
                raise HarnessError(f"--fault {spec!r}: {action} takes no argument {arg!r}")
            table[arg_key] = int(arg)
        return cls.from_dict(table, where=f"--fault {spec!r}")

    def describe(self) -> str:
        """Short text for logs: ``delay:300``, ``fail_times:2``, ``servfail``."""
        arg = {"delay": self.ms, "fail_times": self.times}.get(self.action)
        return self.action if arg is None else f"{self.action}:{arg}"


class FaultRules:
    """The active rules, and the countdowns of the ``fail_times`` ones."""

    def __init__(self, rules: Iterable[FaultRule | Mapping[str, Any]] = ()) -> None:
        self._lock = threading.Lock()
        self._rules: dict[tuple[Key, str], FaultRule] = {}
        self._left: dict[FaultRule, int] = {}
        for i, rule in enumerate(rules):
            self.add(
                rule
                if isinstance(rule, FaultRule)
                else FaultRule.from_dict(rule, where=f"faults[{i}]")
            )

    def add(self, rule: FaultRule) -> FaultRule:
        """Activate ``rule`` (replacing any rule for the same name and type)."""
        with self._lock:
            self._rules[_slot(rule)] = rule
            self._left[rule] = rule.times
        return rule

    def remove(self, rule: FaultRule) -> None:
        with self._lock:
            if self._rules.get(_slot(rule)) == rule:
                del self._rules[_slot(rule)]
                del self._left[rule]

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._left.clear()

    def __iter__(self):
        return iter(list(self._rules.values()))

    def __len__(self) -> int:
        return len(self._rules)

    def match(self, key: Key, qtype: str) -> FaultRule | None:
        """The rule that fires for this query, if any; counts down ``fail_times`` rules."""
        if not self._rules:
            return None
        with self._lock:
            rule = self._rules.get((key, qtype)) or self._rules.get((key, "*"))
            if rule is None or rule.action != "fail_times":
                return rule
            if self._left[rule] <= 0:
                return None
            self._left[rule] -= 1
            return rule


def _slot(rule: FaultRule) -> tuple[Key, str]:
    return name_key(rule.name), rule.type.upper()


def _count(value: Any, where: str, positive: bool) -> int:
    if value is None:
        raise HarnessError(f"{where} is required")
    minimum = 1 if positive else 0
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise HarnessError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def _rcode_name(value: Any, where: str) -> str:
    try:
        return RCODE[getattr(RCODE, str(value).upper())]
    except DNSError:
        raise HarnessError(f"{where}: unknown rcode {value!r}") from None
