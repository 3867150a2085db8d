"""mitmweb: a routed flow shows, in the flow list itself, who served it and which attempts failed why.

Reads mitmweb's own `/flows` JSON (what its UI renders), from a real mitmweb with Detour on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import configs
import pytest
from harness import free_port, post_json, wait_for_port

pytestmark = pytest.mark.integration

CLIENT_KEY = "client-web-key-0001"
BACKUP_KEY = "sk-web-backup-SECRET-0002"
WEB_PASSWORD = "detour-test"  # mitmproxy 12 asks for it; 11 has no such option and ignores it


def post_message(port: int) -> int:
    document = {"model": "claude-x", "max_tokens": 5, "messages": []}
    return post_json(port, "/v1/messages", document, {"x-api-key": CLIENT_KEY})[0]


def web_flows(web_port: int) -> list[dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", web_port, timeout=10)
    try:
        conn.request("GET", "/flows", headers={"Authorization": f"Bearer {WEB_PASSWORD}"})
        response = conn.getresponse()
        assert response.status == 200, response.status
        flows: list[dict[str, Any]] = json.loads(response.read())
        return flows
    finally:
        conn.close()


def start_web(tmp_path: Path, mock_factory: Any, mitmdump_factory: Any) -> tuple[Any, Any, int, int]:
    """A mitmweb with Detour and a keyless primary before a keyed backup: (primary, backup, the
    client's port, mitmweb's port)."""
    primary, backup = mock_factory("primary"), mock_factory("backup")
    queue = [
        configs.provider("primary", primary.base_url),
        configs.provider("backup", backup.base_url, "DETOUR_WEB_KEY"),
    ]
    path = configs.write(
        tmp_path / "config.yaml", configs.config({"claude": configs.app("api.anthropic.com", queue)})
    )
    port, web_port = free_port(), free_port()
    web = mitmdump_factory(
        path,
        reverse={port: "https://api.anthropic.com"},
        env={"DETOUR_WEB_KEY": BACKUP_KEY},
        program="mitmweb",
        extra_args=["--no-web-open-browser", "--set", f"web_port={web_port}",
                    "--set", f"web_password={WEB_PASSWORD}"],
    )  # fmt: skip
    assert wait_for_port(web_port, timeout=20), web.log_tail()
    return primary, backup, port, web_port


def test_flow_list_shows_provider_failed_attempts_and_marker(
    tmp_path: Path, mock_factory, mitmdump_factory
) -> None:
    primary, backup, port, web_port = start_web(tmp_path, mock_factory, mitmdump_factory)

    assert post_message(port) == 200
    primary.fault("status", status=529)
    assert post_message(port) == 200

    flows = web_flows(web_port)
    routed = [f for f in flows if not f.get("is_replay")]
    attempts = [f for f in flows if f.get("is_replay")]
    assert [f["comment"] for f in routed] == [
        "primary · 10 in / 5 out tokens, cost unknown · claude",
        "backup ← primary 529 · 10 in / 5 out tokens, cost unknown · claude",
    ]
    assert not routed[0]["marked"]
    assert routed[1]["marked"]  # the failover stands out in the list
    # Every attempt is a flow of its own with the provider's real answer, the failed primary too.
    assert [f["comment"] for f in attempts] == [
        "attempt 1/2 on primary for claude: failed (http 529)",
        "attempt 2/2 on backup for claude: ok",
    ]
    assert [f["response"]["status_code"] for f in attempts] == [529, 200]
    assert attempts[0]["marked"] and not attempts[1]["marked"]
    # What Detour put on a request is shown masked; nothing in the UI's data carries the key.
    assert ["x-api-key", "***"] in attempts[1]["request"]["headers"]
    # ...nor the client's own key, which the client flow shows masked too.
    assert CLIENT_KEY not in json.dumps(flows)
    assert BACKUP_KEY not in json.dumps(flows)
    assert backup.received[-1].headers["x-api-key"] == BACKUP_KEY


def test_a_continued_stream_is_marked_and_both_attempts_are_shown(
    tmp_path: Path, mock_factory, mitmdump_factory
) -> None:
    primary, _, port, web_port = start_web(tmp_path, mock_factory, mitmdump_factory)
    primary.fault("sse_cut", events=3)  # message_start, the text block, "hello": then reset
    document = {
        "model": "claude-x",
        "max_tokens": 5,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    status, _, body = post_json(port, "/v1/messages", document, {"x-api-key": CLIENT_KEY})
    assert status == 200 and body.count(b"event: message_start") == 1 and b"message_stop" in body

    flows = web_flows(web_port)
    (routed,) = [f for f in flows if not f.get("is_replay")]
    assert routed["comment"].startswith("backup ⤷ primary reset (continued) · ")
    assert routed["marked"] in (":link:", "🔗")  # mitmweb 11 sends the emoji itself
    attempts = [f for f in flows if f.get("is_replay")]
    assert [f["comment"].split(":")[0] for f in attempts] == [
        "attempt 1/2 on primary for claude",
        "attempt 2/2 on backup for claude",
    ]
    assert attempts[0]["comment"].endswith("failed (reset: Connection reset by peer)")
    assert BACKUP_KEY not in json.dumps(flows)


def test_a_streamed_failover_shows_each_attempt_s_streamed_answer(
    tmp_path: Path, mock_factory: Any, mitmdump_factory: Any
) -> None:
    primary, _, port, web_port = start_web(tmp_path, mock_factory, mitmdump_factory)
    primary.fault("status", status=529, times=1)
    document = {"model": "claude-x", "max_tokens": 5, "stream": True, "messages": []}
    status, _, body = post_json(port, "/v1/messages", document, {"x-api-key": CLIENT_KEY})
    assert status == 200 and b"message_stop" in body
    flows = web_flows(web_port)
    (routed,) = [f for f in flows if not f.get("is_replay")]
    assert routed["comment"].startswith("backup ← primary 529 · ")
    attempts = [f for f in flows if f.get("is_replay")]
    # The backup's streamed answer is on its attempt flow, not "content missing".
    assert [(f["response"]["status_code"], f["response"]["contentLength"] > 0) for f in attempts] == [
        (529, True),
        (200, True),
    ]
    assert routed["response"]["contentLength"] > 0
