"""Content codings (gzip, deflate, br, zstd): request bodies whose model is mapped, and answers a
provider compressed although Detour asked for `identity`.

gzip and deflate come with Python; br and zstd with mitmproxy (its `brotli` and `zstandard`
dependencies), imported only when a body needs them.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable

#: The most a compressed request body may grow to when decoded (a decompression bomb stops here).
MAX_DECODED = 64 * 1024 * 1024


class CodingError(ValueError):
    """The body can't be decoded (unknown coding, corrupt data, or too large once decoded)."""


def _gunzip(data: bytes) -> bytes:
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    return _bounded(decoder, data)


def _inflate(data: bytes) -> bytes:
    try:  # "deflate" is zlib-wrapped by the standard; some clients send it raw
        return _bounded(zlib.decompressobj(), data)
    except zlib.error:
        return _bounded(zlib.decompressobj(-zlib.MAX_WBITS), data)


def _bounded(decoder: zlib._Decompress, data: bytes) -> bytes:
    out = decoder.decompress(data, MAX_DECODED + 1)
    if len(out) > MAX_DECODED or decoder.unconsumed_tail:
        raise CodingError(f"body larger than {MAX_DECODED} bytes once decoded")
    return out


def _brotli() -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]:
    import brotli

    def decode(data: bytes) -> bytes:
        out: bytes = brotli.decompress(data)
        return out

    return decode, brotli.compress


def _zstd() -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]:
    """mitmproxy 12 brings `compression.zstd` (Python 3.14) or `backports.zstd`; 11 brings `zstandard`."""
    try:
        try:
            from compression import zstd  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            from backports import zstd  # type: ignore[import-not-found, no-redef, unused-ignore]
    except ImportError:
        import zstandard  # type: ignore[import-not-found, unused-ignore]

        def decode_zstandard(data: bytes) -> bytes:
            out: bytes = zstandard.ZstdDecompressor().decompress(data, max_output_size=MAX_DECODED)
            return out

        return decode_zstandard, zstandard.ZstdCompressor().compress

    def decode(data: bytes) -> bytes:
        decoder = zstd.ZstdDecompressor()
        out: bytes = decoder.decompress(data, max_length=MAX_DECODED + 1)
        if len(out) > MAX_DECODED or not decoder.eof:
            raise CodingError(f"body larger than {MAX_DECODED} bytes once decoded")
        return out

    def encode(data: bytes) -> bytes:
        out: bytes = zstd.compress(data)
        return out

    return decode, encode


_CODECS: dict[str, Callable[[], tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]]] = {
    "gzip": lambda: (_gunzip, gzip.compress),
    "x-gzip": lambda: (_gunzip, gzip.compress),
    "deflate": lambda: (_inflate, zlib.compress),
    "br": _brotli,
    "zstd": _zstd,
}


def decode(coding: str, data: bytes) -> bytes:
    codec = _CODECS.get(coding.strip().lower())
    if codec is None:
        raise CodingError(f"unsupported content-encoding {coding[:20]!r}")
    try:
        return codec()[0](data)
    except CodingError:
        raise
    except Exception as e:  # each library has its own error types
        raise CodingError(f"{coding} body can't be decoded ({type(e).__name__})") from None


def encode(coding: str, data: bytes) -> bytes:
    return _CODECS[coding.strip().lower()]()[1](data)
