"""The router: which providers of an app's failover queue may take the next request.

It owns one circuit breaker per (app, provider) and answers `select_providers` by walking the queue
from the top every time, so traffic returns to the primary as soon as its breaker lets it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from addon.breaker import BreakerSnapshot, CircuitBreaker, Clock, Permit, State, Transition
from addon.classify import Verdict
from addon.model import Config, Provider

BreakerKey = tuple[str, str]


@dataclass(frozen=True)
class ProviderStatus:
    """One provider's health as shown by `detour.status`."""

    provider: str
    state: State
    consecutive_failures: int
    probe_in: float


class Router:
    def __init__(
        self,
        config: Config,
        clock: Clock,
        snapshots: Mapping[BreakerKey, BreakerSnapshot] | None = None,
    ) -> None:
        self._clock = clock
        self._breakers: dict[BreakerKey, CircuitBreaker] = {}
        #: Each app's queue with its breakers, in priority order: what every request walks.
        self._queues: dict[str, tuple[tuple[Provider, CircuitBreaker], ...]] = {}
        self.config = config
        self._apply(config, snapshots or {})

    def reconfigure(self, config: Config) -> list[BreakerKey]:
        """Adopt a new config; breakers of providers that still exist keep their state.

        Returns the keys of breakers that were dropped, so their persisted state can be forgotten.
        """
        self.config = config
        return self._apply(config, {})

    def _apply(self, config: Config, snapshots: Mapping[BreakerKey, BreakerSnapshot]) -> list[BreakerKey]:
        wanted: dict[BreakerKey, Provider] = {
            (app.name, p.id): p for app in config.apps for p in app.providers
        }
        dropped = [key for key in self._breakers if key not in wanted]
        for key in dropped:
            del self._breakers[key]
        for key, provider in wanted.items():
            existing = self._breakers.get(key)
            if existing is not None:
                existing.policy = provider.breaker
            else:
                self._breakers[key] = CircuitBreaker(provider.breaker, self._clock, snapshots.get(key))
        self._queues = {
            app.name: tuple((p, self._breakers[(app.name, p.id)]) for p in app.providers)
            for app in config.apps
        }
        return dropped

    def breaker(self, app: str, provider: str) -> CircuitBreaker:
        return self._breakers[(app, provider)]

    def _queue(self, app: str) -> tuple[tuple[Provider, CircuitBreaker], ...]:
        queue = self._queues.get(app)
        if queue is None:
            raise KeyError(f"unknown app {app!r}")
        return queue

    def select_providers(self, app: str) -> list[Provider]:
        """The queue in priority order without open circuits.

        When every circuit is open the provider whose open period ends first is still returned, so a
        request is tried rather than refused without trying.
        """
        available = [p for p, breaker in self._queue(app) if breaker.admits()]
        if available:
            return available
        fallback = self._soonest_open(app)
        return [fallback] if fallback is not None else []

    def _soonest_open(self, app: str) -> Provider | None:
        """When no provider admits a call: the open one whose period ends first.

        Half-open providers whose probe slots are taken are left alone (their probe limit holds).
        """
        queue = self._queue(app)
        if any(breaker.admits() for _, breaker in queue):
            return None
        opened = [(p, breaker) for p, breaker in queue if breaker.state() is State.OPEN]
        soonest = min(opened, key=lambda pair: pair[1].open_remaining(), default=None)
        return soonest[0] if soonest is not None else None

    def acquire(self, app: str, provider: str) -> Permit | None:
        """Take the permit for actually trying `provider` now, or None if its breaker refuses.

        Half-open providers take their probe slot here, not in `select_providers`, so a provider
        that was selected but never tried doesn't hold a slot.
        """
        breaker = self._breakers.get((app, provider))
        if breaker is None:  # unknown (a request in flight asks the control plane, which handles it)
            return None
        permit = breaker.acquire()
        if permit is not None:
            return permit
        fallback = self._soonest_open(app)
        if fallback is not None and fallback.id == provider:
            return breaker.acquire_forced()
        return None

    def record_result(
        self, app: str, provider: str, permit: Permit, verdict: Verdict
    ) -> Transition | None:
        """Feed one attempt's verdict to the provider's breaker; returns a state change if any."""
        breaker = self._breakers.get((app, provider))
        if breaker is None:  # the provider vanished in a reload while the attempt ran
            return None
        return breaker.record(permit, verdict.outcome, verdict.retry_after)

    def release(self, app: str, provider: str, permit: Permit) -> None:
        """Give back a permit whose attempt ended without a verdict (cancelled)."""
        breaker = self._breakers.get((app, provider))
        if breaker is not None:
            breaker.release(permit)

    def take_recovery_probes(self, busy: Collection[BreakerKey] = ()) -> list[tuple[str, Provider, int]]:
        """(app, provider, generation) of every open circuit whose recovery probe is due, taken now;
        circuits in `busy` (a probe still in flight) are left for later."""
        due = []
        for app, queue in self._queues.items():
            for provider, breaker in queue:
                if (app, provider.id) in busy:
                    continue
                generation = breaker.take_recovery_probe()
                if generation is not None:
                    due.append((app, provider, generation))
        return due

    def probed(self, app: str, provider: str, generation: int, reason: str) -> Transition | None:
        """A recovery probe was answered; returns the state change if any (see `breaker.probed`)."""
        breaker = self._breakers.get((app, provider))
        if breaker is None:  # the provider vanished in a reload while its probe ran
            return None
        return breaker.probed(generation, reason)

    def reset(self, app: str, provider: str) -> None:
        self._breakers[(app, provider)].reset()

    def snapshot(self, app: str, provider: str) -> BreakerSnapshot:
        return self._breakers[(app, provider)].snapshot()

    def status(self, app: str) -> list[ProviderStatus]:
        return [
            ProviderStatus(p.id, breaker.state(), breaker.raw.consecutive_failures, breaker.open_remaining())
            for p, breaker in self._queue(app)
        ]
