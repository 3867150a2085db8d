"""The active recovery probe: while a provider's circuit is open, Detour asks it whether it is back.

Without it, a provider that recovered waits out its whole open period (which doubles with every failed
half-open test) before any request goes to it again. With it, Detour sends a cheap `GET` of the
provider's model list every `recovery_probe` seconds while the circuit is open; any HTTP answer
below 500 other than 429 means the server is answering again, and the circuit goes half-open at once
so the next real requests test it (`success_threshold` successes close it, which switches the app
back). The probe never closes a circuit by itself: a model list can answer while the model endpoint
is still overloaded.

Why the model list and not a real request: a real request as the probe would be a user's, paying the
failover delay (up to `first_byte` when the provider hangs). The model list costs nothing, carries no
prompt, and is sent with the provider's own key or with no credentials at all: never a client's key.

The decisions (which circuits are due, what an answer does) are the control plane's, on its clock;
this module only does the I/O, through Detour's own HTTP client, one probe in flight per provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from addon.classify import ErrorKind
from addon.control import Control, ProbeTicket
from addon.credentials import AUTH_STYLES
from addon.driver import Sender
from addon.formats.codec_anthropic import ANTHROPIC_VERSION
from addon.http1 import End, Head
from addon.model import Api, App, Provider
from addon.rewrite import OutboundRequest, parse_target
from addon.router import BreakerKey
from addon.upstream import Item, Pool, UpstreamFailure, exchange

logger = logging.getLogger("detour")

#: The cheap authorised request of each API family: its model list.
MODELS_PATHS: dict[Api, str] = {
    "anthropic": "/v1/models",
    "openai": "/v1/models",
    "gemini": "/v1beta/models",
}
#: The longest a probe waits for the answer's head, whatever the app's `first_byte`.
MAX_ANSWER_WAIT = 5.0
#: Bytes of an answer's body read (and dropped) so its connection can be reused; beyond, it is closed.
MAX_DRAIN = 64 * 1024
#: How often the loop looks for due probes (the intervals themselves are the control plane's).
TICK = 1.0
_USER_AGENT = b"detour-recovery-probe"


def probe_request(app: App, provider: Provider) -> OutboundRequest:
    """`GET {base_url}{models path}` with the provider's own key in its auth style, or without any
    credentials when it has none (its requests carry the client's, which a probe doesn't have)."""
    target = parse_target(provider.base_url)
    fields = [(b"host", target.authority.encode()), (b"accept", b"application/json"),
              (b"user-agent", _USER_AGENT), (b"accept-encoding", b"identity")]  # fmt: skip
    if app.api == "anthropic":
        fields.append((b"anthropic-version", ANTHROPIC_VERSION.encode()))
    if provider.api_key is not None:
        AUTH_STYLES[provider.auth].apply(fields, provider.api_key)
    return OutboundRequest(target, "GET", target.prefix + MODELS_PATHS[app.api], tuple(fields), b"")


def server_is_back(status: int) -> bool:
    """Any answer but a server error or "too many requests": 401 or 404 still prove it is up."""
    return status < 500 and status != 429


def answer_wait(app: App) -> float:
    return min(MAX_ANSWER_WAIT, app.timeouts.first_byte)


async def answer_status(
    pool: Pool, request: OutboundRequest, connect: float, answer: float, send: Sender = exchange
) -> int:
    """The status of the provider's answer to `request`; its body is read up to `MAX_DRAIN` within
    the answer's time and dropped. Raises UpstreamFailure, or TimeoutError when a phase overruns."""
    items = send(pool, request, False)
    try:
        async with asyncio.timeout(connect):
            first = await anext(items)  # None: connected (or sent, on a kept-alive connection)
        deadline = asyncio.get_running_loop().time() + answer
        async with asyncio.timeout_at(deadline):
            head = first if isinstance(first, Head) else await _head(items)
        # The status is all a probe needs: a body that stalls or breaks only costs the connection.
        with contextlib.suppress(TimeoutError, UpstreamFailure):
            async with asyncio.timeout_at(deadline):
                await _drain(items)
        return head.status
    finally:
        aclose = getattr(items, "aclose", None)  # a generator: closing it closes an unfinished connection
        if aclose is not None:
            await aclose()


async def _head(items: AsyncIterator[Item | None]) -> Head:
    for _ in range(4):  # a stale kept-alive connection is replaced once: a second None, no more
        item = await anext(items)
        if isinstance(item, Head):
            return item
    raise UpstreamFailure(ErrorKind.RESET, "no answer")


async def _drain(items: AsyncIterator[Item | None]) -> None:
    """Read the body to its end, so the connection goes back to the pool; give up past MAX_DRAIN."""
    read = 0
    async for item in items:
        if isinstance(item, End):
            return
        if isinstance(item, bytes):
            read += len(item)
            if read > MAX_DRAIN:
                return


async def probe(control: Control, pool: Pool, ticket: ProbeTicket, send: Sender = exchange) -> bool:
    """Send one recovery probe and report its outcome to the control plane; True if it was answered.

    Never raises for the provider's sake (a cancellation still propagates): whatever goes wrong is a
    failed probe. The detail goes through the control plane, which masks every key before logging.
    """
    app = ticket.app
    request = probe_request(app, ticket.provider)
    try:
        status = await answer_status(pool, request, app.timeouts.connect, answer_wait(app), send)
    except TimeoutError:
        detail = "no answer in time"
    except UpstreamFailure as e:
        detail = f"{e.kind.value}: {e.detail}"
    except Exception as e:  # a bug must not end the loop, nor leave the probe in flight
        detail = f"error: {type(e).__name__}"
    else:
        answered = server_is_back(status)
        control.probed(ticket, answered, f"recovery probe answered http {status}")
        return answered
    control.probed(ticket, False, f"recovery probe: {detail}")
    return False


class Prober:
    """The loop that sends the due recovery probes: one asyncio task, started by the mitmproxy addon.

    It asks `control()` anew on every pass, so a reloaded config (new providers, keys, intervals) is
    used from the next pass on, and nothing is probed while no config is loaded.
    """

    def __init__(
        self, control: Callable[[], Control | None], pool: Pool, send: Sender = exchange, tick: float = TICK
    ) -> None:
        self._control = control
        self._pool = pool
        self._send = send
        self.tick = tick
        self._in_flight: dict[BreakerKey, asyncio.Task[bool]] = {}

    def start_due(self) -> list[asyncio.Task[bool]]:
        """Start a probe for every circuit that is due one and has none in flight; returns them."""
        control = self._control()
        if control is None:
            return []
        started = []
        for ticket in control.recovery_probes(busy=self._in_flight.keys()):
            task = asyncio.ensure_future(probe(control, self._pool, ticket, self._send))
            self._in_flight[ticket.key] = task
            task.add_done_callback(self._forget(ticket.key))
            started.append(task)
        return started

    def _forget(self, key: BreakerKey) -> Callable[[asyncio.Task[bool]], None]:
        """The callback that frees `key` for its next probe once this one has ended."""

        def forget(_task: asyncio.Task[bool]) -> None:
            self._in_flight.pop(key, None)

        return forget

    async def sweep(self) -> None:
        """One pass: start the due probes and wait until they have ended (each is bounded)."""
        await asyncio.gather(*self.start_due())

    async def run(self) -> None:
        """Pass after pass until cancelled; the sleep is bounded, the decisions use Control's clock."""
        while True:
            try:
                self.start_due()
            except Exception as e:  # a bug in one pass must not stop recovery for good
                logger.error("detour: recovery probe pass failed: %s", type(e).__name__)
            await asyncio.sleep(min(max(self.tick, 0.01), TICK))

    async def close(self) -> None:
        """Cancel the probes in flight and wait for them to end."""
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._in_flight.clear()
