"""Shared fixtures and the session report; `tests/support` holds the helpers every tier imports.

Tiers: `unit/` (pure, no sockets), `mitm/` (mitmproxy's test doubles, no network), `e2e/` (real
servers on loopback: mocks, the relay, a real mitmdump, the official SDKs).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

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


#: Test modules that keep a table of what they measured, and where its JSON goes by default.
REPORTS = {"test_fault_matrix": ("DETOUR_MATRIX_JSON", "fault_matrix.json"),
           "test_clients": ("DETOUR_CLIENTS_JSON", "clients.json"),
           "test_resilience": ("DETOUR_RESILIENCE_JSON", "resilience.json")}  # fmt: skip


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The fault matrix's and the CLI runs' tables, once all have run (never tests: they can't fail)."""
    for module_name, (variable, default) in REPORTS.items():
        module = sys.modules.get(module_name)
        document = module.summary() if module is not None else None
        if document is None:
            continue
        basetemp = session.config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
        out = Path(os.environ.get(variable) or basetemp / default)
        out.write_text(json.dumps(document, indent=1))
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"\n{module_name.removeprefix('test_')} ({out}):\n{document['table']}")
