"""Usage accounting end to end: requests from the official SDKs (and Gemini's wire format) through a
real mitmdump running Detour to mock providers that report known usage, some failing over, one cut;
then `python -m addon usage --json`, run as a user would, must print the expected totals exactly.

The mocks report cached and reasoning tokens each API's own way (Anthropic apart from the input,
OpenAI and Gemini inside it), so the totals also show that "fresh input" means the same everywhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import configs
import openai
import pytest
from harness import REPO_ROOT, Mitmdump, free_port, post_json
from mockprovider import MockProvider, MockUsage

from addon.state.sqlite import read_attempts

pytestmark = pytest.mark.integration

PRICES = {
    "claude-*": {"input": 3, "output": 15, "cache_read": 0.3, "cache_write": 3.75},
    "glm-*": {"input": 0.6, "output": 2.2},
    "gpt-5*": {"input": 1.25, "output": 10, "cache_read": 0.125},
    "gemini-2.5-pro": {"input": 1.25, "output": 10, "cache_read": 0.31},
}
MESSAGES: Any = [{"role": "user", "content": "hi"}]
EXPECTED_ROWS = 12
#: The report of the requests `test_usage_reports_exact_totals` makes (its closing-note output).
REPORT: list[dict[str, Any]] = []


def dollars(tokens: MockUsage, price: dict[str, float], times: int, multiplier: float = 1.0) -> float:
    """What `times` answers with `tokens` cost at `price` (a cache price not listed is input's)."""
    one = (
        tokens.input * price["input"]
        + tokens.cache_read * price.get("cache_read", price["input"])
        + tokens.cache_write * price.get("cache_write", price["input"])
        + tokens.output * price["output"]
    ) / 1e6
    return round(one * times * multiplier, 10)


def test_usage_reports_exact_totals(
    tmp_path: Path, mock_factory: Callable[[str], MockProvider], mitmdump_factory: Callable[..., Mitmdump]
) -> None:
    primary, backup, openai_mock, google = (
        mock_factory(n) for n in ("primary", "backup", "openai", "google")
    )
    primary.usage = MockUsage(input=100, output=20, cache_read=1000, cache_write=50)
    backup.usage = MockUsage(input=7, output=3)
    openai_mock.usage = MockUsage(input=50, output=30, cache_read=200, reasoning=10)
    google.usage = MockUsage(input=40, output=25, cache_read=100, reasoning=5)
    claude_queue = [
        configs.provider("primary", primary.base_url),
        configs.provider("backup", backup.base_url, configs.BACKUP_KEY_ENV, auth="bearer",
                         models={"claude-*": "glm-4.6"}, price_multiplier=0.5),
    ]  # fmt: skip
    apps = {
        "claude": configs.app("api.anthropic.com", claude_queue),
        "codex": configs.app("api.openai.com", [configs.provider("openai", openai_mock.base_url)]),
        "gemini": configs.app(
            "generativelanguage.googleapis.com", [configs.provider("google", google.base_url)]
        ),
    }
    config = configs.write(
        tmp_path / "config.yaml",
        configs.config(apps, timeouts={"first_byte": "10s", "idle": "10s"}, prices=PRICES),
    )
    ports = {"claude": free_port(), "codex": free_port(), "gemini": free_port()}
    hosts = {
        "claude": "api.anthropic.com",
        "codex": "api.openai.com",
        "gemini": "generativelanguage.googleapis.com",
    }
    mitmdump_factory(config, reverse={ports[a]: f"https://{hosts[a]}" for a in ports}, env=configs.KEY_ENV)

    claude = anthropic.Anthropic(
        base_url=f"http://127.0.0.1:{ports['claude']}", api_key=configs.CLIENT_KEY, max_retries=0, timeout=20
    )
    codex = openai.OpenAI(
        base_url=f"http://127.0.0.1:{ports['codex']}/v1",
        api_key=configs.CLIENT_KEY,
        max_retries=0,
        timeout=20,
    )

    def ask_claude(model: str = "claude-sonnet-4-5", stream: bool = True) -> str:
        if not stream:
            message = claude.messages.create(model=model, max_tokens=16, messages=MESSAGES)
            return message.content[0].text  # type: ignore[union-attr]
        with claude.messages.stream(model=model, max_tokens=16, messages=MESSAGES) as events:
            return events.get_final_text()

    # 1, 2: the primary serves, streamed and whole
    assert ask_claude() == "hello from primary"
    assert ask_claude(stream=False) == "hello from primary"
    # 3, 4: the primary is overloaded; the backup serves (its own model name, its own price)
    primary.fault("status", times=2, status=529)
    assert ask_claude() == "hello from backup"
    assert ask_claude(stream=False) == "hello from backup"
    # 5: the primary's stream is cut before its final usage; the backup serves
    primary.fault("sse_cut", times=1)
    assert ask_claude("claude-haiku-4-5") == "hello from backup"
    # 6, 7: OpenAI Chat asking for usage, and Responses
    chunks = list(
        codex.chat.completions.create(
            model="gpt-5", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage is not None
    with codex.responses.stream(model="gpt-5", input="hi") as response_events:
        assert response_events.get_final_response().usage is not None
    # 8: a native Chat stream that didn't ask for usage: none arrives, and none is made up
    assert list(codex.chat.completions.create(model="gpt-5-mini", messages=MESSAGES, stream=True))
    # 9: Gemini, streamed
    status, _, body = post_json(
        ports["gemini"], "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
        {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, {"x-goog-api-key": "client-gemini-key"},
    )  # fmt: skip
    assert status == 200 and b'"usageMetadata"' in body

    state = tmp_path / "state.db"
    deadline = time.monotonic() + 10
    while len(read_attempts(state, 0.0)) < EXPECTED_ROWS and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(read_attempts(state, 0.0)) == EXPECTED_ROWS

    done = subprocess.run(
        [sys.executable, "-m", "addon", "usage", "--config", str(config), "--since", "1h", "--json"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    REPORT[:] = report
    print(json.dumps(report, indent=2))  # the closing note quotes it (pytest -s)

    sonnet, glm, gpt5, gemini = (
        PRICES["claude-*"],
        PRICES["glm-*"],
        PRICES["gpt-5*"],
        PRICES["gemini-2.5-pro"],
    )
    assert report == [
        {"app": "claude", "provider": "primary", "model": "claude-sonnet-4-5", "requests": 4, "failures": 2,
         "input_tokens": 200, "cache_read_tokens": 2000, "cache_write_tokens": 100, "output_tokens": 40,
         "reasoning_tokens": None, "cost_usd": dollars(primary.usage, sonnet, 2)},
        {"app": "claude", "provider": "backup", "model": "glm-4.6", "requests": 3, "failures": 0,
         "input_tokens": 21, "cache_read_tokens": 0, "cache_write_tokens": 0, "output_tokens": 9,
         "reasoning_tokens": None, "cost_usd": dollars(backup.usage, glm, 3, 0.5)},
        # cut after `message_start`: its input is known, its output never arrived, so its cost is unknown
        {"app": "claude", "provider": "primary", "model": "claude-haiku-4-5", "requests": 1, "failures": 1,
         "input_tokens": 100, "cache_read_tokens": 1000, "cache_write_tokens": 50, "output_tokens": None,
         "reasoning_tokens": None, "cost_usd": None},
        {"app": "codex", "provider": "openai", "model": "gpt-5", "requests": 2, "failures": 0,
         "input_tokens": 100, "cache_read_tokens": 400, "cache_write_tokens": 0, "output_tokens": 60,
         "reasoning_tokens": 20, "cost_usd": dollars(openai_mock.usage, gpt5, 2)},
        {"app": "codex", "provider": "openai", "model": "gpt-5-mini", "requests": 1, "failures": 0,
         "input_tokens": None, "cache_read_tokens": None, "cache_write_tokens": None, "output_tokens": None,
         "reasoning_tokens": None, "cost_usd": None},
        {"app": "gemini", "provider": "google", "model": "gemini-2.5-pro", "requests": 1, "failures": 0,
         "input_tokens": 40, "cache_read_tokens": 100, "cache_write_tokens": 0, "output_tokens": 25,
         "reasoning_tokens": 5, "cost_usd": dollars(google.usage, gemini, 1)},
    ]  # fmt: skip
    # the attempt log also knows how each attempt went
    rows = read_attempts(state, 0.0)
    cut = next(r for r in rows if r.model == "claude-haiku-4-5")
    assert (cut.outcome, cut.error_kind, cut.status) == ("connect_failure", "reset", 200)
    streamed = rows[0]
    assert (
        streamed.streamed and streamed.dialect == "anthropic" and streamed.response_id.startswith("msg_mock_")
    )
    assert (
        streamed.ttfb_ms is not None and streamed.ttft_ms is not None and streamed.ttft_ms >= streamed.ttfb_ms
    )
    assert not rows[1].streamed and rows[1].ttft_ms is None
