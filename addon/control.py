"""The control plane: config, router, switch manager and state backend wired together.

Everything that outlives one request lives here: which providers an app may try, their breakers,
the app's current provider, pins, and what is persisted. It is free of mitmproxy and of I/O other
than the state backend, so it is driven directly in tests with a fake clock.
"""

from __future__ import annotations

import logging

from addon.breaker import Clock, Permit, State, Transition
from addon.classify import Outcome, Verdict
from addon.model import App, Config, Provider
from addon.router import Router
from addon.secrets import redact
from addon.state import AttemptRecord, StateBackend
from addon.switch import SwitchEvent, SwitchManager

logger = logging.getLogger("detour")


class Control:
    def __init__(self, config: Config, clock: Clock, store: StateBackend) -> None:
        self.clock = clock
        self.store = store
        loaded = store.open()
        self.config = config
        self.router = Router(config, clock, loaded.breakers)
        self.switches = SwitchManager(
            clock, config.switch_min_interval, loaded.current, self._announce_switch
        )
        self._pins: dict[str, str] = {}
        self.secrets = secrets_of(config)
        self._adopt_current(config)
        store.set_secrets(self.secrets)
        for warning in (*config.warnings, *loaded.warnings):
            logger.warning(warning)

    # --- configuration ----------------------------------------------------------------------

    def reconfigure(self, config: Config) -> None:
        """Swap in a reloaded config; breaker state survives for providers that still exist."""
        for app, provider in self.router.reconfigure(config):
            self.store.forget_breaker(app, provider)
        self.config = config
        self.switches.min_interval = config.switch_min_interval
        self._pins = {a: p for a, p in self._pins.items() if self._provider(a, p) is not None}
        self.secrets = secrets_of(config)
        self._adopt_current(config)
        self.store.set_secrets(self.secrets)
        for warning in config.warnings:
            logger.warning(warning)

    def _adopt_current(self, config: Config) -> None:
        for app in config.apps:
            current = self.switches.current(app.name)
            if current is None or app.provider(current) is None:
                self.switches.adopt(app.name, app.providers[0].id)
                self.store.set_current(app.name, app.providers[0].id)

    def _provider(self, app: str, provider: str) -> Provider | None:
        found = self.config.app(app)
        return found.provider(provider) if found else None

    # --- routing ----------------------------------------------------------------------------

    def candidates(self, app: App) -> list[Provider]:
        """Providers to try for one request, best first, at most `max_attempts`."""
        ordered = self.router.select_providers(app.name)
        pinned = self._pins.get(app.name)
        if pinned is not None:
            ordered.sort(key=lambda p: p.id != pinned)
        return ordered[: app.max_attempts]

    def acquire(self, app: str, provider: str) -> Permit | None:
        return self.router.acquire(app, provider)

    def acquire_next(self, app: str, queue: list[Provider]) -> tuple[Provider, Permit] | None:
        """Pop providers off the front of `queue` until one admits a call; None when none is left.

        A provider that vanished in a reload since the queue was taken is skipped.
        """
        while queue:
            provider = queue.pop(0)
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
    ) -> Transition | None:
        """Feed one attempt to its breaker and the attempt log; `status` overrides the verdict's."""
        now = self.clock()
        outcome = verdict.outcome
        transition = self.router.record_result(app, provider, permit, verdict)
        self.store.log_attempt(
            AttemptRecord(
                now,
                app,
                provider,
                status if status is not None else verdict.status,
                outcome.value,
                round(latency_ms, 2),
                "" if outcome is Outcome.SUCCESS else verdict.reason,
            )
        )
        if transition is not None:
            self._persist_breaker(app, provider, transition)
        return transition

    def release(self, app: str, provider: str, permit: Permit) -> None:
        self.router.release(app, provider, permit)

    def served(self, app: str, provider: str, reason: str) -> SwitchEvent | None:
        """The request was answered by `provider`: move the app's current provider if needed."""
        return self.switches.observe(app, provider, reason)

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
        self.store.save_breaker(app, provider, self.router.snapshot(app, provider))

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
        return self.switches.force(app, provider)

    def unpin(self, app: str) -> None:
        self._require(app, None)
        self._pins.pop(app, None)

    def reset(self, app: str, provider: str) -> None:
        self._require(app, provider)
        self.router.reset(app, provider)
        self.store.save_breaker(app, provider, self.router.snapshot(app, provider))

    def _require(self, app: str, provider: str | None) -> None:
        found = self.config.app(app)
        if found is None:
            raise ValueError(f"unknown app {app!r}; known: {', '.join(a.name for a in self.config.apps)}")
        if provider is not None and found.provider(provider) is None:
            known = ", ".join(p.id for p in found.providers)
            raise ValueError(f"unknown provider {provider!r} for app {app!r}; known: {known}")

    def status_lines(self) -> list[str]:
        lines = []
        degraded = self.store.degraded
        if degraded:
            lines.append(f"state: degraded ({self.redact(degraded)})")
        for app in self.config.apps:
            pinned = self._pins.get(app.name)
            pin = f" (pinned: {pinned})" if pinned else ""
            lines.append(f"{app.name}: current={self.switches.current(app.name)}{pin}")
            for st in self.router.status(app.name):
                probe = f" probe in {st.probe_in:.1f}s" if st.state is State.OPEN else ""
                lines.append(
                    f"  {st.provider}: {st.state.value} failures={st.consecutive_failures}{probe}"
                )
        return lines

    def close(self) -> None:
        for app in self.config.apps:
            for p in app.providers:
                self.store.save_breaker(app.name, p.id, self.router.snapshot(app.name, p.id))
        self.store.close()


def secrets_of(config: Config) -> tuple[str, ...]:
    """Every configured key: what must be masked wherever Detour writes text for people."""
    return tuple(p.api_key for a in config.apps for p in a.providers if p.api_key)
