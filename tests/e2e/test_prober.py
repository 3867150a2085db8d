"""The active recovery probe against real loopback servers: what it sends, and what each answer does.

The control plane runs on a fake clock (so a probe is due exactly when the test says), the probes go
through Detour's own HTTP client to a `MockProvider` on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakeclock import FakeClock
from mockprovider import MockProvider
from rawservers import ScriptServer, stall_after

from addon.breaker import State
from addon.classify import Outcome, Verdict
from addon.config import parse_config
from addon.control import Control
from addon.credentials import CLIENT_CREDENTIALS
from addon.model import Api, App, BreakerPolicy, Config, Provider, Timeouts
from addon.prober import Prober
from addon.state import SqliteBackend
from addon.upstream import Pool

POLICY = BreakerPolicy(failure_threshold=3, open_for=30.0, success_threshold=2, recovery_probe=5.0)
KEY = "sk-probe-OWN-KEY-5e1f0a9b7c"
FAIL = Verdict(Outcome.PROVIDER_FAILURE, "http 503", 503)
CREDENTIAL_HEADERS = {name.decode() for name in CLIENT_CREDENTIALS}


class Setup:
    """A Control with one app (primary -> backup), a Pool and a Prober, on a fake clock."""

    def __init__(self, tmp: Path, primary: Provider, api: Api, timeouts: Timeouts) -> None:
        backup = Provider("backup", "http://127.0.0.1:9", breaker=POLICY)
        app = App("claude", ("api.anthropic.com",), (primary, backup), ("/v1/messages",), api=api,
                  timeouts=timeouts)  # fmt: skip
        config = Config(source=tmp / "config.yaml", state=tmp / "state.db", apps=(app,))
        self.clock = FakeClock()
        self.control = Control(config, self.clock, SqliteBackend(config.state))
        self.pool = Pool()
        self.prober = Prober(lambda: self.control, self.pool)

    def trip(self) -> None:
        for _ in range(POLICY.failure_threshold):
            permit = self.control.acquire("claude", "primary")
            assert permit is not None
            self.control.record("claude", "primary", permit, FAIL, 1.0)
        assert self.state() is State.OPEN

    def state(self) -> State:
        return self.control.router.breaker("claude", "primary").state()

    def close(self) -> None:
        self.pool.close()
        self.control.close()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Callable[..., Setup]]:
    made: list[Setup] = []

    def make(
        mock: MockProvider,
        key: str | None = None,
        auth: str = "x-api-key",
        api: Api = "anthropic",
        timeouts: Timeouts | None = None,
    ) -> Setup:
        primary = Provider("primary", mock.base_url, api_key=key, auth=auth, breaker=POLICY)
        s = Setup(tmp_path, primary, api, timeouts or Timeouts(connect=1.0, first_byte=1.0))
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


async def probe_now(s: Setup) -> None:
    """Make the probe due and run one sweep to its end."""
    s.clock.advance(POLICY.recovery_probe)
    await asyncio.wait_for(s.prober.sweep(), 10.0)


async def test_an_answering_provider_is_half_opened(
    mock_factory: Callable[[str], MockProvider], setup: Callable[..., Setup], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="detour")
    mock = mock_factory("primary")
    s = setup(mock)
    s.trip()
    await asyncio.wait_for(s.prober.sweep(), 10.0)
    assert mock.count() == 0  # not due yet: nothing is sent
    await probe_now(s)
    assert s.state() is State.HALF_OPEN
    (probe,) = mock.received
    assert (probe.method, probe.path, probe.body) == ("GET", "/v1/models", b"")
    line = "detour: claude/primary circuit open -> half_open (recovery probe answered http 200)"
    assert line in caplog.text


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_any_answer_below_500_means_the_server_is_back(
    mock_factory: Callable[[str], MockProvider], setup: Callable[..., Setup], status: int
) -> None:
    mock = mock_factory("primary")
    s = setup(mock)
    s.trip()
    mock.fault("status", status=status)
    await probe_now(s)
    assert s.state() is State.HALF_OPEN


@pytest.mark.parametrize(
    ("fault", "params"),
    [("status", {"status": 503}), ("status", {"status": 500}), ("status", {"status": 429}),
     ("hang", {}), ("refuse", {}), ("reset", {})],
)  # fmt: skip
async def test_a_provider_still_down_stays_open_and_its_period_is_unchanged(
    mock_factory: Callable[[str], MockProvider],
    setup: Callable[..., Setup],
    fault: str,
    params: dict[str, Any],
) -> None:
    mock = mock_factory("primary")
    s = setup(mock, timeouts=Timeouts(connect=1.0, first_byte=0.5))
    s.trip()
    before = s.control.router.breaker("claude", "primary").raw
    mock.fault(fault, **params)
    started = time.monotonic()
    await probe_now(s)
    assert time.monotonic() - started < 3.0  # a hanging provider costs min(5 s, first_byte)
    after = s.control.router.breaker("claude", "primary").raw
    assert s.state() is State.OPEN
    assert (after.open_until, after.open_for, after.generation) == (
        before.open_until, before.open_for, before.generation,
    )  # fmt: skip
    mock.healthy()


async def test_a_keyless_provider_is_probed_without_any_credentials(
    mock_factory: Callable[[str], MockProvider], setup: Callable[..., Setup]
) -> None:
    mock = mock_factory("primary")
    s = setup(mock)
    s.trip()
    await probe_now(s)
    (probe,) = mock.received
    assert not CREDENTIAL_HEADERS & set(probe.headers), probe.headers
    assert "?" not in probe.path


@pytest.mark.parametrize(
    ("api", "auth", "path", "header", "value"),
    [
        ("anthropic", "x-api-key", "/v1/models", "x-api-key", KEY),
        ("openai", "bearer", "/v1/models", "authorization", f"Bearer {KEY}"),
        ("gemini", "x-goog-api-key", "/v1beta/models", "x-goog-api-key", KEY),
    ],
)
async def test_a_keyed_provider_is_probed_with_its_own_key_only(
    mock_factory: Callable[[str], MockProvider],
    setup: Callable[..., Setup],
    caplog: pytest.LogCaptureFixture,
    api: Api,
    auth: str,
    path: str,
    header: str,
    value: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="detour")
    mock = mock_factory("primary")
    s = setup(mock, key=KEY, auth=auth, api=api)
    s.trip()
    mock.fault("status", status=503)  # a failed probe: its detail is logged, never the key
    await probe_now(s)
    mock.healthy()
    await probe_now(s)
    assert s.state() is State.HALF_OPEN
    for probe in mock.received:
        assert probe.path == path
        assert probe.headers[header] == value
        assert CREDENTIAL_HEADERS & set(probe.headers) == {header}
    assert KEY not in caplog.text


async def test_one_probe_in_flight_per_provider(
    mock_factory: Callable[[str], MockProvider], setup: Callable[..., Setup]
) -> None:
    mock = mock_factory("primary")
    s = setup(mock, timeouts=Timeouts(connect=1.0, first_byte=2.0))
    s.trip()
    mock.fault("hang")
    s.clock.advance(POLICY.recovery_probe)
    first = s.prober.start_due()
    assert len(first) == 1
    assert await mock.async_wait_for_requests(1, 5.0)
    s.clock.advance(POLICY.recovery_probe)  # due again while the first still waits for its answer
    assert s.prober.start_due() == []
    await asyncio.wait_for(asyncio.gather(*first), 10.0)
    assert mock.count() == 1
    mock.healthy()


async def test_a_circuit_that_is_not_open_is_never_probed(
    mock_factory: Callable[[str], MockProvider], setup: Callable[..., Setup]
) -> None:
    mock = mock_factory("primary")
    s = setup(mock)
    for _ in range(3):  # closed
        await probe_now(s)
    s.trip()
    s.clock.advance(POLICY.open_for)  # half-open: real requests test it, the probe stays away
    await probe_now(s)
    assert mock.count() == 0


async def test_the_loop_probes_on_its_own_and_stops_when_cancelled(
    mock_factory: Callable[[str], MockProvider], setup: Callable[..., Setup]
) -> None:
    mock = mock_factory("primary")
    s = setup(mock)
    s.prober.tick = 0.05
    s.trip()
    s.clock.advance(POLICY.recovery_probe)
    task = asyncio.ensure_future(s.prober.run())
    try:
        deadline = time.monotonic() + 5.0
        while s.state() is State.OPEN and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert s.state() is State.HALF_OPEN
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await s.prober.close()
    assert task.cancelled()


async def test_an_answer_whose_body_stalls_still_counts(
    mock_factory: Callable[[str], MockProvider], setup: Callable[..., Setup]
) -> None:
    """The status is what a probe reads; a body that never ends costs the connection, not the answer."""
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"
    with ScriptServer(stall_after(head)) as stalling:
        s = setup(mock_factory("unused"), timeouts=Timeouts(connect=1.0, first_byte=0.5))
        stalled = Provider("primary", stalling.base_url, breaker=POLICY)
        app = s.control.config.apps[0]
        apps = (dataclasses.replace(app, providers=(stalled, *app.providers[1:])),)
        s.control.reconfigure(dataclasses.replace(s.control.config, apps=apps))
        s.trip()
        started = time.monotonic()
        await probe_now(s)
        assert time.monotonic() - started < 3.0
        assert s.state() is State.HALF_OPEN


async def test_each_pass_uses_the_config_in_force(
    mock_factory: Callable[[str], MockProvider], setup: Callable[..., Setup], tmp_path: Path
) -> None:
    """A reload applies from the next pass: here it turns the probe off, then on with a new key."""
    mock = mock_factory("primary")
    s = setup(mock)
    s.trip()

    def reload(breaker: str, key: str) -> None:
        text = f"""
breaker: {{failure_threshold: 3, open_for: 30s, success_threshold: 2, recovery_probe: {breaker}}}
apps:
  claude:
    hosts: [api.anthropic.com]
    providers:
      - {{id: primary, base_url: "{mock.base_url}", api_key: "{key}"}}
      - {{id: backup, base_url: "http://127.0.0.1:9"}}
"""
        s.control.reconfigure(parse_config(text, tmp_path / "config.yaml", {}))

    reload("off", KEY)
    await probe_now(s)
    assert mock.count() == 0 and s.state() is State.OPEN
    reload("5s", KEY + "-new")
    await probe_now(s)
    assert [r.headers.get("x-api-key") for r in mock.received] == [KEY + "-new"]
    assert s.state() is State.HALF_OPEN
