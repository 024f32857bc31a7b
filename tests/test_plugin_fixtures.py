"""The pytest plugin's building-block fixtures, used the way a test author would."""

from __future__ import annotations

import asyncio

import pytest

from harness.ladder.dissect import dissect
from harness.runner import host_names

pytestmark = pytest.mark.lab


def test_peers_and_capture_fixtures_make_an_exchange(
    lab, dns, smtp_receiver, smtp_sender, capture
) -> None:
    receiver = smtp_receiver(users=("c3po",))
    sender = smtp_sender(recipients=("c3po@receiver.com", "r2d2@receiver.com"))

    async def exchange():
        async with receiver:
            await receiver.start("192.0.2.25", 25)
            report = await sender.send()
            await receiver.idle()
        return report

    report = asyncio.run(exchange())
    capture.stop()
    assert report.status("c3po@receiver.com") == "delivered"
    assert report.status("r2d2@receiver.com") == "rejected"  # VRFY 550: unknown here
    ladder = dissect(str(capture.path), host_names(lab.topology))
    kinds = [(s.src, s.kind) for s in ladder.steps if s.kind in ("syn", "fin")]
    assert kinds == [("sender", "syn"), ("receiver", "fin"), ("sender", "fin")]
    assert dns.log.find("receiver.com", "MX")[0].client[0] == "192.0.2.10"
