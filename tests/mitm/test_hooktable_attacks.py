"""Adversarial review of the lean launcher's hook table (`addon.mitm.hooktable.HookTable`).

Each scenario runs twice: on mitmproxy's own AddonManager (the oracle) and on the HookTable, which
must dispatch the same way. Kept from the review: 8 of the 9 HookTable cases failed on `3d4ad30`
(a non-callable hook-named attribute broke the whole event; a script reloaded, removed or added while
an event was in flight; an error in one script's hook didn't skip the later scripts; hooks or
sub-addons changed in `configure`). Nothing here opens a socket.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import types
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from masters import calls_of, on_manager, scripts_loaded
from mitmproxy import addonmanager, ctx, exceptions, master
from mitmproxy.addons import script
from mitmproxy.proxy.layers.http import HttpRequestHook
from mitmproxy.test import tflow

from addon.mitm.hooktable import HookTable

calls: list[str] = []

KINDS = pytest.mark.parametrize(
    "kind", [addonmanager.AddonManager, HookTable], ids=["mitmproxy-oracle", "hooktable"]
)






class Requests:
    def __init__(self, name: str) -> None:
        self.name = name

    def request(self, flow: Any) -> None:
        calls.append(f"{self.name}.request")


@pytest.fixture(autouse=True)
def _calls_module(monkeypatch: pytest.MonkeyPatch) -> None:
    calls.clear()
    monkeypatch.setitem(sys.modules, "hooktable_attack_calls", types.SimpleNamespace(calls=calls))
    # The file watcher loads each script once, then would look again only after an hour: the tests
    # reload by hand, as the watcher would.
    monkeypatch.setattr(script, "ReloadInterval", 3600)


def user_script(path: Path, word: str, body: str = "") -> None:
    path.write_text(
        "import hooktable_attack_calls as c\n"
        f"def request(flow):\n    c.calls.append({word!r})\n{body}"
        f"def done():\n    c.calls.append({word + '.done'!r})\n"
    )




def stop_watchers(loader: script.ScriptLoader) -> None:
    for scripted in loader.addons:
        scripted.done()


class Slow:
    """An addon ahead of the script loader whose `request` awaits (as Detour's does while it
    forwards the request upstream); `during` runs while it waits."""

    name = "slow"

    def __init__(self) -> None:
        self.during: Callable[[], Awaitable[None] | None] | None = None

    async def request(self, flow: Any) -> None:
        calls.append("slow")
        if self.during is not None:
            during, self.during = self.during, None
            result = during()
            if result is not None:
                await result
        await asyncio.sleep(0)


# 1. A truthy, non-callable attribute named like a hook -------------------------------------------


class NotCallable:
    """A user's addon with a truthy attribute that happens to be named like a hook (mitmproxy
    reports it as an addon error: 'Addon handler request (...) not callable')."""

    name = "not-callable"
    request = "an attribute, not a hook"


@KINDS
async def test_a_non_callable_hook_attribute_is_logged_and_the_other_addons_still_run(
    kind: type[addonmanager.AddonManager], caplog: pytest.LogCaptureFixture
) -> None:
    made = on_manager(kind)
    made.addons.add(Requests("first"), NotCallable(), Requests("last"))
    with caplog.at_level(logging.ERROR):
        got = await calls_of(made, HttpRequestHook(tflow.tflow()), calls)  # must not raise
    assert got == ["first.request", "last.request"]
    assert "not callable" in caplog.text


@KINDS
async def test_a_script_with_running_true_does_not_stop_the_running_event(
    kind: type[addonmanager.AddonManager], caplog: pytest.LogCaptureFixture
) -> None:
    """`running = True` at a script's top level: mitmproxy logs an addon error and every other
    addon still gets `running`; the table raises out of `Master.running()` (the master stops)."""
    made = on_manager(kind)

    class Started:
        name = "started"

        def running(self) -> None:
            calls.append("started.running")

    flag = types.ModuleType("user_script_with_a_flag")
    flag.running = True  # type: ignore[attr-defined]
    flag.name = "flag"  # type: ignore[attr-defined]
    made.addons.add(flag, Started())
    calls.clear()
    with caplog.at_level(logging.ERROR):
        await made.running()  # must not raise
    assert calls == ["started.running"]


# 2. A script reloaded or unloaded while an event is on its way ------------------------------------


async def script_behind_a_slow_addon(
    kind: type[addonmanager.AddonManager], tmp_path: Path
) -> tuple[master.Master, Slow, script.ScriptLoader, Path]:
    made = on_manager(kind)
    slow = Slow()
    loader = script.ScriptLoader()
    made.addons.add(slow, loader)
    path = tmp_path / "user.py"
    user_script(path, "old")
    made.options.update(scripts=[str(path)])
    await scripts_loaded(loader, 1)
    return made, slow, loader, path


@KINDS
async def test_a_script_reloaded_while_an_event_is_in_flight_gets_its_new_code(
    kind: type[addonmanager.AddonManager], tmp_path: Path
) -> None:
    made, slow, loader, path = await script_behind_a_slow_addon(kind, tmp_path)
    try:
        assert await calls_of(made, HttpRequestHook(tflow.tflow()), calls) == ["slow", "old"]

        def edit_and_reload() -> None:  # the user saves the script; the file watcher reloads it
            user_script(path, "new")
            loader.addons[0].loadscript()

        slow.during = edit_and_reload
        got = await calls_of(made, HttpRequestHook(tflow.tflow()), calls)
        # mitmproxy reaches the script loader after `slow` and walks its scripts as they are then:
        # the new code. The table (before `1cf5e9b`) called the old module, whose `done` had run.
        assert got == ["slow", "old.done", "new"]
    finally:
        stop_watchers(loader)


@KINDS
async def test_a_script_unloaded_while_an_event_is_in_flight_is_not_called(
    kind: type[addonmanager.AddonManager], tmp_path: Path
) -> None:
    made, slow, loader, _ = await script_behind_a_slow_addon(kind, tmp_path)
    try:
        slow.during = lambda: made.options.update(scripts=[])
        got = await calls_of(made, HttpRequestHook(tflow.tflow()), calls)
        assert got == ["slow", "old.done"]  # the table (before `1cf5e9b`) also called "old" after its done
    finally:
        stop_watchers(loader)


@KINDS
async def test_a_script_added_while_an_event_is_in_flight_is_called(
    kind: type[addonmanager.AddonManager], tmp_path: Path
) -> None:
    made, slow, loader, path = await script_behind_a_slow_addon(kind, tmp_path)
    try:
        other = tmp_path / "other.py"
        user_script(other, "other")

        async def add_a_script() -> None:
            made.options.update(scripts=[str(path), str(other)])
            await scripts_loaded(loader, 2)

        slow.during = add_a_script
        got = await calls_of(made, HttpRequestHook(tflow.tflow()), calls)
        assert got == ["slow", "old", "other"]
    finally:
        stop_watchers(loader)


# 3. An error in one script's hook --------------------------------------------------------------


@KINDS
async def test_an_error_in_one_scripts_hook_skips_the_later_scripts_as_in_mitmdump(
    kind: type[addonmanager.AddonManager], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """mitmproxy runs each top-level addon (the script loader, with every `-s` script under it)
    under one `safecall`: when script one's `request` raises, script two's `request` is skipped
    for that event. The table (before `1cf5e9b`) ran every handler under its own `safecall`, so
    script two ran."""
    made = on_manager(kind)
    loader = script.ScriptLoader()
    made.addons.add(loader)
    one, two = tmp_path / "one.py", tmp_path / "two.py"
    one.write_text(
        "import hooktable_attack_calls as c\n"
        "def request(flow):\n    c.calls.append('one')\n    raise ValueError('bug in one')\n"
    )
    user_script(two, "two")
    made.options.update(scripts=[str(one), str(two)])
    try:
        await scripts_loaded(loader, 2)
        with caplog.at_level(logging.ERROR):
            got = await calls_of(made, HttpRequestHook(tflow.tflow()), calls)
        assert got == ["one"]
        assert "bug in one" in caplog.text
    finally:
        stop_watchers(loader)


# 4. Hooks that appear or disappear without an add/register/remove --------------------------------


class Toggle:
    """Implements `request` only while its option is on (set or deleted in `configure`)."""

    name = "toggle"

    def load(self, loader: addonmanager.Loader) -> None:
        loader.add_option("toggle_requests", bool, False, "Count requests.")

    def configure(self, updated: set[str]) -> None:
        if "toggle_requests" in updated:
            if ctx.options.toggle_requests:
                self.request = self._request
            else:
                self.__dict__.pop("request", None)

    def _request(self, flow: Any) -> None:
        calls.append("toggle.request")


@KINDS
async def test_a_hook_set_or_deleted_at_runtime_is_followed(kind: type[addonmanager.AddonManager]) -> None:
    made = on_manager(kind)
    made.addons.add(Toggle())
    flow = tflow.tflow()
    assert await calls_of(made, HttpRequestHook(flow), calls) == []
    made.options.update(toggle_requests=True)
    assert await calls_of(made, HttpRequestHook(flow), calls) == ["toggle.request"]
    made.options.update(toggle_requests=False)
    assert await calls_of(made, HttpRequestHook(flow), calls) == []


@KINDS
async def test_a_sub_addon_list_changed_at_runtime_is_followed(kind: type[addonmanager.AddonManager]) -> None:
    """An addon that swaps its sub-addons in `configure` (as a `-s` script's `addons = [...]` list
    may be rebuilt), without register/remove: mitmproxy walks `addons` at every event."""

    class Swapper:
        name = "swapper"

        def __init__(self) -> None:
            self.addons: list[Any] = [Requests("before")]

        def load(self, loader: addonmanager.Loader) -> None:
            loader.add_option("swapper_target", str, "before", "Which sub-addon.")

        def configure(self, updated: set[str]) -> None:
            if "swapper_target" in updated:
                self.addons = [Requests(ctx.options.swapper_target)]

    made = on_manager(kind)
    made.addons.add(Swapper())
    flow = tflow.tflow()
    assert await calls_of(made, HttpRequestHook(flow), calls) == ["before.request"]
    made.options.update(swapper_target="after")
    assert await calls_of(made, HttpRequestHook(flow), calls) == ["after.request"]


# Held up (kept as regressions): AddonHalt from an async sub-addon stops the event in both.


class AsyncHalt:
    name = "async-halt"

    async def request(self, flow: Any) -> None:
        calls.append("async-halt")
        raise exceptions.AddonHalt()


@KINDS
async def test_addon_halt_from_an_async_hook_stops_the_event(kind: type[addonmanager.AddonManager]) -> None:
    made = on_manager(kind)
    made.addons.add(Requests("a"), AsyncHalt(), Requests("never"))
    assert await calls_of(made, HttpRequestHook(tflow.tflow()), calls) == ["a.request", "async-halt"]
