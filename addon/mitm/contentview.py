"""The "Detour" content view: a model answer (streamed or whole, any of the four dialects) shown as
its assembled text, thinking, tool calls, stop reason, usage and how it ended, in mitmweb and the
console, instead of hundreds of raw events. The rendering is `addon.formats.review`; this module
only adapts it to the content-view API of mitmproxy 11 (`View`) and 12 (`Contentview`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator
from typing import Any

from mitmproxy import contentviews, http

from addon.formats.review import dialect_of, event_stream, looks_like_answer, review
from addon.mitm.flows import TRUNCATED

NAME = "Detour"
#: Above mitmproxy's own views (JSON is 1) for the answers of model APIs, so it is what opens first.
PRIORITY = 2.0


#: Where the keys to mask come from (the running Detour's config; set by `register`).
_secrets: Callable[[], Collection[str]] = tuple


def _render(data: bytes, flow: object, message: object, content_type: str | None) -> str | None:
    """The review of `message`, when it is a model API's answer; None for anything else."""
    if not isinstance(flow, http.HTTPFlow) or not isinstance(message, http.Response) or not data:
        return None
    dialect = dialect_of(flow.request.path)
    if dialect is None or not looks_like_answer(dialect, data, event_stream(content_type)):
        return None
    truncated = bool(flow.metadata.get(TRUNCATED))
    try:
        return review(dialect, data, event_stream(content_type), message.status_code, truncated, _secrets())
    except ValueError:
        return None


def _priority(data: bytes, flow: object, message: object, content_type: str | None) -> float:
    if not isinstance(flow, http.HTTPFlow) or not isinstance(message, http.Response):
        return -1.0
    dialect = dialect_of(flow.request.path)
    if dialect is None or not (event_stream(content_type) or "json" in (content_type or "")):
        return -1.0
    return PRIORITY if looks_like_answer(dialect, data, event_stream(content_type)) else -1.0


#: The base class of the running mitmproxy's content views (typed loosely: the two APIs differ).
_API: Any = contentviews


def _shown(data: bytes, flow: object, message: object, content_type: str | None) -> str:
    shown = _render(data, flow, message, content_type)
    if shown is None:  # mitmproxy falls back to its raw view
        raise ValueError("not a model API's answer")
    return shown


if hasattr(_API, "Contentview"):  # mitmproxy 12

    class DetourContentview(_API.Contentview):  # type: ignore[misc]
        @property
        def name(self) -> str:
            return NAME

        def prettify(self, data: bytes, metadata: Any) -> str:
            return _shown(data, metadata.flow, metadata.http_message, metadata.content_type)

        def render_priority(self, data: bytes, metadata: Any) -> float:
            return _priority(data, metadata.flow, metadata.http_message, metadata.content_type)

    VIEW: Any = DetourContentview()

else:  # mitmproxy 11

    class DetourView(_API.View):  # type: ignore[misc]
        name = NAME

        def __call__(self, data: bytes, **metadata: Any) -> tuple[str, Iterator[list[tuple[str, str]]]]:
            shown = _shown(
                data, metadata.get("flow"), metadata.get("http_message"), metadata.get("content_type")
            )
            return NAME, iter([[("text", line)] for line in shown.splitlines()])

        def render_priority(self, data: bytes, **metadata: Any) -> float:
            flow, message = metadata.get("flow"), metadata.get("http_message")
            return _priority(data, flow, message, metadata.get("content_type"))

    VIEW = DetourView()


def register(secrets: Callable[[], Collection[str]] = tuple) -> None:
    """Add the view (once: a script reload registers it again); `secrets` gives the keys to mask."""
    global _secrets
    _secrets = secrets
    unregister()
    _API.add(VIEW)


def unregister() -> None:
    """mitmproxy 11 removes the view; 12 has no removal (its deprecated `remove` does nothing) and
    replaces a view registered again under the same name, so a reloaded script still has one."""
    if hasattr(_API, "Contentview"):
        return
    with contextlib.suppress(ValueError, KeyError):
        _API.remove(VIEW)
