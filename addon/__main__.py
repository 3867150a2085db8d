"""`python -m addon usage`: usage and cost from the state database, without a running proxy.
`python -m addon run [mitmdump's options]`: Detour on the lean launcher (the `detour` command)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from addon.config import ConfigError, load_config
from addon.state.sqlite import read_attempts, read_log_start
from addon.usage import Pricing, parse_window, pruned_note, table, totals


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["run"]:
        # mitmdump's command line goes to the launcher untouched; imported here, so that `usage`
        # doesn't load mitmproxy.
        from addon.mitm.launcher import main as run

        return run(arguments[1:])
    parser = argparse.ArgumentParser(prog="python -m addon", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    usage = commands.add_parser(
        "usage", help="requests, tokens and cost per app, provider and model, from the state database"
    )
    usage.add_argument("--config", default="config.yaml", help="Detour's config file (default: config.yaml)")
    usage.add_argument("--since", default="24h", help="how far back: 30m, 1h, 24h, 7d... (default: 24h)")
    usage.add_argument("--json", action="store_true", help="print a JSON list, one object per group")
    commands.add_parser("run", help="Detour on the lean launcher; takes mitmdump's options (run --help)")
    args = parser.parse_args(arguments)
    try:
        window = parse_window(args.since)
        config = load_config(Path(args.config), _EveryVariableSet(os.environ))
        since = time.time() - window
        records = read_attempts(config.state, since)
    except (ValueError, ConfigError) as e:
        print(f"detour usage: {e}", file=sys.stderr)
        return 2
    groups = totals(records, Pricing(config))
    if args.json:
        print(json.dumps([g.as_json() for g in groups], indent=2))
    else:
        print(table(groups))
    start = read_log_start(config.state)
    if start is not None and start > since:
        print(pruned_note(start), file=sys.stderr)
    return 0


class _EveryVariableSet(dict[str, str]):
    """The environment, with every variable set: a report needs no keys, and a provider whose key
    isn't in this shell must still be in the config (its price multiplier), not disabled."""

    def get(self, key: str, default: object = None) -> str:
        return super().get(key) or "set-for-reporting"


if __name__ == "__main__":
    sys.exit(main())
