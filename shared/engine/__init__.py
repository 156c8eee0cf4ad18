"""The distance engine: GPS fixes in, distance-from-home metrics out. Pure and vectorised.

`analyze(points, window, params)` runs every filter and metric over numpy arrays in one
call and returns an `Analysis`: the JSON-ready `Summary` plus per-fix arrays for the CSV.
It imports nothing but numpy, pydantic and the standard library (and nothing else of
`shared`), so it runs the same in the compute function, in `otel-worker analyze` and in the
benchmark.

This package's namespace is the engine's API. Its modules are internals named for what they
do (`geometry`, `filters`, `days`, `trips`, `statistics`, `summary`, `analysis`, ...); their
public names are the API between them and for the engine's own tests. `EngineParams` is
imported at once and needs no numpy, so settings can build it in a process that never
computes; the rest is imported on first use.

How the numbers are made (docs/FUNCTIONALITY.md says more):

- Distances are great-circle distances on a sphere of the mean Earth radius. They are
  computed as the chord between unit vectors, which is the haversine formula rearranged
  (hav(d/R) = (chord/2)^2): one set of trigonometric calls per fix instead of per pair.
- Filters run in a fixed order and the first one that applies names the fix's
  `dropped_by` rule: invalid coordinates, accuracy above the limit, exact duplicates,
  impossible jumps, stationary jitter. The first four are quality filters: such a fix is
  ignored everywhere. A jitter fix is a genuine but noisy observation of a device that has
  not moved: it adds no path, but it counts for the distance statistics, trips and time
  accounting, so a quiet night at home is time at home rather than a gap.
- Stays are periods of at least `stay_min_minutes` within `stay_radius_m` (plus the fixes'
  reported accuracy) of a median centre, found over the fixes the quality filters kept
  (`stays`); each is at home, at a named place or at an unnamed place (`timeline`), and
  each device's window is a timeline of stays, moves and unknown time that adds up to it.
  Stays and shorter pauses (traffic stops) hold a device at rest: the fixes inside them
  are jitter, the path runs through their centres, and the farthest point counts a stay
  at its centre.
- Fixes outside the window are context only (never counted): they let segments and time
  that cross the window's edges be split exactly at the edge, the same way segments that
  cross local midnight are split between days, so the days of a range add up to the range.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from shared.engine.params import EngineParams, NamedPlace

if TYPE_CHECKING:
    from shared.engine.analysis import analyze
    from shared.engine.geometry import EARTH_RADIUS_KM, destination, haversine_km
    from shared.engine.points import Points
    from shared.engine.results import (
        DROP_RULES,
        SCHEMA_VERSION,
        Analysis,
        Completeness,
        DayMetrics,
        DroppedCounts,
        Metrics,
        Place,
        PlaceVisit,
        PointCounts,
        Stay,
        Summary,
        TimelineEntry,
        Trip,
        WindowInfo,
    )
    from shared.engine.window import Window, day_window, local_midnight_us, read_range, zone

__all__ = [
    "DROP_RULES",
    "EARTH_RADIUS_KM",
    "SCHEMA_VERSION",
    "Analysis",
    "Completeness",
    "DayMetrics",
    "DroppedCounts",
    "EngineParams",
    "Metrics",
    "NamedPlace",
    "Place",
    "PlaceVisit",
    "PointCounts",
    "Points",
    "Stay",
    "Summary",
    "TimelineEntry",
    "Trip",
    "Window",
    "WindowInfo",
    "analyze",
    "day_window",
    "destination",
    "haversine_km",
    "local_midnight_us",
    "read_range",
    "zone",
]

_LAZY = {
    "Points": "points",
    "Window": "window",
    "day_window": "window",
    "local_midnight_us": "window",
    "read_range": "window",
    "zone": "window",
    "Analysis": "results",
    "Completeness": "results",
    "DROP_RULES": "results",
    "DayMetrics": "results",
    "DroppedCounts": "results",
    "Metrics": "results",
    "Place": "results",
    "PlaceVisit": "results",
    "Stay": "results",
    "TimelineEntry": "results",
    "PointCounts": "results",
    "SCHEMA_VERSION": "results",
    "Summary": "results",
    "Trip": "results",
    "WindowInfo": "results",
    "EARTH_RADIUS_KM": "geometry",
    "destination": "geometry",
    "haversine_km": "geometry",
    "analyze": "analysis",
}
"""The numpy-backed part of the API: each name and the module it comes from."""


def __getattr__(name: str) -> object:
    """Import the module behind `name` on first use (numpy is imported with it)."""
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
