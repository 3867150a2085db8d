"""Request rewriting per provider: target URL, headers, credentials and model mapping."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from addon.credentials import CLIENT_CREDENTIALS
from addon.model import Provider
from addon.rewrite import (
    ClientRequest,
    for_provider,
    map_body_model,
    model_spans,
    parse_target,
    target_path,
)

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
        (KEY, (), "/v1/x?KEY=C&Key=C&%6Bey=C&alt=sse", "/v1/x?alt=sse"),
        (KEY, (), "/v1/x?access_token=C&Api_Key=C", "/v1/x"),
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


CLIENT_HEADERS = (
    (b"host", b"api.anthropic.com"),
    (b"x-api-key", b"client-key"),
    (b"authorization", b"Bearer client-token"),
    (b"api-key", b"client-azure"),
    (b"proxy-authorization", b"Basic cHJveHk="),
    (b"cookie", b"session=client"),
    (b"openai-organization", b"org-client"),
    (b"anthropic-version", b"2023-06-01"),
    (b"anthropic-beta", b"tools-2024"),
    (b"connection", b"keep-alive, x-hop"),
    (b"x-hop", b"hop"),
    (b"accept-encoding", b"gzip, br"),
    (b"content-length", b"999"),
    (b"transfer-encoding", b"chunked"),
    (b"content-type", b"application/json"),
)


def request(
    path: str = "/v1/messages?beta=true",
    body: bytes = b'{"model":"claude-opus-4"}',
    headers: tuple[tuple[bytes, bytes], ...] = CLIENT_HEADERS,
) -> ClientRequest:
    return ClientRequest("POST", path, headers, body)


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        ("x-api-key", (b"x-api-key", KEY.encode())),
        ("bearer", (b"authorization", f"Bearer {KEY}".encode())),
        ("x-goog-api-key", (b"x-goog-api-key", KEY.encode())),
        ("api-key", (b"api-key", KEY.encode())),
    ],
)
def test_a_keyed_provider_gets_its_key_and_none_of_the_clients_credentials(auth: str, expected) -> None:
    out = for_provider(request(), prov(auth=auth))
    names = [n for n, _ in out.headers]
    assert expected in out.headers
    credentials = [(n, v) for n, v in out.headers if n in CLIENT_CREDENTIALS]
    assert credentials == [expected]
    assert b"client" not in b"".join(v for _, v in out.headers)
    assert (b"anthropic-version", b"2023-06-01") in out.headers and (
        b"anthropic-beta",
        b"tools-2024",
    ) in out.headers
    assert names.count(b"host") == 1 and (b"host", b"backup.example") in out.headers


def test_a_keyless_provider_gets_the_clients_credentials_unchanged() -> None:
    out = for_provider(request(), prov(key=None))
    for name in (b"x-api-key", b"authorization", b"api-key", b"cookie", b"openai-organization"):
        assert dict(CLIENT_HEADERS)[name] == dict(out.headers)[name]
    # ...but never what was meant for the proxy itself.
    assert b"proxy-authorization" not in dict(out.headers)


def test_hop_by_hop_headers_are_dropped_and_framing_is_detours() -> None:
    out = for_provider(request(body=b"{}"), prov())
    headers = dict(out.headers)
    for name in (b"connection", b"x-hop", b"transfer-encoding"):
        assert name not in headers
    assert headers[b"content-length"] == b"2"
    assert headers[b"accept-encoding"] == b"identity"  # Detour must read every answer
    assert out.url == "https://backup.example/api/v1/messages?beta=true"
    assert out.target == parse_target("https://backup.example/api")


@pytest.mark.parametrize(
    ("url", "authority", "port"),
    [
        ("https://a.example", "a.example", 443),
        ("http://a.example", "a.example", 80),
        ("http://127.0.0.1:9000/p", "127.0.0.1:9000", 9000),
        ("https://[::1]:8443", "[::1]:8443", 8443),
    ],
)
def test_targets(url: str, authority: str, port: int) -> None:
    target = parse_target(url)
    assert (target.authority, target.port) == (authority, port)


BODY = {
    "model": "claude-opus-4-1",
    "max_tokens": 1024,
    "stream": True,
    "system": [{"type": "text", "text": 'Ünïcødé ✓ "quoted"', "cache_control": {"type": "ephemeral"}}],
    "messages": [{"role": "user", "content": "hi"}],
}


@pytest.mark.parametrize(
    ("provider", "body"),
    [
        (prov(models=()), json.dumps(BODY).encode()),
        (prov(), json.dumps({**BODY, "model": "claude-sonnet-4"}).encode()),
        (prov(), b"not json {"),
        (prov(), b"\xff\xfe\x00garbage"),
        (prov(), b""),
        (prov(), json.dumps({**BODY, "model": 42}).encode()),
        (prov(), json.dumps({**BODY, "model": None}).encode()),
        (prov(), json.dumps({**BODY, "model": ["claude-opus-4"]}).encode()),
        (prov(), json.dumps([BODY]).encode()),
        (prov(), json.dumps({k: v for k, v in BODY.items() if k != "model"}).encode()),
        (prov(), json.dumps({"metadata": {"model": "claude-opus-4"}}).encode()),
        (prov(models=(("claude-opus-*", "claude-opus-4-1"),)), json.dumps(BODY).encode()),
    ],
    ids=[
        "no-models",
        "no-match",
        "non-json",
        "binary",
        "empty",
        "model-int",
        "model-null",
        "model-list",
        "array",
        "no-model-key",
        "nested-model",
        "maps-to-itself",
    ],
)
def test_body_unchanged(provider: Provider, body: bytes) -> None:
    assert map_body_model(body, provider) is None
    assert for_provider(request(body=body), provider).body == body


def test_only_the_model_value_changes_byte_for_byte() -> None:
    raw = json.dumps(BODY, indent=2, ensure_ascii=False).encode()
    out = map_body_model(raw, prov())
    assert out == raw.replace(b'"model": "claude-opus-4-1"', b'"model": "glm-4.6"')


@pytest.mark.parametrize(
    "raw",
    [
        b'{"n": 1e400, "model": "claude-opus-4", "x": NaN, "y": 1.0000000000000000001}',
        b'{ "model" : "claude-opus-4" , "t":"\\u00e9\\ud83d" }',
        b'{"model":"claude-opus-4","model":"claude-opus-4"}',
        '{"système":"ü","model":"claude-opus-4"}'.encode(),
    ],
    ids=["numbers", "escapes-and-spacing", "duplicate-keys", "utf8"],
)
def test_everything_but_the_model_survives_as_sent(raw: bytes) -> None:
    out = map_body_model(raw, prov())
    assert out == raw.replace(b'"claude-opus-4"', b'"glm-4.6"')


def test_first_matching_glob_wins() -> None:
    p = prov(models=(("claude-*", "first"), ("claude-opus-*", "second")))
    out = map_body_model(json.dumps(BODY).encode(), p)
    assert out is not None and json.loads(out)["model"] == "first"


def test_model_spans_ignore_nested_and_malformed() -> None:
    text = '{"a": {"model": "x"}, "model": "y"}'
    at = text.index('"y"')
    assert model_spans(text.encode()) == [(at, at + 3, "y")]
    assert model_spans(b'{"model": "x"') == []
    assert model_spans(b"[" * 5000 + b"]" * 5000) == []
    deep = '{"a": ' + "[" * 5000 + "]" * 5000 + ', "model": "m"}'
    at = deep.index('"m"')
    assert model_spans(deep.encode()) in ([], [(at, at + 3, "m")])  # never a crash


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=100, deadline=None)
@given(
    extra=st.dictionaries(st.text(max_size=8).filter(lambda k: k != "model"), json_values, max_size=5),
    indent=st.sampled_from([None, 1]),
)
def test_property_only_the_model_changes(extra: dict[str, object], indent: int | None) -> None:
    doc = {**extra, "model": "claude-opus-4"}
    raw = json.dumps(doc, indent=indent).encode()
    out = map_body_model(raw, prov())
    assert out is not None
    assert json.loads(out) == {**doc, "model": "glm-4.6"}
    assert len(out) == len(raw) - len("claude-opus-4") + len("glm-4.6")


def test_every_auth_style_header_counts_as_a_client_credential() -> None:
    from addon.credentials import AUTH_STYLES

    # A provider's key is masked wherever a client credential is: they must be the same headers.
    assert {style.header for style in AUTH_STYLES.values()} <= CLIENT_CREDENTIALS


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
def test_a_compressed_body_is_decoded_mapped_and_encoded_again(coding: str) -> None:
    from addon import codecs

    raw = b'{"model": "claude-opus-4", "n": 1e400}'
    headers = (*CLIENT_HEADERS, (b"content-encoding", coding.encode()))
    out = for_provider(request(body=codecs.encode(coding, raw), headers=headers), prov())
    assert codecs.decode(coding, out.body) == raw.replace(b"claude-opus-4", b"glm-4.6")
    assert dict(out.headers)[b"content-length"] == str(len(out.body)).encode()


@pytest.mark.parametrize(
    ("coding", "body"),
    [("compress", b"x"), ("gzip", b"not gzip"), ("gzip, br", b"x")],
)
def test_a_body_that_cant_be_decoded_makes_the_provider_unsendable(coding: str, body: bytes) -> None:
    from addon.rewrite import Unsendable

    headers = (*CLIENT_HEADERS, (b"content-encoding", coding.encode()))
    with pytest.raises(Unsendable):
        for_provider(request(body=body, headers=headers), prov())
    # Without a mapping, the body goes as sent.
    assert for_provider(request(body=body, headers=headers), prov(models=())).body == body


def test_a_decompression_bomb_is_refused() -> None:
    import gzip

    from addon.rewrite import Unsendable

    bomb = gzip.compress(b'{"model": "claude-opus-4", "x": "' + b"a" * (70 * 1024 * 1024) + b'"}')
    headers = (*CLIENT_HEADERS, (b"content-encoding", b"gzip"))
    with pytest.raises(Unsendable, match="larger than"):
        for_provider(request(body=bomb, headers=headers), prov())
