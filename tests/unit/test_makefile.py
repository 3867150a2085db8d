"""`make web` and `make run` as written in the README: mitmweb gets its columns one `--set` per item (a
list option given as one comma-joined value is a single unknown column, and mitmweb then shows no flow
list); `make run` starts the lean launcher with the README's four listeners."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make here")
def test_make_web_passes_each_column_on_its_own(tmp_path: Path) -> None:
    dry = subprocess.run(
        ["make", "-n", "web", f"VENV={tmp_path / 'venv'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert dry.returncode == 0, dry.stderr
    recipe = dry.stdout.replace("\\\n", " ")  # the recipe's continued lines as one command
    (command,) = [line for line in recipe.splitlines() if "mitmweb" in line]
    words = command.split()
    columns = [
        words[i + 1].split("=", 1)[1]
        for i, w in enumerate(words)
        if w == "--set" and words[i + 1].startswith("web_columns=")
    ]
    assert columns == ["tls", "icon", "path", "comment", "method", "status", "size", "time"]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make here")
def test_make_run_uses_the_lean_launcher_with_the_readmes_listeners(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    dry = subprocess.run(
        ["make", "-n", "run", f"VENV={venv}"], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert dry.returncode == 0, dry.stderr
    recipe = dry.stdout.replace("\\\n", " ")
    (command,) = [line for line in recipe.splitlines() if "detour_config=config.yaml" in line]
    words = command.split()
    assert words[0] == f"{venv}/bin/detour"
    assert "-s" not in words  # Detour is built into the lean launcher
    modes = [words[i + 1] for i, w in enumerate(words) if w == "--mode"]
    assert modes[0] == "regular@8080"
    assert [m.split("@")[0] for m in modes[1:]] == [
        "reverse:https://api.anthropic.com",
        "reverse:https://api.openai.com",
        "reverse:https://generativelanguage.googleapis.com",
    ]
