"""A manual clock for tests of time-dependent code: nothing ever sleeps, time only moves on `advance`."""

from __future__ import annotations

#: 2023-11-14 22:13:20 UTC: far enough from 0 that "0.0 means unset" bugs can't hide.
START = 1_700_000_000.0


class FakeClock:
    """Callable like `time.time`; returns the same value until advanced."""

    def __init__(self, start: float = START) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move time forward by `seconds` (never backward) and return the new time."""
        if seconds < 0:
            raise ValueError(f"a clock does not go backwards ({seconds})")
        self.now += seconds
        return self.now

    def __repr__(self) -> str:
        return f"FakeClock({self.now!r})"
