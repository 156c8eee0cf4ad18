"""Array types and vectorised helpers on runs of rows (sums over runs, windows of runs,
binary searches per group): the building blocks the filters, days and trips share.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]
Codes = npt.NDArray[np.integer[Any]]
"""Small non-negative integers (device codes, groups) of whatever width they come in."""


# The hot helpers below work in place: at millions of fixes, allocating a fresh array for
# every step costs as much as the arithmetic (page faults), and peak memory is a target.
CHUNK = 1 << 15
"""Fixes per slice of the geometry pass: its temporaries then stay in the CPU's cache, where
numpy's arithmetic runs several times faster than on arrays streamed from memory."""


def window_sums(values: Floats, width: int, out: Floats) -> Floats:
    """out[j] = values[j] + ... + values[j + width - 1] for each j of `out`, from sums of
    runs of 1, 2, 4, ... values: a few vectorised additions, where a running sum is serial
    (numpy's cumsum costs ten additions per value) and loses precision as it grows."""
    m = len(out)
    out.fill(0.0)
    power, size, done = values, 1, 0
    while m:
        if width & size:
            out += power[done : done + m]
            done += size
        if 2 * size > width:
            break
        power = power[:-size] + power[size:]
        size *= 2
    return out


def first_at_or_after(t: Ints, starts: Ints, bounds: Ints) -> Ints:
    """For each group of rows `starts[g]:starts[g + 1]` (each sorted by time), the first row
    whose time is at or after each of `bounds`: shape (groups, len(bounds)).

    One binary search per (group, bound), all run side by side: a few small passes instead
    of a day index per fix, since days are runs of consecutive rows of a device."""
    lo = np.repeat(starts[:-1], len(bounds)).reshape(-1, len(bounds))
    hi = np.repeat(starts[1:], len(bounds)).reshape(-1, len(bounds))
    longest = int(np.diff(starts).max(initial=0))
    for _ in range(longest.bit_length()):
        mid = (lo + hi) >> 1
        before = (lo < hi) & (t[np.minimum(mid, len(t) - 1)] < bounds)
        hi = np.where(before, hi, mid)  # where lo == hi, mid is hi too
        lo = np.where(before, mid + 1, lo)
    return lo


def concat_ranges(begin: Ints, end: Ints) -> Ints:
    """The positions of every range [begin[k], end[k]), one after the other."""
    size = np.maximum(end - begin, 0)
    offset = np.repeat(begin - (np.cumsum(size) - size), size)
    offset += np.arange(len(offset))
    return offset


def run_sums(values: Floats, starts: Ints) -> Floats:
    """Sums of `values` (last axis) over the runs that start at the sorted positions
    `starts` and end where the next one starts (the last at the end): 0 for empty runs.

    The runs' own pairwise sums, not differences of a running sum."""
    m = values.shape[-1]
    inside = int(np.searchsorted(starts, m))  # runs starting at m are empty
    sums = np.zeros((*values.shape[:-1], len(starts)))
    if inside:
        at = starts[:inside]
        sums[..., :inside] = np.add.reduceat(values, at, axis=-1)
        sums[..., :inside][..., np.append(at[:-1] == at[1:], False)] = 0.0
    return sums


def device_starts(device: Codes, n_devices: int) -> Ints:
    """Where each device's rows start in rows sorted by device, and (last) the end."""
    # Keys of the column's own type: other keys would make searchsorted convert the column.
    return np.searchsorted(device, np.arange(n_devices + 1, dtype=device.dtype))
