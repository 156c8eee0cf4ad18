"""Sharing steps among local days: each step's path or time is split between the days it
overlaps, so the days of a window add up to the window exactly.
"""

from __future__ import annotations

import numpy as np

from shared.engine.arrays import Floats, Ints, run_sums
from shared.engine.chain import Chain


def spread_over_days(
    chain: Chain,
    amounts: Floats,
    at_bound: Ints,
    *,
    t: Ints,
    bounds: Ints,
    since: Ints | None = None,
) -> tuple[Floats, Ints, Floats]:
    """Share each step of `chain` and its `amounts` (rows of values, one per step) among the
    days it overlaps, in proportion to the overlap in time.

    A step runs from the fix at context position `since` (by default the chain's previous
    fix) to the chain's fix. `at_bound[g]` holds the first context row of the block's g-th
    device at or after each day bound. Returns the sums per (row, device, day), the chain
    positions of the steps that cross a bound and their amounts inside the window.
    """
    n_days = len(bounds) - 1
    rows, m = amounts.shape
    groups = len(at_bound)
    # Each device's fixes of one day are a run of the chain, so are the steps ending there.
    edges = np.searchsorted(chain.idx, at_bound).ravel()
    totals = run_sums(amounts, edges).reshape(rows, groups, n_days + 1)[:, :, :-1].copy()
    # Only the first step into a day can cross its bound (and steps of a device's first fix
    # cannot: it starts where it ends).
    candidate = np.unique(edges[edges < m])
    candidate = candidate[chain.linked[candidate]]
    origin = chain.idx[candidate - 1] if since is None else since[candidate]
    start, end = t[origin], t[chain.idx[candidate]]
    day0 = np.searchsorted(bounds, start, side="right") - 1
    day1 = np.searchsorted(bounds, end, side="right") - 1
    cross = day0 != day1
    crossing, start, end, day0, day1 = (v[cross] for v in (candidate, start, end, day0, day1))
    amount = amounts[:, crossing]
    # The device whose window starts last at or before the fix: a crossing step ends inside
    # or after its device's window, and before the next device's rows.
    group = np.searchsorted(at_bound[:, 0], chain.idx[crossing], side="right") - 1
    # The runs counted crossing steps whole in the day they end: take them out again
    # (exact to a rounding of that day's sum), then add their shares of each day.
    ends_inside = day1 < n_days
    cell = group[ends_inside] * n_days + day1[ends_inside]
    # One row per (crossing step, window day it overlaps): a step may span many days.
    first_day = np.maximum(day0, 0)
    spans = np.maximum(np.minimum(day1, n_days - 1) - first_day + 1, 0)
    step = np.repeat(np.arange(len(crossing)), spans)
    d = np.arange(len(step)) - np.repeat(np.cumsum(spans) - spans, spans)
    d += first_day[step]
    overlap = np.maximum(
        np.minimum(end[step], bounds[d + 1]) - np.maximum(start[step], bounds[d]), 0
    )
    share = overlap / (end - start)[step]
    inside = np.empty((rows, len(crossing)))
    for r in range(rows):
        flat = totals[r].reshape(-1)
        flat -= np.bincount(cell, weights=amount[r][ends_inside], minlength=len(flat))
        part = share * amount[r][step]
        flat += np.bincount(group[step] * n_days + d, weights=part, minlength=len(flat))
        inside[r] = np.bincount(step, weights=part, minlength=len(crossing))
    return totals, crossing, inside
