"""Masters for the lean launcher's tests: the lean one (or mitmdump's, as the control) with their
process-wide log handlers taken out afterwards, and a bare master on a given addon manager (mitmproxy's
own, the oracle, or the hook table)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from mitmproxy import addonmanager, hooks, master, options
from mitmproxy.addons import script


@contextlib.contextmanager
def started(kind: type[master.Master]) -> Iterator[master.Master]:
    """`kind(Options())` (not running): its addons are loaded, so its options exist. Its event log
    and start-up error check install process-wide log handlers: uninstalled on the way out."""
    made = kind(options.Options())
    try:
        yield made
    finally:
        made.addons.get("errorcheck").finish()
        made._termlog_addon.uninstall()  # type: ignore[union-attr]


def on_manager(kind: type[addonmanager.AddonManager]) -> master.Master:
    """A bare master (also mitmproxy's `ctx.master`) whose addons are managed by `kind`."""
    made = master.Master(options.Options())
    made.options.changed.disconnect(made.addons._configure_all)
    made.addons = kind(made)
    return made


async def calls_of(made: master.Master, event: hooks.Hook, calls: list[str]) -> list[str]:
    """What the handlers appended to `calls` for `event` (cleared first)."""
    calls.clear()
    await made.addons.handle_lifecycle(event)
    return list(calls)


async def scripts_loaded(loader: script.ScriptLoader, count: int) -> None:
    """Until the loader has `count` scripts, each loaded (its file watcher loads them)."""
    deadline = asyncio.get_running_loop().time() + 10
    while asyncio.get_running_loop().time() < deadline:
        if len(loader.addons) == count and all(s.ns is not None for s in loader.addons):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("scripts not loaded within 10 s")
