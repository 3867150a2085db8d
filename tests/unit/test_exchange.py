"""The exchange, driven by event scripts and an injected clock: no network, no mitmproxy.

Each test plays one row of the README's fault table (or one lifecycle rule) as the driver would:
events in, actions out. `Script` answers `Pick` from the exchange's own queue, the way the driver
asks the control plane, and records every action.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field

import pytest
from fakeclock import FakeClock

from addon.breaker import Permit
from addon.classify import ErrorKind, Outcome
from addon.exchange import (
    Abort,
    Action,
    BodyData,
    BodyEnd,
    ClientGone,
    Connected,
    Cut,
    Deliver,
    Delivery,
    Done,
    Event,
    Exchange,
    Exhausted,
    Finish,
    Forward,
    Forwarded,
    HoldBack,
    Limits,
    Pick,
    Picked,
    ProtocolError,
    Record,
    Refuse,
    Release,
    ResponseHead,
    Send,
    Start,
    Stream,
    Tick,
    Upgrade,
    UpstreamError,
)
from addon.formats import DIALECTS
from addon.model import App, Provider, RetrySame, Timeouts

CONNECT, FIRST_BYTE, IDLE = 10.0, 60.0, 120.0
SECRET = "sk-backup-secret-123456"
SSE = ((b"content-type", b"text/event-stream"),)
JSON = ((b"content-type", b"application/json"),)
PERMIT = Permit(0, probe=False)


#: The policies of issue 16 are off unless a test turns one on: each test states what it plays.
PLAIN_TIMEOUTS = Timeouts(
    connect=CONNECT, first_byte=FIRST_BYTE, first_byte_unstreamed=FIRST_BYTE, first_token=0, idle=IDLE
)


def app(*ids: str, **policies: object) -> App:
    providers = tuple(
        Provider(i, f"https://{i}.example", api_key=SECRET if i == "backup" else None) for i in ids
    )
    chosen: dict[str, object] = {
        "timeouts": PLAIN_TIMEOUTS,
        "retry_same": RetrySame(attempts=0),
        "continue_streams": False,
        **policies,
    }
    return App("claude", ("api.anthropic.com",), providers, ("/v1/messages*",), **chosen)  # type: ignore[arg-type]


def sse(*events: tuple[str, dict[str, object]]) -> bytes:
    return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events)


ANTHROPIC_STREAM = sse(
    ("message_start", {"type": "message_start", "message": {"id": "m1"}}),
    ("content_block_delta", {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "hi"}}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}),
    ("message_stop", {"type": "message_stop"}),
)
ERROR_EVENT = sse(
    ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
)


@dataclass
class Script:
    """Plays events into an exchange like the driver does, answering `Pick` itself."""

    exchange: Exchange
    clock: FakeClock = field(default_factory=FakeClock)
    actions: list[Action] = field(default_factory=list)

    def feed(self, event: Event) -> list[Action]:
        out: list[Action] = []
        pending = self.exchange.handle(event)
        while pending:
            action = pending.pop(0)
            out.append(action)
            if isinstance(action, Pick):
                queue = self.exchange.queue
                answer: Event = (
                    Picked(action.same, PERMIT, self.clock.now)
                    if action.same is not None
                    else Picked(queue.pop(0), PERMIT, self.clock.now)
                    if queue
                    else Exhausted(7.0, self.clock.now)
                )
                pending = self.exchange.handle(answer) + pending
        self.actions += out
        return out

    def start(self) -> list[Action]:
        return self.feed(Start(self.clock.now))

    def connect(self) -> list[Action]:
        return self.feed(Connected(self.clock.now))

    def head(self, status: int, headers: tuple[tuple[bytes, bytes], ...] = JSON) -> list[Action]:
        return self.feed(ResponseHead(status, headers, self.clock.now, 1_700_000_000.0))

    def data(self, chunk: bytes) -> list[Action]:
        return self.feed(BodyData(chunk, self.clock.now))

    def end(self) -> list[Action]:
        return self.feed(BodyEnd(self.clock.now))

    def error(self, kind: ErrorKind, detail: str = "boom") -> list[Action]:
        return self.feed(UpstreamError(kind, detail, self.clock.now))

    def wait(self, seconds: float) -> list[Action]:
        self.clock.advance(seconds)
        return self.feed(Tick(self.clock.now))

    def answer(
        self, status: int, body: bytes, headers: tuple[tuple[bytes, bytes], ...] = JSON
    ) -> list[Action]:
        """Connect, then a complete answer."""
        return self.connect() + self.head(status, headers) + self.data(body) + self.end()

    def of(self, kind: type) -> list[Action]:
        return [a for a in self.actions if isinstance(a, kind)]

    @property
    def providers_sent(self) -> list[str]:
        return [a.attempt.provider.id for a in self.of(Send)]

    @property
    def records(self) -> list[tuple[str, Outcome]]:
        return [(a.attempt.provider.id, a.verdict.outcome) for a in self.of(Record)]


def script(
    delivery: Delivery = Delivery.WHOLE,
    *ids: str,
    dialect: str = "anthropic",
    policies: dict[str, object] | None = None,
    **kw: object,
) -> Script:
    a = app(*(ids or ("primary", "backup")), **(policies or {}))
    ex = Exchange(a, DIALECTS[dialect], delivery, list(a.providers), (SECRET,), **kw)  # type: ignore[arg-type]
    s = Script(ex)
    s.start()
    return s


def delivered(s: Script) -> Deliver | Refuse:
    (final,) = [a for a in s.actions if isinstance(a, Deliver | Refuse)]
    return final


def header(action: Deliver | Refuse | Stream, name: bytes) -> bytes | None:
    return dict(action.headers).get(name)


# --- the README's fault table: failures that fail over ------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 529, 429, 401, 403, 404, 408, 409])
@pytest.mark.parametrize("delivery", [Delivery.WHOLE, Delivery.STREAM])
def test_a_failure_status_is_held_back_and_the_next_provider_answers(status: int, delivery: Delivery) -> None:
    s = script(delivery)
    assert s.providers_sent == ["primary"]
    s.connect()
    assert isinstance(s.head(status)[0], HoldBack)
    assert not s.of(Stream)  # the client sees nothing of it
    s.data(b'{"error": "no"}')
    s.end()
    assert s.providers_sent == ["primary", "backup"]
    s.answer(
        200,
        ANTHROPIC_STREAM if delivery is Delivery.STREAM else b'{"ok": 1}',
        SSE if delivery is Delivery.STREAM else JSON,
    )
    assert s.records == [("primary", Outcome.PROVIDER_FAILURE), ("backup", Outcome.SUCCESS)]
    result = s.exchange.result
    assert result is not None and result.succeeded and result.served_by is not None
    assert result.served_by.id == "backup"
    assert [(f.provider, f.reason) for f in result.failed] == [("primary", f"http {status}")]
    if delivery is Delivery.STREAM:
        (stream,) = s.of(Stream)
        assert header(stream, b"x-detour-provider") == b"backup"
        assert header(stream, b"x-detour-attempts") == f"primary (http {status})".encode()
        assert b"".join(a.data for a in s.of(Forward)) == ANTHROPIC_STREAM
        assert isinstance(s.actions[-1], Finish)
    else:
        final = delivered(s)
        assert (final.status, final.body) == (200, b'{"ok": 1}')
        assert header(final, b"x-detour-provider") == b"backup"


@pytest.mark.parametrize("delivery", [Delivery.WHOLE, Delivery.STREAM])
def test_a_refused_connection_fails_over_and_counts_as_a_connect_failure(delivery: Delivery) -> None:
    s = script(delivery)
    s.error(ErrorKind.CONNECT, "Connection refused")
    assert s.providers_sent == ["primary", "backup"]
    assert s.records == [("primary", Outcome.CONNECT_FAILURE)]


def test_no_connection_within_connect_fails_over_at_that_time() -> None:
    s = script()
    assert s.exchange.deadline() == s.clock.now + CONNECT
    assert s.wait(CONNECT - 0.001) == []
    actions = s.wait(0.001)
    assert isinstance(actions[0], Abort) and actions[0].attempt.provider.id == "primary"
    assert s.records == [("primary", Outcome.TIMEOUT)]
    assert s.of(Record)[0].verdict.reason == "timeout_connect: no connection for 10s"
    assert s.providers_sent == ["primary", "backup"]


@pytest.mark.parametrize("delivery", [Delivery.WHOLE, Delivery.STREAM])
def test_a_reset_before_the_headers_fails_over(delivery: Delivery) -> None:
    s = script(delivery)
    s.connect()
    s.error(ErrorKind.CONNECT, "Connection reset by peer")  # after the connect: it's a reset
    assert s.records == [("primary", Outcome.CONNECT_FAILURE)]
    assert s.of(Record)[0].verdict.reason.startswith("reset:")
    assert s.providers_sent == ["primary", "backup"]


@pytest.mark.parametrize("delivery", [Delivery.WHOLE, Delivery.STREAM])
def test_no_headers_within_first_byte_of_the_connection_fails_over(delivery: Delivery) -> None:
    s = script(delivery)
    s.clock.advance(2.0)
    s.connect()
    assert s.exchange.deadline() == s.clock.now + FIRST_BYTE
    assert s.wait(FIRST_BYTE - 0.5) == []
    s.wait(0.5)
    assert s.records == [("primary", Outcome.TIMEOUT)]
    assert s.providers_sent == ["primary", "backup"]


def test_a_whole_answer_cut_after_its_headers_fails_over() -> None:
    s = script()
    s.connect()
    s.head(200)
    s.data(b'{"partial": ')
    s.error(ErrorKind.RESET, "peer closed connection without sending complete message body")
    assert s.records == [("primary", Outcome.CONNECT_FAILURE)]
    assert s.providers_sent == ["primary", "backup"]
    s.answer(200, b'{"ok": 1}')
    assert delivered(s).body == b'{"ok": 1}'


def test_a_whole_answer_silent_for_idle_fails_over() -> None:
    s = script()
    s.connect()
    s.head(200)
    s.clock.advance(IDLE - 1)
    s.data(b"{")  # data keeps it alive: idle is silence, not time since the headers
    assert s.wait(IDLE - 1) == []
    s.wait(1)
    assert s.records == [("primary", Outcome.TIMEOUT)]
    assert s.of(Record)[0].verdict.reason == "timeout_idle: silent for 120s"
    assert s.providers_sent == ["primary", "backup"]


# --- client errors pass through --------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 405, 406, 413, 414, 415, 422])
@pytest.mark.parametrize("delivery", [Delivery.WHOLE, Delivery.STREAM])
def test_a_client_error_is_the_answer_and_is_not_charged(status: int, delivery: Delivery) -> None:
    s = script(delivery)
    s.answer(status, b'{"type": "error"}')
    assert s.providers_sent == ["primary"]
    assert s.records == [("primary", Outcome.CLIENT_ERROR)]
    final = delivered(s)
    assert (final.status, final.body) == (status, b'{"type": "error"}')
    assert header(final, b"x-detour-attempts") is None


# --- streams ---------------------------------------------------------------------------------------


def test_a_healthy_stream_is_streamed_as_it_arrives_and_ends_cleanly() -> None:
    s = script(Delivery.STREAM)
    s.connect()
    (stream,) = s.head(200, SSE)
    assert isinstance(stream, Stream) and header(stream, b"x-detour-provider") == b"primary"
    half = len(ANTHROPIC_STREAM) // 2
    first_events = ANTHROPIC_STREAM[: ANTHROPIC_STREAM.rfind(b"\n\n", 0, half) + 2]
    assert s.data(ANTHROPIC_STREAM[:half]) == [Forward(first_events)]  # whole events, at once
    s.data(ANTHROPIC_STREAM[half:])
    s.end()
    assert b"".join(a.data for a in s.of(Forward)) == ANTHROPIC_STREAM
    assert isinstance(s.actions[-1], Finish)
    assert s.records == [("primary", Outcome.SUCCESS)]


def test_a_key_echoed_in_a_streamed_event_is_masked_even_split_across_chunks() -> None:
    s = script(Delivery.STREAM)
    s.connect()
    s.head(200, SSE)
    event = sse(("error", {"type": "error", "error": {"message": f"bad key {SECRET}"}}))
    at = event.index(SECRET.encode()) + 5
    s.data(event[:at])
    s.data(event[at:])
    s.end()
    forwarded = b"".join(a.data for a in s.of(Forward))
    assert SECRET.encode() not in forwarded and b"bad key ***" in forwarded


def test_an_error_event_inside_a_200_stream_is_forwarded_and_counted() -> None:
    s = script(Delivery.STREAM)
    s.connect()
    s.head(200, SSE)
    s.data(ANTHROPIC_STREAM.split(b"\n\n")[0] + b"\n\n")
    s.data(ERROR_EVENT)
    s.end()
    assert b"".join(a.data for a in s.of(Forward)).endswith(ERROR_EVENT)  # the error event as sent
    assert s.records == [("primary", Outcome.PROVIDER_FAILURE)]
    assert s.of(Record)[0].verdict.reason.startswith("stream_error:")
    assert isinstance(s.actions[-1], Finish)
    assert s.providers_sent == ["primary"]  # nothing can be unsent


def test_a_stream_cut_mid_way_is_cut_never_ended() -> None:
    s = script(Delivery.STREAM)
    s.connect()
    s.head(200, SSE)
    s.data(ANTHROPIC_STREAM[:60])
    s.error(ErrorKind.RESET, "Connection reset by peer")
    assert isinstance(s.actions[-1], Cut)
    assert not s.of(Finish)
    assert s.records == [("primary", Outcome.CONNECT_FAILURE)]
    assert s.providers_sent == ["primary"]


def test_a_stream_that_ends_without_its_final_event_is_cut() -> None:
    s = script(Delivery.STREAM)
    s.connect()
    s.head(200, SSE)
    s.data(ANTHROPIC_STREAM.split(b"event: message_stop")[0])
    s.end()  # the body's framing ended cleanly, but the answer did not
    assert isinstance(s.actions[-1], Cut) and not s.of(Finish)
    assert s.of(Record)[0].verdict.reason == "reset: stream ended without its final event"


def test_a_stalled_stream_is_cut_after_idle() -> None:
    s = script(Delivery.STREAM)
    s.connect()
    s.head(200, SSE)
    s.clock.advance(50)
    s.data(ANTHROPIC_STREAM[:30])
    s.clock.advance(60)
    s.feed(Forwarded(s.clock.now))  # waiting on a slow client is not the provider's silence
    assert s.wait(IDLE - 1) == []
    s.wait(1)
    assert isinstance(s.actions[-1], Cut)
    assert s.records == [("primary", Outcome.TIMEOUT)]


# --- when every provider fails ---------------------------------------------------------------------


def test_a_redirect_is_not_followed_and_fails_over() -> None:
    s = script()
    s.answer(302, b"", ((b"location", f"https://elsewhere.example/?k={SECRET}".encode()),))
    assert s.providers_sent == ["primary", "backup"]
    s.answer(200, f'{{"echo": "{SECRET}"}}'.encode())
    final = delivered(s)
    assert final.body == b'{"echo": "***"}'  # a whole answer is masked at any status
    assert header(final, b"x-detour-attempts") == b"primary (http 302 (redirects are not followed))"


def test_every_provider_failing_gives_the_last_providers_error_with_keys_masked() -> None:
    s = script()
    s.answer(500, b'{"error": "primary down"}')
    s.answer(503, f'{{"error": "backup down, key {SECRET}"}}'.encode())
    final = delivered(s)
    assert final.status == 503
    assert final.body == b'{"error": "backup down, key ***"}'
    assert header(final, b"x-detour-attempts") == b"primary (http 500), backup (http 503)"
    assert isinstance(s.actions[-1], Done) and not s.actions[-1].result.succeeded


def test_nothing_could_be_tried_gives_503_with_retry_after_in_the_dialects_shape() -> None:
    s = script()
    s.error(ErrorKind.CONNECT, "Connection refused")
    s.error(ErrorKind.CONNECT, "Name or service not known")
    final = delivered(s)
    assert isinstance(final, Refuse) and final.status == 503
    assert header(final, b"retry-after") == b"7"
    body = json.loads(final.body)
    assert body["type"] == "error" and body["error"]["type"] == "overloaded_error"
    assert "primary (connect: Connection refused)" in body["error"]["message"]


def test_every_provider_timing_out_gives_504() -> None:
    s = script()
    for _ in range(2):
        s.connect()
        s.wait(FIRST_BYTE)
    final = delivered(s)
    assert isinstance(final, Refuse) and final.status == 504


def test_an_empty_queue_refuses_at_once() -> None:
    a = app("primary")
    s = Script(Exchange(a, DIALECTS["openai-chat"], Delivery.WHOLE, []))
    s.start()
    final = delivered(s)
    assert final.status == 503 and "every circuit is open" in json.loads(final.body)["error"]["message"]


# --- bounds, the client, and the dialects ----------------------------------------------------------


def test_an_answer_larger_than_max_body_fails_over_instead_of_growing() -> None:
    s = script(Delivery.WHOLE, limits=Limits(max_body=100))
    s.connect()
    s.head(200)
    s.data(b"x" * 60)
    actions = s.data(b"x" * 60)
    assert isinstance(actions[0], Abort)
    assert s.of(Record)[0].verdict.reason.startswith("too_large")
    assert s.providers_sent == ["primary", "backup"]


def test_a_client_that_leaves_releases_the_permit_and_charges_nobody() -> None:
    s = script(Delivery.STREAM)
    s.connect()
    s.head(200, SSE)
    actions = s.feed(ClientGone(s.clock.now))
    assert [type(a) for a in actions] == [Abort, Release, Done]
    assert not s.of(Record)
    assert s.exchange.result is not None and s.exchange.result.client_gone
    assert s.exchange.handle(Tick(s.clock.now + 1000)) == []  # a finished exchange does nothing


def test_the_responses_api_ends_with_response_completed_and_no_done() -> None:
    stream = b"".join(
        f"event: {name}\ndata: {json.dumps({'type': name})}\n\n".encode()
        for name in ("response.created", "response.output_text.delta", "response.completed")
    )
    s = script(Delivery.STREAM, dialect="openai-responses")
    s.answer(200, stream, SSE)
    assert s.records == [("primary", Outcome.SUCCESS)]
    assert isinstance(s.actions[-1], Finish)


def test_a_websocket_handshake_binds_the_provider_that_answers_101() -> None:
    s = script(Delivery.UPGRADE, dialect="openai-responses")
    s.connect()
    s.head(503)
    s.connect()
    actions = s.head(101, ((b"upgrade", b"websocket"), (b"connection", b"Upgrade")))
    assert s.records == [("primary", Outcome.PROVIDER_FAILURE), ("backup", Outcome.SUCCESS)]
    upgrade = next(a for a in actions if isinstance(a, Upgrade))
    assert (b"upgrade", b"websocket") in upgrade.headers  # kept: the client's handshake needs it
    assert header(upgrade, b"x-detour-provider") == b"backup"


@pytest.mark.parametrize("status", [404, 405, 426])
def test_a_provider_without_websocket_tells_the_client_to_use_http(status: int) -> None:
    """Not its failure, and no lower provider takes the socket instead: the queue's order holds for
    the client's HTTP request. 426, because Codex retries a 404 handshake with backoff for seconds but
    falls back to HTTP streaming at once on 426."""
    s = script(Delivery.UPGRADE, "primary", "nows", "backup", dialect="openai-responses")
    s.connect()
    s.head(503)
    s.connect()
    s.head(status)
    assert s.records == [("primary", Outcome.PROVIDER_FAILURE)]
    assert [a.attempt.provider.id for a in s.of(Release)] == ["nows"]
    assert s.providers_sent == ["primary", "nows"]
    answer = delivered(s)
    assert answer.status == 426 and b"use HTTP" in answer.body
    attempts = b"primary (http 503), nows (no websocket (http %d))" % status
    assert header(answer, b"x-detour-attempts") == attempts


def test_when_every_provider_fails_the_handshake_the_client_gets_the_failure() -> None:
    s = script(Delivery.UPGRADE, dialect="openai-responses")
    for _ in range(2):
        s.connect()
        s.head(503)
    assert delivered(s).status == 503


def test_events_without_an_attempt_are_a_protocol_error() -> None:
    ex = Exchange(app("primary"), DIALECTS["anthropic"], Delivery.WHOLE, [])
    with pytest.raises(ProtocolError):
        ex.handle(BodyData(b"x", 0.0))


def test_a_request_a_provider_cant_take_skips_it_uncharged() -> None:
    from addon.exchange import Unsendable

    s = script()
    s.feed(Unsendable("can't map the model: unsupported content-encoding 'compress'", s.clock.now))
    assert [a.attempt.provider.id for a in s.of(Release)] == ["primary"]
    assert s.providers_sent == ["primary", "backup"] and not s.of(Record)
    s.answer(200, b"{}")
    assert header(delivered(s), b"x-detour-attempts") == (
        b"primary (not sendable: can't map the model: unsupported content-encoding 'compress')"
    )


# --- secrets in what a provider sends (adversarial review) ----------------------------------------------

PLAIN_SECRET = "plainsecretvalue0123456789"  # no "sk-" prefix: only exact-match redaction can catch it


def forwarded(actions: list[Action]) -> list[bytes]:
    return [a.data for a in actions if isinstance(a, Forward)]


def test_an_event_trickled_in_pieces_is_forwarded_whole_and_masked() -> None:
    """A provider writing two bytes at a time must not get its echoed key past the per-event mask."""
    s = script(Delivery.STREAM)
    s.connect()
    s.head(200, SSE)
    out = s.data(ANTHROPIC_STREAM.split(b"\n\n")[0] + b"\n\n")
    error = sse(("error", {"type": "error", "error": {"type": "auth", "message": f"bad key {SECRET}"}}))
    for i in range(0, len(error), 2):
        out += s.data(error[i : i + 2])
    out += s.end()
    pieces = forwarded(out)
    assert all(p.endswith(b"\n\n") for p in pieces), pieces[:5]
    sent = b"".join(pieces)
    assert SECRET.encode() not in sent and b"bad key ***" in sent


def test_a_stream_error_reason_is_masked_before_it_is_shortened() -> None:
    """The reason goes to the log, the state database and mitmweb: a key cut in half by shortening
    would no longer match, so masking comes first."""
    a = app("primary")
    ex = Exchange(a, DIALECTS["anthropic"], Delivery.STREAM, list(a.providers), (PLAIN_SECRET,))
    s = Script(ex)
    s.start()
    s.connect()
    s.head(200, SSE)
    message = "x" * 100 + PLAIN_SECRET + " and more"
    s.data(sse(("error", {"type": "error", "error": {"type": "auth", "message": message}})))
    s.end()
    (record,) = s.of(Record)
    result = ex.result
    assert result is not None and result.verdict is not None
    for reason in (record.verdict.reason, result.verdict.reason):
        assert PLAIN_SECRET[:6] not in reason, reason
        assert "***" in reason


@pytest.mark.parametrize("delivery", [Delivery.WHOLE, Delivery.STREAM])
def test_a_compressed_answer_is_decoded_before_it_is_masked(delivery: Delivery) -> None:
    """Detour asks for `accept-encoding: identity`; a provider that compresses anyway still gets no key
    past the mask (the client would decompress it)."""
    body = json.dumps({"error": {"message": f"invalid key {SECRET}"}}).encode()
    s = script(delivery, "backup")
    s.answer(401, gzip.compress(body), (*JSON, (b"content-encoding", b"gzip")))
    final = delivered(s)
    assert final.status == 401
    assert header(final, b"content-encoding") is None
    assert SECRET.encode() not in final.body and b"invalid key ***" in final.body


def test_a_compressed_event_stream_fails_over() -> None:
    """Its end and error events can't be read, nor its keys masked: not a usable answer."""

    s = script(Delivery.STREAM)
    s.connect()
    actions = s.head(200, (*SSE, (b"content-encoding", b"gzip")))
    assert not any(isinstance(a, Stream) for a in actions)
    assert s.records == [("primary", Outcome.PROVIDER_FAILURE)]
    s.answer(200, ANTHROPIC_STREAM, SSE)
    assert s.providers_sent == ["primary", "backup"]
    assert b"".join(forwarded(s.actions)) == ANTHROPIC_STREAM
