"""The layering rule: only `addon/mitm/` (and the `-s` shim) may import mitmproxy."""

from __future__ import annotations

import ast
from pathlib import Path

ADDON = Path(__file__).resolve().parents[2] / "addon"
ALLOWED = {ADDON / "detour.py"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_nothing_outside_addon_mitm_imports_mitmproxy() -> None:
    offenders = []
    checked = 0
    for path in sorted(ADDON.rglob("*.py")):
        if path in ALLOWED or ADDON / "mitm" in path.parents:
            continue
        checked += 1
        if any(name == "mitmproxy" or name.startswith("mitmproxy.") for name in imported_modules(path)):
            offenders.append(str(path.relative_to(ADDON)))
    assert checked >= 15
    assert offenders == []


def test_the_fence_check_sees_imports(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("import os\nfrom mitmproxy import http\n")
    assert "mitmproxy" in imported_modules(sample)
