"""Error bodies that each official SDK recognises."""

from __future__ import annotations

import json

import pytest

from addon.errors import error_body
from addon.model import ERROR_SHAPES

STATUSES = [429, 500, 502, 503, 504, 529]
MESSAGE = 'detour: every provider failed ("primary": http 503) — ✓'


@pytest.mark.parametrize("status", STATUSES)
def test_anthropic_shape(status: int) -> None:
    doc = json.loads(error_body("anthropic", status, MESSAGE))
    assert doc["type"] == "error"
    assert doc["error"]["message"] == MESSAGE
    expected = {429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}.get(
        status, "api_error"
    )
    assert doc["error"]["type"] == expected


@pytest.mark.parametrize("status", STATUSES)
def test_openai_shape(status: int) -> None:
    doc = json.loads(error_body("openai", status, MESSAGE))
    err = doc["error"]
    assert err["message"] == MESSAGE
    assert isinstance(err["type"], str) and err["type"]
    assert isinstance(err["code"], str) and err["code"]
    assert "param" in err
    assert err["code"] == ("rate_limit_exceeded" if status == 429 else "server_error")


@pytest.mark.parametrize("status", STATUSES)
def test_gemini_shape(status: int) -> None:
    doc = json.loads(error_body("gemini", status, MESSAGE))
    err = doc["error"]
    assert err["code"] == status and isinstance(err["code"], int)
    assert err["message"] == MESSAGE
    expected = {429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}.get(
        status, "INTERNAL"
    )
    assert err["status"] == expected


@pytest.mark.parametrize("shape", ERROR_SHAPES)
@pytest.mark.parametrize("message", ["", "line\nbreak", '"quotes" and \\ backslash', "\x00control"])
def test_every_shape_is_valid_json_bytes(shape: str, message: str) -> None:
    body = error_body(shape, 503, message)  # type: ignore[arg-type]
    assert isinstance(body, bytes)
    body.decode("ascii")  # json.dumps escapes everything: safe in any charset
    doc = json.loads(body)
    assert isinstance(doc, dict) and isinstance(doc["error"], dict)
    assert doc["error"]["message"] == message
