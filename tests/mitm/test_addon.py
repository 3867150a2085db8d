"""The mitmproxy addon (`addon.mitm.addon.Detour`): options, hooks and commands, driven with
`mitmproxy.test.taddons` / `tflow`. No network: attempts go to a scripted sender that answers per
provider, and records what each provider would have received.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import configs
import pytest
from mitmproxy import exceptions, http
from mitmproxy.test import taddons, tflow, tutils
from mitmproxy.websocket import WebSocketMessage
from wsproto.frame_protocol import Opcode

from addon.classify import ErrorKind
from addon.http1 import End, Head
from addon.mitm.addon import Detour
from addon.mitm.dispatch import Socket
from addon.rewrite import OutboundRequest
from addon.upstream import Item, Pool, UpstreamFailure

BACKUP_VAR = "DETOUR_MITM_TEST_BACKUP_KEY"
BACKUP_KEY = "sk-mitm-backup-SECRET"
CLIENT_KEY = "client-key-mitm"
MESSAGES = [{"role": "user", "content": "hi"}]
BODY = json.dumps({"model": "claude-sonnet-4", "max_tokens": 8, "messages": MESSAGES})
OK_JSON = (Head(200, ((b"content-type", b"application/json"),)), b'{"ok": true}', End())


def config_doc(**top: Any) -> dict[str, Any]:
    backup = configs.provider(
        "backup", "https://backup.test/api", BACKUP_VAR, auth="bearer", models={"claude-*": "backup-model"}
    )
    primary = configs.provider("primary", "http://primary.test")
    apps = {
        "claude": configs.app("api.anthropic.com", [primary, backup]),
        "codex": configs.app("api.openai.com", [configs.provider("openai", "http://openai.test")]),
    }
    return configs.config(
        apps,
        breaker={"open_for": "30s", "max_open_for": "30m"},
        timeouts={"first_byte": "60s", "idle": "60s"},
        **top,
    )


write = configs.write


@dataclass
class Providers:
    """A scripted sender: per provider host, the items of its next answers (or a failure)."""

    answers: dict[str, list[tuple[Item, ...] | UpstreamFailure]] = field(default_factory=dict)
    received: list[OutboundRequest] = field(default_factory=list)

    def answer(self, host: str, *answers: tuple[Item, ...] | UpstreamFailure) -> None:
        self.answers.setdefault(host, []).extend(answers)

    async def send(self, pool: Pool, request: OutboundRequest, upgrade: bool) -> AsyncIterator[Item | None]:
        self.received.append(request)
        queue = self.answers.get(request.target.host) or [OK_JSON]
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, UpstreamFailure):
            raise answer
        yield None
        for item in answer:
            yield item

    def hosts(self) -> list[str]:
        return [r.target.host for r in self.received]


def model_flow(
    host: str = "api.anthropic.com",
    path: str = "/v1/messages",
    peer: tuple[str, int] = ("127.0.0.1", 50123),
    body: str = BODY,
    headers: dict[str, str] | None = None,
    method: bytes = b"POST",
) -> http.HTTPFlow:
    """A client request as mitmproxy hands it to requestheaders (treq has no Host header: add one)."""
    fields = {"host": host, "content-type": "application/json", "x-api-key": CLIENT_KEY, **(headers or {})}
    req = tutils.treq(
        host=host,
        port=443,
        scheme=b"https",
        method=method,
        path=path.encode(),
        headers=http.Headers([(k.encode(), v.encode()) for k, v in fields.items()]),
        content=body.encode(),
    )
    flow = tflow.tflow(req=req)
    flow.client_conn.peername = peer
    return flow


async def as_mitmproxy_awaits(result: object) -> None:
    if inspect.isawaitable(result):
        await result


@dataclass
class Rig:
    addon: Detour
    tctx: taddons.context
    config: Path
    providers: Providers

    async def route(self, flow: http.HTTPFlow) -> http.HTTPFlow:
        """requestheaders + request, as mitmproxy runs them."""
        self.addon.requestheaders(flow)
        await as_mitmproxy_awaits(self.addon.request(flow))
        return flow

    async def ask(self, **kw: Any) -> http.HTTPFlow:
        flow = await self.route(model_flow(**kw))
        assert flow.response is not None
        return flow


@pytest.fixture(autouse=True)
def backup_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BACKUP_VAR, BACKUP_KEY)


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """taddons rolls a failed option change back to the previous value, which for a fresh addon is
    the default `config.yaml` relative to the cwd: never let that be the repository's own file."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    providers = Providers()
    addon = Detour(send=providers.send)
    with taddons.context(addon) as tctx:
        tctx.options.add_option("connection_strategy", str, "eager", "")  # proxyserver's, not loaded here
        config = write(tmp_path / "config.yaml", config_doc())
        tctx.configure(addon, detour_config=str(config), detour_watch_ms=0)
        yield Rig(addon, tctx, config, providers)
        await addon.done()


# --- options ---------------------------------------------------------------------------------------


async def test_bad_allow_clients_is_an_options_error(rig: Rig) -> None:
    with pytest.raises(exceptions.OptionsError, match="detour_allow_clients: 'nope' is not an IP address"):
        rig.tctx.configure(rig.addon, detour_allow_clients=["nope"])


async def test_negative_watch_interval_is_an_options_error(rig: Rig) -> None:
    with pytest.raises(exceptions.OptionsError, match="detour_watch_ms"):
        rig.tctx.configure(rig.addon, detour_watch_ms=-1)


async def test_bad_config_names_the_file_and_key_path_and_never_the_secret(rig: Rig, tmp_path: Path) -> None:
    doc = config_doc()
    doc["apps"]["claude"]["providers"][1]["api_key"] = 42
    bad = write(tmp_path / "bad.yaml", doc)
    with pytest.raises(exceptions.OptionsError) as info:
        rig.tctx.configure(rig.addon, detour_config=str(bad))
    assert str(info.value) == f"{bad}: apps.claude.providers[1].api_key: must be a string, got integer"
    with pytest.raises(exceptions.OptionsError, match="cannot read file"):
        rig.tctx.configure(rig.addon, detour_config=str(tmp_path / "missing.yaml"))


async def test_allow_hosts_follow_the_config_and_intercept_all_leaves_them_alone(rig: Rig) -> None:
    assert rig.tctx.options.allow_hosts == [r"^api\.anthropic\.com:\d+$", r"^api\.openai\.com:\d+$"]
    rig.tctx.configure(rig.addon, detour_intercept_all=True)
    assert rig.tctx.options.allow_hosts == []


async def test_running_switches_to_lazy_connections_and_starts_the_relay(rig: Rig) -> None:
    rig.addon.running()
    assert rig.tctx.options.connection_strategy == "lazy"
    assert rig.addon.relay.port > 0


# --- which requests are routed -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "path"),
    [
        ("api.anthropic.com", "/api/claude_code/settings"),
        ("example.com", "/v1/messages"),
        ("api.anthropic.com", "/v2/messages"),
    ],
)
async def test_other_paths_and_hosts_are_left_alone(rig: Rig, host: str, path: str) -> None:
    flow = await rig.route(model_flow(host=host, path=path))
    assert flow.response is None and flow.request.host == host
    assert rig.providers.received == []


async def test_a_replayed_flow_is_not_routed_again(rig: Rig) -> None:
    flow = model_flow()
    flow.is_replay = "request"
    await rig.route(flow)
    assert flow.response is None and rig.providers.received == []


@pytest.mark.parametrize("peer", ["192.168.1.20", "10.0.0.1"])
async def test_a_client_that_may_not_use_the_routes_gets_403_in_the_apis_shape(rig: Rig, peer: str) -> None:
    flow = await rig.ask(peer=(peer, 4000))
    assert flow.response is not None and flow.response.status_code == 403
    assert flow.response.json()["error"]["type"] == "permission_error"
    assert rig.providers.received == []
    codex = await rig.ask(host="api.openai.com", path="/v1/chat/completions", peer=(peer, 4000))
    assert codex.response is not None and "message" in codex.response.json()["error"]


async def test_allowed_networks_and_every_loopback_spelling_may_use_the_routes(rig: Rig) -> None:
    rig.tctx.configure(rig.addon, detour_allow_clients=["192.168.1.0/24"])
    for peer in ("192.168.1.20", "::1", "::ffff:127.0.0.1", "127.0.0.2"):
        flow = await rig.ask(peer=(peer, 4000))
        assert flow.response is not None and flow.response.status_code == 200, peer


# --- whole answers -------------------------------------------------------------------------------------


async def test_a_healthy_primary_answers_with_the_clients_credentials(rig: Rig) -> None:
    flow = await rig.ask()
    assert flow.response is not None and flow.response.json() == {"ok": True}
    assert flow.response.headers["x-detour-provider"] == "primary"
    # no UI and no flow file here: nobody reads a usage summary of a plain success, none is made
    assert flow.comment == "primary · claude"
    (sent,) = rig.providers.received
    assert sent.url == "http://primary.test/v1/messages"
    assert (b"x-api-key", CLIENT_KEY.encode()) in sent.headers
    assert flow.request.host == "api.anthropic.com"  # the client's flow shows what the client sent


async def test_a_529_fails_over_with_the_backups_key_and_model(rig: Rig) -> None:
    rig.providers.answer("primary.test", (Head(529, ()), b'{"type":"error"}', End()))
    flow = await rig.ask()
    assert flow.response is not None and flow.response.headers["x-detour-provider"] == "backup"
    assert flow.response.headers["x-detour-attempts"] == "primary (http 529)"
    assert flow.marked == ":twisted_rightwards_arrows:"
    assert flow.comment == "backup ← primary 529 · tokens not reported · claude"
    primary, backup = rig.providers.received
    assert backup.url == "https://backup.test/api/v1/messages"
    assert (b"authorization", f"Bearer {BACKUP_KEY}".encode()) in backup.headers
    assert CLIENT_KEY.encode() not in b"".join(v for _, v in backup.headers)
    assert json.loads(backup.body)["model"] == "backup-model"
    assert json.loads(primary.body)["model"] == "claude-sonnet-4"
    assert BACKUP_KEY not in json.dumps(flow.get_state(), default=str)


async def test_nothing_reachable_gives_503_with_retry_after(rig: Rig) -> None:
    rig.providers.answer("primary.test", UpstreamFailure(ErrorKind.CONNECT, "Connection refused"))
    rig.providers.answer("backup.test", UpstreamFailure(ErrorKind.CONNECT, "Name or service not known"))
    flow = await rig.ask()
    assert flow.response is not None and flow.response.status_code == 503
    assert int(flow.response.headers["retry-after"]) >= 1
    assert flow.response.json()["error"]["type"] == "overloaded_error"
    assert flow.marked == ":x:"
    assert flow.comment == "✗ primary connect, backup connect · claude"


async def test_a_request_served_by_a_backup_because_a_circuit_is_open_says_so(rig: Rig) -> None:
    rig.providers.answer("primary.test", (Head(529, ()), b'{"type":"error"}', End()))
    for _ in range(3):  # failure_threshold: the primary's circuit opens
        await rig.ask()
    received = len(rig.providers.received)
    flow = await rig.ask()
    assert rig.providers.hosts()[received:] == ["backup.test"]  # the primary was not tried
    assert flow.comment == "backup (primary: circuit open) · claude"
    assert flow.marked == ":twisted_rightwards_arrows:"
    assert flow.metadata["detour"]["skipped"] == ["primary"]


async def test_a_replay_of_a_routed_flow_is_refused_and_never_leaves(rig: Rig) -> None:
    rig.providers.answer("primary.test", (Head(529, ()), b'{"type":"error"}', End()))
    original = await rig.ask()
    assert original.marked and "detour" in original.metadata
    replay = original.copy()
    replay.response = None
    replay.is_replay = "request"
    sent = len(rig.providers.received)
    await rig.route(replay)
    assert len(rig.providers.received) == sent  # nothing went anywhere
    assert replay.response is not None and replay.response.status_code == 409
    assert "send the request again from the client" in replay.response.json()["error"]["message"].lower()
    assert replay.comment == "replay refused by Detour: send it again from the client"
    assert not replay.marked and replay.metadata["detour_masked"]  # a second replay is refused too


async def test_a_bug_while_routing_answers_502_and_never_lets_the_request_leave(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("boom")

    monkeypatch.setattr("addon.mitm.dispatch.client_request", broken)
    flow = await rig.ask()
    assert flow.response is not None and flow.response.status_code == 502
    assert flow.response.json()["type"] == "error"
    assert "routing failed" in caplog.text


# --- streamed answers: through the relay ---------------------------------------------------------------


async def test_a_streamed_request_is_pointed_at_the_relay_and_shown_as_sent(rig: Rig) -> None:
    rig.addon.running()
    body = json.dumps({"model": "claude-sonnet-4", "stream": True, "messages": MESSAGES})
    flow = await rig.route(model_flow(body=body))
    assert flow.response is None
    assert (flow.request.host, flow.request.port, flow.request.scheme) == (
        "127.0.0.1",
        rig.addon.relay.port,
        "http",
    )
    assert flow.request.content == b"" and CLIENT_KEY not in str(flow.request.headers)
    assert flow.request.headers["x-detour-relay"]
    flow.response = tutils.tresp(status_code=200)
    rig.addon.responseheaders(flow)
    assert flow.request.host == "api.anthropic.com" and flow.request.content == body.encode()
    assert flow.response.stream


# --- WebSocket messages --------------------------------------------------------------------------------


async def test_the_model_in_a_clients_response_create_message_is_mapped(rig: Rig) -> None:
    doc = config_doc()
    doc["apps"]["codex"]["providers"].append(
        {
            "id": "backup",
            "base_url": "http://backup.test",
            "api_key": f"${{{BACKUP_VAR}}}",
            "models": {"gpt-*": "mapped"},
        }
    )
    rig.tctx.configure(rig.addon, detour_config=str(write(rig.config, doc)))
    flow = tflow.twebsocketflow()
    assert rig.addon.dispatch is not None
    rig.addon.dispatch.sockets[flow.id] = Socket("codex", "backup")
    assert flow.websocket is not None
    message = b'{"type":"response.create","model":"gpt-6.2-sol","input":[]}'
    flow.websocket.messages.append(type(flow.websocket.messages[0])(1, True, message))  # client text frame
    rig.addon.websocket_message(flow)
    assert flow.websocket.messages[-1].content == b'{"type":"response.create","model":"mapped","input":[]}'


# --- usage -----------------------------------------------------------------------------------------------

MESSAGE_WITH_USAGE = {
    "id": "msg_u1",
    "type": "message",
    "role": "assistant",
    "model": "backup-model",
    "content": [{"type": "text", "text": "hi"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 1200, "cache_read_input_tokens": 30000, "output_tokens": 56},
}


async def test_a_served_flow_says_its_tokens_and_cost_and_the_usage_command_adds_them_up(rig: Rig) -> None:
    doc = config_doc(prices={"backup-model": {"input": 3, "output": 15, "cache_read": 0.3}})
    write(rig.config, doc)
    rig.addon.reload()
    body = json.dumps(MESSAGE_WITH_USAGE).encode()
    answer = (Head(200, ((b"content-type", b"application/json"),)), body, End())
    rig.providers.answer("primary.test", (Head(529, ()), b'{"type":"error"}', End()))
    rig.providers.answer("backup.test", answer)
    flow = await rig.ask()
    dollars = (1200 * 3 + 30000 * 0.3 + 56 * 15) / 1e6
    usage = "1,200 in (+30,000 cached) / 56 out tokens, $0.0134"
    assert flow.comment == f"backup ← primary 529 · {usage} · claude"
    assert flow.metadata["detour_usage"] == {
        "model": "backup-model",
        "input_tokens": 1200,
        "cache_read_tokens": 30000,
        "cache_write_tokens": 0,
        "output_tokens": 56,
        "reasoning_tokens": None,
        "cost_usd": pytest.approx(dollars),
    }
    lines = rig.tctx.command(rig.addon.usage, "1h")
    assert [line.split()[:5] for line in lines[1:3]] == [
        ["claude", "primary", "claude-sonnet-4", "1", "0%"],
        ["claude", "backup", "backup-model", "1", "100%"],
    ]
    assert lines[-1] == "total: 2 requests, cost $0.0134"


def socket_flow(rig: Rig, *messages: tuple[bool, bytes]) -> http.HTTPFlow:
    """A WebSocket flow held by codex's `openai`, fed `messages` (from_client, content) in order."""
    flow = tflow.twebsocketflow()
    assert flow.websocket is not None
    flow.websocket.messages.clear()
    rig.addon.dispatch.sockets[flow.id] = Socket("codex", "openai")  # type: ignore[union-attr]
    for from_client, content in messages:
        flow.websocket.messages.append(WebSocketMessage(Opcode.TEXT, from_client, content))
        rig.addon.websocket_message(flow)
    return flow


CREATE = b'{"type":"response.create","model":"gpt-5","input":[]}'
COMPLETED = json.dumps(
    {
        "type": "response.completed",
        "response": {
            "id": "r1",
            "model": "gpt-5",
            "usage": {
                "input_tokens": 300,
                "input_tokens_details": {"cached_tokens": 200},
                "output_tokens": 40,
                "output_tokens_details": {"reasoning_tokens": 8},
            },
        },
    }
).encode()


async def test_each_response_over_a_socket_is_logged_even_when_it_breaks_off(rig: Rig) -> None:
    started = b'{"type":"response.created","response":{"id":"r2","usage":null}}'
    delta = b'{"type":"response.output_text.delta","delta":"half"}'
    error = b'{"type":"error","status":429,"error":{"message":"slow down"}}'
    flow = socket_flow(
        rig,
        (True, CREATE),
        (False, COMPLETED),
        (True, CREATE),
        (False, started),
        (False, delta),
        (True, CREATE),
        (False, error),
        (True, CREATE),
        (False, delta),
    )
    rig.addon.websocket_end(flow)
    rows = rig.addon._control().store.attempts_since(0.0)
    assert [(r.outcome, r.error, r.input_tokens, r.output_tokens) for r in rows] == [
        ("success", "", 100, 40),
        ("client_gone", "a new request before it ended", None, None),
        ("provider_failure", "error", None, None),
        ("client_gone", "the socket closed before it ended", None, None),
    ]
    assert {(r.dialect, r.model_requested, r.model) for r in rows} == {("openai-responses", "gpt-5", "gpt-5")}
    assert rows[0].reasoning_tokens == 8 and rows[0].cache_read_tokens == 200 and rows[0].response_id == "r1"
    assert rows[2].error_kind == "stream_error"
    assert flow.id not in rig.addon.dispatch.sockets  # type: ignore[union-attr]


async def test_the_usage_command_wants_a_window(rig: Rig) -> None:
    with pytest.raises(exceptions.CommandError, match="window must be a number and a unit"):
        rig.tctx.command(rig.addon.usage, "yesterday")


# --- commands ------------------------------------------------------------------------------------------


async def test_status_lists_every_app_and_provider(rig: Rig) -> None:
    assert rig.tctx.command(rig.addon.status) == [
        "claude/primary: closed, 0 failures ← current",
        "claude/backup: closed, 0 failures",
        "codex/openai: closed, 0 failures ← current",
    ]


async def test_switch_pins_and_auto_unpins(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="detour")
    rig.tctx.command(rig.addon.switch, "claude", "backup")
    assert "manual switch claude: primary -> backup" in caplog.text
    flow = await rig.ask()
    assert flow.response is not None and flow.response.headers["x-detour-provider"] == "backup"
    rig.tctx.command(rig.addon.switch, "claude", "auto")
    assert rig.tctx.command(rig.addon.status)[0] == "claude/primary: closed, 0 failures ← current"


@pytest.mark.parametrize(
    ("cmd", "args", "needle"),
    [
        ("switch", ("nope", "x"), "unknown app 'nope'"),
        ("reset", ("claude", "nope"), "unknown provider 'nope'"),
    ],
)
async def test_unknown_app_or_provider_is_a_command_error(
    rig: Rig, cmd: str, args: tuple[str, str], needle: str
) -> None:
    with pytest.raises(exceptions.CommandError, match=needle):
        rig.tctx.command(getattr(rig.addon, cmd), *args)


async def test_commands_without_a_config_are_command_errors() -> None:
    addon = Detour()
    with taddons.context(addon) as tctx, pytest.raises(exceptions.CommandError, match="no config loaded"):
        tctx.command(addon.status)


async def test_reload_with_a_bad_file_keeps_the_running_config(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    write(rig.config, "apps: [\n")
    with pytest.raises(exceptions.CommandError, match="invalid YAML"):
        rig.tctx.command(rig.addon.reload)
    assert "config not reloaded, keeping the previous one" in caplog.text
    flow = await rig.ask()
    assert flow.response is not None and flow.response.status_code == 200


async def test_reload_applies_a_good_file(rig: Rig) -> None:
    doc = config_doc()
    doc["apps"]["claude"]["providers"].reverse()
    write(rig.config, doc)
    rig.tctx.command(rig.addon.reload)
    flow = await rig.ask()
    assert flow.response is not None and flow.response.headers["x-detour-provider"] == "backup"


async def test_the_config_watcher_reloads_a_changed_file(rig: Rig) -> None:
    rig.tctx.configure(rig.addon, detour_watch_ms=100)
    rig.addon.running()
    doc = config_doc()
    doc["apps"]["claude"]["providers"].reverse()
    write(rig.config, doc)
    st = rig.config.stat()
    os.utime(rig.config, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    for _ in range(100):  # polled with a bound: the watcher checks every 100 ms
        assert rig.addon.control is not None
        if rig.addon.control.config.apps[0].providers[0].id == "backup":
            break
        await asyncio.sleep(0.05)
    assert rig.addon.control is not None and rig.addon.control.config.apps[0].providers[0].id == "backup"
