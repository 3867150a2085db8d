"""The validated configuration, as frozen dataclasses.

Everything downstream of the loader works on these immutable values, so a hot reload is a matter of
swapping one object, and no code path can mutate what the user configured.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

#: An app's API family: which dialects its clients speak (see `addon.formats`).
Api = Literal["anthropic", "openai", "gemini"]
APIS: tuple[Api, ...] = ("anthropic", "openai", "gemini")

#: Statuses that are the client's own problem: returned as they are, never failed over, never counted.
DEFAULT_CLIENT_ERRORS: frozenset[int] = frozenset({400, 405, 406, 413, 414, 415, 422})
#: Statuses that mean "this provider can't serve this now": fail over and count against it.
#: Every 5xx is a provider failure as well; this set names the 4xx ones.
DEFAULT_FAILOVER_4XX: frozenset[int] = frozenset({401, 402, 403, 404, 408, 409, 429})


@dataclass(frozen=True)
class BreakerPolicy:
    """When a provider's circuit opens and how it recovers."""

    failure_threshold: int = 3
    error_rate: float = 0.5
    min_requests: int = 10
    window: float = 60.0
    open_for: float = 30.0
    #: A failed half-open test doubles the open period up to this. Kept low: a provider that was down
    #: for long must not stay skipped for long once it is back (the recovery probe helps too).
    max_open_for: float = 120.0
    success_threshold: int = 2
    half_open_probes: int = 1
    #: Seconds between Detour's own liveness requests to a provider whose circuit is open; 0: off.
    recovery_probe: float = 5.0


@dataclass(frozen=True)
class Timeouts:
    """Bounds on one attempt: a provider that exceeds them is treated as failed.

    The first byte has two limits because the two kinds of request differ by minutes: a provider
    sends a streamed answer's head as soon as it has accepted the request, but a whole answer's only
    once it has generated all of it.
    """

    connect: float = 10.0
    #: Streamed requests (`"stream": true`, `alt=sse`, WebSocket): from the connection to the head.
    first_byte: float = 30.0
    #: Non-streamed requests: from the connection to the head, i.e. the whole generation.
    first_byte_unstreamed: float = 300.0
    #: Streamed answers: from the head to the first generated content (0: no limit). Until then the
    #: client has seen nothing, so a provider that accepted but doesn't generate can be left.
    first_token: float = 15.0
    idle: float = 120.0


@dataclass(frozen=True)
class RetrySame:
    """Retrying the provider that just failed, before failing over: for a 429 whose Retry-After is
    short, or a 5xx (after `backoff`), since both are often gone a moment later."""

    #: Retries per provider per request (0: always fail over at once).
    attempts: int = 1
    #: The longest wait a retry may cost; a longer Retry-After fails over instead.
    max_wait: float = 3.0
    #: The wait before retrying a 5xx that names no Retry-After.
    backoff: float = 0.5


@dataclass(frozen=True)
class StatusPolicy:
    """Which HTTP statuses fail over; an app may override the defaults."""

    client_errors: frozenset[int] = DEFAULT_CLIENT_ERRORS
    failover: frozenset[int] = DEFAULT_FAILOVER_4XX

    def is_client_error(self, status: int) -> bool:
        return status in self.client_errors

    def is_failover(self, status: int) -> bool:
        if status in self.client_errors:
            return False
        return status in self.failover or 500 <= status <= 599


@dataclass(frozen=True)
class Provider:
    """One entry of an app's failover queue.

    `api_key` is excluded from repr and comparison output so it never ends up in a log line or a
    traceback by accident.
    """

    id: str
    base_url: str
    api_key: str | None = field(default=None, repr=False)
    #: A name from `addon.credentials.AUTH_STYLES`.
    auth: str = "x-api-key"
    models: tuple[tuple[str, str], ...] = ()
    breaker: BreakerPolicy = BreakerPolicy()
    #: The dialect this provider speaks when it isn't the client's (`addon.formats.DIALECTS`):
    #: requests and answers are translated (`addon.formats.translation`).
    api: str | None = None
    #: This provider's prices are the listed ones times this (a reseller's markup, a discount).
    price_multiplier: float = 1.0

    @property
    def owns_credentials(self) -> bool:
        return self.api_key is not None

    def map_model(self, model: str) -> str | None:
        """The model name this provider wants for `model`, or None when no glob matches."""
        for pattern, target in self.models:
            if fnmatch.fnmatchcase(model, pattern):
                return target
        return None

    def sent_model(self, requested: str) -> str:
        """The model name this provider is sent for a request that asked for `requested`."""
        return (self.map_model(requested) or requested) if requested else ""


@dataclass(frozen=True)
class App:
    """A client family (Claude Code, Codex, Gemini CLI…) with its hosts, routed paths and queue."""

    name: str
    hosts: tuple[str, ...]
    providers: tuple[Provider, ...]
    paths: tuple[str, ...]
    max_attempts: int = 3
    timeouts: Timeouts = Timeouts()
    statuses: StatusPolicy = StatusPolicy()
    api: Api = "anthropic"
    retry_same: RetrySame = RetrySame()
    #: A streamed text answer that breaks mid-way is continued on the next provider (see exchange).
    continue_streams: bool = True

    def provider(self, provider_id: str) -> Provider | None:
        return next((p for p in self.providers if p.id == provider_id), None)

    def routes_path(self, path: str) -> bool:
        """True for the model-API paths Detour may send to a backup; the query string is ignored.

        A path that could resolve elsewhere than it reads (dot segments, encoded dots, slashes or
        backslashes) is never routed, so it can't carry a provider's key out of its route.
        """
        bare = path.split("?", 1)[0]
        if not plain_path(bare):
            return False
        return any(fnmatch.fnmatchcase(bare, pattern) for pattern in self.paths)


_ENCODED_SEPARATORS = ("%2e", "%2f", "%5c", "%00")


def plain_path(path: str) -> bool:
    """The path means what it says: no `.`/`..` segment (also as `..;`), no encoded `.`, `/`, `\\`
    or NUL, no backslash. Servers differ in how they normalise those; Detour routes none of them."""
    lowered = path.lower()
    if "\\" in path or any(e in lowered for e in _ENCODED_SEPARATORS):
        return False
    return not any(seg.split(";", 1)[0] in (".", "..") for seg in path.split("/"))


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens of one model. A cache price not listed is charged as input."""

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None


@dataclass(frozen=True)
class Config:
    """The whole validated config file."""

    source: Path
    state: Path
    apps: tuple[App, ...]
    breaker: BreakerPolicy = BreakerPolicy()
    timeouts: Timeouts = Timeouts()
    switch_min_interval: float = 10.0
    attempt_log_limit: int = 10_000
    #: The most bytes of one answer held in memory (a non-streamed answer, or a failure's body).
    max_body: int = 32 * 1024 * 1024
    #: Model globs and their prices, first match wins (`addon.usage`).
    prices: tuple[tuple[str, Price], ...] = ()
    #: (app, provider id) → price multiplier, for every provider in the file, disabled ones too: their
    #: past attempts are still priced.
    price_multipliers: tuple[tuple[tuple[str, str], float], ...] = ()
    #: Human-readable notes for the operator, e.g. providers disabled because a variable is unset.
    warnings: tuple[str, ...] = ()

    def app(self, name: str) -> App | None:
        return next((a for a in self.apps if a.name == name), None)

    def price_multiplier(self, app: str, provider: str) -> float:
        return next((m for key, m in self.price_multipliers if key == (app, provider)), 1.0)

    def price(self, model: str) -> Price | None:
        """The configured price of `model`, or None when no glob matches it."""
        return next((p for pattern, p in self.prices if fnmatch.fnmatchcase(model, pattern)), None)

    def app_for_host(self, host: str) -> App | None:
        host = host.lower().rstrip(".")
        return next((a for a in self.apps if host in a.hosts), None)
