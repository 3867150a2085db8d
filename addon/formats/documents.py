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


_decoder = json.JSONDecoder()
_WHITESPACE = " \t\n\r"


def string_members(body: bytes, name: str, first: bool = False) -> list[tuple[int, int, str]]:
    """(start, end, value) of every top-level `"name": "<string>"` in a JSON object body (only the
    first with `first`, which stops reading there), as character offsets into its UTF-8 text; []
    for anything that isn't such an object. Members are read one by one, never the body as a whole."""
    quoted = json.dumps(name).encode()
    if not body or body.lstrip()[:1] != b"{" or quoted not in body:
        return []
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return []
    spans: list[tuple[int, int, str]] = []
    try:
        i = _skip_ws(text, text.index("{") + 1)
        for _ in range(len(text)):  # bounded: every pass consumes one member
            if text[i] == "}":
                return spans
            key, i = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
            i = _skip_ws(text, i)
            if text[i] != ":":
                return []
            i = _skip_ws(text, i + 1)
            value, end = _decoder.raw_decode(text, i)
            if key == name and isinstance(value, str):
                spans.append((i, end, value))
                if first:
                    return spans
            i = _skip_ws(text, end)
            if text[i] == ",":
                i = _skip_ws(text, i + 1)
            elif text[i] != "}":
                return []
    except (ValueError, IndexError, RecursionError):
        return []
    return []


def _skip_ws(text: str, i: int) -> int:
    while text[i] in _WHITESPACE:
        i += 1
    return i


def first_model(body: bytes) -> str:
    """The first top-level `model` of a JSON request ("" if none); members after it aren't read."""
    found = string_members(body, "model", first=True)
    return found[0][2] if found else ""
