"""End to end: a real mitmdump running Detour, real mock providers, the official SDKs as clients.

Every listener is on 127.0.0.1; mock providers stand in for api.anthropic.com / api.openai.com, so
nothing leaves the machine. Timeouts are configured small (connect 1s, first_byte 1.5s, idle 1.5s)
and every wait is a poll with a deadline.
"""

from __future__ import annotations

import importlib
import json
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import configs
import openai
import pytest
import yaml
from harness import LAUNCHERS, Mitmdump, free_port
from mockprovider import MockProvider
from rawservers import ScriptServer, stall_after

# The HTTP client the SDKs are built on: httpx for anthropic 0.x / openai 1.x, httpx2 for the newer
# releases (which refuse an `httpx.Client` as http_client). Tests use the same one throughout.
_base = importlib.import_module("anthropic._base_client")
httpx: Any = getattr(_base, "httpx2", None) or _base.httpx

pytestmark = pytest.mark.integration

CLIENT_KEY = "client-key-CLIENT-0001"
BACKUP_KEY = "sk-backup-SECRET-0002"
PRIMARY_KEY = "sk-primary-SECRET-0003"
BACKUP_VAR = "DETOUR_IT_BACKUP_KEY"
PRIMARY_VAR = "DETOUR_IT_PRIMARY_KEY"
MSG: list[dict[str, Any]] = [{"role": "user", "content": "hi"}]
SDK_TIMEOUT = 15.0  # far above every configured timeout: a hang shows up as a failed assertion

Factory = Callable[..., "Rig"]


# --- helpers ------------------------------------------------------------------------------------


def provider(pid: str, mock: MockProvider, **extra: Any) -> dict[str, Any]:
    return {"id": pid, "base_url": mock.base_url, **extra}


def config_doc(
    claude: list[dict[str, Any]],
    codex: list[dict[str, Any]] | None = None,
    breaker: dict[str, Any] | None = None,
    extra_apps: dict[str, Any] | None = None,
    timeouts: dict[str, Any] | None = None,
    app_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    apps: dict[str, Any] = {"claude": configs.app("api.anthropic.com", claude, **(app_options or {}))}
    if codex is not None:
        apps["codex"] = configs.app("api.openai.com", codex, **(app_options or {}))
    apps.update(extra_apps or {})
    return configs.config(apps, breaker=breaker, timeouts=timeouts)


write_config = configs.write


def poll(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def client_credential(rec: Any) -> str | None:
    """The client's credential as the provider got it: SDKs send `api_key` as x-api-key (anthropic
    0.x) or as a bearer token (anthropic 2.x)."""
    if "x-api-key" in rec.headers:
        return str(rec.headers["x-api-key"])
    auth = str(rec.headers.get("authorization", ""))
    return auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None


def all_header_values(mock: MockProvider) -> list[str]:
    return [v for r in mock.received for _, v in r.raw_headers]


@dataclass
class Rig:
    tmp: Path
    config: Path
    primary: MockProvider
    backup: MockProvider
    mitm: Mitmdump
    claude_port: int
    codex_port: int

    def claude(self, api_key: str | None = CLIENT_KEY, **kw: Any) -> anthropic.Anthropic:
        kw.setdefault("timeout", SDK_TIMEOUT)
        return anthropic.Anthropic(
            base_url=f"http://127.0.0.1:{self.claude_port}", api_key=api_key, max_retries=0, **kw
        )

    def codex(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"http://127.0.0.1:{self.codex_port}/v1",
            api_key=CLIENT_KEY,
            max_retries=0,
            timeout=SDK_TIMEOUT,
        )

    def http(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.claude_port}", timeout=SDK_TIMEOUT, trust_env=False
        )

    def ask(self, **kw: Any) -> Any:
        """One non-streaming Messages call; returns the raw response (headers + parse())."""
        return self.claude().messages.with_raw_response.create(
            model="claude-sonnet-4", max_tokens=16, messages=MSG, **kw
        )

    def served_by(self) -> str | None:
        return self.ask().headers.get("x-detour-provider")


@pytest.fixture(params=LAUNCHERS)
def rig(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    mock_factory: Callable[[str], MockProvider],
    mitmdump_factory: Callable[..., Mitmdump],
) -> Iterator[Factory]:
    """``rig(...)`` -> a running mitmdump with a two-provider queue for claude and codex.

    By default the primary has no key (the client's credentials pass through) and the backup has
    its own key (bearer for both apps) and maps models. Every test runs under both launchers:
    `mitmdump -s addon/detour.py` and the lean `detour` (they must behave the same).
    """

    def make(
        primary_key: bool = False,
        backup_auth: str = "bearer",
        breaker: dict[str, Any] | None = None,
        extra_args: tuple[str, ...] = (),
        regular: bool = False,
        timeouts: dict[str, Any] | None = None,
        app_options: dict[str, Any] | None = None,
    ) -> Rig:
        primary, backup = mock_factory("primary"), mock_factory("backup")
        p_extra: dict[str, Any] = {"api_key": f"${{{PRIMARY_VAR}}}"} if primary_key else {}
        claude = [
            provider("primary", primary, **p_extra),
            provider(
                "backup", backup, api_key=f"${{{BACKUP_VAR}}}", auth=backup_auth,
                models={"claude-*": "backup-model"},
            ),
        ]  # fmt: skip
        codex = [
            provider("primary", primary),
            provider("backup", backup, api_key=f"${{{BACKUP_VAR}}}", auth="bearer",
                     models={"gpt-*": "backup-gpt"}),
        ]  # fmt: skip
        config = tmp_path / "config.yaml"
        write_config(config, config_doc(claude, codex, breaker, timeouts=timeouts, app_options=app_options))
        claude_port, codex_port = free_port(), free_port()
        mitm = mitmdump_factory(
            config,
            reverse={claude_port: "https://api.anthropic.com", codex_port: "https://api.openai.com"},
            regular_port=free_port() if regular else None,
            env={BACKUP_VAR: BACKUP_KEY, PRIMARY_VAR: PRIMARY_KEY},
            extra_args=extra_args,
            program=request.param,
        )
        return Rig(tmp_path, config, primary, backup, mitm, claude_port, codex_port)

    yield make


def stream_events(client: anthropic.Anthropic) -> list[Any]:
    return list(client.messages.create(model="claude-sonnet-4", max_tokens=16, messages=MSG, stream=True))


def text_of(events: list[Any]) -> str:
    return "".join(
        e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )


# --- Anthropic SDK: the happy path and failover --------------------------------------------------


def test_healthy_primary_answers_with_provider_header(rig: Factory) -> None:
    r = rig()
    raw = r.ask()
    assert raw.parse().content[0].text == "hello from primary"
    assert raw.headers["x-detour-provider"] == "primary"
    assert "x-detour-attempts" not in raw.headers
    assert r.primary.count("/v1/messages") == 1
    assert r.backup.count() == 0
    # A provider without api_key gets the client's own credentials, unchanged: a key...
    assert client_credential(r.primary.received[0]) == CLIENT_KEY
    # ...or a bearer token (Claude subscription login).
    client = r.claude(api_key=None, auth_token="client-oauth-TOKEN")
    client.messages.create(model="claude-sonnet-4", max_tokens=8, messages=MSG)
    got = r.primary.received[1]
    assert got.headers["authorization"] == "Bearer client-oauth-TOKEN"
    assert "x-api-key" not in got.headers


def test_529_fails_over_to_backup_with_its_own_key_and_mapped_model(rig: Factory) -> None:
    r = rig()
    r.primary.fault("status", status=529)
    raw = r.ask()
    assert raw.parse().content[0].text == "hello from backup"
    assert raw.headers["x-detour-provider"] == "backup"
    assert "primary" in raw.headers["x-detour-attempts"]
    assert r.primary.count() == 1
    assert client_credential(r.primary.received[0]) == CLIENT_KEY
    assert r.backup.count() == 1
    got = r.backup.received[0]
    assert got.headers["authorization"] == f"Bearer {BACKUP_KEY}"
    assert "x-api-key" not in got.headers
    assert not any(CLIENT_KEY in v for v in all_header_values(r.backup))
    assert isinstance(got.json, dict) and got.json["model"] == "backup-model"
    assert got.json["messages"] == MSG
    # the primary got the client's model untouched
    assert r.primary.received[0].json["model"] == "claude-sonnet-4"  # type: ignore[index]


def test_streaming_failover_delivers_the_backups_complete_stream(rig: Factory) -> None:
    r = rig()
    r.primary.fault("status", status=529)
    raw = r.claude().messages.with_raw_response.create(
        model="claude-sonnet-4", max_tokens=16, messages=MSG, stream=True
    )
    assert raw.headers["x-detour-provider"] == "backup"
    events = list(raw.parse())
    assert [e.type for e in events][-1] == "message_stop"
    assert text_of(events) == "hello from backup"
    assert r.primary.count() == 1 and r.backup.count() == 1


def test_streaming_healthy_is_streamed_from_primary(rig: Factory) -> None:
    r = rig()
    raw = r.claude().messages.with_raw_response.create(
        model="claude-sonnet-4", max_tokens=16, messages=MSG, stream=True
    )
    assert raw.headers["x-detour-provider"] == "primary"
    assert "text/event-stream" in raw.headers["content-type"]
    events = list(raw.parse())
    assert events[-1].type == "message_stop"
    assert text_of(events) == "hello from primary"
    with r.claude().messages.stream(model="claude-sonnet-4", max_tokens=16, messages=MSG) as s:
        assert s.get_final_message().content[0].text == "hello from primary"  # type: ignore[union-attr]
    assert r.backup.count() == 0


def test_400_is_passed_through_without_failover(rig: Factory) -> None:
    r = rig()
    r.primary.fault("status", status=400)
    with pytest.raises(anthropic.BadRequestError) as info:
        r.ask()
    assert info.value.status_code == 400
    assert info.value.response.headers["x-mock-provider"] == "primary"
    assert r.backup.count() == 0
    # not counted against the primary: the next request goes there again
    r.primary.healthy()
    assert r.served_by() == "primary"


@pytest.mark.parametrize(
    ("status", "extra"),
    [(401, {}), (404, {}), (429, {"retry_after": 1})],
    ids=["401", "404", "429-retry-after"],
)
def test_provider_failure_statuses_fail_over(rig: Factory, status: int, extra: dict[str, Any]) -> None:
    r = rig()
    r.primary.fault("status", status=status, **extra)
    raw = r.ask()
    assert raw.parse().content[0].text == "hello from backup"
    assert raw.headers["x-detour-provider"] == "backup"
    assert f"http {status}" in raw.headers["x-detour-attempts"]
    assert r.primary.count() == 1 and r.backup.count() == 1


def test_refused_primary_before_any_success_fails_over_transparently(rig: Factory) -> None:
    r = rig()
    r.primary.fault("refuse")
    started = time.monotonic()
    raw = r.ask()
    assert time.monotonic() - started < 5
    assert raw.parse().content[0].text == "hello from backup"
    assert raw.headers["x-detour-provider"] == "backup"
    assert r.primary.count() == 0


def test_refused_after_recent_success_fails_over_transparently(rig: Factory) -> None:
    """A provider that just answered (its connection kept alive) then refuses: the very next request
    fails over too, with no 502 in between."""
    r = rig()
    assert r.served_by() == "primary"
    r.primary.fault("refuse")
    first = r.http().post("/v1/messages", json={"model": "claude-sonnet-4", "max_tokens": 8, "messages": MSG})
    assert first.status_code == 200
    assert first.headers["x-detour-provider"] == "backup"
    assert r.served_by() == "backup"


def test_hanging_primary_fails_over_after_first_byte_timeout(rig: Factory) -> None:
    r = rig(timeouts={"connect": "500ms", "first_byte": "500ms"})
    r.primary.fault("hang")
    started = time.monotonic()
    raw = r.ask()
    elapsed = time.monotonic() - started
    assert raw.parse().content[0].text == "hello from backup"
    assert raw.headers["x-detour-provider"] == "backup"
    assert 0.45 <= elapsed < 6.0, elapsed  # first_byte after the connection (0.5s), with slack
    assert r.primary.count() == 1
    # the same for a streaming request (no headers ever came, so failover is still possible)
    started = time.monotonic()
    events = stream_events(r.claude())
    assert time.monotonic() - started < 6.0
    assert events[-1].type == "message_stop"
    assert text_of(events) == "hello from backup"


def test_reset_before_headers_fails_over(rig: Factory) -> None:
    r = rig()
    r.primary.fault("reset")
    raw = r.ask()
    assert raw.parse().content[0].text == "hello from backup"
    assert raw.headers["x-detour-provider"] == "backup"
    events = stream_events(r.claude())
    assert events[-1].type == "message_stop"
    assert text_of(events) == "hello from backup"
    assert r.primary.count() == 2 and r.backup.count() == 2


def broken_stream(r: Rig) -> tuple[list[Any], float]:
    """Stream one message that must break: the events received and the seconds it took."""
    events: list[Any] = []
    started = time.monotonic()
    with pytest.raises((anthropic.APIError, httpx.HTTPError)):
        for event in r.claude().messages.create(
            model="claude-sonnet-4", max_tokens=16, messages=MSG, stream=True
        ):
            events.append(event)
        # Some SDK versions end quietly on a truncated stream; it must at least be incomplete.
        if not any(e.type == "message_stop" for e in events):
            raise anthropic.APIError("incomplete stream", request=None, body=None)  # type: ignore[arg-type]
    return events, time.monotonic() - started


NO_CONTINUATION = {"continue_streams": False}


def test_mid_stream_cut_never_ends_cleanly(rig: Factory) -> None:
    r = rig(app_options=NO_CONTINUATION)
    r.primary.fault("sse_cut", events=3)
    events, elapsed = broken_stream(r)
    assert elapsed < 8.0
    assert not any(e.type == "message_stop" for e in events)
    assert r.backup.count() == 0  # nothing can be unsent: no failover once a stream started


def test_stalled_stream_is_cut_after_idle_timeout(rig: Factory) -> None:
    r = rig(app_options=NO_CONTINUATION)
    r.primary.fault("sse_stall", events=3)
    events, elapsed = broken_stream(r)
    assert elapsed < 8.0, elapsed
    assert events and not any(e.type == "message_stop" for e in events)
    r.primary.healthy()


@pytest.mark.parametrize("fault", ["sse_cut", "sse_stall"])
def test_a_stream_broken_mid_text_is_continued_by_the_backup_exactly_once(rig: Factory, fault: str) -> None:
    """The official SDK's accumulator gets one message: the primary's "hello", then the backup's
    continuation of it, each once (the backup was asked with "hello" as the assistant prefill)."""
    r = rig()
    r.primary.fault(fault, events=3)  # message_start, content_block_start, "hello"
    with r.claude().messages.stream(model="claude-sonnet-4", max_tokens=16, messages=MSG) as stream:
        message = stream.get_final_message()
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "hello from backup"
    assert message.stop_reason == "end_turn"
    assert r.backup.continued == ["hello"]
    (sent,) = list(r.backup.requests_to("/v1/messages"))
    assert sent.json["messages"][-1] == {"role": "assistant", "content": "hello"}
    assert sent.headers.get("authorization") == f"Bearer {BACKUP_KEY}"  # the backup's own key
    r.primary.healthy()


def test_a_chat_stream_broken_mid_text_is_continued_under_its_completion_id(rig: Factory) -> None:
    r = rig()
    r.primary.fault("sse_cut", events=2)  # the role chunk and "hello"
    with r.codex().chat.completions.stream(
        model="gpt-5", messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        ids = {event.chunk.id for event in stream if event.type == "chunk"}
        completion = stream.get_final_completion()
    assert ids == {completion.id}  # one completion, however many providers wrote it
    assert completion.choices[0].message.content == "hello from backup"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert r.backup.continued == ["hello"]


def test_error_event_inside_200_stream_reaches_the_sdk_and_counts_as_failure(rig: Factory) -> None:
    r = rig(breaker={"failure_threshold": 1, "open_for": "10s", "max_open_for": "10s"})
    # After the first content (three events): before it, the stream would fail over instead.
    r.primary.fault("sse_error", times=1, after=3, error_type="overloaded_error", message="Overloaded")
    with pytest.raises(anthropic.APIStatusError) as info:
        stream_events(r.claude())
    assert "overloaded" in str(info.value).lower()
    assert r.backup.count() == 0
    # the error event opened the primary's circuit: the next request goes straight to the backup
    assert r.served_by() == "backup"
    assert r.primary.count() == 1


def test_error_status_with_stalled_body_is_bounded(
    tmp_path: Path,
    mock_factory: Callable[[str], MockProvider],
    mitmdump_factory: Callable[..., Mitmdump],
) -> None:
    backup = mock_factory("backup")
    head = b"HTTP/1.1 529 Overloaded\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n{"
    with ScriptServer(stall_after(head)) as stalling:
        config = tmp_path / "config.yaml"
        write_config(config, config_doc([{"id": "primary", "base_url": stalling.base_url},
                                         provider("backup", backup)]))  # fmt: skip
        port = free_port()
        mitmdump_factory(config, reverse={port: "https://api.anthropic.com"})
        started = time.monotonic()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=4.0, trust_env=False) as c:
            try:
                resp = c.post("/v1/messages", json={"model": "m", "max_tokens": 8, "messages": MSG})
            except httpx.TimeoutException:
                pytest.fail(f"no answer after {time.monotonic() - started:.1f}s (idle is 1.5s)")
        elapsed = time.monotonic() - started
        assert stalling.requests == 1
        # Cut after idle (1.5s); the client has seen nothing yet, so the backup answers.
        assert elapsed < 3.5
        assert resp.status_code == 200 and resp.headers["x-detour-provider"] == "backup"


# --- OpenAI SDK ---------------------------------------------------------------------------------


def test_openai_chat_completion_fails_over_on_500(rig: Factory) -> None:
    r = rig()
    r.primary.fault("status", status=500)
    raw = r.codex().chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-detour-provider"] == "backup"
    assert raw.parse().choices[0].message.content == "hello from backup"
    assert r.primary.received[0].headers["authorization"] == f"Bearer {CLIENT_KEY}"
    got = r.backup.received[0]
    assert got.headers["authorization"] == f"Bearer {BACKUP_KEY}"
    assert got.json["model"] == "backup-gpt"  # type: ignore[index]


def test_openai_stream_healthy_then_fails_over_on_500(rig: Factory) -> None:
    r = rig()
    raw = r.codex().chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert raw.headers["x-detour-provider"] == "primary"
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == "hello from primary"
    r.primary.fault("status", status=500)
    chunks = list(
        r.codex().chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "hello from backup"
    assert chunks[-1].choices[0].finish_reason == "stop"


# --- when nothing works -------------------------------------------------------------------------


def test_all_providers_failing_returns_the_last_providers_error(rig: Factory) -> None:
    r = rig()
    r.primary.fault("status", status=500)
    r.backup.fault("status", status=500)
    started = time.monotonic()
    with pytest.raises(anthropic.InternalServerError) as info:
        r.ask()
    assert time.monotonic() - started < 8.0
    assert info.value.status_code == 500
    assert info.value.response.headers["x-mock-provider"] == "backup"
    assert "mock backup" in str(info.value)
    assert r.primary.count() == 1 and r.backup.count() == 1


def test_nothing_could_be_tried_gives_503_in_anthropic_shape(rig: Factory) -> None:
    r = rig()
    r.primary.fault("refuse")
    r.backup.fault("refuse")
    started = time.monotonic()
    resp = r.http().post("/v1/messages", json={"model": "claude-sonnet-4", "max_tokens": 8, "messages": MSG})
    assert time.monotonic() - started < 8.0
    assert resp.status_code == 503
    assert int(resp.headers["retry-after"]) >= 1
    body = resp.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "overloaded_error"
    assert "primary" in body["error"]["message"] and "backup" in body["error"]["message"]
    # the SDK recognises it
    with pytest.raises(anthropic.APIStatusError) as info:
        r.ask()
    assert info.value.status_code == 503


def test_all_providers_hanging_is_bounded(rig: Factory) -> None:
    r = rig(timeouts={"connect": "500ms", "first_byte": "500ms"})
    r.primary.fault("hang")
    r.backup.fault("hang")
    started = time.monotonic()
    resp = r.http().post("/v1/messages", json={"model": "claude-sonnet-4", "max_tokens": 8, "messages": MSG})
    elapsed = time.monotonic() - started
    assert elapsed < 6.0, elapsed  # two attempts of connect + first_byte (1s each), with slack
    assert resp.status_code == 504
    assert resp.json()["type"] == "error"
    r.primary.healthy()
    r.backup.healthy()


# --- circuit breaker and switch log --------------------------------------------------------------


def test_breaker_opens_then_traffic_returns_to_primary(rig: Factory) -> None:
    r = rig(breaker={"failure_threshold": 2, "open_for": "1s", "max_open_for": "1s"})
    r.primary.fault("status", status=500)
    for _ in range(2):
        assert r.served_by() == "backup"
    assert r.primary.count() == 2
    for _ in range(3):  # circuit open: the primary is skipped
        assert r.served_by() == "backup"
    assert r.primary.count() == 2
    r.primary.healthy()
    assert poll(lambda: r.served_by() == "primary", timeout=10.0, interval=0.1)
    # The switch back comes when the circuit closes: with success_threshold 2, at the second probe.
    assert "failover switch claude: backup -> primary" not in r.mitm.log_text()
    assert r.served_by() == "primary"
    assert r.mitm.wait_for_log("failover switch claude: backup -> primary", timeout=5.0)
    log = r.mitm.log_text()
    assert log.count("failover switch claude: primary -> backup") == 1
    assert log.count("failover switch claude: backup -> primary") == 1
    assert "claude/primary circuit closed -> open" in log
    assert BACKUP_KEY not in log and CLIENT_KEY not in log


# --- system proxy mode ------------------------------------------------------------------------------


def test_system_proxy_mode_routes_the_real_host_to_the_local_mock(rig: Factory) -> None:
    r = rig(regular=True)
    assert poll(lambda: r.mitm.ca_cert_path.exists(), timeout=10.0)
    ctx = ssl.create_default_context(cafile=str(r.mitm.ca_cert_path))
    with httpx.Client(proxy=r.mitm.proxy_url, verify=ctx, timeout=SDK_TIMEOUT, trust_env=False) as c:
        resp = c.post(
            "https://api.anthropic.com/v1/messages",
            headers={"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"},
            json={"model": "claude-sonnet-4", "max_tokens": 8, "messages": MSG},
        )
    assert resp.status_code == 200
    assert resp.headers["x-detour-provider"] == "primary"
    assert resp.json()["content"][0]["text"] == "hello from primary"
    assert r.primary.count("/v1/messages") == 1
    assert client_credential(r.primary.received[0]) == CLIENT_KEY
    # the official SDK through the system proxy, with a failover
    r.primary.fault("status", status=529)
    client = anthropic.Anthropic(
        api_key=CLIENT_KEY,
        max_retries=0,
        http_client=httpx.Client(proxy=r.mitm.proxy_url, verify=ctx, timeout=SDK_TIMEOUT, trust_env=False),
    )
    raw = client.messages.with_raw_response.create(model="claude-sonnet-4", max_tokens=8, messages=MSG)
    assert raw.headers["x-detour-provider"] == "backup"
    assert raw.parse().content[0].text == "hello from backup"
    assert r.backup.received[0].headers["authorization"] == f"Bearer {BACKUP_KEY}"


# --- side paths ---------------------------------------------------------------------------------------


def test_side_paths_go_to_the_origin_never_to_a_provider(
    tmp_path: Path,
    mock_factory: Callable[[str], MockProvider],
    mitmdump_factory: Callable[..., Mitmdump],
) -> None:
    origin, first, second = mock_factory("origin"), mock_factory("first"), mock_factory("second")
    config = tmp_path / "config.yaml"
    local = {
        "hosts": ["localhost"],
        "error_shape": "anthropic",
        "retry_same": {"attempts": 0},
        "providers": [provider("first", first), provider("second", second)],
    }
    doc = config_doc([provider("x", first)], extra_apps={"local": local})
    write_config(config, doc)
    port = free_port()
    mitmdump_factory(config, reverse={port: f"http://localhost:{origin.port}"})
    first.fault("status", status=500)  # even when the first provider fails, side paths stay put
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=SDK_TIMEOUT, trust_env=False) as c:
        side = c.get("/api/claude_code/settings")
        assert side.status_code == 200
        assert side.json() == {"side": True, "provider": "origin", "path": "/api/claude_code/settings"}
        assert "x-detour-provider" not in side.headers
        model = c.post("/v1/messages", json={"model": "claude-sonnet-4", "max_tokens": 8, "messages": MSG})
        assert model.status_code == 200
        assert model.headers["x-detour-provider"] == "second"
    assert origin.count("/api/") == 1 and origin.count("/v1/") == 0
    assert first.count("/api/") == 0 and second.count("/api/") == 0
    assert first.count("/v1/messages") == 1 and second.count("/v1/messages") == 1


# --- hot reload -----------------------------------------------------------------------------------------


def test_hot_reload_reorders_the_queue_and_rejects_a_bad_file(rig: Factory) -> None:
    r = rig(extra_args=("--set", "detour_watch_ms=100"))
    assert r.served_by() == "primary"
    doc = yaml.safe_load(r.config.read_text())
    doc["apps"]["claude"]["providers"].reverse()
    write_config(r.config, doc)
    assert poll(lambda: r.served_by() == "backup", timeout=10.0, interval=0.1)
    primary_before = r.primary.count("/v1/messages")

    bad = dict(doc, bogus_key=1)
    write_config(r.config, bad)
    assert r.mitm.wait_for_log("config not reloaded", timeout=10.0)
    assert "bogus_key" in r.mitm.log_text()
    for _ in range(3):
        assert r.served_by() == "backup"
    assert r.primary.count("/v1/messages") == primary_before

    # a provider removed: only the remaining one is used
    queue = doc["apps"]["claude"]["providers"]
    doc["apps"]["claude"]["providers"] = [p for p in queue if p["id"] == "primary"]
    write_config(r.config, doc)
    assert poll(lambda: r.served_by() == "primary", timeout=10.0, interval=0.1)


# --- credentials ----------------------------------------------------------------------------------------


def test_keys_never_cross_providers_across_a_failover(rig: Factory) -> None:
    r = rig()
    r.primary.fault("status", status=529, times=1)
    assert r.served_by() == "backup"
    assert r.served_by() == "primary"  # primary healthy again, first in the queue
    primary_values = all_header_values(r.primary)
    backup_values = all_header_values(r.backup)
    assert r.primary.count() == 2 and r.backup.count() == 1
    assert all(client_credential(rec) == CLIENT_KEY for rec in r.primary.received)
    assert not any(BACKUP_KEY in v for v in primary_values)
    assert not any(CLIENT_KEY in v for v in backup_values)
    assert BACKUP_KEY not in json.dumps([r.body.decode("latin-1") for r in r.primary.received])


def test_keyed_primary_and_keyed_backup_each_get_only_their_own_key(rig: Factory) -> None:
    r = rig(primary_key=True, backup_auth="x-api-key")
    r.primary.fault("status", status=503, times=1)
    assert r.served_by() == "backup"
    p, b = r.primary.received[0], r.backup.received[0]
    assert p.headers["x-api-key"] == PRIMARY_KEY
    assert b.headers["x-api-key"] == BACKUP_KEY
    assert "authorization" not in p.headers and "authorization" not in b.headers
    assert not any(CLIENT_KEY in v or BACKUP_KEY in v for v in all_header_values(r.primary))
    assert not any(CLIENT_KEY in v or PRIMARY_KEY in v for v in all_header_values(r.backup))
    log = r.mitm.log_text()
    assert PRIMARY_KEY not in log and BACKUP_KEY not in log


# --- OpenAI Responses (Codex) --------------------------------------------------------------------


def test_healthy_responses_streams_never_count_as_failures(rig: Factory) -> None:
    """A complete Responses stream ends with `response.completed` and no `[DONE]`: it is a success.
    (Before the redesign, each such stream was recorded as a failure, and a few in a row opened the
    breaker of a healthy provider.)"""
    r = rig(breaker={"failure_threshold": 2, "open_for": "30s", "max_open_for": "30s"})
    for _ in range(4):
        raw = r.codex().responses.with_raw_response.create(model="gpt-4o", input="hi", stream=True)
        assert raw.headers["x-detour-provider"] == "primary"
        events = list(raw.parse())
        assert events[-1].type == "response.completed"
    with r.codex().responses.stream(model="gpt-4o", input="hi") as stream:
        assert stream.get_final_response().output_text == "hello from primary"
    assert r.backup.count() == 0
    assert "circuit closed -> open" not in r.mitm.log_text()


def test_a_failing_responses_stream_fails_over_before_the_first_byte(rig: Factory) -> None:
    r = rig()
    r.primary.fault("status", status=503, times=1)
    with r.codex().responses.stream(model="gpt-4o", input="hi") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert final.output_text == "hello from backup"
    assert events[-1].type == "response.completed"
    assert r.backup.received[0].json["model"] == "backup-gpt"  # type: ignore[index]
