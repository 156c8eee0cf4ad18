"""The analysed window: whole local days of one time zone as a half-open UTC range, and the
wider range of fixes a reader fetches around it for context.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt

from shared.engine.params import EngineParams
from shared.engine.points import US_PER_S


@dataclass(frozen=True, eq=False)
class Window:
    """A half-open UTC range made of whole local days of one time zone.

    `bounds_us[k]` is the UTC instant (µs since the epoch) local day `dates[k]` starts;
    the last element is where the window ends. Days are 23, 24 or 25 hours long.
    """

    timezone: str
    dates: tuple[dt.date, ...]
    bounds_us: npt.NDArray[np.int64]

    @property
    def start_us(self) -> int:
        """First instant inside the window."""
        return int(self.bounds_us[0])

    @property
    def end_us(self) -> int:
        """First instant after the window."""
        return int(self.bounds_us[-1])

    def local_time(self, us: int) -> dt.datetime:
        """An instant as an aware datetime in the window's time zone."""
        return dt.datetime.fromtimestamp(us / US_PER_S, ZoneInfo(self.timezone))


def zone(name: str) -> ZoneInfo:
    """The time zone `name`, or ValueError naming it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def local_midnight_us(day: dt.date, tz: ZoneInfo) -> int:
    """The UTC instant (µs) local `day` begins in `tz`.

    Where a DST change skips midnight itself, the day begins at the change, which is what
    the offset in force before it gives.
    """
    start = dt.datetime(day.year, day.month, day.day, tzinfo=tz)
    return int(start.timestamp()) * US_PER_S


def day_window(first: dt.date, last: dt.date, timezone: str) -> Window:
    """The window covering local days `first` to `last` (both included) in `timezone`."""
    if last < first:
        raise ValueError(f"the last day ({last}) is before the first day ({first})")
    tz = zone(timezone)
    days = (last - first).days + 1
    dates = tuple(first + dt.timedelta(days=k) for k in range(days))
    bounds = [local_midnight_us(day, tz) for day in (*dates, last + dt.timedelta(days=1))]
    return Window(timezone=timezone, dates=dates, bounds_us=np.array(bounds, dtype=np.int64))


def read_range(window: Window, params: EngineParams) -> tuple[int, int]:
    """The half-open range of fix timestamps (µs) a reader should fetch for `window`.

    The window plus `params.context_s` on each side: the context lets filters judge the
    window's first and last fixes by their real neighbours and lets segments crossing the
    window's edges be split there, so consecutive days add up to their range exactly.
    """
    margin = round(params.context_s * US_PER_S)
    return window.start_us - margin, window.end_us + margin
