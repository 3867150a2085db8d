"""The driver's own guarantee: every breaker permit it takes is given back, even when the exchange
fails with a bug (otherwise a half-open provider's probe slot stays taken and it never gets traffic)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from addon.breaker import Permit
from addon.driver import Driver
from addon.exchange import Delivery, Event, Exchange, Picked
from addon.formats import DIALECTS
from addon.model import App, Provider
from addon.rewrite import ClientRequest

PROBE = Permit(3, probe=True)


class FakeControl:
    def __init__(self, providers: list[Provider]) -> None:
        self.providers = providers
        self.released: list[tuple[str, Permit]] = []

    def acquire_next(self, app: str, queue: list[Provider]) -> tuple[Provider, Permit] | None:
        return (queue.pop(0), PROBE) if queue else None

    def release(self, app: str, provider: str, permit: Permit) -> None:
        self.released.append((provider, permit))

    def retry_after(self, app: str) -> float:
        return 1.0


class BuggyExchange(Exchange):
    def handle(self, event: Event) -> list[Any]:
        if isinstance(event, Picked):
            raise UnicodeEncodeError("utf-8", "\ud83d", 0, 1, "surrogates not allowed")
        return super().handle(event)


class NoSink:
    on_gone = None


def test_a_permit_taken_before_the_exchange_failed_is_released() -> None:
    provider = Provider("primary", "http://127.0.0.1:9")
    app = App("claude", ("api.anthropic.com",), (provider,), ("/v1/messages*",))
    control = FakeControl([provider])
    exchange = BuggyExchange(app, DIALECTS["anthropic"], Delivery.STREAM, [provider])
    driver = Driver(control, pool=None)  # type: ignore[arg-type]
    request = ClientRequest("POST", "/v1/messages", (), b"{}")
    with pytest.raises(UnicodeEncodeError):
        asyncio.run(driver.run(exchange, request, NoSink()))  # type: ignore[arg-type]
    assert control.released == [("primary", PROBE)]
