"""The chain of fixes that survive a filter: each fix with its step (km, µs) from the
previous fix of its device, rebuilt cheaply when a filter drops fixes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.engine.arrays import Bools, Floats, Ints
from shared.engine.geometry import fix_geometry, vector_distance_km
from shared.engine.params import EngineParams
from shared.engine.points import Points


@dataclass(frozen=True, eq=False)
class Chain:
    """Fixes at positions `idx` of the context arrays, with the step from each one's predecessor
    of the same device (`linked` False and step 0 for a device's first fix)."""

    idx: Ints
    linked: Bools
    step_km: Floats
    step_us: Ints


class Fixes:
    """The context fixes as arrays, and chains of subsets of them."""

    def __init__(self, points: Points, params: EngineParams, home_km: Floats) -> None:
        self.points = points
        self.device = points.device
        self.t = points.timestamp
        self.home_km = home_km
        self.located, self.xyz, self._step_km = fix_geometry(
            points.lat,
            points.lon,
            (params.home_latitude, params.home_longitude),
            null_island_invalid=params.null_island_invalid,
            home_km=home_km,
        )

    def every(self) -> Chain:
        """Every fix, each with its step from the one before it (of the same device)."""
        device, t, step_km = self.device, self.t, self._step_km
        linked = np.zeros(len(t), dtype=bool)
        np.equal(device[1:], device[:-1], out=linked[1:])
        step_us = np.zeros(len(t), dtype=np.int64)
        np.subtract(t[1:], t[:-1], out=step_us[1:])
        first = ~linked
        step_km[first] = 0.0
        step_us[first] = 0
        return Chain(idx=np.arange(len(t)), linked=linked, step_km=step_km, step_us=step_us)

    def subchain(self, parent: Chain, keep: Bools) -> Chain:
        """The fixes of `parent` where `keep` holds. Steps are reused from the parent and
        measured anew only where a dropped fix separates a fix from its new predecessor."""
        if keep.all():
            return parent
        pos = np.flatnonzero(keep)
        idx = parent.idx[pos]
        linked = parent.linked[pos]
        step_km, step_us = parent.step_km[pos], parent.step_us[pos]
        # A fix keeps its predecessor, so its step, unless dropped fixes lay between them:
        # then its predecessor is the previous kept fix, if that is of the same device.
        gap = np.flatnonzero(np.diff(pos) != 1) + 1
        now, before = idx[gap], idx[gap - 1]
        joined = self.device[now] == self.device[before]
        linked[gap] = joined
        step_km[gap] = np.where(joined, self.distance(now, before), 0.0)
        step_us[gap] = np.where(joined, self.t[now] - self.t[before], 0)
        if len(pos):  # the first fix kept has no predecessor
            linked[0], step_km[0], step_us[0] = False, 0.0, 0
        return Chain(idx=idx, linked=linked, step_km=step_km, step_us=step_us)

    def distance(self, i: Ints, j: Ints) -> Floats:
        return vector_distance_km(tuple(c[i] for c in self.xyz), tuple(c[j] for c in self.xyz))
