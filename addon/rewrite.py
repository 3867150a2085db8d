"""How one request is adapted to one provider: URL, credentials and model name.

Pure functions over plain values, so the rules that keep keys where they belong are tested without
mitmproxy. Every attempt is built from the client's original request, never from a previous
attempt, which is what guarantees that provider A's key can't travel on to provider B.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode

from addon.model import Provider

#: Headers that carry an API credential, in any of the styles Detour supports.
CREDENTIAL_HEADERS = ("x-api-key", "authorization", "x-goog-api-key")
#: Query parameters that carry a credential (Gemini's `?key=`).
CREDENTIAL_PARAMS = ("key",)

_GEMINI_MODEL = re.compile(r"^(?P<prefix>.*/models/)(?P<model>[^/:]+)(?P<rest>:.*)?$")


def target_path(provider: Provider, path: str) -> str:
    """The client's path and query as `provider` gets them, after its `base_url`."""
    if provider.owns_credentials:
        path = strip_credential_params(path)
    if provider.models:
        path = map_path_model(provider, path)
    return path


def strip_credential_params(path: str) -> str:
    """Drop `?key=` so a client's own Gemini key never reaches a provider with a key of its own."""
    if "?" not in path:
        return path
    bare, query = path.split("?", 1)
    pairs = parse_qsl(query, keep_blank_values=True)
    kept = [(k, v) for k, v in pairs if k not in CREDENTIAL_PARAMS]
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


def credential_headers(provider: Provider) -> dict[str, str]:
    """The headers that present `provider`'s own key in its auth style."""
    key = provider.api_key
    if key is None:
        return {}
    if provider.auth == "bearer":
        return {"authorization": f"Bearer {key}"}
    return {provider.auth: key}


def header_plan(provider: Provider) -> tuple[tuple[str, ...], dict[str, str]]:
    """(headers to remove, headers to set) for sending a client's request to `provider`.

    A provider with a key gets only that key: every client credential is removed. A provider
    without one gets the client's credentials unchanged.
    """
    if not provider.owns_credentials:
        return (), {}
    return CREDENTIAL_HEADERS, credential_headers(provider)


def mapped_body(provider: Provider, body: bytes, headers: Mapping[str, str]) -> bytes | None:
    """The body with the model renamed for `provider`, or None when it must stay byte-for-byte.

    Only a JSON object with a string `model` that one of the provider's globs matches is rewritten,
    and only then is it re-serialised; prompt caches depend on the bytes staying the same otherwise.
    """
    if not provider.models or not body or headers.get("content-encoding"):
        return None
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(document, dict) or not isinstance(document.get("model"), str):
        return None
    target = provider.map_model(document["model"])
    if target is None or target == document["model"]:
        return None
    document["model"] = target
    try:
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # a lone surrogate (e.g. a cut emoji) only survives as an escape
        return json.dumps(document, separators=(",", ":")).encode()
