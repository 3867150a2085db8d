"""Security: a key goes only where it belongs. Each test plays one attack against a real mitmdump and
mock providers, and checks every place a key could surface: what providers received, what the
client got, the log, saved flows, mitmweb's flow list and the state database."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import configs
import pytest
from configs import BACKUP_KEY_ENV, CLIENT_KEY, KEY_B, KEY_ENV, KEY_P, PRIMARY_KEY_ENV, SECRETS, secret_leaks
from h2client import h2_requests
from harness import Mitmdump, free_port, post_json, wait_for_port
from mockprovider import MockProvider
from rawhttp import fetch, request_for
from tlscerts import make_ca

pytestmark = pytest.mark.integration

MdFactory = Callable[..., Mitmdump]
MSG = {"model": "claude-test", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


def write_config(tmp_path: Path, apps: dict[str, Any], **kw: Any) -> Path:
    return configs.write(tmp_path / "config.yaml", configs.config(apps, **kw))


def keyed_claude(p: MockProvider, b: MockProvider) -> dict[str, Any]:
    """The usual app: Claude's host, `primary` with KEY_P then `backup` with KEY_B."""
    return {"claude": configs.app("api.anthropic.com", configs.keyed_pair(p.base_url, b.base_url))}


def serve_keyed_claude(
    tmp_path: Path, mitmdump_factory: MdFactory, p: MockProvider, b: MockProvider, **kw: Any
) -> tuple[int, Mitmdump]:
    """Detour for `keyed_claude` on a base-URL listener: its port and the running mitmdump."""
    port = free_port()
    md = mitmdump_factory(
        write_config(tmp_path, keyed_claude(p, b)),
        reverse={port: "https://api.anthropic.com"},
        env=KEY_ENV,
        **kw,
    )
    return port, md


def assert_no_key_in_state(folder: Path) -> None:
    """The state database and its WAL files hold no secret (as bytes: what a reader of the disk gets)."""
    for suffix in ("", "-wal", "-shm"):
        f = folder / f"state.db{suffix}"
        if f.exists():
            assert not secret_leaks(f.read_bytes()), f.name


def flows_in(path: Path) -> list[Any]:
    from mitmproxy import io as mio

    with path.open("rb") as fh:
        return list(mio.FlowReader(fh).stream())


# --- 1. HTTP/2: every multiplexed request reaches only its provider, with that provider's key ----------


@pytest.mark.timeout(90)
def test_h2_multiplexed_requests_each_reach_only_their_provider_with_its_key(
    tmp_path: Path, mitmdump_factory: MdFactory
) -> None:
    ca = make_ca(tmp_path / "ca")
    with (
        MockProvider("primary", tls=ca.server_context()).start() as a,
        MockProvider("backup", tls=ca.server_context()).start() as b,
    ):
        queue = [
            configs.provider("primary", a.base_url, PRIMARY_KEY_ENV),
            configs.provider("backup", b.base_url, BACKUP_KEY_ENV),
        ]
        cfg = write_config(tmp_path, {"claude": configs.app("api.anthropic.com", queue)})
        md = mitmdump_factory(
            cfg,
            regular_port=free_port(),
            env=KEY_ENV,
            extra_args=["--set", f"ssl_verify_upstream_trusted_ca={ca.ca_file}"],
        )
        assert md.regular_port is not None and wait_for_port(md.regular_port)
        path, body, headers = request_for("anthropic", False)
        headers = {**headers, "content-length": str(len(body))}
        (warm,) = h2_requests(md.regular_port, md.ca_cert_path, "api.anthropic.com", [(path, body, headers)])
        assert warm[0] == 200 and warm[1]["x-detour-provider"] == "primary"
        a.fault("refuse")
        answers = h2_requests(
            md.regular_port, md.ca_cert_path, "api.anthropic.com", [(path, body, headers)] * 6
        )
        assert [(s, h.get("x-detour-provider")) for s, h, _ in answers] == [(200, "backup")] * 6
        assert len(b.received) == 6
        for rec in b.received:
            assert rec.headers["x-api-key"] == KEY_B
            assert rec.headers["host"] == f"127.0.0.1:{b.port}"
            assert not secret_leaks(json.dumps(rec.raw_headers).encode(), (KEY_P, CLIENT_KEY))
        assert len(a.received) == 1 and a.received[0].headers["x-api-key"] == KEY_P
        md.stop()
        with sqlite3.connect(tmp_path / "state.db") as db:
            rows = db.execute("SELECT provider, outcome FROM attempt ORDER BY id").fetchall()
        assert rows.count(("primary", "success")) == 1  # the warm-up only: no success recorded for dead A
        assert rows.count(("backup", "success")) == 6


# --- 2. a client that may not use the routes reaches no loopback or self address through Detour -------


@pytest.fixture
def netns() -> Iterator[tuple[str, str, str]]:
    """A network namespace joined to this one by a veth pair: (name, our address, its address)."""
    name = f"dt{uuid.uuid4().hex[:8]}"
    host_if, ns_if = f"{name}h", f"{name}n"
    octet = int(name[2:4], 16) % 200 + 20
    ours, theirs = f"10.{octet}.77.1", f"10.{octet}.77.2"
    commands = [
        ["ip", "netns", "add", name],
        ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
        ["ip", "link", "set", ns_if, "netns", name],
        ["ip", "addr", "add", f"{ours}/30", "dev", host_if],
        ["ip", "link", "set", host_if, "up"],
        ["ip", "netns", "exec", name, "ip", "addr", "add", f"{theirs}/30", "dev", ns_if],
        ["ip", "netns", "exec", name, "ip", "link", "set", ns_if, "up"],
        ["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
    ]
    try:
        for command in commands:
            subprocess.run(command, check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        pytest.skip(f"can't create a network namespace here ({e})")
    try:
        yield name, ours, theirs
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


ATTACKER = """
import socket, sys
host, port, lines = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
for line in lines:
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(line.encode().replace(b"|", b"\\r\\n"))
    try:
        print(s.recv(200).split(b"\\r\\n")[0].decode(errors="replace"), flush=True)
    except OSError as e:
        print("error", e, flush=True)
    s.close()
"""


@pytest.mark.timeout(90)
def test_a_foreign_client_reaches_no_loopback_or_self_address_in_any_spelling(
    tmp_path: Path, mitmdump_factory: MdFactory, netns: tuple[str, str, str]
) -> None:
    name, ours, _ = netns
    with (
        MockProvider("primary").start() as p,
        MockProvider("backup").start() as b,
        MockProvider("other-local-service").start() as other,
    ):
        cfg = write_config(tmp_path, keyed_claude(p, b))
        reverse, regular = free_port(), free_port()
        md = mitmdump_factory(
            cfg,
            reverse={reverse: "https://api.anthropic.com"},
            env=KEY_ENV,
            extra_args=["--mode", f"regular@{ours}:{regular}"],
        )
        assert wait_for_port(regular, host=ours)
        body = json.dumps(MSG)
        tail = f"x-api-key: attacker|content-length: {len(body)}||{body}"
        targets = [
            f"0.0.0.0:{reverse}",
            f"0:{reverse}",
            f"[::]:{reverse}",
            f"[::ffff:127.0.0.1]:{reverse}",
            f"127.1:{reverse}",
            f"2130706433:{reverse}",
            f"0x7f.1:{reverse}",
            f"localhost:{reverse}",
            f"{ours}:{reverse}",
            f"127.0.0.1:{other.port}",
        ]
        lines = [f"POST http://{t}/v1/messages HTTP/1.1|Host: {t}|{tail}" for t in targets]
        lines += [f"CONNECT {t} HTTP/1.1|Host: {t}||" for t in (f"127.0.0.1:{reverse}", f"0:{reverse}")]
        run = subprocess.run(
            ["ip", "netns", "exec", name, sys.executable, "-c", ATTACKER, ours, str(regular), *lines],
            capture_output=True,
            text=True,
            timeout=60,
        )
        statuses = run.stdout.splitlines()
        assert len(statuses) == len(lines), run.stderr
        assert all(" 403 " in s or s.startswith("error") for s in statuses), list(
            zip(lines, statuses, strict=True)
        )
        assert p.count() == b.count() == other.count() == 0
        assert md.alive


# --- 4. a key Detour put on a request never shows: log, saved flows, mitmweb, state database ----------


@pytest.mark.timeout(120)
def test_no_key_in_logs_saved_flows_or_state_on_any_path(tmp_path: Path, mitmdump_factory: MdFactory) -> None:
    flows = tmp_path / "flows.mitm"
    with MockProvider("primary").start() as p, MockProvider("backup").start() as b:
        cfg = write_config(
            tmp_path,
            keyed_claude(p, b),
            timeouts={"connect": "1s", "first_byte": "500ms", "idle": "500ms"},
        )
        md = mitmdump_factory(
            cfg,
            regular_port=free_port(),
            env=KEY_ENV,
            extra_args=["-w", str(flows), "--set", "flow_detail=4", "--set", "termlog_verbosity=debug"],
        )
        assert md.regular_port is not None
        host = "api.anthropic.com"
        cases: list[tuple[dict[str, Any] | None, dict[str, Any] | None, bool]] = [
            (None, None, False),
            (None, None, True),
            ({"kind": "status", "status": 529}, None, False),
            ({"kind": "status", "status": 529}, None, True),
            ({"kind": "hang"}, None, False),
            ({"kind": "hang"}, None, True),
            ({"kind": "sse_stall"}, None, True),
            ({"kind": "reset"}, None, False),
            # the failover attempt itself times out (round 1 kept the backup's key on that flow)
            ({"kind": "status", "status": 529}, {"kind": "hang"}, False),
            ({"kind": "status", "status": 529}, {"kind": "hang"}, True),
        ]
        for p_fault, b_fault, stream in cases:
            for mock, fault in ((p, p_fault), (b, b_fault)):
                if fault is not None:
                    mock.fault(fault["kind"], times=1, **{k: v for k, v in fault.items() if k != "kind"})
            fetch(md.regular_port, host, *request_for("anthropic", stream), timeout=10)
            p.healthy()
            b.healthy()
        # every provider failing, and a client that leaves mid-stream
        p.fault("status", status=503)
        b.fault("status", status=503)
        fetch(md.regular_port, host, *request_for("anthropic", False))
        p.healthy()
        b.healthy()
        p.fault("slow_stream", interval=0.3)
        fetch(md.regular_port, host, *request_for("anthropic", True), timeout=0.4)
        md.stop()  # shutdown: the last path
        assert not secret_leaks(md.log_text().encode()), "a key is in mitmdump's log"
        saved = flows.read_bytes()
        assert saved and not secret_leaks(saved), "a key is in the saved flows"
        assert len(flows_in(flows)) >= 10
        assert_no_key_in_state(tmp_path)


@pytest.mark.timeout(60)
def test_a_client_key_in_the_query_is_masked_in_logs_and_saved_flows(
    tmp_path: Path, mitmdump_factory: MdFactory
) -> None:
    """Gemini's `?key=`: the provider without a key of its own still gets it; nothing else shows it."""
    flows = tmp_path / "flows.mitm"
    with MockProvider("primary").start() as p, MockProvider("backup").start() as b:
        queue = [
            configs.provider("primary", p.base_url, api_key="none"),
            configs.provider("backup", b.base_url, BACKUP_KEY_ENV),
        ]
        cfg = write_config(tmp_path, {"gemini": configs.app("generativelanguage.googleapis.com", queue)})
        port = free_port()
        md = mitmdump_factory(
            cfg, reverse={port: "https://generativelanguage.googleapis.com"}, env=KEY_ENV,
            extra_args=["-w", str(flows), "--set", "flow_detail=4"],
        )  # fmt: skip
        doc = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
        path = f"/v1beta/models/gemini-test:generateContent?alt=json&key={CLIENT_KEY}"
        p.fault("status", status=503, times=1)
        status, headers, _ = post_json(port, path, doc, {})
        assert status == 200 and headers["x-detour-provider"] == "backup"
        (to_primary,) = p.received
        assert f"key={CLIENT_KEY}" in to_primary.path  # its only credential
        (to_backup,) = b.received
        assert CLIENT_KEY not in to_backup.path and to_backup.headers["x-goog-api-key"] == KEY_B
        md.stop()
        assert "generateContent?alt=json&key=***" in md.log_text()
        assert not secret_leaks(md.log_text().encode()), "a key is in mitmdump's log"
        saved = flows.read_bytes()
        assert len(flows_in(flows)) == 3 and not secret_leaks(saved), "a key is in the saved flows"


@pytest.mark.timeout(60)
def test_a_key_a_provider_echoes_never_reaches_flows_the_log_or_the_state(
    tmp_path: Path, mitmdump_factory: MdFactory
) -> None:
    """A failing provider echoing its key (body, header, in-stream error event): the client's copy was
    masked in round 1, but the published attempt flows and the failure reasons were not."""
    flows = tmp_path / "flows.mitm"
    with MockProvider("primary").start() as p, MockProvider("backup").start() as b:
        port, md = serve_keyed_claude(
            tmp_path, mitmdump_factory, p, b, extra_args=["-w", str(flows), "--set", "flow_detail=4"]
        )
        error = {"type": "overloaded_error", "message": f"overloaded (key {KEY_P})"}
        echo = {"type": "error", "error": error}
        p.fault("status", times=2, status=529, body=echo, headers={"x-echo-key": KEY_P})
        status, _, _ = post_json(port, "/v1/messages", MSG, {"x-api-key": CLIENT_KEY})
        assert status == 200
        b.fault("sse_error", times=1, after=3, message=f"{'x' * 100} invalid key {KEY_B}")  # after content
        reply = fetch(port, "api.anthropic.com", *request_for("anthropic", True), absolute=False)
        assert b"event: error" in reply.body and not secret_leaks(reply.body)
        md.stop()
        assert "served by backup after primary" in md.log_text()
        assert not secret_leaks(md.log_text().encode()), "a key is in mitmdump's log"
        assert len(flows_in(flows)) >= 5 and not secret_leaks(flows.read_bytes()), "a key is in saved flows"
        assert_no_key_in_state(tmp_path)


@pytest.mark.timeout(90)
def test_mitmweb_never_shows_a_key_while_detour_waits_or_after(
    tmp_path: Path, mitmdump_factory: MdFactory
) -> None:
    password = "detour-test"
    with MockProvider("primary").start() as p, MockProvider("backup").start() as b:
        cfg = write_config(
            tmp_path,
            keyed_claude(p, b),
            timeouts={"connect": "1s", "first_byte": "2s", "idle": "2s"},
        )
        port, web_port = free_port(), free_port()
        mitmdump_factory(
            cfg,
            reverse={port: "https://api.anthropic.com"},
            env=KEY_ENV,
            program="mitmweb",
            extra_args=[
                "--no-web-open-browser",
                "--set",
                f"web_port={web_port}",
                "--set",
                f"web_password={password}",
            ],
        )
        assert wait_for_port(web_port, timeout=20)
        p.fault("hang")
        waiting = threading.Thread(
            target=post_json, args=(port, "/v1/messages", MSG, {"x-api-key": CLIENT_KEY})
        )
        waiting.start()
        seen = []
        try:
            assert p.wait_for_requests(1, timeout=5)
            for _ in range(10):  # while Detour waits for the primary's headers
                seen.append(web_flows(web_port, password))
                time.sleep(0.1)  # pacing the snapshots, not synchronisation
        finally:
            p.healthy()
            waiting.join(10)
        seen.append(web_flows(web_port, password))
        blob = json.dumps(seen).encode()
        assert b"api.anthropic.com" in blob  # the snapshots did see the flow
        assert not secret_leaks(blob, SECRETS), "a key is in mitmweb's flow list"


def web_flows(web_port: int, password: str) -> list[dict[str, Any]]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", web_port, timeout=10)
    try:
        conn.request("GET", "/flows", headers={"Authorization": f"Bearer {password}"})
        response = conn.getresponse()
        assert response.status == 200
        flows: list[dict[str, Any]] = json.loads(response.read())
        return flows
    finally:
        conn.close()


# --- 5. a keyed provider gets none of the client's credentials ----------------------------------------


def test_a_keyed_provider_gets_no_client_credential_of_any_kind(
    tmp_path: Path, mitmdump_factory: MdFactory
) -> None:
    with MockProvider("backup").start() as b:
        queue = [configs.provider("backup", b.base_url, BACKUP_KEY_ENV, auth="bearer")]
        cfg = write_config(tmp_path, {"codex": configs.app("api.openai.com", queue)})
        port = free_port()
        mitmdump_factory(cfg, reverse={port: "https://api.openai.com"}, env=KEY_ENV)
        client = {
            "authorization": f"Bearer {CLIENT_KEY}",
            "api-key": CLIENT_KEY,
            "x-api-key": CLIENT_KEY,
            "x-goog-api-key": CLIENT_KEY,
            "proxy-authorization": f"Basic {CLIENT_KEY}",
            "cookie": f"session={CLIENT_KEY}",
            "openai-organization": "org-client",
            "openai-project": "proj-client",
        }
        doc = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
        status, _, _ = post_json(port, f"/v1/chat/completions?key={CLIENT_KEY}", doc, client)
        assert status == 200
        (rec,) = b.received
        assert rec.headers["authorization"] == f"Bearer {KEY_B}"
        sent = json.dumps(rec.raw_headers) + rec.path
        assert CLIENT_KEY not in sent and "org-client" not in sent and "proj-client" not in sent


# --- 6. a path that leaves its route is not routed and gets no key -----------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/messages/../../admin/keys",
        "/v1/messages/%2e%2e/%2E%2E/admin/keys",
        "/v1/messages%2f..%2f..%2fadmin",
        "/v1/messages/..;/admin",
        "/v1/messages/.%2e/admin",
    ],
)
def test_dot_segments_never_leave_the_route_with_a_key(
    path: str, tmp_path: Path, mitmdump_factory: MdFactory
) -> None:
    with MockProvider("origin").start() as origin, MockProvider("backup").start() as b:
        cfg = write_config(
            tmp_path,
            {
                "local": configs.app(
                    "localhost",
                    [configs.provider("backup", b.base_url + "/api", BACKUP_KEY_ENV)],
                    "anthropic",
                )
            },
        )
        port = free_port()
        mitmdump_factory(cfg, reverse={port: f"http://localhost:{origin.port}"}, env=KEY_ENV)
        post_json(port, path, MSG, {"x-api-key": CLIENT_KEY})
        assert b.count() == 0  # the keyed provider got nothing
        for rec in origin.received:  # what went to the origin carries no key of Detour's
            assert KEY_B not in json.dumps(rec.raw_headers)


def test_gemini_model_paths_with_dot_segments_are_not_routed(
    tmp_path: Path, mitmdump_factory: MdFactory
) -> None:
    with MockProvider("origin").start() as origin, MockProvider("backup").start() as b:
        queue = [configs.provider("backup", b.base_url, BACKUP_KEY_ENV)]
        cfg = write_config(tmp_path, {"gem": configs.app("localhost", queue, "gemini")})
        port = free_port()
        mitmdump_factory(cfg, reverse={port: f"http://localhost:{origin.port}"}, env=KEY_ENV)
        post_json(port, "/v1beta/models/../../v1/admin:generateContent", {}, {"x-goog-api-key": CLIENT_KEY})
        assert b.count() == 0


# --- 7. a provider's key never reaches the client -------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "params"),
    [
        ("header-200", {"status": 200, "headers": {"x-echo": f"your key {KEY_P}"}, "body": {"content": []}}),
        ("body-200", {"status": 200, "body": {"content": [{"type": "text", "text": f"key {KEY_P}"}]}}),
        ("header-429", {"status": 429, "headers": {"x-echo": KEY_P}}),
        ("location-302", {"status": 302, "headers": {"location": f"https://evil.example/?k={KEY_P}"}}),
    ],
)
def test_a_providers_key_never_reaches_the_client(
    where: str, params: dict[str, Any], tmp_path: Path, mitmdump_factory: MdFactory
) -> None:
    with MockProvider("primary").start() as p, MockProvider("backup").start() as b:
        port, _ = serve_keyed_claude(tmp_path, mitmdump_factory, p, b)
        p.fault("status", times=1, **params)
        status, headers, body = post_json(port, "/v1/messages", MSG, {"x-api-key": CLIENT_KEY})
        blob = json.dumps(headers).encode() + body
        assert not secret_leaks(blob, (KEY_P, KEY_B)), blob[:400]
        if where == "location-302":  # not followed, not a success: the backup answers
            assert status == 200 and headers["x-detour-provider"] == "backup"
            assert "primary (http 302" in headers["x-detour-attempts"]


def test_an_error_event_echoing_a_key_is_masked_in_the_stream(
    tmp_path: Path, mitmdump_factory: MdFactory
) -> None:
    with MockProvider("primary").start() as p, MockProvider("backup").start() as b:
        port, _ = serve_keyed_claude(tmp_path, mitmdump_factory, p, b)
        p.fault("sse_error", times=1, after=3, message=f"invalid key {KEY_P}")  # after content began
        reply = fetch(port, "api.anthropic.com", *request_for("anthropic", True), absolute=False)
        assert b"event: error" in reply.body
        assert not secret_leaks(reply.body + json.dumps(reply.headers).encode(), (KEY_P, KEY_B))


# --- 10. proxy_debug prints raw bytes: Detour warns ------------------------------------------------------


def test_proxy_debug_is_warned_about(tmp_path: Path, mitmdump_factory: MdFactory) -> None:
    with MockProvider("primary").start() as p:
        cfg = write_config(
            tmp_path, {"claude": configs.app("api.anthropic.com", [configs.provider("p", p.base_url)])}
        )
        md = mitmdump_factory(
            cfg, reverse={free_port(): "https://api.anthropic.com"}, extra_args=["--set", "proxy_debug=true"]
        )
        assert md.wait_for_log("proxy_debug is on", 10), md.log_tail()
