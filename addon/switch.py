"""The failover switch manager: which provider is an app's current one, and when that changes.

The control plane proposes a new current provider when the app's breakers say traffic now goes
elsewhere; a proposal that is no news emits nothing, and one made within the minimum interval of the
last switch is refused (the control plane retries it once the interval has passed), so a flapping
provider can't bounce the switch log back and forth.
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

    def propose(self, app: str, provider: str, reason: str) -> SwitchEvent | None:
        """Make `provider` the app's current one if that is news and not too soon after the last switch."""
        with self._lock:
            previous = self._current.get(app)
            if previous == provider:
                return None
            now = self._clock()
            if now < self.next_allowed(app):
                return None
            event = self._switch(app, previous, provider, reason, now, manual=False)
        self._emit(event)
        return event

    def next_allowed(self, app: str) -> float:
        """When the next automatic switch of `app` may happen."""
        last = self._last_switch.get(app)
        return float("-inf") if last is None else last + self.min_interval

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
