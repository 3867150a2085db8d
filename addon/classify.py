"""The failure classifier: what one attempt's result means for failover and for the breaker.

Kept pure (status, headers, error kind in; a Verdict out) so the policy is one table that tests can
read, and the shell never has to decide on its own what "failed" means.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

from addon.model import StatusPolicy

#: Statuses whose Retry-After is trusted to lengthen an open circuit (overload or rate limit).
RETRY_AFTER_STATUSES = frozenset({429, 503, 529})
#: A Retry-After longer than this is treated as absent: a broken header must not park a provider for days.
MAX_RETRY_AFTER = 24 * 3600.0


class Outcome(enum.Enum):
    SUCCESS = "success"
    CLIENT_ERROR = "client_error"
    PROVIDER_FAILURE = "provider_failure"
    CONNECT_FAILURE = "connect_failure"
    TIMEOUT = "timeout"
    #: The request is too long for this provider's context window: a larger one may take it. Not
    #: the provider's fault, so it fails over without counting against it.
    CONTEXT_EXCEEDED = "context_exceeded"

    @property
    def fails_over(self) -> bool:
        """The next provider should get the request."""
        return self in _FAILS_OVER

    @property
    def counts_as_failure(self) -> bool:
        """The provider's breaker should count it; client errors are neutral."""
        return self in _COUNTS


_COUNTS = frozenset({Outcome.PROVIDER_FAILURE, Outcome.CONNECT_FAILURE, Outcome.TIMEOUT})
_FAILS_OVER = _COUNTS | {Outcome.CONTEXT_EXCEEDED}


class ErrorKind(enum.Enum):
    """Failures that happen without an HTTP status."""

    CONNECT = "connect"  # refused, unreachable, DNS, TLS handshake
    RESET = "reset"  # the connection died before or while the response arrived
    TIMEOUT_CONNECT = "timeout_connect"
    TIMEOUT_FIRST_BYTE = "timeout_first_byte"
    TIMEOUT_IDLE = "timeout_idle"
    TIMEOUT_FIRST_TOKEN = "timeout_first_token"  # a stream's head came, its content didn't
    STREAM_ERROR = "stream_error"  # an SSE `event: error` inside a 200 response
    TOO_LARGE = "too_large"  # an answer larger than Detour will hold in memory
    UNREADABLE = "unreadable"  # an answer Detour can't read (a compressed event stream)


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str
    status: int | None = None
    retry_after: float | None = None
    #: The failure had no usable status: what happened instead (the attempt log's error kind).
    kind: ErrorKind | None = None

    @property
    def fails_over(self) -> bool:
        return self.outcome.fails_over

    @property
    def error_kind(self) -> str:
        """"" for a success, else the `ErrorKind` value, or "http" for a failure by status alone."""
        if self.kind is not None:
            return self.kind.value
        return "" if self.outcome is Outcome.SUCCESS else "http"


def classify_status(
    status: int, headers: Mapping[str, str], policy: StatusPolicy, now: float
) -> Verdict:
    """Classify an HTTP response by its status; Retry-After is read only where it means overload."""
    if policy.is_client_error(status):
        return _status_verdict(Outcome.CLIENT_ERROR, status)
    if 300 <= status <= 399:
        # Detour never follows a redirect (the request carries a provider's key): it is no answer.
        return Verdict(Outcome.PROVIDER_FAILURE, f"http {status} (redirects are not followed)", status)
    if policy.is_failover(status):
        retry_after = parse_retry_after(headers, now) if status in RETRY_AFTER_STATUSES else None
        return Verdict(Outcome.PROVIDER_FAILURE, f"http {status}", status, retry_after)
    if 400 <= status <= 499:
        return _status_verdict(Outcome.CLIENT_ERROR, status)
    return _status_verdict(Outcome.SUCCESS, status)


@functools.lru_cache(maxsize=256)
def _status_verdict(outcome: Outcome, status: int) -> Verdict:
    """Verdicts are immutable and, without Retry-After, depend on the status alone: built once each."""
    return Verdict(outcome, f"http {status}", status)


_ERROR_OUTCOMES = {
    ErrorKind.CONNECT: Outcome.CONNECT_FAILURE,
    ErrorKind.RESET: Outcome.CONNECT_FAILURE,
    ErrorKind.TIMEOUT_CONNECT: Outcome.TIMEOUT,
    ErrorKind.TIMEOUT_FIRST_BYTE: Outcome.TIMEOUT,
    ErrorKind.TIMEOUT_IDLE: Outcome.TIMEOUT,
    ErrorKind.TIMEOUT_FIRST_TOKEN: Outcome.TIMEOUT,
    ErrorKind.STREAM_ERROR: Outcome.PROVIDER_FAILURE,
    ErrorKind.TOO_LARGE: Outcome.PROVIDER_FAILURE,
    ErrorKind.UNREADABLE: Outcome.PROVIDER_FAILURE,
}


def classify_error(kind: ErrorKind, detail: str = "") -> Verdict:
    """Classify a failure that produced no usable status."""
    reason = kind.value if not detail else f"{kind.value}: {detail}"
    return Verdict(_ERROR_OUTCOMES[kind], reason, kind=kind)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds to wait, from `retry-after-ms`, or `Retry-After` as seconds or an HTTP-date.

    Returns None when absent, unparseable, negative or absurdly large.
    """
    millis = _header(headers, "retry-after-ms")
    if millis is not None:
        seconds = _parse_number(millis)
        if seconds is not None:
            return _bounded(seconds / 1000.0)
    value = _header(headers, "retry-after")
    if value is None:
        return None
    seconds = _parse_number(value)
    if seconds is not None:
        return _bounded(seconds)
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 9110: every HTTP-date is GMT, whatever the local zone
        when = when.replace(tzinfo=UTC)
    return _bounded(max(0.0, when.timestamp() - now))


def _parse_number(value: str) -> float | None:
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _bounded(seconds: float) -> float | None:
    if seconds < 0 or seconds > MAX_RETRY_AFTER:
        return None
    return seconds
