"""The ``timeouts`` knob: "short" reaches each MTA's client as the options its adapter
names (``TIMEOUT_OPTIONS``), read back by the MTA's own configuration reader; "default"
and the receiver role leave the MTA's defaults.  Writing a configuration needs no lab."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import HarnessError, InternalError
from harness.lab import Lab
from harness.mta import debs, exim, postfix, quoting, sendmail
from harness.mta.base import SHORT_TIMEOUTS_S, MtaAdapter, Site
from harness.scenario import scenario_from_text

SECONDS = {f"{s}s" for s in SHORT_TIMEOUTS_S.values()}


def _written(adapter_class: type[MtaAdapter], folder: Path, role: str, timeouts: str):
    names = ("mail.sender.com", "sender.com") if role == "sender" else ("mail.receiver.com",)
    names = names if role == "sender" else (*names, "receiver.com")
    site = Site(Lab(), role, folder, *names, ("luke",), extra={"timeouts": timeouts})
    adapter = adapter_class(site, role)
    adapter.write_config()
    return adapter


def _postfix(adapter: postfix.Adapter) -> dict[str, str]:
    names = [o for options in postfix.Adapter.TIMEOUT_OPTIONS.values() for o in options]
    shown = debs.run(adapter.root, "postconf", "-c", str(adapter.etc), "-h", *names).stdout
    return dict(zip(names, shown.split(), strict=True))


def _exim(adapter: exim.Adapter) -> dict[str, str]:
    shown = exim._run([*adapter._exim(), "-bP", "transport", "remote_smtp"]).stdout
    pairs = (line.partition(" = ") for line in shown.splitlines())
    options = {o for options in exim.Adapter.TIMEOUT_OPTIONS.values() for o in options}
    return {name: value for name, _, value in pairs if name in options}


def _sendmail(adapter: sendmail.Adapter) -> dict[str, str]:
    wanted = {"Timeout.connect", "Timeout.datablock", "Timeout.datafinal"}
    lines = [line[2:].partition("=") for line in adapter.cf.read_text().splitlines()]
    return {name: value for name, _, value in lines if name in wanted}


READERS = {postfix.Adapter: _postfix, exim.Adapter: _exim, sendmail.Adapter: _sendmail}


@pytest.mark.parametrize("adapter_class", list(READERS), ids=lambda a: a.name)
def test_short_timeouts_reach_the_mta_as_it_reads_its_configuration(
    adapter_class: type[MtaAdapter], open_folder: Path
) -> None:
    read = READERS[adapter_class]
    short = read(_written(adapter_class, open_folder / "s", "sender", "short"))
    default = read(_written(adapter_class, open_folder / "d", "sender", "default"))
    receiver = read(_written(adapter_class, open_folder / "r", "receiver", "short"))
    assert short and set(short.values()) <= SECONDS, short
    assert not SECONDS & set(default.values()), default  # the MTA's own, none of ours
    assert receiver == default


@pytest.mark.parametrize("seconds", [0, 3601, 5.0, "5", True])
def test_a_duration_is_one_of_our_whole_numbers_of_seconds(seconds: object) -> None:
    with pytest.raises(InternalError):
        quoting.duration(seconds)  # type: ignore[arg-type]
    assert quoting.duration(5) == "5s"


def test_a_scenario_names_the_knob_by_its_values(tmp_path: Path) -> None:
    text = '[sender]\nmta = "postfix"\ntimeouts = "brief"\n'
    with pytest.raises(HarnessError) as error:
        scenario_from_text(text, tmp_path / "s.toml")
    assert "sender.timeouts" in str(error.value) and "\n" not in str(error.value)
    given = scenario_from_text('[sender]\nmta = "exim"\ntimeouts = "short"\n', tmp_path / "t.toml")
    assert given.mta_knobs["sender"]["timeouts"] == "short"
