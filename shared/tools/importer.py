"""`otel-worker import FILE…`: location history from files into `public.locations`.

Reads every format `analyze` reads (GPX, GeoJSON and Google Takeout streamed in batches;
locations CSV, OwnTracks JSON and Recorder `.rec` files whole) and adds their fixes through
`locations.import_points`, the binary COPY writer `seed` uses too: a fix the table already
holds is skipped, so a file imported twice adds nothing. Each file is one transaction.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import sys
import threading
from collections import Counter
from collections.abc import Generator
from pathlib import Path
from typing import Final, TextIO

import numpy as np

from shared import locations
from shared.db import Connection
from shared.engine.points import DTYPES, Points
from shared.tools import formats
from shared.tools.sources import SourceError, read_batches


def _as_device(batch: Points, device: str) -> Points:
    """The batch with every fix given `device`."""
    columns = {name: getattr(batch, name) for name in DTYPES if name != "device"}
    return Points.from_columns([device], device=np.zeros(len(batch), np.int32), **columns)


def _batches(
    path: Path, device: str | None, skipped: formats.Skipped
) -> Generator[Points, None, None]:
    # A CSV, OwnTracks JSON or .rec file names its devices itself; --device renames them.
    for batch in read_batches(path, device, skipped):
        yield batch if device is None else _as_device(batch, device)


_AHEAD: Final = 2
"""Batches read ahead of the one being written."""


def _read_ahead(batches: Generator[Points, None, None]) -> Generator[Points, None, None]:
    """`batches`, read by a thread of their own up to `_AHEAD` batches ahead, so the file is
    parsed while PostgreSQL writes the batch before (the two take about as long). A reading
    error is raised here, in order; closing this generator stops the thread and the read."""
    handed: queue.Queue[tuple[Points | None, BaseException | None]] = queue.Queue(_AHEAD)
    stop = threading.Event()

    def hand(item: tuple[Points | None, BaseException | None]) -> bool:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                handed.put(item, timeout=0.1)
                return True
        return False

    def read() -> None:
        try:
            for batch in batches:
                if not hand((batch, None)):
                    return
            hand((None, None))
        except BaseException as exc:
            hand((None, exc))
        finally:
            batches.close()

    reader = threading.Thread(target=read, name="import-reader", daemon=True)
    reader.start()
    try:
        while True:
            batch, error = handed.get()
            if error is not None:
                raise error
            if batch is None:
                return
            yield batch
    finally:
        stop.set()
        reader.join()


class _Progress:
    """One line on stderr, rewritten after each batch, when stderr is a terminal."""

    def __init__(self, path: Path, out: TextIO) -> None:
        self.path, self.out = path, out
        self.shown = out.isatty()

    def __call__(self, counts: locations.ImportCounts) -> None:
        if self.shown:
            self.out.write(
                f"\rimporting {self.path.name}: {counts.read:,} fixes read, "
                f"{counts.written:,} new, {counts.present:,} already present"
            )
            self.out.flush()

    def done(self) -> None:
        if self.shown:
            self.out.write("\n")


def run_import(args: argparse.Namespace, conn: Connection) -> int:
    """Import each file in turn; 2 when one cannot be read (the files before it stay
    imported, that one adds nothing)."""
    out = sys.stdout.write
    total = locations.ImportCounts()
    for path in args.files:
        skipped: formats.Skipped = Counter()
        progress = _Progress(path, sys.stderr)
        try:
            with contextlib.closing(_read_ahead(_batches(path, args.device, skipped))) as batches:
                counts = locations.import_points(
                    conn,
                    batches,
                    dry_run=args.dry_run,
                    create_unique_index=args.create_unique_index,
                    progress=progress,
                )
        except SourceError as exc:
            progress.done()
            sys.stderr.write(f"otel-worker import: {exc}; nothing of it was imported\n")
            return 2
        progress.done()
        if not counts.read:
            sys.stderr.write(f"otel-worker import: {path}: no location fixes\n")
            return 2
        if counts.created_table:
            out("created public.locations with its (device_id, timestamp) index\n")
        out(
            f"{path}: {counts.read:,} fixes read, {counts.written:,} "
            f"{'would be ' if args.dry_run else ''}added, "
            f"{counts.present:,} skipped as already present\n"
        )
        for reason, count in sorted(skipped.items()):
            out(f"  skipped {count:,}: {reason}\n")
        total.read += counts.read
        total.written += counts.written
        total.present += counts.present
    if len(args.files) > 1:
        out(
            f"total: {total.read:,} fixes read, {total.written:,} added, "
            f"{total.present:,} already present\n"
        )
    if args.dry_run:
        out("dry run: nothing was written\n")
    return 0
