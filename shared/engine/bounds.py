"""Bounds on the path: how far the true path can lie from the one measured through noisy,
sampled fixes (`path_km_low`, `path_km_high`).

Two effects, per step between used fixes:

- Noise lengthens a measured step: a fix's error across the direction of travel adds
  about sigma^2 / d to a step of length d (sigma^2 the two fixes' error variances summed;
  along the direction of travel errors cancel from step to step). The low bound takes
  twice that expected excess off each step (never below zero).
- A step between two fixes of one stay may be noise alone: the low bound counts none of it.
- Where a move begins or ends, the edge fix's error is not taken back by a later step: both
  bounds widen by it there.
- Sampling shortens it: between two fixes the device followed a road, not the chord. The
  high bound adds a share of each step that grows with the time between its fixes, up to
  `MAX_DETOUR`.
"""

from __future__ import annotations

import numpy as np

from shared.engine.arrays import Codes, Floats
from shared.engine.chain import Chain, Fixes
from shared.engine.points import US_PER_S

ASSUMED_ACCURACY_M = 20.0
"""A fix without a reported accuracy is taken to be this accurate (a typical phone fix)."""
NOISE_FACTOR = 2.0
"""The low bound removes this many times a step's expected excess from noise."""
DETOUR_PER_MINUTE = 0.004
"""The high bound adds this share of a step per minute between its fixes..."""
MIN_DETOUR = 0.01
"""...and at least this share (the roads between even close fixes are not straight)..."""
MAX_DETOUR = 0.3
"""...and at most this (a road is rarely a third longer than the straight line)."""


def step_bounds(fixes: Fixes, chain: Chain, stay: Codes) -> tuple[Floats, Floats]:
    """The least and the most path each step of `chain` may stand for (km); `stay` is each
    context row's stay id (0 for none): a step within one stay may be noise alone."""
    accuracy = fixes.points.accuracy[chain.idx].astype(np.float64)
    accuracy[accuracy < 0] = ASSUMED_ACCURACY_M
    accuracy /= 1000.0
    variance = np.square(accuracy)
    variance[1:] += variance[:-1]
    d = chain.step_km
    excess = np.divide(variance, d, out=np.zeros_like(d), where=d > 0)
    low = np.maximum(d - NOISE_FACTOR * excess, 0.0)
    at = stay[chain.idx]
    resting = np.zeros(len(d), dtype=bool)
    resting[1:] = chain.linked[1:] & (at[1:] > 0) & (at[1:] == at[:-1])
    low[resting] = 0.0
    # Along the way a fix's error is taken back by the next step, except where a move
    # begins or ends: there the error of the stay's edge fix stays in the path, either way.
    edge = np.zeros(len(d), dtype=bool)
    edge[1:] = chain.linked[1:] & (at[1:] != at[:-1])
    margin = np.sqrt(variance[edge])
    minutes = chain.step_us / (60 * US_PER_S)
    detour = np.clip(minutes * DETOUR_PER_MINUTE, MIN_DETOUR, MAX_DETOUR)
    high = d * (1.0 + detour)
    low[edge] = np.maximum(low[edge] - margin, 0.0)
    high[edge] += margin
    return low, high
