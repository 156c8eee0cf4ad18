"""`otel-worker`: the command line for operators and developers.

Each subcommand's work lives in the module that owns it; this file only parses arguments
and imports that module when the subcommand runs, so `otel-worker --help` stays fast.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from shared import config

Handler = Callable[[argparse.Namespace], int]

_GROUPS: dict[str, type[config._Group]] = {
    "database": config.DatabaseSettings,
    "analysis": config.AnalysisSettings,
    "storage": config.StorageSettings,
    "jobs": config.JobSettings,
    "events": config.EventSettings,
    "http": config.HttpServerSettings,
    "grpc": config.GrpcSettings,
    "upstream": config.UpstreamSettings,
    "telemetry": config.TelemetrySettings,
}


def _config_check(args: argparse.Namespace) -> int:
    """Validate the chosen settings groups and print them (secrets masked)."""
    for name in args.groups or sorted(_GROUPS):
        settings = config.load(_GROUPS[name])
        sys.stdout.write(f"[{name}]\n")
        for key, value in settings.model_dump().items():
            sys.stdout.write(f"  {key.upper()} = {value}\n")
    return 0


def _home(text: str) -> tuple[float, float]:
    try:
        lat, lon = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LAT,LON, got {text!r}") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid LAT,LON")
    return lat, lon


def _day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


def add_analyze_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `otel-worker analyze`."""
    parser.add_argument("file", type=Path, help="locations CSV, OwnTracks JSON or .rec file")
    when = parser.add_argument_group("days (default: every day the file covers)")
    when.add_argument("--date", type=_day, help="one local day, YYYY-MM-DD")
    when.add_argument("--from", dest="first", type=_day, help="first local day of a range")
    when.add_argument("--to", dest="last", type=_day, help="last local day of a range")
    parser.add_argument("--tz", help="home time zone (default HOME_TIMEZONE)")
    parser.add_argument(
        "--home", type=_home, help="home as LAT,LON (default HOME_LATITUDE/LONGITUDE)"
    )
    parser.add_argument("--device", help="only this device id")
    filters = parser.add_argument_group("filters (defaults from the environment)")
    filters.add_argument("--exit-km", type=float, help="exit radius (AWAY_THRESHOLD_KM)")
    filters.add_argument("--enter-km", type=float, help="enter radius (HOME_ENTER_KM)")
    filters.add_argument("--max-accuracy-m", type=float, help="drop worse fixes; 0 keeps all")
    filters.add_argument("--max-speed-kmh", type=float, help="jump limit; 0 disables")
    filters.add_argument("--max-gap-min", type=float, help="longer gaps are unknown time")
    filters.add_argument("--jitter-m", type=float, help="jitter radius; 0 disables")
    filters.add_argument("--jitter-fixes", type=int, help="fixes averaged for the jitter test")
    filters.add_argument("--keep-duplicates", action="store_true", help="do not drop repeats")
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the summary as JSON")
    out.add_argument("--csv", type=Path, metavar="OUT", help="write the per-fix CSV")
    out.add_argument("--geojson", type=Path, metavar="OUT", help="write a GeoJSON map")


def add_seed_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `otel-worker seed`."""
    parser.add_argument("--csv", type=Path, metavar="OUT", required=True, help="CSV file to write")
    parser.add_argument("--days", type=int, default=7, help="days to generate (default 7)")
    parser.add_argument("--devices", type=int, default=1, help="devices (default 1)")
    parser.add_argument("--start", type=_day, help="first local day (default 2024-03-08)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--interval-s", type=int, default=30, help="seconds between fixes")


def _analyze(args: argparse.Namespace) -> int:
    from shared import analyze

    return analyze.run_analyze(args)


def _seed(args: argparse.Namespace) -> int:
    from shared import analyze

    return analyze.run_seed(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="otel-worker", description="Distance-from-home metrics from OwnTracks history."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser("config", help="validate settings from the environment and .env")
    check.add_argument(
        "groups", nargs="*", choices=sorted(_GROUPS), metavar="GROUP", help="groups to check"
    )
    check.set_defaults(handler=_config_check)

    analyze = commands.add_parser(
        "analyze", help="distance-from-home metrics of a locations CSV, OwnTracks JSON or .rec file"
    )
    add_analyze_arguments(analyze)
    analyze.set_defaults(handler=_analyze)
    seed = commands.add_parser("seed", help="write generated tracks as a public.locations CSV")
    add_seed_arguments(seed)
    seed.set_defaults(handler=_seed)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; configuration errors exit 2 with the variable's name."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except config.ConfigError as exc:
        sys.stderr.write(f"otel-worker: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
