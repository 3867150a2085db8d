"""Persistent state behind one protocol (`base.StateBackend`): SQLite today, memory for tests."""

from __future__ import annotations

from addon.state.base import AttemptRecord, LoadedState, StateBackend
from addon.state.memory import MemoryBackend
from addon.state.sqlite import SqliteBackend

__all__ = ["AttemptRecord", "LoadedState", "MemoryBackend", "SqliteBackend", "StateBackend"]
