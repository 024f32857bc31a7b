"""``--emit-scenario FILE``: a captured session as a scenario a user can edit and run.

Rules kept here:

- The scenario is what ``--as server`` runs (``run.in_lab``): the captured server's
  greeting and replies as ``[[receiver.replies]]`` (``nth`` per occurrence), the captured
  client's HELO, envelope and message as ``[sender]``; the message goes in a file of its
  own next to the scenario (``<FILE stem>.eml``), byte for byte.
- Every string is written as a TOML basic string (JSON's escapes are TOML's), and the file
  is loaded back with ``load_scenario`` before it is reported written: a captured value the
  scenario grammar refuses (a reply text that is not printable ASCII, say) is a one-line
  ``HarnessError`` naming the file and key, never a file that will not load.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.errors import HarnessError
from harness.scenario import Scenario, load_scenario
from harness.smtp.policy import ReplyRule


def _s(value: str) -> str:
    return json.dumps(value)


def _strings(values: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(_s(v) for v in values) + "]"


def scenario_toml(scenario: Scenario, source: str, message: Path) -> str:
    receiver, sender = scenario.receiver, scenario.sender
    lines = [
        f"# The session of {source}, as smtp-harness replay --emit-scenario wrote it.",
        "[scenario]",
        f"name = {_s('replay-' + Path(source).stem[:40])}",
        f"description = {_s('the captured session of ' + Path(source).name)}",
        "",
        "[dns]",
        f"zones = {_s(str(scenario.zones_dir))}",
        "",
        "[receiver]",
        f"hostname = {_s(receiver.hostname)}",
        f"greeting = {_s(receiver.greeting)}",
        "",
        "[sender]",
        f"helo = {_s(sender.helo_name)}",
        f"ehlo = {str(sender.ehlo).lower()}",
        f"vrfy = {str(sender.vrfy).lower()}",
        f"mail_from = {_s(sender.mail_from)}",
        f"recipients = {_strings(sender.recipients)}",
        f"message = {_s(message.name)}",
    ]
    for rule in receiver.rules:
        lines += ["", *_rule(rule)]
    return "\n".join(lines) + "\n"


def _rule(rule: ReplyRule) -> list[str]:
    text = rule.text if isinstance(rule.text, tuple | list) else (rule.text or "",)
    return [
        "[[receiver.replies]]",
        f"on = {_s(rule.on)}",
        f"nth = {rule.nth}",
        f"code = {rule.code}",
        f"text = {_strings(list(text))}",
    ]


def emit_scenario(scenario: Scenario, source: str, path: Path) -> Scenario:
    """Write the scenario and its message; the scenario as loaded back (rules above)."""
    message = path.with_suffix(".eml")
    try:
        message.write_bytes(scenario.sender.message)
        path.write_text(scenario_toml(scenario, source, message), encoding="utf-8")
    except OSError as exc:
        raise HarnessError(f"{exc.filename}: cannot write: {exc.strerror or exc}") from None
    return load_scenario(path)
