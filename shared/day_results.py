"""Kept device-day results: each (device, local day) computed under a key is kept in the
jobs schema with the fingerprint of the rows its read covered, and reused by any later
range job with the same key while the fingerprint still matches.

The key hashes everything that can change a figure or a byte: the engine parameters
(home, radii, filters, places, context), the time zone, and the versions of the engine's
assembly and of the CSV format. The fingerprint is the count and a hash sum of the rows
in the day's read range (context included), taken per quarter hour in one grouped scan
of the `(device_id, timestamp)` index range for a whole range job, so re-checking a year
is one query; it changes when a fix is added, removed or edited, whatever its created_at.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from psycopg import sql

from shared.db import Connection, ConnectionSource

CSV_FORMAT_VERSION = 1
"""Bumped whenever a per-day CSV's bytes change for the same fixes and parameters."""

BUCKET_US = 900 * 1_000_000
"""Fingerprint buckets are quarter hours: every time zone's day starts on one, so a day's
read range (its midnights plus whole-hour context) is a run of whole buckets."""

_BUCKETS = sql.SQL(
    'SELECT device_id, div(floor(extract(epoch FROM "timestamp") * 1000000)::bigint, {size}),'
    " count(*), sum(hashtextextended(concat_ws(',', \"timestamp\", latitude, longitude,"
    " accuracy, velocity, battery, created_at), 0)::numeric)::text"
    ' FROM public.locations WHERE "timestamp" >= %(start)s AND "timestamp" < %(end)s{device}'
    " GROUP BY 1, 2"
)


def day_key(parameters: dict[str, Any], timezone: str, engine_version: int) -> str:
    """The key of days computed with these engine `parameters` (JSON), in `timezone`."""
    document = json.dumps(
        {
            "parameters": parameters,
            "timezone": timezone,
            "engine": engine_version,
            "csv": CSV_FORMAT_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(document.encode()).hexdigest()


@dataclass(frozen=True)
class Buckets:
    """Per device, the fingerprint buckets of a read range: their start (µs), row count
    and hash sum, sorted by start."""

    by_device: dict[str, tuple[np.ndarray, list[str]]]

    def fingerprint(self, device_id: str, start_us: int, end_us: int) -> str:
        """The fingerprint of the device's rows with start_us <= timestamp < end_us (both
        bucket bounds)."""
        starts, entries = self.by_device.get(device_id, (np.zeros(0, dtype=np.int64), []))
        a, b = np.searchsorted(starts, [start_us, end_us])
        digest = hashlib.sha256()
        for entry in entries[a:b]:
            digest.update(entry.encode())
            digest.update(b";")
        return digest.hexdigest()

    def devices(self) -> list[str]:
        """The devices with rows in the scanned range, in code-point order."""
        return sorted(self.by_device)


def scan_buckets(
    conn: Connection, start: dt.datetime, end: dt.datetime, device_id: str | None
) -> Buckets:
    """The fingerprint buckets of every row in [start, end) (of one device, or all)."""
    query = _BUCKETS.format(
        size=sql.Literal(BUCKET_US),
        device=sql.SQL(" AND device_id = %(device)s" if device_id is not None else ""),
    )
    rows = conn.execute(query, {"start": start, "end": end, "device": device_id}).fetchall()
    grouped: dict[str, list[tuple[int, str]]] = {}
    for device, bucket, count, total in rows:
        start_us = int(bucket) * BUCKET_US
        grouped.setdefault(device, []).append((start_us, f"{start_us}:{count}:{total}"))
    by_device = {}
    for device, entries in grouped.items():
        entries.sort()
        by_device[device] = (
            np.array([start for start, _ in entries], dtype=np.int64),
            [entry for _, entry in entries],
        )
    return Buckets(by_device)


@dataclass(frozen=True)
class KeptDay:
    """One kept device-day: its fingerprint, its part (JSON text; None when the device had
    nothing to report that day), its CSV object and rows."""

    device_id: str
    day: dt.date
    fingerprint: str
    part: str | None
    csv_key: str
    csv_rows: int


class DayStore:
    """`<schema>.day_results` and `<schema>.job_days`, reached through `connection`."""

    def __init__(self, connection: ConnectionSource, schema: str) -> None:
        self._connection = connection
        self._days = sql.Identifier(schema, "day_results")
        self._named = sql.Identifier(schema, "job_days")

    def kept(
        self, key: str, first: dt.date, last: dt.date, device_id: str | None
    ) -> dict[tuple[str, dt.date], KeptDay]:
        """The kept days of `key` from `first` to `last` (of one device, or all)."""
        query = sql.SQL(
            "SELECT device_id, day, fingerprint, part::text, csv_key, csv_rows FROM {days}"
            " WHERE key_hash = %(key)s AND day BETWEEN %(first)s AND %(last)s{device}"
        ).format(
            days=self._days,
            device=sql.SQL(" AND device_id = %(device)s" if device_id is not None else ""),
        )
        params = {"key": key, "first": first, "last": last, "device": device_id}
        with self._connection() as conn:
            rows = conn.execute(query, params).fetchall()
        return {(row[0], row[1]): KeptDay(*row) for row in rows}

    def keep(
        self, key: str, days: Iterable[KeptDay], reads: dict[dt.date, tuple[dt.datetime, ...]]
    ) -> None:
        """Keep (or replace) `days` under `key`; `reads[day]` is the day's read range."""
        query = sql.SQL(
            "INSERT INTO {days} (key_hash, device_id, day, fingerprint, read_from, read_to,"
            " part, csv_key, csv_rows) VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s)"
            " ON CONFLICT (key_hash, device_id, day) DO UPDATE SET"
            " fingerprint = excluded.fingerprint, read_from = excluded.read_from,"
            " read_to = excluded.read_to, part = excluded.part, csv_key = excluded.csv_key,"
            " csv_rows = excluded.csv_rows, computed_at = now()"
        ).format(days=self._days)
        rows = [
            (
                key,
                d.device_id,
                d.day,
                d.fingerprint,
                *reads[d.day],
                d.part,
                d.csv_key,
                d.csv_rows,
            )
            for d in days
        ]
        if not rows:
            return
        with self._connection() as conn, conn.cursor() as cursor:
            cursor.executemany(query, rows)

    def name(self, job_id: Any, key: str, days: Iterable[tuple[str, dt.date]]) -> None:
        """Record that the job's result names these kept days (retention keeps them)."""
        query = sql.SQL(
            "INSERT INTO {named} (job_id, key_hash, device_id, day) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT DO NOTHING"
        ).format(named=self._named)
        rows = [(job_id, key, device, day) for device, day in days]
        if not rows:
            return
        with self._connection() as conn, conn.cursor() as cursor:
            cursor.executemany(query, rows)
