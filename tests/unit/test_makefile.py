"""`make web` as written in the README: mitmweb gets its columns one `--set` per item (a list option
given as one comma-joined value is a single unknown column, and mitmweb then shows no flow list)."""

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
