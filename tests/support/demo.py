"""`make demo`: see a failover on your own machine, with no key and no internet.

Starts two mock providers (`primary`, answering every request 529/503, and `backup`) and a mitmdump
with Detour in front of them, then runs each coding CLI it finds (on PATH, or pinned in the test
cache) once in base-URL mode and prints what happened. `--install` first installs the pinned CLIs
from npm into the cache (`DETOUR_CLI_CACHE`, default ~/.cache/detour/clis).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clis

STATUS = {"claude": 529, "codex": 503, "gemini": 503}


def found(install: bool) -> dict[str, Path]:
    cached = {}
    try:
        cached = clis.install(timeout=900) if install else {}
    except clis.Unavailable as e:
        print(f"could not install the CLIs: {e}")
    if not install:
        root = clis.cache_dir() / "node_modules" / ".bin"
        cached = {name: root / name for name in clis.CLIS if (root / name).exists()}
    return {**clis.on_path(), **cached}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true", help="install the pinned CLIs from npm first")
    parser.add_argument("cli", nargs="*", help=f"which of {', '.join(clis.CLIS)} (default: all found)")
    args = parser.parse_args(argv)
    unknown = set(args.cli) - set(clis.CLIS)
    if unknown:
        parser.error(f"unknown CLI {', '.join(sorted(unknown))}; choose from {', '.join(clis.CLIS)}")
    executables = found(args.install)
    names = [n for n in (args.cli or clis.CLIS) if n in executables]
    if not names:
        print("No coding CLI found. Run `make demo ARGS=--install` to install the pinned ones")
        print("(" + ", ".join(f"{c.package}@{c.version}" for c in clis.CLIS.values()) + ") from npm.")
        return 1
    failures = 0
    with tempfile.TemporaryDirectory(prefix="detour-demo-") as tmp:
        for name in names:
            with clis.Rig(Path(tmp) / name, primary_fault=STATUS[name]) as rig:
                print(f"\n== {name} ({executables[name]}) -> Detour at {rig.base_url(name)}")
                print(f"   primary answers every request {STATUS[name]}; backup is healthy")
                outcome = rig.run(name, executables[name], "base-url", prompt="Say hello.")
                answer = outcome.stdout.strip().splitlines()[-1:] or ["(nothing)"]
                print(f"   exit {outcome.returncode} in {outcome.seconds:.1f}s, the CLI printed: {answer[0]}")
                for line in rig.md.log_text().splitlines():
                    if "] detour" in line and "detour: loaded" not in line:
                        print("   " + line)
                failures += outcome.returncode != 0
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
