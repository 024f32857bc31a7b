"""``--emit-scenario FILE``: a captured session as a scenario a user can edit and run.

Rules kept here:

- The scenario is what ``--as server`` runs (``run.in_lab``): the captured server's
  greeting, users, domains and replies as ``[[receiver.replies]]`` (``nth`` per
  occurrence), the captured client's HELO, envelope, close and message as ``[sender]``
  (content it would not send so as a raw ``[[sender.script]]`` step); the message goes
  in a file of its own next to the scenario (``<FILE stem>.eml``), byte for byte.
- The scenario's DNS data (its zones folder, made absolute, and its ``records``,
  ``no_glue``, ``glue`` and ``faults``) is kept, and so are its ``[[hosts]]`` and
  ``[network]`` (the hosts its records name, the faults on their links), both peers'
  ``timeout_ms`` and the sender's ``starttls`` policy (what it does at a 454 or a
  STARTTLS not offered), so the emitted scenario's lab answers and fails as the one the session
  was captured in (``--rerun`` runs it).
- Every string is written as a TOML basic string (JSON's escapes are TOML's), and the file
  is loaded back with ``load_scenario`` before it is reported written: a captured value the
  scenario grammar refuses (a reply text that is not printable ASCII, say) is a one-line
  ``HarnessError`` naming the file and key, never a file that will not load.
"""

from __future__ import annotations

import json
from pathlib import Path

import tomli_w

from harness.errors import HarnessError
from harness.scenario import Scenario, load_scenario
from harness.smtp.policy import ReplyRule
from harness.smtp.sender import ScriptStep

DNS_KEPT = ("records", "no_glue", "glue", "faults")  # [dns] keys besides zones
LAB_KEPT = ("hosts", "network")  # the given lab's hosts and link faults


def _s(value: str) -> str:
    return json.dumps(value)


def _strings(values: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(_s(v) for v in values) + "]"


def scenario_toml(scenario: Scenario, source: str, message: Path) -> str:
    receiver, sender = scenario.receiver, scenario.sender
    lines = [
        f"# The session of {source}, as smtp-harness replay --emit-scenario wrote it.",
        _dns(scenario).rstrip("\n"),  # first: its top-level keys (hosts) before any table
        "",
        "[scenario]",
        f"name = {_s('replay-' + Path(source).stem[:40])}",
        f"description = {_s('the captured session of ' + Path(source).name)}",
        "",
        "[receiver]",
        f"hostname = {_s(receiver.hostname)}",
        f"timeout_ms = {round(receiver.timeout * 1000)}",
        f"greeting = {_s(receiver.greeting)}",
        f"users = {_strings(receiver.users)}",
        f"domains = {_strings(receiver.domains)}",
        "",
        "[sender]",
        f"helo = {_s(sender.helo_name)}",
        f"ehlo = {str(sender.ehlo).lower()}",
        f"vrfy = {str(sender.vrfy).lower()}",
        f"half_close = {str(sender.half_close).lower()}",
        f"mail_from = {_s(sender.mail_from)}",
        f"recipients = {_strings(sender.recipients)}",
        f"message = {_s(message.name)}",
        f"timeout_ms = {round(sender.timeout * 1000)}",
        f"starttls = {_s(sender.starttls)}",
    ]
    for step in sender.script:
        lines += ["", *_step(step)]
    for rule in receiver.rules:
        lines += ["", *_rule(rule)]
    return "\n".join(lines) + "\n"


def _dns(scenario: Scenario) -> str:
    """``[dns]``, and the given ``[[hosts]]`` and ``[network]`` (rules above)."""
    given = scenario.data.get("dns", {})
    kept = {k: given[k] for k in DNS_KEPT if given.get(k)}
    lab = {k: scenario.data[k] for k in LAB_KEPT if scenario.data.get(k)}
    return tomli_w.dumps({"dns": {"zones": str(scenario.zones_dir.resolve()), **kept}, **lab})


def _step(step: ScriptStep) -> list[str]:
    """A raw step (the only kind ``server.py`` makes): its bytes as latin-1 characters, at
    the command its ``argument`` names."""
    assert isinstance(step.send, bytes)
    argument = [] if step.argument is None else [f"argument = {_s(step.argument)}"]
    return [
        "[[sender.script]]",
        f"at = {_s(step.at)}",
        f"position = {_s(step.position)}",
        *argument,
        f"raw = {_s(step.send.decode('latin-1'))}",
        f"reply = {str(step.reply).lower()}",
    ]


def _rule(rule: ReplyRule) -> list[str]:
    """A rule as ``server.py`` makes them: a code and text, or raw bytes and a reset."""
    lines = ["[[receiver.replies]]", f"on = {_s(rule.on)}", f"nth = {rule.nth}"]
    if rule.raw is not None:
        return [
            *lines,
            f"raw = {_s(rule.raw.decode('latin-1'))}",
            f"reset = {str(rule.reset).lower()}",
        ]
    text = rule.text if isinstance(rule.text, tuple | list) else (rule.text or "",)
    return [*lines, f"code = {rule.code}", f"text = {_strings(list(text))}"]


def emit_scenario(scenario: Scenario, source: str, path: Path) -> Scenario:
    """Write the scenario and its message; the scenario as loaded back (rules above)."""
    message = path.with_suffix(".eml")
    try:
        message.write_bytes(scenario.sender.message)
        path.write_text(scenario_toml(scenario, source, message), encoding="utf-8")
    except OSError as exc:
        raise HarnessError(f"{exc.filename}: cannot write: {exc.strerror or exc}") from None
    return load_scenario(path)
