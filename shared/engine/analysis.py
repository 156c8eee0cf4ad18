"""`analyze`: every filter and metric over blocks of whole devices, the per-fix columns
filled in place, and the `Analysis` assembled from them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from shared.engine.arrays import (
    Codes,
    Floats,
    Ints,
    concat_ranges,
    device_starts,
    first_at_or_after,
)
from shared.engine.bounds import centre_errors, step_bounds
from shared.engine.chain import Fixes
from shared.engine.days import spread_over_days
from shared.engine.filters import check_sorted, find_duplicates, find_jumps, find_still
from shared.engine.params import EngineParams
from shared.engine.points import DTYPES, US_PER_S, Points
from shared.engine.results import (
    ACCURACY,
    AWAY,
    DUPLICATE,
    HOME,
    JITTER,
    JUMP,
    KEPT,
    STATE_UNKNOWN,
    Analysis,
    DaySums,
)
from shared.engine.stays import (
    Rests,
    Stays,
    at_rest_km,
    find_pauses,
    find_stays,
    held_at_rest,
    rest_in_stays,
    through_centres,
)
from shared.engine.summary import Summarizer
from shared.engine.trips import Trips, find_trips, home_states
from shared.engine.window import Window, read_range

BLOCK_FIXES = 1 << 20
"""Devices are analysed in blocks of about this many fixes (every step is per device):
arrays this size are reused from the heap rather than faulted in afresh, which keeps the
time per fix at ten million fixes close to that at one million and bounds temporaries."""
_ALL_TIME: Final = (np.iinfo(np.int64).min, np.iinfo(np.int64).max)
"""Bounds (µs) that every fix's time lies within."""


@dataclass(frozen=True, eq=False)
class Part:
    """The per-day sums and trips of one block of whole devices (rows `first_device` on of
    the per-day arrays), and the rows of its fixes inside the window."""

    first_device: int
    path_days: Floats
    bound_days: Floats
    """The low and high bounds of the path, per device and day."""
    raw_days: Floats
    time_days: Floats
    read_days: Ints
    used_days: Ints
    window_rows: Ints
    """Per device, the first row inside the window and the first after it."""
    trips: Trips
    stays: Stays
    """Rows counted within the block."""
    n_valid: int
    lead_km: Floats
    """Per device, the share before the window of the step into its first fix inside it."""
    lead_us: Ints
    """Per device, that fix's time (-1 for none)."""


@dataclass(frozen=True, eq=False)
class Columns:
    """The per-fix results of every context fix, which the blocks fill in row by row (no
    copies to join), and the devices and times of the valid fixes, filled from the start."""

    code: npt.NDArray[np.uint8]
    home_km: Floats
    segment_km: Floats
    at_home: npt.NDArray[np.int8]
    trip: npt.NDArray[np.int32]
    stay: npt.NDArray[np.int32]
    valid_device: Codes
    valid_t: Ints

    @staticmethod
    def empty(points: Points) -> Columns:
        """Columns for `points`, not yet filled."""
        n = len(points)
        return Columns(
            code=np.empty(n, dtype=np.uint8),
            home_km=np.empty(n),
            segment_km=np.empty(n),
            at_home=np.empty(n, dtype=np.int8),
            trip=np.empty(n, dtype=np.int32),
            stay=np.empty(n, dtype=np.int32),
            valid_device=np.empty(n, dtype=points.device.dtype),
            valid_t=np.empty(n, dtype=np.int64),
        )


def analyze(points: Points, window: Window, params: EngineParams) -> Analysis:
    """Run every filter and metric over `points` for `window`.

    `points` must be sorted by device, then timestamp (as `Points.from_columns` and the
    readers produce them). Fixes outside the window serve as context only (see
    `read_range`); the result describes the fixes inside it. No fixes is a valid input and
    gives zeros and a note.
    """
    check_sorted(points)
    lo, hi = read_range(window, params)
    t, first = points.timestamp, device_starts(points.device, len(points.device_ids))
    seen = first[:-1] < first[1:]
    # Each device's fixes are in time order: its first and last tell whether all are near.
    if (t[first[:-1][seen]] < lo).any() or (t[first[1:][seen] - 1] >= hi).any():
        points = points.take((t >= lo) & (t < hi))
    n_devices, n_days = len(points.device_ids), len(window.dates)
    out = Columns.empty(points)
    path_days, raw_days = np.zeros((2, n_devices, n_days))
    bound_days = np.zeros((2, n_devices, n_days))
    time_days = np.zeros((n_devices, 2, n_days))
    read_days, used_days = np.zeros((2, n_devices, n_days), dtype=np.int64)
    lead_km = np.zeros(n_devices)
    lead_us = np.full(n_devices, -1, dtype=np.int64)
    parts: list[Part] = []
    n_valid = n_trips = n_stays = 0
    blocks = device_blocks(points.device, n_devices)
    for rows in blocks:
        part = analyze_devices(points, rows, window, params, out=out, valid_from=n_valid)
        if n_trips:  # each block numbers its trips from 1
            trip = out.trip[rows]
            trip[trip > 0] += n_trips
        if n_stays:
            stay = out.stay[rows]
            stay[stay > 0] += n_stays
        n_valid += part.n_valid
        n_trips += len(part.trips.device)
        n_stays += len(part.stays.device)
        devices = slice(part.first_device, part.first_device + len(part.window_rows))
        path_days[devices], raw_days[devices] = part.path_days, part.raw_days
        bound_days[:, devices] = part.bound_days
        time_days[devices], read_days[devices] = part.time_days, part.read_days
        used_days[devices] = part.used_days
        lead_km[devices], lead_us[devices] = part.lead_km, part.lead_us
        parts.append(part)
    trips = Trips.joined([part.trips for part in parts])
    stays = Stays.joined(
        [part.stays.shifted(block.start) for part, block in zip(parts, blocks, strict=True)]
    )

    window_rows = np.concatenate([part.window_rows for part in parts])
    w: slice | Ints = slice(None)
    window_points = points
    if int((window_rows[:, 1] - window_rows[:, 0]).sum()) != len(points):
        w = concat_ranges(window_rows[:, 0], window_rows[:, 1])
        window_points = points.take(w)
    segment_km = out.segment_km[w]
    cumulative = np.empty_like(segment_km)
    for a, b in itertools.pairwise(device_starts(window_points.device, n_devices).tolist()):
        np.cumsum(segment_km[a:b], out=cumulative[a:b])  # rows are sorted by device
    home_km, code = out.home_km[w], out.code[w]
    summary = Summarizer(
        window_points, window, params, distance_km=home_km, code=code, stay=out.stay[w], stays=stays
    ).summary(
        path_days=path_days,
        bound_days=bound_days,
        raw_days=raw_days,
        time_days=time_days,
        read_days=read_days,
        used_days=used_days,
        trips=trips,
        cumulative_km=cumulative,
        valid_device=out.valid_device[:n_valid],
        valid_t=out.valid_t[:n_valid],
    )
    return Analysis(
        summary=summary,
        points=window_points,
        distance_km=home_km,
        segment_km=segment_km,
        cumulative_km=cumulative,
        at_home=out.at_home[w],
        trip=out.trip[w],
        stay=out.stay[w],
        dropped_by=code,
        sums=DaySums(
            path=path_days,
            path_low=bound_days[0],
            path_high=bound_days[1],
            raw_path=raw_days,
            home_s=time_days[:, HOME],
            away_s=time_days[:, AWAY],
            lead_km=lead_km,
            lead_us=lead_us,
        ),
    )


def device_blocks(device: Codes, n_devices: int) -> list[slice]:
    """Row ranges of whole devices, each about BLOCK_FIXES long (or one larger device)."""
    starts = device_starts(device, n_devices)[1:].tolist()
    edges = [0]
    for end in starts:
        if end - edges[-1] >= BLOCK_FIXES:
            edges.append(end)
    if edges[-1] != len(device) or len(edges) == 1:
        edges.append(len(device))
    return [slice(a, b) for a, b in itertools.pairwise(edges)]


def analyze_devices(
    all_points: Points,
    rows: slice,
    window: Window,
    params: EngineParams,
    *,
    out: Columns,
    valid_from: int,
) -> Part:
    """Every filter and per-fix metric for the fixes in `rows` (whole devices), written to
    those rows of `out` (the valid fixes' devices and times from row `valid_from`)."""
    points = Points(
        device_ids=all_points.device_ids,
        **{name: getattr(all_points, name)[rows] for name in DTYPES},
    )
    t = points.timestamp
    bounds = window.bounds_us
    device = points.device
    first_device = int(device[0]) if len(device) else 0
    last_device = int(device[-1]) + 1 if len(device) else 0
    # Each device's rows of each day are consecutive: found by their first rows, not per fix.
    starts = np.searchsorted(device, np.arange(first_device, last_device + 1, dtype=device.dtype))
    at_bound = first_at_or_after(t, starts, bounds)
    fixes = Fixes(points, params, out.home_km[rows])
    located, home_km = fixes.located, fixes.home_km

    code = out.code[rows]
    np.logical_not(located, out=code.view(np.bool_))  # INVALID where not located, else KEPT
    good = located.copy()
    if params.max_accuracy_m is not None:
        inaccurate = good & (points.accuracy > params.max_accuracy_m)
        code[inaccurate] = ACCURACY
        good &= ~inaccurate
    spread = {"t": t, "bounds": bounds}
    raw = fixes.subchain(fixes.every(), located)
    # A chain as long as the rows holds them all: its positions are the rows.
    keep = good if len(raw.idx) == len(good) else good[raw.idx]
    if params.drop_duplicates:  # judged among the accurate fixes, dropped with them
        accurate = np.flatnonzero(keep)
        repeated = accurate[find_duplicates(fixes, raw.idx[accurate])]
        code[raw.idx[repeated]] = DUPLICATE
        keep[repeated] = False
    valid = fixes.subchain(raw, keep)
    raw_days, _, _ = spread_over_days(raw, raw.step_km[np.newaxis], at_bound, **spread)
    del raw  # the largest chain: free it before the next ones are built
    if params.max_speed_kmh is not None:
        jumped = find_jumps(fixes, valid, params.max_speed_kmh)
        code[valid.idx[jumped]] = JUMP
        valid = fixes.subchain(valid, ~jumped)
    # The stays of the whole read hold the device at rest, the context's too: a fix near
    # midnight is then judged alike whether its day is analysed alone or within a range
    # (a stay that ends just before the window still starts the step into it from its
    # centre). Only those overlapping the window are reported.
    resting = find_stays(fixes, valid, params, *_ALL_TIME)
    stays = resting.overlapping(window.start_us, window.end_us)
    # Inside a stay the device rested, whatever the centroids say (which spares the
    # jitter rule its costliest work there, following centroids that wander).
    still = find_still(fixes, valid, params, held_at_rest(valid, resting))
    # Rule 5 also holds a device at rest where it stays or pauses (not when it is off).
    rests = Rests.empty()
    if params.jitter_radius_m > 0:
        rests = Rests.of(resting, find_pauses(fixes, valid, params))
        still = rest_in_stays(still, valid, rests)
    code[valid.idx[still]] = JITTER
    used = through_centres(fixes, fixes.subchain(valid, ~still), rests)

    # A resting device was seen where it rested until its last jitter fix: a move away
    # happened after that, so the step is placed in time from there, not from the anchor.
    moved = np.flatnonzero(~still)
    last_seen = valid.idx[np.maximum(moved - 1, 0)]
    # Each row's stay (dropped rows too, for now: only the rows of used fixes are read):
    # the stays are disjoint runs of rows in order, so the rows are runs of 0 and each id.
    ids = np.zeros(2 * len(stays.first) + 1, dtype=np.int32)
    ids[1::2] = np.arange(1, len(stays.first) + 1)
    edges = np.stack([stays.first, stays.last + 1], axis=1).ravel()
    stay = out.stay[rows]
    np.copyto(stay, np.repeat(ids, np.diff(edges, prepend=0, append=len(stay))))
    centred = centre_error_km = None
    if params.jitter_radius_m > 0:
        centred = np.zeros(len(used.idx), dtype=bool)
        centred[np.searchsorted(used.idx, rests.first)] = True
        centred[np.searchsorted(used.idx, rests.last)] = True
        centre_error_km = centre_errors(used, resting)
    low_km, high_km = step_bounds(fixes, used, stay, centred, centre_error_km)
    since = np.where(used.linked, last_seen, used.idx)
    path_days, crossing, crossing_km = spread_over_days(
        used,
        np.stack([used.step_km, low_km, high_km]),
        at_bound,
        since=since,
        **spread,
    )
    # The path each fix adds inside the window, by row: none before or after the window.
    seg = out.segment_km[rows]
    seg.fill(0.0)
    seg[used.idx] = used.step_km
    seg[concat_ranges(starts[:-1], at_bound[:, 0])] = 0.0
    seg[concat_ranges(at_bound[:, -1], starts[1:])] = 0.0
    seg[used.idx[crossing]] = crossing_km[0]
    # The share before the window of the step into each device's first fix inside it: a
    # range analysed day by day gives it back to a trip that starts with that fix.
    lead_km = np.zeros(last_device - first_device)
    lead_us = np.full(last_device - first_device, -1, dtype=np.int64)
    end_t = t[used.idx[crossing]]
    lead = (t[since[crossing]] < window.start_us) & (end_t >= window.start_us)
    lead &= end_t < window.end_us
    lead_device = device[used.idx[crossing[lead]]] - first_device
    lead_km[lead_device] = used.step_km[crossing[lead]] - crossing_km[0][lead]
    lead_us[lead_device] = end_t[lead]

    state_used = home_states(home_km, used, params)
    # A jitter fix is where its device's last used fix was: it shares that fix's state (a
    # device's first valid fix is never jitter, so each run starts with a used fix).
    state = np.repeat(state_used, np.diff(moved, append=len(still)))
    observed = valid.linked & (valid.step_us <= round(params.max_gap_s * US_PER_S))
    seconds = np.zeros((2, len(valid.idx)))  # time at home, away since the previous fix
    np.divide(valid.step_us, US_PER_S, out=seconds[AWAY], where=observed)
    away_before = np.zeros(len(state), dtype=bool)
    away_before[1:] = state[:-1] == AWAY
    np.copyto(seconds[HOME], seconds[AWAY], where=~away_before)
    seconds[AWAY][~away_before] = 0.0
    valid_at = slice(valid_from, valid_from + len(valid.idx))
    valid_device = np.take(device, valid.idx, out=out.valid_device[valid_at])
    valid_t = np.take(t, valid.idx, out=out.valid_t[valid_at])
    time_days, _, _ = spread_over_days(valid, seconds, at_bound, **spread)

    window_edges = np.searchsorted(valid.idx, at_bound[:, [0, -1]])
    trips = find_trips(
        valid,
        state,
        t=valid_t,
        segment_km=seg,
        home_km=at_rest_km(home_km[valid.idx], valid, resting),
        window_edges=window_edges,
        device=valid_device,
        window=window,
    )
    at_home = out.at_home[rows]
    at_home.fill(STATE_UNKNOWN)
    at_home[valid.idx] = state == HOME
    trip = out.trip[rows]
    trip.fill(0)
    trip[valid.idx] = trips.fix_trip
    # Every fix seen from a stay's first to its last is the stay's (dropped ones are not).
    stay[(code != KEPT) & (code != JITTER)] = 0

    return Part(
        first_device=first_device,
        path_days=path_days[0],
        bound_days=path_days[1:],
        raw_days=raw_days[0],
        time_days=time_days.transpose(1, 0, 2),
        read_days=np.diff(at_bound, axis=1),
        used_days=np.diff(np.searchsorted(used.idx, at_bound), axis=1),
        window_rows=at_bound[:, [0, -1]] + rows.start,
        trips=trips,
        stays=stays,
        n_valid=len(valid.idx),
        lead_km=lead_km,
        lead_us=lead_us,
    )
