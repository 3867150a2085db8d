"""Error bodies in each API's own shape.

When Detour has to answer for a provider (nothing could be tried, every attempt timed out), the
client's SDK must recognise the error and apply its own retry logic, so the body mimics the API.
"""

from __future__ import annotations

import json

from addon.model import ErrorShape

_ANTHROPIC_TYPES = {429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}
_GEMINI_STATUS = {429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def error_body(shape: ErrorShape, status: int, message: str) -> bytes:
    """A JSON error body for `status` that `shape`'s official SDK parses."""
    document: dict[str, object]
    if shape == "anthropic":
        kind = _ANTHROPIC_TYPES.get(status, "api_error")
        document = {"type": "error", "error": {"type": kind, "message": message}}
    elif shape == "gemini":
        kind = _GEMINI_STATUS.get(status, "INTERNAL")
        document = {"error": {"code": status, "message": message, "status": kind}}
    else:
        kind = "rate_limit_exceeded" if status == 429 else "server_error"
        document = {"error": {"message": message, "type": kind, "param": None, "code": kind}}
    return json.dumps(document).encode()
