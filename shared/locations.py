"""`public.locations` (OwnTracks fixes): read it into `Points` fast, seed it, check its index.

The table belongs to the OwnTracks recorder; the service only reads it (`write_points` is
for development and demos, `import_points` adds the fixes of files with `otel-worker import`;
both share one binary COPY encoder). Reads select a half-open window on the fix `timestamp` and
never apply a function to a column in the predicate, so the `(device_id, timestamp)` index
serves them.

How `read_points` stays fast:
- One snapshot (REPEATABLE READ) counts each device's rows in the window, then reads each
  device's rows in time order, one query per device. The counts size the output arrays
  exactly, and the device column never crosses the wire: the client already knows which
  device each query returns. A read of one device starts with its arrays query, which
  carries the counts: when the device fits under the array bound, that one query is the
  whole read.
- Every column read has a fixed width (nullable integers are COALESCEd to -1, a NULL
  `created_at` to `-infinity`), so many values are parsed by one `np.frombuffer` with a
  structured big-endian dtype and assigned into the preallocated arrays. No Python value
  is made per row.
- A device with up to `_ARRAY_MAX_ROWS` fixes (a day's or a month's, the common jobs) comes
  back as one row of binary arrays, one per column, parsed whole: a fifth of the client CPU
  of streaming it (measured on one device-day with context, 8,649 rows: 1.6 vs 8.2 ms),
  which is what a busy compute runs short of. A larger one streams as a binary COPY (one
  message per row, taken straight from libpq and parsed in chunks): the client parses
  while the server produces, which is faster end to end for big reads, and no copy of the
  whole result is held besides the arrays themselves.
- Timestamps arrive as PostgreSQL's int64 microseconds since 2000-01-01 and become Unix
  microseconds with one vectorised add.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import select
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import pq, sql

from shared.db import Connection
from shared.engine.points import DTYPES, MISSING, MISSING_TIME, US_PER_S, Points, tracker_id
from shared.errors import OtelWorkerError

INDEX_NAME: Final = "locations_device_id_timestamp_idx"
PG_EPOCH_US: Final = 946_684_800 * US_PER_S
"""2000-01-01T00:00Z, PostgreSQL's timestamp origin, in Unix microseconds."""

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_HEADER = _SIGNATURE + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"  # no flags, no extension
_TRAILER = b"\xff\xff"
_CHUNK_BYTES = 4 << 20

CREATE_TABLE: Final = """\
CREATE TABLE IF NOT EXISTS public.locations (
    id serial PRIMARY KEY,
    device_id varchar(100) NOT NULL,
    tid varchar(10),
    latitude double precision NOT NULL,
    longitude double precision NOT NULL,
    accuracy integer,
    altitude double precision,
    velocity integer,
    battery integer,
    battery_status integer,
    connection_type varchar(10),
    "trigger" varchar(10),
    "timestamp" timestamptz NOT NULL,
    created_at timestamptz DEFAULT now(),
    raw_payload jsonb
)"""
"""The production schema of `public.locations`."""


def create_index_statement(*, concurrently: bool = True) -> str:
    """The statement that creates the index the reader needs.

    CONCURRENTLY keeps a live table writable while the index builds (it cannot run inside
    a transaction block, so seeding, which loads in one transaction, builds it plainly).
    """
    how = " CONCURRENTLY" if concurrently else ""
    return (
        f'CREATE INDEX{how} IF NOT EXISTS {INDEX_NAME} ON public.locations (device_id, "timestamp")'
    )


# --- reading ---------------------------------------------------------------------------

# (Points column, big-endian wire type, SELECT expression), in COPY order.
_READ_COLUMNS: Final = (
    ("timestamp", ">i8", '"timestamp"'),
    ("lat", ">f8", "latitude"),
    ("lon", ">f8", "longitude"),
    ("accuracy", ">i4", f"COALESCE(accuracy, {MISSING})"),
    ("velocity", ">i4", f"COALESCE(velocity, {MISSING})"),
    ("battery", ">i4", f"COALESCE(battery, {MISSING})"),
    ("created_at", ">i8", "COALESCE(created_at, '-infinity')"),
)
# A one-dimensional binary array without NULLs: this header, then (size, value) per element.
_ARRAY_HEADER: Final = np.dtype(
    [("ndim", ">i4"), ("has_nulls", ">i4"), ("oid", ">u4"), ("length", ">i4"), ("lower", ">i4")]
)
_ARRAY_MAX_ROWS: Final = 100_000
"""Devices with at most this many fixes are read as arrays (about 8 MB held at once)."""
_ROW: Final = np.dtype(
    [("fields", ">i2")]
    + [item for name, wire, _ in _READ_COLUMNS for item in ((f"{name}_len", ">i4"), (name, wire))]
)

_WINDOW = sql.SQL('"timestamp" >= %(start)s AND "timestamp" < %(end)s')
_DEVICE_WINDOW = sql.SQL("device_id = %(device)s AND {}").format(_WINDOW)

_SELECT_DEVICE = sql.SQL(
    'SELECT {columns} FROM public.locations WHERE {where} ORDER BY "timestamp"'
).format(
    columns=sql.SQL(", ").join(sql.SQL(expression) for _, _, expression in _READ_COLUMNS),
    where=_DEVICE_WINDOW,
)

# Each device's fixes in the read range, and those of them inside the limited part.
_COUNTS = sql.SQL(
    'count(*), count(*) FILTER (WHERE "timestamp" >= %(inner_start)s'
    ' AND "timestamp" < %(inner_end)s)'
)
_COUNT_DEVICE = sql.SQL(
    "SELECT device_id, {} FROM public.locations WHERE {} GROUP BY device_id"
).format(_COUNTS, _DEVICE_WINDOW)

# PostgreSQL (before 18) has no skip scan: enumerate the devices through the
# (device_id, timestamp) index with one probe per device, then count each device's window
# with a range scan of the same index. A plain GROUP BY over the window would read every
# index entry (or the table) when no index leads with "timestamp".
_COUNT_ALL = sql.SQL(
    """WITH RECURSIVE devices AS (
    (SELECT device_id FROM public.locations ORDER BY device_id LIMIT 1)
    UNION ALL
    SELECT (SELECT l.device_id FROM public.locations l
            WHERE l.device_id > d.device_id ORDER BY l.device_id LIMIT 1)
    FROM devices d WHERE d.device_id IS NOT NULL
)
SELECT d.device_id, c.n, c.inner_n FROM devices d
CROSS JOIN LATERAL (
    SELECT {counts} FROM public.locations l
    WHERE l.device_id = d.device_id AND {window}
) c (n, inner_n)
WHERE c.n > 0"""
).format(counts=_COUNTS, window=_WINDOW)


# The same rows as one row: their count, the count inside the limited part, and each column
# as an array. At most _ARRAY_MAX_ROWS + 1 rows are taken, so a count above the bound says
# "stream it instead" without the server building huge arrays. array_agg takes the rows in
# the sorted subquery's order (PostgreSQL keeps it without joins or grouping; checked on
# read), where ORDER BY inside each aggregate would sort every column separately. Rendered
# once at import (no connection needed): composing it on every read cost about 0.1 ms.
_SELECT_ARRAYS = (
    sql.SQL(
        "SELECT {counts}, {arrays} FROM (SELECT {columns} FROM public.locations WHERE {where}"
        ' ORDER BY "timestamp" LIMIT {bound}) AS fix'
    )
    .format(
        counts=_COUNTS,
        arrays=sql.SQL(", ").join(
            sql.SQL("array_agg({})").format(sql.Identifier(name)) for name, _, _ in _READ_COLUMNS
        ),
        columns=sql.SQL(", ").join(
            sql.SQL("{} AS {}").format(sql.SQL(expression), sql.Identifier(name))
            for name, _, expression in _READ_COLUMNS
        ),
        where=_DEVICE_WINDOW,
        bound=sql.Literal(_ARRAY_MAX_ROWS + 1),
    )
    .as_bytes(None)
)
_COPY_DEVICE = sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(_SELECT_DEVICE).as_bytes(None)


@dataclass(frozen=True)
class PointLimit:
    """At most `rows` fixes may lie in `start_utc <= timestamp < end_utc` (a part of the
    read range, such as a job's window without its context), and, with `device_rows`, at
    most that many in one device's whole read, context included."""

    start_utc: dt.datetime
    end_utc: dt.datetime
    rows: int
    device_rows: int | None = None


class TooManyPoints(OtelWorkerError):
    """The limited part of a read holds more fixes than its `PointLimit` allows."""

    def __init__(self, count: int, limit: PointLimit) -> None:
        super().__init__(f"{count} fixes between {limit.start_utc} and {limit.end_utc}")
        self.count = count
        self.limit = limit


class TooManyDeviceRows(OtelWorkerError):
    """One device's read (context included) holds more fixes than `limit.device_rows`."""

    def __init__(self, device: str, count: int, limit: PointLimit) -> None:
        super().__init__(f"{count} fixes of {device} to read (limit {limit.device_rows})")
        self.device = device
        self.count = count
        self.limit = limit


def _window(
    start_utc: dt.datetime,
    end_utc: dt.datetime,
    device_id: str | None,
    limit: PointLimit | None = None,
) -> dict[str, Any]:
    if start_utc.tzinfo is None or end_utc.tzinfo is None:
        raise ValueError("the window bounds must be timezone-aware datetimes")
    if end_utc < start_utc:
        raise ValueError(f"the window ends ({end_utc}) before it starts ({start_utc})")
    inner = (limit.start_utc, limit.end_utc) if limit else (start_utc, end_utc)
    return {
        "start": start_utc,
        "end": end_utc,
        "device": device_id,
        "inner_start": inner[0],
        "inner_end": inner[1],
    }


@contextlib.contextmanager
def _snapshot(conn: Connection) -> Iterator[None]:
    """One read-only REPEATABLE READ transaction: counts and copies see the same rows."""
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise ValueError("reading locations needs a connection outside a transaction")
    with conn.transaction():
        # jit off: the planner's row estimates for the device scan cross jit_above_cost,
        # and compiling then takes longer than the whole query.
        conn.execute(
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET LOCAL jit = off"
        )
        yield


def _device_counts(conn: Connection, window: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(device, fixes in the read range, of them in the limited part), in device order."""
    query = _COUNT_ALL if window["device"] is None else _COUNT_DEVICE
    rows = conn.execute(query, window).fetchall()
    # Python's code-point order, whatever the database collation: stable device codes.
    return sorted((str(device), int(count), int(inner)) for device, count, inner in rows)


TABLE: Final = "public.locations"


def read_error_message(exc: psycopg.Error) -> str:
    """What a caller is told when reading the fixes failed: one line, in the words of the
    table and the database user, without SQL text, caret lines or driver internals."""
    diag = exc.diag.message_primary or ""
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return f"the locations table {TABLE} does not exist"
    if isinstance(exc, psycopg.errors.UndefinedColumn):
        return f"the locations table {TABLE} lacks a column this service reads ({diag})"
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return f"the database user may not read the locations table {TABLE}"
    if isinstance(exc, psycopg.OperationalError):
        return f"the connection to the database broke while reading {TABLE}"
    detail = diag or str(exc).strip()
    first = detail.splitlines()[0] if detail else type(exc).__name__
    return f"reading the locations table {TABLE} failed: {first}"


_HAS_FIXES = "SELECT EXISTS (SELECT FROM public.locations WHERE device_id = %s)"
# A walk down the (device_id, timestamp) index, one probe per device: the distinct ids
# without reading every row (SELECT DISTINCT would scan the whole index).
_DEVICES = """
WITH RECURSIVE known(device_id) AS (
    (SELECT device_id FROM public.locations ORDER BY device_id LIMIT 1)
    UNION ALL
    SELECT (SELECT l.device_id FROM public.locations l
            WHERE l.device_id > known.device_id ORDER BY l.device_id LIMIT 1)
    FROM known WHERE known.device_id IS NOT NULL
)
SELECT device_id FROM known WHERE device_id IS NOT NULL LIMIT %s
"""


def unknown_device(conn: Connection, device_id: str, cap: int = 20) -> list[str] | None:
    """None when `device_id` has a fix anywhere in `public.locations`; otherwise the device
    ids that do, in the database's order, at most `cap` + 1 of them (one more than `cap`
    says there are more)."""
    found = conn.execute(_HAS_FIXES, (device_id,)).fetchone()
    if found and found[0]:
        return None
    return [str(row[0]) for row in conn.execute(_DEVICES, (cap + 1,)).fetchall()]


def read_points(
    conn: Connection,
    start_utc: dt.datetime,
    end_utc: dt.datetime,
    device_id: str | None,
    limit: PointLimit | None = None,
) -> Points:
    """The fixes with `start_utc <= timestamp < end_utc` of one device (or all when None).

    Sorted by device (code-point order of the ids) then timestamp; `device_ids` lists only
    devices with fixes in the window. NULL accuracy/velocity/battery read as -1 and a NULL
    `created_at` as `MISSING_TIME`. `conn` must not be inside a transaction: the read runs
    in its own read-only snapshot. With `limit`, raises `TooManyPoints` when its part holds
    more fixes than it allows, and `TooManyDeviceRows` when one device's whole read holds
    more than its `device_rows` (both counted in the same snapshot), before reading more
    than `_ARRAY_MAX_ROWS` rows of any device.
    """
    window = _window(start_utc, end_utc, device_id, limit)
    with _snapshot(conn):
        arrays = conn.cursor(binary=True)
        first = _fetch_arrays(arrays, window) if device_id is not None else None
        if first is not None and first[0] <= _ARRAY_MAX_ROWS:
            # One device, all of it in that one answer (the common job): no count query.
            count, inner, _ = first
            counts = [(str(device_id), count, inner)] if count else []
        else:
            first = None
            counts = _device_counts(conn, window)
        if limit is not None:
            limited = sum(inner for _, _, inner in counts)
            if limited > limit.rows:
                raise TooManyPoints(limited, limit)
            if limit.device_rows is not None:
                # Counted before anything beyond one device's bounded array is fetched.
                for device, count, _ in counts:
                    if count > limit.device_rows:
                        raise TooManyDeviceRows(device, count, limit)
        total = sum(count for _, count, _ in counts)
        out = {name: np.empty(total, dtype) for name, dtype in DTYPES.items()}
        rows = conn.cursor()
        position = 0
        for code, (device, count, _) in enumerate(counts):
            out["device"][position : position + count] = code
            arguments = {**window, "device": device}
            if count <= _ARRAY_MAX_ROWS:
                result = first[2] if first is not None else _fetch_arrays(arrays, arguments)[2]
                _fill(out, position, count, result, device)
            else:
                with rows.copy(_COPY_DEVICE, arguments) as copy:
                    _RowStream(out, position, count).consume(conn, copy)
            position += count
    out["timestamp"] += PG_EPOCH_US
    created = out["created_at"]
    np.add(created, PG_EPOCH_US, out=created, where=created != MISSING_TIME)
    return Points(device_ids=tuple(device for device, _, _ in counts), **out)


def _fetch_arrays(
    cursor: psycopg.Cursor[Any], arguments: dict[str, Any]
) -> tuple[int, int, pq.abc.PGresult]:
    """One device's rows as arrays (up to the bound): (rows, rows in the limited part, the
    result holding the arrays)."""
    cursor.execute(_SELECT_ARRAYS, arguments)
    result = cursor.pgresult
    if result is None or result.ntuples != 1:
        raise psycopg.DataError(f"reading {arguments['device']}: expected one row of arrays")
    count, inner = (int.from_bytes(result.get_value(0, i) or b"", "big") for i in (0, 1))
    return count, inner, result


def _fill(
    out: dict[str, npt.NDArray[Any]],
    position: int,
    count: int,
    result: pq.abc.PGresult,
    device: str,
) -> None:
    """Copy one device's `count` rows from the arrays of `result` into `out[...][position:]`."""
    end = position + count
    for index, (name, wire, _) in enumerate(_READ_COLUMNS, start=2):
        out[name][position:end] = _array(result.get_value(0, index), wire, count, name)
    if np.any(np.diff(out["timestamp"][position:end]) < 0):
        raise psycopg.DataError(f"reading {device}: the fixes arrived out of time order")


def _array(raw: bytes | None, wire: str, count: int, name: str) -> npt.NDArray[Any]:
    """The `count` values of a binary one-dimensional array of `wire` elements, no NULLs."""
    item = np.dtype([("size", ">i4"), ("value", wire)])
    if raw is None or len(raw) != _ARRAY_HEADER.itemsize + count * item.itemsize:
        raise psycopg.DataError(f"{name}: the array does not hold the {count} fixes counted")
    header = np.frombuffer(raw, _ARRAY_HEADER, count=1)[0]
    # With one dimension of `count` elements, no NULL and the exact byte length, every
    # element has the width of `wire`: the values can be taken at fixed strides.
    if header["ndim"] != 1 or header["has_nulls"] or header["length"] != count:
        raise psycopg.DataError(f"{name}: not a one-dimensional array of {count} values")
    return np.frombuffer(raw, item, count=count, offset=_ARRAY_HEADER.itemsize)["value"]


class _RowStream:
    """Parses one binary COPY of `count` rows of `_ROW`'s layout into `out[...][position:]`.

    The server sends one message per row. Reading them through `Copy.read()` costs about a
    microsecond of Python per row (more than the server spends producing it), so the
    messages are taken straight from libpq (psycopg's `pq` layer) until the exact number of
    bytes the counted rows make has arrived; `Copy.read()` then sees the end of the COPY as
    usual. Each message is appended to a bytearray, and every `_CHUNK_BYTES` the whole rows
    gathered are parsed with one `np.frombuffer` and assigned column by column.
    """

    def __init__(self, out: dict[str, npt.NDArray[Any]], position: int, count: int) -> None:
        self.out = out
        self.position = position
        self.end = position + count
        self.pending = bytearray()
        self.header_checked = False

    def consume(self, conn: Connection, copy: psycopg.Copy) -> None:
        """Read the COPY to its end; raise `psycopg.DataError` unless it held the rows counted."""
        pgconn = conn.pgconn
        pending = self.pending
        expected = len(_HEADER) + (self.end - self.position) * _ROW.itemsize + len(_TRAILER)
        received = 0
        poller = select.poll()
        poller.register(pgconn.socket, select.POLLIN)
        get = pgconn.get_copy_data
        while received < expected:
            size, data = get(1)
            if size > 0:
                pending += data
                received += size
                if len(pending) >= _CHUNK_BYTES:
                    self._drain()
            elif size == 0:  # nothing buffered yet: wait for the server
                poller.poll()
                pgconn.consume_input()
            else:
                raise _ended_early(conn)
        if copy.read():
            raise psycopg.DataError("binary COPY returned more rows than were counted")
        self._drain()
        if pending != _TRAILER or self.position != self.end:
            raise psycopg.DataError("binary COPY did not hold the rows that were counted")

    def _drain(self) -> None:
        pending = self.pending
        if not self.header_checked:
            if pending[: len(_SIGNATURE)] != _SIGNATURE or pending[15:19] != bytes(4):
                raise psycopg.DataError("not a binary COPY stream without header extension")
            del pending[: len(_HEADER)]
            self.header_checked = True
        count = min(len(pending) // _ROW.itemsize, self.end - self.position)
        rows = np.frombuffer(pending, dtype=_ROW, count=count)
        # A NULL or a column of another width would shift every later row: refuse, loudly.
        if not (rows["fields"] == len(_READ_COLUMNS)).all():
            raise psycopg.DataError("binary COPY row with an unexpected layout")
        end = self.position + count
        for name, _, _ in _READ_COLUMNS:
            self.out[name][self.position : end] = rows[name]
        self.position = end
        del rows  # releases the buffer export so the parsed bytes can be dropped
        del pending[: count * _ROW.itemsize]


def _ended_early(conn: Connection) -> psycopg.Error:
    """The error that ended a COPY before its rows were all sent (e.g. a statement timeout)."""
    error: psycopg.Error = psycopg.DataError("binary COPY ended before the rows counted")
    while (result := conn.pgconn.get_result()) is not None:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            error = psycopg.errors.error_from_result(result, encoding=conn.info.encoding)
    return error


# --- seeding ---------------------------------------------------------------------------


class ExistingRowsError(OtelWorkerError, RuntimeError):
    """`public.locations` already holds rows and replacing them was not asked for."""


Progress = Callable[[int, int], None]
"""Called as `progress(rows_written, rows_total)` after each batch."""

_WRITE_COLUMNS: Final = (
    # (table column, Points column, big-endian wire type, nullable)
    ("latitude", "lat", ">f8", False),
    ("longitude", "lon", ">f8", False),
    ("accuracy", "accuracy", ">i4", True),
    ("velocity", "velocity", ">i4", True),
    ("battery", "battery", ">i4", True),
    ("timestamp", "timestamp", ">i8", False),
    ("created_at", "created_at", ">i8", True),
)


_COLUMN_LIST: Final = sql.SQL(", ").join(
    sql.Identifier(name) for name in ("device_id", "tid", *(c[0] for c in _WRITE_COLUMNS))
)


def _copy(
    conn: Connection,
    statement: sql.Composed,
    points: Points,
    batch_rows: int,
    progress: Progress | None = None,
) -> None:
    """Send `points` through one binary COPY, `batch_rows` rows per message."""
    encoder = _RowEncoder(points.device_ids)
    with conn.cursor().copy(statement) as copy:
        copy.write(_HEADER)
        for start in range(0, len(points), batch_rows):
            end = min(start + batch_rows, len(points))
            copy.write(encoder.encode(points, start, end).data)
            if progress is not None:
                progress(end, len(points))
        copy.write(_TRAILER)


def write_points(
    conn: Connection,
    points: Points,
    *,
    force: bool = False,
    progress: Progress | None = None,
    batch_rows: int = 100_000,
) -> int:
    """Load `points` into `public.locations` with binary COPY; return the rows written.

    Creates the table with the production schema when it is absent (and then, after the
    load, the `(device_id, timestamp)` index). A table that already holds rows is left
    alone with `ExistingRowsError` unless `force`, which replaces them all. Everything
    happens in one transaction: a failed load leaves the table as it was. `tid` is derived
    from the device id as OwnTracks does (`tracker_id`; readers such as the original service
    fail on a NULL one); other columns `Points` does not carry (altitude, ...) stay NULL;
    -1 and `MISSING_TIME` are written as NULL.
    """
    with conn.transaction():
        exists = conn.execute("SELECT to_regclass('public.locations') IS NOT NULL").fetchone()
        conn.execute(CREATE_TABLE)
        conn.execute("LOCK TABLE public.locations IN ACCESS EXCLUSIVE MODE")
        has_rows = conn.execute("SELECT EXISTS (SELECT FROM public.locations)").fetchone()
        if has_rows and has_rows[0] and not force:
            raise ExistingRowsError("public.locations already has rows")
        # Truncating in this transaction lets COPY FREEZE write rows already frozen, so the
        # first reads neither set hint bits nor wait for a vacuum to allow index-only scans.
        conn.execute("TRUNCATE public.locations RESTART IDENTITY")
        statement = sql.SQL("COPY public.locations ({}) FROM STDIN (FORMAT BINARY, FREEZE)").format(
            _COLUMN_LIST
        )
        _copy(conn, statement, points, batch_rows, progress)
        if not (exists and exists[0]):
            conn.execute(create_index_statement(concurrently=False))
        conn.execute("ANALYZE public.locations")
    return len(points)


# --- importing -------------------------------------------------------------------------

_INCOMING: Final = "otel_worker_incoming"
_CREATE_INCOMING: Final = f"""\
CREATE TEMP TABLE IF NOT EXISTS {_INCOMING} (
    device_id varchar(100) NOT NULL,
    tid varchar(10),
    latitude double precision NOT NULL,
    longitude double precision NOT NULL,
    accuracy integer,
    velocity integer,
    battery integer,
    "timestamp" timestamptz NOT NULL,
    created_at timestamptz
) ON COMMIT DROP"""
# A fix is new unless the table holds one of the same device at the same microsecond at the
# same position to 1e-7 degrees. The candidates are bounded by the batch's devices and time
# span (%(devices)s, %(first)s, %(last)s), which the (device_id, timestamp) index serves,
# so a batch never scans the whole table. DISTINCT ON drops repeats inside one batch.
_NEW_FIXES: Final = f"""\
SELECT DISTINCT ON (i.device_id, i."timestamp", round(i.latitude * 1e7),
                    round(i.longitude * 1e7))
       i.device_id, i.tid, i.latitude, i.longitude, i.accuracy, i.velocity, i.battery,
       i."timestamp", i.created_at
FROM {_INCOMING} i
WHERE NOT EXISTS (
    SELECT FROM public.locations l
    WHERE l.device_id = ANY(%(devices)s)
      AND l."timestamp" BETWEEN %(first)s AND %(last)s
      AND l.device_id = i.device_id AND l."timestamp" = i."timestamp"
      AND round(l.latitude * 1e7) = round(i.latitude * 1e7)
      AND round(l.longitude * 1e7) = round(i.longitude * 1e7)
)
ORDER BY i.device_id, i."timestamp", round(i.latitude * 1e7), round(i.longitude * 1e7)"""
# Whether the table holds any fix of the batch's devices in its time span: when it holds
# none and no two fixes of the batch share a device and a time, every fix is new.
_ANY_PRESENT: Final = """\
SELECT EXISTS (
    SELECT FROM public.locations
    WHERE device_id = ANY(%(devices)s) AND "timestamp" BETWEEN %(first)s AND %(last)s
)"""
UNIQUE_INDEX_NAME: Final = "locations_device_id_timestamp_position_key"


@dataclass
class ImportCounts:
    """What `import_points` did with the fixes it was given."""

    read: int = 0
    written: int = 0
    present: int = 0
    """Fixes the table already held (or that repeat one earlier in the same import)."""
    created_table: bool = False


def import_points(
    conn: Connection,
    batches: Iterable[Points],
    *,
    dry_run: bool = False,
    create_unique_index: bool = False,
    progress: Callable[[ImportCounts], None] | None = None,
    batch_rows: int = 100_000,
) -> ImportCounts:
    """Add the fixes of `batches` to `public.locations` that it does not hold yet.

    A batch whose devices have no fix in the table within its time span, and no two fixes
    at the same time, goes by binary COPY straight into the table (the common case: history
    not imported before). Any other batch goes by binary COPY into a temporary table, and
    one INSERT ... SELECT adds those without a twin in the table (see `_NEW_FIXES`), so
    importing the same file twice adds nothing (see `_Importer`). All batches share one
    transaction: a file that fails halfway leaves the table as it was; `dry_run` rolls it
    back at the end and only counts. The table is created with the production schema and
    index when absent; an existing one is changed only by `create_unique_index` (a unique
    index on device, time and position). `tid` is derived from the device id as in
    `write_points`.
    """
    counts = ImportCounts()
    with conn.transaction() as transaction:
        exists = conn.execute("SELECT to_regclass('public.locations') IS NOT NULL").fetchone()
        counts.created_table = not (exists and exists[0])
        if counts.created_table:
            conn.execute(CREATE_TABLE)
        if create_unique_index:
            conn.execute(
                f"CREATE UNIQUE INDEX IF NOT EXISTS {UNIQUE_INDEX_NAME} ON public.locations "
                '(device_id, "timestamp", latitude, longitude)'
            )
        writer = _Importer(conn, counts.created_table, batch_rows)
        for batch in batches:
            if not len(batch):
                continue
            added = writer.add(batch)
            counts.read += len(batch)
            counts.written += added
            counts.present += len(batch) - added
            if progress is not None:
                progress(counts)
        writer.index()
        if counts.written:
            conn.execute("ANALYZE public.locations")
        if dry_run:
            raise psycopg.Rollback(transaction)
    return counts


_COPY_DIRECT: Final = sql.SQL("COPY public.locations ({}) FROM STDIN (FORMAT BINARY)").format(
    _COLUMN_LIST
)
_COPY_INCOMING: Final = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
    sql.Identifier(_INCOMING), _COLUMN_LIST
)
_INSERT_NEW: Final = sql.SQL("INSERT INTO public.locations ({}) {}").format(
    _COLUMN_LIST, sql.SQL(_NEW_FIXES)
)


class _Importer:
    """Adds batches to `public.locations`: by COPY straight into it when every fix of the
    batch is new, else through the temporary table and `_NEW_FIXES`.

    A table this import created gets its `(device_id, timestamp)` index after the load
    (built once, about twice as fast as kept up row by row), or as soon as a batch needs
    the slow path; until then, what the table holds is known here as each device's time
    span imported so far.
    """

    def __init__(self, conn: Connection, created: bool, batch_rows: int) -> None:
        self.conn, self.batch_rows = conn, batch_rows
        self.indexed = not created
        self.spans: dict[str, tuple[int, int]] = {}
        conn.execute(_CREATE_INCOMING)

    def add(self, batch: Points) -> int:
        """Add the new fixes of `batch` (sorted by device and time); return how many."""
        span = {
            "devices": list(batch.device_ids),
            "first": _utc(int(batch.timestamp.min())),
            "last": _utc(int(batch.timestamp.max())),
        }
        if _distinct_times(batch) and self._none_present(batch, span):
            _copy(self.conn, _COPY_DIRECT, batch, self.batch_rows)
            return len(batch)
        self.index()
        self.conn.execute(f"TRUNCATE {_INCOMING}")
        _copy(self.conn, _COPY_INCOMING, batch, self.batch_rows)
        return self.conn.execute(_INSERT_NEW, span).rowcount

    def index(self) -> None:
        """Create the index of a table this import created, once."""
        if not self.indexed:
            self.conn.execute(create_index_statement(concurrently=False))
            self.indexed = True

    def _none_present(self, batch: Points, span: dict[str, Any]) -> bool:
        if self.indexed:
            return not _fetch_bool(self.conn, _ANY_PRESENT, span)
        starts = np.flatnonzero(np.diff(batch.device, prepend=-1))
        ends = np.append(starts[1:], len(batch)) - 1
        found = [
            (batch.device_ids[code], int(batch.timestamp[s]), int(batch.timestamp[e]))
            for code, s, e in zip(batch.device[starts].tolist(), starts, ends, strict=True)
        ]
        for device, first, last in found:
            if device in self.spans and not (
                last < self.spans[device][0] or first > self.spans[device][1]
            ):
                return False
        for device, first, last in found:
            known = self.spans.get(device, (first, last))
            self.spans[device] = (min(known[0], first), max(known[1], last))
        return True


def _distinct_times(points: Points) -> bool:
    """Whether no two fixes share a device and a time (`points` is sorted by both)."""
    same = (np.diff(points.timestamp) == 0) & (np.diff(points.device) == 0)
    return not bool(same.any())


def _fetch_bool(conn: Connection, query: str, params: dict[str, Any]) -> bool:
    row = conn.execute(query, params).fetchone()
    return bool(row and row[0])


def _utc(us: int) -> dt.datetime:
    """Unix microseconds as an aware datetime, exactly."""
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)


class _RowEncoder:
    """Binary COPY rows for a slice of `Points`, built with numpy.

    Every row is first laid out at its widest (all values present, the longest device id
    and tid), then the bytes of NULL values and of text padding are masked out, which keeps
    the rows in order while their widths vary.
    """

    def __init__(self, device_ids: tuple[str, ...]) -> None:
        self.texts = {
            "device": self._per_device([device.encode() for device in device_ids]),
            "tid": self._per_device([tracker_id(device).encode() for device in device_ids]),
        }
        self.uniform = all(len(set(lengths.tolist())) == 1 for _, lengths in self.texts.values())
        fields: list[tuple[Any, ...]] = [("fields", ">i2")]
        for name, (table, _) in self.texts.items():
            fields += [(f"{name}_len", ">i4"), (name, np.uint8, (table.shape[1],))]
        for name, _, wire, _ in _WRITE_COLUMNS:
            fields += [(f"{name}_len", ">i4"), (name, wire)]
        self.row = np.dtype(fields)
        layout = self.row.fields
        assert layout is not None  # a structured dtype always has fields
        self.offsets = {name: int(place[1]) for name, place in layout.items()}
        self.widths = {name: int(place[0].itemsize) for name, place in layout.items()}

    @staticmethod
    def _per_device(
        encoded: list[bytes],
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int32]]:
        """The texts of each device code as a zero-padded byte table, and their lengths."""
        width = max((len(text) for text in encoded), default=0) or 1
        table = np.zeros((max(len(encoded), 1), width), np.uint8)
        for code, text in enumerate(encoded):
            table[code, : len(text)] = np.frombuffer(text, np.uint8)
        return table, np.array([len(text) for text in encoded] or [0], np.int32)

    def encode(self, points: Points, start: int, end: int) -> npt.NDArray[np.uint8]:
        """The rows `start:end` of `points`, as the bytes of binary COPY rows."""
        rows = np.empty(end - start, self.row)
        rows["fields"] = len(self.texts) + len(_WRITE_COLUMNS)
        codes = points.device[start:end]
        for name, (table, lengths) in self.texts.items():
            rows[f"{name}_len"] = lengths[codes]
            rows[name] = table[codes]
        nulls: list[tuple[str, npt.NDArray[np.bool_]]] = []
        for name, column, wire, nullable in _WRITE_COLUMNS:
            values = getattr(points, column)[start:end]
            width = np.dtype(wire).itemsize
            if name in ("timestamp", "created_at"):
                missing = values == MISSING_TIME
                values = values - PG_EPOCH_US
            else:
                missing = values == MISSING
            if nullable and missing.any():
                rows[f"{name}_len"] = np.where(missing, -1, width)
                nulls.append((name, missing))
            else:
                rows[f"{name}_len"] = width
            rows[name] = values
        flat = rows.view(np.uint8).reshape(len(rows), self.row.itemsize)
        if self.uniform and not nulls:
            return flat.reshape(-1)
        keep = np.ones(flat.shape, np.bool_)
        if not self.uniform:
            for name, (_, lengths) in self.texts.items():
                first, width = self.offsets[name], self.widths[name]
                keep[:, first : first + width] = np.arange(width) < lengths[codes][:, None]
        for name, missing in nulls:
            first = self.offsets[name]
            keep[:, first : first + self.widths[name]] = ~missing[:, None]
        return flat[keep]


# --- diagnosis -------------------------------------------------------------------------


@dataclass(frozen=True)
class LocationsReport:
    """What `otel-worker doctor` says about `public.locations`."""

    table_exists: bool
    estimated_rows: int
    """From the planner's statistics; -1 when the table was never analyzed."""
    index: str | None
    """A valid btree index leading with (device_id, timestamp), if there is one."""
    create_index: str
    """The statement that creates the index (run it by hand: doctor never does)."""
    sample: tuple[str, dt.datetime, dt.datetime] | None
    """The device and UTC day the plans were made for: the last day of the first device."""
    plans: dict[str, str]
    """EXPLAIN ANALYZE output of the reader's two queries for the sample."""

    @property
    def healthy(self) -> bool:
        """The table exists and the reader's index is there."""
        return self.table_exists and self.index is not None


_FIND_INDEX = """\
SELECT i.relname
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_am am ON am.oid = i.relam
WHERE x.indrelid = 'public.locations'::regclass
  AND am.amname = 'btree' AND x.indisvalid AND x.indpred IS NULL AND x.indnkeyatts >= 2
  AND x.indkey[0] = (SELECT attnum FROM pg_attribute
                     WHERE attrelid = x.indrelid AND attname = 'device_id')
  AND x.indkey[1] = (SELECT attnum FROM pg_attribute
                     WHERE attrelid = x.indrelid AND attname = 'timestamp')
ORDER BY i.relname
LIMIT 1"""


def diagnose(conn: Connection) -> LocationsReport:
    """Inspect `public.locations`: index present, the statement to create it, query plans.

    Read-only: it never creates anything. The plans come from EXPLAIN ANALYZE of the
    reader's queries (the device counts and one device's COPY query) for one day of data.
    """
    statement = create_index_statement()
    with _snapshot(conn):
        exists = conn.execute("SELECT to_regclass('public.locations') IS NOT NULL").fetchone()
        if not (exists and exists[0]):
            return LocationsReport(False, 0, None, statement, None, {})
        estimate = conn.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = 'public.locations'::regclass"
        ).fetchone()
        index = conn.execute(_FIND_INDEX).fetchone()
        sample = _sample_day(conn)
        plans = {}
        if sample is not None:
            window = _window(sample[1], sample[2], sample[0])
            for label, query in (
                ("devices and counts in the window (all devices)", _COUNT_ALL),
                ("one device's points (the COPY query)", _SELECT_DEVICE),
            ):
                explain = sql.SQL("EXPLAIN (ANALYZE) {}").format(query)
                lines = conn.execute(explain, window).fetchall()
                plans[label] = "\n".join(str(line[0]) for line in lines)
    return LocationsReport(
        table_exists=True,
        estimated_rows=int(estimate[0]) if estimate else -1,
        index=str(index[0]) if index else None,
        create_index=statement,
        sample=sample,
        plans=plans,
    )


def _sample_day(conn: Connection) -> tuple[str, dt.datetime, dt.datetime] | None:
    first = conn.execute(
        "SELECT device_id FROM public.locations ORDER BY device_id LIMIT 1"
    ).fetchone()
    if first is None:
        return None
    last = conn.execute(
        'SELECT max("timestamp") FROM public.locations WHERE device_id = %s', [first[0]]
    ).fetchone()
    assert last is not None  # an aggregate always returns a row
    day = last[0].astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return str(first[0]), day, day + dt.timedelta(days=1)
