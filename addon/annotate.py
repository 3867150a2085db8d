"""What a routed flow tells the client and the mitmweb user about how it was served."""

from __future__ import annotations

from dataclasses import dataclass

from mitmproxy import http

PROVIDER_HEADER = "x-detour-provider"
ATTEMPTS_HEADER = "x-detour-attempts"
_PROVIDER_KEY = PROVIDER_HEADER.encode()
_ATTEMPTS_KEY = ATTEMPTS_HEADER.encode()
MARK_FAILED_OVER = ":arrows_counterclockwise:"
MARK_ALL_FAILED = ":x:"


@dataclass(frozen=True)
class FailedAttempt:
    provider: str
    reason: str


def _header_safe(text: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)[:200]


def attempts_text(failed: list[FailedAttempt]) -> str:
    return ", ".join(f"{a.provider} ({a.reason})" for a in failed)


def set_client_headers(
    response: http.Response, served_by: str | None, failed: list[FailedAttempt]
) -> None:
    """`x-detour-provider` / `x-detour-attempts`: the client sees who answered and who failed."""
    added: tuple[tuple[bytes, bytes], ...] = ()
    if served_by is not None:
        added += ((_PROVIDER_KEY, served_by.encode()),)
    if failed:
        added += ((_ATTEMPTS_KEY, _header_safe(attempts_text(failed)).encode()),)
    # Appended as raw fields: the Mapping setter costs more than the rest of a request's bookkeeping.
    response.headers.fields += added


def annotate_flow(
    flow: http.HTTPFlow, app: str, served_by: str | None, failed: list[FailedAttempt]
) -> None:
    """Comment, marker and metadata, so mitmweb's flow list shows failovers without opening them."""
    if served_by is None:
        flow.comment = f"detour {app}: every provider failed: {attempts_text(failed)}"
        flow.marked = MARK_ALL_FAILED
    elif failed:
        flow.comment = f"detour {app}: served by {served_by} after {attempts_text(failed)}"
        flow.marked = MARK_FAILED_OVER
    else:
        flow.comment = f"detour {app}: served by {served_by}"
    flow.metadata["detour"] = {
        "app": app,
        "provider": served_by,
        "failed": [{"provider": a.provider, "reason": a.reason} for a in failed],
    }
