"""Per-provider circuit breaker with injected time.

The transitions are pure functions from one frozen `BreakerState` to the next, so every rule (open,
half-open, probe admission, backoff, stale results) is testable as a table under a fake clock. The
`CircuitBreaker` holder only keeps the current state and hands out permits.

Recovery has two paths. The lazy one: once `open_until` passes, the next real request tests the
provider (half-open). The active one: while the circuit is open, Detour asks the provider itself every
`recovery_probe` seconds (`addon.prober`); an answer moves the circuit to half-open at once, so a
provider that recovered gets real traffic within about one interval, however long the backoff grew.
A failed recovery probe changes nothing: only real requests lengthen the open period.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

from addon.classify import Outcome
from addon.model import BreakerPolicy

Clock = Callable[[], float]

#: The error-rate window is approximated by this many buckets, so recording a result is O(1).
WINDOW_BUCKETS = 10


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Bucket(NamedTuple):
    """One slice of the error-rate window; a NamedTuple, since every request replaces one."""

    start: float
    total: int
    failures: int


@dataclass(frozen=True)
class BreakerState:
    state: State = State.CLOSED
    consecutive_failures: int = 0
    #: When an OPEN circuit may admit a probe.
    open_until: float = 0.0
    #: The period the circuit was last opened for; a failed probe doubles it.
    open_for: float = 0.0
    #: Bumped each time the circuit opens, so results of calls admitted earlier are recognised as stale.
    generation: int = 0
    probes_in_flight: int = 0
    probe_successes: int = 0
    buckets: tuple[Bucket, ...] = ()
    #: When the next active recovery probe of an OPEN circuit is due.
    probe_at: float = 0.0
    #: The circuit is half-open because a recovery probe was answered.
    probe_opened: bool = False
    #: A recovery probe's answer proved wrong in this outage (the model list answered, the real
    #: request then failed): until the circuit closes, only the open period brings it back.
    probes_distrusted: bool = False


@dataclass(frozen=True)
class Permit:
    """Proof that a call was admitted; returned to the breaker with the call's result."""

    generation: int
    probe: bool
    forced: bool = False


@dataclass(frozen=True)
class Transition:
    before: State
    after: State
    reason: str


@dataclass(frozen=True)
class BreakerSnapshot:
    """What survives a restart: an open circuit stays open until its time is up."""

    state: State
    consecutive_failures: int
    open_until: float
    open_for: float


# --- pure transitions -------------------------------------------------------------------------


def refreshed(s: BreakerState, now: float) -> BreakerState:
    """An OPEN circuit whose period is over becomes HALF_OPEN; checked lazily on every use."""
    if s.state is State.OPEN and now >= s.open_until:
        return replace(s, state=State.HALF_OPEN, probes_in_flight=0, probe_successes=0)
    return s


def admitted(s: BreakerState, policy: BreakerPolicy, now: float) -> tuple[BreakerState, Permit | None]:
    """Admit a call if the circuit allows one, taking a probe slot when half-open."""
    s = refreshed(s, now)
    if s.state is State.CLOSED:
        return s, _plain_permit(s.generation)
    if s.state is State.HALF_OPEN and s.probes_in_flight < policy.half_open_probes:
        return replace(s, probes_in_flight=s.probes_in_flight + 1), Permit(s.generation, probe=True)
    return s, None


@functools.lru_cache(maxsize=16)
def _plain_permit(generation: int) -> Permit:
    """Permits are immutable, so the closed circuit's permit of a generation is built once."""
    return Permit(generation, probe=False)


def forced(s: BreakerState, now: float) -> tuple[BreakerState, Permit]:
    """Admit a call although the circuit is open: used when every provider of an app is open."""
    s = refreshed(s, now)
    return s, Permit(s.generation, probe=True, forced=True)


def released(s: BreakerState, permit: Permit) -> BreakerState:
    """Give back a probe slot; every exit path of an admitted call ends here."""
    if (
        permit.probe
        and not permit.forced
        and s.state is State.HALF_OPEN
        and permit.generation == s.generation
        and s.probes_in_flight > 0
    ):
        return replace(s, probes_in_flight=s.probes_in_flight - 1)
    return s


def recorded(
    s: BreakerState,
    policy: BreakerPolicy,
    permit: Permit,
    outcome: Outcome,
    now: float,
    retry_after: float | None = None,
) -> tuple[BreakerState, Transition | None]:
    """The state after one admitted call ended with `outcome`."""
    s = released(refreshed(s, now), permit)
    failed = outcome.counts_as_failure
    if not failed and outcome is not Outcome.SUCCESS:
        return s, None
    if permit.generation != s.generation:
        # Admitted before the circuit last opened: it says nothing about the provider now, except
        # that an overloaded provider asked for a pause.
        if failed and s.state is State.OPEN and retry_after:
            return _paused(s, now + min(retry_after, policy.max_open_for)), None
        return s, None
    if s.state is State.CLOSED:
        return _recorded_closed(s, policy, failed, now, retry_after)
    if permit.forced and failed and s.state is State.HALF_OPEN:
        # A forced call was let through early; its failure must not lengthen the backoff.
        return _opened(s, policy, max(s.open_for, policy.open_for), now, retry_after, "forced call failed")
    if s.state is State.HALF_OPEN:
        return _recorded_probe(s, policy, failed, now, retry_after)
    # OPEN and same generation: only a forced call gets here.
    if failed:
        if retry_after:
            s = _paused(s, now + min(retry_after, policy.max_open_for))
        return s, None
    half = replace(s, state=State.HALF_OPEN, probes_in_flight=0, probe_successes=0)
    return _recorded_probe(half, policy, False, now, None)


def _recorded_closed(
    s: BreakerState, policy: BreakerPolicy, failed: bool, now: float, retry_after: float | None
) -> tuple[BreakerState, Transition | None]:
    buckets = _with_result(s.buckets, policy.window, now, failed)
    if not failed:
        # The path of nearly every request: built directly, `replace` costs several times more.
        closed = BreakerState(
            State.CLOSED, 0, s.open_until, s.open_for, s.generation, s.probes_in_flight,
            s.probe_successes, buckets,
        )
        return closed, None
    s = replace(s, consecutive_failures=s.consecutive_failures + 1, buckets=buckets)
    if s.consecutive_failures >= policy.failure_threshold:
        reason = f"{s.consecutive_failures} consecutive failures"
        return _opened(s, policy, policy.open_for, now, retry_after, reason)
    total, failures = _window_counts(buckets, policy.window, now)
    if total >= policy.min_requests and failures / total >= policy.error_rate:
        reason = f"{failures}/{total} failures within {policy.window:g}s"
        return _opened(s, policy, policy.open_for, now, retry_after, reason)
    return s, None


def _recorded_probe(
    s: BreakerState,
    policy: BreakerPolicy,
    failed: bool,
    now: float,
    retry_after: float | None,
) -> tuple[BreakerState, Transition | None]:
    if failed:
        period = min(max(s.open_for, policy.open_for) * 2, policy.max_open_for)
        # A model list that answers while real requests fail would half-open the circuit every
        # interval and make a user's request pay each time: stop trusting it for this outage.
        distrusted = s.probes_distrusted or s.probe_opened
        s = replace(s, probes_distrusted=distrusted)
        return _opened(s, policy, period, now, retry_after, "probe failed")
    successes = s.probe_successes + 1
    if successes >= policy.success_threshold:
        closed = BreakerState(generation=s.generation)
        return closed, Transition(State.HALF_OPEN, State.CLOSED, f"{successes} probe successes")
    return replace(s, probe_successes=successes), None


def _opened(
    s: BreakerState,
    policy: BreakerPolicy,
    period: float,
    now: float,
    retry_after: float | None,
    reason: str,
) -> tuple[BreakerState, Transition]:
    pause = min(retry_after, policy.max_open_for) if retry_after else 0.0
    open_until = now + max(period, pause)
    opened = replace(
        s,
        state=State.OPEN,
        open_until=open_until,
        open_for=period,
        generation=s.generation + 1,
        probes_in_flight=0,
        probe_successes=0,
        # A provider that asked for a pause (Retry-After) isn't asked again before it ends.
        probe_at=open_until if s.probes_distrusted else now + max(policy.recovery_probe, pause),
        probe_opened=False,
    )
    return opened, Transition(s.state, State.OPEN, reason)


def _paused(s: BreakerState, until: float) -> BreakerState:
    """An open circuit whose provider asked for a pause until `until`: neither real requests nor
    recovery probes go to it before then."""
    return replace(s, open_until=max(s.open_until, until), probe_at=max(s.probe_at, until))


def recovery_due(s: BreakerState, policy: BreakerPolicy, now: float) -> bool:
    """Is an active recovery probe of this circuit due? Only while it is OPEN (a half-open circuit is
    tested by real requests), and only when the policy enables the probe."""
    return policy.recovery_probe > 0 and refreshed(s, now).state is State.OPEN and now >= s.probe_at


def recovery_taken(s: BreakerState, policy: BreakerPolicy, now: float) -> tuple[BreakerState, int | None]:
    """Take the due recovery probe: the next one is due an interval from now, whatever this one's
    fate. Returns the generation the probe tests (for `probed`), or None when none is due."""
    if not recovery_due(s, policy, now):
        return s, None
    return replace(s, probe_at=now + policy.recovery_probe), s.generation


def probed(
    s: BreakerState, generation: int, now: float, reason: str
) -> tuple[BreakerState, Transition | None]:
    """A recovery probe of `generation` was answered: the provider's server is up again, so the OPEN
    circuit becomes HALF_OPEN now and the next real requests test it (`success_threshold` of them
    close it). It doesn't close it: a model list can answer while the model endpoint is overloaded.

    An answer for an earlier generation (the circuit opened again meanwhile), or for a circuit that is
    no longer open, changes nothing.
    """
    s = refreshed(s, now)
    if s.state is not State.OPEN or s.generation != generation:
        return s, None
    half = replace(s, state=State.HALF_OPEN, probes_in_flight=0, probe_successes=0, probe_opened=True)
    return half, Transition(State.OPEN, State.HALF_OPEN, reason)


def _with_result(
    buckets: tuple[Bucket, ...], window: float, now: float, failed: bool
) -> tuple[Bucket, ...]:
    width = window / WINDOW_BUCKETS
    # Buckets are in start order: when the oldest is still in the window, all are (the usual case,
    # which then skips the filter).
    expired = bool(buckets) and buckets[0].start <= now - window
    live = tuple(b for b in buckets if b.start > now - window) if expired else buckets
    if live and now < live[-1].start + width:
        last = live[-1]
        updated = Bucket(last.start, last.total + 1, last.failures + int(failed))
        return (*live[:-1], updated)
    return (*live[-(WINDOW_BUCKETS - 1) :], Bucket(now, 1, int(failed)))


def _window_counts(buckets: tuple[Bucket, ...], window: float, now: float) -> tuple[int, int]:
    live = [b for b in buckets if b.start > now - window]
    return sum(b.total for b in live), sum(b.failures for b in live)


# --- the stateful holder ----------------------------------------------------------------------


class CircuitBreaker:
    """One provider's breaker: holds the current `BreakerState` and applies the pure transitions."""

    def __init__(
        self,
        policy: BreakerPolicy,
        clock: Clock,
        snapshot: BreakerSnapshot | None = None,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._s = BreakerState()
        if snapshot is not None:
            self._s = BreakerState(
                state=snapshot.state,
                consecutive_failures=snapshot.consecutive_failures,
                open_until=snapshot.open_until,
                open_for=snapshot.open_for,
                # A restored open circuit is probed an interval after the start, like a new one.
                probe_at=clock() + policy.recovery_probe,
            )

    @property
    def raw(self) -> BreakerState:
        return self._s

    def state(self) -> State:
        self._s = refreshed(self._s, self._clock())
        return self._s.state

    def admits(self) -> bool:
        """Would `acquire` succeed now? Does not take a permit."""
        s = refreshed(self._s, self._clock())
        if s.state is State.CLOSED:
            return True
        return s.state is State.HALF_OPEN and s.probes_in_flight < self.policy.half_open_probes

    def open_remaining(self) -> float:
        """Seconds until an open circuit admits a probe (0 when it already would)."""
        s = refreshed(self._s, self._clock())
        return max(0.0, s.open_until - self._clock()) if s.state is State.OPEN else 0.0

    def acquire(self) -> Permit | None:
        self._s, permit = admitted(self._s, self.policy, self._clock())
        return permit

    def acquire_forced(self) -> Permit:
        self._s, permit = forced(self._s, self._clock())
        return permit

    def release(self, permit: Permit) -> None:
        self._s = released(self._s, permit)

    def record(
        self, permit: Permit, outcome: Outcome, retry_after: float | None = None
    ) -> Transition | None:
        self._s, transition = recorded(
            self._s, self.policy, permit, outcome, self._clock(), retry_after
        )
        return transition

    def take_recovery_probe(self) -> int | None:
        """The generation to probe if a recovery probe is due now (it is then taken), else None."""
        self._s, generation = recovery_taken(self._s, self.policy, self._clock())
        return generation

    def probed(self, generation: int, reason: str) -> Transition | None:
        """A recovery probe of `generation` was answered (see `probed`)."""
        self._s, transition = probed(self._s, generation, self._clock(), reason)
        return transition

    def reset(self) -> None:
        self._s = BreakerState(generation=self._s.generation + 1)

    def snapshot(self) -> BreakerSnapshot:
        s = refreshed(self._s, self._clock())
        return BreakerSnapshot(s.state, s.consecutive_failures, s.open_until, s.open_for)
