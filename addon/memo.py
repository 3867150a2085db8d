"""Bounded memoization for values the request path would otherwise recompute on every request."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

#: Bound on each cache: when full it is emptied and refilled from the next requests.
CACHE_LIMIT = 1024

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def memoized(cache: dict[K, V], key: K, compute: Callable[[], V]) -> V:
    """`cache[key]`, computed on first use; the cache is emptied when it reaches CACHE_LIMIT."""
    try:
        return cache[key]
    except KeyError:
        if len(cache) >= CACHE_LIMIT:
            cache.clear()
        value = cache[key] = compute()
        return value
