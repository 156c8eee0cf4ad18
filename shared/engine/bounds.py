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

from shared.engine.arrays import Bools, Codes, Floats
from shared.engine.chain import Chain, Fixes
from shared.engine.geometry import vector_distance_km
from shared.engine.points import US_PER_S
from shared.engine.stays import Stays

ASSUMED_ACCURACY_M = 20.0
"""A fix without a reported accuracy is taken to be this accurate (a typical phone fix)."""
NOISE_FACTOR = 1.75
"""The low bound removes this many times a step's expected excess from noise."""
DETOUR_PER_MINUTE = 0.004
"""The high bound adds this share of a step per minute between its fixes..."""
MIN_DETOUR = 0.01
"""...and at least this share (the roads between even close fixes are not straight)..."""
MAX_DETOUR = 0.3
"""...and at most this (a road is rarely a third longer than the straight line)."""
OFF_LINE_LIMIT = 2.5
"""A fix this many times its accuracy off the line between its neighbours is wild (a heavy
tail of the noise, a reflection)..."""
OFF_LINE_SHARE = 2.0
"""...and its error variance is taken as its squared distance off that line over this."""
CENTRE_ERRORS = 2.5
"""A stay's centre may be this many times its radius over the square root of its fixes
from where the device rested (a slow indoor drift does not average out over a short stop)."""
OFF_LINE_EXPECTED = 0.67
"""With Gaussian noise reporting a 68 % radius, the mean squared distance off the line
between the neighbours, over the accuracy squared, for a fix moving straight on."""


def step_bounds(
    fixes: Fixes,
    chain: Chain,
    stay: Codes,
    centred: Bools | None = None,
    centre_error_km: Floats | None = None,
) -> tuple[Floats, Floats]:
    """The least and the most path each step of `chain` may stand for (km); `stay` is each
    context row's stay id (0 for none): a step within one stay may be noise alone.
    `centred`: the fixes of `chain` where the path runs through the centre of a stay or a
    pause instead (see `stays.through_centres`), whose error is small beside a fix's (None:
    nowhere). `centre_error_km`: how far each step's end or start (a stay's centre) may be
    from where the device rested (none where None)."""
    accuracy = fixes.points.accuracy[chain.idx].astype(np.float64)
    accuracy[accuracy < 0] = ASSUMED_ACCURACY_M
    accuracy /= 1000.0
    variance = np.square(accuracy)
    # A fix far off the line between its neighbours more than its accuracy says (a heavy
    # tail, a reflection) lengthens the path by what it is off: its error is taken as that.
    off = off_line_km(fixes, chain)
    wild = off > OFF_LINE_LIMIT * accuracy
    if centred is not None:
        # A centre is no fix: it is neither off a line nor the line's end for its neighbours.
        near = centred.copy()
        near[1:] |= centred[:-1]
        near[:-1] |= centred[1:]
        wild &= ~near
        variance[centred] = 0.0
    variance[wild] = np.square(off[wild]) / OFF_LINE_SHARE
    # Where the fixes lie off the line more than their accuracy says on the whole (noise
    # heavier than reported), every variance of the device grows by as much.
    inner = (off > 0) & ~wild  # (wild fixes have their own variance)
    if centred is not None:
        inner &= ~near
    device = fixes.device[chain.idx]
    seen = np.bincount(
        device[inner], np.square(off[inner]), minlength=int(device.max(initial=0)) + 1
    )
    said = np.bincount(device[inner], variance[inner], minlength=len(seen))
    scale = np.divide(seen, OFF_LINE_EXPECTED * said, out=np.ones(len(seen)), where=said > 0)
    variance *= np.maximum(scale, 1.0)[device]
    variance[1:] += variance[:-1]
    d = chain.step_km
    excess = np.divide(variance, d, out=np.zeros_like(d), where=d > 0)
    low = np.maximum(d - NOISE_FACTOR * excess, 0.0)
    at = stay[chain.idx]
    resting = np.zeros(len(d), dtype=bool)
    resting[1:] = chain.linked[1:] & (at[1:] > 0) & (at[1:] == at[:-1])
    low[resting] = 0.0
    minutes = chain.step_us / (60 * US_PER_S)
    detour = np.clip(minutes * DETOUR_PER_MINUTE, MIN_DETOUR, MAX_DETOUR)
    high = d * (1.0 + detour)
    if centre_error_km is not None:
        # Where a move begins or ends at a stay's centre, the centre's own error stays in
        # the path (along the way, through a pause, it is taken back by the next step).
        low = np.maximum(low - centre_error_km, 0.0)
        high += centre_error_km
    if centred is None:
        # Along the way a fix's error is taken back by the next step, except where a move
        # begins or ends: there the error of the stay's edge fix stays in the path.
        edge = np.zeros(len(d), dtype=bool)
        edge[1:] = chain.linked[1:] & (at[1:] != at[:-1])
        margin = np.sqrt(variance[edge])
        low[edge] = np.maximum(low[edge] - margin, 0.0)
        high[edge] += margin
    return low, high


def off_line_km(fixes: Fixes, chain: Chain) -> Floats:
    """How far each fix of `chain` lies from the straight line between the fixes before and
    after it (0 for a device's first and last fix): noise across the way lengthens the
    path, along it (or a change of speed) does not."""
    n = len(chain.idx)
    off = np.zeros(n)
    inner = np.flatnonzero(chain.linked[1:-1] & chain.linked[2:]) + 1
    if not len(inner):
        return off
    xyz = fixes.xyz
    a, p, b = (xyz[:, chain.idx[inner + k]] for k in (-1, 0, 1))
    ab = b - a
    length = np.einsum("ij,ij->j", ab, ab)
    along = np.divide(
        np.einsum("ij,ij->j", p - a, ab), length, out=np.zeros(len(inner)), where=length > 0
    )
    np.clip(along, 0.0, 1.0, out=along)
    closest = a + ab * along
    off[inner] = vector_distance_km(tuple(closest), tuple(p))
    return off


def centre_errors(chain: Chain, stays: Stays) -> Floats:
    """Per step of `chain` (which holds each stay's first and last fix), how far the stay
    centre it ends at (arriving) or starts from (leaving) may be from where the device
    rested (km): CENTRE_ERRORS times the stay's radius over the root of its fixes."""
    error = np.zeros(len(chain.idx))
    if not len(stays.first):
        return error
    km = CENTRE_ERRORS * stays.radius_m / np.sqrt(np.maximum(stays.fixes, 1)) / 1000.0
    first = np.searchsorted(chain.idx, stays.first)
    arrive = chain.linked[first]
    error[first[arrive]] += km[arrive]
    after = np.searchsorted(chain.idx, stays.last) + 1
    leave = after < len(chain.idx)
    leave[leave] = chain.linked[after[leave]]
    error[after[leave]] += km[leave]
    return error
