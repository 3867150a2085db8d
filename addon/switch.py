"""The failover switch manager: which provider is an app's current one, and when that changes.

A request served by another provider than the current one moves the app over, once: concurrent
requests that fail over together see the new current provider and emit nothing, and a minimum
interval between switches stops traffic from flip-flopping between two half-healthy providers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from addon.breaker import Clock


@dataclass(frozen=True)
class SwitchEvent:
    app: str
    from_provider: str | None
    to_provider: str
    reason: str
    at: float
    manual: bool = False


SwitchListener = Callable[[SwitchEvent], None]


class SwitchManager:
    def __init__(
        self,
        clock: Clock,
        min_interval: float,
        current: Mapping[str, str] | None = None,
        on_switch: SwitchListener | None = None,
    ) -> None:
        self._clock = clock
        self.min_interval = min_interval
        self._current: dict[str, str] = dict(current or {})
        self._last_switch: dict[str, float] = {}
        self._on_switch = on_switch
        self._lock = threading.Lock()

    def current(self, app: str) -> str | None:
        return self._current.get(app)

    def adopt(self, app: str, provider: str) -> None:
        """Set the current provider without an event: start-up, or a provider removed by a reload."""
        with self._lock:
            self._current[app] = provider

    def observe(self, app: str, served_by: str, reason: str) -> SwitchEvent | None:
        """A request of `app` was served by `served_by`; switch if that is news and not too soon."""
        with self._lock:
            previous = self._current.get(app)
            if previous == served_by:
                return None
            now = self._clock()
            last = self._last_switch.get(app)
            if last is not None and now - last < self.min_interval:
                return None
            event = self._switch(app, previous, served_by, reason, now, manual=False)
        self._emit(event)
        return event

    def force(self, app: str, provider: str, reason: str = "manual switch") -> SwitchEvent | None:
        """An operator's switch: applies at once, whatever the interval."""
        with self._lock:
            previous = self._current.get(app)
            if previous == provider:
                return None
            event = self._switch(app, previous, provider, reason, self._clock(), manual=True)
        self._emit(event)
        return event

    def _switch(
        self, app: str, previous: str | None, to: str, reason: str, now: float, manual: bool
    ) -> SwitchEvent:
        self._current[app] = to
        self._last_switch[app] = now
        return SwitchEvent(app, previous, to, reason, now, manual)

    def _emit(self, event: SwitchEvent) -> None:
        if self._on_switch is not None:
            self._on_switch(event)
