"""The circuit breaker as transition tables under a fake clock, plus property-based checks."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from fakeclock import START, FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from addon.breaker import (
    BreakerSnapshot,
    BreakerState,
    CircuitBreaker,
    Permit,
    State,
    Transition,
    admitted,
    probed,
    recorded,
    recovery_due,
    recovery_taken,
    refreshed,
    released,
)
from addon.classify import MAX_RETRY_AFTER, Outcome
from addon.model import BreakerPolicy

CLOSED, OPEN, HALF = State.CLOSED, State.OPEN, State.HALF_OPEN

OUTCOMES = {
    "ok": Outcome.SUCCESS,
    "fail": Outcome.PROVIDER_FAILURE,
    "timeout": Outcome.TIMEOUT,
    "connect": Outcome.CONNECT_FAILURE,
    "client_error": Outcome.CLIENT_ERROR,
}

#: The defaults, spelled out so the tables don't depend on them silently.
P = BreakerPolicy(
    failure_threshold=3,
    error_rate=0.5,
    min_requests=10,
    window=60.0,
    open_for=30.0,
    max_open_for=600.0,
    success_threshold=2,
    half_open_probes=1,
)
#: Error-rate policy: the consecutive rule is out of the way.
RATE4 = replace(P, failure_threshold=100, min_requests=4)
RATE10 = replace(P, failure_threshold=100, min_requests=10)
PROBES3 = replace(P, half_open_probes=3)
PROBES2_ST1 = replace(P, half_open_probes=2, success_threshold=1)
ST1 = replace(P, success_threshold=1)
ST3 = replace(P, success_threshold=3)


@dataclass
class Driver:
    """Runs step tuples against one breaker; named permits let a table interleave calls."""

    policy: BreakerPolicy
    clock: FakeClock = field(default_factory=FakeClock)
    snapshot: BreakerSnapshot | None = None
    permits: dict[str, Permit] = field(default_factory=dict)
    transitions: list[Transition] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cb = CircuitBreaker(self.policy, self.clock, self.snapshot)

    def run(self, steps: list[tuple[Any, ...]]) -> Driver:
        for i, step in enumerate(steps):
            try:
                self.step(*step)
            except AssertionError as e:
                raise AssertionError(f"step {i} {step!r}: {e}") from e
        return self

    def _record(self, permit: Permit, outcome: str, retry_after: float | None = None) -> None:
        t = self.cb.record(permit, OUTCOMES[outcome], retry_after)
        if t is not None:
            self.transitions.append(t)

    def step(self, op: str, *args: Any) -> None:
        if op in OUTCOMES:  # a whole admitted call: acquire, then record
            permit = self.cb.acquire()
            assert permit is not None, f"{op}: not admitted in {self.cb.state()}"
            self._record(permit, op, *args)
        elif op == "advance":
            self.clock.advance(args[0])
        elif op == "acquire":
            permit = self.cb.acquire()
            assert permit is not None, f"acquire {args[0]}: not admitted in {self.cb.state()}"
            self.permits[args[0]] = permit
        elif op == "refused":
            assert not self.cb.admits()
            assert self.cb.acquire() is None
        elif op == "forced":
            self.permits[args[0]] = self.cb.acquire_forced()
        elif op == "record":
            name, outcome, *rest = args
            self._record(self.permits.pop(name), outcome, *rest)
        elif op == "release":
            self.cb.release(self.permits.pop(args[0]))
        elif op == "reset":
            self.cb.reset()
        elif op == "expect":
            self.expect(*args)
        else:
            raise ValueError(op)

    def expect(self, state: State, admits: bool, remaining: float) -> None:
        assert self.cb.state() is state
        assert self.cb.admits() is admits
        assert self.cb.open_remaining() == pytest.approx(remaining, abs=1e-6)


FAIL3 = [("fail",)] * 3
OPENED = FAIL3  # with P: open for 30 s
HALF_OPENED = [*FAIL3, ("advance", 30)]

# id, policy, steps, expected state, admits, open_remaining
TABLE: list[tuple[str, BreakerPolicy, list[tuple[Any, ...]], State, bool, float]] = [
    # --- consecutive failures --------------------------------------------------------------------
    ("fresh-closed", P, [], CLOSED, True, 0),
    ("one-failure", P, [("fail",)], CLOSED, True, 0),
    ("two-failures", P, [("fail",)] * 2, CLOSED, True, 0),
    ("threshold-opens", P, FAIL3, OPEN, False, 30),
    ("threshold-1", replace(P, failure_threshold=1), [("fail",)], OPEN, False, 30),
    ("timeout-connect-count", P, [("timeout",), ("connect",), ("fail",)], OPEN, False, 30),
    ("success-resets-consecutive", P, [("fail",), ("fail",), ("ok",), ("fail",), ("fail",)], CLOSED, True, 0),
    ("success-resets-then-threshold", P, [("fail",), ("fail",), ("ok",), *FAIL3], OPEN, False, 30),
    (
        "client-error-neutral-keeps-count",
        P,
        [("fail",), ("fail",), ("client_error",), ("fail",)],
        OPEN,
        False,
        30,
    ),
    ("client-errors-never-open", P, [("client_error",)] * 50, CLOSED, True, 0),
    ("successes-stay-closed", P, [("ok",)] * 50, CLOSED, True, 0),
    ("open-counts-down", P, [*FAIL3, ("advance", 10)], OPEN, False, 20),
    ("open-refuses", P, [*FAIL3, ("refused",), ("advance", 29), ("refused",)], OPEN, False, 1),
    # --- error rate ------------------------------------------------------------------------------
    ("rate-below-min-requests", RATE4, [("fail",)] * 3, CLOSED, True, 0),
    ("rate-at-min-requests-opens", RATE4, [("ok",), ("fail",), ("ok",), ("fail",)], OPEN, False, 30),
    ("rate-below-error-rate", RATE4, [("ok",), ("ok",), ("fail",), ("ok",), ("fail",)], CLOSED, True, 0),
    ("rate-10-not-before-min", RATE10, [("fail",), ("ok",)] * 4, CLOSED, True, 0),
    ("rate-10-at-min", RATE10, [*[("fail",), ("ok",)] * 4, ("ok",), ("fail",)], OPEN, False, 30),
    (
        "rate-client-errors-not-in-window",
        RATE4,
        [("fail",), ("client_error",), ("client_error",), ("fail",)],
        CLOSED,
        True,
        0,
    ),
    (
        "rate-full-window-opens",
        RATE4,
        [("fail",), ("ok",), ("fail",), ("ok",), ("ok",), ("fail",)],
        OPEN,
        False,
        30,
    ),
    # --- sliding window ---------------------------------------------------------------------------
    ("window-no-expiry", RATE4, [("fail",)] * 3 + [("ok",), ("fail",)], OPEN, False, 30),
    ("window-expired", RATE4, [("fail",)] * 3 + [("advance", 61), ("ok",), ("fail",)], CLOSED, True, 0),
    (
        "window-partial-expiry",
        RATE4,
        [
            ("fail",),
            ("fail",),
            ("advance", 40),
            ("ok",),
            ("ok",),
            ("advance", 25),  # t=65: the two failures fell out, the two successes did not
            ("fail",),
            ("expect", CLOSED, True, 0),  # window: ok ok fail = 3 < min_requests
            ("fail",),  # window: ok ok fail fail = 2/4
        ],
        OPEN,
        False,
        30,
    ),
    # --- lazy half-open ---------------------------------------------------------------------------
    ("half-open-at-open_for", P, HALF_OPENED, HALF, True, 0),
    ("still-open-just-before", P, [*FAIL3, ("advance", 29.5)], OPEN, False, 0.5),
    ("half-open-long-after", P, [*FAIL3, ("advance", 100_000)], HALF, True, 0),
    # --- probe limit ------------------------------------------------------------------------------
    ("probe-limit-1", P, [*HALF_OPENED, ("acquire", "a"), ("refused",)], HALF, False, 0),
    ("probe-limit-3-two-taken", PROBES3, [*HALF_OPENED, ("acquire", "a"), ("acquire", "b")], HALF, True, 0),
    (
        "probe-limit-3",
        PROBES3,
        [*HALF_OPENED, ("acquire", "a"), ("acquire", "b"), ("acquire", "c"), ("refused",)],
        HALF,
        False,
        0,
    ),
    (
        "admits-takes-no-permit",
        P,
        [*HALF_OPENED, ("expect", HALF, True, 0), ("expect", HALF, True, 0), ("acquire", "a")],
        HALF,
        False,
        0,
    ),
    # --- the probe permit comes back on every exit path -------------------------------------------
    ("release-on-success", P, [*HALF_OPENED, ("acquire", "a"), ("record", "a", "ok")], HALF, True, 0),
    (
        "release-on-client-error",
        P,
        [*HALF_OPENED, ("acquire", "a"), ("record", "a", "client_error")],
        HALF,
        True,
        0,
    ),
    ("release-on-cancel", P, [*HALF_OPENED, ("acquire", "a"), ("release", "a")], HALF, True, 0),
    (
        "release-on-failure-reopens",
        P,
        [*HALF_OPENED, ("acquire", "a"), ("record", "a", "fail")],
        OPEN,
        False,
        60,
    ),
    (
        "release-paths-with-3-probes",
        PROBES3,
        [
            *HALF_OPENED,
            ("acquire", "a"),
            ("acquire", "b"),
            ("acquire", "c"),
            ("refused",),
            ("release", "a"),
            ("acquire", "d"),
            ("refused",),
            ("record", "b", "client_error"),
            ("acquire", "e"),
            ("refused",),
            ("record", "c", "ok"),  # one success of two
            ("acquire", "f"),
            ("refused",),
        ],
        HALF,
        False,
        0,
    ),
    (
        "release-after-reopen-is-harmless",
        P,
        [*HALF_OPENED, ("acquire", "a"), ("record", "a", "fail"), ("advance", 60), ("acquire", "b")],
        HALF,
        False,
        0,
    ),
    # --- neutral probe outcomes are not successes -------------------------------------------------
    (
        "client-error-probe-not-a-success",
        P,
        [*HALF_OPENED, ("client_error",), ("client_error",), ("client_error",), ("ok",)],
        HALF,
        True,
        0,
    ),
    (
        "client-error-then-two-ok-closes",
        P,
        [*HALF_OPENED, ("client_error",), ("ok",), ("ok",)],
        CLOSED,
        True,
        0,
    ),
    (
        "cancelled-probe-not-a-success",
        P,
        [*HALF_OPENED, ("acquire", "a"), ("release", "a"), ("ok",)],
        HALF,
        True,
        0,
    ),
    # --- success_threshold ------------------------------------------------------------------------
    ("one-probe-success-not-enough", P, [*HALF_OPENED, ("ok",)], HALF, True, 0),
    ("two-probe-successes-close", P, [*HALF_OPENED, ("ok",), ("ok",)], CLOSED, True, 0),
    ("success-threshold-1", ST1, [*HALF_OPENED, ("ok",)], CLOSED, True, 0),
    ("success-threshold-3-two", ST3, [*HALF_OPENED, ("ok",), ("ok",)], HALF, True, 0),
    ("success-threshold-3-three", ST3, [*HALF_OPENED, ("ok",), ("ok",), ("ok",)], CLOSED, True, 0),
    (
        "concurrent-probes-close",
        PROBES3,
        [*HALF_OPENED, ("acquire", "a"), ("acquire", "b"), ("record", "b", "ok"), ("record", "a", "ok")],
        CLOSED,
        True,
        0,
    ),
    (
        "closing-resets-consecutive",
        P,
        [*HALF_OPENED, ("ok",), ("ok",), ("fail",), ("fail",)],
        CLOSED,
        True,
        0,
    ),
    (
        "closing-resets-backoff",
        P,
        [*HALF_OPENED, ("fail",), ("advance", 60), ("ok",), ("ok",), *FAIL3],
        OPEN,
        False,
        30,
    ),
    (
        "closing-resets-backoff-after-many",
        P,
        [
            *HALF_OPENED,
            ("fail",),
            ("advance", 60),
            ("fail",),
            ("advance", 120),
            ("fail",),
            ("advance", 240),
            ("ok",),
            ("ok",),
            *FAIL3,
            ("advance", 30),
            ("fail",),
        ],
        OPEN,
        False,
        60,
    ),
    # --- failed probes back off -------------------------------------------------------------------
    ("probe-fail-doubles", P, [*HALF_OPENED, ("fail",)], OPEN, False, 60),
    ("probe-timeout-doubles", P, [*HALF_OPENED, ("timeout",)], OPEN, False, 60),
    ("probe-fail-doubles-twice", P, [*HALF_OPENED, ("fail",), ("advance", 60), ("fail",)], OPEN, False, 120),
    ("probe-fail-after-one-success", P, [*HALF_OPENED, ("ok",), ("fail",)], OPEN, False, 60),
    (
        "probe-fail-capped-at-max",
        replace(P, max_open_for=50),
        [*HALF_OPENED, ("fail",), ("expect", OPEN, False, 50), ("advance", 50), ("fail",)],
        OPEN,
        False,
        50,
    ),
    ("open_for-equals-max", replace(P, max_open_for=30), [*HALF_OPENED, ("fail",)], OPEN, False, 30),
    # --- Retry-After ------------------------------------------------------------------------------
    ("retry-after-extends", P, [("fail",), ("fail",), ("fail", 120.0)], OPEN, False, 120),
    ("retry-after-shorter-than-period", P, [("fail",), ("fail",), ("fail", 5.0)], OPEN, False, 30),
    ("retry-after-capped", P, [("fail",), ("fail",), ("fail", 5000.0)], OPEN, False, 600),
    ("retry-after-zero", P, [("fail",), ("fail",), ("fail", 0.0)], OPEN, False, 30),
    ("retry-after-below-threshold", P, [("fail", 120.0)], CLOSED, True, 0),
    ("retry-after-on-probe-failure", P, [*HALF_OPENED, ("fail", 300.0)], OPEN, False, 300),
    ("retry-after-on-probe-capped", P, [*HALF_OPENED, ("fail", 5000.0)], OPEN, False, 600),
    (
        "retry-after-doesnt-feed-backoff",
        P,
        [*HALF_OPENED, ("fail", 300.0), ("advance", 300), ("fail",)],
        OPEN,
        False,
        120,
    ),
    ("retry-after-on-rate-open", RATE4, [("ok",), ("fail",), ("ok",), ("fail", 90.0)], OPEN, False, 90),
    (
        "stale-failure-retry-after-extends",
        P,
        [("acquire", "x"), *FAIL3, ("advance", 10), ("record", "x", "fail", 100.0)],
        OPEN,
        False,
        100,
    ),
    (
        "stale-failure-retry-after-capped",
        P,
        [("acquire", "x"), *FAIL3, ("record", "x", "fail", 5000.0)],
        OPEN,
        False,
        600,
    ),
    (
        "stale-failure-retry-after-shorter",
        P,
        [("acquire", "x"), *FAIL3, ("record", "x", "fail", 5.0)],
        OPEN,
        False,
        30,
    ),
    ("stale-failure-no-retry-after", P, [("acquire", "x"), *FAIL3, ("record", "x", "fail")], OPEN, False, 30),
    # --- stale permits (admitted before the circuit opened) ---------------------------------------
    ("stale-success-while-open", P, [("acquire", "x"), *FAIL3, ("record", "x", "ok")], OPEN, False, 30),
    ("stale-success-while-open-st1", ST1, [("acquire", "x"), *FAIL3, ("record", "x", "ok")], OPEN, False, 30),
    (
        "stale-success-half-open-st1",
        ST1,
        [("acquire", "x"), *HALF_OPENED, ("record", "x", "ok")],
        HALF,
        True,
        0,
    ),
    (
        "stale-success-doesnt-count-as-probe",
        P,
        [("acquire", "x"), *HALF_OPENED, ("record", "x", "ok"), ("ok",)],
        HALF,
        True,
        0,
    ),
    (
        "stale-success-doesnt-free-probe-slot",
        P,
        [("acquire", "x"), *HALF_OPENED, ("acquire", "a"), ("record", "x", "ok")],
        HALF,
        False,
        0,
    ),
    (
        "stale-release-doesnt-free-probe-slot",
        P,
        [("acquire", "x"), *HALF_OPENED, ("acquire", "a"), ("release", "x")],
        HALF,
        False,
        0,
    ),
    (
        "stale-failure-half-open-doesnt-reopen",
        P,
        [("acquire", "x"), *HALF_OPENED, ("record", "x", "fail")],
        HALF,
        True,
        0,
    ),
    (
        "stale-probe-after-reopen",
        PROBES2_ST1,
        [
            *HALF_OPENED,
            ("acquire", "a"),
            ("acquire", "b"),
            ("record", "a", "fail"),  # reopens for 60: b is now stale
            ("advance", 60),
            ("record", "b", "ok"),  # would close with success_threshold=1 if it counted
            ("expect", HALF, True, 0),
            ("acquire", "c"),
            ("acquire", "d"),
            ("refused",),
        ],
        HALF,
        False,
        0,
    ),
    (
        "stale-probe-release-after-reopen",
        PROBES2_ST1,
        [
            *HALF_OPENED,
            ("acquire", "a"),
            ("acquire", "b"),
            ("record", "a", "fail"),
            ("advance", 60),
            ("acquire", "c"),
            ("acquire", "d"),
            ("release", "b"),
        ],
        HALF,
        False,
        0,
    ),
    (
        "stale-failure-after-close-ignored",
        P,
        [("acquire", "x"), *HALF_OPENED, ("ok",), ("ok",), ("record", "x", "fail"), ("fail",), ("fail",)],
        CLOSED,
        True,
        0,
    ),
    # --- forced calls (every provider open) -------------------------------------------------------
    ("forced-while-open-still-refuses", P, [*FAIL3, ("forced", "f"), ("refused",)], OPEN, False, 30),
    ("forced-success-moves-to-half-open", P, [*FAIL3, ("forced", "f"), ("record", "f", "ok")], HALF, True, 0),
    (
        "forced-success-then-probe-closes",
        P,
        [*FAIL3, ("forced", "f"), ("record", "f", "ok"), ("ok",)],
        CLOSED,
        True,
        0,
    ),
    ("forced-success-st1-closes", ST1, [*FAIL3, ("forced", "f"), ("record", "f", "ok")], CLOSED, True, 0),
    (
        "forced-failure-doesnt-lengthen",
        P,
        [*FAIL3, ("advance", 10), ("forced", "f"), ("record", "f", "fail")],
        OPEN,
        False,
        20,
    ),
    (
        "forced-failure-after-doubling",
        P,
        [*HALF_OPENED, ("fail",), ("advance", 10), ("forced", "f"), ("record", "f", "fail")],
        OPEN,
        False,
        50,
    ),
    (
        "forced-failure-retry-after",
        P,
        [*FAIL3, ("forced", "f"), ("record", "f", "fail", 100.0)],
        OPEN,
        False,
        100,
    ),
    (
        "forced-client-error-neutral",
        P,
        [*FAIL3, ("forced", "f"), ("record", "f", "client_error")],
        OPEN,
        False,
        30,
    ),
    ("forced-cancel-neutral", P, [*FAIL3, ("forced", "f"), ("release", "f")], OPEN, False, 30),
    ("forced-takes-no-probe-slot", P, [*HALF_OPENED, ("forced", "f"), ("acquire", "a")], HALF, False, 0),
    (
        "forced-release-frees-no-slot",
        P,
        [*HALF_OPENED, ("forced", "f"), ("acquire", "a"), ("release", "f")],
        HALF,
        False,
        0,
    ),
    (
        "forced-success-half-open-counts",
        P,
        [*HALF_OPENED, ("acquire", "a"), ("forced", "f"), ("record", "f", "ok"), ("record", "a", "ok")],
        CLOSED,
        True,
        0,
    ),
    (
        "forced-stale-success-ignored",
        ST1,
        [*HALF_OPENED, ("forced", "f"), ("fail",), ("record", "f", "ok")],
        OPEN,
        False,
        60,
    ),
    # --- reset ------------------------------------------------------------------------------------
    ("reset-closes", P, [*FAIL3, ("reset",)], CLOSED, True, 0),
    (
        "reset-clears-consecutive",
        P,
        [("fail",), ("fail",), ("reset",), ("fail",), ("fail",)],
        CLOSED,
        True,
        0,
    ),
    ("reset-clears-backoff", P, [*HALF_OPENED, ("fail",), ("reset",), *FAIL3], OPEN, False, 30),
    ("reset-clears-window", RATE4, [("fail",), ("ok",), ("fail",), ("reset",), ("fail",)], CLOSED, True, 0),
    (
        "reset-makes-permits-stale",
        P,
        [
            ("acquire", "x"),
            ("acquire", "y"),
            ("fail",),
            ("fail",),
            ("reset",),
            ("record", "x", "fail"),
            ("fail",),
            ("record", "y", "fail"),
        ],
        CLOSED,
        True,
        0,
    ),
    (
        "reset-half-open-frees-probes",
        P,
        [*HALF_OPENED, ("acquire", "a"), ("reset",), ("record", "a", "fail")],
        CLOSED,
        True,
        0,
    ),
]


@pytest.mark.parametrize(
    ("policy", "steps", "state", "admits", "remaining"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_transition_table(
    policy: BreakerPolicy, steps: list[tuple[Any, ...]], state: State, admits: bool, remaining: float
) -> None:
    Driver(policy).run(steps).expect(state, admits, remaining)


def test_table_ids_unique() -> None:
    ids = [row[0] for row in TABLE]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(
    ("max_open_for", "periods"),
    [
        (600.0, [60, 120, 240, 480, 600, 600, 600]),
        (100.0, [60, 100, 100, 100]),
        (45.0, [45, 45, 45]),
        (30.0, [30, 30]),
    ],
)
def test_failed_probes_double_up_to_max(max_open_for: float, periods: list[float]) -> None:
    d = Driver(replace(P, max_open_for=max_open_for)).run(HALF_OPENED)
    for expected in periods:
        d.run([("fail",)])
        assert d.cb.open_remaining() == pytest.approx(expected)
        d.run([("advance", expected - 0.001), ("refused",), ("advance", 0.001)])
        assert d.cb.state() is HALF
    d.run([("ok",), ("ok",), *FAIL3])  # closing resets the backoff
    assert d.cb.open_remaining() == pytest.approx(min(30.0, max_open_for))


def test_transitions_are_reported() -> None:
    d = Driver(P)
    d.run([("fail",), ("fail",)])
    assert d.transitions == []
    d.run([("fail",), ("advance", 30)])
    assert [(t.before, t.after) for t in d.transitions] == [(CLOSED, OPEN)]
    assert "3 consecutive" in d.transitions[0].reason
    d.run([("fail",), ("advance", 60), ("ok",)])
    assert [(t.before, t.after) for t in d.transitions][1:] == [(HALF, OPEN)]
    d.run([("ok",)])
    assert [(t.before, t.after) for t in d.transitions][2:] == [(HALF, CLOSED)]
    # neutral and closed-state successes report nothing
    d.transitions.clear()
    d.run([("ok",), ("client_error",), ("acquire", "a"), ("release", "a")])
    assert d.transitions == []


def test_rate_open_reason() -> None:
    d = Driver(RATE4).run([("ok",), ("fail",), ("ok",), ("fail",)])
    assert len(d.transitions) == 1
    assert "2/4" in d.transitions[0].reason


def test_stale_success_never_closes_with_any_timing() -> None:
    """A call admitted while closed, whose success lands in every later phase, never closes."""
    for advance in (0, 10, 30, 45, 1000):
        d = Driver(ST1).run([("acquire", "x"), *FAIL3, ("advance", advance), ("record", "x", "ok")])
        assert d.cb.state() is not CLOSED, advance
        assert d.transitions[1:] == []


# --- forced failure in half-open --------------------------------------------------------------------

def test_forced_failure_in_half_open_does_not_lengthen() -> None:
    d = Driver(P).run([*HALF_OPENED, ("acquire", "a"), ("forced", "f"), ("record", "f", "fail")])
    assert d.cb.open_remaining() <= P.open_for



def test_forced_failure_recorded_after_period_does_not_lengthen() -> None:
    d = Driver(P).run([*FAIL3, ("advance", 20), ("forced", "f"), ("advance", 15), ("record", "f", "fail")])
    assert d.cb.open_remaining() <= P.open_for



def test_forced_failure_in_half_open_keeps_backoff() -> None:
    # Even if the circuit reopens, the following probe failure must back off from 30 s, not 60 s.
    d = Driver(P).run([*HALF_OPENED, ("forced", "f"), ("record", "f", "fail"), ("advance", 600), ("fail",)])
    assert d.cb.open_remaining() == pytest.approx(60)


# --- snapshot / restore -----------------------------------------------------------------------------


def test_snapshot_round_trip_open() -> None:
    d = Driver(P).run([*FAIL3, ("advance", 10)])
    snap = d.cb.snapshot()
    assert snap == BreakerSnapshot(OPEN, 3, START + 30, 30.0)

    clock = FakeClock(START + 12)  # the restarted process's clock, a little later
    restored = CircuitBreaker(P, clock, snap)
    assert restored.state() is OPEN
    assert not restored.admits()
    assert restored.acquire() is None
    assert restored.open_remaining() == pytest.approx(18)
    assert restored.snapshot() == snap

    clock.advance(17.9)
    assert restored.state() is OPEN
    clock.advance(0.1)
    assert restored.state() is HALF
    probe = restored.acquire()
    assert probe is not None
    assert restored.acquire() is None
    restored.record(probe, Outcome.PROVIDER_FAILURE)
    assert restored.open_remaining() == pytest.approx(60)  # the restored period doubles


def test_snapshot_keeps_backoff() -> None:
    d = Driver(P).run([*HALF_OPENED, ("fail",), ("advance", 60), ("fail",)])
    snap = d.cb.snapshot()
    assert snap.state is OPEN
    assert snap.open_for == 120.0
    r = Driver(P, clock=FakeClock(d.clock()), snapshot=snap)
    r.expect(OPEN, False, 120)
    r.run([("advance", 120), ("fail",)])
    r.expect(OPEN, False, 240)
    r.run([("advance", 240), ("ok",), ("ok",)])
    r.expect(CLOSED, True, 0)


def test_restore_open_with_retry_after() -> None:
    d = Driver(P).run([("fail",), ("fail",), ("fail", 300.0)])
    r = Driver(P, clock=FakeClock(d.clock() + 100), snapshot=d.cb.snapshot())
    r.expect(OPEN, False, 200)


def test_restore_expired_open_is_half_open() -> None:
    d = Driver(P).run(FAIL3)
    r = Driver(P, clock=FakeClock(d.clock() + 3600), snapshot=d.cb.snapshot())
    r.expect(HALF, True, 0)
    r.run([("ok",), ("ok",)])
    r.expect(CLOSED, True, 0)


def test_restore_closed_keeps_consecutive_failures() -> None:
    d = Driver(P).run([("fail",), ("fail",)])
    snap = d.cb.snapshot()
    assert snap == BreakerSnapshot(CLOSED, 2, 0.0, 0.0)
    r = Driver(P, clock=FakeClock(d.clock()), snapshot=snap)
    r.expect(CLOSED, True, 0)
    r.run([("fail",)])
    r.expect(OPEN, False, 30)


def test_snapshot_is_refreshed() -> None:
    d = Driver(P).run(HALF_OPENED)
    assert d.cb.snapshot().state is HALF
    r = Driver(P, clock=FakeClock(d.clock()), snapshot=d.cb.snapshot())
    r.expect(HALF, True, 0)
    r.run([("fail",)])
    r.expect(OPEN, False, 60)


def test_snapshot_of_fresh_breaker() -> None:
    d = Driver(P)
    snap = d.cb.snapshot()
    assert snap == BreakerSnapshot(CLOSED, 0, 0.0, 0.0)
    Driver(P, snapshot=snap).expect(CLOSED, True, 0)


# --- property-based ---------------------------------------------------------------------------------


@st.composite
def policies(draw: st.DrawFn) -> BreakerPolicy:
    open_for = draw(st.sampled_from([1.0, 5.0, 30.0]))
    return BreakerPolicy(
        failure_threshold=draw(st.integers(1, 4)),
        error_rate=draw(st.sampled_from([0.25, 0.5, 1.0])),
        min_requests=draw(st.integers(1, 8)),
        window=draw(st.sampled_from([10.0, 60.0])),
        open_for=open_for,
        max_open_for=open_for * draw(st.sampled_from([1, 2, 3, 10, 100])),
        success_threshold=draw(st.integers(1, 3)),
        half_open_probes=draw(st.integers(1, 3)),
    )


outcomes = st.sampled_from(list(Outcome))
retry_afters = st.one_of(st.none(), st.floats(0, MAX_RETRY_AFTER), st.sampled_from([0.0, 1.0, 45.0, 3600.0]))
advances = st.one_of(st.sampled_from([0.0, 0.5, 1.0, 5.0, 30.0, 60.0, 600.0]), st.floats(0, 4000))


def check_recovers(policy: BreakerPolicy, s: Any, outstanding: list[Permit], now: float) -> None:
    """(b) with the pure transitions: once the outstanding calls have come back (cancelled) and the
    open period has passed, `success_threshold` one-at-a-time probe successes close the circuit."""
    for permit in outstanding:
        s = released(s, permit)
    s = refreshed(s, now)
    if s.state is State.OPEN:
        now = s.open_until
        s = refreshed(s, now)
    assert s.state is not State.OPEN
    for i in range(policy.success_threshold):
        s, permit = admitted(s, policy, now)
        assert permit is not None, f"probe {i} refused in {s}"
        s, _ = recorded(s, policy, permit, Outcome.SUCCESS, now)
    assert s.state is State.CLOSED


class BreakerMachine(RuleBasedStateMachine):
    """Random interleavings of acquire / forced / record / release / advance / reset / restart."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.policy = P
        self.cb = CircuitBreaker(P, self.clock)
        self.outstanding: list[Permit] = []

    @initialize(policy=policies())
    def setup(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self.cb = CircuitBreaker(policy, self.clock)

    @rule()
    def acquire(self) -> None:
        permit = self.cb.acquire()
        if permit is not None:
            self.outstanding.append(permit)

    @rule()
    def acquire_forced(self) -> None:
        self.outstanding.append(self.cb.acquire_forced())

    @rule(outcome=outcomes, retry_after=retry_afters)
    def call(self, outcome: Outcome, retry_after: float | None) -> None:
        """A whole call: the common case, which gets to interesting states quickly."""
        permit = self.cb.acquire()
        if permit is not None:
            self.cb.record(permit, outcome, retry_after)

    @precondition(lambda self: self.outstanding)
    @rule(data=st.data(), outcome=outcomes, retry_after=retry_afters)
    def record(self, data: st.DataObject, outcome: Outcome, retry_after: float | None) -> None:
        i = data.draw(st.integers(0, len(self.outstanding) - 1))
        self.cb.record(self.outstanding.pop(i), outcome, retry_after)

    @precondition(lambda self: self.outstanding)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.outstanding) - 1))
        self.cb.release(self.outstanding.pop(i))

    @rule(seconds=advances)
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def reset(self) -> None:
        self.cb.reset()

    @rule()
    def restart(self) -> None:
        """A process restart: the snapshot survives, the calls in flight don't."""
        self.cb = CircuitBreaker(self.policy, self.clock, self.cb.snapshot())
        self.outstanding.clear()

    @invariant()
    def probe_permits_within_limit(self) -> None:
        """(a) Outstanding probe permits of the current half-open period never exceed the limit."""
        s = refreshed(self.cb.raw, self.clock())
        current = [p for p in self.outstanding if p.probe and not p.forced and p.generation == s.generation]
        assert len(current) <= self.policy.half_open_probes
        if s.state is State.HALF_OPEN:
            assert s.probes_in_flight == len(current)
            assert self.cb.admits() is (len(current) < self.policy.half_open_probes)

    @invariant()
    def open_period_bounded(self) -> None:
        """(c) An open circuit never waits longer than max_open_for from now."""
        now = self.clock()
        s = refreshed(self.cb.raw, now)
        if s.state is State.OPEN:
            assert 0 < s.open_until - now <= self.policy.max_open_for + 1e-6
        assert 0 <= self.cb.open_remaining() <= self.policy.max_open_for + 1e-6

    @invariant()
    def recovers(self) -> None:
        """(b) From here, the open period plus success_threshold probe successes close it."""
        check_recovers(self.policy, self.cb.raw, self.outstanding, self.clock())


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


# The same properties black-box, through CircuitBreaker only, over flat random op sequences.

ops = st.lists(
    st.one_of(
        st.tuples(st.just("call"), outcomes, retry_afters),
        st.tuples(st.just("acquire")),
        st.tuples(st.just("forced")),
        st.tuples(st.just("record"), st.integers(0, 20), outcomes, retry_afters),
        st.tuples(st.just("release"), st.integers(0, 20)),
        st.tuples(st.just("advance"), advances),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(policy=policies(), ops=ops)
def test_random_ops_black_box(policy: BreakerPolicy, ops: list[tuple[Any, ...]]) -> None:
    clock = FakeClock()
    cb = CircuitBreaker(policy, clock)
    outstanding: list[Permit] = []
    for op, *args in ops:
        if op == "call":
            permit = cb.acquire()
            if permit is not None:
                cb.record(permit, args[0], args[1])
        elif op == "acquire":
            permit = cb.acquire()
            if permit is not None:
                outstanding.append(permit)
        elif op == "forced":
            outstanding.append(cb.acquire_forced())
        elif op == "record" and outstanding:
            cb.record(outstanding.pop(args[0] % len(outstanding)), args[1], args[2])
        elif op == "release" and outstanding:
            cb.release(outstanding.pop(args[0] % len(outstanding)))
        elif op == "advance":
            clock.advance(args[0])
        # (c) after every step
        assert 0 <= cb.open_remaining() <= policy.max_open_for + 1e-6
        # (a) after every step: probes admitted in this half-open period never exceed the limit,
        # i.e. one more acquire is refused once the limit's worth of probes is out.
        if cb.state() is State.HALF_OPEN:
            gen = refreshed(cb.raw, clock()).generation
            mine = sum(1 for p in outstanding if p.probe and not p.forced and p.generation == gen)
            assert mine <= policy.half_open_probes
            assert cb.admits() is (mine < policy.half_open_probes)

    # (b) every call in flight comes back (cancelled), the open period passes, and then
    # success_threshold one-at-a-time probe successes close the circuit.
    for permit in outstanding:
        cb.release(permit)
    clock.advance(cb.open_remaining())
    assert cb.state() is not State.OPEN
    for _ in range(policy.success_threshold):
        permit = cb.acquire()
        assert permit is not None
        cb.record(permit, Outcome.SUCCESS)
    assert cb.state() is State.CLOSED


# --- active recovery probe --------------------------------------------------------------------------
# While a circuit is open, Detour probes the provider itself every `recovery_probe` seconds; an answer
# moves the circuit to half-open at once, so real requests test it well before `open_for` is over.

#: The example config's breaker: probe every 5 s.
RP = replace(P, recovery_probe=5.0)


def test_defaults_cap_the_backoff_at_two_minutes_and_probe_every_five_seconds() -> None:
    assert BreakerPolicy().max_open_for == 120.0
    assert BreakerPolicy().recovery_probe == 5.0


def test_recovery_probe_is_due_every_interval_while_open() -> None:
    s, _ = opened_state(RP)
    now = START
    assert not recovery_due(s, RP, now + 4.9)
    assert recovery_due(s, RP, now + 5.0)
    s, generation = recovery_taken(s, RP, now + 5.0)
    assert generation == s.generation
    assert not recovery_due(s, RP, now + 9.9)  # taken: the next one is an interval later
    assert recovery_due(s, RP, now + 10.0)


def test_recovery_probe_not_taken_when_not_due() -> None:
    s, _ = opened_state(RP)
    assert recovery_taken(s, RP, START + 1.0) == (s, None)


@pytest.mark.parametrize("setup", ["closed", "half_open"])
def test_recovery_probe_is_never_due_unless_open(setup: str) -> None:
    s = opened_state(RP)[0] if setup == "half_open" else BreakerState()
    now = START + 30.0 if setup == "half_open" else START
    assert refreshed(s, now).state is (HALF if setup == "half_open" else CLOSED)
    for later in (0.0, 5.0, 60.0):
        assert not recovery_due(s, RP, now + later)
        assert recovery_taken(s, RP, now + later)[1] is None


def test_recovery_probe_off() -> None:
    off = replace(P, recovery_probe=0.0)
    s, _ = opened_state(off)
    assert not any(recovery_due(s, off, START + t) for t in (0.0, 5.0, 29.0))


def test_answered_probe_half_opens_an_open_circuit() -> None:
    s, _ = opened_state(RP)
    s, generation = recovery_taken(s, RP, START + 5.0)
    assert generation is not None
    s, transition = probed(s, generation, START + 5.2, "recovery probe answered http 401")
    assert s.state is HALF
    assert transition == Transition(OPEN, HALF, "recovery probe answered http 401")
    # It only half-opens: success_threshold real successes close the circuit.
    s, permit = admitted(s, RP, START + 5.3)
    assert permit is not None and permit.probe
    s, _ = recorded(s, RP, permit, Outcome.SUCCESS, START + 5.4)
    assert s.state is HALF
    s, permit = admitted(s, RP, START + 5.5)
    assert permit is not None
    s, transition = recorded(s, RP, permit, Outcome.SUCCESS, START + 5.6)
    assert s.state is CLOSED and transition is not None and transition.after is CLOSED


def test_answered_probe_of_an_older_generation_changes_nothing() -> None:
    s, _ = opened_state(RP)
    s, old = recovery_taken(s, RP, START + 5.0)
    assert old is not None
    # Meanwhile the period ends, a real probe fails and the circuit opens again (a new generation).
    s = refreshed(s, START + 30.0)
    s, permit = admitted(s, RP, START + 30.0)
    assert permit is not None
    s, _ = recorded(s, RP, permit, Outcome.PROVIDER_FAILURE, START + 30.0)
    assert s.state is OPEN and s.generation != old
    assert probed(s, old, START + 31.0, "late answer") == (s, None)


def test_answered_probe_leaves_closed_and_half_open_alone() -> None:
    closed = BreakerState()
    assert probed(closed, closed.generation, START, "x") == (closed, None)
    s, _ = opened_state(RP)
    half = refreshed(s, START + 30.0)
    assert probed(half, half.generation, START + 30.0, "x") == (half, None)


def test_a_failed_probe_never_lengthens_the_open_period() -> None:
    """A failed recovery probe is simply not reported: taking it only schedules the next one."""
    s, _ = opened_state(RP)
    for t in (5.0, 10.0, 15.0, 20.0, 25.0):
        s, generation = recovery_taken(s, RP, START + t)
        assert generation is not None
    assert (s.open_until, s.open_for) == (START + 30.0, 30.0)
    assert refreshed(s, START + 30.0).state is HALF


def test_recovery_probe_waits_for_retry_after() -> None:
    """A provider that asked for a pause (Retry-After) is not probed before the pause ends."""
    s = BreakerState()
    for i in range(3):
        s, permit = admitted(s, RP, START)
        assert permit is not None
        s, _ = recorded(s, RP, permit, Outcome.PROVIDER_FAILURE, START, 20.0 if i == 2 else None)
    assert s.state is OPEN
    assert not recovery_due(s, RP, START + 19.9)
    assert recovery_due(s, RP, START + 20.0)


def test_restored_open_circuit_is_probed_an_interval_after_the_restart() -> None:
    d = Driver(RP).run(FAIL3)
    clock = FakeClock(d.clock() + 2)
    restored = CircuitBreaker(RP, clock, d.cb.snapshot())
    assert restored.take_recovery_probe() is None
    clock.advance(5.0)
    generation = restored.take_recovery_probe()
    assert generation is not None
    assert restored.probed(generation, "recovery probe answered http 200") is not None
    assert restored.state() is HALF


def test_outage_of_60s_recovers_within_one_probe_interval() -> None:
    """The measured problem (issue 16): a primary down for 60 s, then healthy. Real requests every
    0.5 s, a recovery probe whenever one is due; the circuit must close within one interval (plus
    the two real successes) of the provider's recovery, whatever the backoff did meanwhile."""
    clock = FakeClock()
    cb = CircuitBreaker(RP, clock)
    healthy_at = START + 60.0
    closed_at = None
    for _ in range(400):
        up = clock() >= healthy_at
        generation = cb.take_recovery_probe()
        if generation is not None and up:
            cb.probed(generation, "recovery probe answered http 200")
        permit = cb.acquire()
        if permit is not None:
            cb.record(permit, Outcome.SUCCESS if up else Outcome.PROVIDER_FAILURE)
        if up and cb.state() is CLOSED:
            closed_at = clock()
            break
        clock.advance(0.5)
    assert closed_at is not None
    assert closed_at - healthy_at <= RP.recovery_probe + 0.5 + 1e-9


def opened_state(policy: BreakerPolicy) -> tuple[BreakerState, Transition | None]:
    """A circuit opened at START by `failure_threshold` failures."""
    s = BreakerState()
    transition = None
    for _ in range(policy.failure_threshold):
        s, permit = admitted(s, policy, START)
        assert permit is not None
        s, transition = recorded(s, policy, permit, Outcome.PROVIDER_FAILURE, START)
    assert s.state is OPEN
    return s, transition
