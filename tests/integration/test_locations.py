"""public.locations: the reader (binary arrays and binary COPY), the seeding writer and the doctor
report."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest

from shared import locations
from shared.dev.tracks import TrackSpec, generate
from shared.engine.points import DTYPES, MISSING, MISSING_TIME, US_PER_S, Points
from tests.conftest import Database

UTC = dt.UTC
T0 = dt.datetime(2024, 3, 10, 5, 0, tzinfo=UTC)  # the window's start
T1 = dt.datetime(2024, 3, 11, 5, 0, tzinfo=UTC)  # its (excluded) end
MICRO = dt.timedelta(microseconds=1)
HOUR = dt.timedelta(hours=1)

# Rows inserted by plain SQL, deliberately out of order: (device, timestamp, lat, lon,
# accuracy, velocity, battery, created_at). Only those in [T0, T1) are read.
ROWS = [
    (
        "phone",
        T0 + dt.timedelta(hours=3),
        40.7,
        -74.0,
        12,
        5,
        80,
        T0 + dt.timedelta(hours=3, seconds=2),
    ),
    ("phone", T0, 40.1, -74.1, None, None, None, None),  # exactly the start: included
    ("tab", T1 - MICRO, 41.5, -73.5, 3, 0, 100, T1),  # the last microsecond: included
    ("phone", T1, 40.9, -74.9, 1, 1, 1, T1),  # exactly the end: excluded
    ("tab", T0 - MICRO, 41.0, -73.0, 1, 1, 1, T0),  # just before: excluded
    ("ü-watch", T0 + dt.timedelta(hours=1), -33.9, 151.2, 65, -1, 7, None),
    ("tab", T0 + dt.timedelta(minutes=5), 41.25, -73.25, None, 30, 55, T0),
    ("phone", T0 + dt.timedelta(hours=1), 40.4, -74.4, 8, None, 79, T0 + dt.timedelta(hours=2)),
    ("gone", T0 - dt.timedelta(days=3), 0.0, 0.0, 1, 1, 1, None),  # no fix in the window
]


def _us(moment: dt.datetime | None) -> int:
    if moment is None:
        return MISSING_TIME
    return (moment - dt.datetime(1970, 1, 1, tzinfo=UTC)) // MICRO


def _expected(device: str | None = None) -> Points:
    rows = [r for r in ROWS if T0 <= r[1] < T1 and device in (None, r[0])]
    ids = sorted({r[0] for r in rows})
    return Points.from_columns(
        ids,
        device=[ids.index(r[0]) for r in rows],
        timestamp=[_us(r[1]) for r in rows],
        lat=[r[2] for r in rows],
        lon=[r[3] for r in rows],
        accuracy=[MISSING if r[4] is None else r[4] for r in rows],
        velocity=[MISSING if r[5] is None else r[5] for r in rows],
        battery=[MISSING if r[6] is None else r[6] for r in rows],
        created_at=[_us(r[7]) for r in rows],
    )


def _assert_same(actual: Points, expected: Points) -> None:
    assert actual.device_ids == expected.device_ids
    for name, dtype in DTYPES.items():
        column = getattr(actual, name)
        assert column.dtype == dtype, name
        np.testing.assert_array_equal(column, getattr(expected, name), err_msg=name)


@pytest.fixture(scope="module")
def known_rows(postgres: Database) -> Iterator[None]:
    """public.locations of the session database holding `ROWS` (created by plain SQL)."""
    with postgres.connect() as conn:
        conn.execute(locations.CREATE_TABLE)
        conn.execute(locations.create_index_statement(concurrently=False))
        with conn.cursor() as cursor:
            cursor.executemany(
                'INSERT INTO public.locations (device_id, "timestamp", latitude, longitude,'
                " accuracy, velocity, battery, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                ROWS,
            )
    yield
    with postgres.connect() as conn:
        conn.execute("DROP TABLE public.locations")


@pytest.fixture(params=["direct", "pgbouncer"])
def routed(request: pytest.FixtureRequest, postgres: Database, pgbouncer: Database) -> Database:
    """The session database, reached directly and through PgBouncer."""
    return postgres if request.param == "direct" else pgbouncer


@pytest.mark.usefixtures("known_rows")
def test_reader_returns_exactly_the_half_open_window(routed: Database) -> None:
    with routed.connect() as conn:
        points = locations.read_points(conn, T0, T1, None)
    _assert_same(points, _expected())
    assert points.device_ids == ("phone", "tab", "ü-watch")  # code-point order
    assert len(points) == 6


@pytest.mark.usefixtures("known_rows")
def test_a_limit_counts_only_its_part_of_the_read_and_refuses_before_reading(
    routed: Database,
) -> None:
    part = (T0, T0 + 2 * HOUR)  # 4 of the 6 fixes: phone x2, tab, ü-watch
    with routed.connect() as conn:
        exact = locations.read_points(conn, T0, T1, None, locations.PointLimit(*part, rows=4))
        _assert_same(exact, _expected())  # the whole range is read, context included
        with pytest.raises(locations.TooManyPoints) as refused:
            locations.read_points(conn, T0, T1, None, locations.PointLimit(*part, rows=3))
        assert refused.value.count == 4
        with pytest.raises(locations.TooManyPoints) as one_device:
            locations.read_points(conn, T0, T1, "phone", locations.PointLimit(*part, rows=1))
        assert one_device.value.count == 2
        # Refused inside the snapshot: the connection is left idle and usable.
        assert len(locations.read_points(conn, T0, T1, "tab")) == 2


@pytest.mark.usefixtures("known_rows")
def test_a_device_limit_counts_the_whole_read_context_included(routed: Database) -> None:
    # The part holds one fix of phone and none of tab: the rest of their reads is context,
    # and counts against the device limit (phone reads 3 fixes, tab 2).
    part = (T0 + HOUR, T0 + 2 * HOUR)
    with routed.connect() as conn:
        for device, most, count in ((None, 2, 3), ("tab", 1, 2)):
            limit = locations.PointLimit(*part, rows=10, device_rows=most)
            with pytest.raises(locations.TooManyDeviceRows) as refused:
                locations.read_points(conn, T0, T1, device, limit)
            assert (refused.value.device, refused.value.count) == (device or "phone", count)
        enough = locations.PointLimit(*part, rows=10, device_rows=3)
        assert len(locations.read_points(conn, T0, T1, None, enough)) == 6


@pytest.mark.usefixtures("known_rows")
def test_reader_of_one_device(pgbouncer: Database) -> None:
    with pgbouncer.connect() as conn:
        tab = locations.read_points(conn, T0, T1, "tab")
        assert len(tab) == 2
        nobody = locations.read_points(conn, T0, T1, "nobody")
        outside = locations.read_points(conn, T0, T1, "gone")
    _assert_same(tab, _expected("tab"))
    assert len(nobody) == 0
    assert nobody.device_ids == ()
    assert len(outside) == 0


@pytest.mark.usefixtures("known_rows")
def test_reader_on_an_empty_window_and_bad_arguments(postgres: Database) -> None:
    with postgres.connect() as conn:
        empty = locations.read_points(conn, T0, T0, None)
        assert len(empty) == 0
        with pytest.raises(ValueError, match="timezone-aware"):
            locations.read_points(conn, T0.replace(tzinfo=None), T1, None)
        with pytest.raises(ValueError, match="before it starts"):
            locations.read_points(conn, T1, T0, None)
        with conn.transaction(), pytest.raises(ValueError, match="outside a transaction"):
            locations.read_points(conn, T0, T1, None)


def _random_points(count: int, seed: int = 7) -> Points:
    rng = np.random.default_rng(seed)
    ids = ("a", "a-much-longer-device-name", "δ")  # different widths, one multi-byte
    accuracy = rng.integers(0, 500, count)
    accuracy[rng.random(count) < 0.1] = MISSING
    velocity = rng.integers(0, 120, count)
    velocity[rng.random(count) < 0.3] = MISSING
    battery = rng.integers(0, 101, count)
    battery[rng.random(count) < 0.05] = MISSING
    start = _us(T0)
    timestamp = start + np.sort(rng.integers(0, 86_400 * US_PER_S, count))
    created = timestamp + rng.integers(0, 10 * US_PER_S, count)
    created[rng.random(count) < 0.2] = MISSING_TIME
    return Points.from_columns(
        ids,
        device=rng.integers(0, len(ids), count),
        timestamp=timestamp,
        lat=rng.uniform(-90, 90, count),
        lon=rng.uniform(-180, 180, count),
        accuracy=accuracy,
        velocity=velocity,
        battery=battery,
        created_at=created,
    )


@pytest.mark.parametrize("path", ["arrays", "copy"])
def test_seeded_points_read_back_identically_direct_and_through_pgbouncer(
    path: str, scratch_database: Database, pgbouncer: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small devices come back as arrays, large ones as a streamed COPY: both, exactly.
    monkeypatch.setattr(locations, "_ARRAY_MAX_ROWS", 100_000 if path == "arrays" else 0)
    points = _random_points(30_000)
    progress: list[tuple[int, ...]] = []
    with scratch_database.connect() as conn:
        written = locations.write_points(
            conn,
            points,
            batch_rows=8_000,
            progress=lambda done, total: progress.append((done, total)),
        )
        direct = locations.read_points(conn, T0, T1, None)
        # One device at a time: its answer with its counts in one query (arrays), or counted
        # first and then streamed (copy).
        for code, device in enumerate(points.device_ids):
            one = locations.read_points(conn, T0, T1, device)
            assert one.device_ids == (device,)
            mine = points.take(points.device == code)
            for name in DTYPES.keys() - {"device"}:
                np.testing.assert_array_equal(getattr(one, name), getattr(mine, name), name)
        assert locations.diagnose(conn).index == locations.INDEX_NAME
        nulls = conn.execute(
            "SELECT count(*) - count(accuracy), count(*) - count(created_at), count(*)"
            " FROM public.locations"
        ).fetchone()
        tids = conn.execute("SELECT DISTINCT device_id, tid FROM public.locations").fetchall()
    assert written == len(points)
    # Each row has its device's two-character tid, whatever the widths of its neighbours.
    assert sorted(tids) == [("a", "aa"), ("a-much-longer-device-name", "me"), ("δ", "δδ")]
    assert progress == [(8_000, 30_000), (16_000, 30_000), (24_000, 30_000), (30_000, 30_000)]
    assert nulls == (
        int((points.accuracy == MISSING).sum()),
        int((points.created_at == MISSING_TIME).sum()),
        30_000,
    )
    _assert_same(direct, points)
    # The same database through a PgBouncer in transaction pooling mode.
    bouncer = dataclasses.replace(pgbouncer, dbname=scratch_database.dbname)
    with psycopg.connect(bouncer.url, autocommit=True, prepare_threshold=None) as conn:
        _assert_same(locations.read_points(conn, T0, T1, None), points)


def test_seeding_refuses_to_touch_existing_rows_unless_forced(scratch_database: Database) -> None:
    first, second = _random_points(500, seed=1), _random_points(300, seed=2)
    with scratch_database.connect() as conn:
        locations.write_points(conn, first)
        with pytest.raises(locations.ExistingRowsError):
            locations.write_points(conn, second)
        assert conn.execute("SELECT count(*) FROM public.locations").fetchone() == (500,)
        locations.write_points(conn, second, force=True)
        _assert_same(locations.read_points(conn, T0, T1, None), second)
        ids = conn.execute("SELECT min(id), max(id) FROM public.locations").fetchone()
    assert ids == (1, 300)


def test_seeded_rows_carry_a_tid_as_the_app_sends_it(scratch_database: Database) -> None:
    points = generate(TrackSpec(days=1, devices=2, seed=4)).points
    with scratch_database.connect() as conn:
        locations.write_points(conn, points)
        tids = conn.execute(
            "SELECT device_id, tid, count(*) FROM public.locations GROUP BY 1, 2 ORDER BY 1"
        ).fetchall()
    counts = np.bincount(points.device)
    assert tids == [("phone1", "e1", counts[0]), ("phone2", "e2", counts[1])]


def test_an_unknown_device_is_told_apart_from_a_quiet_one(scratch_database: Database) -> None:
    points = _random_points(300)  # devices "a", "a-much-longer-device-name", "δ"
    with scratch_database.connect() as conn:
        locations.write_points(conn, Points.empty())
        assert locations.unknown_device(conn, "a") == []  # nothing at all
        locations.write_points(conn, points, force=True)
        assert locations.unknown_device(conn, "a") is None
        # The database's collation orders them; the cap keeps one more to say "there are more".
        known = locations.unknown_device(conn, "b")
        assert known is not None
        assert sorted(known) == ["a", "a-much-longer-device-name", "δ"]
        assert len(locations.unknown_device(conn, "b", cap=1) or []) == 2


def test_seeding_an_empty_points_object_creates_the_table(scratch_database: Database) -> None:
    with scratch_database.connect() as conn:
        assert locations.write_points(conn, Points.empty()) == 0
        assert conn.execute("SELECT count(*) FROM public.locations").fetchone() == (0,)


def test_doctor_reports_a_missing_table_and_a_missing_index(scratch_database: Database) -> None:
    with scratch_database.connect() as conn:
        report = locations.diagnose(conn)
        assert not report.table_exists
        assert not report.healthy
        conn.execute(locations.CREATE_TABLE)
        conn.execute(
            'INSERT INTO public.locations (device_id, latitude, longitude, "timestamp")'
            " VALUES ('p', 1, 2, '2024-05-01T10:00Z'), ('p', 1, 2, '2024-05-01T11:00Z')"
        )
        report = locations.diagnose(conn)
        assert report.table_exists
        assert report.index is None
        assert not report.healthy
        assert report.create_index == (
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS locations_device_id_timestamp_idx"
            ' ON public.locations (device_id, "timestamp")'
        )
        assert report.sample == (
            "p",
            dt.datetime(2024, 5, 1, tzinfo=UTC),
            dt.datetime(2024, 5, 2, tzinfo=UTC),
        )
        assert all("Seq Scan" in plan for plan in report.plans.values())
        # Doctor never creates anything in public.
        indexes = conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'locations'"
        ).fetchone()
        assert indexes == (1,)  # the primary key only
        conn.execute(report.create_index.encode())
        conn.execute("ANALYZE public.locations")
        report = locations.diagnose(conn)
        assert report.healthy
        assert report.index == locations.INDEX_NAME


def test_doctor_on_an_empty_table_has_no_plans(scratch_database: Database) -> None:
    with scratch_database.connect() as conn:
        conn.execute(locations.CREATE_TABLE)
        report = locations.diagnose(conn)
    assert report.table_exists
    assert report.sample is None
    assert report.plans == {}


def _binary_value(conn: psycopg.Connection[tuple[object, ...]], query: str) -> bytes | None:
    """The first column of the one row of `query`, in binary form."""
    cursor = conn.cursor(binary=True)
    cursor.execute(query)
    assert cursor.pgresult is not None
    return cursor.pgresult.get_value(0, 0)


def test_the_array_parser_takes_whole_columns_and_refuses_what_it_did_not_count(
    postgres: Database,
) -> None:
    with postgres.connect() as conn:
        column = _binary_value(
            conn, "SELECT array_agg(n::float8) FROM generate_series(1, 100000) n"
        )
        values = locations._array(column, ">f8", 100_000, "lat")
        np.testing.assert_array_equal(values, np.arange(1, 100_001))
        with pytest.raises(psycopg.DataError, match="the 99999 fixes counted"):
            locations._array(column, ">f8", 99_999, "lat")
        # 12 int4 elements take as many bytes as 8 int8 ones: the header tells them apart.
        ints = _binary_value(conn, "SELECT array_agg(n::int4) FROM generate_series(1, 12) n")
        with pytest.raises(psycopg.DataError, match="not a one-dimensional array of 8 values"):
            locations._array(ints, ">i8", 8, "timestamp")
        with_null = _binary_value(conn, "SELECT ARRAY[1.5, NULL, 2.5]::float8[]")
        with pytest.raises(psycopg.DataError, match="lon"):
            locations._array(with_null, ">f8", 3, "lon")
        square = _binary_value(conn, "SELECT ARRAY[[1, 2], [3, 4]]::float8[]")
        with pytest.raises(psycopg.DataError, match="lat"):
            locations._array(square, ">f8", 4, "lat")
        with pytest.raises(psycopg.DataError, match="battery"):
            locations._array(None, ">i4", 1, "battery")


def _copy_generated(
    conn: psycopg.Connection[tuple[object, ...]], rows: int, fail_at: int, expect: int
) -> None:
    """Stream `rows` generated rows in the reader's layout, row `fail_at` dividing by zero."""
    out = {name: np.empty(expect, dtype) for name, dtype in DTYPES.items()}
    query = (
        "COPY (SELECT '2024-01-01'::timestamptz + n * interval '1 s', n::float8, -n::float8,"
        " (n %% 7)::int4, (100 / (%s - n))::int4, 50::int4, '-infinity'::timestamptz"
        " FROM generate_series(1, %s) n) TO STDOUT (FORMAT BINARY)"
    )
    with conn.cursor().copy(query, [fail_at, rows]) as copy:
        locations._RowStream(out, 0, expect).consume(conn, copy)
    np.testing.assert_array_equal(out["lat"], np.arange(1, expect + 1))


def test_the_copy_parser_checks_every_row_arrived_and_surfaces_server_errors(
    postgres: Database,
) -> None:
    with postgres.connect() as conn:
        # 100k rows cross several parsing chunks.
        _copy_generated(conn, rows=100_000, fail_at=0, expect=100_000)
        # An error in the middle of the stream is the server's own error, not a hang.
        with pytest.raises(psycopg.errors.DivisionByZero):
            _copy_generated(conn, rows=100_000, fail_at=80_000, expect=100_000)
        assert conn.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.DataError, match="ended before"):
            _copy_generated(conn, rows=900, fail_at=0, expect=1_000)
        with pytest.raises(psycopg.DataError, match="more rows"):
            _copy_generated(conn, rows=1_001, fail_at=0, expect=1_000)
        assert conn.execute("SELECT 1").fetchone() == (1,)
