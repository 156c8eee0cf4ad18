"""`otel-worker`: the command line for operators and developers.

Each subcommand's work lives in the module that owns it; this file only parses arguments
and imports that module when the subcommand runs, so `otel-worker --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from shared import config

Handler = Callable[[argparse.Namespace], int]


def _config_check(args: argparse.Namespace) -> int:
    """Validate the chosen settings groups and print them (secrets masked)."""
    for name in args.groups or sorted(config.GROUPS):
        settings = config.load(config.GROUPS[name])
        sys.stdout.write(f"[{name}]\n")
        for key, value in settings.model_dump().items():
            sys.stdout.write(f"  {key.upper()} = {value}\n")
    return 0


def _schemas(args: argparse.Namespace) -> int:
    from shared.events import export_schemas

    for path in export_schemas(args.out):
        sys.stdout.write(f"wrote {path}\n")
    return 0


def _dev(args: argparse.Namespace) -> int:
    from shared.logs import setup_logging
    from shared.supervisor import run_dev

    setup_logging(config.load(config.TelemetrySettings).log_level)
    return run_dev(sys.stdout, args.sweep_interval, args.local_s3)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="otel-worker", description="Distance-from-home metrics from OwnTracks history."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser("config", help="validate settings from the environment and .env")
    check.add_argument(
        "groups", nargs="*", choices=sorted(config.GROUPS), metavar="GROUP", help="groups to check"
    )
    check.set_defaults(handler=_config_check)

    schemas = commands.add_parser("schemas", help="export the JSON Schemas of the event data")
    schemas.add_argument("--out", type=Path, default=Path("docs/events"), help="folder")
    schemas.set_defaults(handler=_schemas)

    dev = commands.add_parser(
        "dev", help="run the broker and every function locally, one log, Ctrl-C stops all"
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
    dev.set_defaults(handler=_dev)
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
