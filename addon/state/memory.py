"""A state backend that keeps everything in memory: for tests, and for `state: memory`."""

from __future__ import annotations

from collections.abc import Collection

from addon.breaker import BreakerSnapshot
from addon.state.base import AttemptRecord, LoadedState, for_storage


class MemoryBackend:
    def __init__(self, attempt_limit: int = 10_000) -> None:
        self.attempt_limit = attempt_limit
        self.current: dict[str, str] = {}
        self.breakers: dict[tuple[str, str], BreakerSnapshot] = {}
        self.attempts: list[AttemptRecord] = []
        self.pruned = False
        self._secrets: tuple[str, ...] = ()

    def open(self) -> LoadedState:
        return LoadedState(dict(self.current), dict(self.breakers), ())

    def set_current(self, app: str, provider: str) -> None:
        self.current[app] = provider

    def save_breaker(self, app: str, provider: str, snap: BreakerSnapshot) -> None:
        self.breakers[(app, provider)] = snap

    def forget_breaker(self, app: str, provider: str) -> None:
        self.breakers.pop((app, provider), None)

    def log_attempt(self, rec: AttemptRecord) -> None:
        self.attempts.append(for_storage(rec, self._secrets))
        if len(self.attempts) > self.attempt_limit:
            self.pruned = True
        del self.attempts[: -self.attempt_limit or None]

    def attempts_since(self, since: float) -> list[AttemptRecord]:
        return [a for a in self.attempts if a.at >= since]

    def first_logged(self) -> float | None:
        return self.attempts[0].at if self.attempts and self.pruned else None

    def set_secrets(self, secrets: Collection[str]) -> None:
        self._secrets = tuple(secrets)

    def flush(self, timeout: float = 5.0) -> bool:
        return True

    def close(self) -> None:
        pass

    @property
    def degraded(self) -> str | None:
        return None
