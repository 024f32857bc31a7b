"""Scenario strings never run, nor rewrite, an MTA's configuration (issue 9, finding 1).

Rules kept here:
- Each adapter's configuration writer (``write_config``) is called directly, not through
  the scenario loader (which refuses some of these first), with every payload in every
  scenario value that reaches it: host name, domain and users as receiver; HELO name,
  domain and users as sender.  Either the adapter refuses the value (``accepts`` and the
  writer alike, one line naming the value), or it writes a configuration that the program
  consuming it then reads for real (m4, run by the writer itself; ``exim -bV``, ``-bP``,
  ``-be``, ``-bt``; ``postconf -x``, ``postmap -q``; ``smtpd -n``), and that program sees
  the value literally.
- The sentinel: a payload that runs a command runs ``hit``, which leaves a file in
  ``hits/`` (mode 1777: Exim runs it as Debian-exim); with the real writers ``hits/``
  stays empty.  Both live in a 0755 folder made for the test (pytest's tmp dirs are 0700,
  closed to Debian-exim), removed afterwards.
- Positive controls: the same payloads written unquoted, as main's writers wrote them, do
  run the sentinel (m4, Exim's ``-bt`` and a real delivery, OpenSMTPD at start-up) or do
  rewrite the configuration (Postfix: the value expands, a newline adds a parameter), so
  this test can fail.
- Real sessions in a lab (root): each MTA as receiver gets mail for users holding payloads
  (at RCPT Exim routes them: where its expansions run), stored in a folder of their own;
  Exim as receiver gets the payload as HELO name, and Exim as sender says it as its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.lab import Lab
from harness.mta import debs, exim, opensmtpd, postfix, quoting, sendmail
from harness.mta.base import MtaAdapter, Site, adapters
from harness.runner import resolver_for
from harness.scenario import load_scenario, scenario_from_data
from harness.smtp.sender import Sender

pytestmark = pytest.mark.lab  # root: the writers chown to the MTAs' users, Exim drops to its own

MTAS = ("postfix", "exim", "opensmtpd", "sendmail")
PLAIN = {"host name": "mail.receiver.com", "domain": "receiver.com", "user": "c3po"}
SENDER_PLAIN = {"host name": "mail.sender.com", "domain": "sender.com", "user": "luke"}
KEYS = [("receiver", "host name"), ("receiver", "domain"), ("receiver", "user")]
KEYS += [("sender", "host name"), ("sender", "domain"), ("sender", "user")]
HIT = "@HIT@"  # replaced by the sentinel command's path


def payloads() -> dict[str, str]:
    """Name -> payload (``HIT`` stands for the sentinel's path)."""
    run = f"${{run{{{HIT}}}}}"
    return {
        "m4-esyscmd": f"esyscmd({HIT})",
        "m4-quote": f"mail.receiver.com')esyscmd(`{HIT}')define(`zz",
        "m4-dnl": "dnl",
        "m4-local-config": "LOCAL_CONFIG",
        "m4-words-host": "dnl.divert.m4exit.com",
        "exim-run": run,
        "exim-no-expansion": f"\\N{run}\\N",
        "exim-macro": "_HAVE_TLS",
        "exim-list": "c3po : <; ::!*",
        "postfix-param": "$config_directory",
        "postfix-brace": "${config_directory}",
        "postfix-paren": "$(queue_directory)",
        "smtpd-quote": 'x" action "local',
        "smtpd-backslash": "x\\",
        "smtpd-format": "%{user.username}",
        "table-blank": "a b",
        "table-colon": "a:b",
        "table-comment": "#c3po",
        "path": "../../etc/passwd",
        "newline-m4": f"x\nesyscmd({HIT})",
        "newline-smtpd": f'mail.receiver.com\nfilter "hit" proc-exec "{HIT}"',
        "newline-postfix": "mail.receiver.com\nmynetworks = 0.0.0.0/0",
        "crlf": "x\r\ny",
        "nul": "x\x00y",
    }


@dataclasses.dataclass
class Sentinel:
    """``hit``, a command that leaves a file in ``hits`` each time it runs."""

    folder: Path

    @property
    def hit(self) -> Path:
        return self.folder / "hit"

    @property
    def hits(self) -> list[str]:
        return sorted(os.listdir(self.folder / "hits"))

    def arm(self, payload: str) -> str:
        return payload.replace(HIT, str(self.hit))


@pytest.fixture
def sentinel(open_folder: Path) -> Sentinel:
    (open_folder / "hits").mkdir()
    (open_folder / "hits").chmod(0o1777)
    found = Sentinel(open_folder)
    touch = f'touch "{open_folder}/hits/$(id -un)-$$"'
    # then, as an OpenSMTPD filter must, read its input to the end (never a terminal's)
    found.hit.write_text(f"#!/bin/sh\n{touch}\n[ -t 0 ] || exec cat >/dev/null\n")
    found.hit.chmod(0o755)
    return found


@pytest.fixture(scope="module", autouse=True)
def prepared() -> None:
    for adapter in adapters().values():
        adapter.prepare()


def site_with(lab: Lab, role: str, key: str, value: str, folder: Path) -> Site:
    """The role's plain site with ``key`` set to ``value`` (a user beside the plain one)."""
    names = dict(PLAIN if role == "receiver" else SENDER_PLAIN)
    users = (names["user"], value) if key == "user" else (names["user"],)
    if key != "user":
        names[key] = value
    return Site(lab, role, folder, names["host name"], names["domain"], users)


def plain_site(lab: Lab, role: str, folder: Path) -> Site:
    names = PLAIN if role == "receiver" else SENDER_PLAIN
    return Site(lab, role, folder, names["host name"], names["domain"], (names["user"],))


def refusal(adapter_class: type[MtaAdapter], role: str, site: Site) -> str | None:
    try:
        adapter_class.accepts(role, site.hostname, site.domain, site.users)
    except HarnessError as exc:
        return str(exc)
    return None


# --- every payload, every key, every writer ----------------------------------------------------
CASES = [
    pytest.param(mta, role, key, name, id=f"{mta}-{role}-{key.replace(' ', '')}-{name}")
    for mta in MTAS
    for role, key in KEYS
    for name in payloads()
]


@pytest.mark.parametrize(("mta", "role", "key", "name"), CASES)
def test_the_writer_refuses_the_value_or_its_consumer_reads_it_literally(
    mta: str, role: str, key: str, name: str, sentinel: Sentinel
) -> None:
    value = sentinel.arm(payloads()[name])
    site = site_with(Lab(), role, key, value, sentinel.folder / mta)
    adapter = adapters()[mta](site, role)
    refused = refusal(type(adapter), role, site)
    if refused is not None:
        assert "\n" not in refused and refused.startswith(f"{mta}: ")
        assert repr(value) in refused
        with pytest.raises(HarnessError) as error:
            adapter.write_config()
        assert str(error.value) == refused  # the writer refuses the same
        assert not site.folder.exists()  # before writing anything
    else:
        adapter.write_config()
        CONSUMERS[mta](adapter, key, value)
        for user in site.users:
            box = adapter.mailboxes / quoting.mailbox_folder(user)
            assert box.parent == adapter.mailboxes and box.name not in ("", ".", "..")
    assert sentinel.hits == []


def _sendmail_reads(adapter: MtaAdapter, key: str, value: str) -> None:
    """m4 ran in the writer, on a source that holds no value at all: the same source as
    for the plain names; sendmail.cf carries the value literally on its lines."""
    assert isinstance(adapter, sendmail.Adapter)
    plain = sendmail.Adapter(plain_site(adapter.site.lab, adapter.role, Path("/p")), adapter.role)
    source = plain._mc(quoting.cf_placeholders(plain._cf_values()))
    assert (adapter.folder / "sendmail.mc").read_text() == source
    cf = adapter.cf.read_text().splitlines()
    site = adapter.site
    assert f"Dj{site.hostname}" in cf
    assert f"C{{w}}{site.domain}" in cf and f"C{{w}}{site.hostname}" in cf
    assert "C{HarnessUsers}" + " ".join(site.users) in cf


def _exim_reads(adapter: MtaAdapter, key: str, value: str) -> None:
    """Exim parses the configuration, prints the names as given, expands
    ``$primary_hostname`` (what helo_data does) to the name itself, and routes every user
    to its mailbox (``-bt``: the routers' expansions run)."""
    assert isinstance(adapter, exim.Adapter)
    base = [*adapter._exim()]
    assert exim._run([*base, "-bV"]).returncode == 0
    shown = exim._run([*base, "-bP", "primary_hostname", "qualify_domain"]).stdout
    assert shown == f"primary_hostname = {adapter.site.hostname}\n" + (
        f"qualify_domain = {adapter.site.domain}\n"
    )
    assert exim._run([*base, "-be", "$primary_hostname"]).stdout == adapter.site.hostname + "\n"
    if key == "user":
        quoted = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        routed = exim._run([*base, "-bt", f"{quoted}@{adapter.site.domain}"]).stdout
        assert "router = local_users, transport = local_maildir" in routed, routed


def _postfix_reads(adapter: MtaAdapter, key: str, value: str) -> None:
    """postconf expands main.cf to the names as given; postmap finds each user's key (with
    a main.cf of its own: ours names lab addresses this namespace does not have)."""
    assert isinstance(adapter, postfix.Adapter)
    site, etc, tree = adapter.site, str(adapter.etc), adapter.root
    shown = debs.run(tree, "postconf", "-c", etc, "-x", "-h", "myhostname", "mydomain")
    assert shown.stdout == f"{site.hostname}\n{site.domain}\n"
    alone = adapter.folder / "postmap"
    alone.mkdir()
    (alone / "main.cf").write_text("compatibility_level = 3.6\n")
    table = f"texthash:{etc}/mailboxes"
    for user in site.users:
        found = debs.run(tree, "postmap", "-c", str(alone), "-q", f"{user}@{site.domain}", table)
        assert found.stdout == f"{quoting.mailbox_folder(user)}/\n", found.stderr


def _opensmtpd_reads(adapter: MtaAdapter, key: str, value: str) -> None:
    """smtpd parses smtpd.conf and loads the userbase table."""
    assert isinstance(adapter, opensmtpd.Adapter)
    tree = debs.unpacked("opensmtpd")
    config = str(adapter.folder / "smtpd.conf")
    done = debs.run(tree, "smtpd", "-n", "-f", config, env=debs.environment(*opensmtpd._trees()))
    assert done.returncode == 0, done.stderr
    keys = [line.split(" ", 1)[0] for line in (adapter.folder / "users").read_text().splitlines()]
    assert keys == list(adapter.site.users)


CONSUMERS = {
    "sendmail": _sendmail_reads,
    "exim": _exim_reads,
    "postfix": _postfix_reads,
    "opensmtpd": _opensmtpd_reads,
}


def test_the_writers_accept_what_the_grammar_allows_and_matters() -> None:
    """Not a refusal for everything: each MTA carries the names it can (the grammar's
    own ``$ { } / _`` among them where its language allows)."""
    accepted = {
        mta: sorted(
            name
            for name, payload in payloads().items()
            if refusal(
                adapters()[mta],
                "receiver",
                site_with(Lab(), "receiver", "user", payload, Path("/x")),
            )
            is None
        )
        for mta in MTAS
    }
    assert {"exim-run", "exim-macro", "postfix-param", "path"} <= set(accepted["exim"])
    assert {"exim-run", "postfix-param", "smtpd-format", "path"} <= set(accepted["postfix"])
    assert {"exim-run", "smtpd-backslash", "smtpd-format", "path"} <= set(accepted["opensmtpd"])
    assert accepted["sendmail"] == ["m4-dnl", "m4-local-config", "m4-words-host"]


@pytest.mark.parametrize("user", ["../x", "/etc", "a/b", ".", "..", "C3PO", "c3po", "=63", "", "é"])
def test_a_mailbox_folder_is_one_component_and_distinct(user: str) -> None:
    folder = quoting.mailbox_folder(user)
    assert "/" not in folder and folder not in ("", ".", "..")
    others = {quoting.mailbox_folder(u) for u in ("../x", "/etc", "a/b", ".", "..", "=63", "é")}
    assert (folder in others) == (user in ("../x", "/etc", "a/b", ".", "..", "=63", "é"))
    assert quoting.mailbox_folder(user.upper()) == folder


# --- positive controls: the same payloads unquoted --------------------------------------------
def _unquoted_m4(adapter: sendmail.Adapter) -> str:
    """The m4 source as main wrote it: the values themselves where the tokens are."""
    values = adapter._cf_values()
    source = adapter._mc(quoting.cf_placeholders(values))
    for name, token in quoting.cf_placeholders(values).items():
        source = source.replace(token, values[name])
    return source


M4_CONTROLS = [
    (key, name)
    for key in ("host name", "domain", "user")
    for name in ("m4-esyscmd", "m4-quote", "newline-m4")
    # LOCAL_DOMAIN's expansion ends in dnl, which eats what follows its closing quote
    if (key, name) != ("domain", "m4-quote")
]


@pytest.mark.parametrize(("key", "name"), M4_CONTROLS)
def test_control_m4_runs_the_payload_written_unquoted(
    key: str, name: str, sentinel: Sentinel
) -> None:
    site = site_with(Lab(), "receiver", key, sentinel.arm(payloads()[name]), sentinel.folder / "m")
    source = sentinel.folder / "unquoted.mc"
    source.write_text(_unquoted_m4(sendmail.Adapter(site, "receiver")))
    m4 = debs.unpacked("m4") / "usr/bin/m4"
    subprocess.run([str(m4), str(source)], capture_output=True, check=False)
    assert sentinel.hits and all(hit.startswith("root-") for hit in sentinel.hits)


def _unquoted_exim(adapter: exim.Adapter) -> None:
    """Main's writer: the users and the domain written into the lists themselves."""
    site = adapter.site
    text = adapter.config.read_text()
    text = text.replace("lsearch;$config_dir/users", " : ".join(site.users))
    text = text.replace("lsearch;$config_dir/domains", site.domain)
    adapter.config.write_text(text.replace("$primary_hostname", site.hostname))


@pytest.mark.parametrize("key", ["domain", "user"])
def test_control_exim_routing_runs_the_payload_written_unquoted(
    key: str, sentinel: Sentinel
) -> None:
    value = sentinel.arm(payloads()["exim-run"])
    adapter = exim.Adapter(
        site_with(Lab(), "receiver", key, value, sentinel.folder / "e"), "receiver"
    )
    adapter.write_config()
    _unquoted_exim(adapter)
    exim._run([*adapter._exim(), "-bt", "zz@receiver.com"])
    assert [hit.split("-")[0] for hit in sentinel.hits] == ["Debian"]  # Debian-exim


@pytest.mark.parametrize("name", ["postfix-param", "postfix-brace", "postfix-paren"])
def test_control_postconf_expands_the_payload_written_unquoted(
    name: str, sentinel: Sentinel
) -> None:
    value, tree, etc = payloads()[name], debs.unpacked("postfix"), sentinel.folder
    (etc / "main.cf").write_text(f"myhostname = {value}\n")
    unquoted = debs.run(tree, "postconf", "-c", str(etc), "-x", "-h", "myhostname").stdout
    assert unquoted.startswith("/")  # config_directory or queue_directory
    (etc / "main.cf").write_text(f"myhostname = {quoting.postfix_value(value)}\n")
    quoted = debs.run(tree, "postconf", "-c", str(etc), "-x", "-h", "myhostname").stdout
    assert quoted == value + "\n"


def test_control_a_newline_written_unquoted_adds_a_postfix_parameter(sentinel: Sentinel) -> None:
    etc, tree = sentinel.folder, debs.unpacked("postfix")
    (etc / "main.cf").write_text(
        f"mynetworks = 127.0.0.0/8\nmyhostname = {payloads()['newline-postfix']}\n"
    )
    shown = debs.run(tree, "postconf", "-c", str(etc), "-h", "mynetworks").stdout
    assert shown == "0.0.0.0/0\n"


def test_exim_string_survives_exims_own_reading() -> None:
    """``exim_string`` against the real parser: macros, quotes, backslashes, dollars."""
    nasty = 'a_HAVE_TLS"b\\c${run{x}}\\N_OPT_X'
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder, "exim.conf")
        config.write_text(f"primary_hostname = {quoting.exim_string(nasty)}\n")
        shown = exim._run([str(exim.COPY), "-C", str(config), "-bP", "primary_hostname"])
    assert shown.stdout == f"primary_hostname = {nasty}\n"


# --- real sessions (root, a lab) --------------------------------------------------------------
SESSION_USERS = [f"${{run{{{HIT}}}}}", "dnl", "LOCAL_CONFIG", "_HAVE_TLS", "esyscmd"]
SESSION_USERS += ["$config_directory", "a/b", "#c3po", "%{user.username}"]
# addresses an MTA's own rules rewrite before any lookup: not the configuration's doing
REWRITTEN = {"postfix": {"%{user.username}"}}  # allow_percent_hack: user%domain -> user@domain


def _receiver(lab: Lab, mta: type[MtaAdapter], folder: Path, sentinel: Sentinel) -> MtaAdapter:
    """``mta`` as receiver for c3po and every session user it can carry."""
    users = [sentinel.arm(u) for u in SESSION_USERS]
    site = Site(lab, "receiver", folder, "mail.receiver.com", "receiver.com", ("c3po",))
    carried = [
        u
        for u in users
        if u not in REWRITTEN.get(mta.name, set())
        and refusal(mta, "receiver", dataclasses.replace(site, users=(u,))) is None
    ]
    return mta(dataclasses.replace(site, users=("c3po", *carried)), "receiver")


def _send(lab: Lab, recipients: list[str], helo: str = "mail.sender.com") -> dict[str, object]:
    seed = load_scenario(None)
    config = dataclasses.replace(
        seed.sender, recipients=tuple(recipients), vrfy=False, helo_name=helo
    )
    sender = Sender(
        config, resolve=resolver_for(lab, "sender"), socket_factory=lab.socket_factory("sender")
    )
    return asyncio.run(sender.send()).outcomes


@pytest.mark.parametrize("mta", MTAS)
def test_receivers_store_mail_for_users_holding_payloads(
    mta: str, lab: Lab, dns: object, sentinel: Sentinel
) -> None:
    """Every user the MTA carries gets the message in its own folder; at RCPT (where
    Exim routes, expanding its lists) nothing runs."""
    adapter = _receiver(lab, adapters()[mta], sentinel.folder / mta, sentinel)
    users = adapter.site.users
    assert len(users) > 1 + (mta == "sendmail")  # some payloads, beyond c3po
    with adapter:
        outcomes = _send(lab, [f"{u}@receiver.com" for u in users])
        _settle(adapter, users)
        boxes = {user: adapter.mailbox(user) for user in users}
    assert {str(o.status) for o in outcomes.values()} == {"delivered"}, outcomes
    assert {user: len(box) for user, box in boxes.items()} == dict.fromkeys(users, 1)
    assert sentinel.hits == []


def _settle(adapter: MtaAdapter, users: tuple[str, ...]) -> None:
    deadline = time.monotonic() + 20
    while not (adapter.idle() and all(adapter.mailbox(u) for u in users)):
        assert time.monotonic() < deadline, adapter.last_log_line()
        time.sleep(0.05)


class _UnquotedExim(exim.Adapter):
    """Exim configured as main's writer did: values written into lists and helo_data."""

    def _write_config(self) -> None:
        super()._write_config()
        _unquoted_exim(self)


def test_control_exim_at_rcpt_runs_a_user_written_unquoted(
    lab: Lab, dns: object, sentinel: Sentinel
) -> None:
    adapter = _receiver(lab, _UnquotedExim, sentinel.folder / "exim", sentinel)
    with adapter:
        _send(lab, ["c3po@receiver.com"])
    assert [hit.split("-")[0] for hit in sentinel.hits] == ["Debian"]


def test_exim_as_receiver_takes_a_helo_payload_as_a_name(
    lab: Lab, dns: object, sentinel: Sentinel
) -> None:
    adapter = _receiver(lab, exim.Adapter, sentinel.folder / "exim", sentinel)
    with adapter:
        _send(lab, ["c3po@receiver.com"], helo=sentinel.arm(payloads()["exim-run"]))
    assert sentinel.hits == []


@pytest.mark.parametrize("adapter_class", [exim.Adapter, _UnquotedExim], ids=["real", "control"])
def test_exim_as_sender_says_a_helo_payload_as_its_name(
    adapter_class: type[exim.Adapter],
    lab: Lab,
    dns: object,
    smtp_receiver: object,
    sentinel: Sentinel,
) -> None:
    """The HELO name is ``helo_data``, expanded at each connection: with the real writer
    the payload goes on the wire as it is, unquoted it runs."""
    helo = sentinel.arm(payloads()["exim-run"])
    site = Site(lab, "sender", sentinel.folder / "exim", helo, "sender.com", ("luke",))
    adapter = adapter_class(site, "sender")
    receiver = smtp_receiver()

    async def exchange() -> None:
        async with receiver:
            await receiver.start(lab.host("receiver").ipv4, 25)
            with adapter:
                message = load_scenario(None).sender.message
                await asyncio.to_thread(
                    adapter.submit, "luke@sender.com", ["c3po@receiver.com"], message
                )
            await receiver.idle()

    asyncio.run(exchange())
    said = [e["line"] for e in receiver.log.entries if e["kind"] == "command"]
    if adapter_class is exim.Adapter:
        assert said[0] == f"EHLO {helo}"
        assert sentinel.hits == []
    else:
        assert [hit.split("-")[0] for hit in sentinel.hits] == ["Debian"]
        assert said[0] == "EHLO "  # the command's output, empty


def _main_smtpd_conf(adapter: opensmtpd.Adapter, users: Path, domain: str) -> str:
    """smtpd.conf as main's writer wrote it: the names in the text as they are."""
    site = adapter.site
    return (
        f"table users file:{users}\n"
        f"listen on {site.address} port {site.port} hostname {site.hostname}\n"
        f'action "local" maildir "{opensmtpd.MAILBOXES}/%{{user.username}}" userbase <users>\n'
        f'match from any for domain "{domain}" action "local"\n'
    )


class _UnquotedOpensmtpd(opensmtpd.Adapter):
    """OpenSMTPD configured as main's writer did, with ``domain`` for its domain."""

    domain = ""

    def _config(self, users: Path) -> str:
        return _main_smtpd_conf(self, users, self.domain)


def test_control_opensmtpd_runs_a_domain_written_unquoted_at_start(
    lab: Lab, dns: object, sentinel: Sentinel
) -> None:
    """A quote and a newline in the domain add a filter, which smtpd starts at once."""
    breaker = f'receiver.com" action "local"\nfilter "hit" proc-exec "{sentinel.hit}"\n'
    breaker += 'match from any for domain "x'
    with pytest.raises(HarnessError, match=r"^opensmtpd: domain 'receiver.com\" action"):
        opensmtpd.Adapter.accepts("receiver", "mail.receiver.com", breaker, ("c3po",))
    site = Site(lab, "receiver", sentinel.folder / "o", "mail.receiver.com", "receiver.com")
    adapter = _UnquotedOpensmtpd(dataclasses.replace(site, users=("c3po",)), "receiver")
    adapter.domain = breaker
    with adapter:
        deadline = time.monotonic() + 10
        while not sentinel.hits:
            assert time.monotonic() < deadline, adapter.last_log_line()
            time.sleep(0.05)


KNOBS = [("receiver", "tls"), ("receiver", "certificate"), ("sender", "starttls")]
KNOBS += [("sender", "timeouts")]  # the TLS and timeout knobs: each reaches every adapter


@pytest.mark.parametrize(("section", "key"), KNOBS)
@pytest.mark.parametrize("name", sorted(payloads()))
def test_a_knob_that_reaches_an_mta_is_refused_at_load_unless_one_of_its_words(
    section: str, key: str, name: str, tmp_path: Path
) -> None:
    """The knobs reach the adapters as one of a closed set of words, which the adapters map
    to their own constants; a payload is refused at load, in one line naming key and value,
    before any lab or configuration exists."""
    payload = payloads()[name].replace(HIT, "/bin/true")
    data = {section: {"mta": "postfix", key: payload}}
    with pytest.raises(HarnessError) as refused:
        scenario_from_data(data, tmp_path / "knob.toml")
    message = str(refused.value)
    assert f"{section}.{key}" in message and "\n" not in message and "\r" not in message
