"""Robustness: every fault fails over or fails visibly, with bounded memory, through reloads, odd
config files and clock jumps. Each test plays one fault against a real mitmdump."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import configs
import pytest
from configs import CLIENT_KEY, KEY_ENV, secret_leaks
from h2client import h2_requests
from harness import Mitmdump, free_port
from mockprovider import MockProvider
from rawhttp import TERMINALS, async_fetch, classify_reply, fetch, request_for, wait_until
from rawservers import ScriptServer, continue_then, drip, endless_body
from tlscerts import make_ca

pytestmark = pytest.mark.integration

MdFactory = Callable[..., Mitmdump]
HOST = "api.anthropic.com"
FIRST_BYTE = 1.0


def start(
    tmp_path: Path, mitmdump_factory: MdFactory, primary_url: str, backup_url: str, *args: str, **kw: Any
) -> Mitmdump:
    """Detour with `primary` and `backup` (both keyless) for HOST, through a regular listener."""
    queue = [configs.provider("primary", primary_url), configs.provider("backup", backup_url)]
    document = configs.config(
        {"claude": configs.app(HOST, queue)},
        timeouts={"connect": "1s", "first_byte": f"{FIRST_BYTE}s", "idle": "1s"},
        **kw,
    )
    cfg = configs.write(tmp_path / "config.yaml", document)
    return mitmdump_factory(cfg, regular_port=free_port(), env=KEY_ENV, extra_args=list(args))


def ask(md: Mitmdump, stream: bool = False, timeout: float = 15.0) -> str:
    assert md.regular_port is not None
    return classify_reply(
        fetch(md.regular_port, HOST, *request_for("anthropic", stream), timeout=timeout), stream
    )


# --- 1-4: faults that must fail over -------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_tls_handshake_failure_fails_over_every_time(
    tmp_path: Path, mitmdump_factory: MdFactory, stream: bool
) -> None:
    ca = make_ca(
        tmp_path / "ca", self_signed_leaf=True
    )  # the primary's certificate is signed by no one we trust
    with MockProvider("primary", tls=ca.server_context()).start() as p, MockProvider("backup").start() as b:
        md = start(
            tmp_path,
            mitmdump_factory,
            p.base_url,
            b.base_url,
            "--set",
            f"ssl_verify_upstream_trusted_ca={ca.ca_file}",
            breaker={"failure_threshold": 2, "open_for": "200ms", "max_open_for": "200ms"},
        )
        outcomes = []
        for _ in range(6):  # below the threshold, at it, and in half-open probes after open_for
            outcomes.append(ask(md, stream))
            wait_until(lambda: False, 0.25)  # let open_for pass between some requests (pacing)
        assert outcomes == ["ok:backup"] * 6
        assert p.count() == 0  # no request ever crossed a failed handshake
        assert "certificate verify failed" in md.log_text() or "TLS" in md.log_text()


def test_an_http2_capable_upstream_that_never_answers_fails_over(
    tmp_path: Path, mitmdump_factory: MdFactory
) -> None:
    ca = make_ca(tmp_path / "ca")
    with (
        MockProvider("primary", tls=ca.server_context(("h2", "http/1.1"))).start() as p,
        MockProvider("backup").start() as b,
    ):
        p.fault("hang")
        md = start(
            tmp_path,
            mitmdump_factory,
            p.base_url,
            b.base_url,
            "--set",
            f"ssl_verify_upstream_trusted_ca={ca.ca_file}",
        )
        assert md.regular_port is not None
        path, body, headers = request_for("anthropic", True)
        headers["content-length"] = str(len(body))
        ((status, fields, data),) = h2_requests(
            md.regular_port, md.ca_cert_path, HOST, [(path, body, headers)]
        )
        assert status == 200 and fields["x-detour-provider"] == "backup"
        assert any(t in data for t in TERMINALS)
        p.healthy()


def test_slow_headers_are_cut_and_fail_over_never_spliced(
    tmp_path: Path, mitmdump_factory: MdFactory
) -> None:
    with (
        ScriptServer(drip(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}", 0.5)) as dripping,
        MockProvider("backup").start() as b,
    ):
        md = start(tmp_path, mitmdump_factory, dripping.base_url, b.base_url)
        assert md.regular_port is not None
        reply = fetch(md.regular_port, HOST, *request_for("anthropic", False))
        assert classify_reply(reply, False) == "ok:backup"
        assert FIRST_BYTE <= reply.duration < FIRST_BYTE + 2.0
        assert "Bad HTTP response line" not in md.log_text()


def test_100_continue_is_interim_the_client_gets_the_real_answer(
    tmp_path: Path, mitmdump_factory: MdFactory
) -> None:
    answer = json.dumps({"content": [{"type": "text", "text": "hello from primary"}]}).encode()
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(answer)
    with ScriptServer(continue_then(head + answer, 0.2)) as primary, MockProvider("backup").start() as b:
        md = start(tmp_path, mitmdump_factory, primary.base_url, b.base_url)
        assert md.regular_port is not None
        reply = fetch(md.regular_port, HOST, *request_for("anthropic", False))
        assert reply.status == 200 and reply.body == answer and reply.provider == "primary"
        assert reply.duration < 2.0
        assert b.count() == 0


# --- 5-6: answers are whole or visibly broken, and memory stays bounded --------------------------------


def test_a_failover_stream_larger_than_any_copy_limit_arrives_whole(
    tmp_path: Path, mitmdump_factory: MdFactory
) -> None:
    with MockProvider("primary").start() as p, MockProvider("backup").start() as b:
        p.fault("status", status=529)
        b.fault("big_stream", count=3000, size=4096)  # about 12 MB of events
        md = start(tmp_path, mitmdump_factory, p.base_url, b.base_url)
        assert md.regular_port is not None
        reply = fetch(md.regular_port, HOST, *request_for("anthropic", True), timeout=60)
        assert reply.status == 200 and reply.complete and reply.provider == "backup"
        assert len(reply.body) > 12_000_000
        assert reply.body.rstrip().endswith(b'{"type": "message_stop"}')


@pytest.mark.parametrize("status", [529, 200])
def test_a_gigabyte_answer_does_not_grow_memory_and_fails_over(
    tmp_path: Path, mitmdump_factory: MdFactory, status: int
) -> None:
    with ScriptServer(endless_body(status, 1 << 30)) as huge, MockProvider("backup").start() as b:
        md = start(tmp_path, mitmdump_factory, huge.base_url, b.base_url)
        before = md.rss_kb()
        assert before is not None
        assert ask(md, False, timeout=60) == "ok:backup"
        after = md.rss_kb()
        assert after is not None and after - before < 120 * 1024, (before, after)


# --- 7-9: operations ---------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_requests_in_flight_survive_reloads_that_rename_providers(
    tmp_path: Path, mitmdump_factory: MdFactory
) -> None:
    with MockProvider("primary").start() as p, MockProvider("backup").start() as b:
        p.fault("status", status=529)
        b.fault("slow_stream", interval=0.02)
        md = start(tmp_path, mitmdump_factory, p.base_url, b.base_url, "--set", "detour_watch_ms=100")
        cfg = tmp_path / "config.yaml"
        document = json.loads(
            json.dumps(
                configs.config(
                    {
                        "claude": configs.app(
                            HOST,
                            [configs.provider("primary", p.base_url), configs.provider("backup", b.base_url)],
                        )
                    }
                )
            )
        )
        assert md.regular_port is not None
        port = md.regular_port

        async def traffic() -> list[Any]:
            path, body, headers = request_for("anthropic", True)
            sem = asyncio.Semaphore(20)

            async def one() -> Any:
                async with sem:
                    return await async_fetch(port, HOST, path, body, headers, timeout=30)

            async def reloads() -> None:
                for i in range(30):
                    document["apps"]["claude"]["providers"][1]["id"] = f"backup{i % 2}"
                    await asyncio.to_thread(configs.write, cfg, document)
                    await asyncio.sleep(0.15)  # pacing the edits against the 100 ms watcher

            results = await asyncio.gather(*(one() for _ in range(300)), reloads())
            return list(results[:-1])

        replies = asyncio.run(traffic())
        outcomes = [classify_reply(r, True) for r in replies]
        assert outcomes == ["ok:backup"] * 300, sorted(set(outcomes))
        assert all(r.headers.get("x-detour-provider", "").startswith("backup") for r in replies)
        log = md.log_text()
        assert "Traceback" not in log and "KeyError" not in log


def test_the_config_watcher_survives_a_pathological_file_and_reports_a_deleted_one(
    tmp_path: Path, mitmdump_factory: MdFactory
) -> None:
    with MockProvider("primary").start() as p, MockProvider("backup").start() as b:
        md = start(tmp_path, mitmdump_factory, p.base_url, b.base_url, "--set", "detour_watch_ms=100")
        cfg = tmp_path / "config.yaml"
        good = cfg.read_text()
        configs.write(cfg, "[" * 5000)
        assert md.wait_for_log("nested too deeply", 10), md.log_tail()
        reordered = configs.config(
            {
                "claude": configs.app(
                    HOST, [configs.provider("backup", b.base_url), configs.provider("primary", p.base_url)]
                )
            }
        )
        configs.write(cfg, reordered)
        assert wait_until(lambda: ask(md) == "ok:backup", 10)  # still watching: the good edit took
        cfg.unlink()
        assert md.wait_for_log("is gone; the running config stays in force", 10)
        assert ask(md) == "ok:backup"
        cfg.write_text(good)
        assert md.alive


def test_a_fifo_in_place_of_the_config_never_freezes_the_listeners(
    tmp_path: Path, mitmdump_factory: MdFactory
) -> None:
    with MockProvider("primary").start() as p, MockProvider("backup").start() as b:
        md = start(tmp_path, mitmdump_factory, p.base_url, b.base_url, "--set", "detour_watch_ms=100")
        cfg = tmp_path / "config.yaml"
        cfg.unlink()
        os.mkfifo(cfg)
        assert md.wait_for_log("not a regular file", 10), md.log_tail()
        assert md.regular_port is not None
        reply = fetch(md.regular_port, HOST, *request_for("anthropic", False), timeout=5)
        assert classify_reply(reply, False) == "ok:primary" and reply.duration < 2.0


# --- 10: clock jumps ---------------------------------------------------------------------------------


SITECUSTOMIZE = """
import os, time
_real = time.time
_shift = os.environ["DETOUR_TIME_SHIFT_FILE"]
def _shifted():
    try:
        with open(_shift) as f:
            return _real() + float(f.read() or 0)
    except (OSError, ValueError):
        return _real()
time.time = _shifted
"""


def test_a_wall_clock_jump_does_not_time_out_healthy_requests(
    tmp_path: Path, mitmdump_factory: MdFactory
) -> None:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SITECUSTOMIZE)
    shift = tmp_path / "shift"
    shift.write_text("0")
    with (
        MockProvider("primary").start() as p,
        MockProvider("backup").start() as b,
        MockProvider("busy").start() as busy,
    ):
        p.fault("slow_first_byte", delay=1.5)  # healthy, only slow: well within first_byte
        busy.fault("slow_stream", interval=0.2)  # other traffic with short deadlines keeps timers busy
        queue = [configs.provider("primary", p.base_url), configs.provider("backup", b.base_url)]
        apps = {
            "claude": configs.app(HOST, queue),
            "busy": configs.app(
                "busy.test",
                [configs.provider("busy", busy.base_url)],
                "anthropic",
                timeouts={"idle": "500ms"},
            ),
        }
        document = configs.config(
            apps,
            timeouts={"connect": "1s", "first_byte": "3s", "idle": "3s"},
            breaker={"failure_threshold": 1, "open_for": "60s", "max_open_for": "60s"},
        )
        cfg = configs.write(tmp_path / "config.yaml", document)
        env = {**KEY_ENV, "DETOUR_TIME_SHIFT_FILE": str(shift), "PYTHONPATH": str(shim)}
        md = mitmdump_factory(cfg, regular_port=free_port(), env=env)

        async def burst() -> list[str]:
            assert md.regular_port is not None
            path, body, headers = request_for("anthropic", False)
            spath, sbody, sheaders = request_for("anthropic", True)
            tasks = [async_fetch(md.regular_port, HOST, path, body, headers) for _ in range(10)]
            other = async_fetch(md.regular_port, "busy.test", spath, sbody, sheaders)
            # The wall clock jumps 5 minutes while all ten wait for their (slow) headers.
            jump = asyncio.to_thread(lambda: p.wait_for_requests(10, 5) and shift.write_text("300"))
            replies = await asyncio.gather(*tasks, other, jump)
            return [classify_reply(r, False) for r in replies[:10]]

        assert asyncio.run(burst()) == ["ok:primary"] * 10
        assert ask(md) == "ok:primary"  # and the breaker never opened
        assert b.count() == 0
        assert "circuit closed -> open" not in md.log_text()


# --- 12-13: what a model mapping does to the body ----------------------------------------------------


ENCODINGS = ("gzip", "deflate", "br", "zstd")


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_a_compressed_request_body_gets_its_model_mapped(
    encoding: str, tmp_path: Path, mitmdump_factory: MdFactory
) -> None:
    from addon import codecs

    with MockProvider("backup").start() as b:
        queue = [configs.provider("backup", b.base_url, models={"claude-*": "mapped-model"})]
        cfg = configs.write(tmp_path / "config.yaml", configs.config({"claude": configs.app(HOST, queue)}))
        md = mitmdump_factory(cfg, regular_port=free_port(), env=KEY_ENV)
        assert md.regular_port is not None
        raw = b'{"model": "claude-opus-4", "n": 1e400, "max_tokens": 5, "messages": []}'
        headers = {"x-api-key": CLIENT_KEY, "content-type": "application/json", "content-encoding": encoding}
        reply = fetch(md.regular_port, HOST, "/v1/messages", codecs.encode(encoding, raw), headers)
        assert reply.status == 200
        (rec,) = b.received
        assert rec.headers["content-encoding"] == encoding
        assert codecs.decode(encoding, rec.body) == raw.replace(b'"claude-opus-4"', b'"mapped-model"')


def test_the_model_mapping_changes_no_other_byte(tmp_path: Path, mitmdump_factory: MdFactory) -> None:
    with MockProvider("backup").start() as b:
        queue = [configs.provider("backup", b.base_url, models={"claude-*": "mapped"})]
        cfg = configs.write(tmp_path / "config.yaml", configs.config({"claude": configs.app(HOST, queue)}))
        md = mitmdump_factory(cfg, regular_port=free_port(), env=KEY_ENV)
        assert md.regular_port is not None
        raw = b'{ "model":"claude-x", "a": 1e400, "b": NaN, "c": 1.0000000000000000001, "d": 1, "d": 2 }'
        fetch(md.regular_port, HOST, "/v1/messages", raw, {"content-type": "application/json"})
        assert b.received[0].body == raw.replace(b'"claude-x"', b'"mapped"')
        assert not secret_leaks(md.log_text().encode())


# --- a client's malformed header ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra", [b"X-Note: first\r\n  folded\r\n", b"X Note: v\r\n"], ids=["folded", "space"]
)
def test_a_header_detour_cant_forward_gets_400_and_charges_no_provider(
    extra: bytes, tmp_path: Path, mitmdump_factory: MdFactory
) -> None:
    """Round 1 charged such a request to every provider as a connect failure: three of them opened
    every circuit of the app, for every client."""
    with MockProvider("primary").start() as p, MockProvider("backup").start() as b:
        md = start(tmp_path, mitmdump_factory, p.base_url, b.base_url)
        assert md.regular_port is not None
        path, body, headers = request_for("anthropic", False)

        async def malformed() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", md.regular_port)
            head = f"POST http://{HOST}{path} HTTP/1.1\r\nHost: {HOST}\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            writer.write(head.encode() + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
            try:
                return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            finally:
                writer.close()

        for _ in range(4):  # more than failure_threshold (3)
            answer = asyncio.run(malformed())
            assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
        assert p.count() == b.count() == 0
        assert "closed -> open" not in md.log_text()
        assert ask(md) == "ok:primary"
