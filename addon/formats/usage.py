"""Tokens an attempt consumed, read from what its provider reported, the same way for every dialect.

Each API counts differently: Anthropic reports fresh input and cache reads and writes apart, while
OpenAI (Chat and Responses) and Gemini count cached tokens inside the input. Here `input` always means
**fresh** input (cache reads and writes not included), so totals add up across providers. `output`
includes reasoning (every API bills thinking as output); `reasoning` says how much of it was thinking.

A field the provider did not report is None, never 0: a stream cut before its usage arrived, or an
answer without a usage block, is *unknown*, and sums and costs must be able to say so. A field the
API has no notion of but never bills (OpenAI and Gemini have no cache writes) is 0.

Reading is lazy: during a stream the dialect only keeps the raw text of the few events that carry
usage (`UsageMeter`), and they are parsed once, when the attempt is recorded, so accounting never makes
the client's stream wait.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from addon.formats.documents import json_object
from addon.formats.ir import Usage

if TYPE_CHECKING:
    from addon.formats.base import Dialect
    from addon.formats.sse import SSEEvent


@dataclass(frozen=True, slots=True)
class Tokens:
    """One attempt's tokens as its provider reported them (None: not reported)."""

    input: int | None = None
    cache_read: int | None = None
    cache_write: int | None = None
    output: int | None = None
    reasoning: int | None = None
    #: The provider's message or response id ("" if none was seen).
    response_id: str = ""
    #: The model the provider says answered ("" if it didn't say).
    model: str = ""

    def with_ids(self, document: Mapping[str, object], id_key: str, model_key: str) -> Tokens:
        """These tokens with the id and model `document` names (kept when it names none)."""
        found_id, found_model = document.get(id_key), document.get(model_key)
        return dataclasses.replace(
            self,
            response_id=found_id if isinstance(found_id, str) else self.response_id,
            model=found_model if isinstance(found_model, str) else self.model,
        )


class Metering(NamedTuple):
    """What the attempt log keeps of one attempt besides its verdict (`Exchange.metering`)."""

    #: The dialect spoken to the provider (the client's, unless translated).
    dialect: str
    streamed: bool
    #: The model the client asked for, and the model name the provider was sent.
    model_requested: str
    model: str
    #: From the attempt's start to its answer's head, and to its first generated content.
    ttfb_ms: float | None
    ttft_ms: float | None
    tokens: Tokens | None


class UsageMeter:
    """Keeps, per usage role its dialect names (`Dialect.usage_slot`), the last event's raw text."""

    __slots__ = ("_dialect", "kept")

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self.kept: dict[str, str] = {}

    def see(self, event: SSEEvent) -> None:
        slot = self._dialect.usage_slot(event)
        if slot is not None:
            self.kept[slot] = event.data

    def tokens(self) -> Tokens | None:
        """What the stream reported so far; None when it reported nothing at all."""
        return self._dialect.stream_tokens(self.kept) if self.kept else None


#: A count above this is no count (a trillion tokens in one answer): unknown. It also keeps every
#: count within SQLite's integers and every cost a finite float.
MAX_COUNT = 10**12


def count(value: object) -> int | None:
    """A token count as reported: a non-negative integer (up to `MAX_COUNT`), else unknown."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT:
        return value
    return None


def count_or_zero(document: Mapping[str, object], key: str) -> int | None:
    """A count an API leaves out when it is 0 (cache counts): absent is 0, present but not a count
    is unknown (never taken for 0)."""
    return count(document[key]) if key in document else 0


def member(document: object, *path: str) -> object:
    """`document[path[0]][path[1]]...`, or None wherever a step is missing or not an object."""
    value: object = document
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def fresh(total: int | None, cached: int | None) -> int | None:
    """Input without its cached part, for APIs that count cached tokens inside the input."""
    if total is None:
        return None
    return max(0, total - (cached or 0))


def parsed(kept: Mapping[str, str], slot: str) -> dict[str, object] | None:
    text = kept.get(slot)
    return json_object(text) if text is not None else None


def body_document(body: bytes) -> dict[str, object] | None:
    """A whole answer's JSON object; None for anything else (an error page, an empty body)."""
    stripped = body.lstrip()
    return json_object(body) if stripped[:1] == b"{" else None


# --- each API's usage block ---------------------------------------------------------------------


def anthropic_usage(value: object) -> Tokens | None:
    """Messages `usage`: input, cache reads and cache writes are reported apart already."""
    if not isinstance(value, dict):
        return None
    return Tokens(
        input=count(value.get("input_tokens")),
        cache_read=count_or_zero(value, "cache_read_input_tokens"),
        cache_write=count_or_zero(value, "cache_creation_input_tokens"),
        output=count(value.get("output_tokens")),
    )


def chat_usage(value: object) -> Tokens | None:
    """Chat Completions `usage`: cached tokens (`prompt_tokens_details.cached_tokens`, DeepSeek's
    `prompt_cache_hit_tokens`) and cache writes, where reported, are inside `prompt_tokens`."""
    if not isinstance(value, dict):
        return None
    prompt = count(value.get("prompt_tokens"))
    details = value.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    if "cached_tokens" in details or "prompt_cache_hit_tokens" not in value:
        cached = count_or_zero(details, "cached_tokens")
    else:  # DeepSeek
        cached = count(value.get("prompt_cache_hit_tokens"))
    written = count_or_zero(details, "cache_write_tokens")
    known = prompt is not None
    return Tokens(
        input=fresh(prompt, (cached or 0) + (written or 0)),
        cache_read=cached if known else None,
        cache_write=written if known else None,
        output=count(value.get("completion_tokens")),
        reasoning=count(member(value, "completion_tokens_details", "reasoning_tokens")),
    )


def responses_usage(value: object) -> Tokens | None:
    """Responses `usage`: cached tokens are inside `input_tokens`, reasoning inside `output_tokens`."""
    if not isinstance(value, dict):
        return None
    total = count(value.get("input_tokens"))
    details = value.get("input_tokens_details")
    cached = count_or_zero(details if isinstance(details, dict) else {}, "cached_tokens")
    known = total is not None
    return Tokens(
        input=fresh(total, cached),
        cache_read=cached if known else None,
        cache_write=0 if known else None,
        output=count(value.get("output_tokens")),
        reasoning=count(member(value, "output_tokens_details", "reasoning_tokens")),
    )


def gemini_usage(value: object, final: bool = True) -> Tokens | None:
    """Gemini `usageMetadata`: cached tokens are inside `promptTokenCount`; the prompts of its own
    tool use (`toolUsePromptTokenCount`) are input too. Output is what is left of the total, so
    thinking (`thoughtsTokenCount`) counts. Zero counts are left out of the JSON, so an absent
    count is 0. Before the final chunk the output is still growing: unknown."""
    if not isinstance(value, dict):
        return None
    prompt = count(value.get("promptTokenCount"))
    total = count(value.get("totalTokenCount"))
    cached = count_or_zero(value, "cachedContentTokenCount")
    tool_prompt = count_or_zero(value, "toolUsePromptTokenCount")
    known = prompt is not None and tool_prompt is not None
    prompts = prompt + tool_prompt if prompt is not None and tool_prompt is not None else None
    output = max(0, total - prompts) if final and total is not None and prompts is not None else None
    return Tokens(
        input=fresh(prompts, cached),
        cache_read=cached if known else None,
        cache_write=0 if known else None,
        output=output,
        reasoning=count_or_zero(value, "thoughtsTokenCount") if output is not None else None,
    )


def ir_usage(tokens: Tokens | None) -> Usage | None:
    """The usage a translation carries to the client's dialect (unknown counts as 0 there: the
    client's SDK wants numbers)."""
    if tokens is None:
        return None
    # The IR has no cache writes: they go back into the input, where the client's API counts them.
    return Usage((tokens.input or 0) + (tokens.cache_write or 0), tokens.output or 0, tokens.cache_read or 0)
