"""Recovery after an outage (issue 16, item 6), end to end through a real mitmdump.

With the example config's breaker (a circuit opens after 3 failures for 30 s, a failed half-open test
doubles that), a primary that was down and then recovered used to wait out the whole open period
before it got traffic again. The active recovery probe asks it every `recovery_probe` seconds while
its circuit is open, so it is back within about one interval of recovering, with one switch line
each way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import configs
import pytest
import yaml
from harness import REPO_ROOT, Mitmdump, free_port, post_json
from mockprovider import MockProvider

from addon.config import parse_duration

pytestmark = pytest.mark.integration

#: The example config: its breaker block and switch interval are what this test runs with.
EXAMPLE = yaml.safe_load((REPO_ROOT / "config.yaml").read_text(encoding="utf-8"))
BREAKER: dict[str, Any] = EXAMPLE["breaker"]
#: 5 s is the documented default, for an example config that doesn't spell it out.
RECOVERY_PROBE = parse_duration(BREAKER.get("recovery_probe", "5s"))
SWITCH_MIN_INTERVAL = parse_duration(EXAMPLE["switch_min_interval"])
#: How long the primary stays down after its circuit opened.
OUTAGE = 8.0
#: Time between two client requests.
PACE = 0.5
MESSAGES = [{"role": "user", "content": "hi"}]
#: Per dialect: the example's app whose settings it runs with, its host, and one streamed request.
DIALECTS: dict[str, tuple[str, str, str, dict[str, Any], dict[str, str]]] = {
    "anthropic": ("claude", "api.anthropic.com", "/v1/messages",
                  {"model": "claude-sonnet-4", "max_tokens": 16, "stream": True, "messages": MESSAGES},
                  {"x-api-key": configs.CLIENT_KEY, "anthropic-version": "2023-06-01"}),
    "chat": ("codex", "api.openai.com", "/v1/chat/completions",
             {"model": "gpt-5", "stream": True, "messages": MESSAGES},
             {"authorization": f"Bearer {configs.CLIENT_KEY}"}),
}  # fmt: skip


def served_by(port: int, dialect: str) -> str | None:
    _, _, path, body, headers = DIALECTS[dialect]
    status, head, answer = post_json(port, path, body, headers, timeout=15.0)
    assert status == 200, status
    assert answer.rstrip().endswith((b"[DONE]", b'{"type": "message_stop"}')), answer[-200:]
    return head.get("x-detour-provider")


def until(predicate: Callable[[], bool], timeout: float, pace: float = PACE) -> float | None:
    """Poll `predicate` every `pace` seconds; when it first holds, the time it took (None: never)."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() >= deadline:
            return None
        time.sleep(pace)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_a_recovered_primary_is_back_within_one_probe_interval(
    tmp_path: Path,
    mock_factory: Callable[[str], MockProvider],
    mitmdump_factory: Callable[..., Mitmdump],
    dialect: str,
) -> None:
    app_name, host = DIALECTS[dialect][:2]
    primary, backup = mock_factory("primary"), mock_factory("backup")
    settings = {k: v for k, v in EXAMPLE["apps"][app_name].items() if k not in ("hosts", "providers")}
    apps = {
        "claude": configs.app(host, [
            configs.provider("primary", primary.base_url),  # the client's credentials pass through
            configs.provider("backup", backup.base_url, configs.BACKUP_KEY_ENV),
        ], **settings),
    }  # fmt: skip
    document = configs.config(apps, switch_min_interval=EXAMPLE["switch_min_interval"])
    document["breaker"] = dict(BREAKER)  # exactly the example's, no test shortcuts
    document["timeouts"] = dict(EXAMPLE["timeouts"])
    config = configs.write(tmp_path / "config.yaml", document)
    port = free_port()
    md = mitmdump_factory(config, reverse={port: f"https://{host}"}, env=configs.KEY_ENV)

    def served_by_here() -> str | None:
        return served_by(port, dialect)

    assert served_by_here() == "primary"
    primary.fault("status", status=503)  # every path, the probe's model list included
    for _ in range(int(BREAKER["failure_threshold"])):
        assert served_by_here() == "backup"  # failed over; the third failure opens the circuit
    assert md.wait_for_log("failover switch claude: primary -> backup", 5.0), md.log_tail()
    down_since = time.monotonic()

    # The outage goes on: every request is served by the backup, the recovery probes fail.
    assert until(lambda: served_by_here() != "backup", OUTAGE) is None
    primary.healthy()
    healthy_at = time.monotonic()

    back = until(lambda: served_by_here() == "primary", RECOVERY_PROBE + 3.0)
    print(f"\nprimary down {healthy_at - down_since:.1f}s after its circuit opened; "
          f"serving again {back if back is None else round(back, 2)}s after it recovered "
          f"(recovery_probe {RECOVERY_PROBE:g}s, open_for {BREAKER['open_for']})")  # fmt: skip
    assert back is not None, md.log_tail()
    assert back <= RECOVERY_PROBE + 3.0

    # success_threshold real successes close the circuit; that is the switch back. It waits for
    # switch_min_interval after the switch away, which the outage has already outlasted here.
    switched = until(
        lambda: served_by_here() == "primary"
        and "failover switch claude: backup -> primary" in md.log_text(),
        max(3.0, SWITCH_MIN_INTERVAL - (time.monotonic() - down_since) + 3.0),
    )
    log = md.log_text()
    assert switched is not None, md.log_tail()
    assert "claude/primary circuit open -> half_open (recovery probe answered http 200)" in log
    assert log.count("failover switch claude: primary -> backup") == 1, log
    assert log.count("failover switch claude: backup -> primary") == 1, log
    assert served_by_here() == "primary"
    assert configs.secret_leaks(log.encode()) == []
