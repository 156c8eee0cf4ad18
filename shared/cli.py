"""`otel-worker`: the command line for operators and developers.

Each subcommand's work lives in the module that owns it; this file only parses arguments
and imports that module when the subcommand runs, so `otel-worker --help` stays fast.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import AnyUrl

from shared import config
from shared.contracts import INT32_MAX, JOB_STATUSES

if TYPE_CHECKING:
    from shared.db import Connection

Handler = Callable[[argparse.Namespace], int]
DatabaseHandler = Callable[[argparse.Namespace, "Connection", config.DatabaseSettings], int]

EXIT_UNAVAILABLE = 3
"""Exit status when the database stayed unreachable through the start-up retry."""
EXIT_MISCONFIGURED = 2
"""Exit status when the database refused for good (unknown database or role, bad password)."""

EXIT_NOT_INSTALLED = 4
"""Exit status of a development command where the development tooling is not installed."""


def _development(handler: Handler) -> Handler:
    """`handler` as a development command: it needs `shared.dev`, which the image (built from
    the wheel) does not contain, so there it says so instead of failing on an import."""

    def run(args: argparse.Namespace) -> int:
        if importlib.util.find_spec("shared.dev") is None:
            sys.stderr.write(
                f"otel-worker {args.command}: a development command; this installation has no "
                "development tooling (shared/dev is left out of the image): run it from a "
                "source checkout after `make install`\n"
            )
            return EXIT_NOT_INSTALLED
        return handler(args)

    return run


def _config_check(args: argparse.Namespace) -> int:
    """Validate the chosen settings groups (default: all) and print them, secrets masked.
    An invalid group is reported on stderr and the others still printed; 2 if any was."""
    invalid = 0
    for name in args.groups or sorted(config.GROUPS):
        sys.stdout.write(f"[{name}]\n")
        try:
            settings = config.load(config.GROUPS[name])
        except config.ConfigError as exc:
            sys.stdout.flush()  # keep the error beside its group on a terminal
            sys.stderr.write(f"otel-worker config: [{name}] {exc}\n")
            invalid += 1
            continue
        for key, value in settings.model_dump().items():
            # A URL may carry credentials (user:password@, ?api-key=): SecretStr masks itself.
            shown = config.redact_url(str(value)) if isinstance(value, AnyUrl) else value
            sys.stdout.write(f"  {key.upper()} = {shown}\n")
    return 2 if invalid else 0


def _schemas(args: argparse.Namespace) -> int:
    from shared.events import export_schemas

    for path in export_schemas(args.out):
        sys.stdout.write(f"wrote {path}\n")
    return 0


def _dev(args: argparse.Namespace) -> int:
    from shared import db
    from shared.dev.runner import StartFailed, run_dev
    from shared.logs import setup_logging

    telemetry = config.load(config.TelemetrySettings)
    setup_logging(telemetry.log_level, log_format=telemetry.log_format)
    try:
        # Before anything starts: a database that is missing or refuses is one clear line,
        # not a broker and four functions started only to be stopped again.
        db.connect(config.load(config.DatabaseSettings)).close()
        return run_dev(sys.stdout, args.sweep_interval, args.local_s3, args.compute_workers)
    except KeyboardInterrupt:
        sys.stderr.write("otel-worker dev: interrupted while starting; stopped what had started\n")
        return 130
    except db.DatabaseUnavailable as exc:
        sys.stderr.write(f"otel-worker dev: {exc}\n")
        return database_exit_status(exc)
    except StartFailed as exc:
        sys.stderr.write(f"otel-worker dev: {exc}\n")
        return EXIT_UNAVAILABLE


def _demo(args: argparse.Namespace) -> int:
    from shared.dev import demo
    from shared.dev.runner import StartFailed

    options = demo.Options(
        data_dir=args.data_dir, out_dir=args.out, embedded=args.embedded, keep=args.keep
    )
    try:
        return demo.run(options)
    except (demo.DemoFailed, StartFailed) as exc:
        sys.stderr.write(f"otel-worker demo: {exc}\n")
        return 1


def database_exit_status(exc: Exception) -> int:
    """2 when the database refused for good (a setting to fix), 3 when it did not answer."""
    from shared.db import DatabaseMisconfigured

    return EXIT_MISCONFIGURED if isinstance(exc, DatabaseMisconfigured) else EXIT_UNAVAILABLE


def _with_database(run: DatabaseHandler) -> Handler:
    """A handler that gives `run` one connection (after the start-up retry) and its settings."""

    def handler(args: argparse.Namespace) -> int:
        from shared import db

        settings = config.load(config.DatabaseSettings)
        try:
            with db.connect(settings) as conn:
                return run(args, conn, settings)
        except db.DatabaseUnavailable as exc:
            sys.stderr.write(f"otel-worker: {exc}\n")
            return database_exit_status(exc)

    return handler


def _migrate(args: argparse.Namespace, conn: Connection, settings: config.DatabaseSettings) -> int:
    """Apply pending migrations of the jobs schema, or describe it (`--describe`)."""
    from shared import migrate

    schema = settings.jobs_schema
    if args.describe:
        sys.stdout.write(migrate.SCHEMA_FILE_HEADER + migrate.describe_schema(conn, schema))
        return 0
    try:
        applied = migrate.migrate(conn, schema, settings.db_service_role)
    except migrate.MigrationError as exc:
        sys.stderr.write(f"otel-worker: {exc}\n")
        return 1
    for migration in applied:
        sys.stdout.write(f"applied {migration.version:04d}_{migration.name}.sql to {schema}\n")
    if not applied:
        sys.stdout.write(f"schema {schema} is up to date\n")
    return 0


def _doctor(args: argparse.Namespace, conn: Connection, settings: config.DatabaseSettings) -> int:
    """Report on public.locations (index, plans) and the jobs schema; 1 if action is needed."""
    from shared import locations, migrate

    out = sys.stdout.write
    info = conn.info
    major, minor = divmod(info.server_version, 10000)
    out(f"database: {info.host}:{info.port}/{info.dbname}, PostgreSQL {major}.{minor}\n")
    report = locations.diagnose(conn)
    if not report.table_exists:
        out("public.locations: MISSING (the OwnTracks recorder creates it; `seed` does locally)\n")
    else:
        out(f"public.locations: about {max(report.estimated_rows, 0):,} rows\n")
        if report.index:
            out(f'index on (device_id, "timestamp"): present ({report.index})\n')
        else:
            out('index on (device_id, "timestamp"): MISSING; reads scan the whole table.\n')
            out(f"  create it (doctor never does) with:\n    {report.create_index};\n")
        if report.sample:
            device, start, end = report.sample
            out(f"query plans for device {device!r}, {start:%Y-%m-%d} to {end:%Y-%m-%d} (UTC):\n")
        for label, plan in report.plans.items():
            out(f"  {label}:\n")
            out("".join(f"    {line}\n" for line in plan.splitlines()))
    status = migrate.status(conn, settings.jobs_schema)
    latest = len(migrate.available())
    done = len(status.applied)
    out(f"jobs schema {status.schema}: {done} of {latest} migration(s) applied\n")
    if status.pending:
        out("  pending (run `otel-worker migrate`): ")
        out(", ".join(f"{m.version:04d}_{m.name}" for m in status.pending) + "\n")
    out("".join(f"  PROBLEM: {problem}\n" for problem in status.problems))
    if status.up_to_date:
        out(f"  matches {migrate.EXPECTED_SCHEMA_FILE}\n")
    return 0 if report.healthy and status.up_to_date else 1


def _sweep(args: argparse.Namespace, conn: Connection, settings: config.DatabaseSettings) -> int:
    """One maintenance pass over the jobs (publishing to K_SINK); prints what it did."""
    from shared import maintenance, telemetry
    from shared.storage import ObjectStore

    telemetry.start("sweep", config.load(config.TelemetrySettings), database=True)

    events = config.load(config.EventSettings)
    # The pruned jobs' objects are removed with compute's identity; without one configured
    # (MINIO_ACCESS_KEY unset) they are left to the bucket's expiry rule.
    objects: ObjectStore | None = None
    try:
        objects = ObjectStore(config.load(config.StorageSettings))
    except config.ConfigError as exc:
        if "MINIO_ACCESS_KEY: is required but not set" not in str(exc):
            raise
    report = maintenance.sweep(
        conn,
        settings,
        config.load(config.JobSettings),
        events,
        limit=args.limit,
        objects=objects,
    )
    sys.stdout.write("".join(line + "\n" for line in report.lines()))
    telemetry.shutdown()  # the CronJob's pod ends here: flush what it measured
    # Without K_SINK the jobs the sweep exists to announce stay silent: fail the run, so a
    # SinkBinding that missed the CronJob's pods shows up as failed Jobs.
    unannounced = len(report.unpublished) + len(report.failed) if events.k_sink is None else 0
    if unannounced:
        sys.stderr.write(
            f"otel-worker sweep: K_SINK is not set, so {unannounced} job(s) needing an event"
            " were not announced (is the SinkBinding bound to this pod?)\n"
        )
    return 1 if unannounced or report.publish_failures or report.announce_failures else 0


def _refresh(args: argparse.Namespace, conn: Connection, settings: config.DatabaseSettings) -> int:
    """The late-fix check (a CronJob beside the sweep); prints what it did. 1 when an
    event could not be sent or a job could not be re-checked."""
    from shared.supersession import check_late_fixes

    report = check_late_fixes(
        conn,
        settings,
        config.load(config.JobSettings),
        config.load(config.StorageSettings),
        config.load(config.EventSettings),
        config.load(config.AnalysisSettings).home_timezone,
    )
    sys.stdout.write("".join(line + "\n" for line in report.lines()))
    return 1 if report.publish_failures or report.failures else 0


def _nightly(args: argparse.Namespace, conn: Connection, settings: config.DatabaseSettings) -> int:
    """The nightly day summaries (a CronJob after local midnight); prints what it did. 1
    when an event could not be sent."""
    from shared.nightly import summarize_yesterday

    report = summarize_yesterday(
        conn,
        settings,
        config.load(config.JobSettings),
        config.load(config.StorageSettings),
        config.load(config.EventSettings),
        config.load(config.AnalysisSettings),
        args.day,
    )
    sys.stdout.write("".join(line + "\n" for line in report.lines()))
    return 1 if report.publish_failures else 0


def _home(text: str) -> tuple[float, float]:
    try:
        lat, lon = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LAT,LON, got {text!r}") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid LAT,LON")
    return lat, lon


def _day(text: str) -> dt.date:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}")
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a calendar date") from None


def _group(text: str) -> str:
    """A settings group of `otel-worker config` (checked here: argparse's `choices` refuses
    the empty list `nargs="*"` gives when no group is named)."""
    if text not in config.GROUPS:
        raise argparse.ArgumentTypeError(
            f"unknown group {text!r} (choose from {', '.join(sorted(config.GROUPS))})"
        )
    return text


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _count(text: str) -> int:
    """A whole number ListJobs' int32 `limit` and `offset` can carry (not negative)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= INT32_MAX:
        raise argparse.ArgumentTypeError(f"expected a whole number 0 to {INT32_MAX}, got {text!r}")
    return value


def add_analyze_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `otel-worker analyze`."""
    parser.add_argument(
        "file",
        type=Path,
        help="locations CSV, OwnTracks JSON, .rec, GPX, GeoJSON or Google Takeout (also .gz)",
    )
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
    stays = parser.add_argument_group("stays and places (defaults from the environment)")
    stays.add_argument(
        "--places", type=Path, metavar="FILE", help="named places, YAML or JSON (PLACES_FILE)"
    )
    stays.add_argument("--stay-min", type=float, help="shortest stay, minutes (STAY_MIN_MINUTES)")
    stays.add_argument("--stay-radius-m", type=float, help="stay radius (STAY_RADIUS_M)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the summary as JSON")
    out.add_argument("--csv", type=Path, metavar="OUT", help="write the per-fix CSV")
    out.add_argument("--geojson", type=Path, metavar="OUT", help="write a GeoJSON map")
    out.add_argument("--gpx", type=Path, metavar="OUT", help="write the tracks as GPX 1.1")


def add_seed_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `otel-worker seed`."""
    parser.add_argument(
        "--csv", type=Path, metavar="OUT", help="write a CSV export instead of the database"
    )
    parser.add_argument(
        "--force", action="store_true", help="replace the rows public.locations already holds"
    )
    parser.add_argument("--days", type=int, default=7, help="days to generate (default 7)")
    parser.add_argument("--devices", type=int, default=1, help="devices (default 1)")
    parser.add_argument("--start", type=_day, help="first local day (default 2024-03-08)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--interval-s", type=_positive_seconds, default=30.0, help="seconds between fixes (30)"
    )


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `otel-worker import`."""
    parser.add_argument(
        "files", type=Path, nargs="+", metavar="FILE", help="files in any format analyze reads"
    )
    parser.add_argument(
        "--device", help="device id for every fix (required when a file names none)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="count what would be added, write nothing"
    )
    parser.add_argument(
        "--create-unique-index",
        action="store_true",
        help="also create a unique index on (device_id, timestamp, latitude, longitude)",
    )


def _import(args: argparse.Namespace, conn: Connection, settings: config.DatabaseSettings) -> int:
    from shared.tools import importer

    return importer.run_import(args, conn)


def _analyze(args: argparse.Namespace) -> int:
    from shared.tools import analyze

    return analyze.run_analyze(args)


def _seed(args: argparse.Namespace) -> int:
    from shared import db
    from shared.dev import seed

    try:
        return seed.run_seed(args)
    except db.DatabaseUnavailable as exc:
        sys.stderr.write(f"otel-worker: {exc}\n")
        return database_exit_status(exc)


def _client(args: argparse.Namespace) -> int:
    import grpc

    from shared.rpc.distance.v1 import distance_pb2 as pb
    from shared.tools import client

    settings = config.load(config.ClientSettings)
    if args.ingress:
        settings = settings.model_copy(update={"ingress_address": args.ingress})
    if args.ca_file is not None and not args.ca_file.is_file():
        sys.stderr.write(f"otel-worker: --ca-file: no such file: {args.ca_file}\n")
        return 2
    if args.tls or args.ca_file:
        settings = settings.model_copy(
            update={
                "ingress_tls": True,
                "ingress_ca_file": args.ca_file or settings.ingress_ca_file,
            }
        )
    try:
        if args.command == "submit":
            request = pb.CalculateDistanceRequest(
                date=args.date.isoformat(),
                end_date=args.to.isoformat() if args.to else "",
                device_id=args.device or "",
                timezone=args.tz or "",
                idempotency_key=args.key or "",
            )
            return client.submit(
                settings, request, wait_for_it=args.wait, wait_seconds=args.timeout
            )
        if args.command == "cancel":
            return client.cancel(settings, args.job_id)
        if args.command == "status":
            return client.status(settings, args.job_id, args.json)
        return client.jobs(
            settings,
            pb.ListJobsRequest(
                status=args.status or "",
                date=args.date.isoformat() if args.date else "",
                device_id=args.device or "",
                limit=args.limit,
                offset=args.offset,
            ),
        )
    except grpc.RpcError as exc:
        code = exc.code().name if exc.code() else "UNKNOWN"
        sys.stderr.write(f"otel-worker: {code}: {exc.details()}\n")
        return client.EXIT_RPC


def _add_client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ingress = argparse.ArgumentParser(add_help=False)
    ingress.add_argument(
        "--ingress", metavar="HOST:PORT", help="the gRPC ingress (INGRESS_ADDRESS)"
    )
    ingress.add_argument(
        "--tls", action="store_true", help="connect over TLS (INGRESS_TLS); see --ca-file"
    )
    ingress.add_argument(
        "--ca-file",
        type=Path,
        metavar="PEM",
        help="verify the ingress's certificate with this CA (INGRESS_CA_FILE; implies --tls;"
        " default: the system's roots)",
    )

    submit = commands.add_parser("submit", parents=[ingress], help="ask for a job over gRPC")
    submit.add_argument("--date", type=_day, required=True, help="local day, YYYY-MM-DD")
    submit.add_argument("--to", type=_day, help="last day of a range (inclusive)")
    submit.add_argument("--device", help="one device id (default: every device)")
    submit.add_argument("--tz", help="time zone of the days (default: the home time zone)")
    submit.add_argument("--key", help="idempotency key: repeating it returns the same job")
    submit.add_argument(
        "--wait", action="store_true", help="follow the job, then print its summary and CSV link"
    )
    submit.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=600.0,
        metavar="SECONDS",
        help="with --wait: give up following after this long (exit 4; default 600)",
    )
    submit.set_defaults(handler=_client)

    status = commands.add_parser("status", parents=[ingress], help="show one job")
    status.add_argument("job_id", help="the job id")
    status.add_argument("--json", action="store_true", help="the whole answer as JSON")
    status.set_defaults(handler=_client)

    cancel = commands.add_parser(
        "cancel", parents=[ingress], help="cancel a queued or processing job"
    )
    cancel.add_argument("job_id", help="the job id")
    cancel.set_defaults(handler=_client)

    jobs = commands.add_parser("jobs", parents=[ingress], help="list jobs, newest first")
    jobs.add_argument(
        "--status",
        choices=JOB_STATUSES,
        help="only jobs in this state",
    )
    jobs.add_argument("--date", type=_day, help="jobs whose days include this one")
    jobs.add_argument("--device", help="jobs of this device")
    jobs.add_argument("--limit", type=_count, default=20, help="page size (default 20, max 500)")
    jobs.add_argument("--offset", type=_count, default=0, help="jobs to skip")
    jobs.set_defaults(handler=_client)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="otel-worker", description="Distance-from-home metrics from OwnTracks history."
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {_version()}", help="print the version"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = commands.add_parser("config", help="validate settings from the environment and .env")
    check.add_argument(
        "groups",
        nargs="*",
        type=_group,
        metavar="GROUP",
        help=f"groups to check (default: all of {', '.join(sorted(config.GROUPS))})",
    )
    check.set_defaults(handler=_config_check)

    schemas = commands.add_parser("schemas", help="export the JSON Schemas of the event data")
    schemas.add_argument(
        "--out", type=Path, default=Path("docs/events"), help="folder to write to (docs/events)"
    )
    schemas.set_defaults(handler=_schemas)

    dev = commands.add_parser(
        "dev",
        help="(development) the broker and every function locally, one log; Ctrl-C stops all",
        description="Run the broker, the four functions and the gRPC ingress on this machine. "
        "Needs a PostgreSQL server: DATABASE_URL (or the POSTGRES_* settings; default "
        "postgresql://postgres@127.0.0.1:5432/owntracks), checked before anything starts. "
        "The object store comes from the MINIO_* settings, or from --local-s3.",
    )
    dev.add_argument(
        "--sweep-interval", type=float, default=30.0, help="seconds between sweeps (30)"
    )
    dev.add_argument(
        "--local-s3",
        type=Path,
        metavar="DIR",
        help="start a SeaweedFS S3 server with its data in DIR and use it",
    )
    dev.add_argument(
        "--compute-workers",
        type=int,
        default=3,
        metavar="N",
        help="compute processes taking deliveries in turn, as pods would (3)",
    )
    dev.set_defaults(handler=_development(_dev))

    demo = commands.add_parser(
        "demo", help="(development) the whole system here: seed, two jobs, summaries, CSVs"
    )
    demo.add_argument("--data-dir", type=Path, default=Path(".data"), help="data (.data)")
    demo.add_argument("--out", type=Path, default=Path("out"), help="CSVs and reports (out)")
    demo.add_argument(
        "--embedded-postgres",
        dest="embedded",
        action="store_true",
        help="use the embedded PostgreSQL even if a server answers",
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="keep the stack running after the jobs, so the printed links work, until Ctrl-C",
    )
    demo.set_defaults(handler=_development(_demo))
    migrate = commands.add_parser("migrate", help="apply the jobs schema migrations")
    migrate.add_argument(
        "--describe",
        action="store_true",
        help="print the schema as read from the catalog (the format of expected_schema.txt)",
    )
    migrate.set_defaults(handler=_with_database(_migrate))

    doctor = commands.add_parser(
        "doctor", help="check public.locations' index and query plans, and the jobs schema"
    )
    doctor.set_defaults(handler=_with_database(_doctor))

    sweep = commands.add_parser(
        "sweep", help="re-queue, fail, re-publish and prune jobs (the maintenance CronJob)"
    )
    sweep.add_argument(
        "--limit", type=int, default=1000, help="at most this many jobs per step (default 1000)"
    )
    sweep.set_defaults(handler=_with_database(_sweep))

    refresh = commands.add_parser(
        "refresh",
        help="recompute device-days late fixes changed and supersede the jobs they moved",
    )
    refresh.set_defaults(handler=_with_database(_refresh))

    nightly = commands.add_parser(
        "nightly", help="summarise yesterday for every device that reported (day.summarized)"
    )
    nightly.add_argument(
        "--day", type=_day, help="this local day instead of yesterday (HOME_TIMEZONE)"
    )
    nightly.set_defaults(handler=_with_database(_nightly))

    analyze = commands.add_parser(
        "analyze", help="distance-from-home metrics of a location file (CSV, JSON, .rec, GPX, ...)"
    )
    add_analyze_arguments(analyze)
    analyze.set_defaults(handler=_analyze)

    imports = commands.add_parser(
        "import", help="add the fixes of GPX, Takeout, .rec, ... files to public.locations"
    )
    add_import_arguments(imports)
    imports.set_defaults(handler=_with_database(_import))

    seed = commands.add_parser(
        "seed", help="(development) generated tracks into public.locations (or a CSV export)"
    )
    add_seed_arguments(seed)
    seed.set_defaults(handler=_development(_seed))

    _add_client_commands(commands)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("otel-worker")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; configuration errors exit 2 with the variable's name. Without a
    subcommand, print the help."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    handler: Handler = args.handler
    try:
        return handler(args)
    except config.ConfigError as exc:
        sys.stderr.write(f"otel-worker: {exc}\n")
        return 2
    except BrokenPipeError:
        # The reader (`| head`) left: stop quietly. Point stdout at /dev/null so the
        # interpreter's final flush does not fail again with a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for a command ended by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
