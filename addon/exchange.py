"""One client request, from admission to the answer the client gets, as a sans-I/O state machine.

Everything that decides what happens to a routed request lives in this file (h11's rule): which
provider is tried next, when an attempt has run out of time, what its answer means, whether that
answer is held back, streamed, delivered or replaced by the next provider's, and when the client's
stream must be cut rather than ended. It does no I/O and reads no clock: a driver feeds it events
(`handle`) stamped with the time, executes the actions it returns, and wakes it with `Tick` at
`deadline()` (tenacity's split between the decision and the doing).

    Start ──► Pick ─► Picked ──► Send ─► Connected ─► ResponseHead ─► BodyData* ─► BodyEnd
                 └─► Exhausted ─► Deliver/Refuse      │ failure status: HoldBack, then Pick again
                                                      │ success, streamed: Stream, Forward*, Finish
                                                      └ success, whole: Deliver

An `UpstreamError` or a `Tick` past the attempt's deadline ends the attempt: the next provider is
picked while the client has seen nothing. Three policies refine that:

- **first token**: a streamed answer's head is held (with its pings and empty events) until the first
  generated content arrives, so a provider that accepts a request but doesn't generate is left
  within `first_token` like a silent one; the held bytes go out the moment content arrives.
- **continuation**: once the client has part of a text answer, a break (reset, silence, an end
  without the final event) no longer has to cut it: the next provider is asked to continue the
  text (the dialect writes the prefill and splices its events in). Where that can't be done (a tool
  call or thinking was under way, the provider rejects the prefill, nobody is left) the client's
  stream is cut, never ended cleanly.
- **same-provider retry**: a 429 with a short Retry-After or a 5xx is retried once on the same
  provider after that wait, before failing over.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from addon import codecs
from addon.breaker import Permit
from addon.classify import ErrorKind, Outcome, Verdict, classify_error, classify_status
from addon.formats import DIALECTS, Dialect, StreamWatch
from addon.formats.codec_anthropic import without_unsigned_thinking
from addon.formats.continuation import Restarted, Splicer, Transcript
from addon.formats.translation import NotTranslatable, Translation, translation_for
from addon.formats.usage import Metering, Tokens
from addon.model import App, Provider, Timeouts
from addon.secrets import redact, redact_bytes

Headers = tuple[tuple[bytes, bytes], ...]

PROVIDER_HEADER = b"x-detour-provider"
ATTEMPTS_HEADER = b"x-detour-attempts"
#: Statuses a provider answers a WebSocket upgrade with when it doesn't speak WebSocket at all.
NO_WEBSOCKET = frozenset({404, 405, 426})
#: The longest failure reason kept (log lines, the state database, mitmweb).
MAX_REASON = 200
_JSON_TYPE = (b"content-type", b"application/json")
#: A streamed event still unfinished at this size is passed on in pieces rather than held further.
MAX_PENDING_EVENT = 1024 * 1024
#: Request bytes that add a second to `first_token`: a provider reads a long prompt before its first
#: token (about 12k tokens a second, uncached), and a healthy but slow start must not be left.
FIRST_TOKEN_BYTES_PER_SECOND = 50_000
#: Content types whose bodies are event streams, watched for their dialect's end and error events.
STREAM_TYPES = (b"text/event-stream", b"application/x-ndjson", b"application/jsonl")
#: Response headers that describe the provider's connection, not the answer.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"transfer-encoding",
        b"content-length",
        b"trailer",
        b"upgrade",
    }
)


class Delivery(enum.Enum):
    """How the client gets its answer."""

    WHOLE = "whole"  # complete, once the provider's answer has ended (non-streamed requests)
    STREAM = "stream"  # chunk by chunk as it arrives (streamed requests)
    UPGRADE = "upgrade"  # a WebSocket handshake: only the provider that answers 101 is chosen


class Phase(enum.Enum):
    """Where one attempt is; each phase has exactly one deadline (see `Attempt.deadline`)."""

    CONNECTING = "connecting"
    WAITING = "waiting"  # request sent, no response head yet
    RECEIVING = "receiving"
    ENDED = "ended"


# --- events (in) ----------------------------------------------------------------------------------


class Start(NamedTuple):
    now: float


class Picked(NamedTuple):
    provider: Provider
    permit: Permit
    now: float


class Exhausted(NamedTuple):
    """No provider is left to try; `retry_after` is when the first open circuit admits a probe."""

    retry_after: float
    now: float


class Connected(NamedTuple):
    now: float


class ResponseHead(NamedTuple):
    """A final (non-1xx) response head; `wall` is the wall-clock time, for HTTP-date Retry-After."""

    status: int
    headers: Headers
    now: float
    wall: float


class BodyData(NamedTuple):
    data: bytes
    now: float


class BodyEnd(NamedTuple):
    now: float


class UpstreamError(NamedTuple):
    """The attempt's connection failed: refused, TLS, reset or closed early."""

    kind: ErrorKind
    detail: str
    now: float


class Tick(NamedTuple):
    now: float


class Unsendable(NamedTuple):
    """The request can't be adapted to the attempt's provider: skip it, charge nobody."""

    reason: str
    now: float


class Forwarded(NamedTuple):
    """A chunk reached the client: time spent waiting for a slow client is not provider silence."""

    now: float


class ClientGone(NamedTuple):
    now: float


Event = (
    Start
    | Picked
    | Exhausted
    | Connected
    | ResponseHead
    | BodyData
    | BodyEnd
    | UpstreamError
    | Tick
    | Forwarded
    | ClientGone
    | Unsendable
)


# --- actions (out) --------------------------------------------------------------------------------


class Pick(NamedTuple):
    """Retry on the next provider: acquire it from the queue and answer `Picked` or `Exhausted`.
    With `same`, that provider is tried again first (a same-provider retry), if its breaker admits."""

    same: Provider | None = None


class Send(NamedTuple):
    """Connect to the attempt's provider and send it the client's request, rewritten for it."""

    attempt: Attempt


class Upgrade(NamedTuple):
    """The provider accepted the WebSocket handshake: answer the client with this head, then join
    the two connections (the attempt's connection now belongs to the client)."""

    status: int
    headers: Headers


class HoldBack(NamedTuple):
    """The attempt's answer is a failure: keep reading it, but the client must not see it."""

    attempt: Attempt


class Stream(NamedTuple):
    """Start the client's answer with this head; `Forward`s and a `Finish` or `Cut` follow."""

    status: int
    headers: Headers


class Forward(NamedTuple):
    data: bytes


class Finish(NamedTuple):
    """End the client's streamed answer cleanly."""


class Cut(NamedTuple):
    """End the client's streamed answer so that it cannot look complete."""

    reason: str


class Deliver(NamedTuple):
    """Give the client this complete answer."""

    status: int
    headers: Headers
    body: bytes


class Refuse(NamedTuple):
    """Answer for the providers: Detour's own error, in the dialect's shape."""

    status: int
    headers: Headers
    body: bytes


class Abort(NamedTuple):
    """Close the attempt's upstream connection without reading more."""

    attempt: Attempt


class Record(NamedTuple):
    """Report the attempt's verdict to its provider's breaker and the attempt log."""

    attempt: Attempt
    verdict: Verdict


class Release(NamedTuple):
    """The attempt ended without a verdict on its provider: give its breaker permit back."""

    attempt: Attempt


class Done(NamedTuple):
    result: Result


Action = (
    Pick
    | Send
    | Upgrade
    | HoldBack
    | Stream
    | Forward
    | Finish
    | Cut
    | Deliver
    | Refuse
    | Abort
    | Record
    | Release
    | Done
)


# --- values ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """Bounds on one exchange that the config doesn't set per app."""

    #: The most bytes of one answer Detour holds in memory (held-back and whole answers).
    max_body: int = 32 * 1024 * 1024


@dataclass(frozen=True)
class FailedAttempt:
    provider: str
    reason: str


@dataclass(frozen=True)
class Result:
    """How the exchange ended, for the switch manager, the flow's annotations and the log."""

    served_by: Provider | None
    #: The verdict on the answer the client got (None: nothing was tried, or the client left).
    verdict: Verdict | None
    failed: tuple[FailedAttempt, ...]
    attempts: int
    streamed: bool
    client_gone: bool = False
    #: The answer was begun by a provider that broke and continued by `served_by`.
    continued: bool = False
    #: What the attempt log records of `served_by`'s attempt: its models, timings and tokens.
    metering: Metering | None = None
    #: Providers ahead of the queue left out because their circuits were open (id, breaker state).
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def succeeded(self) -> bool:
        return (
            self.served_by is not None
            and self.verdict is not None
            and self.verdict.outcome is Outcome.SUCCESS
        )


@dataclass(slots=True, eq=False)
class Attempt:
    """One try of one provider; native and failover attempts are the same thing."""

    number: int
    provider: Provider
    permit: Permit
    started: float
    #: The request streams (its head comes as soon as the provider accepts it): the short first byte.
    streamed: bool = False
    phase: Phase = Phase.CONNECTING
    connected_at: float = 0.0
    last_activity: float = 0.0
    status: int | None = None
    headers: Headers = ()
    #: The verdict from the status alone; the final verdict also weighs how the body ended.
    status_verdict: Verdict | None = None
    watch: StreamWatch | None = None
    body: bytearray = field(default_factory=bytearray)
    #: The start of an event not yet complete: streams are forwarded an event at a time.
    pending: bytes = b""
    #: The answer is going to the client as it arrives.
    streaming: bool = False
    #: The answer is kept whole in `body` (held back, or delivered once complete).
    holding: bool = False
    #: A streamed answer's head and first events are held until content arrives (or `token_due`).
    awaiting_token: bool = False
    token_due: float = 0.0
    held: bytearray = field(default_factory=bytearray)
    #: A continuation: the request asks for the rest of a broken answer, whose events are spliced.
    body_override: bytes | None = None
    splicer: Splicer | None = None
    #: The provider speaks another dialect: its request, answer and events are translated.
    translation: Translation | None = None
    #: When the answer's head and its first generated content arrived (0: not yet).
    head_at: float = 0.0
    first_token_at: float = 0.0
    #: The tokens the answer reported, once read (`Exchange.tokens`), and all that is logged of it.
    tokens: Tokens | None = None
    tokens_read: bool = False
    metered: Metering | None = None

    @property
    def client_has_head(self) -> bool:
        """Part of this answer reached the client: it can no longer be replaced, only continued."""
        return self.streaming and not self.awaiting_token

    def deadline(self, timeouts: Timeouts) -> tuple[float, ErrorKind, float] | None:
        """The one deadline rule: each phase has one limit, counted from when that phase began
        (the connect from the start, the first byte from the connect, idle from the last data, the
        first token from the head); returned with the kind of timeout and the limit itself."""
        if self.phase is Phase.CONNECTING:
            return self.started + timeouts.connect, ErrorKind.TIMEOUT_CONNECT, timeouts.connect
        if self.phase is Phase.WAITING:
            limit = timeouts.first_byte if self.streamed else timeouts.first_byte_unstreamed
            return self.connected_at + limit, ErrorKind.TIMEOUT_FIRST_BYTE, limit
        if self.phase is Phase.RECEIVING:
            idle = self.last_activity + timeouts.idle
            if self.token_due and self.token_due < idle:
                return self.token_due, ErrorKind.TIMEOUT_FIRST_TOKEN, timeouts.first_token
            return idle, ErrorKind.TIMEOUT_IDLE, timeouts.idle
        return None

    def verdict(self) -> Verdict:
        """The one verdict rule, for an answer whose body has ended cleanly: its status, then (for a
        successful event stream) whether its dialect's error or end-of-stream event was seen."""
        assert self.status_verdict is not None
        verdict = self.status_verdict
        watch = self.watch
        if watch is None or verdict.outcome is not Outcome.SUCCESS:
            return verdict
        if watch.error is not None:
            return classify_error(ErrorKind.STREAM_ERROR, watch.error)
        if not watch.complete:
            return classify_error(ErrorKind.RESET, "stream ended without its final event")
        return verdict


@dataclass(frozen=True)
class Answer:
    """A provider's whole answer (a failure kept as what the client gets if nobody does better)."""

    status: int
    headers: Headers
    body: bytes


class Exchange:
    """One routed client request. See the module docstring for the flow of events and actions."""

    def __init__(
        self,
        app: App,
        dialect: Dialect,
        delivery: Delivery,
        queue: list[Provider],
        secrets: tuple[str, ...] = (),
        limits: Limits = Limits(),
        body: bytes = b"",
        path: str = "",
        skipped: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.app = app
        self.dialect = dialect
        self.delivery = delivery
        #: The providers still to try, best first: a snapshot taken at admission, so a reload while
        #: the request is in flight changes nothing for it.
        self.queue = queue
        #: Providers ahead of the queue left out of it because their circuits didn't admit a request.
        self.skipped = skipped
        self.secrets = secrets
        self.limits = limits
        #: The client's request body (uncompressed) and path: a continuation is written from them,
        #: and a translated provider's local answers read them.
        self.body = body
        self.path = path
        self.attempt: Attempt | None = None
        self.attempts = 0
        self.failed: list[FailedAttempt] = []
        self.result: Result | None = None
        self._last_failure: Answer | None = None
        #: An attempt got past its connect: "nothing could be tried" no longer describes the outcome.
        self._reached = False
        #: The status of the last failed WebSocket handshake, for the client when every provider failed.
        self._failed_handshake: int | None = None
        #: What the client got of a streamed answer, kept while it may have to be continued (only
        #: for a dialect that can continue one: a copy of every stream otherwise would be for nothing).
        continues = app.continue_streams and dialect.continues and delivery is Delivery.STREAM and body
        self._sent: bytearray | None = bytearray() if continues else None
        #: A broken answer being continued, and why it broke (the client's cut if nobody continues).
        self._continuing: Transcript | None = None
        self._broke: Verdict | None = None
        #: An attempt past its first-token limit, kept until the next provider is actually acquired.
        self._replacing: tuple[Attempt, Verdict] | None = None
        #: Same-provider retries: how many each provider had, and the one waiting for its time.
        self._retries: dict[str, int] = {}
        self._retry: tuple[Provider, float] | None = None
        #: The model the client asked for, read from its request when the first attempt is recorded.
        self._requested: str | None = None

    # --- the driver's interface ---------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.result is not None

    def deadline(self) -> float | None:
        """When the driver must send a `Tick`, if nothing else happens first."""
        if self.result is not None:
            return None
        if self.attempt is None:
            return self._retry[1] if self._retry is not None else None
        due = self.attempt.deadline(self.app.timeouts)
        return due[0] if due is not None else None

    def handle(self, event: Event) -> list[Action]:
        """The actions that follow from `event`, in the order the driver must execute them."""
        if self.result is not None:
            return []
        return _HANDLERS[type(event)](self, event)

    # --- handlers -----------------------------------------------------------------------------

    def _on_start(self, event: Start) -> list[Action]:
        return [Pick()]

    def _on_picked(self, event: Picked) -> list[Action]:
        actions: list[Action] = []
        if self._replacing is not None:  # the slow attempt gives way now that there is a successor
            (slow, verdict), self._replacing = self._replacing, None
            slow.phase = Phase.ENDED
            actions = [Abort(slow), *self._failed(slow, verdict)]
        self.attempts += 1
        streamed = self.delivery is not Delivery.WHOLE
        attempt = Attempt(self.attempts, event.provider, event.permit, event.now, streamed)
        try:
            attempt.translation = translation_for(self.dialect, event.provider.api, DIALECTS)
        except NotTranslatable as e:
            self.failed.append(FailedAttempt(event.provider.id, f"not sendable: {e}"))
            return [*actions, Release(attempt), Pick()]
        if attempt.translation is not None and self.delivery is Delivery.UPGRADE:
            # A translated provider is spoken to over HTTP only: the client is told to use it (Codex
            # falls back at once on 426), and its HTTP request comes back to this same queue.
            self.failed.append(FailedAttempt(event.provider.id, "no websocket (translated)"))
            message = f"{event.provider.id} is reached over HTTP only: use HTTP"
            return [*actions, Release(attempt), self._refuse(426, message, None), self._done(None)]
        local = attempt.translation.local_answer(self.path, self.body) if attempt.translation else None
        if local is not None:  # nothing to ask the provider: no attempt, no charge
            headers = self._client_headers((_JSON_TYPE,), event.provider)
            estimated = Verdict(Outcome.SUCCESS, "answered by Detour: an estimate", 200)
            done = self._done(event.provider, estimated)
            return [*actions, Release(attempt), Deliver(200, headers, local), done]
        if self._continuing is not None:
            attempt.body_override = self.dialect.continued_body(
                self.body, self._continuing, event.provider.base_url
            )
            if attempt.body_override is None:
                self.failed.append(FailedAttempt(event.provider.id, "the request can't be continued"))
                return [*actions, Release(attempt), Pick()]
        if attempt.translation is None and self.dialect.name == "anthropic":
            # Thinking a translated provider produced has no signature, which Anthropic rejects in a
            # conversation's history: the blocks go, the rest of the request stays as sent.
            stripped = without_unsigned_thinking(attempt.body_override or self.body)
            attempt.body_override = stripped if stripped is not None else attempt.body_override
        self.attempt = attempt
        return [*actions, Send(attempt)]

    def _on_exhausted(self, event: Exhausted) -> list[Action]:
        if self._replacing is not None:
            # Nobody to give the slow attempt's request to: keep it, without a first-token limit, and
            # let its head and pings through (a client and any proxy between want to see life).
            (slow, _), self._replacing = self._replacing, None
            self.attempt = slow
            return self._release_head(slow)
        self.attempt = None
        if self._continuing is not None:
            return self._cut(self._broke, "nobody left to continue it")
        if self._failed_handshake is not None:  # its body was never read: Detour says why
            reasons = ", ".join(f"{a.provider} ({a.reason})" for a in self.failed)
            message = f"every provider failed the WebSocket handshake: {reasons}"
            return [self._refuse(self._failed_handshake, message, event.retry_after), self._done(None)]
        last = self._last_failure
        if last is not None:
            last = self.readable(last)
            body = redact_bytes(last.body, self.secrets)
            return [Deliver(last.status, self._client_headers(last.headers, None), body), self._done(None)]
        if self._reached:
            return [self._refuse(504, "every provider failed or timed out", None), self._done(None)]
        reasons = ", ".join(f"{a.provider} ({a.reason})" for a in self.failed)
        message = "no provider could be tried: " + (reasons or "every circuit is open")
        return [self._refuse(503, message, event.retry_after), self._done(None)]

    def _on_connected(self, event: Connected) -> list[Action]:
        attempt = self._current()
        if attempt.phase is Phase.CONNECTING:
            attempt.phase = Phase.WAITING
            attempt.connected_at = event.now
        return []

    def _on_head(self, event: ResponseHead) -> list[Action]:
        attempt = self._current()
        self._reached = True
        attempt.phase = Phase.RECEIVING
        attempt.last_activity = event.now
        attempt.head_at = event.now
        attempt.status = event.status
        attempt.headers = event.headers
        verdict = classify_status(event.status, _retry_headers(event.headers), self.app.statuses, event.wall)
        attempt.status_verdict = verdict
        if self.delivery is Delivery.UPGRADE:
            return self._on_upgrade_head(attempt, event.status)
        if _is_event_stream(event.headers):
            attempt.watch = self._provider_dialect(attempt).watch()
        if verdict.fails_over:
            attempt.holding = True
            return [HoldBack(attempt)]
        if self.delivery is Delivery.STREAM and verdict.outcome is Outcome.SUCCESS:
            coding = _content_coding(event.headers)
            if coding not in ("", "identity"):
                # Its end and error events can't be watched, nor its keys masked.
                why = f"stream sent with content-encoding {coding} (Detour asks for identity)"
                unreadable = classify_error(ErrorKind.UNREADABLE, why)
                return [Abort(attempt), *self._end_attempt(attempt, unreadable)]
            if attempt.watch is None and (self._continuing is not None or attempt.translation is not None):
                # Neither can be spliced or translated event by event: never pass it on as it is.
                why = "continued" if self._continuing is not None else "a translated stream"
                unreadable = classify_error(ErrorKind.UNREADABLE, f"{why} answered without an event stream")
                return [Abort(attempt), *self._failed(attempt, unreadable), Pick()]
            if self._continuing is not None:
                attempt.streaming = True
                attempt.splicer = self.dialect.splicer(self._continuing)
                return []
            attempt.streaming = True
            first_token = self.app.timeouts.first_token
            if attempt.watch is not None and first_token > 0:
                attempt.awaiting_token = True
                attempt.token_due = event.now + first_token + len(self.body) / FIRST_TOKEN_BYTES_PER_SECOND
                return []
            return [Stream(event.status, self._client_headers(event.headers, attempt.provider))]
        attempt.holding = True
        return []

    def _on_upgrade_head(self, attempt: Attempt, status: int) -> list[Action]:
        """A handshake answer: 101 chooses this provider; "no WebSocket here" is no failure of it."""
        attempt.phase = Phase.ENDED
        if status == 101:
            verdict = Verdict(Outcome.SUCCESS, "http 101", 101)
            detour = tuple(self._detour_headers(attempt.provider))
            return [
                Record(attempt, verdict),
                Upgrade(101, attempt.headers + detour),
                self._done(attempt.provider, verdict),
            ]
        if status in NO_WEBSOCKET:
            # Not this provider's failure, and the queue's order still holds: the client is told to
            # use HTTP (Codex falls back at once on 426; a 404 it retries for seconds), and its HTTP
            # request goes to this same provider rather than a lower one that speaks WebSocket.
            self.failed.append(FailedAttempt(attempt.provider.id, f"no websocket (http {status})"))
            message = f"{attempt.provider.id} takes no WebSocket for this request: use HTTP"
            return [Abort(attempt), Release(attempt), self._refuse(426, message, None), self._done(None)]
        assert attempt.status_verdict is not None
        verdict = attempt.status_verdict
        if not verdict.fails_over:  # a client error: the client gets it, as for any request
            return [Abort(attempt), Record(attempt, verdict), *self._deliver(attempt, verdict)]
        self._failed_handshake = status
        return [Abort(attempt), *self._failed(attempt, verdict), Pick()]

    def _on_data(self, event: BodyData) -> list[Action]:
        attempt = self._current()
        attempt.last_activity = event.now
        data = event.data
        watch = attempt.watch
        if watch is not None:
            watch.feed(data)
            if not attempt.first_token_at and watch.content_started:
                attempt.first_token_at = event.now
        if attempt.streaming:
            try:
                ready = self._complete_events(attempt, data)
            except Restarted as e:
                return self._restarted(attempt, e)
            if attempt.awaiting_token:
                return self._await_token(attempt, watch, ready)
            return self._forward(ready)
        if len(attempt.body) + len(data) > self.limits.max_body:
            verdict = classify_error(ErrorKind.TOO_LARGE, f"answer larger than {self.limits.max_body} bytes")
            return [Abort(attempt), *self._failed(attempt, verdict), Pick()]
        attempt.body += data
        return []

    def _await_token(self, attempt: Attempt, watch: StreamWatch | None, ready: bytes) -> list[Action]:
        """A streamed answer whose head is held: release it with the first content, or fail over
        on an error before any (the client has seen nothing, so another provider can answer)."""
        assert watch is not None
        if watch.error is not None:
            verdict = classify_error(ErrorKind.STREAM_ERROR, watch.error)
            return [Abort(attempt), *self._failed(attempt, verdict), Pick()]
        attempt.held += ready
        if watch.content_started or watch.complete or len(attempt.held) > MAX_PENDING_EVENT:
            return self._release_head(attempt)
        return []

    def _release_head(self, attempt: Attempt) -> list[Action]:
        attempt.awaiting_token = False
        attempt.token_due = 0.0
        held, attempt.held = bytes(attempt.held), bytearray()
        status = attempt.status or 200
        head = Stream(status, self._client_headers(attempt.headers, attempt.provider))
        return [head, *self._forward(held)]

    def _forward(self, ready: bytes) -> list[Action]:
        if not ready:
            return []
        sent = self._sent
        if sent is not None:
            if len(sent) + len(ready) <= self.limits.max_body:
                sent += ready
            else:
                self._sent = None  # too long to continue: a break will cut it
        return [Forward(ready)]

    def _on_end(self, event: BodyEnd) -> list[Action]:
        attempt = self._current()
        attempt.phase = Phase.ENDED
        verdict = attempt.verdict()
        if attempt.awaiting_token:
            if verdict.outcome is not Outcome.SUCCESS:  # nothing reached the client: fail over
                return [*self._failed(attempt, verdict), Pick()]
            attempt.held += attempt.pending  # a complete answer without content (or with little)
            attempt.pending = b""
            released = self._release_head(attempt)
            return [*released, Record(attempt, verdict), self._served(attempt, verdict), Finish()]
        if attempt.streaming:
            self.attempt = None
            verdict = self._masked(verdict)
            watch, untranslated = attempt.watch, attempt.translation is None
            forwarded_error = watch is not None and watch.error is not None and untranslated
            if verdict.outcome is Outcome.SUCCESS or forwarded_error:
                # An error event was forwarded as the provider sent it: the client's SDK reports it.
                try:
                    rest = self._spliced(attempt, attempt.pending) if attempt.pending else b""
                    if attempt.translation is not None and verdict.outcome is Outcome.SUCCESS:
                        rest += self._spliced(attempt, attempt.translation.finish(), translated=True)
                except Restarted as e:
                    return self._restarted(attempt, e)
                if attempt.splicer is not None:
                    rest = self._redacted(attempt.splicer.flush()) + rest
                done = self._served(attempt, verdict)
                return [*self._forward(rest), Record(attempt, verdict), done, Finish()]
            # Broken: an unfinished event at the end is dropped, never glued to what follows.
            return self._broken(attempt, verdict)
        if verdict.outcome is Outcome.CLIENT_ERROR and self._continuing is None:
            answer = self.readable(Answer(attempt.status or 400, attempt.headers, bytes(attempt.body)))
            if self._provider_dialect(attempt).larger_context_helps(answer.status, answer.body):
                self._last_failure = self._for_client(attempt, answer)
                why = f"http {answer.status}: too long for this provider's context window"
                return [*self._failed(attempt, Verdict(Outcome.CONTEXT_EXCEEDED, why, answer.status)), Pick()]
        if verdict.outcome is Outcome.SUCCESS and attempt.translation is not None:
            whole = self.readable(Answer(attempt.status or 200, attempt.headers, bytes(attempt.body)))
            hidden = attempt.translation.failure(whole.status, self._redacted(whole.body))
            if hidden is not None:
                verdict = classify_error(ErrorKind.STREAM_ERROR, hidden)
                # If nobody does better, the client hears what the provider said, as a 502.
                said = self.dialect.error_body(502, self._masked(verdict).reason)
                self._last_failure = Answer(502, (_JSON_TYPE,), said)
        if verdict.fails_over:
            if attempt.status_verdict is not None and attempt.status_verdict.fails_over:
                failure = Answer(attempt.status or 502, attempt.headers, bytes(attempt.body))
                self._last_failure = self._for_client(attempt, self.readable(failure))
            wait = self._retry_wait(attempt.provider, verdict)
            recorded = self._failed(attempt, verdict)
            if wait is None:
                return [*recorded, Pick()]
            self._retries[attempt.provider.id] = self._retries.get(attempt.provider.id, 0) + 1
            self._retry = (attempt.provider, event.now + wait)
            return recorded
        if self._continuing is not None:  # the provider turned the continuation down
            self.attempt = None
            why = f"{attempt.provider.id} did not continue it ({verdict.reason})"
            return [Record(attempt, verdict), *self._cut(self._broke, why)]
        return [Record(attempt, verdict), *self._deliver(attempt, verdict)]

    def _retry_wait(self, provider: Provider, verdict: Verdict) -> float | None:
        """How long to wait before trying `provider` again for this request, or None to fail over:
        a 429 only with a Retry-After, a 5xx after its Retry-After or a short backoff, both only if
        the wait fits `max_wait` (a retry always waits the full time: it must never hammer)."""
        policy = self.app.retry_same
        status = verdict.status
        if status is None or self._retries.get(provider.id, 0) >= policy.attempts:
            return None
        if status == 429:
            wait = verdict.retry_after
        elif 500 <= status <= 599:
            wait = verdict.retry_after if verdict.retry_after is not None else policy.backoff
        else:
            return None
        return wait if wait is not None and wait <= policy.max_wait else None

    def _on_upstream_error(self, event: UpstreamError) -> list[Action]:
        attempt = self._current()
        if attempt.phase is not Phase.CONNECTING:
            self._reached = True
        kind = event.kind
        if kind is ErrorKind.CONNECT and attempt.phase is not Phase.CONNECTING:
            kind = ErrorKind.RESET
        return [Abort(attempt), *self._end_attempt(attempt, classify_error(kind, event.detail))]

    def _on_tick(self, event: Tick) -> list[Action]:
        attempt = self.attempt
        if attempt is None:
            retry = self._retry
            if retry is None or event.now < retry[1]:
                return []
            self._retry = None
            return [Pick(same=retry[0])]
        due = attempt.deadline(self.app.timeouts)
        if due is None or event.now < due[0]:
            return []
        _, kind, limit = due
        if attempt.phase is not Phase.CONNECTING:
            self._reached = True
        verdict = classify_error(kind, f"{_SILENCE[kind]} for {limit:g}s")
        if kind is ErrorKind.TIMEOUT_FIRST_TOKEN:
            # Leave it only for a provider that takes the request: if none is left, its answer,
            # however slow, is still the best there is.
            attempt.token_due = 0.0
            self._replacing = (attempt, verdict)
            return [Pick()]
        return [Abort(attempt), *self._end_attempt(attempt, verdict)]

    def _on_unsendable(self, event: Unsendable) -> list[Action]:
        attempt = self._current()
        attempt.phase = Phase.ENDED
        self.attempt = None
        self.failed.append(FailedAttempt(attempt.provider.id, f"not sendable: {event.reason}"))
        return [Release(attempt), Pick()]

    def _on_forwarded(self, event: Forwarded) -> list[Action]:
        if self.attempt is not None and self.attempt.phase is Phase.RECEIVING:
            self.attempt.last_activity = max(self.attempt.last_activity, event.now)
        return []

    def _on_client_gone(self, event: ClientGone) -> list[Action]:
        attempt = self.attempt
        self.attempt = None
        self._replacing = None
        self._retry = None
        result = Result(None, None, tuple(self.failed), self.attempts, self._streamed(), client_gone=True)
        self.result = result
        if attempt is None or attempt.phase is Phase.ENDED:
            return [Done(result)]
        return [Abort(attempt), Release(attempt), Done(result)]

    # --- helpers ------------------------------------------------------------------------------

    def _current(self) -> Attempt:
        if self.attempt is None:
            raise ProtocolError("an attempt event arrived with no attempt in flight")
        return self.attempt

    def _end_attempt(self, attempt: Attempt, verdict: Verdict) -> list[Action]:
        """The attempt broke off (connection failure, deadline, unreadable): fail over, or, once
        the client has part of its answer, continue or cut it. The caller aborts the attempt."""
        attempt.phase = Phase.ENDED
        if attempt.client_has_head:
            self.attempt = None
            return self._broken(attempt, self._masked(verdict))
        return [*self._failed(attempt, verdict), Pick()]

    def _broken(self, attempt: Attempt, verdict: Verdict) -> list[Action]:
        """A stream the client is reading broke: have the next provider continue it if the dialect
        can (text only, the message still open), else cut it."""
        transcript = self.dialect.transcript(bytes(self._sent)) if self._sent is not None else None
        if transcript is None:
            # A translated stream says so in the client's dialect: its SDK raises the provider's error.
            said = self.dialect.stream_error(verdict.reason) if attempt.translation is not None else b""
            return [*self._forward(said), Record(attempt, verdict), *self._cut(verdict, None)]
        if self.secrets:  # the next provider gets the text: a key spelled in pieces or escapes too
            transcript = dataclasses.replace(transcript, text=redact(transcript.text, self.secrets))
        if self.dialect.continued_body(self.body, transcript, "") is None:  # e.g. the client's own prefill
            return [Record(attempt, verdict), *self._cut(verdict, None)]
        if self._broke is None:
            self._broke = verdict
        self._continuing = transcript
        self.failed.append(FailedAttempt(attempt.provider.id, verdict.reason))
        return [Record(attempt, verdict), Pick()]

    def _restarted(self, attempt: Attempt, e: Restarted) -> list[Action]:
        """The continuing provider ignored the prefill and began the answer again: the client must
        not get it twice. Not its failure (it answered a request it doesn't support); cut."""
        attempt.phase = Phase.ENDED
        self.attempt = None
        why = f"{attempt.provider.id} did not continue it ({e})"
        verdict = Verdict(Outcome.CLIENT_ERROR, "started the answer over, not continued", attempt.status)
        return [Abort(attempt), Record(attempt, verdict), *self._cut(self._broke, why)]

    def _cut(self, verdict: Verdict | None, why: str | None) -> list[Action]:
        """End the client's stream so that it can't look complete, saying why it broke."""
        reason = verdict.reason if verdict is not None else "the answer broke off"
        if why:
            reason = self._masked(Verdict(Outcome.PROVIDER_FAILURE, f"{reason}; {why}")).reason
        done = self._done(None, verdict)
        return [done, Cut(reason)]

    def _failed(self, attempt: Attempt, verdict: Verdict) -> list[Action]:
        self.attempt = None
        verdict = self._masked(verdict)
        self.failed.append(FailedAttempt(attempt.provider.id, verdict.reason))
        return [Record(attempt, verdict)]

    def _masked(self, verdict: Verdict) -> Verdict:
        """The verdict as the log, the state database and mitmweb may show it: keys masked first,
        then shortened (a key cut in half would no longer be recognised)."""
        reason = redact(verdict.reason, self.secrets)
        if len(reason) > MAX_REASON:
            reason = reason[: MAX_REASON - 3] + "..."
        return verdict if reason == verdict.reason else dataclasses.replace(verdict, reason=reason)

    def _provider_dialect(self, attempt: Attempt) -> Dialect:
        return attempt.translation.provider if attempt.translation is not None else self.dialect

    def _for_client(self, attempt: Attempt, answer: Answer) -> Answer:
        """A whole (readable) answer in the client's dialect: translated when the provider speaks
        another one, a JSON document either way."""
        if attempt.translation is None:
            return answer
        # Masked before translation, which may shorten an error text (a key cut in half would pass).
        body = attempt.translation.answer(answer.status, self._redacted(answer.body))
        headers = (*((n, v) for n, v in answer.headers if n != b"content-type"), _JSON_TYPE)
        return Answer(answer.status, headers, body)

    def _deliver(self, attempt: Attempt, verdict: Verdict) -> list[Action]:
        status = attempt.status or 502
        whole = self.readable(Answer(status, attempt.headers, bytes(attempt.body)))
        if not attempt.tokens_read and attempt.watch is None:  # read from the body decoded just now
            attempt.tokens_read = True
            attempt.tokens = self._body_tokens(attempt, whole)
        answer = self._for_client(attempt, whole)
        headers = self._client_headers(answer.headers, attempt.provider)
        return [Deliver(status, headers, self._redacted(answer.body)), self._served(attempt, verdict)]

    def readable(self, answer: Answer) -> Answer:
        """A whole answer uncompressed, so masking sees its keys (Detour asked for `identity`; a provider
        may compress anyway). One Detour can't decode is replaced by Detour's own error body."""
        coding = _content_coding(answer.headers)
        if coding in ("", "identity"):
            return answer
        headers = tuple((n, v) for n, v in answer.headers if n not in (b"content-encoding", b"content-type"))
        try:
            body = codecs.decode(coding, answer.body)
        except codecs.CodingError as e:
            message = f"the provider's answer could not be read: {e}"
            body = self.dialect.error_body(answer.status, message)
            return Answer(answer.status, (*headers, _JSON_TYPE), body)
        kept = tuple((n, v) for n, v in answer.headers if n != b"content-encoding")
        return Answer(answer.status, kept, body)

    def _complete_events(self, attempt: Attempt, data: bytes) -> bytes:
        """What of a streamed answer can go to the client now: whole events only (so a key echoed in
        an event is seen whole and masked), or the raw chunk for a stream that isn't an event stream.
        A translated stream is written anew from the events the watch has just parsed."""
        translation, watch = attempt.translation, attempt.watch
        if translation is not None and watch is not None:
            return self._spliced(attempt, translation.from_events(watch.last), translated=True)
        if attempt.watch is None:
            return self._redacted(data)
        buffered = attempt.pending + data if attempt.pending else data
        end = _last_event_end(buffered)
        if end == 0 and len(buffered) <= MAX_PENDING_EVENT:
            attempt.pending = buffered
            return b""
        end = end or len(buffered)  # a runaway event: pass it on rather than hold it without bound
        attempt.pending = buffered[end:]
        return self._spliced(attempt, buffered[:end])

    def _spliced(self, attempt: Attempt, events: bytes, translated: bool = False) -> bytes:
        """Events as the client gets them: translated from the provider's dialect, a continuation's
        rewritten into the client's message (before masking, which must see the text as it is
        sent), then masked."""
        if attempt.translation is not None and not translated:
            events = attempt.translation.events(events)
        if attempt.splicer is not None:
            events = attempt.splicer.feed(events)
        return self._redacted(events)

    def _redacted(self, data: bytes) -> bytes:
        secrets = self.secrets
        return redact_bytes(data, secrets) if secrets else data

    def _refuse(self, status: int, message: str, retry_after: float | None) -> Refuse:
        headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
        if retry_after is not None:
            headers.append((b"retry-after", str(max(1, round(retry_after))).encode()))
        headers += self._detour_headers(None)
        return Refuse(status, tuple(headers), self.dialect.error_body(status, redact(message, self.secrets)))

    def _done(
        self, served_by: Provider | None, verdict: Verdict | None = None, metering: Metering | None = None
    ) -> Done:
        self.attempt = None
        continued = served_by is not None and self._continuing is not None
        self.result = Result(
            served_by,
            verdict,
            tuple(self.failed),
            self.attempts,
            self._streamed(),
            continued=continued,
            metering=metering,
            skipped=self.skipped,
        )
        return Done(self.result)

    def _served(self, attempt: Attempt, verdict: Verdict) -> Done:
        return self._done(attempt.provider, verdict, self.metering(attempt))

    # --- accounting (read once an attempt is over, never while its answer is on its way) ---------

    def tokens(self, attempt: Attempt) -> Tokens | None:
        """The tokens `attempt`'s provider reported, in its own dialect (read once, then kept)."""
        if not attempt.tokens_read:
            attempt.tokens_read = True
            attempt.tokens = self._read_tokens(attempt)
        return attempt.tokens

    def _read_tokens(self, attempt: Attempt) -> Tokens | None:
        if attempt.watch is not None:
            return attempt.watch.meter.tokens()
        if attempt.streaming or not attempt.body or attempt.status is None:
            return None
        return self._body_tokens(
            attempt, self.readable(Answer(attempt.status, attempt.headers, bytes(attempt.body)))
        )

    def _body_tokens(self, attempt: Attempt, whole: Answer) -> Tokens | None:
        """A whole answer's tokens (a failure's body reports none, whatever it says)."""
        if not 200 <= whole.status < 300:
            return None
        return self._provider_dialect(attempt).body_tokens(whole.body)

    def metering(self, attempt: Attempt) -> Metering:
        """What the attempt log records of `attempt` besides its verdict (asked once it has ended,
        by the driver's `Record` and by the exchange's result: measured once)."""
        if attempt.metered is not None:
            return attempt.metered
        if self._requested is None:
            self._requested = self.dialect.requested_model(self.path, self.body)
        requested = self._requested
        attempt.metered = Metering(
            self._provider_dialect(attempt).name,
            self._streamed(),
            requested,
            attempt.provider.sent_model(requested),
            _since(attempt.started, attempt.head_at),
            _since(attempt.started, attempt.first_token_at),
            self.tokens(attempt),
        )
        return attempt.metered

    def _streamed(self) -> bool:
        return self.delivery is Delivery.STREAM

    def _client_headers(self, headers: Headers, provider: Provider | None) -> Headers:
        """The provider's response head as the client gets it: without hop-by-hop fields, with any
        configured key masked, and with Detour's own `x-detour-*` fields."""
        secrets = self.secrets
        kept: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            if name in _HOP_BY_HOP or name in (PROVIDER_HEADER, ATTEMPTS_HEADER):
                continue
            kept.append((name, redact_bytes(value, secrets) if secrets else value))
        kept += self._detour_headers(provider)
        return tuple(kept)

    def _detour_headers(self, provider: Provider | None) -> list[tuple[bytes, bytes]]:
        fields = []
        if provider is not None:
            fields.append((PROVIDER_HEADER, provider.id.encode()))
        if self.failed:
            fields.append((ATTEMPTS_HEADER, header_safe(attempts_text(self.failed)).encode()))
        return fields


#: How each timeout describes the provider's silence in a failure reason.
_SILENCE = {
    ErrorKind.TIMEOUT_CONNECT: "no connection",
    ErrorKind.TIMEOUT_FIRST_BYTE: "no response",
    ErrorKind.TIMEOUT_FIRST_TOKEN: "no content",
    ErrorKind.TIMEOUT_IDLE: "silent",
}


class ProtocolError(RuntimeError):
    """The driver sent an event that makes no sense in the exchange's current state (a bug)."""


#: The transition table: which handler takes which event (each handler checks the attempt's phase).
_HANDLERS: dict[type, Callable[[Exchange, Any], list[Action]]] = {
    Start: Exchange._on_start,
    Picked: Exchange._on_picked,
    Exhausted: Exchange._on_exhausted,
    Connected: Exchange._on_connected,
    ResponseHead: Exchange._on_head,
    BodyData: Exchange._on_data,
    BodyEnd: Exchange._on_end,
    UpstreamError: Exchange._on_upstream_error,
    Tick: Exchange._on_tick,
    Forwarded: Exchange._on_forwarded,
    Unsendable: Exchange._on_unsendable,
    ClientGone: Exchange._on_client_gone,
}


def _since(start: float, moment: float) -> float | None:
    """Milliseconds from `start` to `moment`, or None when it never came (0)."""
    return round((moment - start) * 1000, 2) if moment else None


def _last_event_end(data: bytes) -> int:
    """Where the last complete event of `data` ends (after its blank line), or 0 if none does."""
    lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def _content_coding(headers: Headers) -> str:
    for name, value in headers:
        if name == b"content-encoding":
            return value.decode("latin-1").strip().lower()
    return ""


_RETRY_HEADERS = (b"retry-after", b"retry-after-ms")


def _retry_headers(headers: Headers) -> dict[str, str]:
    """The fields `classify_status` reads (names are lower-case on the wire here)."""
    return {k.decode(): v.decode("latin-1") for k, v in headers if k in _RETRY_HEADERS}


def _is_event_stream(headers: Headers) -> bool:
    for name, value in headers:
        if name == b"content-type":
            lowered = value.lower()
            return any(t in lowered for t in STREAM_TYPES)
    return False


def attempts_text(failed: list[FailedAttempt] | tuple[FailedAttempt, ...]) -> str:
    """The failed attempts, as the client's `x-detour-attempts` and the flow's comment name them."""
    return ", ".join(f"{a.provider} ({a.reason})" for a in failed)


def header_safe(text: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)[:200]
