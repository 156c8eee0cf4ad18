"""`otel-worker seed`: generated tracks as a `public.locations` CSV export, or straight into
the table (development data: the demo, the benchmarks and a local `otel-worker dev`)."""

from __future__ import annotations

import argparse
import sys

from shared import config, export
from shared.dev import tracks


def run_seed(args: argparse.Namespace) -> int:
    """Generate tracks and write them to `public.locations` (or, with --csv, as a CSV export
    of it); 1 when the table already holds rows and --force was not given. A database that
    does not answer or refuses raises `DatabaseUnavailable` for the command line to report."""
    spec = tracks.TrackSpec(
        seed=args.seed,
        days=args.days,
        devices=args.devices,
        interval_s=args.interval_s,
        **({"start": args.start} if args.start else {}),
    )
    track = tracks.generate(spec)
    if args.csv is not None:
        rows = export.write_locations_csv(track.points, args.csv)
        sys.stderr.write(f"wrote {rows} rows to {args.csv}\n")
        return 0
    from shared import db, locations

    settings = config.load(config.DatabaseSettings)
    total = len(track.points)

    def progress(done: int, _total: int) -> None:
        bar = "#" * (30 * done // max(total, 1))
        sys.stderr.write(f"\rseeding [{bar:<30}] {done:,}/{total:,} rows")
        sys.stderr.flush()

    try:
        with db.connect(settings) as conn:
            rows = locations.write_points(conn, track.points, force=args.force, progress=progress)
    except locations.ExistingRowsError as exc:
        sys.stderr.write(f"otel-worker: {exc}; use --force to replace them\n")
        return 1
    sys.stderr.write("\n")
    sys.stdout.write(
        f"wrote {rows:,} rows for {spec.devices} device(s), {spec.days} day(s) from "
        f"{spec.start} to public.locations\n"
    )
    return 0
