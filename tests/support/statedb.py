"""Reading a state database the way another process would (WAL readers see committed rows)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from addon.state import AttemptRecord


def recent(path: Path, limit: int = 50, app: str | None = None) -> list[AttemptRecord]:
    """The newest committed attempts, newest first, optionally of one app."""
    sql = "SELECT at, app, provider, status, outcome, latency_ms, error FROM attempt"
    params: tuple[object, ...] = ()
    if app is not None:
        sql, params = sql + " WHERE app = ?", (app,)
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0) as conn:
        rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
    return [AttemptRecord(*row) for row in rows]
