"""Secret redaction: the one place that masks keys in text, headers and bodies.

Keys reach Detour only from the environment; everything that leaves Detour for people (logs, the
state database, error bodies, flows shown in mitmweb) goes through here first.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection

MASK = "***"
_MASK_BYTES = MASK.encode()
#: Secrets shorter than this are not masked: they would mangle ordinary words.
MIN_SECRET_LEN = 4

_KEY_PATTERNS = (
    re.compile(r"sk-[A-Za-z0-9_-]{8,}"),
    re.compile(r"AIza[0-9A-Za-z_-]{20,}"),
)
_BEARER = re.compile(r"\b(Bearer)\s+[^\s\"',;]+", re.IGNORECASE)


def _longest_first(secrets: Collection[str]) -> tuple[tuple[str, bytes], ...]:
    """Longest first, so a secret that contains another one is masked whole; each with its bytes."""
    return _ordered(secrets if isinstance(secrets, tuple) else tuple(secrets))


@functools.lru_cache(maxsize=16)
def _ordered(secrets: tuple[str, ...]) -> tuple[tuple[str, bytes], ...]:
    """Per set of secrets, once: redaction runs on every header and streamed event of an answer."""
    kept = sorted({s for s in secrets if len(s) >= MIN_SECRET_LEN}, key=len, reverse=True)
    return tuple((s, s.encode()) for s in kept)


def redact(text: str, secrets: Collection[str]) -> str:
    """`text` with every known secret and anything that looks like an API key replaced by ``***``."""
    for secret, _ in _longest_first(secrets):
        text = text.replace(secret, MASK)
    for pattern in _KEY_PATTERNS:
        text = pattern.sub(MASK, text)
    return _BEARER.sub(rf"\1 {MASK}", text)


def redact_bytes(data: bytes, secrets: Collection[str]) -> bytes:
    """`data` with every known secret masked (exact matches only: bodies are not rewritten on a hunch)."""
    for _, encoded in _longest_first(secrets):
        if encoded in data:
            data = data.replace(encoded, _MASK_BYTES)
    return data
