"""The intermediate form every translation goes through: one request, one answer, one event stream.

Each dialect that can be translated has a codec to and from this form, so N dialects need 2N codecs,
not N² adapters. It holds what the dialects share (text, images, tool calls and results, thinking,
the stop reason, usage) and nothing any one of them alone means.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Stop(enum.Enum):
    """Why the model stopped, in words every dialect has."""

    END = "end"
    MAX_TOKENS = "max_tokens"
    TOOL_USE = "tool_use"
    STOP_SEQUENCE = "stop_sequence"
    REFUSAL = "refusal"


@dataclass
class Part:
    """One piece of a turn. `kind` says which fields mean something."""

    kind: str  # "text" | "image" | "document" | "thinking" | "tool_call" | "tool_result"
    text: str = ""
    #: Images: a `data:` or `https:` URL; documents (PDF): a `data:` URL.
    url: str = ""
    #: Documents: a file name for APIs that want one.
    name_hint: str = ""
    #: Tool calls and results: the call's id; calls: the tool's name and its input.
    id: str = ""
    name: str = ""
    arguments: dict[str, object] = field(default_factory=dict)
    #: Tool results: what the tool returned (text and image parts), and whether it failed.
    content: list[Part] = field(default_factory=list)
    is_error: bool = False


@dataclass
class Turn:
    role: str  # "user" | "assistant"
    parts: list[Part]


@dataclass
class Tool:
    name: str
    description: str
    schema: dict[str, object]


@dataclass
class Conversation:
    """A request, as every dialect can express it."""

    model: str
    system: str
    turns: list[Turn]
    tools: list[Tool] = field(default_factory=list)
    #: "auto" | "required" | "none" | a tool's name.
    tool_choice: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    #: "low" | "medium" | "high" when the client asked for thinking.
    reasoning: str | None = None


@dataclass
class Usage:
    """Tokens, with `input` meaning fresh input (cached tokens not included) in every dialect."""

    input: int = 0
    output: int = 0
    cache_read: int = 0


@dataclass
class Message:
    """A whole answer."""

    id: str
    model: str
    parts: list[Part]
    stop: Stop | None
    usage: Usage


# --- the stream: what happened, in order ------------------------------------------------------


@dataclass
class Began:
    id: str
    model: str


@dataclass
class TextDelta:
    text: str


@dataclass
class ThinkingDelta:
    text: str


@dataclass
class ToolCallDelta:
    """A piece of one tool call: `index` tells parallel calls apart; id and name may come late."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class Finished:
    stop: Stop | None = None
    usage: Usage | None = None


StreamEvent = Began | TextDelta | ThinkingDelta | ToolCallDelta | Finished


# --- helpers every codec reads documents with ---------------------------------------------------


def append_turn(turns: list[Turn], role: str, parts: list[Part]) -> None:
    """Consecutive messages of one role become one turn (Anthropic and Gemini require roles to
    alternate; the others don't mind)."""
    if turns and turns[-1].role == role:
        turns[-1].parts += parts
    else:
        turns.append(Turn(role, parts))


def objects(value: object) -> list[dict[str, object]]:
    """The JSON objects of a list (anything else in it, or a non-list, is ignored)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
