"""Kept device-day results: each (device, local day) computed under a key is kept in the
jobs schema with the fingerprint of the rows its read covered, and reused by any later
range job with the same key while the fingerprint still matches.

The key hashes everything that can change a figure or a byte: the engine parameters
(home, radii, filters, places, context), the time zone, and the versions of the engine's
assembly and of the CSV format. The fingerprint covers every row in the day's read range
(context included): per quarter hour, their count and the XOR of their timestamps'
hashes, taken in one grouped scan of the `(device_id, timestamp)` index for a whole
range job (an index-only scan: re-checking a year is one query that reads no row). It
changes when a fix is added, removed or moved in time, whatever its created_at; a fix
edited in place (same device and timestamp, other coordinates) is not seen, as the index
does not hold them.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from psycopg import sql

from shared.db import Connection, ConnectionSource

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

CSV_FORMAT_VERSION = 1
"""Bumped whenever a per-day CSV's bytes change for the same fixes and parameters."""

# Fingerprint buckets are quarter hours: every time zone's day starts on one, so a day's
# read range (its midnights plus whole-hour context) is a run of whole buckets.
_BUCKETS = sql.SQL(
    "SELECT device_id, date_bin('15 minutes', \"timestamp\", '2000-01-01 00:00+00'),"
    " count(*), bit_xor(timestamp_hash_extended(\"timestamp\" AT TIME ZONE 'UTC', 0))"
    ' FROM public.locations WHERE "timestamp" >= %(start)s AND "timestamp" < %(end)s{device}'
    " GROUP BY 1, 2"
)
"""Per device and quarter hour, the rows' count and the XOR of their timestamps' hashes:
only the `(device_id, timestamp)` index is read (an index-only scan), no row."""

_GROUPS_MEMORY = "64MB"
"""work_mem for the grouping: a year of quarter hours of a few devices is some 100,000
groups, which the default would spill to disk."""


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
        device=sql.SQL(" AND device_id = %(device)s" if device_id is not None else ""),
    )
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL work_mem = {}").format(sql.Literal(_GROUPS_MEMORY)))
        rows = conn.execute(query, {"start": start, "end": end, "device": device_id}).fetchall()
    grouped: dict[str, list[tuple[int, str]]] = {}
    for device, bucket, count, total in rows:
        start_us = round((bucket - _EPOCH).total_seconds()) * 1_000_000
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

    def plan(
        self,
        job_id: uuid.UUID,
        key: str,
        done: Iterable[tuple[str, dt.date]],
        queued: Iterable[tuple[str, dt.date]],
    ) -> list[tuple[str, dt.date]]:
        """Record the job's device-days: `done` ones (kept and still holding) and `queued`
        ones to compute. A day some compute holds under a live lease is left to it. Returns
        the queued days to announce."""
        query = sql.SQL(
            "INSERT INTO {named} (job_id, device_id, day, key_hash, status)"
            " SELECT %(job)s, device, day, %(key)s, status"
            " FROM unnest(%(devices)s::text[], %(days)s::date[], %(statuses)s::text[])"
            " AS plan(device, day, status)"
            " ON CONFLICT (job_id, device_id, day) DO UPDATE SET key_hash = excluded.key_hash,"
            " status = excluded.status, attempts = 0, lease_token = NULL,"
            " lease_expires_at = NULL, error_message = NULL"
            " WHERE NOT ({named}.status = 'processing' AND {named}.lease_expires_at > now())"
            " RETURNING device_id, day, status"
        ).format(named=self._named)
        cells = [(*cell, "done") for cell in done] + [(*cell, "queued") for cell in queued]
        if not cells:
            return []
        params = {
            "job": job_id,
            "key": key,
            "devices": [device for device, _, _ in cells],
            "days": [day for _, day, _ in cells],
            "statuses": [status for _, _, status in cells],
        }
        with self._connection() as conn:
            rows = conn.execute(query, params).fetchall()
        return sorted((device, day) for device, day, status in rows if status == "queued")

    def claim(
        self,
        job_id: uuid.UUID,
        device_id: str,
        days: tuple[dt.date, dt.date],
        lease_s: float,
        max_attempts: int,
    ) -> RunClaim:
        """Take each device-day from `days[0]` to `days[1]` that is free for an attempt
        (a lease of its own), and say what the others are."""
        where = sql.SQL(
            "job_id = %(job)s AND device_id = %(device)s AND day BETWEEN %(first)s AND %(last)s"
        )
        take = sql.SQL(
            "UPDATE {named} SET status = 'processing', attempts = attempts + 1,"
            " lease_token = gen_random_uuid(),"
            " lease_expires_at = now() + make_interval(secs => %(lease)s)"
            " WHERE {where} AND attempts < %(max)s AND (status = 'queued'"
            " OR (status = 'processing' AND lease_expires_at <= now()))"
            " RETURNING day, lease_token, attempts"
        ).format(named=self._named, where=where)
        look = sql.SQL(
            "SELECT day, status, lease_expires_at > now() FROM {named} WHERE {where}"
        ).format(named=self._named, where=where)
        params = {
            "job": job_id,
            "device": device_id,
            "first": days[0],
            "last": days[1],
            "lease": lease_s,
            "max": max_attempts,
        }
        with self._connection() as conn:
            taken = conn.execute(take, params).fetchall()
            seen = conn.execute(look, params).fetchall()
        claimed = {day: (token, attempt) for day, token, attempt in taken}
        states: dict[DayState, list[dt.date]] = {state: [] for state in DayState}
        for day, status, live in seen:
            if day in claimed:
                continue
            if status == "done":
                states[DayState.DONE].append(day)
            elif status == "processing" and live:
                states[DayState.BUSY].append(day)
            elif status in ("queued", "processing"):
                states[DayState.EXHAUSTED].append(day)
        return RunClaim(claimed, states[DayState.BUSY], states[DayState.EXHAUSTED])

    def finish(
        self, job_id: uuid.UUID, device_id: str, claimed: dict[dt.date, tuple[uuid.UUID, int]]
    ) -> int | None:
        """Mark the claimed days done, each fenced by its lease token; then the job's days
        not yet done (counted after the commit, so whichever compute finishes last sees
        none), or None when a lease was lost."""
        done = sql.SQL(
            "UPDATE {named} AS d SET status = 'done', lease_token = NULL,"
            " lease_expires_at = NULL, error_message = NULL"
            " FROM unnest(%s::date[], %s::uuid[]) AS c(day, token)"
            " WHERE d.job_id = %s AND d.device_id = %s AND d.day = c.day"
            " AND d.lease_token = c.token"
        ).format(named=self._named)
        left = sql.SQL(
            "SELECT count(*) FROM {named} WHERE job_id = %s AND status <> 'done'"
        ).format(named=self._named)
        days = list(claimed)
        tokens = [claimed[day][0] for day in days]
        with self._connection() as conn:
            if conn.execute(done, (days, tokens, job_id, device_id)).rowcount != len(days):
                return None
        with self._connection() as conn:
            row = conn.execute(left, (job_id,)).fetchone()
        return int(row[0]) if row else 0

    def release(
        self,
        job_id: uuid.UUID,
        device_id: str,
        claimed: dict[dt.date, tuple[uuid.UUID, int]],
        error: str,
        max_attempts: int,
    ) -> None:
        """Give the claimed days back after a failed attempt: queued again, or failed
        for good once their attempts are used up."""
        query = sql.SQL(
            "UPDATE {named} AS d SET status = CASE WHEN d.attempts >= %s THEN 'failed'"
            " ELSE 'queued' END, lease_token = NULL, lease_expires_at = NULL,"
            " error_message = %s FROM unnest(%s::date[], %s::uuid[]) AS c(day, token)"
            " WHERE d.job_id = %s AND d.device_id = %s AND d.day = c.day"
            " AND d.lease_token = c.token"
        ).format(named=self._named)
        days = list(claimed)
        tokens = [claimed[day][0] for day in days]
        with self._connection() as conn:
            conn.execute(query, (max_attempts, error, days, tokens, job_id, device_id))


class DayState(enum.Enum):
    """What claiming a device-day found."""

    DONE = "done"
    """Computed already (a repeated event)."""
    BUSY = "busy"
    """Another compute holds it under a live lease."""
    EXHAUSTED = "exhausted"
    """Its attempts are used up."""


@dataclass(frozen=True)
class RunClaim:
    """What `DayStore.claim` took (day -> lease token and attempt) and what it left: days
    another compute holds under a live lease, and days whose attempts are used up (the
    rest were done already, or belong to no live job)."""

    claimed: dict[dt.date, tuple[uuid.UUID, int]]
    busy: list[dt.date]
    exhausted: list[dt.date]
