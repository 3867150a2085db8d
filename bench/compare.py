"""Detour next to what users compare it with, side by side in one run: requests, and streams at scale.

    python bench/compare.py [--quick] [--only rs] [--streams 50,200,500] [--out FRAGMENT.md]

Systems, each a separate process on the proxy's CPU, all in front of the same provider
(`bench/streamserver.py`, on the load generator's CPU):
  plain    mitmdump -s bench/noop_rewrite.py (the least a routing addon can do)
  mitmdump Detour under `mitmdump -s addon/detour.py`
  lean     Detour under the lean launcher (`detour`, `addon/mitm/launcher.py`)
  ccr      claude-code-router, pinned from npm (`bench/ccr.py`), logging off; skipped with a note if
           npm or node is unavailable
and, for streams, `direct` (the client reading the provider itself), the floor every system adds to.

r. requests: non-streaming `POST /v1/messages`, 1 and 10 keep-alive connections, closed loop; rounds
   alternate the systems' order (ABBA) and report the median req/s of rounds, pooled p50/p99 and
   RSS after the load.
s. streams: N concurrent SSE streams (default N = 50, 200, 500), each 200 events 20 ms apart, opened
   evenly over one second; a fresh process per system and N. Every event carries the provider's send
   time, so each event's transit time is measured. Measured in the steady window, from just after the
   last stream opened until the first one ends (connection set-up is the requests section's
   business): transit p50/p99 and added p50/p99 versus direct, CPU seconds of the system's process per
   1,000 events (/proc: user + system; also over the whole run, set-up included), and RSS per open
   stream (the window's highest VmRSS less the VmRSS before, over N).

All proxied systems run pinned to the same CPU (the load generator and provider on the other), so
a multi-threaded one (Node's) gets no more CPU than mitmproxy's single event loop.
Every process it starts is stopped at the end; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as B

STREAM_SERVER = B.BENCH / "streamserver.py"
EVENTS = 200
INTERVAL_MS = 20
STREAM_TIMEOUT = 120.0
RAMP = 1.0  # seconds over which the streams are opened
SETTLE = 0.2  # seconds after the last stream opened before the steady window starts
SAMPLE_EVERY = 0.05  # seconds between CPU/RSS samples of the measured process
TICK = os.sysconf("SC_CLK_TCK")


class System(B.Proxy):
    """One running proxy (run.py's, which reads its memory from /proc), and its CPU time."""

    def cpu(self) -> float:
        """User + system seconds of the process so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK


class Launcher:
    """Starts each system on a fresh port in front of the provider at `upstream`."""

    def __init__(self, procs: B.Procs, workdir: Path, cpu: int | None, upstream: str) -> None:
        self.procs = procs
        self.workdir = workdir
        self.cpu = cpu
        self.upstream = upstream
        self.confdir = workdir / "confdir"
        self.ccr_entry: Path | None = None
        self.ccr_note = ""
        self.count = 0

    def ccr_label(self) -> str:
        if self.ccr_entry is None:
            return "claude-code-router left out (--no-ccr)"
        import ccr

        return f"claude-code-router {ccr.CCR_VERSION} ({self.ccr_entry.relative_to(B.REPO)})"

    def names(self) -> list[str]:
        return ["plain", "mitmdump", "lean", *(["ccr"] if self.ccr_entry else [])]

    def find_ccr(self) -> None:
        import ccr

        try:
            self.ccr_entry = ccr.install(B.REPO / ".bench-cache" / "ccr")
        except ccr.CcrUnavailable as e:
            self.ccr_note = f"claude-code-router skipped: {e}"

    def start(self, name: str) -> System:
        self.count += 1
        label = f"{name}{self.count}"
        port = B.free_port()
        env = dict(os.environ)
        if name == "ccr":
            import ccr

            assert self.ccr_entry is not None
            argv, env = ccr.prepare(self.workdir / label, self.ccr_entry, self.upstream, port)
        else:
            argv = self.mitmproxy_argv(name, label, port)
        proc = self.procs.spawn(B.pinned(argv, self.cpu), label, env=env)
        if not B.wait_for_port(port, B.START_TIMEOUT):
            self.procs.stop(proc)
            log = (self.procs.workdir / f"{label}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{label} did not start:\n{log}")
        return System(name, port, proc)

    def mitmproxy_argv(self, name: str, label: str, port: int) -> list[str]:
        bindir = Path(sys.executable).parent
        sets = {"confdir": str(self.confdir), "connection_strategy": "lazy"}
        if name == "plain":
            head = [str(bindir / "mitmdump"), "-s", str(B.NOOP_SCRIPT)]
            sets["noop_target"] = self.upstream
        else:
            config = B.detour_config(self.workdir, label, [("primary", self.upstream)])
            sets["detour_config"] = str(config)
            head = (
                [str(bindir / "mitmdump"), "-s", str(B.DETOUR_SCRIPT)]
                if name == "mitmdump"
                else [str(bindir / "detour")]
            )
        argv = list(head)
        for key, value in sets.items():
            argv += ["--set", f"{key}={value}"]
        return [*argv, "--mode", f"reverse:https://api.anthropic.com@127.0.0.1:{port}", "-q"]


def request(stream: bool) -> bytes:
    body = (
        b'{"model":"claude-sonnet-4-5","max_tokens":256,"stream":%s,'
        b'"messages":[{"role":"user","content":"hi"}]}' % (b"true" if stream else b"false")
    )
    return (
        b"POST /v1/messages HTTP/1.1\r\nhost: api.anthropic.com\r\ncontent-type: application/json\r\n"
        b"x-api-key: sk-ant-bench\r\nanthropic-version: 2023-06-01\r\ncontent-length: %d\r\n\r\n%s"
        % (len(body), body)
    )


# --- streams ----------------------------------------------------------------------------------


class Dechunker:
    """Incremental HTTP/1.1 chunked decoding: proxies may re-chunk, so event bytes are reassembled."""

    def __init__(self) -> None:
        self.raw = b""
        self.need = -1  # bytes of the current chunk still expected (+2 for its CRLF); -1: a size line
        self.ended = False

    def feed(self, data: bytes) -> bytes:
        self.raw += data
        out: list[bytes] = []
        for _ in range(100_000):
            if self.need < 0:
                end = self.raw.find(b"\r\n")
                if end < 0:
                    break
                size = int(self.raw[:end].split(b";")[0], 16)
                self.raw = self.raw[end + 2 :]
                if size == 0:
                    self.ended = True
                    break
                self.need = size + 2
            take = self.raw[: self.need]
            self.raw = self.raw[self.need :]
            self.need -= len(take)
            out.append(take if self.need > 1 else take[: len(take) - (2 - self.need)])
            if self.need > 0:
                break
            self.need = -1
        return b"".join(out)


@dataclass
class StreamRun:
    #: (provider's send time, transit seconds) of every delta event that arrived.
    samples: list[tuple[float, float]] = field(default_factory=list)
    finished: int = 0
    failed: list[str] = field(default_factory=list)
    #: When the last stream was opened, and the send time of the first stream's last delta: between
    #: the two (less a settling margin), every stream is open and streaming.
    all_open: float = 0.0
    first_end: float = float("inf")
    #: (time, CPU seconds, RSS kB) of the measured process, every SAMPLE_EVERY seconds.
    usage: list[tuple[float, float, int]] = field(default_factory=list)

    def settled(self, n: int) -> bool:
        return self.finished + len(self.failed) >= n


class StreamClient(asyncio.Protocol):
    """One streaming request; records each delta's transit time from the stamp the provider wrote."""

    def __init__(self, run: StreamRun, done: asyncio.Future[None], n: int) -> None:
        self.run = run
        self.done = done
        self.n = n
        self.head = b""
        self.body: Dechunker | None = None
        self.events = b""
        self.seen = 0
        self.ended = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(request(True))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if self.body is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self.head.split(b" ", 2)[1]
            if status != b"200":
                self.end(f"status {status.decode()}")
                return
            data, self.body = self.head[end + 4 :], Dechunker()
        self.events += self.body.feed(data)
        cut = self.events.rfind(b"\n\n")
        if cut >= 0:
            complete, self.events = self.events[: cut + 2], self.events[cut + 2 :]
            self.stamps(complete, now)
        if self.body.ended:
            self.end(None if self.seen == EVENTS else f"{self.seen} of {EVENTS} events")

    def stamps(self, complete: bytes, now: float) -> None:
        start = 0
        for _ in range(100_000):
            at = complete.find(b'"t=', start)
            if at < 0:
                return
            end = complete.index(b'"', at + 3)
            sent = float(complete[at + 3 : end])
            self.run.samples.append((sent, now - sent))
            start = end
            self.seen += 1
            if self.seen == EVENTS:
                self.run.first_end = min(self.run.first_end, sent)

    def end(self, failure: str | None) -> None:
        if self.ended:
            return
        self.ended = True
        if failure is None:
            self.run.finished += 1
        else:
            self.run.failed.append(failure)
        self.transport.close()
        if self.run.settled(self.n) and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.end(f"closed after {self.seen} events")


async def _streams(port: int, n: int, system: System | None) -> StreamRun:
    loop = asyncio.get_running_loop()
    run = StreamRun()
    done: asyncio.Future[None] = loop.create_future()

    async def sample() -> None:
        for _ in range(int(STREAM_TIMEOUT / SAMPLE_EVERY)):
            if system is not None:
                run.usage.append((time.monotonic(), system.cpu(), system.vm("VmRSS")))
            await asyncio.sleep(SAMPLE_EVERY)

    sampler = asyncio.ensure_future(sample())
    started = loop.time()
    for i in range(n):  # opened evenly over RAMP: connection set-up isn't what this measures
        await asyncio.sleep(max(0.0, started + RAMP * i / n - loop.time()))
        try:
            await loop.create_connection(lambda: StreamClient(run, done, n), "127.0.0.1", port)
        except OSError as e:
            run.failed.append(f"connect: {e}")
    run.all_open = time.monotonic()
    try:
        if not run.settled(n):
            await asyncio.wait_for(done, STREAM_TIMEOUT)
    finally:
        sampler.cancel()
    return run


@dataclass
class StreamResult:
    n: int
    events: int
    failed: list[str]
    #: Transit times of the events sent while every stream was open (ms).
    p50: float
    p99: float
    cpu_per_1000: float
    cpu_per_1000_whole: float
    rss_per_stream_kib: float


def measure_streams(system: System | None, port: int, n: int) -> StreamResult:
    """One run of `n` streams; `system` None is the direct run (no process to measure)."""
    if system is not None:  # warm-up: the code paths of a stream and a request, then the idle RSS
        asyncio.run(_streams(port, 2, None))
        B.load(port, 1, 20, request(False))
    rss_before = system.vm("VmRSS") if system else 0
    cpu_before = system.cpu() if system else 0.0
    run = asyncio.run(_streams(port, n, system))
    cpu_whole = (system.cpu() - cpu_before) if system else 0.0
    # The steady window: every stream open (plus a margin for the last ones' set-up) until one ends.
    start, end = run.all_open + SETTLE, run.first_end
    steady = [delay for sent, delay in run.samples if start <= sent <= end]
    inside = [u for u in run.usage if start <= u[0] <= end]
    cpu_steady = rss_open = float("nan")
    if len(inside) >= 2:
        (t0, c0, _), (t1, c1, _) = inside[0], inside[-1]
        events = sum(1 for sent, _ in run.samples if t0 <= sent <= t1)
        cpu_steady = (c1 - c0) / events * 1000 if events else float("nan")
        rss_open = (max(u[2] for u in inside) - rss_before) / n
    total = len(run.samples)
    return StreamResult(
        n,
        total,
        run.failed,
        B.ms(B.pct(steady, 50)),
        B.ms(B.pct(steady, 99)),
        cpu_steady,
        cpu_whole / total * 1000 if total else float("nan"),
        rss_open,
    )


# --- the run ----------------------------------------------------------------------------------


class Compare:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.procs = B.Procs(workdir)
        self.proxy_cpu, self.load_cpu = B.cpus()
        self.out: list[str] = []

    def emit(self, text: str = "") -> None:
        print(text, flush=True)
        self.out.append(text)

    def provider(self) -> int:
        port = B.free_port()
        argv = [sys.executable, str(STREAM_SERVER), str(port), str(EVENTS), str(INTERVAL_MS)]
        proc = self.procs.spawn(B.pinned(argv, self.load_cpu), "provider", stdout=subprocess.PIPE)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("bench/streamserver.py did not start")
        return port

    def requests(self, launcher: Launcher, provider: int) -> None:
        n = 300 if self.args.quick else 1000
        rounds = 4 if self.args.quick else 8  # ABBA: each order equally often
        systems = {name: launcher.start(name) for name in launcher.names()}
        #: Where each target listens; `direct` is the provider itself (the floor for added latency).
        ports = {"direct": provider, **{name: system.port for name, system in systems.items()}}
        body = request(False)
        for port in ports.values():  # warm-up
            B.load(port, 10, 200, body)
        results: dict[tuple[str, int], list[B.LoadResult]] = {}
        for r in range(rounds):
            for conns in (1, 10):
                order = list(ports.items())
                if r % 2:
                    order.reverse()
                for name, port in order:
                    results.setdefault((name, conns), []).append(B.load(port, conns, n, body))
        self.emit(
            f"### Requests ({n} per run, {rounds} rounds alternating the order, closed loop, "
            "keep-alive, non-streaming)\n"
        )
        rows = []
        rps: dict[tuple[str, int], list[float]] = {}
        p50: dict[tuple[str, int], float] = {}
        for (name, conns), runs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            lat = [x for run in runs for x in run.latencies]
            rps[(name, conns)] = [run.rps for run in runs]
            p50[(name, conns)] = B.ms(B.pct(lat, 50))
            rows.append(
                [
                    name,
                    str(conns),
                    f"{statistics.median(rps[(name, conns)]):,.0f}",
                    f"{p50[(name, conns)]:.3f}",
                    f"{B.ms(B.pct(lat, 99)):.3f}",
                    str(sum(run.errors for run in runs)),
                    f"{systems[name].vm('VmRSS') / 1024:.1f}" if name in systems else "-",
                ]
            )
        self.emit(
            B.table(["system", "conns", "req/s (median)", "p50 ms", "p99 ms", "errors", "RSS MiB"], rows)
        )
        self.emit()

        def ratio(a: str, b: str, conns: int) -> str:
            if (a, conns) not in rps or (b, conns) not in rps:
                return "-"
            paired = [x / y for x, y in zip(rps[(a, conns)], rps[(b, conns)], strict=True)]
            return f"{statistics.median(paired):.2f}"

        def added(name: str, conns: int) -> str:
            if (name, conns) not in p50:
                return "-"
            return f"{p50[(name, conns)] - p50[('direct', conns)]:+.3f}"

        rows = [
            [
                str(c),
                ratio("lean", "plain", c),
                ratio("lean", "mitmdump", c),
                ratio("lean", "ccr", c),
                ratio("ccr", "plain", c),
                ratio("mitmdump", "plain", c),
                *(added(name, c) for name in ("plain", "mitmdump", "lean", "ccr")),
            ]
            for c in (1, 10)
        ]
        self.emit(
            "Ratios: median over rounds of the round's req/s ratio. Added p50: the system's p50 less "
            "the provider's own (direct).\n"
        )
        headers = ["conns", "lean/plain", "lean/mitmdump", "lean/ccr", "ccr/plain", "mitmdump/plain"]
        headers += [f"added p50 ms {name}" for name in ("plain", "mitmdump", "lean", "ccr")]
        self.emit(B.table(headers, rows))
        self.emit()
        for system in systems.values():
            self.procs.stop(system.proc)

    def streams(self, launcher: Launcher, port: int) -> None:
        counts = [int(x) for x in self.args.streams.split(",")]
        self.emit(
            f"### Streams ({EVENTS} events {INTERVAL_MS} ms apart per stream; a fresh process per "
            "system and N)\n"
        )
        rows = []
        for n in counts:
            direct = measure_streams(None, port, n)
            rows.append(self.stream_row("direct", direct, direct))
            for name in launcher.names():
                system = launcher.start(name)
                try:
                    rows.append(self.stream_row(name, measure_streams(system, system.port, n), direct))
                finally:
                    self.procs.stop(system.proc)
        self.emit(
            B.table(
                [
                    "N",
                    "system",
                    "events",
                    "failed",
                    "transit p50 ms",
                    "p99 ms",
                    "added p50 ms",
                    "added p99 ms",
                    "CPU s / 1000 events",
                    "(whole run)",
                    "RSS KiB / stream",
                ],
                rows,
            )
        )
        self.emit()

    @staticmethod
    def stream_row(name: str, r: StreamResult, direct: StreamResult) -> list[str]:
        failed = f"{len(r.failed)}" + (f" ({r.failed[0]})" if r.failed else "")
        cpu = "-" if name == "direct" else f"{r.cpu_per_1000:.3f}"
        whole = "-" if name == "direct" else f"{r.cpu_per_1000_whole:.3f}"
        rss = "-" if name == "direct" else f"{r.rss_per_stream_kib:.1f}"
        return [
            str(r.n),
            name,
            str(r.events),
            failed,
            f"{r.p50:.2f}",
            f"{r.p99:.2f}",
            f"{r.p50 - direct.p50:+.2f}",
            f"{r.p99 - direct.p99:+.2f}",
            cpu,
            whole,
            rss,
        ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer requests and rounds")
    parser.add_argument("--only", default="rs", help="r: requests, s: streams (default both)")
    parser.add_argument(
        "--streams", default="50,200,500", help="concurrent stream counts (default 50,200,500)"
    )
    parser.add_argument("--no-ccr", action="store_true", help="leave claude-code-router out")
    parser.add_argument("--out", type=Path, help="also write the results as a Markdown fragment here")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="detour-compare-") as tmp:
        bench = Compare(args, Path(tmp))
        if bench.load_cpu is not None:
            os.sched_setaffinity(0, {bench.load_cpu})
        import mitmproxy.version

        bench.emit(
            f"## Detour vs plain mitmdump vs claude-code-router: Python {sys.version.split()[0]}, "
            f"mitmproxy {mitmproxy.version.VERSION}{' (--quick)' if args.quick else ''}\n"
        )
        for line in B.machine(bench.proxy_cpu, bench.load_cpu):
            bench.emit(line)
        try:
            port = bench.provider()
            launcher = Launcher(bench.procs, Path(tmp), bench.proxy_cpu, f"http://127.0.0.1:{port}")
            if not args.no_ccr:
                launcher.find_ccr()
            bench.emit(f"- {launcher.ccr_note or launcher.ccr_label()}")
            bench.emit()
            if "r" in args.only:
                bench.requests(launcher, port)
            if "s" in args.only:
                bench.streams(launcher, port)
        finally:
            bench.procs.stop_all()
        bench.emit(
            f"_Total {time.monotonic() - started:.0f} s; command: python bench/compare.py "
            f"{' '.join(sys.argv[1:])}_"
        )
        if args.out:
            args.out.write_text("\n".join(bench.out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
