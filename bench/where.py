"""Where Detour's per-request time goes, next to the no-op baseline, in one run.

Starts mitmdump+noop (b) and mitmdump+Detour (c) as in `run.py` section 1, each with a shim that times
every hook with `time.perf_counter` inside the running proxy, sends the same load to both, and prints:

- per hook: calls and mean µs per call (b: the no-op's hooks; c: Detour's);
- per thread of mitmdump: CPU µs per request from /proc (c's extra thread is the state writer).

A diagnostic, not a benchmark: the timing shims themselves cost about 0.5 µs per hook. Usage:

    python bench/where.py [--requests 10000] [--conns 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as B  # bench/ is not a package: found through the path set above

SHIM = '''
import sys, time
sys.path[:0] = [{paths}]
from {module} import {cls} as Timed
HOOKS = {hooks}
totals = {{}}
def timed(name):
    inner = getattr(Timed, name)
    def hook(self, *args):
        started = time.perf_counter()
        try:
            return inner(self, *args)
        finally:
            calls, spent = totals.get(name, (0, 0.0))
            totals[name] = (calls + 1, spent + time.perf_counter() - started)
    setattr(Timed, name, hook)
for name in HOOKS:
    timed(name)
class HookTimesOut:
    def done(self):
        with open({out!r}, "w") as f:
            for name, (calls, spent) in totals.items():
                print(name, calls, spent / calls * 1e6, file=f)
addons = [Timed(), HookTimesOut()]
'''

DETOUR_HOOKS = ("requestheaders", "request", "responseheaders", "response", "error")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread of `pid` (utime + stime), keyed by 'tid name'."""
    tick = os.sysconf("SC_CLK_TCK")
    result = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        result[f"{tid} {name}"] = (int(fields[11]) + int(fields[12])) / tick
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--conns", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="detour-where-") as tmp:
        work = Path(tmp)
        procs = B.Procs(work)
        confdir = work / "conf"
        confdir.mkdir()
        proxy_cpu, load_cpu = B.cpus()
        try:
            mock = B.start_mock(procs, {"ok": "ok"}, load_cpu)
            shims = {
                "b": (B.BENCH, "noop_rewrite", "NoopRewrite", ("request", "responseheaders"),
                      {"noop_target": mock.url("ok")}),
                "c": (B.REPO, "addon.mitm.addon", "Detour", DETOUR_HOOKS, {"detour_config": str(
                    B.detour_config(work, "c", [("primary", mock.url("ok"))]))}),
            }
            proxies = {}
            for name, (path, module, cls, hooks, sets) in shims.items():
                script = work / f"timed_{name}.py"
                script.write_text(SHIM.format(paths=repr(str(path)), module=module, cls=cls, hooks=hooks,
                                              out=str(work / f"{name}.hooks")))
                proxies[name] = B.start_proxy(procs, name, script, sets, confdir, proxy_cpu)
            for proxy in proxies.values():
                B.load(proxy.port, args.conns, 500)
            for name, proxy in proxies.items():
                before = thread_cpu(proxy.proc.pid)
                result = B.load(proxy.port, args.conns, args.requests)
                after = thread_cpu(proxy.proc.pid)
                print(f"{name}: {result.rps:,.0f} req/s, errors {result.errors}")
                for thread, spent in after.items():
                    used = spent - before.get(thread, 0.0)
                    if used > 0:
                        print(f"  thread {thread}: {used / args.requests * 1e6:.1f} µs CPU per request")
            for proxy in proxies.values():
                procs.stop(proxy.proc)
            for name in proxies:
                print(f"{name} hooks (calls, mean µs per call):")
                for line in (work / f"{name}.hooks").read_text().splitlines():
                    hook, calls, mean = line.split()
                    print(f"  {hook:16s} {int(calls):7d} {float(mean):6.1f}")
        finally:
            procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
