"""mitmweb as a user sees it: headless Chromium, driven over the DevTools protocol, loads a real
mitmweb running Detour after a failover, an all-failed request and a request served by a backup
because the primary's circuit is open, and the test reads the **rendered** page: the serving
provider in each routed row without clicking, the markers, and an attempt flow's real answer.

Screenshots are written to the test's temporary folder (`list.png`, `attempt.png`), never the repo.
Needs Chromium (`.ci/run` installs Debian's package when it is missing).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import configs
import pytest
from devtools import Chromium, Page, chromium_executable
from harness import Mitmdump, free_port, post_json
from mockprovider import MockProvider

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(chromium_executable() is None, reason="no Chromium here (.ci/run installs it)"),
]

WEB_PASSWORD = "detour-browser-test"
MITMWEB_12 = sys.version_info >= (3, 12)  # the supported stacks: 3.11 + mitmproxy 11, 3.12 + 12
#: Every rendered row of the flow list (the virtual list's spacer rows have one cell).
ROWS = "Array.from(document.querySelectorAll('.flow-table tbody tr')).filter(r => r.cells.length > 1)"
ROW_FACTS = (
    ROWS + ".map(r => { const cell = c => r.querySelector(c) || {innerText: ''}; return {"
    "comment: cell('.col-comment').innerText,"
    "width: r.querySelector('.col-comment') ? cell('.col-comment').getBoundingClientRect().width : 0,"
    "marker: cell('.marker').innerText, status: cell('.col-status').innerText}; })"
)


def ask(port: int) -> int:
    document = {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    return post_json(port, "/v1/messages", document, {"x-api-key": "client-browser-key"})[0]


def open_attempt(page: Page, comment: str, shows: str) -> str:
    """Click the row with `comment`, then its Response tab; the detail pane's rendered text once it
    `shows` the given text (the body loads after the head)."""
    click = "for (const t of ['mousedown', 'mouseup', 'click'])"
    click += " r.dispatchEvent(new MouseEvent(t, {bubbles: true}));"
    found = ROWS + f".find(r => r.innerText.includes({comment!r}))"
    assert page.evaluate(f"(() => {{ const r = {found}; if (!r) return false; {click} return true; }})()"), (
        comment
    )
    tab = "Array.from(document.querySelectorAll('a')).find(a => a.innerText.trim() === 'Response')"
    page.wait_for(f"!!({tab})")
    page.evaluate(f"{tab}.click()")
    detail = "(document.querySelector('.flow-detail') || {innerText: ''}).innerText.replace(/\\u00a0/g, ' ')"
    text: str = page.wait_for(f"(() => {{ const t = {detail}; return t.includes({shows!r}) ? t : ''; }})()")
    return text


def test_the_flow_list_shows_who_served_each_request_and_an_attempt_shows_its_real_answer(
    tmp_path: Path, mock_factory: Callable[[str], MockProvider], mitmdump_factory: Callable[..., Mitmdump]
) -> None:
    primary, backup = mock_factory("primary"), mock_factory("backup")
    queue = [
        configs.provider("primary", primary.base_url),
        configs.provider("backup", backup.base_url, "DETOUR_BROWSER_KEY"),
    ]
    # Circuits stay open for the test's length, and no recovery probe half-opens one meanwhile.
    breaker = {"open_for": "5m", "max_open_for": "10m", "recovery_probe": "0s"}
    config = configs.write(
        tmp_path / "config.yaml",
        configs.config({"claude": configs.app("api.anthropic.com", queue)}, breaker=breaker),
    )
    port, web_port = free_port(), free_port()
    mitmdump_factory(
        config,
        reverse={port: "https://api.anthropic.com"},
        env={"DETOUR_BROWSER_KEY": "sk-browser-backup-SECRET-0001"},
        program="mitmweb",
        extra_args=["--no-web-open-browser", "--set", f"web_port={web_port}"]
        + (["--set", f"web_password={WEB_PASSWORD}"] if MITMWEB_12 else []),
    )
    primary.fault("status", status=529, times=1)
    assert ask(port) == 200  # failed over
    primary.fault("status", status=503, times=1)
    backup.fault("status", status=503, times=1)
    assert ask(port) == 503  # every provider failed
    primary.fault("status", status=500, times=1)
    assert ask(port) == 200  # the primary's third failure in a row: its circuit opens
    assert ask(port) == 200  # served by the backup: the primary's circuit is open
    assert primary.count() == 3

    with Chromium.start(tmp_path / "chromium") as browser:
        page = browser.page()
        # mitmweb 12 answers the plain URL with 403: the URL it prints at start carries the token.
        page.navigate(f"http://127.0.0.1:{web_port}/" + (f"?token={WEB_PASSWORD}" if MITMWEB_12 else ""))
        # Until the comment column shows on every row: mitmweb can draw the list before the columns
        # Detour set reach the page (seen once under load: every comment empty).
        page.wait_for(ROWS + ".length >= 10 && " + ROWS + ".every(r => (r.querySelector('.col-comment')"
                      " || {innerText: ''}).innerText.trim() !== '')", timeout=30)  # fmt: skip
        rows: list[dict[str, Any]] = page.evaluate(ROW_FACTS)
        page.screenshot(tmp_path / "list.png")
        routed = [r for r in rows if not r["comment"].startswith("attempt ")]
        attempts = [r for r in rows if r["comment"].startswith("attempt ")]
        detail = open_attempt(page, "attempt 1/2 on primary for claude: failed (http 529)", "error answer")
        page.screenshot(tmp_path / "attempt.png")

    # The serving provider leads each routed row's comment, in a column wide enough to show it.
    assert [r["comment"].split(" · ")[0] for r in routed] == [
        "backup ← primary 529",
        "✗ primary 503, backup 503",
        "backup ← primary 500",
        "backup (primary: circuit open)",
    ]
    assert all(r["comment"].endswith(" · claude") and r["width"] >= 100 for r in routed), routed
    assert [r["marker"] for r in routed] == ["🔀", "❌", "🔀", "🔀"]
    assert [r["status"] for r in routed] == ["200", "503", "200", "200"]
    # Every attempt is a row of its own, the failed ones marked.
    assert [(r["comment"], r["marker"], r["status"]) for r in attempts] == [
        ("attempt 1/2 on primary for claude: failed (http 529)", "⚠", "529"),
        ("attempt 2/2 on backup for claude: ok", "", "200"),
        ("attempt 1/2 on primary for claude: failed (http 503)", "⚠", "503"),
        ("attempt 2/2 on backup for claude: failed (http 503)", "⚠", "503"),
        ("attempt 1/2 on primary for claude: failed (http 500)", "⚠", "500"),
        ("attempt 2/2 on backup for claude: ok", "", "200"),
    ]
    # The failed primary's own answer: its status, its headers, its body (in the Detour view).
    assert "HTTP/1.1 529" in detail and "x-mock-provider: primary" in detail
    assert "anthropic error answer (http 529): overloaded_error" in detail and '"type": "error"' in detail
    assert (tmp_path / "list.png").stat().st_size > 10_000 and (
        tmp_path / "attempt.png"
    ).stat().st_size > 10_000
