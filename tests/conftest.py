"""Shared fixtures: mock providers and mitmdump processes, each stopped at test teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Mitmdump
from mockprovider import MockProvider


@pytest.fixture
def mock_factory() -> Iterator[Callable[[str], MockProvider]]:
    """``mock_factory(name)`` -> a started :class:`MockProvider`; all are stopped at teardown."""
    mocks: list[MockProvider] = []

    def make(name: str) -> MockProvider:
        mock = MockProvider(name)
        mocks.append(mock)
        return mock.start()

    yield make
    for mock in reversed(mocks):
        mock.stop()


@pytest.fixture
def mitmdump_factory(tmp_path: Path) -> Iterator[Callable[..., Mitmdump]]:
    """``mitmdump_factory(config_path, **Mitmdump.start kwargs)`` -> a running :class:`Mitmdump`.

    ``confdir`` defaults to ``tmp_path / "mitmproxy"``, shared by every instance in the test (so a
    restarted proxy keeps its CA). All instances are stopped at teardown.
    """
    procs: list[Mitmdump] = []

    def make(config_path: Path | str, **kwargs: Any) -> Mitmdump:
        kwargs.setdefault("confdir", tmp_path / "mitmproxy")
        md = Mitmdump.start(config_path, **kwargs)
        procs.append(md)
        return md

    yield make
    for md in reversed(procs):
        md.stop()
