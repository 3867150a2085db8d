"""Fault matrix: every provider fault x {stream, non-stream} x {Anthropic Messages, OpenAI Chat}
against one real mitmdump, checked against README's fault table.

Routing scheme (the simplest reliable one found): ONE mitmdump with ONE regular-mode listener, and
plain-HTTP *absolute-form* requests (``POST http://c7.cells.test/v1/messages HTTP/1.1``). Every
cell gets its own app whose only host is ``cN.cells.test``, so each cell starts with fresh breakers,
a fresh "warm" set and its own switch history, while all apps share the two MockProviders
``primary`` and ``backup`` (reset with ``healthy()``/``clear()`` between cells; cells run one at a
time). The fake host names are never resolved: Detour forces ``connection_strategy=lazy`` and
rewrites the URL in the ``request`` hook, before mitmproxy opens any upstream connection (verified:
mitmproxy's log only ever shows ``server connect 127.0.0.1:<mock port>``). ``pretty_host`` is the
URL's host for absolute-form requests, so no Host-header trick or reverse listener is needed.

The client is a tiny raw HTTP/1.1 client on asyncio streams (no httpx: the py3.12 venv has none)
with a hard overall deadline, so a hang can never hang the test; it records whether the body was
complete according to its framing (content-length / chunked terminator).

Results of every cell are collected, and at the end of the session ``conftest.py`` prints them as a
table and writes them as JSON to ``$DETOUR_MATRIX_JSON`` (default: ``<basetemp>/fault_matrix.json``).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import configs
import pytest
from configs import KEY_B, KEY_ENV, KEY_P, SECRETS, secret_leaks
from harness import Mitmdump, free_port
from mockprovider import MockProvider, Received
from rawhttp import APIS, TERMINALS, Reply, classify_reply, fetch, request_for

pytestmark = pytest.mark.integration

# --------------------------------------------------------------------------------------- knobs

CONNECT, FIRST_BYTE, IDLE = 1.0, 1.0, 1.0
#: No request may take longer than this (README: failover after connect + first_byte; a stream is
#: cut after `idle` of silence), plus a margin for two cores under load.
REQUEST_BOUND = CONNECT + FIRST_BYTE + IDLE + 2.0
OPEN_FOR = 1.0
FAILURE_THRESHOLD = 3
HALF_OPEN_PROBES = 1



def matrix_config(apps: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """The matrix's timeouts and breaker: quick, with one half-open probe at a time."""
    return configs.config(
        apps,
        breaker={"failure_threshold": FAILURE_THRESHOLD, "open_for": f"{OPEN_FOR}s",
                 "max_open_for": f"{OPEN_FOR}s",
                 "half_open_probes": HALF_OPEN_PROBES, "success_threshold": 1},
        timeouts={"connect": f"{CONNECT}s", "first_byte": f"{FIRST_BYTE}s", "idle": f"{IDLE}s"},
        switch_min_interval="100ms",
        **kw,
    )


# --------------------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    fault: str
    api: str
    stream: bool
    #: Allowed outcomes (classify_reply) and attempts each mock must have seen (None: not checked).
    expect: tuple[str, ...]
    primary_hits: int | None
    backup_hits: int | None

    @property
    def id(self) -> str:
        return f"{self.fault}-{self.api}-{'stream' if self.stream else 'json'}"


FAILOVER = ("ok:backup",)
#: The app `api` (family) each request dialect of the matrix belongs to.
FAMILY = {"anthropic": "anthropic", "openai": "openai", "responses": "openai"}
FAULTS: list[tuple[str, tuple[str, ...], tuple[str, ...], int | None, int | None]] = [
    # fault, expected (stream), expected (non-stream), primary hits, backup hits
    ("500", FAILOVER, FAILOVER, 1, 1),
    ("503", FAILOVER, FAILOVER, 1, 1),
    ("529", FAILOVER, FAILOVER, 1, 1),
    ("429-retry-after", FAILOVER, FAILOVER, 1, 1),
    ("429", FAILOVER, FAILOVER, 1, 1),
    ("401", FAILOVER, FAILOVER, 1, 1),
    ("400", ("error:400",), ("error:400",), 1, 0),
    ("refused", FAILOVER, FAILOVER, 0, 1),
    ("reset", FAILOVER, FAILOVER, 1, 1),
    ("hang", FAILOVER, FAILOVER, 1, 1),
    ("slow-first-byte", FAILOVER, FAILOVER, 1, 1),
    # A stream broken after two events: before its first content (Anthropic) the client has seen
    # nothing yet (its head is held until the first token), so it fails over; after some text
    # (Chat) the backup continues it. A Responses stream has begun (an output item was added) and
    # can't be continued: the client sees a cut, never a clean end (STREAM_EXCEPTIONS).
    # A non-streamed body cut after its headers: the client has seen nothing yet, so it fails over.
    ("sse-cut", FAILOVER, FAILOVER, 1, None),
    ("sse-stall", FAILOVER, FAILOVER, 1, None),
    # An error event before the first content: the client has seen nothing, so it fails over.
    # After content has begun, README: "the error event as sent". The JSON variants of these faults
    # answer normally.
    ("sse-error", FAILOVER, ("ok:primary",), 1, None),
    ("sse-error-late", ("error-event",), ("ok:primary",), 1, 0),
    ("sse-malformed", ("ok:primary",), ("ok:primary",), 1, 0),
    ("flapping", ("ok:backup,ok:backup,ok:primary,ok:primary",),
     ("ok:backup,ok:backup,ok:primary,ok:primary",), 4, 2),
    ("all-down-503", ("error:503",), ("error:503",), 1, 1),
    ("all-down-refused", ("error:503",), ("error:503",), 0, 0),
    # A provider that just succeeded ("warm") then refuses: transparent failover (its pooled
    # connection is gone, the new one is refused); the next request fails over again.
    ("refused-warm", ("ok:primary,ok:backup,ok:backup",), ("ok:primary,ok:backup,ok:backup",), 1, 2),
]
STREAM_EXCEPTIONS = {("sse-cut", "responses"): ("cut",), ("sse-stall", "responses"): ("cut",)}
CELLS = [
    Cell(fault, api, stream, STREAM_EXCEPTIONS.get((fault, api), exp_s) if stream else exp_j, ph, bh)
    for fault, exp_s, exp_j, ph, bh in FAULTS
    for api in APIS
    for stream in (True, False)
]


@dataclass
class CellResult:
    cell: str
    outcome: str
    status: str
    provider_header: str
    attempts_header: str
    duration_s: float
    primary_hits: int
    backup_hits: int
    ok: bool
    note: str = ""


RESULTS: dict[str, CellResult] = {}


@dataclass
class Env:
    md: Mitmdump
    primary: MockProvider
    backup: MockProvider
    brk_primary: MockProvider
    brk_backup: MockProvider
    config: Path
    state: Path
    seen: list[tuple[str, Received]] = field(default_factory=list)

    @property
    def port(self) -> int:
        assert self.md.regular_port is not None
        return self.md.regular_port

    def reset_mocks(self) -> None:
        for m in (self.primary, self.backup, self.brk_primary, self.brk_backup):
            m.healthy()
        self.collect()

    def collect(self) -> None:
        for m in (self.primary, self.backup, self.brk_primary, self.brk_backup):
            self.seen += [(m.name, r) for r in m.received]
            m.clear()


def cell_host(i: int) -> str:
    return f"c{i}.cells.test"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("matrix")
    mocks = [MockProvider(n) for n in ("primary", "backup", "brkprimary", "brkbackup")]
    md: Mitmdump | None = None
    try:
        for m in mocks:
            m.start()
        p, b, bp, bb = mocks
        pair = configs.keyed_pair(p.base_url, b.base_url)
        apps = {f"c{i}": configs.app(cell_host(i), pair, FAMILY[c.api]) for i, c in enumerate(CELLS)}
        apps["brk"] = configs.app("brk.cells.test", configs.keyed_pair(bp.base_url, bb.base_url), "anthropic")
        for api in APIS:
            apps[f"cut{api}"] = configs.app(f"cut-{api}.cells.test", pair, FAMILY[api])
        cfg = configs.write(tmp / "config.yaml", matrix_config(apps))
        md = Mitmdump.start(cfg, regular_port=free_port(), confdir=tmp / "conf", env=KEY_ENV,
                            extra_args=["--set", "termlog_verbosity=debug"])
        yield Env(md, p, b, bp, bb, cfg, tmp / "state.db")
    finally:
        if md is not None:
            md.stop()
        for m in mocks:
            m.stop()


def apply_fault(env: Env, fault: str) -> None:
    p, b = env.primary, env.backup
    simple = {"500": 500, "503": 503, "529": 529, "429": 429, "401": 401, "400": 400}
    if fault in simple:
        p.fault("status", status=simple[fault])
    elif fault == "429-retry-after":
        p.fault("status", status=429, retry_after=1)
    elif fault == "refused":
        p.fault("refuse")
    elif fault == "reset":
        p.fault("reset")
    elif fault == "hang":
        p.fault("hang")
    elif fault == "slow-first-byte":
        p.fault("slow_first_byte", delay=CONNECT + FIRST_BYTE + 1.5)
    elif fault == "sse-error-late":
        p.fault("sse_error", after=3)
    elif fault in ("sse-cut", "sse-stall", "sse-error", "sse-malformed"):
        p.fault(fault.replace("-", "_"))
    elif fault == "flapping":
        p.fault("status", status=503, times=2)
    elif fault == "all-down-503":
        p.fault("status", status=503)
        b.fault("status", status=503)
    elif fault == "all-down-refused":
        p.fault("refuse")
        b.fault("refuse")
    elif fault == "refused-warm":
        pass  # faulted between its requests
    else:  # pragma: no cover
        raise AssertionError(fault)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("index", range(len(CELLS)), ids=[c.id for c in CELLS])
def test_fault_cell(env: Env, index: int) -> None:
    cell = CELLS[index]
    host = cell_host(index)
    path, body, headers = request_for(cell.api, cell.stream)
    env.reset_mocks()
    apply_fault(env, cell.fault)
    replies: list[Reply] = []
    try:
        if cell.fault == "flapping":
            replies = [fetch(env.port, host, path, body, headers) for _ in range(4)]
        elif cell.fault == "refused-warm":
            replies.append(fetch(env.port, host, path, body, headers))
            env.primary.fault("refuse")
            replies.append(fetch(env.port, host, path, body, headers))
            replies.append(fetch(env.port, host, path, body, headers))
        else:
            replies.append(fetch(env.port, host, path, body, headers))
        ph, bh = env.primary.count(), env.backup.count()
    finally:
        env.reset_mocks()

    outcome = ",".join(classify_reply(r, cell.stream) for r in replies)
    last = replies[-1]
    problems = []
    if outcome not in cell.expect:
        problems.append(f"outcome {outcome!r} not in {cell.expect}")
    if cell.primary_hits is not None and ph != cell.primary_hits:
        problems.append(f"primary saw {ph} requests, expected {cell.primary_hits}")
    if cell.backup_hits is not None and bh != cell.backup_hits:
        problems.append(f"backup saw {bh} requests, expected {cell.backup_hits}")
    slow = [round(r.duration, 2) for r in replies if r.duration > REQUEST_BOUND]
    if slow:
        problems.append(f"requests took {slow} s (bound {REQUEST_BOUND} s)")
    for r in replies:
        # No truncated success: a cut stream never carries a clean end.
        if not r.complete and any(t in r.body for t in TERMINALS):
            problems.append("an incomplete body carries a terminal event")
    if cell.fault.startswith("all-down"):
        # Every provider down: the last provider's error, or Detour's 503 in the API's shape.
        doc = json.loads(last.body)
        assert isinstance(doc, dict) and "error" in doc, last.body
        if cell.fault == "all-down-refused":
            if "retry-after" not in last.headers:
                problems.append("503 without Retry-After")
            shape_ok = doc.get("type") == "error" if cell.api == "anthropic" else "message" in doc["error"]
            if not shape_ok:
                problems.append(f"503 body not in the {cell.api} error shape: {doc}")
    if cell.fault == "400" and "x-detour-attempts" in last.headers:
        problems.append("400 reported as a failed attempt")
    RESULTS[cell.id] = CellResult(
        cell=cell.id,
        outcome=outcome,
        status=",".join(str(r.status) for r in replies),
        provider_header=",".join(r.provider or "-" for r in replies),
        attempts_header=last.headers.get("x-detour-attempts", ""),
        duration_s=round(max(r.duration for r in replies), 3),
        primary_hits=ph,
        backup_hits=bh,
        ok=not problems,
        note="; ".join(problems),
    )
    assert env.md.alive, env.md.log_tail()
    assert not problems, f"{cell.id}: {problems}\nreplies: {replies}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fault", ["sse_cut", "sse_stall"])
@pytest.mark.parametrize("api", list(APIS))
def test_non_streamed_body_cut_after_headers_fails_over(env: Env, api: str, fault: str) -> None:
    path, body, headers = request_for(api, False)
    env.reset_mocks()
    env.primary.fault(fault, times=1)
    try:
        reply = fetch(env.port, f"cut-{api}.cells.test", path, body, headers)
    finally:
        env.reset_mocks()
    assert reply.duration < REQUEST_BOUND
    assert classify_reply(reply, False) == "ok:backup", (reply.status, reply.headers, reply.body[:200])


# ---------------------------------------------------------------------------------- breakers


@pytest.mark.timeout(60)
def test_breaker_outage_probes_and_switch_lines(env: Env) -> None:
    """Compressed outage: threshold failures, then only half-open probes, then traffic returns,
    with exactly one switch line each way."""
    env.reset_mocks()
    host = "brk.cells.test"
    path, body, headers = request_for("anthropic", False)
    bp, bb = env.brk_primary, env.brk_backup

    assert classify_reply(fetch(env.port, host, path, body, headers), False) == "ok:brkprimary"
    bp.clear()
    bp.fault("status", status=529)
    outage_start = time.monotonic()
    outage = 3.2  # seconds of traffic during the outage
    outcomes = []
    for _ in range(400):  # bounded: the time condition ends it long before
        if time.monotonic() - outage_start >= outage:
            break
        outcomes.append(classify_reply(fetch(env.port, host, path, body, headers), False))
        time.sleep(0.02)  # pacing, not synchronisation: keeps the request count small
    outage_end = time.monotonic()
    hits = bp.received
    assert set(outcomes) == {"ok:brkbackup"}, outcomes  # zero lost requests during the outage
    assert len(outcomes) >= 10, outcomes
    assert len(hits) >= FAILURE_THRESHOLD
    # After `failure_threshold` failures in a row the circuit is open: nothing reaches the primary
    # for open_for (minus a margin for the first probe's timing).
    opened_at = hits[FAILURE_THRESHOLD - 1].at
    early = [r.at - opened_at for r in hits[FAILURE_THRESHOLD:] if r.at - opened_at < OPEN_FOR - 0.1]
    assert not early, f"primary got requests {early} s after its circuit opened"
    probes = len(hits) - FAILURE_THRESHOLD
    windows = int((outage_end - opened_at) / OPEN_FOR) + 1
    assert probes <= windows * HALF_OPEN_PROBES, (probes, windows)

    bp.healthy()
    recovered = None
    for _ in range(1000):  # bounded in count and (below) in time
        if classify_reply(fetch(env.port, host, path, body, headers), False) == "ok:brkprimary":
            recovered = time.monotonic() - outage_end
            break
        assert time.monotonic() - outage_end < OPEN_FOR + 3, "traffic never returned to the primary"
        time.sleep(0.02)  # pacing, not synchronisation: keeps the request count small
    assert recovered is not None
    after = [classify_reply(fetch(env.port, host, path, body, headers), False) for _ in range(5)]
    assert after == ["ok:brkprimary"] * 5
    assert env.md.wait_for_log("failover switch brk: backup -> primary", 5)
    log = env.md.log_text()
    assert log.count("failover switch brk: primary -> backup") == 1, log
    assert log.count("failover switch brk: backup -> primary") == 1, log
    RESULTS["breaker-outage"] = CellResult(
        cell="breaker-outage", outcome=f"{len(outcomes)} requests all ok:backup; {probes} probes in "
        f"{windows} half-open windows; back on primary {recovered:.2f}s after recovery",
        status="", provider_header="", attempts_header="", duration_s=round(outage_end - outage_start, 2),
        primary_hits=len(hits), backup_hits=bb.count(), ok=True,
    )
    env.collect()


# ---------------------------------------------------------------------------------- security


@pytest.mark.timeout(30)
def test_keys_stay_with_their_provider_across_the_matrix(env: Env) -> None:
    """Every request every mock received in this module: only its own key, never another's or the
    client's; and no key in mitmdump's (debug) log or the state DB files."""
    env.collect()
    assert len(env.seen) >= 50, "run the matrix first"
    own = {"primary": KEY_P, "brkprimary": KEY_P, "backup": KEY_B, "brkbackup": KEY_B}
    for name, rec in env.seen:
        blob = json.dumps(rec.raw_headers).encode() + rec.body + rec.path.encode()
        leaked = [s for s in secrets_other_than(own[name]) if s.encode() in blob]
        assert not leaked, f"{name} received {leaked} in {rec.raw_headers}"
        auth = rec.headers.get("x-api-key") or rec.headers.get("authorization", "")
        assert own[name] in auth, f"{name} did not get its own key: {rec.raw_headers}"
    assert not secret_leaks(env.md.log_text().encode()), "a key is in mitmdump's log"
    for suffix in ("", "-wal", "-shm"):
        f = env.state.with_name(env.state.name + suffix)
        if f.exists():
            assert not secret_leaks(f.read_bytes()), f"a key is in {f.name}"
    with sqlite3.connect(env.state) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def secrets_other_than(own: str) -> list[str]:
    return [s for s in SECRETS if s != own]


# ----------------------------------------------------------------------------------- summary


def format_table(results: dict[str, CellResult]) -> str:
    head = "| cell | client got | status | x-detour-provider | attempts header | max s | P | B | ok |"
    rows = [head, "|" + "---|" * 9]
    for r in results.values():
        rows.append(
            f"| {r.cell} | {r.outcome} | {r.status} | {r.provider_header} | {r.attempts_header} | "
            f"{r.duration_s:.2f} | {r.primary_hits} | {r.backup_hits} | "
            f"{'yes' if r.ok else 'NO: ' + r.note} |"
        )
    return "\n".join(rows)


def summary() -> dict[str, Any] | None:
    """The matrix as one JSON document (None if no cell ran); `conftest.py` reports it at the end."""
    cells = {k: v for k, v in RESULTS.items() if k != "breaker-outage"}
    if not cells:
        return None
    return {
        "cells": len(cells),
        "passed": sum(r.ok for r in cells.values()),
        "hangs": sum("HANG" in r.outcome for r in cells.values()),
        "clean_error_cells": sum(r.outcome.startswith("error:") for r in cells.values()),
        "max_duration_s": max(r.duration_s for r in cells.values()),
        "table": format_table(RESULTS),
        "results": [asdict(r) for r in RESULTS.values()],
    }
