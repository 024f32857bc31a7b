"""Renderers: every format shows every step, between the right hosts, the right way round;
the SVG fits its text, colours replies by class, draws one arrow per packet and brackets
what one packet or one pipelined group carried; the HTML names each step."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest
from ladder_pcaps import (
    DNS,
    HOSTS,
    RECEIVER,
    SEED_LADDER,
    SENDER,
    Capture,
    Tcp,
    mx_answer,
    seed_capture,
)

from harness.errors import HarnessError
from harness.ladder.dissect import dissect
from harness.ladder.model import Ladder
from harness.render import render, svg
from harness.render.style import label

SVG = "{http://www.w3.org/2000/svg}"
REJECTED = (
    b"550 5.1.1 <aibo@receiver.com>: Recipient address rejected: "
    b"User unknown in local recipient table\r\n"
)
GREYLISTED = b"450 4.2.0 <c3po@receiver.com>: Recipient address rejected: greylisted\r\n"
PIPELINED = (
    b"MAIL FROM:<luke@sender.com>\r\nRCPT TO:<aibo@receiver.com>\r\n"
    b"RCPT TO:<c3po@receiver.com>\r\nRCPT TO:<r2d2@receiver.com>\r\nDATA\r\n"
)


@pytest.fixture(scope="module")
def seed(tmp_path_factory) -> Ladder:
    return dissect(seed_capture(tmp_path_factory.mktemp("r") / "seed.pcap"), HOSTS)


@pytest.fixture(scope="module")
def pipelined(tmp_path_factory) -> Ladder:
    """EHLO, then MAIL, three RCPTs and DATA in one packet, their five replies in the next
    (a 550 and a 450 among them); the sender answers the receiver's FIN with one FIN+ACK."""
    cap = Capture()
    cap.dns(SENDER, DNS, mx_answer()[0], reply=False)
    cap.dns(SENDER, DNS, mx_answer()[1], reply=True)
    tcp = Tcp(cap, SENDER, RECEIVER)
    tcp.handshake()
    tcp.send("s", b"220 mail.receiver.com ESMTP\r\n")
    tcp.send("c", b"EHLO mail.sender.com\r\n")
    tcp.send("s", b"250-mail.receiver.com\r\n250 PIPELINING\r\n")
    tcp.send("c", PIPELINED)
    tcp.send("s", b"250 2.1.0 Ok\r\n" + REJECTED + GREYLISTED + b"250 2.1.5 Ok\r\n354 go\r\n")
    tcp.send("c", b"Subject: hi\r\n\r\nhello\r\n.\r\n")
    tcp.send("s", b"250 2.0.0 Ok: queued\r\n")
    tcp.send("c", b"QUIT\r\n")
    tcp.send("s", b"221 2.0.0 Bye\r\n")
    tcp.fin("s")
    tcp.fin("c")  # one packet: the ACK of the receiver's FIN and the sender's own FIN
    tcp.ack("s")
    path = cap.write(tmp_path_factory.mktemp("p") / "pipelined.pcap")
    return dissect(str(path), HOSTS)


def svg_of(ladder: Ladder, **kw) -> ET.Element:
    return ET.fromstring(render(ladder, "svg", **kw).encode())


def step_groups(root: ET.Element) -> dict[int, ET.Element]:
    return {
        int(g.get("id")[9:]): g for g in root.iter(f"{SVG}g") if g.get("id", "")[:9] == "svg-step-"
    }


def arrows(root: ET.Element) -> dict[tuple[int, ...], ET.Element]:
    """Each arrow's shape, by the step numbers it carries."""
    return {
        tuple(int(n) for n in g.get("data-steps").split(", ")): g[0]
        for g in root.iter(f"{SVG}g")
        if g.get("class") == "arrow"
    }


def label_lines(group: ET.Element) -> list[ET.Element]:
    """The label's text elements: those after the number and the time."""
    return [t for t in group.iter(f"{SVG}text")][2:]


def test_text_has_a_column_per_host_and_arrows_that_point_the_right_way(seed):
    lines = render(seed, "text").splitlines()
    header = lines[0]
    assert header.index("mail.sender.com") < header.index("dns") < header.index("mail.receiver.com")
    steps = {int(line[:4]): line for line in lines[2:]}
    assert len(steps) == len(SEED_LADDER)
    assert all(len(line) <= 110 for line in lines)
    helo, greeting, ptr = steps[7], steps[6], steps[8]
    assert "HELO mail.sender.com" in helo and helo.index("──") < helo.index("►")
    assert "◄" in greeting and "►" not in greeting
    # the PTR query goes from the receiver's column left to the DNS column only
    dns_col = header.index("dns") + 1
    assert ptr.index("◄") == dns_col + 1


def test_text_truncates_long_labels_with_an_ellipsis(seed):
    line = render(seed, "text").splitlines()[3]  # the MX answer, longer than its arrow
    assert "MX 10 mail.receiver.com." in line and "…" in line


def test_text_shows_the_frames_that_carried_each_step(seed, pipelined):
    header, _, *rows = render(seed, "text").splitlines()
    assert "frames" in header
    at = header.index("frames")
    frames = {int(row[:4]): row[at : at + 9].strip() for row in rows}
    assert frames == {s.index: ",".join(map(str, s.evidence)) for s in seed.steps}
    assert frames[1] == "1" and "42" in frames[25].split(",")  # the content's last packet
    rows = render(pipelined, "text").splitlines()[2:]
    shared = [row for row in rows if row[at : at + 9].strip() == "12"]
    assert len(shared) == 5  # MAIL, three RCPTs and DATA: one packet


def test_text_puts_lifeline_labels_under_the_host_names(seed):
    name, under = render(seed, "text", lifelines={"mail.receiver.com": "Postfix 3.7.11"}).split(
        "\n"
    )[:2]
    middle = name.index("mail.receiver.com") + len("mail.receiver.com") // 2
    assert abs(under.index("Postfix 3.7.11") + 7 - middle) <= 1


def _one_packet(ladder: Ladder) -> list[tuple[int, int]]:
    """The runs of steps one packet completed: (first, last) step numbers, found from the
    steps' own hosts and last frames (as the SVG's brackets are, by another route)."""
    runs: list[list[int]] = []
    previous = None
    for step in ladder.steps:
        key = (step.src, step.dst, step.conn, step.evidence[-1])
        if runs and key == previous:
            runs[-1].append(step.index)
        else:
            runs.append([step.index])
        previous = key
    return [(run[0], run[-1]) for run in runs if len(run) > 1]


def test_text_brackets_the_steps_of_one_packet_and_keeps_their_numbers(pipelined, seed):
    fin = [s.kind for s in pipelined.steps].index("fin")
    assert _one_packet(pipelined) == [(9, 13), (14, 18), (fin + 2, fin + 3)]
    header, _, *rows = render(pipelined, "text").splitlines()
    at = header.index("frames") + 9  # right of the frames column
    assert [int(row[:4]) for row in rows] == [s.index for s in pipelined.steps]
    drawn = "".join(row[at] for row in rows)
    expected = [" "] * len(rows)
    for first, last in _one_packet(pipelined):
        expected[first - 1 : last] = "┐" + "│" * (last - first - 1) + "┘"
    assert drawn == "".join(expected)
    assert {row[at] for row in render(seed, "text").splitlines()[2:]} == {" "}  # none shared


def test_mermaid_boxes_the_steps_of_one_packet_and_keeps_their_numbers(pipelined, seed):
    lines = render(pipelined, "mermaid").splitlines()
    boxes, box = [], None
    for line in lines:
        if line.startswith("    rect "):
            box = []
        elif line == "    end":
            boxes.append(box)
            box = None
        elif box is not None and not line.startswith("    Note"):
            box.append(int(line.split(": ", 1)[1].split()[0]))
    assert [(b[0], b[-1]) for b in boxes] == _one_packet(pipelined)
    assert all(b == list(range(b[0], b[-1] + 1)) for b in boxes)
    assert "    Note over P1,P3: one packet: steps 9-13" in lines
    numbers = [int(x.split(": ", 1)[1].split()[0]) for x in lines if "->>" in x or "-)" in x]
    assert numbers == [s.index for s in pipelined.steps]  # every step once, in order
    assert not any(x.startswith("    rect") for x in render(seed, "mermaid").splitlines())


def test_svg_is_xml_with_one_arrow_per_step_and_the_hosts_on_top(seed):
    root = svg_of(seed)
    assert root.tag == f"{SVG}svg" and root.get("version") == "1.1"
    drawn = arrows(root)
    assert list(drawn) == [(n,) for n in range(1, len(SEED_LADDER) + 1)]  # one packet each
    names = [t.text for t in root.iter(f"{SVG}text")]
    assert {"mail.sender.com", "dns", "mail.receiver.com"} <= set(names)
    helo = drawn[(7,)]
    assert float(helo.get("x1")) < float(helo.get("x2"))  # sender is left of the receiver
    greeting = drawn[(6,)]
    assert float(greeting.get("x1")) > float(greeting.get("x2"))
    colours = {a.get("stroke") for a in drawn.values()}
    assert colours == {svg.COLOURS[t] for t in ("dns", "tcp", "smtp", "permanent")}


@pytest.mark.parametrize("name", ["seed", "pipelined"])
def test_svg_labels_are_whole_and_fit_their_arrows(request, name):
    ladder = request.getfixturevalue(name)
    root = svg_of(ladder)
    width = float(root.get("width"))
    groups = step_groups(root)
    for numbers, shape in arrows(root).items():
        span = abs(float(shape.get("x2")) - float(shape.get("x1")))
        for n in numbers:
            lines = label_lines(groups[n])
            step = ladder.steps[n - 1]
            assert "".join(t.text for t in lines).replace(" ", "") == label(step).replace(" ", "")
            assert all("…" not in t.text for t in lines)
            for t in lines:
                drawn = len(t.text) * svg.CHAR
                assert drawn <= span - 2 * svg.PAD + 1, (n, t.text, drawn, span)
                middle = float(t.get("x"))
                assert drawn / 2 <= middle <= width - drawn / 2
    mx = label_lines(groups[2])
    assert [t.text for t in mx] == ["MX 10 mail.receiver.com. + A mail.receiver.com. 192.0.2.25"]


def test_svg_wraps_a_label_longer_than_wrap_onto_more_lines(pipelined):
    groups = step_groups(svg_of(pipelined))
    rejected = next(s for s in pipelined.steps if s.text.startswith("550"))
    assert len(rejected.text) > svg.WRAP
    lines = label_lines(groups[rejected.index])
    assert len(lines) == 2 and all(len(t.text) <= svg.WRAP for t in lines)
    assert " ".join(t.text for t in lines) == rejected.text


def test_svg_colours_replies_by_class_and_has_a_legend(pipelined):
    root = svg_of(pipelined)
    groups = step_groups(root)
    fill = {}
    for step in pipelined.steps:
        if step.kind == "reply":
            fill[step.text[:3]] = label_lines(groups[step.index])[0].get("fill")
    assert fill["550"] == svg.COLOURS["permanent"]
    assert fill["450"] == svg.COLOURS["transient"]
    assert fill["250"] == fill["354"] == fill["221"] == svg.COLOURS["smtp"]
    assert len({fill["550"], fill["450"], fill["250"]}) == 3
    legend = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "legend")
    texts = {t.text for t in legend.iter(f"{SVG}text")}
    assert {"4xx reply", "5xx reply", "one packet", "pipelined"} <= texts
    swatches = {line.get("stroke") for line in legend.iter(f"{SVG}line")}
    assert set(svg.COLOURS.values()) <= swatches


def test_svg_draws_one_arrow_per_packet_and_brackets_its_steps(pipelined):
    root = svg_of(pipelined)
    kinds = [s.kind for s in pipelined.steps]
    fin = kinds.index("fin")
    assert kinds[fin + 1 : fin + 3] == ["fin-ack", "fin"]
    drawn = arrows(root)
    assert (fin + 2, fin + 3) in drawn  # the FIN+ACK packet: one arrow for its two steps
    assert (9, 10, 11, 12, 13) in drawn and (14, 15, 16, 17, 18) in drawn
    assert sum(len(n) for n in drawn) == len(pipelined.steps)  # every step on an arrow
    assert len(drawn) == len({s.evidence[-1] for s in pipelined.steps})  # one per packet
    brackets = {
        (g.get("class"), g.find(f"{SVG}title").text)
        for g in root.iter(f"{SVG}g")
        if "bracket" in (g.get("class") or "")
    }
    assert brackets == {
        ("bracket pipelined", "steps 9-13: pipelined"),
        ("bracket one-packet", "steps 9-13: one packet"),
        ("bracket one-packet", "steps 14-18: one packet"),
        ("bracket one-packet", f"steps {fin + 2}-{fin + 3}: one packet"),
    }


def test_svg_pipelined_bracket_spans_packets(tmp_path):
    """Pipelined commands in two packets: one pipelined bracket, no one-packet bracket."""
    cap = Capture()
    tcp = Tcp(cap, SENDER, RECEIVER)
    tcp.handshake()
    tcp.send("s", b"220 ready\r\n")
    tcp.send("c", b"MAIL FROM:<a@sender.com>\r\n")
    tcp.send("c", b"RCPT TO:<b@receiver.com>\r\n")
    tcp.send("s", b"250 ok\r\n250 ok\r\n")
    ladder = dissect(str(cap.write(tmp_path / "two.pcap")), HOSTS)
    titles = [t.text for t in svg_of(ladder).iter(f"{SVG}title") if "steps" in (t.text or "")]
    assert titles == ["steps 5-6: pipelined", "steps 7-8: one packet"]


def test_svg_has_every_step_number_in_order(pipelined):
    groups = step_groups(svg_of(pipelined))
    numbers = [int(next(g.iter(f"{SVG}text")).text) for g in groups.values()]
    assert numbers == [s.index for s in pipelined.steps] == list(range(1, 27))


def test_svg_puts_the_lifeline_label_under_the_host_name(seed):
    root = svg_of(seed, lifelines={"mail.receiver.com": "Postfix 3.7.11"})
    texts = list(root.iter(f"{SVG}text"))
    name = next(t for t in texts if t.text == "mail.receiver.com")
    under = next(t for t in texts if t.text == "Postfix 3.7.11")
    assert name.get("x") == under.get("x") and float(name.get("y")) < float(under.get("y"))
    host_boxes = [g.find(f"{SVG}rect") for g in root.iter(f"{SVG}g") if g.get("class") == "host"]
    assert all(float(r.get("height")) >= 44 for r in host_boxes)


def test_html_embeds_the_svg_and_a_table_with_evidence(seed):
    page = render(seed, "html")
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page
    assert "src=" not in page
    assert page.count("<tr id=") == len(SEED_LADDER)
    assert "MAIL FROM:&lt;luke@sender.com&gt;" in page
    assert "<td>42</td>" in page  # the content step's evidence packet


def test_html_has_an_anchor_per_step_and_links_only_to_them(seed):
    page = render(seed, "html")
    ids = re.findall(r'<tr id="step-(\d+)"', page)
    assert ids == [str(s.index) for s in seed.steps]
    links = re.findall(r'href="([^"]*)"', page)
    assert links == [f"#step-{s.index}" for s in seed.steps]  # self-contained


def test_html_title_says_what_it_is_not_a_path(seed, tmp_path):
    title = re.search(r"<title>(.*)</title>", render(seed, "html")).group(1)
    assert title == "Ladder of seed.pcap" and "/" not in title
    named = render(seed, "html", title="seed")
    assert "<title>Ladder of seed</title>" in named and "<h1>Ladder of seed</h1>" in named
    run = Ladder(seed.steps, str(tmp_path / "runs" / "greylist" / "capture.pcapng"))
    assert "<title>Ladder of greylist/capture.pcapng</title>" in render(run, "html")


def test_mermaid_is_a_sequence_diagram(seed):
    text = render(seed, "mermaid", lifelines={"mail.receiver.com": "Postfix 3.7.11"})
    lines = text.splitlines()
    assert lines[0] == "sequenceDiagram"
    assert "    participant P1 as mail.sender.com" in lines
    assert "    participant P3 as mail.receiver.com (Postfix 3.7.11)" in lines
    assert "    P1->>P3: 17 MAIL FROM:#60;luke@sender.com#62;" in lines
    assert "    P3-->>P1: 18 250 OK" in lines
    assert sum("->>" in x or "-)" in x for x in lines) == len(SEED_LADDER)


def test_json_round_trip_is_equal(seed):
    assert Ladder.from_json(render(seed, "json", lifelines={"x": "y"}, title="t")) == seed


def test_unknown_format_is_a_one_line_error(seed):
    with pytest.raises(HarnessError, match="unknown format 'png'"):
        render(seed, "png")
