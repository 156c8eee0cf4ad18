"""Exact statistics at scale: the median by sampled bracketing, and the rounding of reported
figures.
"""

from __future__ import annotations

import numpy as np

from shared.engine import arrays
from shared.engine.arrays import Floats

MEDIAN_SAMPLE = 4096
"""Values sampled to bracket the median of large arrays (see `exact_median`)."""


def exact_median(values: Floats) -> float:
    """The median, exactly, reordering `values` in place.

    For a large array, a sample's quantiles give a narrow range that holds the middle with
    near certainty; counting the values below it and partitioning only those inside costs a
    few comparisons per value instead of a partition of them all. Should the range miss
    the middle, the whole array is partitioned.
    """
    n = len(values)
    middle = n // 2
    if n >= 16 * MEDIAN_SAMPLE:
        sample = np.sort(values[:: n // MEDIAN_SAMPLE])
        # +-128 sample ranks is about 4 standard deviations of a random sample's quantile.
        at = middle * len(sample) // n
        lo, hi = sample[max(at - 128, 0)], sample[min(at + 128, len(sample) - 1)]
        # One pass in cache-sized slices: count the values below the range, keep those in it.
        below, parts = 0, []
        for a in range(0, n, arrays.CHUNK):
            part = values[a : a + arrays.CHUNK]
            below += int(np.count_nonzero(part < lo))
            parts.append(part[(part >= lo) & (part <= hi)])
        inside = np.concatenate(parts)
        rank = middle - below
        if 1 <= rank < len(inside):
            return partition_median(inside, rank, n % 2 == 0)
    return partition_median(values, middle, n % 2 == 0)


def partition_median(values: Floats, middle: int, even: bool) -> float:
    """The value of rank `middle`, or for an `even` count its mean with the one of rank
    `middle - 1`: one partition, as that is the largest value left of `middle`."""
    values.partition(middle)
    median = float(values[middle])
    if even:
        median = (median + float(values[:middle].max())) / 2
    return median


def round_km(value: float) -> float:
    return round(float(value), 6)


def mean_km(total: float, count: int) -> float:
    return round_km(total / count) if count else 0.0


def round_s(value: float) -> float:
    return round(float(value), 3)
