"""Benchmark of the distance engine and the CSV writers (`make bench-engine`).

For 1M and 10M generated fixes it prints: generation time, engine throughput (fixes/s,
best and median of a few runs, one thread), the engine's peak extra memory per fix (numpy
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

from shared import export
from shared.engine import EngineParams, analyze, day_window
from shared.tracks import TrackSpec, generate

FIXES_PER_DAY = 2880  # one every 30 s


def timed(action: Callable[[], object], runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - start)
    return seconds


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
