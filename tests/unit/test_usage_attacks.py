"""An adversarial review of usage accounting, kept as tests: each one failed before its fix.

Hostile or odd usage blocks from providers, damaged databases, and the places where a count that
is unknown could pass for an exact one or for zero."""

from __future__ import annotations

import gzip
import json
import sqlite3
import time
from pathlib import Path

import pytest
from test_exchange import script

from addon import codecs
from addon.__main__ import main
from addon.config import load_config
from addon.exchange import Delivery
from addon.formats import DIALECTS
from addon.formats.codec_chat import usage_of
from addon.formats.usage import Tokens
from addon.model import Config, Price
from addon.state import AttemptRecord, SqliteBackend
from addon.state.sqlite import read_attempts
from addon.usage import Pricing, cost, table, totals

GOOD = AttemptRecord(1.0, "claude", "a", 200, "success", 1.0, "")


def anthropic_body(usage: dict[str, object]) -> Tokens | None:
    return DIALECTS["anthropic"].body_tokens(json.dumps({"id": "m", "model": "x", "usage": usage}).encode())


def test_an_absurd_count_is_unknown_and_never_costs_the_batch_it_came_with(tmp_path: Path) -> None:
    tokens = anthropic_body({"input_tokens": 1, "output_tokens": 2**64})
    assert tokens is not None and tokens.output is None
    store = SqliteBackend(tmp_path / "d.db")
    store.open()
    store.log_attempt(GOOD)
    store.log_attempt(GOOD._replace(at=2.0, output_tokens=2**64))  # even one that got through
    store.log_attempt(GOOD._replace(at=3.0))
    rows = store.attempts_since(0.0)
    store.close()
    assert [r.at for r in rows] == [1.0, 3.0]


def test_an_absurd_count_never_makes_pricing_raise() -> None:
    tokens = anthropic_body({"input_tokens": 1, "output_tokens": 10**400})
    assert tokens is not None
    record = GOOD._replace(model="x", input_tokens=1, output_tokens=tokens.output)
    assert cost(record, Price(3, 15)) is None


def test_a_report_does_not_wait_for_a_writer_held_up_by_another_process(tmp_path: Path) -> None:
    store = SqliteBackend(tmp_path / "d.db", busy_timeout=1.5)
    store.open()
    other = sqlite3.connect(tmp_path / "d.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    try:
        store.log_attempt(GOOD)
        started = time.monotonic()
        store.attempts_since(0.0)
        elapsed = time.monotonic() - started
    finally:
        other.rollback()
        other.close()
        store.close()
    assert elapsed < 1.2


def test_a_websocket_handshake_is_not_a_request_of_unknown_cost() -> None:
    pricing = Pricing(Config(Path("c"), Path("s"), (), prices=(("gpt-*", Price(1, 10)),)), table=None)
    handshake = AttemptRecord(0, "codex", "primary", 101, "success", 5.0, "")
    response = handshake._replace(
        status=None,
        model="gpt-5",
        input_tokens=100,
        cache_read_tokens=0,
        cache_write_tokens=0,
        output_tokens=20,
    )
    groups = totals([handshake, response], pricing)
    assert [(g.model, g.requests) for g in groups] == [("gpt-5", 1)]
    assert "unknown" not in table(groups).splitlines()[-1]


def test_gemini_tool_use_prompts_are_input_not_output() -> None:
    usage = {
        "promptTokenCount": 100,
        "candidatesTokenCount": 10,
        "toolUsePromptTokenCount": 5000,
        "totalTokenCount": 5110,
    }
    tokens = DIALECTS["gemini"].body_tokens(json.dumps({"usageMetadata": usage}).encode())
    assert tokens is not None and (tokens.input, tokens.output) == (5100, 10)


def test_a_translation_keeps_cache_writes_in_the_client_s_input() -> None:
    usage = {
        "prompt_tokens": 1000,
        "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 300},
    }
    ir = usage_of({"usage": usage})
    assert ir is not None and ir.input + ir.cache_read == 1000


def test_a_responses_event_with_its_type_last_keeps_its_usage() -> None:
    event = {
        "response": {"id": "r", "model": "m", "usage": {"input_tokens": 100, "output_tokens": 20}},
        "sequence_number": 7,
        "type": "response.completed",
    }
    watch = DIALECTS["openai-responses"].watch()
    watch.feed(f"data: {json.dumps(event)}\n\n".encode())
    tokens = watch.meter.tokens()
    assert watch.complete and tokens is not None and tokens.output == 20


def test_a_disabled_provider_keeps_its_price_multiplier(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "prices:\n  'glm-*': {input: 1, output: 1}\napps:\n  claude:\n    hosts: [api.anthropic.com]\n"
        "    providers:\n      - {id: primary, base_url: 'https://p.example'}\n"
        "      - {id: reseller, base_url: 'https://r.example', price_multiplier: 2, enabled: false}\n"
        "      - {id: keyed, base_url: 'https://k.example', api_key: '${UNSET_T_KEY}',\n"
        "         price_multiplier: 3}\n",
        encoding="utf-8",
    )
    config = load_config(path, {})
    million = GOOD._replace(
        model="glm-4.6", input_tokens=10**6, cache_read_tokens=0, cache_write_tokens=0, output_tokens=0
    )
    pricing = Pricing(config, table=None)
    assert pricing(million._replace(app="claude", provider="reseller")) == 2.0
    assert pricing(million._replace(app="claude", provider="keyed")) == 3.0


def test_a_report_reads_a_database_whose_path_has_uri_characters(tmp_path: Path) -> None:
    path = tmp_path / "run#1 %20?x" / "detour.db"
    store = SqliteBackend(path)
    store.open()
    store.log_attempt(GOOD)
    store.close()
    assert len(read_attempts(path, 0.0)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run#1 %20?x"]  # no stray file made


def test_the_report_survives_a_damaged_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.yaml").write_text(
        "state: detour.db\napps:\n  claude:\n    hosts: [api.anthropic.com]\n    providers:\n"
        "      - {id: primary, base_url: 'https://p.example'}\n",
        encoding="utf-8",
    )
    store = SqliteBackend(tmp_path / "detour.db")
    store.open()
    store.log_attempt(GOOD._replace(at=time.time(), provider="primary", output_tokens=5))
    store.close()
    with sqlite3.connect(tmp_path / "detour.db") as conn:
        conn.execute("UPDATE attempt SET output_tokens = 'n/a', latency_ms = 'slow', streamed = 'yes'")
    assert main(["usage", "--config", str(tmp_path / "config.yaml"), "--json"]) == 0
    (group,) = json.loads(capsys.readouterr().out)
    assert group["requests"] == 1 and group["output_tokens"] is None


def test_a_compressed_whole_answer_is_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = codecs.decode

    def counted(coding: str, data: bytes) -> bytes:
        calls.append(coding)
        return real(coding, data)

    monkeypatch.setattr(codecs, "decode", counted)
    s = script(Delivery.WHOLE)
    s.connect()
    s.head(200, ((b"content-type", b"application/json"), (b"content-encoding", b"gzip")))
    s.data(gzip.compress(b'{"id":"m","content":[],"usage":{"input_tokens":1,"output_tokens":2}}'))
    s.end()
    assert calls == ["gzip"]
    assert s.exchange.result is not None and s.exchange.result.metering is not None
    assert s.exchange.result.metering.tokens == Tokens(1, 0, 0, 2, None, "m", "")


def test_a_cache_count_that_is_not_a_count_is_unknown_not_zero() -> None:
    tokens = anthropic_body({"input_tokens": 10, "cache_read_input_tokens": 30000.0, "output_tokens": 5})
    assert tokens is not None and tokens.cache_read is None
    record = GOOD._replace(model="x", input_tokens=10, cache_read_tokens=None, output_tokens=5)
    (group,) = totals(
        [record], Pricing(Config(Path("c"), Path("s"), (), prices=(("x", Price(3, 15)),)), None)
    )
    assert group.as_json()["cache_read_tokens"] is None


def test_a_chat_stream_with_usage_on_every_chunk_cut_early_has_an_unknown_output() -> None:
    def chunk(n: int, finish: str | None) -> bytes:
        choice = {"index": 0, "delta": {"content": "x"}, "finish_reason": finish}
        usage = {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n}
        document = {"id": "c", "model": "m", "choices": [choice], "usage": usage}
        return f"data: {json.dumps(document)}\n\n".encode()

    cut = DIALECTS["openai-chat"].watch()
    cut.feed(chunk(1, None) + chunk(2, None))
    whole = DIALECTS["openai-chat"].watch()
    whole.feed(chunk(1, None) + chunk(2, "stop") + b"data: [DONE]\n\n")
    assert cut.meter.tokens() == Tokens(10, 0, 0, None, None, "c", "m")
    assert whole.meter.tokens() == Tokens(10, 0, 0, 2, None, "c", "m")
