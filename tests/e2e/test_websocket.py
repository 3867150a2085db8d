"""Codex's WebSocket transport through a real mitmdump: the handshake fails over like a request
before the 101, the socket is joined to the provider that accepted it, and messages flow both ways
(with the model mapped on the way out)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import configs
import pytest
from configs import BACKUP_KEY_ENV, CLIENT_KEY, KEY_B, KEY_ENV
from harness import Mitmdump, free_port
from mockprovider import MockProvider, MockUsage
from rawhttp import classify_reply, fetch, request_for
from wsclient import responses_turn, text_of

from addon.state.sqlite import read_attempts

pytestmark = pytest.mark.integration

AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}


def start(
    tmp_path: Path, mitmdump_factory: Callable[..., Mitmdump], primary: MockProvider, backup: MockProvider
) -> tuple[Mitmdump, int]:
    providers = [
        configs.provider("primary", primary.base_url),
        configs.provider("backup", backup.base_url, BACKUP_KEY_ENV, models={"gpt-*": "backup-gpt"}),
    ]
    cfg = configs.write(
        tmp_path / "config.yaml", configs.config({"codex": configs.app("api.openai.com", providers)})
    )
    port = free_port()
    md = mitmdump_factory(
        cfg, reverse={port: "https://api.openai.com"}, regular_port=free_port(), env=KEY_ENV
    )
    return md, port


def test_a_healthy_primary_takes_the_socket_and_messages_flow(
    tmp_path: Path, mitmdump_factory: Callable[..., Mitmdump]
) -> None:
    with MockProvider("primary").start() as primary, MockProvider("backup").start() as backup:
        md, port = start(tmp_path, mitmdump_factory, primary, backup)
        turn = responses_turn(port, headers=AUTH)
        assert turn.status == 101 and turn.headers["x-detour-provider"] == "primary"
        assert text_of(turn) == "hello from primary"
        assert turn.messages[-1]["type"] == "response.completed"
        (handshake,) = primary.received
        assert handshake.headers["authorization"] == f"Bearer {CLIENT_KEY}"
        assert json.loads(primary.ws_messages[0])["model"] == "gpt-test"
        assert backup.count() == 0 and md.alive


def test_a_failing_primary_hands_the_socket_to_the_backup_with_its_key_and_model(
    tmp_path: Path, mitmdump_factory: Callable[..., Mitmdump]
) -> None:
    with MockProvider("primary").start() as primary, MockProvider("backup").start() as backup:
        md, port = start(tmp_path, mitmdump_factory, primary, backup)
        primary.fault("status", status=503)
        turn = responses_turn(port, headers=AUTH, model="gpt-6.2-sol")
        assert turn.status == 101 and turn.headers["x-detour-provider"] == "backup"
        assert turn.headers["x-detour-attempts"] == "primary (http 503)"
        assert text_of(turn) == "hello from backup"
        (handshake,) = backup.received
        assert handshake.headers["authorization"] == f"Bearer {KEY_B}"
        assert CLIENT_KEY not in json.dumps(handshake.raw_headers)
        assert json.loads(backup.ws_messages[0])["model"] == "backup-gpt"  # mapped in the message
        assert md.alive and "Traceback" not in md.log_text()


def test_a_provider_without_websocket_sends_the_client_to_http_uncharged(
    tmp_path: Path, mitmdump_factory: Callable[..., Mitmdump]
) -> None:
    """The queue's order holds: no lower provider takes the socket of a healthy primary without one."""
    with (
        MockProvider("primary", websocket=False).start() as primary,
        MockProvider("backup").start() as backup,
    ):
        md, port = start(tmp_path, mitmdump_factory, primary, backup)
        for _ in range(4):  # more than failure_threshold (3)
            turn = responses_turn(port, headers=AUTH)
            assert turn.status == 426, turn
        assert backup.count() == 0
        # The primary's circuit stayed closed: HTTP requests still go to it.
        assert md.regular_port is not None
        path, body, headers = request_for("responses", True)
        assert (
            classify_reply(fetch(md.regular_port, "api.openai.com", path, body, headers), True)
            == "ok:primary"
        )


def test_when_no_provider_speaks_websocket_the_client_is_told_at_once(
    tmp_path: Path, mitmdump_factory: Callable[..., Mitmdump]
) -> None:
    with (
        MockProvider("primary", websocket=False).start() as p,
        MockProvider("backup", websocket=False).start() as b,
    ):
        md, port = start(tmp_path, mitmdump_factory, p, b)
        turn = responses_turn(port, headers=AUTH)
        assert turn.status == 426  # the client falls back to HTTP streaming at once
        assert md.alive


def test_each_response_over_the_socket_is_logged_with_its_usage(
    tmp_path: Path, mitmdump_factory: Callable[..., Mitmdump]
) -> None:
    with MockProvider("primary").start() as primary, MockProvider("backup").start() as backup:
        backup.usage = MockUsage(input=70, output=40, cache_read=900, reasoning=25)
        primary.fault("status", status=503)
        md, port = start(tmp_path, mitmdump_factory, primary, backup)
        turn = responses_turn(port, headers=AUTH)
        assert turn.headers["x-detour-provider"] == "backup" and text_of(turn) == "hello from backup"
        state = tmp_path / "state.db"
        deadline = time.monotonic() + 10
        while len(read_attempts(state, 0.0)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        handshake_failed, handshake, answered = read_attempts(state, 0.0)
    assert (handshake_failed.provider, handshake_failed.status) == ("primary", 503)
    assert (handshake.provider, handshake.status, handshake.input_tokens) == ("backup", 101, None)
    assert (answered.provider, answered.outcome, answered.dialect, answered.streamed) == (
        "backup", "success", "openai-responses", True,
    )  # fmt: skip
    assert (answered.model_requested, answered.model) == ("gpt-test", "backup-gpt")
    tokens = (answered.input_tokens, answered.cache_read_tokens, answered.cache_write_tokens,
              answered.output_tokens, answered.reasoning_tokens)  # fmt: skip
    assert tokens == (70, 900, 0, 40, 25)
    assert answered.response_id == "resp_mock" and answered.latency_ms >= 0
    assert md.alive
