"""The filter rules after the coordinate and accuracy checks: exact duplicates, impossible
jumps and stationary jitter, plus the input's sort check.
"""

from __future__ import annotations

import numpy as np

from shared.engine import arrays
from shared.engine.arrays import Bools, Codes, Floats, Ints, concat_ranges, window_sums
from shared.engine.chain import Chain, Fixes
from shared.engine.geometry import EARTH_RADIUS_KM
from shared.engine.params import EngineParams
from shared.engine.points import US_PER_S, Points

_US_PER_H = 3600 * US_PER_S


def find_duplicates(fixes: Fixes, idx: Ints) -> Bools:
    """Among the fixes at `idx`, those repeating an earlier one's device, time and place."""
    device, t = fixes.device[idx], fixes.t[idx]
    same_time = np.zeros(len(idx), dtype=bool)
    same_time[1:] = (device[1:] == device[:-1]) & (t[1:] == t[:-1])
    dup = np.zeros(len(idx), dtype=bool)
    if not same_time.any():
        return dup
    # Only fixes sharing a timestamp can repeat each other: order just those by place.
    tied = same_time.copy()
    tied[:-1] |= same_time[1:]
    members = np.flatnonzero(tied)
    pos = idx[members]
    lat, lon = fixes.points.lat[pos], fixes.points.lon[pos]
    order = np.lexsort((members, lon, lat, t[members], device[members]))
    key = (device[members][order], t[members][order], lat[order], lon[order])
    repeat = np.ones(len(order) - 1, dtype=bool)
    for column in key:
        repeat &= column[1:] == column[:-1]
    dup[members[order[1:][repeat]]] = True
    return dup


def find_jumps(fixes: Fixes, chain: Chain, max_speed_kmh: float) -> Bools:
    """Fixes reached and left faster than the limit (the first and last fix of a device are
    judged against their next-but-one neighbour instead of the one they lack)."""
    n = len(chain.idx)
    limit = max_speed_kmh / _US_PER_H  # km per µs
    fast_in = chain.linked & (chain.step_km > limit * chain.step_us)
    fast_out = np.zeros(n, dtype=bool)
    fast_out[:-1] = fast_in[1:]
    first = np.flatnonzero(~chain.linked)
    last = np.append(first[1:], n) - 1
    for end, step, fast in ((first, 2, fast_in), (last, -2, fast_out)):
        other = end + step
        exists = (other >= 0) & (other < n)
        i, j = chain.idx[end[exists]], chain.idx[other[exists]]
        same = fixes.device[i] == fixes.device[j]
        i, j = i[same], j[same]
        fast[end[exists][same]] = fixes.distance(i, j) > limit * np.abs(fixes.t[i] - fixes.t[j])
    return fast_in & fast_out


def find_still(
    fixes: Fixes, chain: Chain, params: EngineParams, held: Codes | None = None
) -> Bools:
    """Fixes within the jitter radius of where their device was over its previous fixes,
    while that place has stayed within the radius of where it was at the last used fix.

    "Where it was" is the centroid of the device's `jitter_fixes` fixes before this one:
    averaging makes it steady, so a resting device's noise rarely escapes the radius,
    while a walk leaves it within a few fixes. Motion that is slow for the rate of fixes
    (a walk logged every second) stays within the radius of a centroid that trails it,
    but the centroid moves with it: once it has moved the radius from the centroid of the
    last used fix, the fix is used (see `drifted`). A device's first fix is never jitter.

    `held` (per fix of `chain`, or None) fixes the answer where it is not 0: HELD_STILL
    (inside a stay) is still and HELD_USED (a stay's first and last fix) used, whatever
    the centroids say; the fixes after them are judged from there.
    """
    n = len(chain.idx)
    still = np.zeros(n, dtype=bool)
    if n == 0 or params.jitter_radius_m == 0:
        return still
    k, radius = params.jitter_fixes, params.jitter_radius_m
    unit_m = EARTH_RADIUS_KM * 1000.0
    accuracy, device_start = fixes.points.accuracy, 0
    anchor = np.zeros(3)  # the centroid at the last used fix, carried from slice to slice
    # Slice by slice, each with the predecessors its first fixes look back to, so that the
    # sums and temporaries stay in the CPU's cache.
    for a in range(0, n, arrays.CHUNK):
        b = min(a + arrays.CHUNK, n)
        s = max(a - k, device_start)  # the slice's earliest predecessor
        # Windows cut short by their device's first fix (the k fixes from it on): their own
        # sums; every fix before `lead` has one.
        begins = np.append(device_start, np.flatnonzero(~chain.linked[a:b]) + a)
        ends = np.minimum(np.append(begins[1:], b), begins + k)
        short = concat_ranges(np.maximum(begins, a), ends)
        first = np.repeat(begins, np.maximum(ends - np.maximum(begins, a), 0))
        count = short - first  # predecessors in each short window
        window = np.empty(2 * len(short), dtype=np.int64)
        window[0::2], window[1::2] = first - s, short - s
        short -= a
        device_start = int(begins[-1])
        lead = min(s + k - a, b - a)
        idx = chain.idx[s:b]
        sq = np.zeros(b - a)
        centroid = np.empty((3, b - a))
        for axis, column in enumerate(fixes.xyz):
            c = column[idx]
            full = window_sums(c, k, out=centroid[axis, lead:])
            full /= k
            if len(short):
                # (a device's first fix, with no predecessor, gets its own place)
                centroid[axis, short] = np.add.reduceat(c, window)[0::2] / np.maximum(count, 1)
            here = c[a - s :]
            here -= centroid[axis]
            here *= here
            sq += here
        here_still = np.less(sq, (radius / unit_m) ** 2, out=still[a:b])
        # A fix claiming a worse accuracy than the radius must move by its accuracy (rare).
        claimed = accuracy[idx[a - s :]]
        worse = np.flatnonzero(claimed > radius)
        here_still[worse] = sq[worse] < np.square(claimed[worse] / unit_m)
        here_still[short[count == 0]] = False
        fixed = None
        if held is not None:
            fixed = held[a:b]
            here_still[fixed == HELD_STILL] = True
            here_still[fixed == HELD_USED] = False
        anchor = drifted(centroid, here_still, anchor, (radius / unit_m) ** 2, fixed)
    return still


def drifted(
    centroid: Floats, still: Bools, anchor: Floats, limit: float, fixed: Codes | None = None
) -> Floats:
    """Clears `still` where a fix's centroid (column of `centroid`) lies at a squared chord
    of `limit` or more from the anchor: the centroid at the device's last used fix before
    it, or `anchor` for the fixes before the slice's first used one (never where `fixed`
    holds HELD_STILL). Returns the anchor after the slice.

    Where nothing drifts (the usual case) that is one vectorised pass. Each fix it frees
    becomes the anchor of the fixes after it, so drifting runs are resolved fix by fix,
    each search vectorised over blocks that double in size: Python steps only once per
    radius travelled.
    """
    m = len(still)
    used = np.flatnonzero(~still)
    head = int(used[0]) if len(used) else m  # fixes before the slice's first used one
    runs = np.diff(np.append(used, m))
    drift = np.zeros(m)
    ref = np.empty(m)
    for axis, column in enumerate(centroid):
        # Each run's anchor repeated along it: several times cheaper than a gather.
        ref[:head] = anchor[axis]
        ref[head:] = np.repeat(column[used], runs)
        np.subtract(column, ref, out=ref)
        ref *= ref
        drift += ref
    drifting = still & (drift >= limit)
    if fixed is not None:
        drifting &= fixed != HELD_STILL
    far = np.flatnonzero(drifting)
    i = 0
    while i < len(far):
        at = int(far[i])
        following = np.searchsorted(used, at)
        end = int(used[following]) if following < len(used) else m
        # Every fix between `at` and `end` is still; their anchor is now `at`'s centroid.
        while at >= 0:
            still[at] = False
            at = first_far(centroid, at, end, limit)
        i = int(np.searchsorted(far, end))
    moved = np.flatnonzero(~still)
    return centroid[:, moved[-1]].copy() if len(moved) else anchor


def first_far(centroid: Floats, at: int, end: int, limit: float) -> int:
    """The first column in `at + 1 : end` at a squared chord of `limit` or more from
    column `at`, or -1."""
    start, size = at + 1, 64
    while start < end:
        stop = min(start + size, end)
        step = centroid[:, start:stop] - centroid[:, at, None]
        step *= step
        hit = np.flatnonzero(step.sum(axis=0) >= limit)
        if len(hit):
            return start + int(hit[0])
        start, size = stop, 2 * size
    return -1


HELD_STILL, HELD_USED = 1, 2
"""`find_still`'s fixed answers: still, or used."""


def check_sorted(points: Points) -> None:
    device, t = points.device, points.timestamp
    for a in range(0, len(points) - 1, arrays.CHUNK):  # slices that stay in the CPU's cache
        b = min(a + arrays.CHUNK, len(points) - 1)
        step = device[a + 1 : b + 1] - device[a:b]
        if (step < 0).any() or ((t[a + 1 : b + 1] < t[a:b]) & (step == 0)).any():
            raise ValueError("points must be sorted by device, then timestamp")
