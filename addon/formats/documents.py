"""Reading JSON documents leniently: a malformed event or body is no reason to fail anything."""

from __future__ import annotations

import json


def json_object(data: str | bytes) -> dict[str, object] | None:
    """`data` parsed as a JSON object, or None when it is not one."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nested beyond what anyone means
        return None
    return document if isinstance(document, dict) else None
