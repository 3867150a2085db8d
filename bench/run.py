"""Detour benchmark: proxy overhead, failover cost, streaming, memory and decision cost in one run.

    python bench/run.py [--quick] [--out FRAGMENT.md] [--profile PROFILE.out] [--baseline REV]

Uses the `mitmdump` next to `sys.executable`. Everything listens on 127.0.0.1, every process it starts
is stopped at the end, and every loop is bounded in count and in time. With `taskset` available (or
`os.sched_setaffinity`), mitmdump runs on CPU 0 and this process (load generator) plus the mock
providers on CPU 1.

Sections
  1. throughput/latency: (a) direct to the mock, (b) mitmdump + bench/noop_rewrite.py, (c) mitmdump +
     Detour with one healthy provider, (d) Detour with a 3-provider queue whose primary circuit is open,
     and with --baseline REV (e) Detour as of git revision REV with one healthy provider;
     1 and 10 keep-alive connections, closed loop, runs interleaved a,b,c,d,e,a,b,c,d,e,...
  2. failover cost: primary answers 500 / 529 / refuses / hangs (first_byte timeout), backup healthy;
     then, once the breaker is open, attempts on the primary and latency vs (c)
  3. streaming: SSE events every 50 ms, direct vs through Detour (TTFB, event arrival times)
  4. memory: peak RSS (VmHWM) of mitmdump + Detour vs mitmdump + no-op after N requests
  5. decision cost: Router.select_providers + acquire + record_result, the Control equivalents, and
     one Exchange driven through a whole failover, in µs

The mock providers are the test suite's (`tests/support/mockprovider.py`, run as a process) and the
configs come from its config builder (`tests/support/configs.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DETOUR_SCRIPT = REPO / "addon" / "detour.py"
NOOP_SCRIPT = BENCH / "noop_rewrite.py"
MOCK_SCRIPT = REPO / "tests" / "support" / "mockprovider.py"
sys.path.insert(0, str(MOCK_SCRIPT.parent))
import configs  # noqa: E402  (tests/support: the one config builder)

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
RUN_TIMEOUT = 180.0  # one load-generator run
CONTROL = "b' mitmdump+noop, A/A"
BASELINE = "e Detour@baseline 1 provider"
HANG_CONNECT = 0.25  # section 2: timeouts.connect
HANG_FIRST_BYTE = 1.0
SSE_EVENTS = 8  # the mock's Anthropic stream, paced 50 ms apart
#: The mock's first content event (message_start and content_block_start come before it): Detour
#: holds a stream's head until it arrives (`first_token`), so this is the time that must not change.
FIRST_TOKEN_EVENT = 2

BODY = json.dumps(
    {"model": "claude-bench", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
).encode()
STREAM_BODY = json.dumps(
    {"model": "claude-bench", "max_tokens": 5, "stream": True,
     "messages": [{"role": "user", "content": "hi"}]}
).encode()


def http_request(body: bytes) -> bytes:
    return (
        b"POST /v1/messages HTTP/1.1\r\nhost: api.anthropic.com\r\ncontent-type: application/json\r\n"
        b"x-api-key: bench-key\r\nanthropic-version: 2023-06-01\r\ncontent-length: %d\r\n\r\n" % len(body)
    ) + body


REQUEST = http_request(BODY)
STREAM_REQUEST = http_request(STREAM_BODY)


# --- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.25):
            return True
        time.sleep(0.05)
    return False


TASKSET = shutil.which("taskset")


def pinned(argv: list[str], cpu: int | None) -> list[str]:
    if cpu is None or TASKSET is None:
        return argv
    return [TASKSET, "-c", str(cpu), *argv]


def cpus() -> tuple[int | None, int | None]:
    """(mitmdump CPU, load/mock CPU), or (None, None) when there aren't two CPUs to pin to."""
    try:
        available = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None, None
    if len(available) < 2:
        return None, None
    return available[0], available[1]


class Procs:
    """Every child process of the run; `stop_all` ends each one (SIGINT, then SIGKILL)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, argv: list[str], name: str, **kw: object) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        stdin = kw.pop("stdin", subprocess.PIPE)  # every child exits when this process does
        proc = subprocess.Popen(argv, stdout=kw.pop("stdout", log), stderr=log, stdin=stdin, **kw)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        if proc.stdin:
            proc.stdin.close()

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


@dataclass
class Mock:
    proc: subprocess.Popen[bytes]
    ports: dict[str, int]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"


def start_mock(procs: Procs, listeners: dict[str, str], cpu: int | None) -> Mock:
    """One mock process serving `listeners` ({name: kind}) on fresh ports."""
    ports = {name: free_port() for name in listeners}
    argv = [sys.executable, str(MOCK_SCRIPT), *(f"{kind}:{ports[n]}" for n, kind in listeners.items())]
    proc = procs.spawn(pinned(argv, cpu), "mock", stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # bounded by the mock's own startup; it prints "ready" or exits
    if line.strip() != b"ready":
        raise RuntimeError(f"mock failed to start: {line!r}")
    return Mock(proc, ports)


@dataclass
class Proxy:
    name: str
    port: int
    proc: subprocess.Popen[bytes]

    def vm(self, key: str) -> int:
        """A /proc/PID/status value in kB (VmHWM, VmRSS)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0


def mitmdump_argv(script: Path, port: int, confdir: Path, sets: dict[str, str]) -> list[str]:
    mitmdump = Path(sys.executable).parent / "mitmdump"
    if not mitmdump.exists():
        raise SystemExit(f"no mitmdump next to {sys.executable}")
    argv = [str(mitmdump), "-s", str(script)]
    for key, value in {"confdir": str(confdir), "connection_strategy": "lazy", **sets}.items():
        argv += ["--set", f"{key}={value}"]
    return [*argv, "--mode", f"reverse:https://api.anthropic.com@127.0.0.1:{port}", "-q"]


def start_proxy(
    procs: Procs, name: str, script: Path, sets: dict[str, str], confdir: Path, cpu: int | None,
    prefix: list[str] | None = None,
) -> Proxy:
    port = free_port()
    argv = pinned((prefix or []) + mitmdump_argv(script, port, confdir, sets), cpu)
    # A baseline checkout's package must win over the installed (editable) one.
    env = dict(os.environ, PYTHONPATH=str(script.parent.parent))
    proc = procs.spawn(argv, name, env=env)
    if not wait_for_port(port, START_TIMEOUT):
        procs.stop(proc)
        log = (procs.workdir / f"{name}.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{name}: mitmdump did not start:\n{log}")
    return Proxy(name, port, proc)


def detour_config(
    workdir: Path, name: str, providers: list[tuple[str, str]], breaker: dict[str, object] | None = None,
    timeouts: dict[str, object] | None = None, legacy: bool = False,
) -> Path:
    """A config file for one app `claude` on api.anthropic.com with `providers` [(id, base_url)].

    Same-provider retries and recovery probes are off: the bench measures one failover, and a probe
    would count as a request reaching an open primary. `legacy` drops the keys a baseline from before
    them would reject."""
    queue = [configs.provider(pid, url) for pid, url in providers]
    document = configs.config(
        {"claude": configs.app("api.anthropic.com", queue)},
        state=f"{name}.db",
        breaker={"failure_threshold": 3, "open_for": "10m", "max_open_for": "1h", "recovery_probe": 0,
                 **(breaker or {})},
        timeouts=timeouts or {"connect": "1s", "first_byte": "2s", "idle": "5s"},
        switch_min_interval="10s",
    )
    if legacy:
        document["breaker"].pop("recovery_probe")
        document["timeouts"].pop("first_byte_unstreamed")
        for app in document["apps"].values():
            app.pop("retry_same")
    return configs.write(workdir / f"{name}.yaml", document)


# --- HTTP client ------------------------------------------------------------------------------


async def read_response(
    reader: asyncio.StreamReader, on_chunk: list[float] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response; with `on_chunk`, the arrival time of each completed SSE event is appended."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        parts: list[bytes] = []
        pending = b""
        for _ in range(100_000):
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            parts.append(data[:-2])
            if on_chunk is not None:
                pending += data[:-2]
                now = time.perf_counter()
                while b"\n\n" in pending:
                    _, pending = pending.split(b"\n\n", 1)
                    on_chunk.append(now)
        body = b"".join(parts)
    else:
        body = await reader.read()
    return status, headers, body


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies: list[float]  # seconds
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    providers: dict[str, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


async def _load(port: int, conns: int, total: int, request: bytes) -> LoadResult:
    remaining = [total]
    latencies: list[float] = []
    result = LoadResult(total, 0.0, latencies)

    async def worker() -> None:
        reader = writer = None
        for _ in range(total + 10):  # bounded: one pass per request, plus a few reconnects
            if remaining[0] <= 0:
                break
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert reader is not None
            remaining[0] -= 1
            t0 = time.perf_counter()
            try:
                writer.write(request)
                status, headers, _ = await read_response(reader)
            except (ConnectionError, asyncio.IncompleteReadError) as e:
                result.errors += 1
                result.statuses[-1] = result.statuses.get(-1, 0) + 1
                writer.close()
                reader = writer = None
                if result.errors > 20:
                    raise RuntimeError(f"too many connection errors: {e!r}") from e
                continue
            latencies.append(time.perf_counter() - t0)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status != 200:
                result.errors += 1
            prov = headers.get("x-detour-provider", "-")
            result.providers[prov] = result.providers.get(prov, 0) + 1
            if headers.get("connection", "").lower() == "close":
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(conns))), RUN_TIMEOUT)
    result.seconds = time.perf_counter() - t0
    return result


def load(port: int, conns: int, total: int, request: bytes = REQUEST) -> LoadResult:
    return asyncio.run(_load(port, conns, total, request))


def mock_count(port: int) -> int:
    async def get() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /__count HTTP/1.1\r\nhost: mock\r\n\r\n")
        _, _, body = await asyncio.wait_for(read_response(reader), 5)
        writer.close()
        return int(json.loads(body)["count"])

    return asyncio.run(get())


def connect_refused_time(port: int, n: int) -> list[float]:
    async def once() -> float:
        t0 = time.perf_counter()
        with contextlib.suppress(OSError):
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
        return time.perf_counter() - t0

    async def run() -> list[float]:
        return [await once() for _ in range(n)]

    return asyncio.run(run())


async def _stream_once(port: int) -> tuple[float, list[float], int]:
    """(headers time, [event arrival times], status), times relative to sending the request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    events: list[float] = []
    t0 = time.perf_counter()
    writer.write(STREAM_REQUEST)
    head_at: list[float] = []
    # Time the headers: read them here, then hand the rest to read_response via a replay buffer.
    head = await reader.readuntil(b"\r\n\r\n")
    head_at.append(time.perf_counter() - t0)
    replay = asyncio.StreamReader()
    replay.feed_data(head)

    async def pump() -> None:
        for _ in range(100_000):
            data = await reader.read(65536)
            if not data:
                replay.feed_eof()
                return
            replay.feed_data(data)

    pumper = asyncio.ensure_future(pump())
    status, _, _ = await asyncio.wait_for(read_response(replay, events), 30)
    pumper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pumper
    writer.close()
    return head_at[0], [e - t0 for e in events], status


def stream_samples(port: int, n: int) -> list[tuple[float, list[float], int]]:
    async def run() -> list[tuple[float, list[float], int]]:
        return [await _stream_once(port) for _ in range(n)]

    return asyncio.run(run())


# --- statistics -------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def ms(seconds: float) -> float:
    return seconds * 1000.0


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return "\n".join(out)


# --- sections ---------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.quick = args.quick
        self.workdir = workdir
        self.confdir = workdir / "confdir"
        self.procs = Procs(workdir)
        self.proxy_cpu, self.load_cpu = cpus()
        self.out: list[str] = []
        self.c_p50: dict[int, float] = {}
        #: Detour as of `--baseline REV` (a worktree in the run's temporary folder), for side-by-side rows.
        self.baseline: Path | None = None
        if args.baseline:
            tree = workdir / "baseline"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree),
                            args.baseline], check=True)
            self.baseline = tree / "addon" / "detour.py"

    def close(self) -> None:
        if self.baseline is not None:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                            str(self.baseline.parent.parent)], check=False)

    def scripts(self) -> list[tuple[str, Path]]:
        """(label, script) of each Detour measured: this tree, and the baseline revision if asked."""
        pairs = [("Detour", DETOUR_SCRIPT)]
        if self.baseline is not None:
            pairs.append((f"Detour@{self.args.baseline}", self.baseline))
        return pairs

    def emit(self, text: str = "") -> None:
        print(text, flush=True)
        self.out.append(text)

    def pin_self(self) -> None:
        if self.load_cpu is not None:
            os.sched_setaffinity(0, {self.load_cpu})

    # 1 ---------------------------------------------------------------------------------------
    def throughput(self) -> None:
        n = 300 if self.quick else 1000
        rounds = 4 if self.quick else 12  # a multiple of 4: each process gets both orders equally
        mock = start_mock(self.procs, {"ok": "ok", "fail": "500", "b2": "ok", "b3": "ok"}, self.load_cpu)
        self.mock = mock

        def twice(name: str, script: Path, sets: Callable[[str], dict[str, str]]) -> list[Proxy]:
            """Two identical processes per target, used in alternate rounds: one process's luck (memory
            layout, hash seed) then can't decide a ratio on its own."""
            return [start_proxy(self.procs, f"{name}{i}", script, sets(f"{name}{i}"), self.confdir,
                                self.proxy_cpu) for i in (1, 2)]

        noops = twice("b_noop", NOOP_SCRIPT, lambda _: {"noop_target": mock.url("ok")})
        controls = twice("b2_noop", NOOP_SCRIPT, lambda _: {"noop_target": mock.url("ok")})
        dets = twice("c_detour", DETOUR_SCRIPT, lambda name: {"detour_config": str(
            detour_config(self.workdir, name, [("primary", mock.url("ok"))]))})
        opens = twice("d_open", DETOUR_SCRIPT, lambda name: {"detour_config": str(detour_config(
            self.workdir, name, [("primary", mock.url("fail")), ("backup", mock.url("b2")),
                                 ("third", mock.url("b3"))]))})
        bases = twice("e_base", self.baseline, lambda name: {"detour_config": str(detour_config(
            self.workdir, name, [("primary", mock.url("ok"))], legacy=True))}) if self.baseline else []
        self.det = dets[0]
        self.base = bases[0] if bases else None
        self.noop = noops[0]
        # (d): fail the primary until its circuit opens (threshold 3), then check it gets nothing more.
        warm = [load(opn.port, 1, 10) for opn in opens]
        before = mock_count(mock.ports["fail"])
        targets = {"a direct": [mock.ports["ok"]] * 2, "b mitmdump+noop": [p.port for p in noops],
                   CONTROL: [p.port for p in controls],
                   "c Detour 1 provider": [p.port for p in dets],
                   "d Detour primary open": [p.port for p in opens]}
        if bases:
            targets[BASELINE] = [p.port for p in bases]
        for ports in targets.values():  # warm-up: connections, caches, first tcp probe
            for port in ports:
                load(port, 10, 200)
        results: dict[tuple[str, int], list[LoadResult]] = {}
        for r in range(rounds):
            for conns in (1, 10):
                order = list(targets.items())
                if r % 2:
                    order.reverse()
                for name, ports in order:
                    res = load(ports[r // 2 % 2], conns, n)
                    results.setdefault((name, conns), []).append(res)
        primary_hits = mock_count(mock.ports["fail"]) - before
        self.emit(f"### 1. Throughput and latency ({n} requests per run, {rounds} interleaved rounds, "
                  "closed loop, keep-alive; two processes per proxied target, alternating every two "
                  "rounds)\n")
        rows = []
        summary: dict[tuple[str, int], tuple[float, float, float]] = {}
        for (name, conns), runs in results.items():
            lat = [x for run in runs for x in run.latencies]
            rps = statistics.median(run.rps for run in runs)
            errors = sum(run.errors for run in runs)
            summary[(name, conns)] = (rps, ms(pct(lat, 50)), ms(pct(lat, 99)))
            provs = {}
            for run in runs:
                for k, v in run.providers.items():
                    provs[k] = provs.get(k, 0) + v
            rows.append([name, str(conns), f"{rps:,.0f}", f"{ms(pct(lat, 50)):.3f}",
                         f"{ms(pct(lat, 99)):.3f}",
                         str(errors), ",".join(f"{k}:{v}" for k, v in sorted(provs.items()))])
        rows.sort(key=lambda r: (int(r[1]), r[0]))
        self.emit(table(["target", "conns", "req/s (median of rounds)", "p50 ms", "p99 ms", "errors",
                         "x-detour-provider"], rows))
        self.emit()
        rows = []
        def paired(name: str, conns: int) -> float:
            """Median over rounds of this round's req/s ratio to (b): robust to drift and to neighbours."""
            return statistics.median(
                x.rps / y.rps for x, y in zip(results[(name, conns)], results[("b mitmdump+noop", conns)],
                                              strict=True)
            )

        for conns in (1, 10):
            b = summary[("b mitmdump+noop", conns)]
            c = summary[("c Detour 1 provider", conns)]
            d = summary[("d Detour primary open", conns)]
            a = summary[("a direct", conns)]
            b2 = summary[(CONTROL, conns)]
            self.c_p50[conns] = c[1]
            rows.append([str(conns), f"{paired('c Detour 1 provider', conns):.3f}",
                         f"{paired('d Detour primary open', conns):.3f}", f"{c[1] - b[1]:+.3f}",
                         f"{d[1] - b[1]:+.3f}", f"{c[2] - b[2]:+.3f}",
                         f"{paired(CONTROL, conns):.3f}",
                         f"{b2[1] - b[1]:+.3f}", f"{b[1] - a[1]:+.3f}"])
        self.emit("Ratios are medians of per-round paired ratios; latency deltas use pooled p50/p99.\n")
        self.emit(table(["conns", "c/b req/s", "d/b req/s", "c-b p50 ms", "d-b p50 ms", "c-b p99 ms",
                         "b'/b req/s (noise)", "b'-b p50 ms (noise)", "b-a p50 ms (mitmproxy itself)"], rows))
        self.emit()
        if bases:
            base_rows = []
            for conns in (1, 10):
                b = summary[("b mitmdump+noop", conns)]
                e = summary[(BASELINE, conns)]
                c = summary[("c Detour 1 provider", conns)]
                base_rows.append([str(conns), f"{paired(BASELINE, conns):.3f}",
                                  f"{paired('c Detour 1 provider', conns):.3f}",
                                  f"{c[0] / e[0]:.3f}", f"{e[1] - b[1]:+.3f}", f"{c[1] - b[1]:+.3f}"])
            self.emit(f"Baseline (e) is Detour at `{self.args.baseline}`, side by side in the same rounds:\n")
            heads = ["conns", "e/b req/s", "c/b req/s", "c/e req/s", "e-b p50 ms", "c-b p50 ms"]
            self.emit(table(heads, base_rows))
            self.emit()
        # The p50 target is per-request latency, read at 1 connection; at 10 connections p50 is queueing
        # (about conns / throughput), already covered by the throughput ratio.
        ok = all(float(r[1]) >= 0.95 for r in rows) and float(rows[0][3]) <= 0.5
        self.emit(f"Target c/b >= 0.95 (1 and 10 conns) and c-b p50 <= +0.5 ms (1 conn): "
                  f"**{'met' if ok else 'NOT met'}**. "
                  f"(d) warm-up statuses {[w.statuses for w in warm]}; requests reaching the open primary "
                  f"during "
                  f"the measured runs: **{primary_hits}**.\n")
        self.stop_extra = [*noops[1:], *controls, *dets[1:], *opens, *bases[1:]]

    # 2 ---------------------------------------------------------------------------------------
    def failover(self) -> None:
        samples = 10 if self.quick else 30
        hang_samples = 3 if self.quick else 5
        after_open = 50 if self.quick else 200
        mock = self.mock
        extra = start_mock(self.procs, {"s529": "529", "hang": "hang", "backup": "ok"}, self.load_cpu)
        refused = free_port()  # nothing listens here
        backup_direct = load(extra.ports["backup"], 1, 200).latencies
        bd = ms(pct(backup_direct, 50))
        kinds = [
            ("500", mock.url("fail"), mock.ports["fail"], samples),
            ("529", extra.url("s529"), extra.ports["s529"], samples),
            ("refused", f"http://127.0.0.1:{refused}", None, samples),
            ("hang (first_byte)", extra.url("hang"), extra.ports["hang"], hang_samples),
        ]
        rows = []
        open_rows = []
        for (label, script), (kind, url, port, k) in [(sc, kd) for kd in kinds for sc in self.scripts()]:
            # The breaker opens on failure k+1 (consecutive failures); the error-rate rule is kept out of
            # the way by min_requests, so the first k requests all really fail over.
            breaker = {"failure_threshold": k + 1, "min_requests": 100000, "open_for": "10m",
                       "max_open_for": "1h"}
            timeouts = {"connect": f"{HANG_CONNECT:g}s", "first_byte": f"{HANG_FIRST_BYTE:g}s", "idle": "5s"}
            name = "f_" + kind.split()[0] + ("_base" if script != DETOUR_SCRIPT else "")
            cfg = detour_config(self.workdir, name, [("primary", url), ("backup", extra.url("backup"))],
                                breaker=breaker, timeouts=timeouts, legacy=script != DETOUR_SCRIPT)
            px = start_proxy(self.procs, name, script, {"detour_config": str(cfg)}, self.confdir,
                             self.proxy_cpu)
            try:
                # own time of the failed attempt, measured directly
                if kind == "refused":
                    own = ms(pct(connect_refused_time(refused, 50), 50))
                elif kind.startswith("hang"):
                    # Since the redesign first_byte counts from the established connection; round 1
                    # (no exchange.py) counted connect + first_byte from the start.
                    round1 = script != DETOUR_SCRIPT and not (script.parent / "exchange.py").exists()
                    own = (HANG_FIRST_BYTE + (HANG_CONNECT if round1 else 0.0)) * 1000.0
                else:
                    own = ms(pct(load(port, 1, 100).latencies, 50))
                before = mock_count(port) if port else 0
                res = load(px.port, 1, k)
                hits = (mock_count(port) - before) if port else None
                total = ms(pct(res.latencies, 50))
                attempts_ok = res.statuses.get(200, 0)
                rows.append([label, kind, str(k), f"{total:.2f}", f"{own:.2f}", f"{bd:.3f}",
                             f"{total - own - bd:+.2f}", f"{total - own - self.c_p50[1]:+.2f}",
                             f"{attempts_ok}/{k}", "-" if hits is None else str(hits)])
                # open the breaker with one more failure, then measure with it open
                load(px.port, 1, 1)
                before = mock_count(port) if port else 0
                res = load(px.port, 1, after_open)
                hits = (mock_count(port) - before) if port else None
                p50 = ms(pct(res.latencies, 50))
                open_rows.append([label, kind, str(after_open),
                                  "n/a (nothing listens)" if hits is None else str(hits),
                                  f"{p50:.3f}", f"{self.c_p50[1]:.3f}", f"{p50 - self.c_p50[1]:+.3f}",
                                  f"{res.statuses}"])
            finally:
                self.procs.stop(px.proc)
        self.procs.stop(extra.proc)
        self.emit("### 2. Failover cost (1 connection, sequential; p50)\n")
        self.emit(f"Primary fails, backup healthy. `own` = the failed attempt's own time measured directly "
                  f"(a 500/529 answer from the mock, a refused connect, or the configured first-byte "
                  f"deadline for the hang: first_byte = {HANG_FIRST_BYTE:g}s after the connection, or "
                  f"connect+first_byte = {HANG_CONNECT + HANG_FIRST_BYTE:g}s for the round-1 baseline). "
                  f"`added` = total - own - backup direct; `added vs c` = total - own - (c) p50.\n")
        self.emit(table(["detour", "primary", "n", "total ms", "own ms", "backup direct ms", "added ms",
                         "added vs c ms", "200s", "primary hits"], rows))
        self.emit()
        self.emit("Breaker open (after one more failure):\n")
        self.emit(table(["detour", "primary", "n", "attempts on primary", "p50 ms", "(c) p50 ms",
                         "delta ms", "statuses"], open_rows))
        self.emit()

    # 3 ---------------------------------------------------------------------------------------
    def streaming(self) -> None:
        n = 5 if self.quick else 10
        direct: list[tuple[float, list[float], int]] = []
        plain: list[tuple[float, list[float], int]] = []
        proxied: list[tuple[float, list[float], int]] = []
        based: list[tuple[float, list[float], int]] = []
        for _ in range(n):  # alternate
            direct += stream_samples(self.mock.ports["ok"], 1)
            plain += stream_samples(self.noop.port, 1)
            proxied += stream_samples(self.det.port, 1)
            if self.base is not None:
                based += stream_samples(self.base.port, 1)

        def summarize(samples: list[tuple[float, list[float], int]]) -> dict[str, float]:
            heads = [s[0] for s in samples]
            firsts = [s[1][0] for s in samples if s[1]]
            lasts = [s[1][-1] for s in samples if s[1]]
            gaps = [b - a for s in samples for a, b in zip(s[1], s[1][1:], strict=False)]
            counts = [len(s[1]) for s in samples]
            tokens = [s[1][FIRST_TOKEN_EVENT] for s in samples if len(s[1]) > FIRST_TOKEN_EVENT]
            return {
                "ttfb": ms(statistics.median(heads)),
                "first": ms(statistics.median(firsts)),
                "token": ms(statistics.median(tokens)),
                "last": ms(statistics.median(lasts)),
                "gap_dev": ms(max(abs(g - 0.05) for g in gaps)),
                "gap_p50": ms(statistics.median(gaps)),
                "events": min(counts),
            }

        def per_event_dev(base: list[tuple[float, list[float], int]]) -> float:
            """max over events i from the first token on of |median arrival_i via Detour - median
            arrival_i on base - first-token delta| (the events before it are held back with the head)."""
            count = min(min(len(s[1]) for s in base), min(len(s[1]) for s in proxied))
            first = FIRST_TOKEN_EVENT
            def at(samples: list[tuple[float, list[float], int]], i: int) -> float:
                return statistics.median(s[1][i] for s in samples)

            shift = at(proxied, first) - at(base, first)
            return ms(max(abs(at(proxied, i) - at(base, i) - shift) for i in range(first, count)))

        d, b, p = summarize(direct), summarize(plain), summarize(proxied)
        arms = [("a direct", d), ("b mitmdump+noop (streaming)", b), ("c Detour", p)]
        if based:
            arms.append((f"e Detour@{self.args.baseline}", summarize(based)))
        self.emit(f"### 3. Streaming (SSE, {SSE_EVENTS} events 50 ms apart, {n} streams each, medians)\n")
        rows = [[name, f"{s['ttfb']:.2f}", f"{s['first']:.2f}", f"{s['token']:.2f}", f"{s['last']:.2f}",
                 f"{s['gap_p50']:.2f}", f"{s['gap_dev']:.2f}", str(s["events"])]
                for name, s in arms]
        self.emit(table(["path", "TTFB (headers) ms", "1st event ms", "1st token ms", "last event ms",
                         "gap p50 ms", "max |gap-50ms| ms", "events"], rows))
        self.emit()
        statuses = {s[2] for s in direct + plain + proxied}
        self.emit(f"Time to first token (the first `content_block_delta`; Detour holds the head and the "
                  f"events before it until then): Detour vs plain mitmdump **{p['token'] - b['token']:+.2f} "
                  f"ms**, vs direct {p['token'] - d['token']:+.2f} ms.\n")
        self.emit(f"Detour vs direct: TTFB delta **{p['ttfb'] - d['ttfb']:+.2f} ms**, last-event delta "
                  f"{p['last'] - d['last']:+.2f} ms, max per-event arrival deviation (after the TTFB shift) "
                  f"**{per_event_dev(direct):.2f} ms** (from the first token on). "
                  f"Detour vs plain mitmdump: TTFB delta "
                  f"**{p['ttfb'] - b['ttfb']:+.2f} ms**, max per-event deviation "
                  f"{per_event_dev(plain):.2f} ms. "
                  f"Statuses {sorted(statuses)}. Events arrive as sent (last event ≈ first + "
                  f"{(SSE_EVENTS - 1) * 50} ms), "
                  f"not at the end.\n")

    # 4 ---------------------------------------------------------------------------------------
    def memory(self) -> None:
        n = 2000 if self.quick else 10_000
        for px in self.stop_extra:
            self.procs.stop(px.proc)
        noop = start_proxy(self.procs, "m_noop", NOOP_SCRIPT, {"noop_target": self.mock.url("ok")},
                           self.confdir, self.proxy_cpu)
        cfg = detour_config(self.workdir, "m_detour", [("primary", self.mock.url("ok"))])
        det = start_proxy(self.procs, "m_detour", DETOUR_SCRIPT, {"detour_config": str(cfg)}, self.confdir,
                          self.proxy_cpu)
        rows = []
        for px in (noop, det):
            idle = px.vm("VmHWM")
            half = load(px.port, 10, n // 2)
            mid = px.vm("VmHWM")
            rest = load(px.port, 10, n - n // 2)
            rows.append([px.name, str(n), f"{idle / 1024:.1f}", f"{mid / 1024:.1f}",
                         f"{px.vm('VmHWM') / 1024:.1f}",
                         f"{px.vm('VmRSS') / 1024:.1f}", str(half.errors + rest.errors)])
        hwm = [float(r[4]) for r in rows]
        self.emit(f"### 4. Memory (mitmdump peak RSS, {n} requests over 10 connections)\n")
        self.emit(table(["process", "requests", "VmHWM at start MiB", f"VmHWM after {n // 2} MiB",
                         f"VmHWM after {n} MiB", "VmRSS at end MiB", "errors"], rows))
        self.emit()
        self.emit(f"Detour - no-op peak RSS: **{hwm[1] - hwm[0]:+.1f} MiB** ({hwm[1] / hwm[0]:.2f}x).\n")
        self.procs.stop(noop.proc)
        self.procs.stop(det.proc)

    # 5 ---------------------------------------------------------------------------------------
    def decision(self) -> None:
        from addon.breaker import State
        from addon.classify import Outcome, Verdict
        from addon.control import Control
        from addon.model import App, Config, Provider
        from addon.router import Router
        from addon.state import SqliteBackend

        iterations = 20_000 if self.quick else 100_000
        providers = tuple(Provider(f"p{i}", f"http://127.0.0.1:{9000 + i}") for i in range(3))
        app = App("claude", ("api.anthropic.com",), providers, ("/v1/messages*",))
        config = Config(self.workdir / "micro.yaml", self.workdir / "micro.db", (app,))
        ok = Verdict(Outcome.SUCCESS, "http 200", 200)
        fail = Verdict(Outcome.PROVIDER_FAILURE, "http 500", 500)
        rows = []

        def timed(label: str, fn: object, reps: int = 5) -> None:
            best = float("inf")
            for _ in range(reps):
                t0 = time.perf_counter()
                fn(iterations)  # type: ignore[operator]
                best = min(best, time.perf_counter() - t0)
            rows.append([label, str(iterations), f"{best / iterations * 1e6:.2f}"])

        def router_loop(router: Router) -> object:
            def run(k: int) -> None:
                select, acquire, record = router.select_providers, router.acquire, router.record_result
                for _ in range(k):
                    p = select("claude")[0]
                    permit = acquire("claude", p.id)
                    assert permit is not None
                    record("claude", p.id, permit, ok)
            return run

        healthy = Router(config, time.monotonic)
        timed("Router: select+acquire+record, 3 healthy", router_loop(healthy))
        opened = Router(config, time.monotonic)
        for _ in range(10):  # fail p0 until its circuit opens
            permit = opened.acquire("claude", "p0")
            if permit is None:
                break
            opened.record_result("claude", "p0", permit, fail)
        assert opened.breaker("claude", "p0").state() is State.OPEN
        timed("Router: same, primary circuit open", router_loop(opened))

        store = SqliteBackend(self.workdir / "micro.db")
        core = Control(config, time.time, store)
        try:
            def core_run(k: int) -> None:
                for _ in range(k):
                    p = core.candidates(app)[0]
                    permit = core.acquire("claude", p.id)
                    assert permit is not None
                    core.record("claude", p.id, permit, ok, 1.0, 200)
            timed("Control: candidates+acquire+record (incl. attempt-log enqueue)", core_run, reps=3)
            timed("Exchange: one failover, 529 then 200 (events in, actions out)",
                  exchange_loop(app, providers), reps=3)
        finally:
            core.close()
        self.emit(f"### 5. Decision cost (in-process, best of runs, {iterations} iterations)\n")
        self.emit(table(["loop", "iterations", "µs per request"], rows))
        self.emit()

    # profile ----------------------------------------------------------------------------------
    def profile(self, path: Path) -> None:
        import pstats

        n = 2000 if self.quick else 6000
        mock = self.mock
        cfg = detour_config(self.workdir, "p_detour", [("primary", mock.url("ok"))])
        prefix = [sys.executable, "-m", "cProfile", "-o", str(path)]
        px = start_proxy(self.procs, "p_detour", DETOUR_SCRIPT, {"detour_config": str(cfg)}, self.confdir,
                         self.proxy_cpu, prefix=prefix)
        load(px.port, 10, n)
        self.procs.stop(px.proc)
        if not path.exists():
            self.emit("(profile not written)")
            return
        import io

        buf = io.StringIO()
        stats = pstats.Stats(str(path), stream=buf)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats("addon", 30)
        print(buf.getvalue())
        path.with_suffix(".txt").write_text(buf.getvalue())


def exchange_loop(app: object, providers: tuple[object, ...]) -> Callable[[int], None]:
    """The decision cost of a whole failover: one Exchange driven through a 529 and a 200."""
    from addon.breaker import Permit
    from addon.exchange import BodyData, BodyEnd, Connected, Delivery, Exchange, Picked, ResponseHead, Start
    from addon.formats import DIALECTS

    permit = Permit(0, probe=False)
    json_head = ((b"content-type", b"application/json"),)

    def run(k: int) -> None:
        for _ in range(k):
            ex = Exchange(app, DIALECTS["anthropic"], Delivery.WHOLE, list(providers))  # type: ignore[arg-type]
            ex.handle(Start(0.0))
            for status in (529, 200):
                ex.handle(Picked(ex.queue.pop(0), permit, 0.0))  # type: ignore[arg-type]
                ex.handle(Connected(0.0))
                ex.handle(ResponseHead(status, json_head, 0.0, 0.0))
                ex.handle(BodyData(b"{}", 0.0))
                ex.handle(BodyEnd(0.0))

    return run


def machine(proxy_cpu: int | None, load_cpu: int | None) -> list[str]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import mitmproxy.version

    return [
        f"- nproc: {os.cpu_count()}; CPU: {model}; kernel {platform.release()}",
        f"- Python {platform.python_version()} ({sys.executable}); mitmproxy {mitmproxy.version.VERSION}",
        f"- pinning: {'taskset' if TASKSET else 'none'}; mitmdump on CPU {proxy_cpu}, load generator + "
        f"mocks on CPU {load_cpu}",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer requests (about 4x faster)")
    parser.add_argument("--out", type=Path, help="also write the results as a Markdown fragment here")
    parser.add_argument("--profile", type=Path, help="also cProfile mitmdump+Detour under load, write here")
    parser.add_argument("--only", default="12345", help="sections to run, e.g. 125 (default all)")
    parser.add_argument("--baseline", help="also measure Detour as of this git revision, side by side")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="detour-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        bench.pin_self()
        bench.emit(f"## Results: Python {platform.python_version()}, mitmproxy "
                   f"{__import__('mitmproxy.version').version.VERSION}{' (--quick)' if args.quick else ''}\n")
        for line in machine(bench.proxy_cpu, bench.load_cpu):
            bench.emit(line)
        bench.emit()
        try:
            bench.throughput()
            if "2" in args.only:
                bench.failover()
            if "3" in args.only:
                bench.streaming()
            if "4" in args.only:
                bench.memory()
            if "5" in args.only:
                bench.decision()
            if args.profile:
                bench.profile(args.profile.resolve())
        finally:
            bench.procs.stop_all()
            bench.close()
        bench.emit(f"_Total bench time {time.monotonic() - started:.0f} s._")
        if args.out:
            args.out.write_text("\n".join(bench.out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
