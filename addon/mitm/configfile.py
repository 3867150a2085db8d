"""The config file as mitmproxy's Detour sees it: loaded at start, watched, reloaded on change.

A hand-edited file must never take the proxy down: a bad edit is reported and the running config
stays in force, a deleted file is reported once, and no problem of one pass (a parser that recurses
too deep, a file that vanishes between stat and read) ends the watching. Reads in the watcher happen
off the event loop, and only regular files are read, so a FIFO or a hung network filesystem put in
the config's place can't freeze the listeners.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

from addon.config import ConfigError, load_config
from addon.model import Config

logger = logging.getLogger("detour")

#: The watcher never polls more often than this.
MIN_INTERVAL = 0.1


def _mtime(path: Path) -> float | None:
    """The file's modification time, None when it is missing; raises ConfigError for a non-file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path}: cannot read file: not a regular file")
    return st.st_mtime


def read(path: Path) -> tuple[Config, float | None]:
    """The parsed config and the mtime it was read at; raises ConfigError (a ValueError)."""
    mtime = _mtime(path)
    return load_config(path), mtime


class ConfigFile:
    def __init__(self, apply: Callable[[Config], None]) -> None:
        self._apply = apply
        self.path = Path("config.yaml")
        self._mtime: float | None = None
        self._missing_reported = False

    def load(self, path: Path) -> Config:
        """Read `path` now (start-up, option change, `detour.reload`) and apply it; raises ConfigError."""
        config, mtime = read(path)
        self.path, self._mtime = path, mtime
        self._missing_reported = False
        self._apply(config)
        return config

    def reload(self) -> Config:
        """Read the file again; a bad file is reported and the running config stays in force."""
        try:
            return self.load(self.path)
        except ValueError as e:
            logger.error("detour: config not reloaded, keeping the previous one: %s", e)
            raise

    async def watch(self, interval: Callable[[], float]) -> None:
        """Reload whenever the file's mtime changes; runs until cancelled, whatever one pass meets."""
        while True:
            await asyncio.sleep(max(interval(), MIN_INTERVAL))
            try:
                await self._check()
            except ValueError as e:
                logger.error("detour: config not reloaded, keeping the previous one: %s", e)
            except Exception:  # one bad pass (a bug, an odd filesystem) must not end the watching
                logger.exception("detour: checking the config file failed; still watching it")

    async def _check(self) -> None:
        path = self.path
        mtime = await asyncio.to_thread(_mtime, path)
        if mtime is None:
            if not self._missing_reported:
                logger.warning("detour: config file %s is gone; the running config stays in force", path)
                self._missing_reported = True
            return
        if mtime == self._mtime:
            return
        self._mtime = mtime  # a bad edit is reported once, not on every pass
        self._missing_reported = False
        config, _ = await asyncio.to_thread(read, path)
        if path == self.path:  # not replaced by an option change while reading
            self._apply(config)
