"""The one config builder for tests: Detour configs as Python dicts, written as YAML.

Every e2e test and the benchmark build their config.yaml here, so a change of the config format is
one change for all of them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import yaml

#: Secrets the tests hand to Detour through the environment, and the variables that carry them.
KEY_P = "sk-primary-KEY-7f3a9c1e5d"
KEY_B = "sk-backup-KEY-2b8e4d6a0c"
CLIENT_KEY = "sk-client-KEY-9d1c3b5a7e"
SECRETS = (KEY_P, KEY_B, CLIENT_KEY)
KEY_ENV = {"DETOUR_T_KEY_P": KEY_P, "DETOUR_T_KEY_B": KEY_B}
PRIMARY_KEY_ENV, BACKUP_KEY_ENV = "DETOUR_T_KEY_P", "DETOUR_T_KEY_B"


def provider(pid: str, base_url: str, key_env: str | None = None, **extra: Any) -> dict[str, Any]:
    """One queue entry; `key_env` names the environment variable holding its key."""
    entry: dict[str, Any] = {"id": pid, "base_url": base_url}
    if key_env:
        entry["api_key"] = f"${{{key_env}}}"
    entry.update(extra)
    return entry


def keyed_pair(primary_url: str, backup_url: str) -> list[dict[str, Any]]:
    """The usual queue: `primary` with KEY_P, `backup` with KEY_B (each in the app's default auth)."""
    return [
        provider("primary", primary_url, "DETOUR_T_KEY_P"),
        provider("backup", backup_url, "DETOUR_T_KEY_B"),
    ]


def app(
    hosts: str | list[str], providers: list[dict[str, Any]], api: str | None = None, **extra: Any
) -> dict[str, Any]:
    entry: dict[str, Any] = {"hosts": [hosts] if isinstance(hosts, str) else list(hosts)}
    # Suites written before same-provider retries count one request per failure; the resilience
    # suite (test_resilience.py) plays the example config's settings instead.
    entry["retry_same"] = {"attempts": 0}
    if api:
        entry["api"] = api
    entry.update(extra)
    entry["providers"] = providers
    return entry


def config(
    apps: dict[str, dict[str, Any]],
    *,
    state: str = "state.db",
    breaker: dict[str, Any] | None = None,
    timeouts: dict[str, Any] | None = None,
    switch_min_interval: str = "0s",
    **extra: Any,
) -> dict[str, Any]:
    """A whole config: small timeouts and a quick breaker, overridable key by key. Whole answers
    get the streams' first-byte limit unless told otherwise (the suites predate the split)."""
    chosen = {"connect": "1s", "first_byte": "1.5s", "idle": "1.5s", **(timeouts or {})}
    chosen.setdefault("first_byte_unstreamed", chosen["first_byte"])
    return {
        "state": state,
        "switch_min_interval": switch_min_interval,
        "breaker": {"failure_threshold": 3, "open_for": "1s", "max_open_for": "2s", **(breaker or {})},
        "timeouts": chosen,
        **extra,
        "apps": apps,
    }


def write(path: Path, document: dict[str, Any] | str) -> Path:
    """Write the file and move its mtime forward, so the config watcher sees every rewrite."""
    before = path.stat().st_mtime if path.exists() else None
    text = document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    if before is not None:
        bumped = max(before + 2.0, time.time())
        os.utime(path, (bumped, bumped))
    return path


def secret_leaks(data: bytes, secrets: tuple[str, ...] = SECRETS) -> list[str]:
    return [s for s in secrets if s.encode() in data]
