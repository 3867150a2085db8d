"""A provider that answered a moment ago refuses the next connection: the request must still be
served, with the right credentials, by the next provider (the `server_connect` path)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from harness import free_port, post_json

pytestmark = pytest.mark.integration

CLIENT_KEY = "client-own-key-0001"
BACKUP_KEY = "sk-connect-backup-0002"


def post(port: int) -> tuple[int, dict[str, str], bytes]:
    document = {"model": "claude-x", "max_tokens": 5, "messages": []}
    return post_json(port, "/v1/messages", document, {"x-api-key": CLIENT_KEY})


@pytest.mark.parametrize("backup_has_key", [True, False], ids=["keyed-backup", "keyless-backup"])
def test_warm_provider_refusing_moves_request_on(
    tmp_path: Path, mock_factory, mitmdump_factory, backup_has_key: bool
) -> None:
    primary, backup = mock_factory("primary"), mock_factory("backup")
    second = {"id": "backup", "base_url": backup.base_url}
    if backup_has_key:
        second["api_key"] = "${DETOUR_CONNECT_KEY}"
    config = {
        "state": "state.db",
        "switch_min_interval": "0s",
        "breaker": {"failure_threshold": 5},
        "timeouts": {"connect": "1s", "first_byte": "2s", "idle": "2s"},
        "apps": {
            "claude": {
                "hosts": ["api.anthropic.com"],
                "providers": [{"id": "primary", "base_url": primary.base_url}, second],
            }
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    env = {"DETOUR_CONNECT_KEY": BACKUP_KEY}
    mitmdump_factory(path, reverse={port: "https://api.anthropic.com"}, env=env)

    status, headers, _ = post(port)  # the primary is warm from now on: no probe in `request`
    assert (status, headers.get("x-detour-provider")) == (200, "primary")

    primary.fault("refuse")
    status, headers, body = post(port)  # a new client connection, so a new upstream connection
    assert status == 200, body
    assert headers.get("x-detour-provider") == "backup"
    assert "primary (connect" in headers.get("x-detour-attempts", "")
    assert b"hello from backup" in body

    received = backup.received[-1].headers
    if backup_has_key:
        assert received.get("x-api-key") == BACKUP_KEY
        assert CLIENT_KEY not in json.dumps(backup.received[-1].headers)
    else:
        assert received.get("x-api-key") == CLIENT_KEY
    assert all(BACKUP_KEY not in json.dumps(r.headers) for r in primary.received)
