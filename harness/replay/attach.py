"""``replay CAPTURE --as client --lab-id ID --target HOST``: into a running ``lab up`` lab.

Rules kept here:

- The lab is one ``lab up`` made (a registry record of purpose ``up``) whose owner is
  alive; the client is its sender host (the scenario's ``[sender] host``), the target one
  of its hosts, by name.  Anything else (an address, a name no host of that lab has, a
  lab that is not up, a host without a documentation address) is a one-line
  ``HarnessError`` (exit 2) before a byte is sent: nothing outside a lab is a target.
- The hosts' addresses are read from their own namespaces (``ip -json address``, global
  scope), never assumed from a topology: the lab may have been brought up from another
  scenario.  The target's IPv4 address is checked again as a documentation address
  (``harness.grammar``).
- Nothing of the running lab is started, stopped or changed: no DNS server, no receiver,
  no link fault; the replay only opens its client's sockets in the sender host and
  captures the lab's bridge for its own ladder (a ``lab up --capture`` goes on beside it).
- The target's mail is the lab's (in the ``lab up`` folder): the replay does not read it,
  says so in place of what was stored, and its smuggling verdict is n/a saying so.
- The rest is ``run.py``'s: the replay client, the judgement, the run folder, the verdict.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness import signals
from harness.capture.live import Capture
from harness.checks.base import not_applicable
from harness.errors import HarnessError, InternalFault
from harness.grammar import documentation_address
from harness.lab import netns
from harness.lab.registry import Record, all_records
from harness.replay.client import ReplayClient
from harness.replay.run import ReplayOptions, ReplayResult, judge_replay, prepare, write_record
from harness.scenario import Scenario
from harness.smtp.peer import EventLog

NOT_READ = "the running lab's receiver keeps its own mail (in its `lab up` folder): not read"


@dataclass(frozen=True)
class RunningLab:
    """A lab ``lab up`` keeps running, as the replay and the capture use it."""

    record: Record
    addresses: dict[str, list[str]]  # host name -> its global addresses, IPv4 first

    @property
    def id(self) -> str:
        return self.record.lab_id

    @property
    def lan_ns(self) -> str:  # what ``Capture`` opens
        return f"{self.id}-lan"

    def host(self, name: str, option: str) -> str:
        if name not in self.record.hosts:
            hosts = ", ".join(self.record.hosts)
            raise HarnessError(
                f"{option} {name!r}: lab {self.id} has no such host (its hosts: {hosts}); "
                "a replay goes only from and to a lab's hosts"
            )
        return name

    def ipv4(self, name: str, option: str) -> str:
        found = [a for a in self.addresses[self.host(name, option)] if ":" not in a]
        if not found:
            raise HarnessError(
                f"{option} {name!r}: host {name} of lab {self.id} has no IPv4 address"
            )
        documentation_address(found[0], f"{option} {name!r}", 4)
        return found[0]

    def names(self) -> dict[str, str]:
        return {a: host for host, addrs in self.addresses.items() for a in addrs}

    def socket_factory(self, host: str) -> netns.SocketFactory:
        return netns.socket_factory(self.record.hosts[host])


def running_lab(lab_id: str) -> RunningLab:
    """The running ``lab up`` lab ``lab_id``, its hosts' addresses read (rules above)."""
    found = [r for r in all_records() if r.lab_id == lab_id and r.purpose == "up"]
    if not found or not found[0].owner_alive():
        raise HarnessError(
            f"--lab-id {lab_id!r}: no running lab started by `lab up` (see `smtp-harness lab list`)"
        )
    record = found[0]
    return RunningLab(record, {host: _addresses(ns) for host, ns in record.hosts.items()})


def _addresses(namespace: str) -> list[str]:
    argv = ["ip", "-netns", namespace, "-json", "address", "show", "scope", "global"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise HarnessError(
            f"lab host {namespace}: cannot read its addresses: {done.stderr.strip()}"
        )
    infos = [i for link in json.loads(done.stdout) for i in link.get("addr_info", [])]
    ordered = sorted(infos, key=lambda i: i.get("family") != "inet")
    return [i["local"] for i in ordered if i.get("family") in ("inet", "inet6")]


def replay_into(
    capture: Path,
    scenario: Scenario,
    folder: Path,
    options: ReplayOptions,
    lab_id: str,
    target: str,
) -> ReplayResult:
    """The captured client side from the running lab's sender host to ``target``."""
    if options.side != "client" or options.mta:
        raise HarnessError(
            "--lab-id: only --as client, the running lab's own receiver answering (no --mta)"
        )
    session, mapping = prepare(capture, scenario, options)
    lab = running_lab(lab_id)
    sender = lab.host(scenario.sender_host, "sender host")
    client_ip, target_ip = lab.ipv4(sender, "sender host"), lab.ipv4(target, "--target")
    folder.mkdir(parents=True, exist_ok=True)
    mappings = mapping.lines(session, (client_ip, sender), (target_ip, target))
    client = ReplayClient(
        session,
        mapping,
        (target_ip, scenario.receiver_port),
        lab.socket_factory(sender),
        timing=options.timing,
        keep_going=options.keep_going,
        log=EventLog(folder / "client.jsonl"),
    )
    result = ReplayResult(session, folder, mappings, "client", client, into=lab.id)
    result.smuggling = not_applicable(NOT_READ)
    try:
        with Capture(lab, folder / "capture.pcapng"):  # type: ignore[arg-type]
            signals.run_async(client.send())
    except HarnessError:
        raise
    except Exception as exc:  # our fault: the verdict is error, with the traceback kept
        result.faults.append(InternalFault.from_exception("replay", exc))
    result.faults += client.internal_faults
    if not result.faults:
        judge_replay(result, mapping, (sender, target), lab.names(), scenario.receiver_port)
    write_record(result)
    return result
