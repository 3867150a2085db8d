"""The switch manager: one event per real change, a minimum interval, manual switches, concurrency."""

from __future__ import annotations

import asyncio
import threading

import pytest
from fakeclock import START, FakeClock

from addon.switch import SwitchEvent, SwitchManager


def manager(clock: FakeClock, interval: float = 10.0) -> tuple[SwitchManager, list[SwitchEvent]]:
    events: list[SwitchEvent] = []
    return SwitchManager(clock, interval, {"claude": "primary"}, events.append), events


def test_first_different_provider_emits_one_event() -> None:
    clock = FakeClock()
    sm, events = manager(clock)
    event = sm.propose("claude", "backup", "primary failed: http 503")
    assert event is not None
    assert (event.app, event.from_provider, event.to_provider, event.reason) == (
        "claude",
        "primary",
        "backup",
        "primary failed: http 503",
    )
    assert event.at == START and event.manual is False
    assert events == [event]
    assert sm.current("claude") == "backup"


def test_same_provider_is_not_news() -> None:
    sm, events = manager(FakeClock())
    assert sm.propose("claude", "primary", "ok") is None
    assert events == []


def test_unknown_app_first_observation_switches_from_none() -> None:
    sm, _ = manager(FakeClock())
    event = sm.propose("codex", "openai", "first")
    assert event is not None and event.from_provider is None and event.to_provider == "openai"


@pytest.mark.parametrize(("wait", "returns"), [(0.0, False), (9.99, False), (10.0, True), (60.0, True)])
def test_min_interval_suppresses_flip_flop(wait: float, returns: bool) -> None:
    clock = FakeClock()
    sm, events = manager(clock, interval=10.0)
    assert sm.propose("claude", "backup", "failover") is not None
    clock.advance(wait)
    back = sm.propose("claude", "primary", "recovered")
    assert (back is not None) is returns
    assert sm.current("claude") == ("primary" if returns else "backup")
    assert len(events) == (2 if returns else 1)


def test_one_event_each_way_with_flapping_traffic() -> None:
    clock = FakeClock()
    sm, events = manager(clock, interval=10.0)
    for _ in range(5):  # requests land on both providers within the interval
        sm.propose("claude", "backup", "failover")
        sm.propose("claude", "primary", "recovered")
        clock.advance(1)
    assert [(e.from_provider, e.to_provider) for e in events] == [("primary", "backup")]
    clock.advance(10)
    sm.propose("claude", "primary", "recovered")
    sm.propose("claude", "primary", "recovered")
    assert [(e.from_provider, e.to_provider) for e in events] == [
        ("primary", "backup"),
        ("backup", "primary"),
    ]


def test_interval_is_per_app() -> None:
    clock = FakeClock()
    events: list[SwitchEvent] = []
    sm = SwitchManager(clock, 10.0, {"claude": "a", "codex": "x"}, events.append)
    assert sm.propose("claude", "b", "r") is not None
    assert sm.propose("codex", "y", "r") is not None


def test_force_ignores_interval_and_is_manual() -> None:
    clock = FakeClock()
    sm, events = manager(clock, interval=10.0)
    sm.propose("claude", "backup", "failover")
    forced = sm.force("claude", "primary")
    assert forced is not None and forced.manual is True
    assert (forced.from_provider, forced.to_provider) == ("backup", "primary")
    assert forced.reason == "manual switch"
    assert sm.current("claude") == "primary"
    assert sm.force("claude", "primary") is None  # already current
    assert len(events) == 2


def test_adopt_sets_current_without_event() -> None:
    sm, events = manager(FakeClock())
    sm.adopt("claude", "backup")
    assert sm.current("claude") == "backup" and events == []
    # Adopting is not a switch: no interval starts.
    assert sm.propose("claude", "primary", "r") is not None


async def test_concurrent_asyncio_tasks_emit_exactly_one_event() -> None:
    sm, events = manager(FakeClock())

    async def one() -> SwitchEvent | None:
        await asyncio.sleep(0)
        return sm.propose("claude", "backup", "primary failed")

    results = await asyncio.gather(*(one() for _ in range(100)))
    assert sum(r is not None for r in results) == 1
    assert len(events) == 1 and sm.current("claude") == "backup"


def test_concurrent_threads_emit_exactly_one_event() -> None:
    sm, events = manager(FakeClock())
    barrier = threading.Barrier(100)
    results: list[SwitchEvent | None] = []
    lock = threading.Lock()

    def one() -> None:
        barrier.wait()
        r = sm.propose("claude", "backup", "primary failed")
        with lock:
            results.append(r)

    threads = [threading.Thread(target=one) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 100
    assert sum(r is not None for r in results) == 1
    assert len(events) == 1 and sm.current("claude") == "backup"
