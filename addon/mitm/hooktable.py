"""Hook dispatch for the lean launcher: each event goes only to the addons that implement it.

mitmproxy's `AddonManager.trigger_event` walks every addon (and its sub-addons) for every event, with
a `getattr`, a generator and a `safecall` context per addon, and `handle_lifecycle` follows each
flow event with an `update` event that the lean master's addons don't implement. Measured, that
walk is the largest part of a lean master's CPU per request. `HookTable` keeps, per event name, the
list of (addon, handler) in chain order, and calls only those.

The table is rebuilt (lazily, at the next event) whenever the addons can have changed: an addon
registered or removed (which is also how a `-s` script is loaded, reloaded or unloaded) and the
`scripts` option changing (the script loader reorders its scripts without either). Each handler
runs under its own `safecall`, as mitmproxy runs each top-level addon: an error is logged and the
next handler runs; `AddonHalt` stops the event.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from mitmproxy import addonmanager, exceptions, hooks

Handler = Callable[..., Any]

#: What the table needs of mitmproxy's AddonManager beyond the addon API (`internals.py` lists the
#: rest of Detour's such assumptions).
_RELIES_ON = ("_iter_hooks", "_configure_all", "add", "register", "remove", "clear", "trigger_event")


def usable() -> bool:
    """Whether this mitmproxy's AddonManager is still the one the table was written against; if not,
    the lean master keeps mitmproxy's own dispatch (slower, never wrong)."""
    manager = addonmanager.AddonManager
    return all(hasattr(manager, name) for name in _RELIES_ON) and hasattr(addonmanager, "safecall")


class HookTable(addonmanager.AddonManager):
    def __init__(self, master: Any) -> None:
        self._table: dict[str, list[Handler]] = {}
        super().__init__(master)

    def handlers(self, event: hooks.Hook) -> list[Handler]:
        """The handlers of `event`'s name in chain order (sub-addons right after their parent)."""
        found = self._table.get(event.name)
        if found is None:
            found = [func for top in self.chain for _, func in self._iter_hooks(top, event)]
            self._table[event.name] = found
        return found

    async def trigger_event(self, event: hooks.Hook) -> None:
        handlers = self.handlers(event)
        if not handlers:
            return
        args = event.args()
        for func in handlers:
            try:
                with addonmanager.safecall():
                    result = func(*args)
                    if result is not None and inspect.isawaitable(result):
                        await result
            except exceptions.AddonHalt:
                return

    def add(self, *addons: Any) -> None:
        super().add(*addons)
        self._table.clear()

    def register(self, addon: Any) -> Any:
        self._table.clear()
        return super().register(addon)

    def remove(self, addon: Any) -> None:
        self._table.clear()
        super().remove(addon)
        self._table.clear()

    def clear(self) -> None:
        self._table.clear()
        super().clear()

    def _configure_all(self, updated: Sequence[str]) -> None:
        super()._configure_all(updated)
        if "scripts" in updated:
            self._table.clear()
