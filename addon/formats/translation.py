"""Translating one attempt between the client's dialect and a provider's that speaks another.

The request goes client dialect → intermediate form → provider dialect; the answer, its events and its
errors come back the other way, so a translated provider is an ordinary member of the failover queue:
everything happens before the first byte reaches the client. `TRANSLATIONS` lists the directions that
exist; a request one can't represent (another path, a compressed body) skips that provider, uncharged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from addon.formats import codec_anthropic, codec_chat, codec_gemini, codec_responses
from addon.formats.base import Dialect, error_text
from addon.formats.documents import json_object
from addon.formats.ir import Conversation, Message, StreamEvent
from addon.formats.sse import SSEEvent, SSEParser

Headers = tuple[tuple[bytes, bytes], ...]


class Reader(Protocol):
    def read(self, event: SSEEvent) -> list[StreamEvent]: ...


class Writer(Protocol):
    def feed(self, events: list[StreamEvent]) -> bytes: ...

    def finish(self) -> bytes: ...


def _not_this_side(*args: object) -> Any:  # pragma: no cover - TRANSLATIONS never asks for it
    raise NotTranslatable("no translation needs this side of this dialect")


@dataclass(frozen=True)
class Codec:
    """One dialect to and from the intermediate form (two per dialect: in and out)."""

    #: The path of its model API.
    path: str
    decode_request: Callable[[dict[str, object]], Conversation]
    encode_request: Callable[[Conversation], dict[str, object]]
    decode_message: Callable[[dict[str, object]], Message]
    encode_message: Callable[[Message], dict[str, object]]
    reader: Callable[[], Reader]
    writer: Callable[[dict[str, str]], Writer]
    #: Fields its API requires that a client of another API doesn't send.
    headers: Headers = ()
    #: The path for a request, when it depends on the request (Gemini names the model in it).
    route: Callable[[Conversation], str] | None = None


CODECS: dict[str, Codec] = {
    "anthropic": Codec(
        "/v1/messages",
        codec_anthropic.decode_request,
        codec_anthropic.encode_request,
        codec_anthropic.decode_message,
        codec_anthropic.encode_message,
        codec_anthropic.StreamReader,
        codec_anthropic.StreamWriter,
        ((b"anthropic-version", codec_anthropic.ANTHROPIC_VERSION.encode()),),
    ),
    "openai-chat": Codec(
        "/v1/chat/completions",
        codec_chat.decode_request,
        codec_chat.encode_request,
        codec_chat.decode_message,
        lambda message: codec_chat.encode_message(message, created=0),
        codec_chat.StreamReader,
        lambda rename: codec_chat.StreamWriter(created=0),
    ),
    "openai-responses": Codec(
        "/v1/responses",
        codec_responses.decode_request,
        codec_responses.encode_request,
        codec_responses.decode_message,
        codec_responses.encode_message,
        codec_responses.StreamReader,
        codec_responses.StreamWriter,
    ),
    # A provider's side only, for now: no Gemini client is translated for another provider.
    "gemini": Codec(
        "/v1beta/models",
        _not_this_side,
        codec_gemini.encode_request,
        codec_gemini.decode_message,
        _not_this_side,
        codec_gemini.StreamReader,
        _not_this_side,
        route=codec_gemini.path,
    ),
}


@dataclass(frozen=True)
class Direction:
    """One supported (client dialect, provider dialect) pair."""

    #: A path Detour answers itself for such a provider, with an estimate (it has no equivalent).
    count_path: str = ""


#: (client dialect, provider dialect) → how. Everything else is refused by the config loader.
TRANSLATIONS: dict[tuple[str, str], Direction] = {
    ("anthropic", "openai-chat"): Direction(count_path="/v1/messages/count_tokens"),
    ("openai-chat", "anthropic"): Direction(),
    ("openai-responses", "openai-chat"): Direction(),
    ("openai-responses", "anthropic"): Direction(),
    ("anthropic", "openai-responses"): Direction(count_path="/v1/messages/count_tokens"),
    ("anthropic", "gemini"): Direction(count_path="/v1/messages/count_tokens"),
}
#: Client headers that only mean something to the client's own API.
_CLIENT_ONLY = (b"anthropic-", b"x-stainless-", b"openai-")


class NotTranslatable(ValueError):
    """This request can't be expressed in the provider's dialect."""


#: The longest tool name Chat, Responses and Gemini accept.
MAX_TOOL_NAME = 64


def tool_name(name: str) -> str:
    """A tool name every target accepts: one over 64 characters keeps a prefix and a hash of the whole
    (so two long names stay apart, and the same name always maps the same way)."""
    if len(name) <= MAX_TOOL_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_TOOL_NAME - 9]}_{digest}"


def _shortened_tool_names(conversation: Conversation) -> dict[str, str]:
    """Every target API caps a tool's name at 64 characters (MCP tools often run longer): names are
    shortened reversibly in the request, and the map turns them back in the answer."""
    renamed: dict[str, str] = {}
    for tool in conversation.tools:
        short = tool_name(tool.name)
        if short != tool.name:
            renamed[short], tool.name = tool.name, short
    for turn in conversation.turns:
        for part in turn.parts:
            if part.kind == "tool_call":
                part.name = tool_name(part.name)
    choice = conversation.tool_choice
    if choice and choice not in ("auto", "required", "none"):
        conversation.tool_choice = tool_name(choice)
    return renamed


def supported(client: str, provider: str) -> bool:
    return client == provider or (client, provider) in TRANSLATIONS


class Translation:
    """One attempt's translation: the request on the way out, the answer on the way back."""

    def __init__(self, client: Dialect, provider: Dialect) -> None:
        self.client = client
        self.provider = provider
        self.direction = TRANSLATIONS[(client.name, provider.name)]
        self.inbound, self.outbound = CODECS[client.name], CODECS[provider.name]
        #: Tool names shortened for the provider → the client's names.
        self.rename: dict[str, str] = {}
        self._parser = SSEParser()
        self._reader = self.outbound.reader()
        self._writer = self.inbound.writer(self.rename)

    def request(
        self, path: str, headers: Headers, body: bytes, stream: bool | None = None
    ) -> tuple[str, Headers, bytes]:
        """The client's request as the provider must get it; NotTranslatable when it can't be.
        `stream` is how the client's answer is delivered (the exchange decided it from the bytes the
        client sent): the provider is asked for the same, whatever the parsed body says."""
        bare = path.split("?", 1)[0]
        if bare != self.inbound.path:
            raise NotTranslatable(f"{bare} has no {self.provider.name} equivalent")
        if any(n == b"content-encoding" and v.strip().lower() not in (b"", b"identity") for n, v in headers):
            raise NotTranslatable("a compressed request body can't be translated")
        document = json_object(body)
        if document is None:
            raise NotTranslatable("the request body is not a JSON object")
        try:
            conversation = self.inbound.decode_request(document)
            conversation.stream = self.client.is_stream_request(path, body) if stream is None else stream
            self.rename.update(_shortened_tool_names(conversation))
            translated = self.outbound.encode_request(conversation)
            body = json.dumps(translated, ensure_ascii=True).encode()
            route = self.outbound.route(conversation) if self.outbound.route else self.outbound.path
        except ValueError as e:
            raise NotTranslatable(str(e)) from None
        except RecursionError:
            raise NotTranslatable("the request nests too deeply to translate") from None
        options = document.get("stream_options")
        wants_usage = isinstance(options, dict) and options.get("include_usage") is True
        if hasattr(self._writer, "include_usage"):  # a Chat client gets a usage chunk only when it asks
            self._writer.include_usage = wants_usage
        kept = tuple((n, v) for n, v in headers if not n.startswith(_CLIENT_ONLY) and n != b"content-length")
        return route, kept + self.outbound.headers, body

    def local_answer(self, path: str, body: bytes) -> bytes | None:
        """The answer Detour gives itself to a request the provider has no equivalent for: a token
        count, estimated at four bytes of the request's text per token (documented as an estimate)."""
        if not self.direction.count_path or path.split("?", 1)[0] != self.direction.count_path:
            return None
        document = json_object(body) or {}
        counted = [document.get(k) for k in ("system", "messages", "tools")]
        try:
            size = len(json.dumps(counted))  # ASCII: escapes stand in for what isn't (a rough estimate)
        except RecursionError:
            size = len(body)
        return json.dumps({"input_tokens": max(1, size // 4)}).encode()

    def failure(self, status: int, body: bytes) -> str | None:
        """Why a 2xx whole answer is in fact a failure (an error document with no answer in it), or
        None: it must fail over, not become an empty message."""
        document = json_object(body)
        if not 200 <= status < 300:
            return None
        if document is None:
            return "a 2xx answer that is not a JSON object"
        answered = any(k in document for k in ("choices", "content", "output", "candidates"))
        error = document.get("error")
        if error and not answered:
            message = error_text(body) or "an error"
            return f"a {status} answer carrying an error: {message}"
        feedback = document.get("promptFeedback")
        blocked = feedback.get("blockReason") if isinstance(feedback, dict) else None
        if blocked and not document.get("candidates"):  # Gemini refused the prompt itself
            return f"a {status} answer with the prompt blocked ({blocked})"
        return None

    def answer(self, status: int, body: bytes) -> bytes:
        """A whole answer in the client's dialect: a success translated, an error in its shape with
        the provider's message (the status is kept by the caller)."""
        document = json_object(body)
        if 200 <= status < 300 and document is not None:
            message = self.outbound.decode_message(document)
            for part in message.parts:
                part.name = self.rename.get(part.name, part.name)
            return json.dumps(self.inbound.encode_message(message)).encode()
        message_text = error_text(body) or body[:500].decode("utf-8", "replace") or f"http {status}"
        return self.client.error_body(status, f"{self.provider.name} provider: {message_text}")

    def events(self, data: bytes) -> bytes:
        """Whole events of the provider's stream → the client's events."""
        return self.from_events(self._parser.feed(data))

    def from_events(self, events: list[SSEEvent]) -> bytes:
        """The provider's parsed events → the client's events."""
        return b"".join(self._writer.feed(self._reader.read(e)) for e in events)

    def finish(self) -> bytes:
        """The provider's stream ended complete: the client's closing events."""
        flush = getattr(self._reader, "flush", None)
        held = self._writer.feed(flush()) if flush is not None else b""
        return held + self._writer.finish()


def translation_for(
    client: Dialect, provider_api: str | None, dialects: dict[str, Dialect]
) -> Translation | None:
    """The translation an attempt needs (None when the provider speaks the client's dialect)."""
    if provider_api is None or provider_api == client.name:
        return None
    if (client.name, provider_api) in TRANSLATIONS:
        return Translation(client, dialects[provider_api])
    if dialects[provider_api].family == client.family:
        return None  # the family's other dialect: the provider is asked in the client's own
    raise NotTranslatable(f"no translation from {client.name} to {provider_api}")
