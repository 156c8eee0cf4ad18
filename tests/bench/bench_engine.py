"""Benchmark of the distance engine and the CSV writers (`make bench-engine`).

For 1M and 10M generated fixes it prints: generation time, engine throughput (fixes/s,
best and median of a few runs, one thread) beside a plain numpy pass over the same fixes
(textbook haversine from home and per-device path, nothing else: the machine's pace at
the moment, as shared machines vary), the engine's peak extra memory per fix (numpy
allocations traced by tracemalloc, beyond the input), and the throughput of the per-fix
CSV writer and of the `public.locations` export. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from shared import export
from shared.dev.tracks import TrackSpec, generate
from shared.engine import EngineParams, analyze, day_window
from shared.engine.points import Points

FIXES_PER_DAY = 2880  # one every 30 s


def timed(action: Callable[[], object], runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - start)
    return seconds


def _haversine_km(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> Any:
    p1, p2 = np.radians(lat1), np.radians(lat2)
    a = (
        np.sin((p2 - p1) / 2) ** 2
        + np.cos(p1) * np.cos(p2) * np.sin((np.radians(lon2) - np.radians(lon1)) / 2) ** 2
    )
    return 2 * 6371.0088 * np.arcsin(np.sqrt(a))


def plain_pass(points: Points, home_lat: float, home_lon: float) -> tuple[float, Any]:
    """The reference: farthest distance from home and path length per device, nothing else."""
    home = _haversine_km(points.lat, points.lon, home_lat, home_lon)
    steps = _haversine_km(points.lat[:-1], points.lon[:-1], points.lat[1:], points.lon[1:])
    same = points.device[1:] == points.device[:-1]
    path = np.bincount(points.device[1:], weights=np.where(same, steps, 0.0))
    return float(home.max()), path


def bench(size: int, runs: int) -> None:
    devices = 1 if size <= 1_000_000 else 10
    days = -(-size // (devices * FIXES_PER_DAY))
    spec = TrackSpec(days=days, devices=devices, seed=1)
    start = time.perf_counter()
    points = generate(spec).points
    generated = time.perf_counter() - start
    n = len(points)
    window = day_window(spec.start, spec.start + dt.timedelta(days=days - 1), spec.timezone)
    params = EngineParams(home_latitude=spec.home_latitude, home_longitude=spec.home_longitude)

    analyze(points, window, params)  # warm up: imports, first-touch of memory
    engine = timed(lambda: analyze(points, window, params), runs)
    plain = timed(lambda: plain_pass(points, spec.home_latitude, spec.home_longitude), runs)

    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    analysis = analyze(points, window, params)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()

    with open(os.devnull, "wb") as sink:
        per_fix_csv = timed(lambda: export.write_csv(analysis, sink), runs)
        locations_csv = timed(lambda: export.write_locations_csv(points, sink), runs)
    csv_bytes = len(export.csv_bytes(analysis)) if n <= 1_000_000 else None

    print(f"{n:,} fixes ({devices} devices x {days} days), generated in {generated:.1f} s")
    print(
        f"  engine       {n / min(engine) / 1e6:6.2f} M fixes/s best, "
        f"{n / statistics.median(engine) / 1e6:6.2f} M median ({runs} runs)"
    )
    print(
        f"  plain pass   {n / min(plain) / 1e6:6.2f} M fixes/s best (haversine from home + path"
        f" per device only); the engine runs at {min(plain) / min(engine):.0%} of it"
    )
    print(f"  peak memory  {peak / n:6.0f} bytes/fix beyond the input ({peak / 2**20:,.0f} MiB)")
    print(
        f"  fixes CSV    {n / min(per_fix_csv) / 1e6:6.2f} M rows/s best, "
        f"{n / statistics.median(per_fix_csv) / 1e6:6.2f} M median"
        + (f", {csv_bytes / n:.0f} bytes/row" if csv_bytes else "")
    )
    print(
        f"  seed CSV     {n / min(locations_csv) / 1e6:6.2f} M rows/s best, "
        f"{n / statistics.median(locations_csv) / 1e6:6.2f} M median"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for size in args.sizes:
        bench(size, args.runs)


if __name__ == "__main__":
    main()
