"""Stays: periods of at least `stay_min_minutes` in which a device keeps within
`stay_radius_m` (plus each fix's reported accuracy) of a robust centre.

Found per device over the fixes the quality filters kept (jitter fixes included: they are
real observations of a resting device), in vectorised passes: lone outliers are set aside,
the chain is cut wherever a step leaves the reach of the fix before it or a silence exceeds
`stay_max_silence_hours`, and only the runs long enough to be a stay are examined further,
one small array operation per run (never per fix).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from shared.engine.arrays import Bools, Codes, Floats, Ints, concat_ranges
from shared.engine.chain import Chain, Fixes
from shared.engine.filters import HELD_STILL, HELD_USED
from shared.engine.geometry import (
    EARTH_RADIUS_KM,
    haversine_km,
    unit_vectors,
    vector_distance_km,
)
from shared.engine.params import EngineParams
from shared.engine.points import US_PER_S

_M_PER_UNIT = EARTH_RADIUS_KM * 1000.0
CENTRE_SAMPLE = 240
"""A stay's centre is the median of at most about twice this many of its fixes."""
_FIELDS = (
    "device",
    "first",
    "last",
    "start_us",
    "end_us",
    "lat",
    "lon",
    "radius_m",
    "fixes",
    "data_start",
    "data_end",
    "home_km",
)


@dataclass(frozen=True, eq=False)
class Stays:
    """Stays that overlap the window, as parallel arrays in (device, time) order."""

    device: Codes
    first: Ints
    """Context row of the stay's first fix."""
    last: Ints
    """Context row of its last fix."""
    start_us: Ints
    end_us: Ints
    lat: Floats
    lon: Floats
    radius_m: Floats
    """Farthest of the stay's fixes from its centre (outliers set aside)."""
    fixes: Ints
    data_start: Bools
    """The stay begins with its device's first fix: the arrival was not observed."""
    data_end: Bools
    """The stay ends with its device's last fix: the departure was not observed."""
    home_km: Floats
    """Its centre's distance from home."""

    @staticmethod
    def empty() -> Stays:
        """No stays."""
        ints = np.zeros(0, dtype=np.int64)
        floats = np.zeros(0)
        bools = np.zeros(0, dtype=bool)
        return Stays(
            device=np.zeros(0, dtype=np.int32),
            first=ints,
            last=ints,
            start_us=ints,
            end_us=ints,
            lat=floats,
            lon=floats,
            radius_m=floats,
            fixes=ints,
            data_start=bools,
            data_end=bools,
            home_km=floats,
        )

    @staticmethod
    def joined(parts: list[Stays]) -> Stays:
        """The stays of consecutive blocks as one set."""
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return Stays.empty()
        return Stays(
            **{name: np.concatenate([getattr(p, name) for p in parts]) for name in _FIELDS}
        )

    def overlapping(self, lo: int, hi: int) -> Stays:
        """The stays that overlap the window [lo, hi) (µs)."""
        keep = (self.start_us < hi) & (self.end_us > lo)
        return Stays(**{name: getattr(self, name)[keep] for name in _FIELDS})

    def shifted(self, rows: int) -> Stays:
        """The same stays with their rows counted `rows` further on."""
        values = {name: getattr(self, name) for name in _FIELDS}
        values["first"] = self.first + rows
        values["last"] = self.last + rows
        return Stays(**values)


def find_stays(fixes: Fixes, chain: Chain, params: EngineParams, lo: int, hi: int) -> Stays:
    """The stays of the fixes in `chain` (several devices, each in time order) that overlap
    the window [lo, hi) (µs)."""
    n = len(chain.idx)
    if n == 0:
        return Stays.empty()
    accuracy = np.maximum(fixes.points.accuracy[chain.idx], 0).astype(np.float64)
    reach = params.stay_radius_m + np.maximum(accuracy[1:], accuracy[:-1])
    far = np.zeros(n, dtype=bool)
    far[1:] = chain.linked[1:] & (chain.step_km[1:] * 1000.0 > reach)
    # A lone fix far from both neighbours, which are near each other, is an outlier (a
    # reflected signal): set aside, so it neither ends a stay nor starts a move.
    lone = np.flatnonzero(far[1:-1] & far[2:] & chain.linked[2:]) + 1
    if len(lone):
        before, after = chain.idx[lone - 1], chain.idx[lone + 1]
        near = fixes.distance(before, after) * 1000.0 <= params.stay_radius_m + np.maximum(
            accuracy[lone - 1], accuracy[lone + 1]
        )
        keep = np.ones(n, dtype=bool)
        keep[lone[near]] = False
        if not keep.all():
            chain = fixes.subchain(chain, keep)
            accuracy = accuracy[keep]
            n = len(chain.idx)
            reach = params.stay_radius_m + np.maximum(accuracy[1:], accuracy[:-1])
            far = np.zeros(n, dtype=bool)
            far[1:] = chain.linked[1:] & (chain.step_km[1:] * 1000.0 > reach)
    reach_m = params.stay_radius_m + accuracy
    t = fixes.t[chain.idx]
    silence_us = round(params.stay_max_silence_hours * 3600 * US_PER_S)
    min_us = round(params.stay_min_minutes * 60 * US_PER_S)
    # Cut at a device's first fix, a step beyond the reach of the fix before it, a silence.
    cut = ~chain.linked
    cut |= far
    cut[1:] |= chain.step_us[1:] > silence_us
    starts = np.flatnonzero(cut)
    ends = np.append(starts[1:], n)
    long_enough = (t[ends - 1] - t[starts] >= min_us) & (t[ends - 1] >= lo) & (t[starts] < hi)
    xyz = Vectors(fixes, chain.idx)
    found: list[tuple[int, int, Floats, float]] = []
    for a, b in zip(starts[long_enough].tolist(), ends[long_enough].tolist(), strict=True):
        found.extend(_settle(a, b, xyz, t, reach_m, min_us))
    found.sort(key=lambda stay: stay[0])
    found = _merged(found, xyz, t, reach_m, chain.linked, silence_us, params.stay_radius_m, min_us)
    if not found:
        return Stays.empty()
    first = np.array([stay[0] for stay in found], dtype=np.int64)
    last = np.array([stay[1] - 1 for stay in found], dtype=np.int64)
    centre = np.array([stay[2] for stay in found])
    start_us, end_us = t[first], t[last]
    overlaps = (start_us < hi) & (end_us > lo)
    first, last, centre = first[overlaps], last[overlaps], centre[overlaps]
    ends_chain = np.ones(n, dtype=bool)
    ends_chain[:-1] = ~chain.linked[1:]
    rows_first, rows_last = chain.idx[first], chain.idx[last]
    lat = np.degrees(np.arcsin(np.clip(centre[:, 2], -1.0, 1.0)))
    lon = np.degrees(np.arctan2(centre[:, 1], centre[:, 0]))
    return Stays(
        device=fixes.device[rows_first],
        first=rows_first,
        last=rows_last,
        start_us=t[first],
        end_us=t[last],
        lat=lat,
        lon=lon,
        radius_m=np.array([stay[3] for stay in found])[overlaps],
        fixes=last - first + 1,
        data_start=~chain.linked[first],
        data_end=ends_chain[last],
        home_km=haversine_km(params.home_latitude, params.home_longitude, lat, lon),
    )


@dataclass(frozen=True, eq=False)
class Rests:
    """Periods at rest (stays and shorter pauses), as parallel arrays in row order: the
    context rows of each one's first and last fix and its centre."""

    first: Ints
    last: Ints
    lat: Floats
    lon: Floats

    @staticmethod
    def empty() -> Rests:
        """No rests."""
        rows, floats = np.zeros(0, dtype=np.int64), np.zeros(0)
        return Rests(first=rows, last=rows, lat=floats, lon=floats)

    @staticmethod
    def of(stays: Stays, pauses: Rests) -> Rests:
        """The stays and the pauses that overlap none of them, together, in row order."""
        k = np.searchsorted(stays.last, pauses.first)
        clear = k == len(stays.last)
        clear[~clear] = stays.first[k[~clear]] > pauses.last[~clear]
        if not clear.all():
            pauses = Rests(
                **{name: getattr(pauses, name)[clear] for name in ("first", "last", "lat", "lon")}
            )
        order = np.argsort(np.concatenate([stays.first, pauses.first]), kind="stable")
        return Rests(
            **{
                name: np.concatenate([getattr(stays, name), getattr(pauses, name)])[order]
                for name in ("first", "last", "lat", "lon")
            }
        )


PAUSE_MIN_S = 60.0
"""A pause lasts at least this long (and holds at least three fixes): a traffic stop or a
wait at a crossing, too short to be a stay but time at rest all the same, whose fixes must
not add their noise to the path (docs/ACCURACY.md measures it)."""


def find_pauses(fixes: Fixes, chain: Chain, params: EngineParams) -> Rests:
    """Pauses in `chain`: runs of fixes of at least PAUSE_MIN_S and three fixes but shorter
    than a stay, each within `stay_radius_m` (plus its accuracy) of the run's mean place.

    The runs are cut where a step leaves the reach of the fix before it (or of that fix's
    own, if larger), as for stays; the mean place is the normalised sum of the run's unit
    vectors. The fixes beyond the reach at either end of a run (arriving or leaving) are
    trimmed once, and a run that still does not keep within the reach of its mean place is
    no pause. All runs at once, in a few vectorised passes over the fixes of the candidate
    runs."""
    n = len(chain.idx)
    if n < 3:
        return Rests.empty()
    accuracy = np.maximum(fixes.points.accuracy[chain.idx], 0).astype(np.float64)
    reach_m = params.stay_radius_m + accuracy
    cut = ~chain.linked
    cut[1:] |= chain.step_km[1:] * 1000.0 > np.maximum(reach_m[1:], reach_m[:-1])
    starts = np.flatnonzero(cut)
    ends = np.append(starts[1:], n)
    t = fixes.t[chain.idx]
    pause_us = round(PAUSE_MIN_S * US_PER_S)
    stay_us = round(params.stay_min_minutes * 60 * US_PER_S)
    span = t[ends - 1] - t[starts]
    keep = (ends - starts >= 3) & (span >= pause_us) & (span < stay_us)
    starts, ends = starts[keep], ends[keep]
    for trim in (True, False):
        if not len(starts):
            return Rests.empty()
        pos = concat_ranges(starts, ends)
        xyz = fixes.xyz[:, chain.idx[pos]]
        at = np.cumsum(ends - starts) - (ends - starts)
        size = ends - starts
        centre = np.add.reduceat(xyz, at, axis=1)
        centre /= np.sqrt(np.einsum("ij,ij->j", centre, centre))
        diff = xyz - np.repeat(centre, size, axis=1)
        inside = np.sqrt(np.einsum("ij,ij->j", diff, diff)) * _M_PER_UNIT <= reach_m[pos]
        if trim:
            # The first and last fix of each run within the reach of its mean place.
            big = np.iinfo(np.int64).max
            first = np.minimum.reduceat(np.where(inside, pos, big), at)
            last = np.maximum.reduceat(np.where(inside, pos, -1), at)
            held = last >= first
            starts, ends = first[held], last[held] + 1
            keep = (ends - starts >= 3) & (t[ends - 1] - t[starts] >= pause_us)
            starts, ends = starts[keep], ends[keep]
            continue
        whole = np.logical_and.reduceat(inside, at)
        starts, ends, centre = starts[whole], ends[whole], centre[:, whole]
    return Rests(
        first=chain.idx[starts],
        last=chain.idx[ends - 1],
        lat=np.degrees(np.arcsin(np.clip(centre[2], -1.0, 1.0))),
        lon=np.degrees(np.arctan2(centre[1], centre[0])),
    )


def held_at_rest(chain: Chain, stays: Stays) -> Codes:
    """Per fix of `chain`, `filters.find_still`'s fixed answer for the fixes of `stays`:
    HELD_STILL between a stay's first and last fix, HELD_USED at them, 0 elsewhere."""
    held = np.zeros(len(chain.idx) + 1, dtype=np.int8)
    if not len(stays.first):
        return held[:-1]
    first = np.searchsorted(chain.idx, stays.first)
    last = np.searchsorted(chain.idx, stays.last)
    # Stays are disjoint runs of the chain: +1 after each one's first fix, -1 at its last.
    np.add.at(held, first + 1, HELD_STILL)
    np.add.at(held, last, -HELD_STILL)
    held = np.cumsum(held[:-1], dtype=np.int8)
    held[first] = HELD_USED
    held[last] = HELD_USED
    return held


def rest_in_stays(still: Bools, chain: Chain, rests: Rests) -> Bools:
    """`still` (of the fixes of `chain`) with every fix of `rests` still but each one's
    first and last: the device was at rest there, so the fixes between add no path whatever
    their noise says (a drift jump, a scatter wider than the jitter radius); the first and
    last are used, so that the path reaches the place and leaves it (see `through_centres`).
    `rests` must be of the chain's rows."""
    if not len(rests.first):
        return still
    inside = np.zeros(len(chain.idx) + 1, dtype=np.int8)
    first = np.searchsorted(chain.idx, rests.first)
    last = np.searchsorted(chain.idx, rests.last)
    # Rests are disjoint runs of the chain: +1 after each one's first fix, -1 at its last.
    np.add.at(inside, first + 1, 1)
    np.add.at(inside, last, -1)
    still = still | np.cumsum(inside[:-1], dtype=np.int8).view(np.bool_)
    still[first] = False
    still[last] = False
    return still


def through_centres(fixes: Fixes, chain: Chain, rests: Rests) -> Chain:
    """`chain` (with each rest's first and last fix, see `rest_in_stays`) with its path
    running through the centres of `rests` rather than their edge fixes: the step to a
    rest's first fix ends at the centre, the step across it is none, and the step after its
    last fix starts at the centre. The edge fixes are as noisy as any; the centre is made
    of them all."""
    m = len(rests.first)
    if not m:
        return chain
    n = len(chain.idx)
    first = np.searchsorted(chain.idx, rests.first)
    last = np.searchsorted(chain.idx, rests.last)
    centre = np.stack(unit_vectors(rests.lat, rests.lon))
    step_km = chain.step_km.copy()
    # Arriving: from the fix before (or the centre of a rest that ends there) to the centre.
    arrive = first[chain.linked[first]]
    before = np.searchsorted(last, arrive - 1)
    before[before == m] = 0
    from_rest = last[before] == arrive - 1
    start = fixes.xyz[:, chain.idx[arrive - 1]]
    start[:, from_rest] = centre[:, before[from_rest]]
    step_km[arrive] = vector_distance_km(tuple(start), tuple(centre[:, chain.linked[first]]))
    step_km[last] = 0.0
    # Leaving: from the centre to the fix after (or the centre of a rest that starts there).
    after = last + 1
    leave = after < n
    leave[leave] = chain.linked[after[leave]]
    nxt = np.searchsorted(first, after[leave])
    nxt[nxt == m] = 0
    to_rest = first[nxt] == after[leave]
    end = fixes.xyz[:, chain.idx[after[leave]]]
    end[:, to_rest] = centre[:, nxt[to_rest]]
    step_km[after[leave]] = vector_distance_km(tuple(centre[:, leave]), tuple(end))
    return dataclasses.replace(chain, step_km=step_km)


def at_rest_km(home_km: Floats, chain: Chain, stays: Stays) -> Floats:
    """`home_km` (of the fixes of `chain`) with each fix of a stay at its stay's centre:
    where a device rested, one noisy fix or a drift jump must not set the farthest point.
    `stays` must be of the chain's rows, in order."""
    first = np.searchsorted(chain.idx, stays.first).tolist()
    last = np.searchsorted(chain.idx, stays.last).tolist()
    for a, b, km in zip(first, last, stays.home_km.tolist(), strict=True):
        home_km[a : b + 1] = km  # one fill per stay: its fixes are consecutive
    return home_km


class Vectors:
    """The unit vectors of chain positions, gathered per run (never for the whole chain)."""

    def __init__(self, fixes: Fixes, idx: Ints) -> None:
        self.xyz, self.idx = fixes.xyz, idx

    def __getitem__(self, run: slice) -> Floats:
        rows = self.idx[run]
        if len(rows) and rows[-1] - rows[0] == len(rows) - 1:  # consecutive rows: a view
            return self.xyz[:, rows[0] : rows[-1] + 1]
        return self.xyz.take(rows, axis=1)


def _centre(xyz: Floats) -> tuple[Floats, Floats]:
    """The component-wise median of unit vectors (columns), back on the sphere, and each
    vector's distance from it in metres: one noisy fix cannot move it. A long run's centre
    is the median of an even sample of its fixes, which is as robust and costs far less.
    Distances are chords, equal to the arcs to a millimetre at the scale of a stay."""
    sample = xyz[:, :: max(xyz.shape[1] // CENTRE_SAMPLE, 1)]
    middle = sample.shape[1] // 2
    centre = np.partition(sample, middle, axis=1)[:, middle]
    centre /= np.sqrt(centre @ centre)
    diff = xyz - centre[:, np.newaxis]
    diff *= diff
    chord = diff[0]  # the sum over the rows in their order, in place: no new arrays
    chord += diff[1]
    chord += diff[2]
    np.sqrt(chord, out=chord)
    chord *= _M_PER_UNIT
    return centre, chord


def _settle(
    a: int, b: int, xyz: Vectors, t: Ints, reach_m: Floats, min_us: int
) -> list[tuple[int, int, Floats, float]]:
    """The stays in chain positions [a, b). A run is judged against the reach of its
    centre: fixes beyond it at either end are cut off (the device arriving or leaving, or
    another place), and so is the run wherever it stays beyond the reach for `min_us` or
    longer (it went somewhere). A shorter excursion is noise or drift, and the stay goes on.
    Every part cut off is judged again with its own centre."""
    out: list[tuple[int, int, Floats, float]] = []
    # The run's vectors, gathered once: each part judged again is a view of them.
    run, origin = xyz[a:b], a
    todo = [(a, b)]
    while todo:
        a, b = todo.pop()
        if b - a < 2 or t[b - 1] - t[a] < min_us:
            continue
        centre, distance = _centre(run[:, a - origin : b - origin])
        inside = distance <= reach_m[a:b]
        if inside.all():  # the usual case: nothing to cut off
            out.append((a, b, centre, float(distance.max())))
            continue
        if not inside.any():
            todo += [(a, (a + b) // 2), ((a + b) // 2, b)]
            continue
        held = np.flatnonzero(inside) + a
        first, last = int(held[0]), int(held[-1]) + 1
        # Excursions: consecutive fixes held by the reach with time beyond it between them.
        away = np.flatnonzero((held[1:] - held[:-1] > 1) & (t[held[1:]] - t[held[:-1]] >= min_us))
        if first > a or last < b or len(away):
            starts = [first, *(held[away + 1]).tolist()]
            ends = [*(held[away] + 1).tolist(), last]
            todo += list(zip(starts, ends, strict=True))
            todo += [(a, first), (last, b)] if first > a or last < b else []
            todo += [(int(e), int(s)) for e, s in zip(ends[:-1], starts[1:], strict=True)]
            continue
        out.append((a, b, centre, float(distance[inside].max())))
    return out


def _merged(
    found: list[tuple[int, int, Floats, float]],
    xyz: Vectors,
    t: Ints,
    reach_m: Floats,
    linked: Bools,
    silence_us: int,
    radius_m: float,
    min_us: int,
) -> list[tuple[int, int, Floats, float]]:
    """Consecutive stays of one device whose centres lie within the stay radius (plus the
    fixes' typical reported accuracy) of each other and whose gap is no longer than the
    silence limit are one stay that a wander interrupted, unless the fixes between them,
    for `min_us` or longer, went away (see `_wandered`). `reach_m` is `radius_m` plus
    each fix's accuracy (never negative)."""
    out: list[tuple[int, int, Floats, float]] = []
    for stay in found:
        if out:
            a, b, centre, _ = out[-1]
            gap_ok = t[stay[0]] - t[b - 1] <= silence_us and linked[b : stay[0] + 1].all()
            apart = float(np.sqrt(((stay[2] - centre) ** 2).sum())) * _M_PER_UNIT
            # Noisier fixes scatter the centres of a stay's parts further apart. Every reach
            # is at least the radius, so within it the median need not be computed.
            if gap_ok and (apart <= radius_m or _within_median(apart, reach_m[a : stay[1]])):
                merged_centre, distance = _centre(xyz[a : stay[1]])
                # A wander stays near the place; a walk out and back from it goes away (an
                # absence shorter than a stay is no walk to tell: a few wild fixes).
                between = distance[b - a : stay[0] - a]
                brief = t[stay[0]] - t[b - 1] < min_us
                if brief or _wandered(between, reach_m[b : stay[0]]):
                    inside = distance <= reach_m[a : stay[1]]
                    out[-1] = (a, stay[1], merged_centre, float(distance[inside].max(initial=0.0)))
                    continue
        out.append(stay)
    return out


WANDER_REACHES = 2.0
"""The fixes between two parts of one stay keep, but for a tenth of them, within this many
times their reach of the stay's centre: drift wanders about the place, a walk leaves it."""


def _wandered(distance: Floats, reach_m: Floats) -> bool:
    """Whether fixes at `distance` (m) from a centre kept near it (see WANDER_REACHES)."""
    beyond = int(np.count_nonzero(distance > WANDER_REACHES * reach_m))
    return beyond <= len(distance) // 10


def _within_median(value: float, values: Floats) -> bool:
    """Whether `value` <= the median of `values` (not empty, no NaN): told by counting the
    values below it, and only where that leaves it open (the two middle values of an even
    count on either side) by the median itself."""
    below, half = int(np.count_nonzero(values < value)), len(values) // 2
    if len(values) % 2:
        return below <= half  # the middle value is not below it
    if below != half:
        return below < half  # both middle values are at least it, or both below it
    return value <= float(np.median(values))
