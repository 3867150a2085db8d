"""The state backend protocol: what Detour persists, independent of where.

The control plane only ever talks to a `StateBackend`. Writes are fire-and-forget (they must never
block the proxy's event loop); reads happen once, at `open`. Today's backends are SQLite (one
process, durable) and memory (tests, or no persistence wanted); docs/DESIGN.md describes how a
shared backend (e.g. Redis) would let several Detour instances share breaker transitions.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from addon.breaker import BreakerSnapshot
from addon.secrets import redact


class AttemptRecord(NamedTuple):
    """One attempt as logged. A NamedTuple: one is built for every request, and it is queued as is."""

    at: float
    app: str
    provider: str
    status: int | None
    #: `Outcome.value` from addon.classify, e.g. "success", "provider_failure".
    outcome: str
    latency_ms: float
    #: Short error text ("" if none); redacted again by the backend before it is stored.
    error: str
    #: "" for a success; an `ErrorKind` value ("timeout_first_byte", "reset", ...), or "http".
    error_kind: str = ""
    #: The dialect spoken to the provider, and whether the answer was streamed.
    dialect: str = ""
    streamed: bool = False
    #: The model the client asked for, and the name the provider was sent.
    model_requested: str = ""
    model: str = ""
    ttfb_ms: float | None = None
    ttft_ms: float | None = None
    #: Tokens as the provider reported them (`addon.formats.usage.Tokens`): None = not reported.
    input_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    response_id: str = ""


#: Stored error text is cut to this many characters (after redaction, so no key is half-masked).
MAX_ERROR_CHARS = 1000
#: Model names and response ids come from clients and providers: stored masked and at most this long.
MAX_NAME_CHARS = 200


def for_storage(record: AttemptRecord, secrets: tuple[str, ...]) -> AttemptRecord:
    """`record` as it may be stored: every text that came from a client or a provider masked (a key
    echoed as an error, a model name or an id), then shortened."""
    return record._replace(
        error=_masked(record.error, secrets, MAX_ERROR_CHARS),
        model_requested=_masked_name(record.model_requested, secrets),
        model=_masked_name(record.model, secrets),
        response_id=_masked(record.response_id, secrets, MAX_NAME_CHARS),
    )


def _masked(text: str, secrets: tuple[str, ...], limit: int) -> str:
    return redact(str(text), secrets)[:limit] if text else ""


@functools.lru_cache(maxsize=512)
def _masked_name(text: str, secrets: tuple[str, ...]) -> str:
    """Model names repeat on every row: masked once each (the writer thread's main cost per row)."""
    return _masked(text, secrets, MAX_NAME_CHARS)


@dataclass(frozen=True)
class LoadedState:
    current: dict[str, str]
    breakers: dict[tuple[str, str], BreakerSnapshot]
    warnings: tuple[str, ...]


class StateBackend(Protocol):
    def open(self) -> LoadedState:
        """Load what was persisted and start accepting writes. Never raises."""

    def set_current(self, app: str, provider: str) -> None: ...

    def save_breaker(self, app: str, provider: str, snap: BreakerSnapshot) -> None: ...

    def forget_breaker(self, app: str, provider: str) -> None: ...

    def log_attempt(self, rec: AttemptRecord) -> None: ...

    def attempts_since(self, since: float) -> list[AttemptRecord]:
        """The logged attempts at or after `since` (wall time), oldest first, including every one
        logged before this call. For reports: it may wait briefly for queued writes."""

    def first_logged(self) -> float | None:
        """When the oldest attempt still in the log was made, if older ones were pruned
        (`attempt_log_limit`); None when the log holds every attempt ever logged."""

    def set_secrets(self, secrets: Collection[str]) -> None:
        """The keys to mask in anything stored (error texts)."""

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every write queued so far has been applied; False on timeout."""

    def close(self) -> None: ...

    @property
    def degraded(self) -> str | None:
        """Why state is not (fully) persisting, or None when all is well."""
