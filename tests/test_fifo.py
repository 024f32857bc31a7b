"""``harness.fifo.Fifo``: a deque's front-and-back behaviour on a list, with its dead front
dropped so memory follows what is live (the reassembler's history, the SMTP state's owed
replies)."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.fifo import Fifo

OPS = st.lists(st.one_of(st.integers(0, 9), st.none()), max_size=300)  # None: popleft


@given(OPS)
def test_it_reads_as_a_deque_does_after_any_appends_and_pops(ops) -> None:
    fifo: Fifo[int] = Fifo([1, 2])
    model = deque([1, 2])
    for op in ops:
        if op is None:
            if model:
                assert fifo.popleft() == model.popleft()
            else:
                with pytest.raises(IndexError):
                    fifo.popleft()
        else:
            fifo.append(op)
            model.append(op)
        assert list(fifo) == list(model)
        assert (len(fifo), bool(fifo)) == (len(model), bool(model))
        if model:
            assert (fifo[0], fifo[len(model) - 1]) == (model[0], model[-1])


def test_its_dead_front_is_dropped_so_memory_follows_what_is_live() -> None:
    """A long run through a short queue (history trimmed to 64 KiB, pipelined commands
    answered one by one) keeps the list near the live length, never the whole run."""
    fifo: Fifo[int] = Fifo()
    for n in range(100_000):
        fifo.append(n)
        if len(fifo) > 10:
            fifo.popleft()
        assert len(fifo._items) <= 2 * len(fifo) + 34
    assert list(fifo) == list(range(99_990, 100_000))


def test_it_is_read_from_the_front_only() -> None:
    with pytest.raises(IndexError, match="from the front"):
        Fifo([1])[-1]
