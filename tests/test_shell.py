"""The mitmproxy shell (`addon.shell.Detour`): options, hooks and commands, driven with
`mitmproxy.test.taddons` / `tflow` and a fake clock. No network, except the TCP connect probes the
`request` hook makes, which go to mock providers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakeclock import FakeClock
from mitmproxy import exceptions, http
from mitmproxy.test import taddons, tflow, tutils
from mockprovider import MockProvider

import addon.shell as shell_module
from addon.connections import TIMER_SLACK, sweep_pause
from addon.shell import Detour

BACKUP_VAR = "DETOUR_SHELL_TEST_BACKUP_KEY"
BACKUP_KEY = "sk-shell-backup-SECRET"
CLIENT_KEY = "client-key-shell"
MESSAGES = [{"role": "user", "content": "hi"}]
BODY = json.dumps({"model": "claude-sonnet-4", "max_tokens": 8, "messages": MESSAGES})


# --- helpers ------------------------------------------------------------------------------------------


def config_doc(primary_url: str, backup_url: str, **top: Any) -> dict[str, Any]:
    return {
        "state": "state.db",
        "switch_min_interval": "0s",
        "breaker": {"failure_threshold": 3, "open_for": "30s"},
        # no deadline may pass during a test (the sweeper only runs after running())
        "timeouts": {"connect": "1s", "first_byte": "60s", "idle": "60s"},
        "apps": {
            "claude": {
                "hosts": ["api.anthropic.com"],
                "providers": [
                    {"id": "primary", "base_url": primary_url},
                    {
                        "id": "backup",
                        "base_url": backup_url,
                        "api_key": f"${{{BACKUP_VAR}}}",
                        "auth": "bearer",
                        "models": {"claude-*": "backup-model"},
                    },
                ],
            },
            "codex": {
                "hosts": ["api.openai.com"],
                "providers": [{"id": "openai", "base_url": primary_url}],
            },
        },
        **top,
    }


def write(path: Path, document: dict[str, Any] | str) -> Path:
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False))
    return path


def model_flow(
    host: str = "api.anthropic.com",
    path: str = "/v1/messages",
    peer: tuple[str, int] = ("127.0.0.1", 50123),
    body: str = BODY,
    headers: dict[str, str] | None = None,
) -> http.HTTPFlow:
    """A client request as mitmproxy hands it to requestheaders (treq has no Host header: add one)."""
    fields = {"host": host, "content-type": "application/json", "x-api-key": CLIENT_KEY, **(headers or {})}
    req = tutils.treq(
        host=host,
        port=443,
        scheme=b"https",
        method=b"POST",
        path=path.encode(),
        headers=http.Headers([(k.encode(), v.encode()) for k, v in fields.items()]),
        content=body.encode(),
    )
    flow = tflow.tflow(req=req)
    flow.client_conn.peername = peer
    return flow


def response(status: int = 200, body: bytes = b'{"ok": true}', content_type: str = "application/json",
             **headers: str) -> http.Response:  # fmt: skip
    return http.Response.make(status, body, {"content-type": content_type, **headers})


async def as_mitmproxy_awaits(result: object) -> None:
    """Hooks may return an awaitable (only when they have waiting to do); mitmproxy awaits it."""
    if inspect.isawaitable(result):
        await result


@dataclass
class Shell:
    addon: Detour
    tctx: taddons.context
    clock: FakeClock
    config: Path
    primary: MockProvider
    backup: MockProvider

    async def route(self, flow: http.HTTPFlow) -> http.HTTPFlow:
        """requestheaders + request, as mitmproxy runs them."""
        self.addon.requestheaders(flow)
        await as_mitmproxy_awaits(self.addon.request(flow))
        return flow

    async def serve(self, flow: http.HTTPFlow, resp: http.Response) -> http.HTTPFlow:
        """The provider answers `resp` (not streamed)."""
        flow.response = resp
        self.addon.responseheaders(flow)
        await as_mitmproxy_awaits(self.addon.response(flow))
        return flow

    async def fail_connect(self, flow: http.HTTPFlow, msg: str = "connection refused") -> None:
        """The upstream connection fails before any response: mitmproxy's `error` hook."""
        flow.error = tflow.terr(msg)
        self.addon.error(flow)

    def status(self) -> list[str]:
        return list(self.tctx.master.commands.execute("detour.status"))

    def candidates(self, app: str = "claude") -> list[str]:
        core = self.addon.core
        assert core is not None
        found = core.config.app(app)
        assert found is not None
        return [p.id for p in core.candidates(found)]


async def _teardown(addon: Detour) -> None:
    addon.routes.clear()
    await addon.done()


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """taddons rolls a failed option change back to the previous value, which for a fresh addon is
    the default `config.yaml` relative to the cwd: never let that be the repository's own file."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def mocks(mock_factory: Callable[[str], MockProvider]) -> tuple[MockProvider, MockProvider]:
    return mock_factory("primary"), mock_factory("backup")


@pytest.fixture
async def shell(
    tmp_path: Path, mocks: tuple[MockProvider, MockProvider], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Shell]:
    """A Detour addon inside a taddons context (created in the running loop), config loaded."""
    monkeypatch.setenv(BACKUP_VAR, BACKUP_KEY)
    primary, backup = mocks
    path = write(tmp_path / "config.yaml", config_doc(primary.base_url, backup.base_url))
    clock = FakeClock()
    addon = Detour(clock=clock)
    with taddons.context(addon) as tctx:
        tctx.options.update(detour_watch_ms=0)
        tctx.configure(addon, detour_config=str(path))
        try:
            yield Shell(addon, tctx, clock, path, primary, backup)
        finally:
            await _teardown(addon)


# --- options ------------------------------------------------------------------------------------------


async def test_bad_allow_clients_is_an_options_error(shell: Shell) -> None:
    with pytest.raises(exceptions.OptionsError, match=r"detour_allow_clients: 'not-an-ip'"):
        shell.tctx.configure(shell.addon, detour_allow_clients=["10.0.0.0/8", "not-an-ip"])
    assert shell.tctx.options.detour_allow_clients == []  # rolled back


async def test_negative_watch_interval_is_an_options_error(shell: Shell) -> None:
    with pytest.raises(exceptions.OptionsError, match="detour_watch_ms"):
        shell.tctx.configure(shell.addon, detour_watch_ms=-1)


async def test_missing_config_file_is_an_options_error_naming_the_file(shell: Shell) -> None:
    core = shell.addon.core
    assert core is not None
    before = core.config
    missing = shell.config.parent / "nope.yaml"
    with pytest.raises(exceptions.OptionsError) as info:
        shell.tctx.configure(shell.addon, detour_config=str(missing))
    assert str(info.value).startswith(f"{missing}: cannot read file")
    # rolled back: the option and the running config are the previous ones
    assert shell.tctx.options.detour_config == str(shell.config)
    assert shell.addon.core is core and core.config.source == before.source


async def test_bad_config_content_names_the_file_and_key_path(shell: Shell) -> None:
    doc = config_doc(shell.primary.base_url, "ftp://x")
    bad = write(shell.config.parent / "bad.yaml", doc)
    with pytest.raises(exceptions.OptionsError) as info:
        shell.tctx.configure(shell.addon, detour_config=str(bad))
    message = str(info.value)
    assert message.startswith(f"{bad}: apps.claude.providers[1].base_url: "), message
    assert "'ftp://x'" in message
    assert shell.candidates() == ["primary", "backup"]


async def test_config_secret_is_never_in_an_options_error(shell: Shell) -> None:
    doc = config_doc(shell.primary.base_url, shell.backup.base_url)
    doc["apps"]["claude"]["providers"][1]["auth"] = "nonsense"
    bad = write(shell.config.parent / "bad.yaml", doc)
    with pytest.raises(exceptions.OptionsError) as info:
        shell.tctx.configure(shell.addon, detour_config=str(bad))
    assert "apps.claude.providers[1].auth" in str(info.value)
    assert BACKUP_KEY not in str(info.value)


async def test_allow_hosts_follow_the_config_hosts(shell: Shell) -> None:
    assert shell.tctx.options.allow_hosts == [r"^api\.anthropic\.com:\d+$", r"^api\.openai\.com:\d+$"]


async def test_intercept_all_leaves_allow_hosts_untouched(
    tmp_path: Path, mocks: tuple[MockProvider, MockProvider], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BACKUP_VAR, BACKUP_KEY)
    path = write(tmp_path / "config.yaml", config_doc(mocks[0].base_url, mocks[1].base_url))
    addon = Detour(clock=FakeClock())
    with taddons.context(addon) as tctx:
        tctx.configure(addon, detour_intercept_all=True, detour_watch_ms=0)
        tctx.configure(addon, detour_config=str(path))
        assert addon.core is not None
        assert tctx.options.allow_hosts == []
        await _teardown(addon)


async def test_intercept_all_turned_on_at_runtime_decrypts_everything(shell: Shell) -> None:
    assert shell.tctx.options.allow_hosts  # set by Detour from the config
    shell.tctx.configure(shell.addon, detour_intercept_all=True)
    assert shell.tctx.options.allow_hosts == []


async def test_running_switches_to_lazy_connections_and_watches_the_config(shell: Shell) -> None:
    # proxyserver's option; taddons doesn't load that addon
    shell.tctx.options.add_option("connection_strategy", str, "eager", "")
    shell.tctx.options.update(detour_watch_ms=100)
    shell.addon.running()
    assert shell.tctx.options.connection_strategy == "lazy"
    assert shell.candidates() == ["primary", "backup"]
    doc = yaml.safe_load(shell.config.read_text())
    doc["apps"]["claude"]["providers"].reverse()
    write(shell.config, doc)
    deadline = time.monotonic() + 5.0
    while shell.candidates() != ["backup", "primary"]:
        assert time.monotonic() < deadline, "config change not picked up"
        await asyncio.sleep(0.05)


async def test_a_failing_sweep_does_not_stop_the_deadline_sweeper(
    shell: Shell, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sweeps: list[float] = []

    def flaky_sweep(routes: object, now: float, shortest: float) -> float:
        sweeps.append(now)
        if len(sweeps) == 1:
            raise RuntimeError("sweep bug")
        return 0.01

    monkeypatch.setattr(shell_module, "check_deadlines", flaky_sweep)
    shell.tctx.options.add_option("connection_strategy", str, "lazy", "")  # proxyserver's option
    shell.addon._shortest_timeout = 0.01
    shell.addon.running()
    deadline = time.monotonic() + 5.0
    while len(sweeps) < 3:
        assert time.monotonic() < deadline, f"the sweeper stopped after {len(sweeps)} sweeps"
        await asyncio.sleep(0.01)
    assert "deadline sweep failed" in caplog.text


@pytest.mark.parametrize(
    ("due_in", "pause"),
    [
        (60.0, 60.0 - TIMER_SLACK),  # woken a timer's slack early, so not late
        (0.0015, 0.0015 - TIMER_SLACK),
        (TIMER_SLACK, 0.0),  # within the slack: yield to the loop and check again
        (0.0002, 0.0),
    ],
)
def test_sweep_pause(due_in: float, pause: float) -> None:
    assert sweep_pause(due_in) == pytest.approx(pause)


# --- requestheaders / request: what is routed ------------------------------------------------------


async def test_model_path_of_an_app_host_is_routed(shell: Shell) -> None:
    flow = model_flow()
    flow.request.stream = True
    shell.addon.requestheaders(flow)
    assert flow.id in shell.addon.routes
    assert shell.addon.routes[flow.id].app.name == "claude"
    assert flow.request.stream is False


async def test_request_rewrites_to_the_primary_with_the_clients_credentials(shell: Shell) -> None:
    flow = await shell.route(model_flow())
    route = shell.addon.routes[flow.id]
    assert route.provider is not None and route.provider.id == "primary"
    assert flow.request.url == f"{shell.primary.base_url}/v1/messages"
    assert flow.request.headers["x-api-key"] == CLIENT_KEY
    assert flow.request.content == BODY.encode()  # byte-for-byte
    assert flow.response is None


@pytest.mark.parametrize(
    ("host", "path"),
    [
        ("api.anthropic.com", "/api/claude_code/settings"),
        ("api.anthropic.com", "/v1/models"),
        ("example.com", "/v1/messages"),
        ("anthropic.com", "/v1/messages"),
    ],
)
async def test_other_paths_and_hosts_are_not_routed(shell: Shell, host: str, path: str) -> None:
    flow = model_flow(host=host, path=path)
    before = flow.request.copy()
    flow.request.stream = True
    await shell.route(flow)
    assert flow.id not in shell.addon.routes
    assert flow.request.stream is True
    assert flow.request.url == before.url
    assert flow.request.headers == before.headers
    assert flow.response is None
    assert shell.primary.count() == 0 and shell.backup.count() == 0


async def test_query_string_does_not_prevent_routing(shell: Shell) -> None:
    flow = await shell.route(model_flow(path="/v1/messages?beta=true"))
    assert flow.request.url == f"{shell.primary.base_url}/v1/messages?beta=true"


async def test_attempt_flows_are_not_routed_again(shell: Shell) -> None:
    flow = model_flow()
    flow.metadata["detour_attempt"] = "some-flow"
    shell.addon.requestheaders(flow)
    assert flow.id not in shell.addon.routes


async def test_non_loopback_client_gets_403_in_the_anthropic_shape(shell: Shell) -> None:
    flow = await shell.route(model_flow(peer=("192.168.1.5", 1234)))
    assert flow.response is not None
    assert flow.response.status_code == 403
    assert flow.response.headers["content-type"] == "application/json"
    body = json.loads(flow.response.content or b"")
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert "192.168.1.5" in body["error"]["message"]
    assert flow.request.host == "api.anthropic.com"  # never rewritten, no key added
    assert flow.id not in shell.addon.routes
    assert shell.primary.count() == 0


async def test_allowed_network_may_use_the_routes(shell: Shell) -> None:
    shell.tctx.configure(shell.addon, detour_allow_clients=["192.168.1.0/24"])
    flow = await shell.route(model_flow(peer=("192.168.1.5", 1234)))
    assert flow.response is None
    assert flow.request.url == f"{shell.primary.base_url}/v1/messages"
    other = await shell.route(model_flow(peer=("192.168.2.5", 1234)))
    assert other.response is not None and other.response.status_code == 403


async def test_ipv6_loopback_and_mapped_loopback_are_allowed(shell: Shell) -> None:
    for peer in ("::1", "::ffff:127.0.0.1"):
        flow = await shell.route(model_flow(peer=(peer, 1234)))
        assert flow.response is None, peer


async def test_openai_shape_403_for_codex(shell: Shell) -> None:
    flow = await shell.route(
        model_flow(host="api.openai.com", path="/v1/chat/completions", peer=("10.1.2.3", 5))
    )
    assert flow.response is not None and flow.response.status_code == 403
    body = json.loads(flow.response.content or b"")
    assert set(body["error"]) >= {"message", "type", "code"}


async def test_refused_primary_is_skipped_for_the_backup_with_its_key_and_model(shell: Shell) -> None:
    shell.primary.fault("refuse")
    flow = await shell.route(model_flow())
    route = shell.addon.routes[flow.id]
    assert route.provider is not None and route.provider.id == "backup"
    assert [a.provider for a in route.failed] == ["primary"]
    assert flow.request.url == f"{shell.backup.base_url}/v1/messages"
    assert flow.request.headers["authorization"] == f"Bearer {BACKUP_KEY}"
    assert "x-api-key" not in flow.request.headers
    assert json.loads(flow.request.content or b"")["model"] == "backup-model"


async def test_nothing_reachable_gives_503_with_retry_after(shell: Shell) -> None:
    shell.primary.fault("refuse")
    shell.backup.fault("refuse")
    flow = await shell.route(model_flow())
    assert flow.response is not None
    assert flow.response.status_code == 503
    assert int(flow.response.headers["retry-after"]) >= 1
    body = json.loads(flow.response.content or b"")
    assert body["type"] == "error" and body["error"]["type"] == "overloaded_error"
    assert "primary" in body["error"]["message"] and "backup" in body["error"]["message"]
    assert flow.id not in shell.addon.routes
    assert flow.marked  # the all-failed marker for mitmweb


# --- responses ------------------------------------------------------------------------------------------


async def test_good_answer_gets_provider_header_and_comment(shell: Shell) -> None:
    flow = await shell.serve(await shell.route(model_flow()), response(200))
    assert flow.response is not None
    assert flow.response.headers["x-detour-provider"] == "primary"
    assert "x-detour-attempts" not in flow.response.headers
    assert flow.comment == "detour claude: served by primary"
    assert flow.metadata["detour"]["provider"] == "primary"
    assert flow.id not in shell.addon.routes
    assert "  primary: closed failures=0" in shell.status()


async def test_client_error_is_returned_and_not_counted(shell: Shell) -> None:
    flow = await shell.serve(await shell.route(model_flow()), response(400, b'{"type":"error"}'))
    assert flow.response is not None and flow.response.status_code == 400
    assert shell.backup.count() == 0
    assert "  primary: closed failures=0" in shell.status()


async def test_streamed_answer_is_teed_and_labelled_at_headers(shell: Shell) -> None:
    flow = await shell.route(model_flow())
    flow.response = response(200, b"", content_type="text/event-stream")
    shell.addon.responseheaders(flow)
    tee = flow.response.stream
    assert callable(tee)
    assert flow.response.headers["x-detour-provider"] == "primary"  # headers leave before the body
    chunk = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    assert tee(chunk) == chunk  # passed through untouched
    tee(b"")
    await as_mitmproxy_awaits(shell.addon.response(flow))
    assert flow.response.raw_content == chunk  # kept for mitmweb
    assert "  primary: closed failures=0" in shell.status()


@pytest.mark.parametrize(
    "chunk",
    [
        b'event: message_start\ndata: {"type":"message_start"}\n\n',  # ended without message_stop
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error"}}\n\n',
    ],
    ids=["cut", "error-event"],
)
async def test_incomplete_or_error_stream_counts_against_the_provider(shell: Shell, chunk: bytes) -> None:
    flow = await shell.route(model_flow())
    flow.response = response(200, b"", content_type="text/event-stream")
    shell.addon.responseheaders(flow)
    tee = flow.response.stream
    assert callable(tee)
    tee(chunk)
    tee(b"")
    await as_mitmproxy_awaits(shell.addon.response(flow))
    assert "  primary: closed failures=1" in shell.status()
    assert shell.backup.count() == 0  # nothing can be unsent


async def test_failed_stream_does_not_move_the_current_provider(shell: Shell) -> None:
    core = shell.addon.core
    assert core is not None
    core.served("claude", "backup", "test: backup served")
    assert core.switches.current("claude") == "backup"
    flow = await shell.route(model_flow())
    assert flow.request.url.startswith(shell.primary.base_url)
    flow.response = response(200, b"", content_type="text/event-stream")
    shell.addon.responseheaders(flow)
    tee = flow.response.stream
    assert callable(tee)
    tee(b'event: message_start\ndata: {"type":"message_start"}\n\n')
    tee(b"")
    await as_mitmproxy_awaits(shell.addon.response(flow))
    assert core.switches.current("claude") == "backup"


async def test_connect_errors_open_the_circuit_and_reset_closes_it(shell: Shell) -> None:
    for _ in range(3):
        flow = await shell.route(model_flow())
        assert flow.request.url.startswith(shell.primary.base_url)
        await shell.fail_connect(flow)
        assert flow.id not in shell.addon.routes
    lines = shell.status()
    assert any(line.startswith("  primary: open failures=3 probe in") for line in lines), lines
    assert shell.candidates() == ["backup"]
    flow = await shell.route(model_flow())
    assert flow.request.url.startswith(shell.backup.base_url)
    await shell.serve(flow, response(200))

    shell.tctx.master.commands.execute("detour.reset claude primary")
    assert "  primary: closed failures=0" in shell.status()
    assert shell.candidates() == ["primary", "backup"]


async def test_open_circuit_recovers_after_its_open_period(shell: Shell) -> None:
    for _ in range(3):
        await shell.fail_connect(await shell.route(model_flow()))
    assert shell.candidates() == ["backup"]
    shell.clock.advance(31)
    assert shell.candidates()[0] == "primary"
    flow = await shell.route(model_flow())
    assert flow.request.url.startswith(shell.primary.base_url)


async def test_client_disconnect_is_not_counted(shell: Shell) -> None:
    flow = await shell.route(model_flow())
    await shell.fail_connect(flow, "Client disconnected.")
    assert "  primary: closed failures=0" in shell.status()
    assert flow.id not in shell.addon.routes


# --- commands ------------------------------------------------------------------------------------------


async def test_status_lists_every_app_and_provider(shell: Shell) -> None:
    assert shell.status() == [
        "claude: current=primary",
        "  primary: closed failures=0",
        "  backup: closed failures=0",
        "codex: current=openai",
        "  openai: closed failures=0",
    ]


async def test_switch_pins_and_auto_unpins(shell: Shell, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="detour")
    shell.tctx.master.commands.execute("detour.switch claude backup")
    assert shell.candidates() == ["backup", "primary"]
    assert shell.status()[0] == "claude: current=backup (pinned: backup)"
    assert "manual switch claude: primary -> backup" in caplog.text
    flow = await shell.route(model_flow())
    assert flow.request.url.startswith(shell.backup.base_url)

    shell.tctx.master.commands.execute("detour.switch claude auto")
    assert shell.candidates() == ["primary", "backup"]
    assert "pinned" not in shell.status()[0]


@pytest.mark.parametrize(
    ("cmd", "needle"),
    [
        ("detour.switch nope backup", "unknown app 'nope'"),
        ("detour.switch claude nope", "unknown provider 'nope'"),
        ("detour.switch nope auto", "unknown app 'nope'"),
        ("detour.reset claude nope", "unknown provider 'nope'"),
        ("detour.reset nope primary", "unknown app 'nope'"),
    ],
)
async def test_unknown_app_or_provider_is_a_command_error(shell: Shell, cmd: str, needle: str) -> None:
    with pytest.raises(exceptions.CommandError, match=needle):
        shell.tctx.master.commands.execute(cmd)
    assert shell.candidates() == ["primary", "backup"]


async def test_commands_without_a_config_are_command_errors() -> None:
    addon = Detour(clock=FakeClock())
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.CommandError, match="no config loaded"):
            tctx.master.commands.execute("detour.status")
        await _teardown(addon)


async def test_reload_with_a_bad_file_keeps_the_running_config(shell: Shell) -> None:
    core = shell.addon.core
    assert core is not None
    before = core.config
    good = shell.config.read_text()
    write(shell.config, good + "bogus_key: 1\n")
    with pytest.raises(exceptions.CommandError) as info:
        shell.tctx.master.commands.execute("detour.reload")
    assert str(shell.config) in str(info.value) and "bogus_key" in str(info.value)
    assert core.config is before
    flow = await shell.route(model_flow())
    assert flow.request.url.startswith(shell.primary.base_url)


async def test_reload_applies_a_good_file_and_keeps_breaker_state(shell: Shell) -> None:
    await shell.fail_connect(await shell.route(model_flow()))
    doc = yaml.safe_load(shell.config.read_text())
    doc["apps"]["claude"]["providers"].reverse()
    doc["apps"]["gemini"] = {
        "hosts": ["generativelanguage.googleapis.com"],
        "providers": [{"id": "google", "base_url": shell.primary.base_url}],
    }
    write(shell.config, doc)
    shell.tctx.master.commands.execute("detour.reload")
    assert shell.candidates() == ["backup", "primary"]
    assert "  primary: closed failures=1" in shell.status()
    assert r"^generativelanguage\.googleapis\.com:\d+$" in shell.tctx.options.allow_hosts
    flow = await shell.route(model_flow(host="generativelanguage.googleapis.com",
                                        path="/v1beta/models/gemini-pro:generateContent"))  # fmt: skip
    assert flow.request.url.startswith(shell.primary.base_url)
