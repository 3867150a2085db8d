"""Request rewriting per provider: target URL, credential headers and model mapping."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from addon.model import Provider
from addon.rewrite import CREDENTIAL_HEADERS, header_plan, mapped_body, target_path

KEY = "provider-own-key-123"
MODELS = (("claude-opus-*", "glm-4.6"), ("gemini-2.5-pro", "gemini-2.5-flash"))


def prov(key: str | None = KEY, auth: str = "x-api-key", models=MODELS) -> Provider:
    return Provider(id="p", base_url="https://backup.example/api", api_key=key, auth=auth, models=models)


@pytest.mark.parametrize(
    ("key", "models", "path", "expected"),
    [
        (KEY, (), "/v1/messages", "/v1/messages"),
        (KEY, (), "/v1/messages?beta=true", "/v1/messages?beta=true"),
        (None, (), "/v1/messages?beta=true", "/v1/messages?beta=true"),
        # The client's own Gemini key is dropped only when the provider brings its own key.
        (KEY, (), "/v1beta/models/m:generateContent?key=CLIENT", "/v1beta/models/m:generateContent"),
        (KEY, (), "/v1beta/models/m:x?alt=sse&key=CLIENT", "/v1beta/models/m:x?alt=sse"),
        (KEY, (), "/v1beta/models/m:x?key=CLIENT&alt=sse", "/v1beta/models/m:x?alt=sse"),
        (None, (), "/v1beta/models/m:x?key=CLIENT&alt=sse", "/v1beta/models/m:x?key=CLIENT&alt=sse"),
        (KEY, (), "/v1/x?monkey=1", "/v1/x?monkey=1"),
        # Gemini names the model in the path.
        (
            KEY,
            MODELS,
            "/v1beta/models/gemini-2.5-pro:generateContent",
            "/v1beta/models/gemini-2.5-flash:generateContent",
        ),
        (
            KEY,
            MODELS,
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse&key=C",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        ),
        (
            None,
            MODELS,
            "/v1beta/models/gemini-2.5-pro:generateContent?key=C",
            "/v1beta/models/gemini-2.5-flash:generateContent?key=C",
        ),
        (KEY, MODELS, "/v1beta/models/gemini-1.5:generate", "/v1beta/models/gemini-1.5:generate"),
        (KEY, MODELS, "/v1beta/models", "/v1beta/models"),
        (KEY, (), "/v1beta/models/gemini-2.5-pro:generate", "/v1beta/models/gemini-2.5-pro:generate"),
    ],
)
def test_target_path(key: str | None, models, path: str, expected: str) -> None:
    assert target_path(prov(key, models=models), path) == expected


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        ("x-api-key", {"x-api-key": KEY}),
        ("bearer", {"authorization": f"Bearer {KEY}"}),
        ("x-goog-api-key", {"x-goog-api-key": KEY}),
    ],
)
def test_header_plan_replaces_every_client_credential(auth: str, expected: dict[str, str]) -> None:
    remove, set_ = header_plan(prov(auth=auth))
    assert set(remove) == {"x-api-key", "authorization", "x-goog-api-key"}
    assert set(remove) == set(CREDENTIAL_HEADERS)
    assert set_ == expected


@pytest.mark.parametrize("auth", ["x-api-key", "bearer", "x-goog-api-key"])
def test_header_plan_without_key_passes_client_credentials(auth: str) -> None:
    assert header_plan(prov(key=None, auth=auth)) == ((), {})


BODY = {
    "model": "claude-opus-4-1",
    "max_tokens": 1024,
    "stream": True,
    "system": [{"type": "text", "text": "Ünïcødé ✓ \"quoted\"", "cache_control": {"type": "ephemeral"}}],
    "messages": [{"role": "user", "content": "hi"}],
}


@pytest.mark.parametrize(
    ("provider", "body", "headers"),
    [
        (prov(models=()), json.dumps(BODY).encode(), {}),
        (prov(), json.dumps({**BODY, "model": "claude-sonnet-4"}).encode(), {}),
        (prov(), b"not json {", {}),
        (prov(), b"\xff\xfe\x00garbage", {}),
        (prov(), b"", {}),
        (prov(), json.dumps(BODY).encode(), {"content-encoding": "gzip"}),
        (prov(), json.dumps({**BODY, "model": 42}).encode(), {}),
        (prov(), json.dumps({**BODY, "model": None}).encode(), {}),
        (prov(), json.dumps({**BODY, "model": ["claude-opus-4"]}).encode(), {}),
        (prov(), json.dumps([BODY]).encode(), {}),
        (prov(), json.dumps({k: v for k, v in BODY.items() if k != "model"}).encode(), {}),
        (prov(models=(("claude-opus-*", "claude-opus-4-1"),)), json.dumps(BODY).encode(), {}),
    ],
    ids=[
        "no-models",
        "no-match",
        "non-json",
        "binary",
        "empty",
        "gzip",
        "model-int",
        "model-null",
        "model-list",
        "array",
        "no-model-key",
        "maps-to-itself",
    ],
)
def test_mapped_body_unchanged(provider: Provider, body: bytes, headers: dict[str, str]) -> None:
    assert mapped_body(provider, body, headers) is None


def test_mapped_body_changes_only_the_model() -> None:
    raw = json.dumps(BODY, indent=2).encode()
    out = mapped_body(prov(), raw, {"content-type": "application/json"})
    assert out is not None
    after = json.loads(out)
    assert after["model"] == "glm-4.6"
    assert {**after, "model": BODY["model"]} == BODY
    assert "Ünïcødé ✓".encode() in out  # not \u-escaped


def test_mapped_body_first_matching_glob_wins() -> None:
    p = prov(models=(("claude-*", "first"), ("claude-opus-*", "second")))
    out = mapped_body(p, json.dumps(BODY).encode(), {})
    assert out is not None and json.loads(out)["model"] == "first"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=75, deadline=None)
@given(extra=st.dictionaries(st.text(max_size=8).filter(lambda k: k != "model"), json_values, max_size=5))
def test_mapped_body_property_only_model_changes(extra: dict[str, object]) -> None:
    doc = {**extra, "model": "claude-opus-4"}
    out = mapped_body(prov(), json.dumps(doc).encode(), {})
    assert out is not None
    assert json.loads(out) == {**doc, "model": "glm-4.6"}


def test_mapped_body_with_escaped_lone_surrogate() -> None:
    raw = b'{"model":"claude-opus-4","messages":[{"role":"user","content":"cut emoji \\ud83d"}]}'
    out = mapped_body(prov(), raw, {})
    assert out is not None
    assert json.loads(out) == {**json.loads(raw), "model": "glm-4.6"}
