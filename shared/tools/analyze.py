"""`otel-worker analyze FILE`: the distance engine on a file.

It reads a `public.locations` CSV export, OwnTracks JSON, a Recorder `.rec` file, GPX,
GeoJSON or a Google Takeout (`sources`), prints a readable table or the summary JSON, and
can write the per-fix CSV, a GeoJSON map and the tracks as GPX.
Thresholds come from the environment (`AnalysisSettings`) unless an option overrides them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import shutil
import sys
import tempfile
from typing import TextIO

from pydantic import ValidationError

from shared import config, export
from shared.contracts import check_time_zone
from shared.engine import (
    Analysis,
    EngineParams,
    Metrics,
    Summary,
    Window,
    analyze,
    day_window,
    zone,
)
from shared.engine.assembly import DayPart, analyze_day_rows, assemble, device_rows
from shared.engine.points import Points
from shared.report import summed_over
from shared.tools.sources import read_file

_OPTIONS = {
    # EngineParams field -> the option that sets it, for error messages
    "exit_radius_km": "--exit-km",
    "enter_radius_km": "--enter-km",
    "max_accuracy_m": "--max-accuracy-m",
    "max_speed_kmh": "--max-speed-kmh",
    "max_gap_s": "--max-gap-min",
    "jitter_radius_m": "--jitter-m",
    "jitter_fixes": "--jitter-fixes",
    "stay_min_minutes": "--stay-min",
    "stay_radius_m": "--stay-radius-m",
}


def _named_by_option(exc: ValidationError) -> str:
    """A validation error of EngineParams, in the command line's words."""
    problems = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        for field, option in _OPTIONS.items():
            message = message.replace(field, option)
        field = str(error["loc"][0]) if error["loc"] else ""
        problems.append(f"{_OPTIONS.get(field, field)}: {message}" if field else message)
    return "; ".join(problems)


def engine_params(args: argparse.Namespace, settings: config.AnalysisSettings) -> EngineParams:
    """The settings, overridden by the options given on the command line; ValueError
    naming the option when they make invalid parameters."""
    params = settings.engine_params()
    changes: dict[str, object] = {}
    if args.home:
        changes["home_latitude"], changes["home_longitude"] = args.home
    for option, field in (("exit_km", "exit_radius_km"), ("enter_km", "enter_radius_km")):
        if getattr(args, option) is not None:
            changes[field] = getattr(args, option)
    for option, field in (("max_accuracy_m", "max_accuracy_m"), ("max_speed_kmh", "max_speed_kmh")):
        value = getattr(args, option)
        if value is not None:
            changes[field] = value or None
    if args.max_gap_min is not None:
        changes["max_gap_s"] = args.max_gap_min * 60
    if args.jitter_m is not None:
        changes["jitter_radius_m"] = args.jitter_m
    if args.jitter_fixes is not None:
        changes["jitter_fixes"] = args.jitter_fixes
    if args.keep_duplicates:
        changes["drop_duplicates"] = False
    if args.stay_min is not None:
        changes["stay_min_minutes"] = args.stay_min
    if args.stay_radius_m is not None:
        changes["stay_radius_m"] = args.stay_radius_m
    if args.places is not None:
        try:
            changes["places"] = config.load_places(args.places)
        except ValueError as exc:
            raise ValueError(f"--places: {exc}") from None
    try:
        return EngineParams.model_validate({**params.model_dump(), **changes})
    except ValidationError as exc:
        raise ValueError(_named_by_option(exc)) from None


def _window(args: argparse.Namespace, points: Points, timezone: str) -> Window:
    if args.date and (args.first or args.last):
        raise ValueError("give --date or --from/--to, not both")
    first, last = args.date or args.first, args.date or args.last
    if first is None or last is None:
        if not len(points):
            today = dt.datetime.now(zone(timezone)).date()
            first, last = first or last or today, last or first or today
        else:
            tz = zone(timezone)
            edges = [
                dt.datetime.fromtimestamp(int(t) / 1e6, tz).date()
                for t in (points.timestamp.min(), points.timestamp.max())
            ]
            first, last = first or edges[0], last or edges[1]
    return day_window(first, last, timezone)


def run_analyze(args: argparse.Namespace) -> int:
    """Read the file, analyse it, print and write what was asked; 2 for bad input."""
    try:
        return _analyze(args)
    except ValueError as exc:  # SourceError, bad options, invalid parameters
        sys.stderr.write(f"otel-worker analyze: {exc}\n")
        return 2


def _analyze(args: argparse.Namespace) -> int:
    settings = config.load(config.AnalysisSettings)
    timezone = settings.home_timezone
    if args.tz:
        try:
            timezone = check_time_zone(args.tz)
        except ValueError as exc:
            raise ValueError(f"--tz: {exc}") from None
    params = engine_params(args, settings)
    points = read_file(args.file)
    if args.device is not None:
        if args.device not in points.device_ids:
            raise ValueError(
                f"device {args.device!r} is not in {args.file} "
                f"(devices: {', '.join(points.device_ids) or 'none'})"
            )
        points = points.take(points.device == points.device_ids.index(args.device))
    say = sys.stderr.write  # notes go to stderr, so --json output stays clean for pipes
    assumed = _assumptions(args, settings)
    if assumed:
        say(f"otel-worker analyze: {assumed}\n")
    window = _window(args, points, timezone)
    if len(window.dates) > 1:
        return _analyze_days(args, points, window, params)
    analysis = analyze(points, window, params)
    for warning in _heavy_filters(analysis.summary):
        say(f"otel-worker analyze: {warning}\n")
    if args.csv:
        export.write_csv(analysis, args.csv)
        say(f"wrote {len(analysis.points)} rows to {args.csv}\n")
    _maps(args, analysis)
    _print(args, analysis.summary)
    return 0


def _analyze_days(
    args: argparse.Namespace, points: Points, window: Window, params: EngineParams
) -> int:
    """Several days: device-day by device-day through the assembly a range job uses, so
    the figures are the job's and memory follows the largest day. The CSV holds each
    device-day's rows (device, then day), as a range job's does."""
    say = sys.stderr.write
    parts: list[DayPart] = []
    rows = 0
    with contextlib.ExitStack() as stack:
        # Each device's rows wait in a file of their own, a day at a time, so the CSV comes
        # out device by device while only one day is ever held.
        spools = {
            device: stack.enter_context(tempfile.TemporaryFile()) for device in points.device_ids
        }
        for date in window.dates:
            day_parts, analysis = analyze_day_rows(points, date, window, params)
            parts += day_parts
            if not args.csv:
                continue
            for device, spool in spools.items():
                mine = device_rows(analysis, device)
                if mine is not None:
                    body = export.csv_bytes(mine)
                    spool.write(body[body.index(b"\n") + 1 :])
                    rows += len(mine.points)
        if args.csv:
            with open(args.csv, "wb") as out:
                out.write(export.header(export.CSV_COLUMNS))
                for spool in spools.values():
                    spool.seek(0)
                    shutil.copyfileobj(spool, out)
            say(f"wrote {rows} rows to {args.csv}\n")
    summary = assemble(parts, window, params)
    for warning in _heavy_filters(summary):
        say(f"otel-worker analyze: {warning}\n")
    if args.geojson or args.gpx:
        # The maps draw the fixes of the whole range at once.
        _maps(args, analyze(points, window, params))
    _print(args, summary)
    return 0


def _maps(args: argparse.Namespace, analysis: Analysis) -> None:
    say = sys.stderr.write
    if args.geojson:
        export.write_geojson(analysis, args.geojson)
        used = analysis.summary.points.used
        say(f"wrote a map of {used} fix{'es' * (used != 1)} to {args.geojson}\n")
    if args.gpx:
        from shared import gpx

        gpx.write_gpx(analysis, args.gpx)
        used = analysis.summary.points.used
        say(f"wrote a GPX track of {used} fix{'es' * (used != 1)} to {args.gpx}\n")


def _print(args: argparse.Namespace, summary: Summary) -> None:
    if args.json:
        sys.stdout.write(summary.model_dump_json(indent=2) + "\n")
    else:
        write_table(summary, sys.stdout)


def _assumptions(args: argparse.Namespace, settings: config.AnalysisSettings) -> str | None:
    """One line naming the home and time zone taken from built-in defaults (neither an
    option nor the environment gave them), and how to set them; None when none were."""
    given = settings.model_fields_set
    parts, options = [], []
    if args.home is None and not {"home_latitude", "home_longitude"} & given:
        parts.append(f"home {settings.home_latitude},{settings.home_longitude}")
        options.append("--home LAT,LON (or HOME_LATITUDE/HOME_LONGITUDE)")
    if args.tz is None and "home_timezone" not in given:
        parts.append(f"time zone {settings.home_timezone}")
        options.append("--tz ZONE (or HOME_TIMEZONE)")
    if not parts:
        return None
    return f"assumed the default {' and '.join(parts)}; set {' and '.join(options)}"


_RELAXED_BY = {
    "invalid": "no option keeps them (their coordinates are not numbers)",
    "accuracy": "raise --max-accuracy-m, or 0 keeps every fix",
    "duplicate": "--keep-duplicates keeps them",
    "jump": "raise --max-speed-kmh, or 0 turns the filter off",
    "jitter": "lower --jitter-m, or 0 turns the filter off",
}


def _heavy_filters(s: Summary) -> list[str]:
    """A line for each filter that dropped more than half of the fixes read."""
    read = s.points.read
    return [
        f"the {rule} filter dropped {count} of {read} fixes; {_RELAXED_BY[rule]}"
        for rule, count in s.points.dropped.model_dump().items()
        if count * 2 > read
    ]


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"


def _metrics_line(name: str, m: Metrics) -> str:
    return (
        f"  {name:<16} {m.points.read:>8} {m.points.used:>8} {m.path_km:>10.3f} "
        f"{m.raw_path_km:>10.3f} {m.max_distance_km:>9.3f} {_duration(m.time_at_home_s):>9} "
        f"{_duration(m.time_away_s):>9} {_duration(m.time_unknown_s):>9} {len(m.trips):>5}"
    )


def _places_lines(s: Summary) -> list[str]:
    """Time per place, the most first."""
    if not s.places:
        return []
    lines = [f"Places{summed_over(len(s.devices), ' (times ', ')')}"]
    for visit in s.places:
        visits = f"{visit.visits} visit" + ("s" if visit.visits != 1 else "")
        lines.append(
            f"  {visit.place:<24} {_duration(visit.total_s):>9}  {visits}, first arrival "
            f"{visit.first_arrival:%Y-%m-%d %H:%M}, last departure "
            f"{visit.last_departure:%Y-%m-%d %H:%M}"
        )
    return lines


def _timeline_lines(s: Summary) -> list[str]:
    """Each device's days as stays and moves: `08:41-17:02 (an en dash)  Office  8h21m`."""
    lines = []
    for name, device in s.devices.items():
        lines.append(f"Timeline      {name}")
        for day in device.days:
            lines.append(f"  {day.date}")
            for entry in day.timeline:
                span = f"{entry.start:%H:%M}\u2013{entry.end:%H:%M}"
                if entry.kind == "stay":
                    what = f"{entry.place}  {_duration(entry.duration_s)}"
                elif entry.kind == "move":
                    what = f"move {entry.path_km or 0.0:.1f} km"
                else:
                    what = f"unknown  {_duration(entry.duration_s)}"
                lines.append(f"    {span}  {what}")
    return lines


def write_table(s: Summary, out: TextIO) -> None:
    """A summary as a readable table (analyze, and the job results of `submit --wait`)."""
    w = s.window
    dropped = ", ".join(
        f"{rule} {count}" for rule, count in s.points.dropped.model_dump().items() if count
    )
    lines = [
        f"Window        {w.first_day} to {w.last_day} ({w.timezone}): "
        f"{w.start.isoformat()} to {w.end.isoformat()}",
        f"Fixes         {s.points.read} read, {s.points.used} used"
        + (f"; dropped: {dropped}" if dropped else "")
        + (f"; {s.points.accuracy_unknown} without accuracy" if s.points.accuracy_unknown else ""),
        f"Path          {s.path_km:.3f} km (raw {s.raw_path_km:.3f} km; true path between "
        f"{s.path_km_low:.3f} and {s.path_km_high:.3f} km)",
        f"From home     max {s.max_distance_km:.3f} km, min {s.min_distance_km:.3f} km, "
        f"mean {s.mean_distance_km:.3f} km, median {s.median_distance_km:.3f} km",
    ]
    if s.max_distance_at:
        at = s.max_distance_at
        lines.append(
            f"Farthest      {at.time.isoformat()} at {at.latitude:.6f},{at.longitude:.6f} "
            f"({at.device_id})"
        )
    lines.append(
        f"Time          at home {_duration(s.time_at_home_s)}, away {_duration(s.time_away_s)}, "
        f"unknown {_duration(s.time_unknown_s)}{summed_over(len(s.devices), ' (', ')')}"
    )
    c = s.completeness
    lag = (
        f"ingest lag median {c.ingest_lag_median_s:.0f} s, max {c.ingest_lag_max_s:.0f} s"
        if c.ingest_lag_median_s is not None and c.ingest_lag_max_s is not None
        else "no ingest times"
    )
    lines.append(
        f"Completeness  coverage {c.coverage:.1%}, largest gap {_duration(c.largest_gap_s)}, {lag}"
    )
    lines.append(f"Trips         {len(s.trips)}")
    for trip in s.trips:
        flags = " ".join(
            flag
            for flag, on in (
                ("clipped-start", trip.clipped_start),
                ("clipped-end", trip.clipped_end),
            )
            if on
        )
        farthest = "-" if trip.max_distance_km is None else f"{trip.max_distance_km:.3f} km"
        lines.append(
            f"  #{trip.id:<4} {trip.device_id:<16} {trip.start:%Y-%m-%d %H:%M} to "
            f"{trip.end:%Y-%m-%d %H:%M} ({_duration(trip.duration_s)}), farthest {farthest}, "
            f"path {trip.path_km:.3f} km {flags}".rstrip()
        )
    header = (
        f"  {'device':<16} {'read':>8} {'used':>8} {'path km':>10} {'raw km':>10} "
        f"{'max km':>9} {'home':>9} {'away':>9} {'unknown':>9} {'trips':>5}"
    )
    lines += ["Devices", header]
    lines += [_metrics_line(name, m) for name, m in s.devices.items()]
    if len(s.days) > 1:
        lines += [
            f"Days{summed_over(len(s.devices), '          (', ')')}",
            f"  {'day':<16} {'read':>8} {'used':>8} {'path km':>10} {'raw km':>10} "
            f"{'home':>9} {'away':>9} {'unknown':>9}",
        ]
        lines += [
            f"  {day.date.isoformat():<16} {day.points_read:>8} {day.points_used:>8} "
            f"{day.path_km:>10.3f} {day.raw_path_km:>10.3f} "
            f"{_duration(day.time_at_home_s):>9} {_duration(day.time_away_s):>9} "
            f"{_duration(day.time_unknown_s):>9}"
            for day in s.days
        ]
    lines += _places_lines(s)
    lines += _timeline_lines(s)
    lines += [f"Note          {note}" for note in s.notes]
    out.write("\n".join(lines) + "\n")
