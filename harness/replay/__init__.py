"""Replay a captured SMTP session against a live peer in a lab (issue 11).

``session.py`` reads and validates the capture (one session's bytes, turns and steps),
``script.py`` maps it into the lab (addresses, HELO name, envelope), ``client.py`` re-sends
the client side and judges each reply, ``judge.py`` compares the two ladders, ``run.py``
runs it in a fresh lab and ``commands.py`` is ``smtp-harness replay``.
"""
