"""The lean launcher's hook dispatch (`addon.mitm.hooktable.HookTable`): the same calls, in the same
order, as mitmproxy's own AddonManager, but only to the addons that implement each event, and never
stale after addons or scripts change."""

from __future__ import annotations

import asyncio
import logging
import sys
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import addonmanager, exceptions, hooks, master, options
from mitmproxy.addons import script
from mitmproxy.proxy.layers.http import HttpRequestHook
from mitmproxy.test import tflow

from addon.mitm.hooktable import HookTable

calls: list[str] = []


class Named:
    def __init__(self, name: str, *children: Any) -> None:
        self.name = name
        self.addons = list(children)


class Requests(Named):
    def request(self, flow: Any) -> None:
        calls.append(f"{self.name}.request")


class AsyncRequests(Named):
    async def request(self, flow: Any) -> None:
        calls.append(f"{self.name}.async-request")


class Broken(Named):
    def request(self, flow: Any) -> None:
        calls.append(f"{self.name}.request")
        raise ValueError("a bug in a user's script")


class Halting(Named):
    def request(self, flow: Any) -> None:
        calls.append(f"{self.name}.halt")
        raise exceptions.AddonHalt()


class Updates(Named):
    def update(self, flows: Any) -> None:
        calls.append(f"{self.name}.update")


def managers(kind: type[addonmanager.AddonManager]) -> master.Master:
    made = master.Master(options.Options())
    made.options.changed.disconnect(made.addons._configure_all)
    made.addons = kind(made)
    return made


@pytest.fixture
async def both() -> AsyncIterator[tuple[master.Master, master.Master]]:
    """mitmproxy's AddonManager (the oracle) and a HookTable, each on a master of its own."""
    calls.clear()
    yield managers(addonmanager.AddonManager), managers(HookTable)


def chain() -> list[Any]:
    return [
        Named("quiet"),
        Requests("first", Requests("child"), Named("quiet-child", AsyncRequests("grandchild"))),
        Updates("updates"),
        Broken("broken"),
        AsyncRequests("last"),
    ]


async def calls_of(made: master.Master, event: hooks.Hook) -> list[str]:
    calls.clear()
    await made.addons.handle_lifecycle(event)
    return list(calls)


async def test_an_event_reaches_the_same_handlers_in_the_same_order_as_mitmproxys(
    both: tuple[master.Master, master.Master], caplog: pytest.LogCaptureFixture
) -> None:
    oracle, table = both
    oracle.addons.add(*chain())
    table.addons.add(*chain())
    flow = tflow.tflow()
    with caplog.at_level(logging.ERROR):
        expected = await calls_of(oracle, HttpRequestHook(flow))
        got = await calls_of(table, HttpRequestHook(flow))
    assert got == expected == [
        "first.request", "child.request", "grandchild.async-request", "broken.request", "last.async-request",
        "updates.update",  # handle_lifecycle's update event after the flow event
    ]  # fmt: skip
    # The broken handler was logged (by both), and didn't stop the ones after it.
    assert sum("a bug in a user's script" in r.getMessage() or "ValueError" in r.getMessage()
               or (r.exc_info is not None) for r in caplog.records) >= 2  # fmt: skip


async def test_addon_halt_stops_the_event_as_in_mitmproxy(both: tuple[master.Master, master.Master]) -> None:
    oracle, table = both
    for made in both:
        made.addons.add(Requests("a"), Halting("stop"), Requests("never"))
    flow = tflow.tflow()
    assert await calls_of(table, HttpRequestHook(flow)) == await calls_of(oracle, HttpRequestHook(flow))
    assert calls == ["a.request", "stop.halt"]


async def test_addons_added_or_removed_later_are_seen_at_the_next_event(
    both: tuple[master.Master, master.Master],
) -> None:
    _, table = both
    first = Requests("first")
    table.addons.add(first)
    flow = tflow.tflow()
    assert await calls_of(table, HttpRequestHook(flow)) == ["first.request"]
    table.addons.add(Requests("second"))
    assert await calls_of(table, HttpRequestHook(flow)) == ["first.request", "second.request"]
    table.addons.remove(first)
    assert await calls_of(table, HttpRequestHook(flow)) == ["second.request"]


def user_script(path: Path, word: str) -> None:
    path.write_text(
        f"import hooktable_calls\ndef request(flow):\n    hooktable_calls.calls.append({word!r})\n"
    )


async def loaded(loader: script.ScriptLoader, paths: list[Path], word_of: dict[str, str]) -> None:
    """Until each script's current text is loaded (the loader's file watcher loads them)."""
    deadline = asyncio.get_running_loop().time() + 10
    while asyncio.get_running_loop().time() < deadline:
        current = {s.path: s.ns for s in loader.addons}
        if all(current.get(str(p)) is not None and word_of[str(p)] in Path(p).read_text() for p in paths):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("scripts not loaded within 10 s")


async def test_a_user_script_loaded_reordered_and_unloaded_is_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "hooktable_calls", types.SimpleNamespace(calls=calls))
    made = managers(HookTable)
    loader = script.ScriptLoader()
    made.addons.add(loader)
    one, two = tmp_path / "one.py", tmp_path / "two.py"
    user_script(one, "one")
    user_script(two, "two")
    words = {str(one): "one", str(two): "two"}
    flow = tflow.tflow()
    made.options.update(scripts=[str(one), str(two)])
    await loaded(loader, [one, two], words)
    assert await calls_of(made, HttpRequestHook(flow)) == ["one", "two"]
    made.options.update(scripts=[str(two), str(one)])  # reordered: no register or remove
    assert await calls_of(made, HttpRequestHook(flow)) == ["two", "one"]
    (first,) = [s for s in loader.addons if s.path == str(one)]
    first.loadscript()  # what the file watcher does when the file changes: remove, then register
    assert await calls_of(made, HttpRequestHook(flow)) == ["two", "one"]
    made.options.update(scripts=[str(two)])
    assert await calls_of(made, HttpRequestHook(flow)) == ["two"]
    made.options.update(scripts=[])
    assert await calls_of(made, HttpRequestHook(flow)) == []
    for scripted in loader.addons:
        scripted.done()


async def test_the_lean_master_keeps_mitmproxys_dispatch_when_its_addon_manager_changed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from addon.mitm import hooktable, launcher

    assert hooktable.usable()
    # A mitmproxy whose AddonManager lacks something the table relies on:
    monkeypatch.setattr(hooktable, "_RELIES_ON", (*hooktable._RELIES_ON, "_a_method_it_renamed"))
    assert not hooktable.usable()
    with caplog.at_level(logging.WARNING, logger="detour"):
        lean = launcher.LeanMaster(options.Options())
    try:
        assert type(lean.addons) is addonmanager.AddonManager
        assert "every addon sees every event" in caplog.text
    finally:
        lean.addons.get("errorcheck").finish()
        lean._termlog_addon.uninstall()  # type: ignore[union-attr]
    monkeypatch.undo()
    again = launcher.LeanMaster(options.Options())
    try:
        assert isinstance(again.addons, HookTable)
    finally:
        again.addons.get("errorcheck").finish()
        again._termlog_addon.uninstall()  # type: ignore[union-attr]
