"""An adversarial review of the "Detour" content view, rendered through mitmproxy's own machinery,
kept as tests: each one failed before its fix."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from mitmproxy.test import taddons
from test_contentview import answered, rendered
from test_usage import ANTHROPIC_HEAD, sse

from addon.mitm import contentview

KEY = "sk-ant-api03-" + "Q" * 40  # a provider key Detour holds (the raw flow masks it when it is whole)


def view(path: str, body: bytes, content_type: str, status: int = 200) -> tuple[str, str]:
    contentview.register(lambda: (KEY,))
    try:
        with taddons.context():  # mitmproxy 12's views read ctx.options
            flow = answered(path, body, content_type, status)
            assert flow.response is not None
            return rendered(flow, flow.response)
    finally:
        contentview.unregister()


def text_delta(text: str) -> tuple[str, dict[str, object]]:
    delta = {"type": "text_delta", "text": text}
    return ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})


def test_a_key_echoed_in_pieces_is_never_assembled_in_the_view() -> None:
    # A model repeats a key token by token: no event holds it whole, so byte masking can't see it.
    body = ANTHROPIC_HEAD + sse(*(text_delta(KEY[i : i + 6]) for i in range(0, len(KEY), 6)))
    assert KEY.encode() not in body  # the raw view never shows it
    name, text = view("/v1/messages", body, "text/event-stream")
    assert name == "Detour"
    assert KEY not in text, "the Detour view spells out the key"


def test_a_key_in_streamed_tool_arguments_is_never_assembled_either() -> None:
    start = ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
        "type": "tool_use", "id": "toolu_1", "name": "write_env", "input": {}}})  # fmt: skip
    pieces = json.dumps({"content": f"API_KEY={KEY}"})
    deltas = [("content_block_delta", {"type": "content_block_delta", "index": 1,
               "delta": {"type": "input_json_delta", "partial_json": pieces[i : i + 7]}})
              for i in range(0, len(pieces), 7)]  # fmt: skip
    body = ANTHROPIC_HEAD + sse(start, *deltas)
    assert KEY.encode() not in body
    assert KEY not in view("/v1/messages", body, "text/event-stream")[1]


def test_a_two_megabyte_json_array_costs_the_view_well_under_a_second() -> None:
    # Any JSON on a `:generateContent` path used to get the view first, and an array was re-encoded
    # one SSE event per element. What mitmproxy asks the view for (its priority, then its text) is
    # timed on its own: mitmproxy's JSON view of such a body is mitmproxy's cost.
    body = b"[" + b",".join([b"0"] * 1_000_000) + b"]"  # 2 MB
    flow = answered("/v1beta/models/gemini-2.5-pro:streamGenerateContent", body, "application/json")
    started = time.perf_counter()
    priority = contentview._priority(body, flow, flow.response, "application/json")
    shown = contentview._render(body, flow, flow.response, "application/json")
    took = time.perf_counter() - started
    assert priority < 0 and shown is None  # no model answer: the view leaves it to the others
    assert took < 5.0, f"{took:.1f}s with the proxy frozen"


def test_a_multi_megabyte_stream_renders_well_under_a_second() -> None:
    # mitmweb renders views on the proxy's own event loop: while it renders, no flow moves.
    body = b"data: {}\n\n" * 800_000  # 8 MB (COPY_LIMIT) of a broken provider's chunks
    started = time.perf_counter()
    name, text = view("/v1/chat/completions", body, "text/event-stream")
    took = time.perf_counter() - started
    assert name == "Detour"
    # The view reads a bounded share of the body (the bound is what keeps it fast; the time is a
    # generous guard against a freeze, not a measurement).
    assert text.splitlines()[0] == (
        "openai-chat answer, partly shown (1,048,576 of 8,000,000 bytes): how it ended is not known here"
    )
    assert took < 5.0, f"{took:.1f}s with the proxy frozen"


def test_an_error_in_a_200_body_is_not_shown_as_an_empty_answer() -> None:
    # OpenRouter and others answer some failures with 200 and an error document.
    body = json.dumps({"error": {"message": "Rate limit exceeded: free-models-per-day", "code": 429}})
    name, text = view("/api/v1/chat/completions", body.encode(), "application/json")
    assert name == "Detour"
    assert "Rate limit exceeded" in text, text


def test_a_json_api_that_is_not_a_model_answer_keeps_the_json_view() -> None:
    # OpenAI Assistants: GET /v1/threads/{id}/messages on api.openai.com (a Codex app host).
    body = json.dumps({"object": "list", "data": [{"id": "msg_1", "object": "thread.message",
                       "content": [{"type": "text", "text": {"value": "Hello?"}}]}]})  # fmt: skip
    name, text = view("/v1/threads/thread_abc/messages", body.encode(), "application/json")
    assert name != "Detour", text  # is: "anthropic answer … (no content)"
