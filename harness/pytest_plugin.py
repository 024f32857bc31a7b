"""pytest plugin for smtp-harness (registered through the ``pytest11`` entry point).

Fixtures are the public test API:
- ``lab``: a running lab with the seed's topology (sender, dns, receiver), torn down after
  the test whatever happens.
- ``lab_factory``: build labs from other topologies; each one is torn down after the test.
Tests that need root and namespaces carry the ``lab`` marker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from harness.lab import Lab, Topology


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab: needs root and real network namespaces")


@pytest.fixture
def lab_factory() -> Iterator[Callable[..., Lab]]:
    with ExitStack() as stack:

        def make(topology: Topology | None = None) -> Lab:
            return stack.enter_context(Lab(topology))

        yield make


@pytest.fixture
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return lab_factory()
