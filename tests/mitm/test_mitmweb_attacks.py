"""An adversarial review of the mitmweb rework, kept as tests: each one failed before its fix."""

# The rig's fixtures come from test_addon and are named again as the tests' parameters.
# ruff: noqa: F811

from __future__ import annotations

import json
import sys
from pathlib import Path

from mitmproxy import http

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_addon import Rig, _isolated_cwd, backup_key, rig  # noqa: F401  (fixtures)

from addon.http1 import End, Head


def replay(flow: http.HTTPFlow) -> http.HTTPFlow:
    """What mitmproxy's ClientPlayback.start_replay does to a flow (mitmweb's Replay button,
    `replay.client @focus`): in place, on the same flow object."""
    flow.backup()
    flow.is_replay = "request"
    flow.response = None
    flow.error = None
    return flow


async def test_replaying_a_flow_a_second_time_is_not_refused(rig: Rig) -> None:
    original = await rig.ask()
    await rig.route(replay(original))
    assert original.response is not None and original.response.status_code == 409  # first: refused
    await rig.route(replay(original))  # the user clicks Replay again
    # Answered here again: it never goes to api.anthropic.com with `x-api-key: ***`.
    assert original.response is not None and original.response.status_code == 409


async def test_a_routed_flow_that_detour_answered_itself_is_replayed_to_the_original_host(rig: Rig) -> None:
    flow = await rig.ask(headers={"x-bad": "a\nb"})  # refused locally (400), before any annotate
    assert flow.response is not None and flow.response.status_code == 400
    assert flow.request.headers["x-api-key"] == "***"  # masked on the flow
    await rig.route(replay(flow))
    assert flow.response is not None and flow.response.status_code == 409


async def _open_backup(rig: Rig) -> None:
    """The backup's circuit opens while the primary stays healthy (e.g. a bad backup key)."""
    rig.providers.answer("backup.test", (Head(529, ()), b'{"type":"error"}', End()))
    rig.tctx.command(rig.addon.switch, "claude", "backup")
    for _ in range(3):
        served = await rig.ask()
        assert served.response is not None and served.response.headers["x-detour-provider"] == "primary"


async def test_a_request_the_primary_served_first_try_is_not_marked_rerouted(rig: Rig) -> None:
    await _open_backup(rig)
    rig.tctx.command(rig.addon.switch, "claude", "auto")
    sent = len(rig.providers.received)
    flow = await rig.ask()
    assert rig.providers.hosts()[sent:] == ["primary.test"]  # first in the queue, first try
    assert flow.comment == "primary · claude"  # not "primary (backup: circuit open)"
    assert not flow.marked


async def test_status_still_shows_a_pin_when_the_pinned_provider_is_not_current(rig: Rig) -> None:
    await _open_backup(rig)  # pinned to backup; its circuit opened, traffic went to primary
    lines = rig.tctx.command(rig.addon.status)
    assert any("pinned" in line for line in lines), lines


async def test_a_published_attempt_copy_with_a_hole_never_reads_complete(rig: Rig) -> None:
    """A streamed attempt over the copy limit: a chunk that doesn't fit is skipped, later small ones
    (the final events) still fit, and the Detour view calls the holed answer complete."""
    from mitmproxy.test import taddons, tflow
    from test_contentview import rendered

    from addon.exchange import Delivery, Exchange, Limits
    from addon.formats import DIALECTS
    from addon.mitm import contentview
    from addon.mitm.attempts import attempt_flow
    from addon.rewrite import ClientRequest

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
    from test_usage import ANTHROPIC_STREAM, sse

    head, tail = ANTHROPIC_STREAM.split(b"event: content_block_stop", 1)
    tail = b"event: content_block_stop" + tail

    def delta(text: str) -> bytes:
        return sse(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "text_delta", "text": text}}))  # fmt: skip

    filler = delta("a" * 60_000)
    chunks = [head] + [filler] * ((8 * 1024 * 1024 - 200_000) // len(filler))
    chunks += [delta("THE MIDDLE OF THE ANSWER " * 10_000), tail]  # 250 kB: over the limit, skipped
    rig.providers.answer("primary.test", (Head(529, ()), b'{"type":"error"}', End()))
    rig.providers.answer(
        "backup.test", (Head(200, ((b"content-type", b"text/event-stream"),)), *chunks, End())
    )

    body = json.dumps({"model": "claude-sonnet-4", "max_tokens": 8, "stream": True, "messages": []}).encode()
    control = rig.addon.control
    assert control is not None and rig.addon.dispatch is not None
    app = control.config.app("claude")
    assert app is not None
    queue = control.candidates(app)
    ex = Exchange(app, DIALECTS["anthropic"], Delivery.STREAM, queue, control.secrets, Limits(), body,
                  "/v1/messages")  # fmt: skip
    got: list[bytes] = []

    class Sink:
        on_gone = None

        async def stream(self, status: int, headers: object) -> None: ...
        async def forward(self, data: bytes) -> None:
            got.append(data)

        async def finish(self) -> None: ...
        async def cut(self, reason: str) -> None: ...
        async def deliver(self, *a: object) -> None: ...

    reports: list = []
    request = ClientRequest("POST", "/v1/messages", ((b"x-api-key", b"k"),), body)
    result = await rig.addon.dispatch.driver.run(ex, request, Sink(), reports.append, copy_streams=True)  # type: ignore[arg-type]
    assert result.served_by is not None and result.served_by.id == "backup"
    assert b"THE MIDDLE" in b"".join(got)  # the client got all of it
    served = attempt_flow(tflow.tflow(), ex, reports[-1], len(reports))
    assert served.response is not None
    contentview.register()
    try:
        with taddons.context():
            _, text = rendered(served, served.response)
    finally:
        contentview.unregister()
    first = text.splitlines()[0]
    assert "THE MIDDLE" in text or "complete" not in first, first


async def test_a_failover_for_a_too_long_prompt_says_why(rig: Rig) -> None:
    too_long = (
        b'{"type":"error","error":{"type":"invalid_request_error",'
        b'"message":"prompt is too long: 215000 tokens > 200000 maximum"}}'
    )
    rig.providers.answer(
        "primary.test", (Head(400, ((b"content-type", b"application/json"),)), too_long, End())
    )
    flow = await rig.ask()
    assert flow.response is not None and flow.response.headers["x-detour-provider"] == "backup"
    assert flow.comment.startswith("backup ← primary "), flow.comment
    assert "400:" not in flow.comment and "context" in flow.comment, flow.comment


async def test_a_refused_foreign_client_s_key_is_shown_masked(rig: Rig) -> None:
    flow = await rig.ask(peer=("192.168.1.20", 4000))
    assert flow.response is not None and flow.response.status_code == 403
    assert flow.request.headers["x-api-key"] == "***", flow.request.headers["x-api-key"]
