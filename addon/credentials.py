"""Credentials: how each auth style presents a provider's key, and what counts as the client's.

One registry entry per auth style says how to put a key on a request and how to mask it; adding a
style is one entry. When a provider brings its own key, every client credential in `CLIENT_CREDENTIALS`
is removed first, so nothing of the client's identity travels to a third party.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Fields = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class AuthStyle:
    """How a key goes on a request: the header it travels in and how its value is written."""

    name: str
    header: bytes
    render: Callable[[str], str]

    def apply(self, fields: Fields, key: str) -> None:
        fields.append((self.header, self.render(key).encode("latin-1")))

    def masked(self) -> bytes:
        return self.render("***").encode()


AUTH_STYLES: dict[str, AuthStyle] = {
    style.name: style
    for style in (
        AuthStyle("x-api-key", b"x-api-key", lambda key: key),
        AuthStyle("bearer", b"authorization", lambda key: f"Bearer {key}"),
        AuthStyle("x-goog-api-key", b"x-goog-api-key", lambda key: key),
        AuthStyle("api-key", b"api-key", lambda key: key),  # Azure OpenAI
    )
}

#: Request headers that carry the client's credentials or account identity. A provider with its own
#: key never sees any of them (README, "Security").
CLIENT_CREDENTIALS: frozenset[bytes] = frozenset(
    {
        b"authorization",
        b"x-api-key",
        b"x-goog-api-key",
        b"api-key",
        b"proxy-authorization",
        b"cookie",
        b"openai-organization",
        b"openai-project",
        b"chatgpt-account-id",
        b"x-goog-user-project",
        b"anthropic-admin-api-key",
    }
)
#: Query parameters that carry a credential (Gemini's `?key=`, Google's OAuth `?access_token=`),
#: lower case: they are matched whatever their case.
CLIENT_CREDENTIAL_PARAMS: frozenset[str] = frozenset({"key", "api_key", "access_token"})
