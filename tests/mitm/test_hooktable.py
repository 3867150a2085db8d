"""The lean launcher's hook dispatch (`addon.mitm.hooktable.HookTable`): the same calls, in the same
order, as mitmproxy's own AddonManager, but only to the addons that implement each event, and never
stale after addons or scripts change."""

from __future__ import annotations

import logging
import sys
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from masters import calls_of, on_manager, scripts_loaded, started
from mitmproxy import addonmanager, exceptions, master
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




@pytest.fixture
async def both() -> AsyncIterator[tuple[master.Master, master.Master]]:
    """mitmproxy's AddonManager (the oracle) and a HookTable, each on a master of its own."""
    calls.clear()
    yield on_manager(addonmanager.AddonManager), on_manager(HookTable)


def chain() -> list[Any]:
    return [
        Named("quiet"),
        Requests("first", Requests("child"), Named("quiet-child", AsyncRequests("grandchild"))),
        Updates("updates"),
        Broken("broken"),
        AsyncRequests("last"),
    ]




async def test_an_event_reaches_the_same_handlers_in_the_same_order_as_mitmproxys(
    both: tuple[master.Master, master.Master], caplog: pytest.LogCaptureFixture
) -> None:
    oracle, table = both
    oracle.addons.add(*chain())
    table.addons.add(*chain())
    flow = tflow.tflow()
    with caplog.at_level(logging.ERROR):
        expected = await calls_of(oracle, HttpRequestHook(flow), calls)
        got = await calls_of(table, HttpRequestHook(flow), calls)
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
    expected = await calls_of(oracle, HttpRequestHook(flow), calls)
    assert await calls_of(table, HttpRequestHook(flow), calls) == expected
    assert calls == ["a.request", "stop.halt"]


async def test_addons_added_or_removed_later_are_seen_at_the_next_event(
    both: tuple[master.Master, master.Master],
) -> None:
    _, table = both
    first = Requests("first")
    table.addons.add(first)
    flow = tflow.tflow()
    assert await calls_of(table, HttpRequestHook(flow), calls) == ["first.request"]
    table.addons.add(Requests("second"))
    assert await calls_of(table, HttpRequestHook(flow), calls) == ["first.request", "second.request"]
    table.addons.remove(first)
    assert await calls_of(table, HttpRequestHook(flow), calls) == ["second.request"]


def user_script(path: Path, word: str) -> None:
    path.write_text(
        f"import hooktable_calls\ndef request(flow):\n    hooktable_calls.calls.append({word!r})\n"
    )


async def test_a_user_script_loaded_reordered_and_unloaded_is_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "hooktable_calls", types.SimpleNamespace(calls=calls))
    made = on_manager(HookTable)
    loader = script.ScriptLoader()
    made.addons.add(loader)
    one, two = tmp_path / "one.py", tmp_path / "two.py"
    user_script(one, "one")
    user_script(two, "two")
    flow = tflow.tflow()
    made.options.update(scripts=[str(one), str(two)])
    await scripts_loaded(loader, 2)
    assert await calls_of(made, HttpRequestHook(flow), calls) == ["one", "two"]
    made.options.update(scripts=[str(two), str(one)])  # reordered: no register or remove
    assert await calls_of(made, HttpRequestHook(flow), calls) == ["two", "one"]
    (first,) = [s for s in loader.addons if s.path == str(one)]
    first.loadscript()  # what the file watcher does when the file changes: remove, then register
    assert await calls_of(made, HttpRequestHook(flow), calls) == ["two", "one"]
    made.options.update(scripts=[str(two)])
    assert await calls_of(made, HttpRequestHook(flow), calls) == ["two"]
    made.options.update(scripts=[])
    assert await calls_of(made, HttpRequestHook(flow), calls) == []


async def test_the_lean_master_keeps_mitmproxys_dispatch_when_its_addon_manager_changed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from addon.mitm import hooktable, launcher

    assert hooktable.usable()
    # A mitmproxy whose AddonManager lacks something the table relies on:
    monkeypatch.setattr(hooktable, "_RELIES_ON", (*hooktable._RELIES_ON, "_a_method_it_renamed"))
    assert not hooktable.usable()
    with caplog.at_level(logging.WARNING, logger="detour"), started(launcher.LeanMaster) as lean:
        assert type(lean.addons) is addonmanager.AddonManager
        assert "every addon sees every event" in caplog.text
    monkeypatch.undo()
    with started(launcher.LeanMaster) as again:
        assert isinstance(again.addons, HookTable)
