"""The control plane against a real SQLite file and a fake clock: recording, persistence, pins, operations."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakeclock import FakeClock
from statedb import recent

from addon.breaker import State
from addon.classify import Outcome, Verdict
from addon.control import DETACHED, Control
from addon.model import App, BreakerPolicy, Config, Provider
from addon.state import SqliteBackend

Core = Control
StateStore = SqliteBackend

POLICY = BreakerPolicy(failure_threshold=3, open_for=30.0, success_threshold=2)
SECRET = "plain-secret-value-42"  # matches no built-in key pattern: only set_secrets can mask it
FAIL = Verdict(Outcome.PROVIDER_FAILURE, "http 500", 500)
OK = Verdict(Outcome.SUCCESS, "http 200", 200)


def make_config(*ids: str, max_attempts: int = 3, interval: float = 10.0) -> Config:
    providers = tuple(
        Provider(
            id=i,
            base_url=f"https://{i}.example",
            api_key=SECRET if i == "backup" else f"key-{i}-abcdef",
            breaker=POLICY,
        )
        for i in ids
    )
    app = App(
        name="claude",
        hosts=("api.anthropic.com",),
        providers=providers,
        paths=("/v1/messages",),
        max_attempts=max_attempts,
    )
    return Config(
        source=Path("detour.yaml"), state=Path("state.db"), apps=(app,), switch_min_interval=interval
    )


CONFIG = make_config("primary", "backup", "third")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def core(db: Path, clock: FakeClock) -> Iterator[Core]:
    c = Core(CONFIG, clock, StateStore(db))
    yield c
    c.close()


def attempt(core: Core, provider: str, verdict: Verdict, app: str = "claude"):
    permit = core.acquire(app, provider)
    assert permit is not None
    return core.record(app, provider, permit, verdict, 12.345)


def trip(core: Core, provider: str) -> None:
    for _ in range(POLICY.failure_threshold):
        attempt(core, provider, FAIL)


def saved_breakers(db: Path) -> dict[tuple[str, str], tuple[str, int]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT app, provider, state, consecutive_failures FROM breaker").fetchall()
    return {(a, p): (s, f) for a, p, s, f in rows}


def ids(providers: list[Provider]) -> list[str]:
    return [p.id for p in providers]


def test_failures_open_the_breaker_and_persist_the_snapshot(core: Core, db: Path) -> None:
    transitions = [attempt(core, "primary", FAIL) for _ in range(3)]
    assert transitions[:2] == [None, None]
    assert transitions[2] is not None and transitions[2].after is State.OPEN
    assert core.store.flush()
    assert saved_breakers(db)[("claude", "primary")] == ("open", 3)


def test_restart_restores_open_circuit_and_current_provider(db: Path, clock: FakeClock) -> None:
    first = Core(CONFIG, clock, StateStore(db))
    trip(first, "primary")
    assert first.switches.current("claude") == "backup"  # the open circuit moved the app
    first.close()

    clock.advance(5)
    second = Core(CONFIG, clock, StateStore(db))
    try:
        assert second.switches.current("claude") == "backup"
        assert ids(second.candidates(second.config.apps[0])) == ["backup", "third"]
        assert second.router.breaker("claude", "primary").state() is State.OPEN
        clock.advance(POLICY.open_for)
        assert ids(second.candidates(second.config.apps[0]))[0] == "primary"
    finally:
        second.close()


def test_switch_event_is_persisted_as_current(core: Core, db: Path, clock: FakeClock) -> None:
    trip(core, "primary")
    trip(core, "backup")
    clock.advance(10.0)  # switch_min_interval
    core.candidates(core.config.apps[0])
    assert core.switches.current("claude") == "third"
    assert core.store.flush()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT provider FROM current_provider WHERE app='claude'").fetchone() == (
            "third",
        )


def test_fresh_core_adopts_first_provider_as_current(core: Core) -> None:
    assert core.switches.current("claude") == "primary"
    attempt(core, "backup", OK)  # one request served elsewhere is no switch
    attempt(core, "primary", FAIL)
    assert core.switches.current("claude") == "primary"


def test_one_switch_line_per_real_switch_with_its_true_reason(
    core: Core, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="detour")
    trip(core, "primary")
    clock.advance(POLICY.open_for)
    for _ in range(POLICY.success_threshold):  # half-open probes succeed: the circuit closes
        attempt(core, "primary", OK)
    lines = [r.getMessage() for r in caplog.records if "failover switch" in r.getMessage()]
    assert lines == [
        "detour: failover switch claude: primary -> backup (primary: circuit open)",
        "detour: failover switch claude: backup -> primary "
        "(recovered: primary: circuit closed (2 probe successes))",
    ]


def test_switch_min_interval_holds_in_both_directions_then_applies(
    db: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="detour")
    c = Core(make_config("primary", "backup", "third", interval=60.0), clock, StateStore(db))
    try:
        trip(c, "primary")
        assert c.switches.current("claude") == "backup"
        clock.advance(POLICY.open_for)
        for _ in range(POLICY.success_threshold):
            attempt(c, "primary", OK)
        assert c.switches.current("claude") == "backup"  # recovered 30 s after a switch: too soon
        clock.advance(29.0)
        c.candidates(c.config.apps[0])
        assert c.switches.current("claude") == "backup"
        clock.advance(1.0)
        c.candidates(c.config.apps[0])  # the interval passed: the deferred switch happens now
        assert c.switches.current("claude") == "primary"
        assert sum("failover switch" in r.getMessage() for r in caplog.records) == 2
    finally:
        c.close()


def test_breaker_periods_are_monotonic_and_survive_a_restart_in_wall_time(db: Path) -> None:
    mono, wall = FakeClock(start=1000.0), FakeClock()
    first = Core(CONFIG, mono, StateStore(db), wall)
    trip(first, "primary")
    wall.advance(3600)  # the wall clock jumps an hour: nothing about the breaker changes
    assert first.router.breaker("claude", "primary").state() is State.OPEN
    first.close()
    mono2 = FakeClock(start=5.0)  # a new process: its monotonic clock starts anywhere
    second = Core(CONFIG, mono2, StateStore(db), wall)
    try:
        # Stored relative to the wall clock at close, restored relative to the new monotonic clock:
        # none of its open period was lost or gained by the jump, or by the restart.
        remaining = second.router.breaker("claude", "primary").open_remaining()
        assert remaining == pytest.approx(POLICY.open_for)
    finally:
        second.close()


@pytest.mark.parametrize(
    ("max_attempts", "expected"),
    [(1, ["primary"]), (2, ["primary", "backup"]), (3, ["primary", "backup", "third"]), (9, None)],
)
def test_candidates_respect_max_attempts(
    db: Path, clock: FakeClock, max_attempts: int, expected: list[str] | None
) -> None:
    c = Core(make_config("primary", "backup", "third", max_attempts=max_attempts), clock, StateStore(db))
    try:
        got = ids(c.candidates(c.config.apps[0]))
        assert got == (expected or ["primary", "backup", "third"])
    finally:
        c.close()


def test_switch_pins_and_unpin_restores_order(db: Path, clock: FakeClock) -> None:
    c = Core(make_config("primary", "backup", "third", max_attempts=2), clock, StateStore(db))
    try:
        app = c.config.apps[0]
        event = c.pin("claude", "third")
        assert event is not None and event.manual and event.to_provider == "third"
        assert ids(c.candidates(app)) == ["third", "primary"]
        assert c.switches.current("claude") == "third"
        c.unpin("claude")
        assert ids(c.candidates(app)) == ["primary", "backup"]
    finally:
        c.close()


def test_pinned_provider_with_open_circuit_is_not_tried(core: Core) -> None:
    core.pin("claude", "backup")
    trip(core, "backup")
    assert ids(core.candidates(core.config.apps[0])) == ["primary", "third"]


def test_reset_closes_and_persists(core: Core, db: Path) -> None:
    trip(core, "primary")
    core.reset("claude", "primary")
    assert core.router.breaker("claude", "primary").state() is State.CLOSED
    assert ids(core.candidates(core.config.apps[0]))[0] == "primary"
    assert core.store.flush()
    assert saved_breakers(db)[("claude", "primary")] == ("closed", 0)


@pytest.mark.parametrize(
    ("op", "args", "message"),
    [
        ("pin", ("nope", "primary"), "unknown app 'nope'; known: claude"),
        (
            "pin",
            ("claude", "nope"),
            "unknown provider 'nope' for app 'claude'; known: primary, backup, third",
        ),
        ("reset", ("nope", "primary"), "unknown app 'nope'"),
        ("reset", ("claude", "nope"), "unknown provider 'nope'"),
        ("unpin", ("nope",), "unknown app 'nope'"),
    ],
)
def test_unknown_app_or_provider_is_a_clear_value_error(
    core: Core, op: str, args: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ValueError) as info:
        getattr(core, op)(*args)
    assert message in str(info.value)


def test_status_lines(core: Core, clock: FakeClock) -> None:
    trip(core, "backup")
    clock.advance(10)
    core.pin("claude", "third")
    assert core.status_lines() == [
        "claude/primary: closed, 0 failures",
        "claude/backup: open, 3 failures, probe in 20s",
        "claude/third: closed, 0 failures (pinned) ← current",
    ]


def test_reconfigure_forgets_removed_provider(core: Core, db: Path, clock: FakeClock) -> None:
    trip(core, "third")
    trip(core, "primary")
    core.pin("claude", "third")
    assert core.store.flush()
    assert ("claude", "third") in saved_breakers(db)

    core.reconfigure(make_config("primary", "backup"))
    assert core.store.flush()
    assert ("claude", "third") not in saved_breakers(db)
    with pytest.raises(KeyError):
        core.router.breaker("claude", "third")
    # The removed current provider is replaced by the first closed circuit; its pin is gone.
    assert core.switches.current("claude") == "backup"
    assert core.status_lines()[1] == "claude/backup: closed, 0 failures ← current"
    # Surviving provider keeps its open circuit.
    assert core.router.breaker("claude", "primary").state() is State.OPEN
    assert ids(core.candidates(core.config.apps[0])) == ["backup"]
    # Re-adding the provider later starts from a clean breaker.
    core.reconfigure(make_config("primary", "backup", "third"))
    assert core.router.breaker("claude", "third").state() is State.CLOSED


def test_reconfigure_updates_switch_interval(core: Core) -> None:
    core.reconfigure(make_config("primary", "backup", "third", interval=99.0))
    assert core.switches.min_interval == 99.0


def test_attempt_log_never_contains_secrets(core: Core, db: Path, caplog: pytest.LogCaptureFixture) -> None:
    leaky = Verdict(Outcome.PROVIDER_FAILURE, f"http 401: invalid x-api-key {SECRET}", 401)
    caplog.set_level(logging.INFO, logger="detour")
    for _ in range(3):
        attempt(core, "backup", leaky)
    attempt(core, "primary", OK)
    assert core.store.flush()
    records = recent(db, 10)
    assert len(records) == 4
    newest, *failures = records
    assert newest.outcome == "success" and newest.error == "" and newest.provider == "primary"
    assert newest.latency_ms == 12.35
    for rec in failures:
        assert rec.outcome == "provider_failure" and rec.status == 401
        assert SECRET not in rec.error
        assert rec.error == "http 401: invalid x-api-key ***"
    assert SECRET not in caplog.text


def test_explicit_status_overrides_verdict_status(core: Core, db: Path) -> None:
    permit = core.acquire("claude", "primary")
    assert permit is not None
    timeout = Verdict(Outcome.TIMEOUT, "timeout_idle")
    core.record("claude", "primary", permit, timeout, 1.0, 200)
    assert core.store.flush()
    (rec,) = recent(db, 1)
    assert (rec.status, rec.outcome, rec.error) == (200, "timeout", "timeout_idle")


def test_acquire_next_pops_until_a_provider_admits(core: Core, clock: FakeClock) -> None:
    trip(core, "primary")
    queue = list(CONFIG.apps[0].providers)
    picked = core.acquire_next("claude", queue)
    assert picked is not None and picked[0].id == "backup"
    assert ids(queue) == ["third"]
    assert core.acquire_next("claude", []) is None


def test_a_provider_removed_by_a_reload_is_still_tried_by_a_request_in_flight(core: Core, db: Path) -> None:
    queue = list(CONFIG.apps[0].providers)  # taken before the reload
    core.reconfigure(make_config("backup", "third"))
    picked = core.acquire_next("claude", queue)
    assert picked is not None and picked[0].id == "primary" and picked[1] is DETACHED
    assert core.record("claude", "primary", DETACHED, FAIL, 1.0) is None  # no breaker to charge
    core.release("claude", "primary", DETACHED)
    assert core.store.flush() and recent(db, 1)[0].provider == "primary"  # but the attempt is logged


def test_retry_after_is_the_soonest_probe(core: Core, clock: FakeClock) -> None:
    assert core.retry_after("claude") == 1.0
    trip(core, "primary")
    clock.advance(10)
    assert core.retry_after("claude") == pytest.approx(20.0)


def test_status_shows_a_degraded_state_store(tmp_path: Path, clock: FakeClock) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory")
    c = Core(CONFIG, clock, StateStore(blocker / "state.db"))
    try:
        assert c.status_lines()[0].startswith("state: degraded (cannot create")
    finally:
        c.close()


def test_release_frees_a_probe_slot(core: Core, clock: FakeClock) -> None:
    trip(core, "primary")
    clock.advance(POLICY.open_for)
    probe = core.acquire("claude", "primary")
    assert probe is not None and probe.probe
    assert core.acquire("claude", "primary") is None
    core.release("claude", "primary", probe)
    assert core.acquire("claude", "primary") is not None


# --- active recovery probe ----------------------------------------------------------------------


def test_recovery_probes_are_due_for_open_circuits_only(core: Core, clock: FakeClock) -> None:
    assert core.recovery_probes() == []
    trip(core, "primary")
    assert core.recovery_probes() == []  # opened just now
    clock.advance(POLICY.recovery_probe)
    tickets = core.recovery_probes()
    assert [(t.app.name, t.provider.id) for t in tickets] == [("claude", "primary")]
    assert tickets[0].key == ("claude", "primary")
    assert core.recovery_probes() == []  # taken: the next one is an interval later
    clock.advance(POLICY.recovery_probe)
    assert core.recovery_probes(busy={("claude", "primary")}) == []  # one in flight per provider
    assert len(core.recovery_probes()) == 1


def test_an_answered_recovery_probe_half_opens_persists_and_logs(
    core: Core, clock: FakeClock, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="detour")
    trip(core, "primary")
    clock.advance(POLICY.recovery_probe)
    (ticket,) = core.recovery_probes()
    transition = core.probed(ticket, True, "recovery probe answered http 401")
    assert transition is not None and transition.after is State.HALF_OPEN
    assert core.router.breaker("claude", "primary").state() is State.HALF_OPEN
    assert core.store.flush()
    assert saved_breakers(db)[("claude", "primary")][0] == "half_open"
    assert "detour: claude/primary circuit open -> half_open (recovery probe answered http 401)" in [
        r.getMessage() for r in caplog.records if r.levelno == logging.INFO
    ]
    assert core.switches.current("claude") == "backup"  # half-open is no switch yet
    clock.advance(POLICY.recovery_probe)
    assert core.recovery_probes() == []  # no longer open: never probed again
    clock.advance(10.0)  # switch_min_interval
    for _ in range(POLICY.success_threshold):
        attempt(core, "primary", OK)
    assert core.switches.current("claude") == "primary"


def test_a_failed_recovery_probe_changes_nothing_and_never_logs_a_key(
    core: Core, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="detour")
    trip(core, "backup")
    clock.advance(POLICY.recovery_probe)
    breaker = core.router.breaker("claude", "backup")
    before = breaker.raw
    (ticket,) = core.recovery_probes()
    assert core.probed(ticket, False, f"http 503 for key {SECRET}") is None
    assert breaker.state() is State.OPEN
    assert (breaker.raw.open_until, breaker.raw.open_for) == (before.open_until, before.open_for)
    assert SECRET not in caplog.text


def test_a_late_recovery_probe_answer_for_a_reopened_circuit_is_ignored(core: Core, clock: FakeClock) -> None:
    trip(core, "primary")
    clock.advance(POLICY.recovery_probe)
    (ticket,) = core.recovery_probes()
    clock.advance(POLICY.open_for)  # half-open now: a real probe fails, the circuit opens again
    attempt(core, "primary", FAIL)
    assert core.router.breaker("claude", "primary").state() is State.OPEN
    assert core.probed(ticket, True, "recovery probe answered http 200") is None
    assert core.router.breaker("claude", "primary").state() is State.OPEN
