"""The control plane: config, router, switch manager and state backend wired together.

Everything that outlives one request lives here: which providers an app may try, their breakers,
the app's current provider, pins, and what is persisted. It is free of mitmproxy and of I/O other
than the state backend, so it is driven directly in tests with a fake clock.

Two clocks: `clock` is monotonic and drives every deadline and breaker period, so a wall-clock jump
(NTP, a suspended laptop, a changed time zone) can't open or close circuits; `wall` only stamps what
people read and what survives a restart (breaker snapshots are stored in wall time and converted back
at load, since a monotonic clock doesn't survive the process).

The app's **current provider** is the first provider of its queue whose circuit is closed (a pinned
one first). It changes when a breaker changes state, not when one request happens to be served
elsewhere, so the switch log has one line per real switch, with its true reason; a change within
`switch_min_interval` of the last switch waits for the interval to pass, in both directions.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from addon.breaker import BreakerSnapshot, Clock, Permit, State, Transition
from addon.classify import ErrorKind, Outcome, Verdict
from addon.formats.usage import Metering, Tokens
from addon.model import App, Config, Provider
from addon.router import BreakerKey, Router
from addon.secrets import redact
from addon.state import AttemptRecord, StateBackend
from addon.switch import SwitchEvent, SwitchManager
from addon.usage import Pricing, Totals, totals

logger = logging.getLogger("detour")

#: The attempt log's outcome for an attempt the client left before it ended (no breaker verdict).
CLIENT_GONE = "client_gone"
#: The permit of a provider that vanished in a reload while a request held it in its queue: the
#: request may still use it (the queue is a snapshot); its result is recorded by no breaker.
DETACHED = Permit(-1, probe=False)


@dataclass(frozen=True)
class ProbeTicket:
    """One recovery probe to send (`addon.prober`): to `provider` of `app`, about the circuit's
    `generation`, so an answer that arrives after the circuit changed is recognised as stale."""

    app: App
    provider: Provider
    generation: int

    @property
    def key(self) -> BreakerKey:
        return (self.app.name, self.provider.id)


class Control:
    def __init__(
        self, config: Config, clock: Clock, store: StateBackend, wall: Callable[[], float] | None = None
    ) -> None:
        self.clock = clock
        self.wall = wall or clock
        self.store = store
        loaded = store.open()
        self.config = config
        self.pricing = Pricing(config)
        breakers = {key: self._from_wall(snap) for key, snap in loaded.breakers.items()}
        self.router = Router(config, clock, breakers)
        self.switches = SwitchManager(
            clock, config.switch_min_interval, loaded.current, self._announce_switch
        )
        self._pins: dict[str, str] = {}
        #: Apps whose current provider must be reconsidered once `switch_min_interval` allows it.
        self._deferred: dict[str, float] = {}
        self.secrets = secrets_of(config)
        store.set_secrets(self.secrets)
        for warning in (*config.warnings, *loaded.warnings):
            logger.warning(warning)
        self._adopt_current(config)

    # --- configuration ----------------------------------------------------------------------

    def reconfigure(self, config: Config) -> None:
        """Swap in a reloaded config; breaker state survives for providers that still exist."""
        for app, provider in self.router.reconfigure(config):
            self.store.forget_breaker(app, provider)
        self.config = config
        self.pricing = Pricing(config, self.pricing.table)
        self.switches.min_interval = config.switch_min_interval
        self._pins = {a: p for a, p in self._pins.items() if self._provider(a, p) is not None}
        self.secrets = secrets_of(config)
        self.store.set_secrets(self.secrets)
        for warning in config.warnings:
            logger.warning(warning)
        self._adopt_current(config)

    def _adopt_current(self, config: Config) -> None:
        """Start-up or reload: an app whose current provider is unknown adopts the one its breakers
        point at, silently; any other difference is a switch."""
        for app in config.apps:
            current = self.switches.current(app.name)
            if current is None or app.provider(current) is None:
                target = self._target(app)[0] or app.providers[0].id
                self.switches.adopt(app.name, target)
                self.store.set_current(app.name, target)
            else:
                self._reconsider(app.name, "configuration reloaded")

    def _provider(self, app: str, provider: str) -> Provider | None:
        found = self.config.app(app)
        return found.provider(provider) if found else None

    # --- routing ----------------------------------------------------------------------------

    def candidates(self, app: App) -> list[Provider]:
        """Providers to try for one request, best first, at most `max_attempts`."""
        if self._deferred:
            self._run_deferred()
        ordered = self.router.select_providers(app.name)
        pinned = self._pins.get(app.name)
        if pinned is not None:
            ordered.sort(key=lambda p: p.id != pinned)
        return ordered[: app.max_attempts]

    def skipped(self, app: App, queue: list[Provider]) -> tuple[tuple[str, str], ...]:
        """The providers `app` would have tried before the first of `queue` but left out because
        their circuits don't admit a request now, with their state ("open", "half_open"): a
        request the first of `queue` serves was rerouted because of them."""
        if not queue or not app.providers or app.providers[0].id == queue[0].id:
            return ()  # the common case, on every request: nothing was ahead of the queue's first
        first, queued = queue[0].id, {p.id for p in queue}
        states = {s.provider: s.state for s in self.router.status(app.name)}
        ahead: list[tuple[str, str]] = []
        for provider in app.providers:
            if provider.id == first:
                return tuple(ahead)
            state = states.get(provider.id)
            if provider.id not in queued and state is not None and state is not State.CLOSED:
                ahead.append((provider.id, state.value))
        return ()

    def acquire(self, app: str, provider: str) -> Permit | None:
        return self.router.acquire(app, provider)

    def acquire_next(self, app: str, queue: list[Provider]) -> tuple[Provider, Permit] | None:
        """Pop providers off the front of `queue` until one admits a call; None when none is left.

        A provider that vanished in a reload since the queue was taken is still tried (the queue is a
        snapshot): it gets the `DETACHED` permit.
        """
        while queue:
            provider = queue.pop(0)
            if self._provider(app, provider.id) is None:
                return provider, DETACHED
            permit = self.router.acquire(app, provider.id)
            if permit is not None:
                return provider, permit
        return None

    def retry_after(self, app: str) -> float:
        """Seconds until the first open circuit of `app` admits a probe (1 when none is open)."""
        waits = [s.probe_in for s in self.router.status(app) if s.probe_in > 0]
        return min(waits, default=1.0)

    def record(
        self,
        app: str,
        provider: str,
        permit: Permit,
        verdict: Verdict,
        latency_ms: float,
        status: int | None = None,
        metering: Metering | None = None,
    ) -> Transition | None:
        """Feed one attempt to its breaker and the attempt log; `status` overrides the verdict's."""
        outcome = verdict.outcome
        transition = None if permit is DETACHED else self.router.record_result(app, provider, permit, verdict)
        record = AttemptRecord(
            self.wall(),
            app,
            provider,
            status if status is not None else verdict.status,
            outcome.value,
            round(latency_ms, 2),
            "" if outcome is Outcome.SUCCESS else verdict.reason,
            verdict.error_kind,
        )
        if metering is not None:
            record = _metered(record, metering)
        self.store.log_attempt(record)
        if transition is not None:
            self._persist_breaker(app, provider, transition)
            self._reconsider(app, f"{provider}: circuit {transition.after.value} ({transition.reason})")
        return transition

    def abandoned(
        self, app: str, provider: str, latency_ms: float, status: int | None, metering: Metering
    ) -> None:
        """Log an attempt the client left before it ended: no verdict on the provider (its breaker
        hears nothing), but the attempt log keeps it, since a provider charges a started answer."""
        self._log_only(app, provider, status, CLIENT_GONE, latency_ms, "the client left", metering)

    def socket_response(
        self, app: str, provider: str, outcome: str, error: str, latency_ms: float, metering: Metering
    ) -> None:
        """Log one response a provider gave over a WebSocket it holds (Codex sends each request as a
        message): the socket's handshake was the attempt its breaker judged; its responses are what
        the provider charges for. `outcome` is an `Outcome` value or `CLIENT_GONE` (cut short)."""
        self._log_only(app, provider, None, outcome, latency_ms, error, metering)

    def _log_only(
        self, app: str, provider: str, status: int | None, outcome: str, latency_ms: float, error: str,
        metering: Metering,
    ) -> None:  # fmt: skip
        record = AttemptRecord(self.wall(), app, provider, status, outcome, round(latency_ms, 2), error)
        if outcome not in (CLIENT_GONE, Outcome.SUCCESS.value):
            record = record._replace(error_kind=ErrorKind.STREAM_ERROR.value)
        self.store.log_attempt(_metered(record, metering))

    def cost(self, app: str, provider: str, metering: Metering) -> float | None:
        """What one attempt cost at the configured prices (None: unknown)."""
        return self.pricing(_metered(AttemptRecord(0.0, app, provider, None, "success", 0.0, ""), metering))

    def usage(self, window: float) -> tuple[list[Totals], float | None]:
        """Totals per app, provider and model over the last `window` seconds, and when the attempt
        log starts if it was pruned inside the window (older attempts are not counted)."""
        since = self.wall() - window
        groups = totals(self.store.attempts_since(since), self.pricing)
        first = self.store.first_logged()
        return groups, first if first is not None and first > since and groups else None

    def release(self, app: str, provider: str, permit: Permit) -> None:
        if permit is not DETACHED:
            self.router.release(app, provider, permit)

    # --- active recovery probe --------------------------------------------------------------

    def recovery_probes(self, busy: Collection[BreakerKey] = ()) -> list[ProbeTicket]:
        """The recovery probes due now, one per open circuit whose interval has passed (taken: each is
        handed out once). `busy` names circuits whose previous probe is still in flight."""
        tickets = []
        for app_name, provider, generation in self.router.take_recovery_probes(busy):
            app = self.config.app(app_name)
            if app is not None:
                tickets.append(ProbeTicket(app, provider, generation))
        return tickets

    def probed(self, ticket: ProbeTicket, answered: bool, detail: str) -> Transition | None:
        """The outcome of one recovery probe. An answer half-opens the circuit (persisted and logged
        like every transition); a failure changes nothing and is only logged for debugging."""
        app, provider = ticket.key
        if not answered:
            logger.debug("detour: %s/%s recovery probe failed (%s)", app, provider, self.redact(detail))
            return None
        transition = self.router.probed(app, provider, ticket.generation, detail)
        if transition is not None:
            self._persist_breaker(app, provider, transition)
        return transition

    # --- the current provider ---------------------------------------------------------------

    def _target(self, app: App) -> tuple[str | None, list[str]]:
        """The provider the app's traffic goes to (first closed circuit, pin first), and why each
        provider before it is passed over."""
        states = {s.provider: s.state for s in self.router.status(app.name)}
        order = [p.id for p in app.providers]
        pinned = self._pins.get(app.name)
        if pinned in states:
            order.sort(key=lambda pid: pid != pinned)
        passed: list[str] = []
        for pid in order:
            if states.get(pid) is State.CLOSED:
                return pid, passed
            passed.append(f"{pid}: circuit {states[pid].value}")
        return None, passed

    def _reconsider(self, app_name: str, why: str) -> None:
        app = self.config.app(app_name)
        if app is None:
            return
        target, passed = self._target(app)
        if target is None or target == self.switches.current(app_name):
            self._deferred.pop(app_name, None)
            return
        reason = "; ".join(passed) if passed else f"recovered: {why}"
        if self.switches.propose(app_name, target, reason) is None:
            self._deferred[app_name] = self.switches.next_allowed(app_name)  # too soon: once it's allowed

    def _run_deferred(self) -> None:
        now = self.clock()
        for app_name, due in list(self._deferred.items()):
            if now >= due:
                self._deferred.pop(app_name, None)
                self._reconsider(app_name, "after switch_min_interval")

    def _persist_breaker(self, app: str, provider: str, transition: Transition) -> None:
        level = logging.WARNING if transition.after is State.OPEN else logging.INFO
        logger.log(
            level,
            "detour: %s/%s circuit %s -> %s (%s)",
            app,
            provider,
            transition.before.value,
            transition.after.value,
            self.redact(transition.reason),
        )
        self._save_breaker(app, provider)

    def _save_breaker(self, app: str, provider: str) -> None:
        self.store.save_breaker(app, provider, self._to_wall(self.router.snapshot(app, provider)))

    def _to_wall(self, snap: BreakerSnapshot) -> BreakerSnapshot:
        """A snapshot with `open_until` in wall time, for storage (monotonic time dies with the process)."""
        if snap.state is not State.OPEN:
            return snap
        return dataclasses.replace(snap, open_until=snap.open_until - self.clock() + self.wall())

    def _from_wall(self, snap: BreakerSnapshot) -> BreakerSnapshot:
        if snap.state is not State.OPEN:
            return snap
        return dataclasses.replace(snap, open_until=snap.open_until - self.wall() + self.clock())

    def _announce_switch(self, event: SwitchEvent) -> None:
        self.store.set_current(event.app, event.to_provider)
        how = "manual switch" if event.manual else "failover switch"
        logger.warning(
            "detour: %s %s: %s -> %s (%s)",
            how,
            event.app,
            event.from_provider,
            event.to_provider,
            self.redact(event.reason),
        )

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)

    # --- operations -------------------------------------------------------------------------

    def pin(self, app: str, provider: str) -> SwitchEvent | None:
        """Pin `provider` to the front of `app`'s queue and make it current."""
        self._require(app, provider)
        self._pins[app] = provider
        self._deferred.pop(app, None)
        return self.switches.force(app, provider)

    def unpin(self, app: str) -> None:
        self._require(app, None)
        self._pins.pop(app, None)
        self._reconsider(app, "unpinned")

    def reset(self, app: str, provider: str) -> None:
        self._require(app, provider)
        self.router.reset(app, provider)
        self._save_breaker(app, provider)
        self._reconsider(app, f"{provider}: reset")

    def _require(self, app: str, provider: str | None) -> None:
        found = self.config.app(app)
        if found is None:
            raise ValueError(f"unknown app {app!r}; known: {', '.join(a.name for a in self.config.apps)}")
        if provider is not None and found.provider(provider) is None:
            known = ", ".join(p.id for p in found.providers)
            raise ValueError(f"unknown provider {provider!r} for app {app!r}; known: {known}")

    def status_lines(self) -> list[str]:
        """One self-contained entry per provider (mitmweb's command bar shows a list, one item a
        line, without indentation): `claude/backup: open, 3 failures, probe in 20s`, and which one
        each app uses now."""
        lines = []
        degraded = self.store.degraded
        if degraded:
            lines.append(f"state: degraded ({self.redact(degraded)})")
        for app in self.config.apps:
            current, pinned = self.switches.current(app.name), self._pins.get(app.name)
            for st in self.router.status(app.name):
                count = st.consecutive_failures
                failures = f"{count} failure" + ("" if count == 1 else "s")
                entry = f"{app.name}/{st.provider}: {st.state.value}, {failures}"
                if st.state is State.OPEN:
                    entry += f", probe in {st.probe_in:.0f}s"
                if st.provider == pinned:
                    entry += " (pinned)"
                if st.provider == current:
                    entry += " ← current"
                lines.append(entry)
        return lines

    def close(self) -> None:
        for app in self.config.apps:
            for p in app.providers:
                self._save_breaker(app.name, p.id)
        self.store.close()


def secrets_of(config: Config) -> tuple[str, ...]:
    """Every configured key: what must be masked wherever Detour writes text for people."""
    return tuple(p.api_key for a in config.apps for p in a.providers if p.api_key)


def monotonic_control(config: Config, store: StateBackend) -> Control:
    """The control plane as the proxy runs it: monotonic deadlines, wall-clock records."""
    return Control(config, time.monotonic, store, time.time)


def _metered(record: AttemptRecord, metering: Metering) -> AttemptRecord:
    """`record` with what the exchange measured of the attempt: its models, timings and tokens."""
    tokens = metering.tokens or Tokens()
    return record._replace(
        dialect=metering.dialect,
        streamed=metering.streamed,
        model_requested=metering.model_requested,
        model=metering.model,
        ttfb_ms=metering.ttfb_ms,
        ttft_ms=metering.ttft_ms,
        input_tokens=tokens.input,
        cache_read_tokens=tokens.cache_read,
        cache_write_tokens=tokens.cache_write,
        output_tokens=tokens.output,
        reasoning_tokens=tokens.reasoning,
        response_id=tokens.response_id,
    )
