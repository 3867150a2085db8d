"""A real mitmweb: Replay clicked twice on a routed flow (POST /flows/<id>/replay, what the UI sends):
both are refused by Detour, neither leaves (kept from an adversarial review)."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from typing import Any

import pytest
from test_mitmweb import WEB_PASSWORD, post_message, start_web, web_flows

pytestmark = pytest.mark.integration
XSRF = "detourxsrf"


def web_post(web_port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", web_port, timeout=10)
    try:
        conn.request("POST", path, headers={
            "Authorization": f"Bearer {WEB_PASSWORD}", "X-XSRFToken": XSRF,
            "Cookie": f"_xsrf={XSRF}; _mitmproxy_xsrf={XSRF}"})  # fmt: skip
        return conn.getresponse().status
    finally:
        conn.close()


def settled(web_port: int, flow_id: str, after: float = 0.0) -> dict[str, Any]:
    """The flow once a replay started after `after` has its answer (polled, with a deadline)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        (flow,) = [f for f in web_flows(web_port) if f["id"] == flow_id]
        answer = flow.get("response") or {}
        if (answer and answer.get("timestamp_start", 0) > after) or flow.get("error"):
            return flow
        time.sleep(0.1)
    raise AssertionError("replay never settled")


def test_replaying_a_routed_flow_twice_is_refused_twice(
    tmp_path: Path, mock_factory: Any, mitmdump_factory: Any
) -> None:
    primary, backup, port, web_port = start_web(tmp_path, mock_factory, mitmdump_factory)
    assert post_message(port) == 200
    (routed,) = web_flows(web_port)
    sent = primary.count() + backup.count()
    answered_at = routed["response"]["timestamp_start"]
    for _ in range(2):
        assert web_post(web_port, f"/flows/{routed['id']}/replay") == 200
        flow = settled(web_port, routed["id"], answered_at)
        assert flow.get("error") is None, flow["error"]
        assert flow["response"]["status_code"] == 409, json.dumps(flow)[:2000]
        assert flow["comment"] == "replay refused by Detour: send it again from the client"
        answered_at = flow["response"]["timestamp_start"]
    assert primary.count() + backup.count() == sent  # no provider saw a replay
