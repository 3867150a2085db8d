"""Hook dispatch for the lean launcher: each event goes only to the addons that implement it.

mitmproxy's `AddonManager.trigger_event` walks every addon (and its sub-addons) for every event, with
a `getattr`, a generator and a `safecall` context per addon, and `handle_lifecycle` follows each
flow event with an `update` event that the lean master's addons don't implement. Measured, that
walk is the largest part of a lean master's CPU per request. `HookTable` keeps, per event name, the
list of (addon, handler) in chain order, and calls only those.

The table is rebuilt (lazily, at the next event) whenever the addons can have changed: an addon
registered or removed (which is also how a `-s` script is loaded, reloaded or unloaded) and any option
change (the script loader reorders scripts without either; an addon may set or drop a hook in
`configure`). An event during which that happens (a handler awaited while a script reloaded) finishes
the way mitmproxy would, looking the hooks up anew. As in mitmproxy, each top-level addon runs under
one `safecall` (an error is logged and skips the rest of that addon's handlers, such as later `-s`
scripts, not the other addons'), `AddonHalt` stops the event, and an addon whose hook lookup fails
(a hook-named attribute that isn't callable) goes mitmproxy's own way, which logs it every event.
Not followed: a hook set or dropped at run time outside `configure` and outside add/remove.
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


#: One top-level addon's handlers of an event, in order, with the (sub-)addon each belongs to; None
#: when looking them up failed (a hook-named attribute that isn't callable): that addon then goes
#: mitmproxy's own way on every event, which logs the error and runs the rest.
Group = tuple[Any, list[tuple[Any, Handler]] | None]


class HookTable(addonmanager.AddonManager):
    def __init__(self, master: Any) -> None:
        self._table: dict[str, list[Group]] = {}
        #: Bumped whenever the table is dropped: an event that sees it move while it runs (a handler
        #: awaited while a script reloaded) finishes the way mitmproxy would, looking hooks up anew.
        self._generation = 0
        super().__init__(master)

    def _invalidate(self) -> None:
        self._table.clear()
        self._generation += 1

    def groups(self, event: hooks.Hook) -> list[Group]:
        """The top-level addons with handlers for `event`'s name, in chain order."""
        found = self._table.get(event.name)
        if found is None:
            found = []
            for top in self.chain:
                try:
                    handlers = list(self._iter_hooks(top, event))
                except Exception:
                    found.append((top, None))
                    continue
                if handlers:
                    found.append((top, handlers))
            self._table[event.name] = found
        return found

    async def trigger_event(self, event: hooks.Hook) -> None:
        generation = self._generation
        table = self.groups(event)
        if not table:
            return
        args = event.args()
        reached: set[int] = set()
        for top, handlers in table:
            if self._generation != generation:
                break
            reached.add(id(top))
            try:
                # One safecall per top-level addon, as mitmproxy: an error skips the rest of that
                # addon's handlers (e.g. the later `-s` scripts), never the other addons'.
                with addonmanager.safecall():
                    if handlers is None:
                        await self.invoke_addon(top, event)
                    else:
                        await self._run(top, handlers, event, args, generation)
            except exceptions.AddonHalt:
                return
        else:
            return
        # The addons changed while this event ran: the ones not reached yet, mitmproxy's way.
        for top in list(self.chain):
            if id(top) in reached:
                continue
            try:
                with addonmanager.safecall():
                    await self.invoke_addon(top, event)
            except exceptions.AddonHalt:
                return

    async def _run(
        self,
        top: Any,
        handlers: list[tuple[Any, Handler]],
        event: hooks.Hook,
        args: list[Any],
        generation: int,
    ) -> None:
        called: set[int] = set()
        for addon, func in handlers:
            if self._generation != generation:
                # Changed under this addon (its scripts): the rest of its handlers as they are now.
                for now_addon, now_func in self._iter_hooks(top, event):
                    if id(now_addon) not in called:
                        await _call(now_func, args)
                return
            called.add(id(addon))
            await _call(func, args)

    def add(self, *addons: Any) -> None:
        super().add(*addons)
        self._invalidate()

    def register(self, addon: Any) -> Any:
        self._invalidate()
        return super().register(addon)

    def remove(self, addon: Any) -> None:
        self._invalidate()
        super().remove(addon)
        self._invalidate()

    def clear(self) -> None:
        self._invalidate()
        super().clear()

    def _configure_all(self, updated: Sequence[str]) -> None:
        # Any option change may change hooks: the script loader reorders scripts without registering
        # anything, and an addon may set or drop a hook, or swap its sub-addons, in `configure`.
        self._invalidate()
        super()._configure_all(updated)
        self._invalidate()


async def _call(func: Handler, args: list[Any]) -> None:
    result = func(*args)
    if result is not None and inspect.isawaitable(result):
        await result
