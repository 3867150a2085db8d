"""How the client's request becomes the request one provider gets: URL, headers, credentials, model.

Pure functions over plain values. Every attempt is built from the client's original request, never
from a previous attempt, which is what keeps provider A's key (or mapped model) from travelling on to
provider B. The body is forwarded byte for byte; only the value of a mapped `model` is replaced.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

from addon import codecs
from addon.credentials import AUTH_STYLES, CLIENT_CREDENTIAL_PARAMS, CLIENT_CREDENTIALS, Fields
from addon.formats.documents import string_members
from addon.model import Provider

#: Headers that describe one connection, not the request: never forwarded to a provider.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
        b"expect",
        b"accept-encoding",
    }
)

_GEMINI_MODEL = re.compile(r"^(?P<prefix>.*/models/)(?P<model>[^/:]+)(?P<rest>:.*)?$")


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """What the client sent, as plain values (header names lower-cased)."""

    method: str
    #: Path and query as the client sent them.
    path: str
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class Target:
    """A provider's `base_url`, parsed once."""

    scheme: str
    host: str
    port: int
    #: The base URL's own path ("" or e.g. "/api/anthropic"), which the client's path is appended to.
    prefix: str

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class OutboundRequest:
    """The request exactly as one provider gets it."""

    target: Target
    method: str
    path: str
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    @property
    def url(self) -> str:
        return f"{self.target.scheme}://{self.target.authority}{self.path}"


_targets: dict[str, Target] = {}


def parse_target(base_url: str) -> Target:
    """The parsed `base_url` (validated by the config loader: an ASCII http(s) URL, no query)."""
    found = _targets.get(base_url)
    if found is None:
        parts = urlsplit(base_url)
        scheme = parts.scheme
        port = parts.port or (443 if scheme == "https" else 80)
        found = Target(scheme, parts.hostname or "", port, parts.path.rstrip("/"))
        if len(_targets) > 256:
            _targets.clear()
        _targets[base_url] = found
    return found


def for_provider(request: ClientRequest, provider: Provider, upgrade: bool = False) -> OutboundRequest:
    """`request` as `provider` must get it: its URL, its credentials (or the client's), its model.
    For a WebSocket handshake (`upgrade`) the handshake's own fields travel too."""
    target = parse_target(provider.base_url)
    owns = provider.owns_credentials
    connection_tokens = _connection_tokens(request.headers)
    fields: Fields = [(b"host", target.authority.encode())]
    if upgrade:
        fields += [(b"connection", b"Upgrade"), (b"upgrade", b"websocket")]
    for name, value in request.headers:
        if name in HOP_BY_HOP or name in connection_tokens or name[:1] == b":":
            continue
        if owns and name in CLIENT_CREDENTIALS:
            continue
        fields.append((name, value))
    if owns:
        assert provider.api_key is not None
        AUTH_STYLES[provider.auth].apply(fields, provider.api_key)
    # Detour reads every answer (stream ends, errors): it must not arrive compressed.
    fields.append((b"accept-encoding", b"identity"))
    body = request.body
    if provider.models and body:
        body = _mapped(request, provider)
    if body or request.method in ("POST", "PUT", "PATCH"):
        fields.append((b"content-length", str(len(body)).encode()))
    path = target_path(provider, request.path)
    return OutboundRequest(target, request.method, target.prefix + path, tuple(fields), body)


class Unsendable(ValueError):
    """The request can't be adapted to this provider (it is skipped, not charged)."""


def _mapped(request: ClientRequest, provider: Provider) -> bytes:
    """The body with its model mapped for `provider`; a compressed body is decoded and encoded again."""
    coding = (request.header(b"content-encoding") or b"").decode("latin-1").strip()
    if coding.lower() in ("", "identity"):
        return map_body_model(request.body, provider) or request.body
    if "," in coding:
        raise Unsendable(f"can't map the model in a body with several content codings ({coding[:40]})")
    try:
        plain = codecs.decode(coding, request.body)
    except codecs.CodingError as e:
        raise Unsendable(f"can't map the model: {e}") from None
    mapped = map_body_model(plain, provider)
    return request.body if mapped is None else codecs.encode(coding, mapped)


def _connection_tokens(headers: tuple[tuple[bytes, bytes], ...]) -> frozenset[bytes]:
    """Headers the client named in `Connection:` are hop-by-hop too (RFC 9110 7.6.1)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return frozenset(tokens)


def target_path(provider: Provider, path: str) -> str:
    """The client's path and query as `provider` gets them, after its `base_url`."""
    if provider.owns_credentials:
        path = strip_credential_params(path)
    if provider.models:
        path = map_path_model(provider, path)
    return path


def strip_credential_params(path: str) -> str:
    """Drop `?key=` (any spelling) so a client's own key never reaches a provider with a key of its own."""
    if "?" not in path:
        return path
    bare, query = path.split("?", 1)
    pairs = parse_qsl(query, keep_blank_values=True)
    kept = [(k, v) for k, v in pairs if k.lower() not in CLIENT_CREDENTIAL_PARAMS]
    if len(kept) == len(pairs):
        return path
    return f"{bare}?{urlencode(kept)}" if kept else bare


def map_path_model(provider: Provider, path: str) -> str:
    """Gemini names the model in the path (`/v1beta/models/NAME:generateContent`)."""
    bare, sep, query = path.partition("?")
    match = _GEMINI_MODEL.match(bare)
    if not match:
        return path
    mapped = provider.map_model(match["model"])
    if mapped is None:
        return path
    return f"{match['prefix']}{mapped}{match['rest'] or ''}{sep}{query}"


def map_body_model(body: bytes, provider: Provider) -> bytes | None:
    """The body with each top-level `"model"` string that a glob maps replaced in place, or None when
    nothing changes. Every other byte stays as the client sent it: numbers such as `1e400`, key
    order, duplicate keys and whitespace survive, and with them the provider's prompt cache."""
    spans = model_spans(body)
    if not spans:
        return None
    text = body.decode("utf-8")
    out: list[str] = []
    last = 0
    for start, end, model in spans:
        mapped = provider.map_model(model)
        if mapped is None or mapped == model:
            continue
        out += [text[last:start], json.dumps(mapped, ensure_ascii=False)]
        last = end
    if not out:
        return None
    out.append(text[last:])
    return "".join(out).encode("utf-8", "surrogatepass")


def model_spans(body: bytes) -> list[tuple[int, int, str]]:
    """(start, end, value) of every top-level `"model": "<string>"` in a JSON object body, as
    character offsets into its UTF-8 text; [] for anything that isn't such an object."""
    return string_members(body, "model")
