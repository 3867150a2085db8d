"""The lean launcher (`addon.mitm.launcher`): which addons it carries, which of mitmdump's options it
refuses and how. The processes themselves run in `tests/e2e/test_lean_launcher.py` and, under both
launchers, in `tests/e2e/test_integration.py`.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from masters import started
from mitmproxy import options

from addon.mitm import launcher
from addon.mitm.addon import Detour

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def lean() -> AsyncIterator[launcher.LeanMaster]:
    """A lean master (not running): its addons are loaded, so its options exist."""
    with started(launcher.LeanMaster) as master:
        assert isinstance(master, launcher.LeanMaster)
        yield master


def parse(supported: options.Options, *argv: str) -> argparse.Namespace:
    return launcher.LeanParser(supported).parse_args(list(argv))


def refused(capsys: pytest.CaptureFixture[str], supported: options.Options, *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        parse(supported, *argv)
    assert exited.value.code == 2
    return capsys.readouterr().err


async def test_the_lean_master_carries_only_what_detour_needs(lean: launcher.LeanMaster) -> None:
    names = [type(a).__name__ for a in lean.addons.chain]
    for needed in (
        "Core",
        "Block",
        "Proxyserver",
        "NextLayer",
        "TlsConfig",
        "ScriptLoader",
        "Dumper",
        "ErrorCheck",
        "TermLog",
        "Detour",
    ):
        assert needed in names
    for dropped in (
        "AntiCache",
        "MapRemote",
        "ServerPlayback",
        "Save",
        "SaveHar",
        "StickyCookie",
        "ModifyHeaders",
        "ProxyAuth",
        "Export",
    ):
        assert dropped not in names
    assert len(names) <= 15  # mitmdump: 36
    # Detour before user scripts and the flow output: as behind `-s addon/detour.py`.
    assert names.index("Detour") < names.index("ScriptLoader") < names.index("Dumper")
    # block_global: non-local clients are still refused by default.
    assert lean.options.block_global is True
    assert isinstance(lean.addons.get("detour"), Detour)


async def test_every_option_it_has_is_one_mitmdump_has(lean: launcher.LeanMaster) -> None:
    ours = {name for name in lean.options.keys() if not name.startswith("detour_")}  # noqa: SIM118 (not iterable)
    every = set(launcher.mitmdump_options().keys())
    assert ours <= every
    assert len(every - ours) > 30  # what the launcher refuses


async def test_the_flags_it_keeps_parse_as_under_mitmdump(lean: launcher.LeanMaster) -> None:
    args = parse(
        lean.options,
        "--mode",
        "reverse:https://api.anthropic.com@8081",
        "--mode",
        "regular@8080",
        "--set",
        "detour_config=config.yaml",
        "-q",
        "--listen-host",
        "127.0.0.1",
        "-s",
        str(REPO / "bench" / "noop_rewrite.py"),
        "--set",
        "block_global=false",
    )
    assert args.mode == ["reverse:https://api.anthropic.com@8081", "regular@8080"]
    assert args.quiet is True and args.listen_host == "127.0.0.1"
    assert args.setoptions == ["detour_config=config.yaml", "block_global=false"]


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--anticache"], "option anticache"),
        (["-w", "flows.mitm"], "option save_stream_file"),
        (["--set", "map_remote=|x|y"], "option map_remote"),
        (
            ["--set", "save_stream_file=f", "--set", "modify_headers=/~q/a/b"],
            "options modify_headers, save_stream_file",
        ),
        (["--proxyauth", "user:pass"], "option proxyauth"),
        (["-S", "flows.mitm"], "option server_replay"),
    ],
)
async def test_an_option_it_does_not_support_is_refused_by_name_with_the_way_out(
    lean: launcher.LeanMaster, capsys: pytest.CaptureFixture[str], argv: list[str], names: str
) -> None:
    err = refused(capsys, lean.options, *argv)
    assert f"detour: {names} not supported by the lean launcher" in err
    assert "use mitmdump -s addon/detour.py" in err


async def test_an_unknown_option_is_left_to_scripts_as_mitmdump_does(lean: launcher.LeanMaster) -> None:
    # A -s script may declare it later; mitmdump defers such names too.
    assert parse(lean.options, "--set", "my_script_option=1").setoptions == ["my_script_option=1"]


async def test_an_unsupported_key_in_the_confdirs_config_yaml_is_refused(
    lean: launcher.LeanMaster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "config.yaml").write_text("anticomp: true\nlisten_host: 127.0.0.1\n")
    err = refused(capsys, lean.options, "--set", f"confdir={tmp_path}")
    assert "option anticomp not supported" in err
    (tmp_path / "config.yaml").write_text("listen_host: 127.0.0.1\n")
    assert parse(lean.options, "--set", f"confdir={tmp_path}").setoptions == [f"confdir={tmp_path}"]


async def test_a_broken_confdir_config_is_left_to_mitmproxys_own_message(
    lean: launcher.LeanMaster, tmp_path: Path
) -> None:
    (tmp_path / "config.yaml").write_text("[unclosed\n")
    assert parse(lean.options, "--set", f"confdir={tmp_path}").setoptions == [f"confdir={tmp_path}"]


async def test_loading_detour_twice_is_refused(
    lean: launcher.LeanMaster,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(REPO)
    assert "already loaded" in refused(capsys, lean.options, "-s", "addon/detour.py")
    monkeypatch.chdir(tmp_path)
    assert "already loaded" in refused(capsys, lean.options, "-s", str(REPO / "addon" / "detour.py"))
    (tmp_path / "detour.py").write_text("addons = []\n")  # another file of that name is a user script
    assert parse(lean.options, "-s", "detour.py").scripts == ["detour.py"]


def test_the_positional_filter_filters_the_flow_output() -> None:
    assert launcher.flow_filter(argparse.Namespace(filter_args=["~d", "example.com"])) == {
        "dumper_filter": "~d example.com"
    }
    assert launcher.flow_filter(argparse.Namespace(filter_args=[])) == {}
