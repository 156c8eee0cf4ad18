"""At home or away at each fix (with enter/exit hysteresis) and the trips those states make:
leaving the exit radius until coming back inside the enter radius, clipped to the window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from shared.engine.arrays import Bools, Codes, Floats, Ints, run_sums
from shared.engine.chain import Chain
from shared.engine.params import EngineParams
from shared.engine.results import AWAY
from shared.engine.window import Window


def home_states(home_km: Floats, chain: Chain, params: EngineParams) -> npt.NDArray[np.int8]:
    """At home (HOME) or away (AWAY) at each fix of `chain`, with hysteresis: leaving takes
    a fix beyond the exit radius, coming back one inside the enter radius; in between the
    state carries on. A device's first fix is away only beyond the exit radius."""
    n = len(chain.idx)
    d = home_km[chain.idx]
    decided = (d > params.exit_radius_km) | (d < params.enter_radius_km) | ~chain.linked
    source = np.where(decided, np.arange(n), 0)
    np.maximum.accumulate(source, out=source)
    away = d[source] > params.exit_radius_km
    return away.view(np.int8)  # AWAY is 1, HOME 0: the comparison is the state


@dataclass(frozen=True, eq=False)
class Trips:
    """Trips overlapping the window, as parallel arrays, and each valid fix's trip id."""

    device: Codes
    start_us: Ints
    end_us: Ints
    clipped_start: Bools
    clipped_end: Bools
    path_km: Floats
    max_km: Floats
    fix_trip: npt.NDArray[np.int32]

    @staticmethod
    def joined(parts: list[Trips]) -> Trips:
        """The trips of consecutive blocks as one set (fix_trip is left to the caller)."""
        if len(parts) == 1:
            return parts[0]
        return Trips(
            **{
                name: np.concatenate([getattr(part, name) for part in parts])
                for name in (
                    "device",
                    "start_us",
                    "end_us",
                    "clipped_start",
                    "clipped_end",
                    "path_km",
                    "max_km",
                )
            },
            fix_trip=np.zeros(0, dtype=np.int32),
        )


def find_trips(
    chain: Chain,
    state: npt.NDArray[np.int8],
    *,
    t: Ints,
    segment_km: Floats,
    home_km: Floats,
    window_edges: Ints,
    device: Codes,
    window: Window,
) -> Trips:
    """Runs of away fixes per device. `segment_km` is each context row's in-window path,
    `home_km` each chain fix's distance from home, `window_edges[g]` the chain positions
    where the g-th device's fixes inside the window begin and end."""
    n = len(t)
    away = state == AWAY
    first = ~chain.linked
    last = np.ones(n, dtype=bool)
    last[:-1] = first[1:]
    before_away = np.zeros(n, dtype=bool)
    before_away[1:] = away[:-1]
    after_away = np.zeros(n, dtype=bool)
    after_away[:-1] = away[1:]
    starts = np.flatnonzero(away & (first | ~before_away))
    ends = np.flatnonzero(away & (last | ~after_away))
    returned = ~last[ends]
    stop = np.where(returned, ends + 1, ends)
    begin_us, finish_us = t[starts], t[stop]
    lo, hi = window.start_us, window.end_us
    keep = ((begin_us < hi) & (finish_us > lo)) | ((begin_us >= lo) & (begin_us < hi))
    starts, ends, stop, returned = starts[keep], ends[keep], stop[keep], returned[keep]
    begin_us, finish_us = begin_us[keep], finish_us[keep]
    # Sums over each trip's own rows (rows off the chain add no path).
    rows = np.empty(2 * len(starts), dtype=np.int64)
    rows[0::2], rows[1::2] = chain.idx[starts], chain.idx[stop] + 1
    path_km = run_sums(segment_km, rows)[0::2]
    # The farthest fix of each trip inside the window: its chain positions clipped to the
    # device's fixes in the window (a kept trip starts before its device's window ends).
    group = np.searchsorted(window_edges[:, 1], starts, side="right")
    inside = np.empty((len(starts), 2), dtype=np.int64)
    inside[:, 0] = np.maximum(starts, window_edges[group, 0])
    inside[:, 1] = np.minimum(ends + 1, window_edges[group, 1])
    farthest = np.full(len(starts), np.nan)
    seen = inside[:, 0] < inside[:, 1]
    if seen.any():
        at = inside[seen].ravel()
        # The last run may end at the chain's end, which reduceat takes as its own end.
        farthest[seen] = np.maximum.reduceat(home_km, at[: len(at) - (at[-1] == n)])[0::2]
    ids = np.arange(1, len(starts) + 1, dtype=np.int32)
    runs = np.zeros(2 * len(starts) + 1, dtype=np.int32)
    runs[1::2] = ids
    sizes = np.empty(len(runs), dtype=np.int64)
    sizes[0::2] = np.diff(starts, prepend=0, append=n) - np.append(0, ends - starts + 1)
    sizes[1::2] = ends - starts + 1
    return Trips(
        device=device[starts],
        start_us=np.maximum(begin_us, lo),
        end_us=np.minimum(finish_us, hi),
        clipped_start=(begin_us < lo) | first[starts],
        clipped_end=(finish_us > hi) | ~returned,
        path_km=path_km,
        max_km=farthest,
        fix_trip=np.repeat(runs, sizes),
    )
