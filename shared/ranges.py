"""Computing a range job device-day by device-day: plan the days, reuse the kept ones
whose key and fingerprint match, compute the rest a chunk of days per read (each day with
its own context), keep them, and assemble the range's summary and CSV from the days.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.day_results import DayStore, KeptDay, day_key, scan_buckets
from shared.db import ConnectionSource
from shared.storage import CSV_TYPE, ObjectStore, sha256_of

if TYPE_CHECKING:
    from shared.engine import Analysis, EngineParams, Window
    from shared.engine.assembly import DayPart

CHUNK_DAYS = 31
"""Days computed from one read: a month of fixes plus a day of context on each side."""

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _utc(us: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=us)


@dataclass(frozen=True)
class RangePlan:
    """A range's device-days: the key, the fingerprint of each (device, day) with rows in
    its read now, and the kept days that still hold."""

    key: str
    window: Window
    device_id: str | None
    params: EngineParams
    reads: dict[dt.date, tuple[int, int]]
    cells: dict[tuple[str, dt.date], str]
    holding: dict[tuple[str, dt.date], KeptDay]

    def fresh(self) -> list[tuple[str, dt.date]]:
        """The device-days to compute: missing, or kept under another fingerprint."""
        return sorted(cell for cell in self.cells if cell not in self.holding)

    def read_times(self, dates: list[dt.date]) -> dict[dt.date, tuple[dt.datetime, ...]]:
        """The read range of each of `dates` as UTC datetimes."""
        return {date: (_utc(self.reads[date][0]), _utc(self.reads[date][1])) for date in dates}


@dataclass(frozen=True)
class RangeResult:
    """The range's summary, CSV and chart series, and what the days did."""

    summary: Any
    csv: bytes
    series: bytes
    csv_rows: int
    over_cap: bool
    reused: int
    computed: int


@dataclass(frozen=True)
class RangeComputation:
    """What a range needs: the points' database, the kept days, the object store."""

    connection: ConnectionSource
    days: DayStore
    objects: ObjectStore
    max_csv_rows: int
    max_day_read_rows: int
    """MAX_DAY_READ_ROWS: the most fixes one device-day's read may hold, context included."""
    _bodies: dict[tuple[str, dt.date], bytes] = field(default_factory=dict)
    """The CSVs of the device-days computed by this run."""
    _rows: dict[tuple[str, dt.date], Analysis] = field(default_factory=dict)
    """Their rows, for the range's CSV."""

    def plan(
        self,
        first: dt.date,
        last: dt.date,
        device_id: str | None,
        timezone: str,
        parameters: dict[str, Any],
        params: EngineParams,
    ) -> RangePlan:
        """The range's device-days, their fingerprints now, and which kept ones hold."""
        from shared.engine import day_window, read_range
        from shared.engine.assembly import ASSEMBLY_VERSION

        window = day_window(first, last, timezone)
        start, end = read_range(window, params)
        key = day_key(parameters, timezone, ASSEMBLY_VERSION)
        # Fingerprints first, then the reads: a fix landing in between is in the day's
        # result but not its fingerprint, which only makes the next job compute it again.
        # The kept days load while the scan runs (both wait on the database).
        with ThreadPoolExecutor(1, thread_name_prefix="kept") as pool:
            kept_days = pool.submit(self.days.kept, key, first, last, device_id)
            with self.connection() as conn:
                buckets = scan_buckets(conn, _utc(start), _utc(end), device_id)
            kept = kept_days.result()
        reads = {
            date: read_range(day_window(date, date, timezone), params) for date in window.dates
        }
        cells = {
            (device, date): buckets.fingerprint(device, *reads[date])
            for device in buckets.devices()
            for date in window.dates
        }
        holding = {
            cell: kept[cell]
            for cell, fp in cells.items()
            if cell in kept and kept[cell].fingerprint == fp
        }
        return RangePlan(key, window, device_id, params, reads, cells, holding)

    def finish(self, plan: RangePlan) -> RangeResult:
        """Compute the plan's missing or stale days here, keep them, and assemble."""
        from shared.engine.assembly import DayPart, assemble

        fresh = plan.fresh()
        stale_dates = sorted({date for _, date in fresh})
        computed = self._compute(plan, stale_dates, set(fresh))
        self.days.keep(plan.key, computed.values(), plan.read_times(stale_dates))
        days = plan.holding | computed
        parts = [DayPart.model_validate_json(day.part) for day in days.values() if day.part]
        summary = assemble(parts, plan.window, plan.params)
        rows = sum(day.csv_rows for day in days.values())
        ordered = sorted(cell for cell in days if days[cell].csv_rows)
        over = rows > self.max_csv_rows
        if over:
            csv = self._index(ordered, days)
            note = (
                f"{rows} CSV rows exceed MAX_CSV_ROWS ({self.max_csv_rows}): the CSV lists "
                "each device-day's CSV instead of holding the rows"
            )
            summary = summary.model_copy(update={"notes": [*summary.notes, note]})
        else:
            # Compute writes objects it cannot read back: the rows of days this run did
            # not compute are made again (the engine is cheap next to the whole range).
            again = [cell for cell in ordered if cell not in self._bodies]
            self._compute(plan, sorted({date for _, date in again}), set(again), keep=False)
            csv = self._joined(ordered, parts, plan)
        series = range_series(parts, plan.params)
        return RangeResult(summary, csv, series, rows, over, len(plan.holding), len(computed))

    def compute_days(self, plan: RangePlan, cells: list[tuple[str, dt.date]]) -> None:
        """Compute and keep these device-days of `plan` (as a fanned-out event does)."""
        dates = sorted({date for _, date in cells})
        computed = self._compute(plan, dates, set(cells))
        self.days.keep(plan.key, computed.values(), plan.read_times(dates))

    def _compute(
        self,
        plan: RangePlan,
        dates: list[dt.date],
        fresh: set[tuple[str, dt.date]],
        *,
        keep: bool = True,
    ) -> dict[tuple[str, dt.date], KeptDay]:
        """Compute the `fresh` device-days (on `dates`), a chunk of days per read (of the
        one device when only one is fresh); without `keep`, only their CSV rows."""
        from shared.engine import analyze, day_window, read_range
        from shared.engine.assembly import day_parts, day_points
        from shared.locations import PointLimit, read_points

        out: dict[tuple[str, dt.date], KeptDay] = {}
        devices = {device for device, _ in fresh}
        device_id = plan.device_id if len(devices) > 1 else next(iter(devices), None)
        timezone, params = plan.window.timezone, plan.params
        for chunk in _chunks(dates):
            lo, hi = plan.reads[chunk[0]][0], plan.reads[chunk[-1]][1]
            # The days' reads share their context: a run of n days reads n + 2 days' worth.
            limit = PointLimit(
                _utc(lo), _utc(hi), sys.maxsize, self.max_day_read_rows * (len(chunk) + 2)
            )
            with self.connection() as conn:
                points = read_points(conn, _utc(lo), _utc(hi), device_id, limit)
            for date in chunk:
                day = day_window(date, date, timezone)
                analysis = analyze(day_points(points, *read_range(day, params)), day, params)
                parts = {part.device_id: part for part in day_parts(analysis)}
                for device, when in plan.cells:
                    if when != date or (device, date) not in fresh:
                        continue
                    if not keep:
                        self._rows_of(device, date, analysis)
                        continue
                    out[(device, date)] = self._keep_day(
                        plan.key,
                        device,
                        date,
                        plan.cells[(device, date)],
                        parts.get(device),
                        analysis,
                    )
        return out

    def _keep_day(
        self,
        key: str,
        device: str,
        date: dt.date,
        fingerprint: str,
        part: DayPart | None,
        analysis: Analysis,
    ) -> KeptDay:
        """Upload the device-day's CSV and describe it for keeping."""
        rows = self._rows_of(device, date, analysis)
        if part is None or rows is None:
            return KeptDay(device, date, fingerprint, None, "", 0)
        body = self._bodies[(device, date)]
        csv_key = f"days/{key[:16]}/{_slug(device)}/{date:%Y%m%d}-{fingerprint[:12]}.csv"
        self.objects.upload(csv_key, io.BytesIO(body), len(body), CSV_TYPE)
        return KeptDay(device, date, fingerprint, part.model_dump_json(), csv_key, rows)

    def _rows_of(self, device: str, date: dt.date, analysis: Analysis) -> int | None:
        """The device-day's CSV (kept in this run's bodies) and its rows; None for none."""
        from shared.engine.assembly import device_rows
        from shared.export import csv_bytes

        rows = device_rows(analysis, device)
        if rows is None:
            return None
        self._bodies[(device, date)] = csv_bytes(rows)
        self._rows[(device, date)] = rows
        return len(rows.points)

    def _joined(
        self, cells: list[tuple[str, dt.date]], parts: list[DayPart], plan: RangePlan
    ) -> bytes:
        """The range's CSV: one header, then each device-day's rows (device, then day),
        with the range's trip and stay ids, each device's running path, and a day's first
        step given back its share before midnight, as a single pass writes them."""
        from shared.engine.assembly import numbering
        from shared.export import CSV_COLUMNS, csv_bytes, header

        numbers = numbering(parts, plan.window)
        leads = {(p.device_id, p.date): (p.lead_km, p.lead_us) for p in parts}
        out = bytearray(header(CSV_COLUMNS))
        running: dict[str, float] = {}
        for device, date in cells:
            rows = self._rows[(device, date)]
            trips, stays = numbers.get(device, ({}, {}))
            segment = rows.segment_km.copy()
            lead_km, lead_us = leads.get((device, date), (0.0, None))
            if lead_us is not None and date != plan.window.dates[0]:
                segment[rows.points.timestamp == lead_us] += lead_km
            cumulative = np.cumsum(segment) + running.get(device, 0.0)
            if len(cumulative):
                running[device] = float(cumulative[-1])
            body = csv_bytes(
                replace(
                    rows,
                    segment_km=segment,
                    cumulative_km=cumulative,
                    trip=_renumber(rows.trip, date, trips),
                    stay=_renumber(rows.stay, date, stays),
                )
            )
            out += body[body.index(b"\n") + 1 :]
        return bytes(out)

    def _index(self, cells: list[tuple[str, dt.date]], days: dict[Any, KeptDay]) -> bytes:
        """The CSV of a range over MAX_CSV_ROWS: each device-day's CSV object and rows."""
        lines = ["date,device_id,rows,csv_key"]
        lines += [
            f"{date},{device},{days[(device, date)].csv_rows},{days[(device, date)].csv_key}"
            for device, date in cells
        ]
        return ("\n".join(lines) + "\n").encode()


def range_series(parts: list[DayPart], params: EngineParams) -> bytes:
    """The report's chart data of a range (the shape `report.series_of` gives a day), from
    its days' samples: per device, in time order, at most `report.MAX_POINTS` fixes (evenly
    spread, the farthest kept)."""
    from shared.report import KM_PER_DEG, MAX_POINTS

    cos_home = math.cos(math.radians(params.home_latitude))
    devices: dict[str, dict[str, list[Any]]] = {}
    for part in sorted(parts, key=lambda p: (p.device_id, p.date)):
        columns = devices.setdefault(
            part.device_id, {k: [] for k in ("t", "km", "lat", "lon", "trip")}
        )
        for name in columns:
            columns[name] += getattr(part.series, name)
    out = {}
    for device, columns in devices.items():
        km = np.array(columns["km"])
        keep = np.arange(len(km))
        if len(km) > MAX_POINTS:
            keep = np.union1d(
                np.linspace(0, len(km) - 1, MAX_POINTS - 1).astype(np.int64), np.argmax(km)
            )
        lat, lon = np.array(columns["lat"])[keep], np.array(columns["lon"])[keep]
        out[device] = {
            "t": np.array(columns["t"], dtype=np.int64)[keep].tolist(),
            "km": km[keep].tolist(),
            "east": np.round((lon - params.home_longitude) * KM_PER_DEG * cos_home, 4).tolist(),
            "north": np.round((lat - params.home_latitude) * KM_PER_DEG, 4).tolist(),
            "trip": np.array(columns["trip"], dtype=np.int64)[keep].tolist(),
        }
    return json.dumps({"version": 1, "devices": out}).encode()


def upload_csv(objects: ObjectStore, key: str, body: bytes) -> tuple[str, int]:
    """Upload the range's CSV; its digest and size."""
    with tempfile.TemporaryFile() as file:
        file.write(body)
        digest, size = sha256_of(file)
        objects.upload(key, file, size, CSV_TYPE)
    return digest, size


def _renumber(ids: Any, date: dt.date, numbers: dict[tuple[dt.date, int], int]) -> Any:
    """Per-fix ids of a day's analysis (0 for none) as the range numbers them."""
    out = ids.copy()
    for local in np.unique(ids[ids > 0]).tolist():
        out[ids == local] = numbers.get((date, local), local)
    return out


def _chunks(dates: list[dt.date], size: int = CHUNK_DAYS) -> list[list[dt.date]]:
    """Runs of consecutive `dates` (sorted), each at most `size` long."""
    chunks: list[list[dt.date]] = []
    for date in dates:
        if chunks and len(chunks[-1]) < size and date - chunks[-1][-1] == dt.timedelta(days=1):
            chunks[-1].append(date)
        else:
            chunks.append([date])
    return chunks


def day_runs(cells: list[tuple[str, dt.date]], size: int) -> list[tuple[str, dt.date, dt.date]]:
    """Device-days as (device, first, last): runs of consecutive days of one device, each
    at most `size` long (what one `day.requested` event asks for)."""
    by_device: dict[str, list[dt.date]] = {}
    for device, date in sorted(cells):
        by_device.setdefault(device, []).append(date)
    return [
        (device, run[0], run[-1])
        for device, dates in by_device.items()
        for run in _chunks(dates, size)
    ]


def _slug(device: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in device)[:60]
