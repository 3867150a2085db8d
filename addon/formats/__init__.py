"""API dialects as a registry: one module per wire format, looked up by name or by request path.

Adding a dialect is one module plus one entry in `DIALECTS` (and its tests); nothing else in Detour
needs to know its event names or error shape.
"""

from __future__ import annotations

import fnmatch

from addon.formats.anthropic import ANTHROPIC
from addon.formats.base import Dialect, EventKind, Family, StreamWatch
from addon.formats.gemini import GEMINI
from addon.formats.openai_chat import OPENAI_CHAT
from addon.formats.openai_responses import OPENAI_RESPONSES

__all__ = ["DIALECTS", "FAMILIES", "Dialect", "EventKind", "Family", "StreamWatch", "dialect_for"]

DIALECTS: dict[str, Dialect] = {d.name: d for d in (ANTHROPIC, OPENAI_CHAT, OPENAI_RESPONSES, GEMINI)}

#: Each family's dialects, the first being the one a request falls back to when no path matches.
FAMILIES: dict[Family, tuple[Dialect, ...]] = {
    "anthropic": (ANTHROPIC,),
    "openai": (OPENAI_CHAT, OPENAI_RESPONSES),
    "gemini": (GEMINI,),
}


def family_paths(family: Family) -> tuple[str, ...]:
    """The default routed paths of a family: those of all its dialects."""
    return tuple(p for d in FAMILIES[family] for p in d.paths)


def dialect_for(family: Family, path: str) -> Dialect:
    """The dialect a request of an app of `family` speaks, by its path."""
    dialects = FAMILIES[family]
    if len(dialects) > 1:
        bare = path.split("?", 1)[0]
        for dialect in dialects:
            if any(fnmatch.fnmatchcase(bare, pattern) for pattern in dialect.paths):
                return dialect
    return dialects[0]
