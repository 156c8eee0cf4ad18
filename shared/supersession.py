"""Late fixes: completed jobs whose figures late-arriving fixes moved are superseded.

A phone uploads buffered fixes hours after it took them. The check runs every few minutes
(`otel-worker refresh`, a CronJob beside the sweep) over the kept device-days of the last
REFRESH_DAYS local days:

1. it re-takes the fingerprint of each kept day's read range, one index range scan per
   device, and finds the days whose rows changed since they were computed;
2. a completed job still standing is a candidate when one of its kept days is stale, or was
   recomputed after the job finished (by a later job, or the nightly run);
3. for each candidate it plans the job's range as a range job does: only the stale or
   missing device-days are computed again (and kept), the others are reused, and the
   range is assembled;
4. when the assembled headline figures differ from the job's, a new job for the same
   request replaces it (`superseded_by` on the old, `supersedes` on the new, in one
   transaction: racing checks make one successor) and `job.superseded` is published; when
   they do not (an exact duplicate fix, a fix beyond a day's edge) the job is marked
   checked and left alone.

A job none of whose days is kept under its key (a one-day job computed before the nightly
run kept its day) is not checked until one is.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from cloudevents.http import CloudEvent
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from shared import events
from shared.config import DatabaseSettings, EventSettings, JobSettings, StorageSettings
from shared.contracts import Headline, JobSuperseded, Requester, headline
from shared.day_results import DayStore, day_key, scan_buckets
from shared.db import Connection
from shared.engine.params import EngineParams
from shared.errors import DependencyUnavailable, one_line
from shared.jobs import Job, JobStatus, JobStore
from shared.nightly import NightlySummaries, local_today
from shared.ranges import RangeComputation
from shared.storage import ObjectStore
from shared.submission import queued_event

Cell = tuple[str, str, dt.date]
"""A kept device-day: (key hash, device, local day)."""

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US = dt.timedelta(microseconds=1)


@dataclass(frozen=True)
class KeptCell:
    """What the check needs of a kept device-day: its fingerprint, read range, when."""

    fingerprint: str
    read_from: dt.datetime
    read_to: dt.datetime
    computed_at: dt.datetime


@dataclass(frozen=True)
class Standing:
    """A completed job still standing, as far as telling a candidate needs: its request
    and when its figures were last known true (completed, or checked since)."""

    id: uuid.UUID
    date_from: dt.date
    date_to: dt.date
    device_id: str | None
    timezone: str
    parameters: dict[str, Any]
    seen: dt.datetime


@dataclass
class RefreshReport:
    """What one late-fix check did."""

    since: dt.date
    kept: int = 0
    """Kept device-days of the refresh window looked at."""
    stale: list[Cell] = field(default_factory=list)
    """Kept device-days whose rows changed since they were computed."""
    recomputed: int = 0
    """Device-days computed again (and kept) while re-checking jobs."""
    still_true: list[uuid.UUID] = field(default_factory=list)
    superseded: list[tuple[Job, Job]] = field(default_factory=list)
    """(old, new) for each job replaced."""
    resummarized: list[tuple[str, dt.date]] = field(default_factory=list)
    """(device, day) whose nightly `day.summarized` was sent again with corrected figures."""
    publish_failures: list[tuple[str, str]] = field(default_factory=list)
    """(what, error): `job <id>` or `<device> <day>` whose event could not be sent."""
    failures: list[tuple[str, str]] = field(default_factory=list)
    """(what, error): `job <id>` or `day <day>` that could not be re-checked (the database
    or the object store failed): the next run tries again."""

    def lines(self) -> list[str]:
        """One human-readable line per action, and one per job acted on."""
        lines = [
            f"checked {self.kept} kept device-day(s) since {self.since}:"
            f" {len(self.stale)} changed since computed"
        ]
        lines += [f"  {device} {day}" for _, device, day in sorted(set(self.stale))]
        lines.append(
            f"recomputed {self.recomputed} device-day(s); {len(self.still_true)} job(s) still"
            f" true, {len(self.superseded)} superseded"
        )
        lines += [f"  {old.id} superseded by {new.id}" for old, new in self.superseded]
        if self.resummarized:
            lines.append(f"day.summarized sent again for {len(self.resummarized)} device-day(s)")
            lines += [f"  {device} {day}" for device, day in self.resummarized]
        if self.publish_failures:
            lines.append(f"could not publish {len(self.publish_failures)} event(s)")
            lines += [f"  {what}: {error}" for what, error in self.publish_failures]
        if self.failures:
            lines.append(f"could not re-check {len(self.failures)} item(s); the next run will")
            lines += [f"  {what}: {error}" for what, error in self.failures]
        return lines


def superseded_event(
    old: Job, new: Job, before: Headline, after: Headline, source: str
) -> CloudEvent:
    """The `job.superseded` event; its id names the old job, so a repeat is recognisable."""
    requester = (
        Requester(source=old.requester_source, id=old.requester_id)
        if old.requester_source and old.requester_id
        else None
    )
    data = JobSuperseded(
        old_job_id=old.id,
        new_job_id=new.id,
        date=old.date_from,
        end_date=old.date_to,
        device_id=old.device_id,
        timezone=old.timezone,
        requester=requester,
        old=before,
        new=after,
    )
    return events.new_event(
        events.JOB_SUPERSEDED,
        data,
        source=source,
        subject=str(old.id),
        event_id=f"{old.id}.superseded",
    )


@dataclass(frozen=True)
class LateFixCheck:
    """The late-fix check over the jobs store, the kept days and the points' database."""

    jobs: JobStore
    ranges: RangeComputation
    refresh_days: int

    def run(
        self,
        today: dt.date,
        publish: Callable[[CloudEvent], None] | None,
        source: str,
        queued: Callable[[Job], None] | None = None,
    ) -> RefreshReport:
        """One check of the REFRESH_DAYS before `today` (inclusive): recompute what late
        fixes changed and supersede the jobs whose figures moved. `publish` sends
        `job.superseded`; `queued` announces each new job (`job.queued`)."""
        since = today - dt.timedelta(days=self.refresh_days)
        report = RefreshReport(since)
        kept = self._kept(since)
        report.kept = len(kept)
        stale = self._stale(kept)
        report.stale = sorted(stale)
        for standing in self._standing(since):
            key = day_key(standing.parameters, standing.timezone, _engine_version())
            cells = [
                cell
                for cell in kept
                if cell[0] == key
                and standing.date_from <= cell[2] <= standing.date_to
                and standing.device_id in (None, cell[1])
            ]
            if not any(cell in stale or kept[cell].computed_at > standing.seen for cell in cells):
                continue
            job = self.jobs.get(standing.id)  # the whole row (its result) only now
            if job is None or job.status != JobStatus.COMPLETED or job.superseded_by:
                continue
            try:
                self._recheck(job, report, publish, queued, source)
            except (DependencyUnavailable, psycopg.Error) as exc:
                # Nothing is marked: the job stays a candidate for the next run.
                report.failures.append((f"job {job.id}", one_line(str(exc), 300)))
        if publish is not None:
            self._resummarize(since, stale, publish, source, report)
        return report

    def _resummarize(
        self,
        since: dt.date,
        stale: set[Cell],
        publish: Callable[[CloudEvent], None],
        source: str,
        report: RefreshReport,
    ) -> None:
        """Send the nightly `day.summarized` again for the days whose rows changed since
        it was sent (late fixes): stale now, or recomputed since (by a job re-check)."""
        query = sql.SQL(
            "SELECT s.key_hash, s.device_id, s.day, s.timezone, s.parameters,"
            " s.fingerprint IS DISTINCT FROM r.fingerprint FROM {summaries} s"
            " LEFT JOIN {days} r USING (key_hash, device_id, day)"
            " WHERE s.day >= %s AND s.published_at IS NOT NULL"
        ).format(
            summaries=sql.Identifier(self.jobs.schema, "day_summaries"),
            days=sql.Identifier(self.jobs.schema, "day_results"),
        )
        with self.jobs.connection() as conn:
            rows = conn.execute(query, (since,)).fetchall()
        days = {
            (day, timezone, json.dumps(parameters, sort_keys=True))
            for key, device, day, timezone, parameters, moved in rows
            if moved or (key, device, day) in stale
        }
        nightly = NightlySummaries(self.ranges, self.jobs.connection, self.jobs.schema)
        for day, timezone, parameters in sorted(days):
            params = EngineParams.model_validate_json(parameters)
            try:
                again = nightly.run(day, timezone, params, publish, source)
            except (DependencyUnavailable, psycopg.Error) as exc:
                report.failures.append((f"day {day}", one_line(str(exc), 300)))
                continue
            report.recomputed += again.computed
            report.resummarized += [(device, day) for device in again.published]
            report.publish_failures += [
                (f"{device} {day}", error) for device, error in again.publish_failures
            ]

    def _recheck(
        self,
        job: Job,
        report: RefreshReport,
        publish: Callable[[CloudEvent], None] | None,
        queued: Callable[[Job], None] | None,
        source: str,
    ) -> None:
        """Recompute the job's stale days, assemble, and supersede it if a figure moved."""
        assert job.result is not None
        params = EngineParams.model_validate(job.parameters)
        # A computation of its own: the day CSVs it holds for joining go with it.
        ranges = dataclasses.replace(self.ranges, _bodies={})
        plan = ranges.plan(
            job.date_from, job.date_to, job.device_id, job.timezone, job.parameters, params
        )
        outcome = ranges.finish(plan)
        report.recomputed += outcome.computed
        before = headline(job.result)
        after = headline(outcome.summary.model_dump(mode="json"))
        if before == after:
            self._checked(job.id)
            report.still_true.append(job.id)
            return
        new = self._supersede(job)
        if new is None:
            return  # another check replaced it first
        report.superseded.append((job, new))
        try:
            if publish is not None:
                publish(superseded_event(job, new, before, after, source))
            if queued is not None:
                queued(new)
        except events.PublishError as exc:
            report.publish_failures.append((f"job {job.id}", str(exc)))

    def _kept(self, since: dt.date) -> dict[Cell, KeptCell]:
        query = sql.SQL(
            "SELECT key_hash, device_id, day, fingerprint, read_from, read_to, computed_at"
            " FROM {days} WHERE day >= %s"
        ).format(days=sql.Identifier(self.jobs.schema, "day_results"))
        with self.jobs.connection() as conn:
            rows = conn.execute(query, (since,)).fetchall()
        return {(row[0], row[1], row[2]): KeptCell(*row[3:]) for row in rows}

    def _stale(self, kept: dict[Cell, KeptCell]) -> set[Cell]:
        """The kept days whose rows changed: one bucket scan per device over the span of
        its kept days' reads, through the (device_id, timestamp) index."""
        spans: dict[str, tuple[dt.datetime, dt.datetime]] = {}
        for (_, device, _), cell in kept.items():
            lo, hi = spans.get(device, (cell.read_from, cell.read_to))
            spans[device] = (min(lo, cell.read_from), max(hi, cell.read_to))
        stale: set[Cell] = set()
        with self.ranges.connection() as conn:
            for device, (lo, hi) in spans.items():
                buckets = scan_buckets(conn, lo, hi, device)
                stale |= {
                    cell
                    for cell, kept_cell in kept.items()
                    if cell[1] == device
                    and buckets.fingerprint(
                        device,
                        (kept_cell.read_from - _EPOCH) // _US,
                        (kept_cell.read_to - _EPOCH) // _US,
                    )
                    != kept_cell.fingerprint
                }
        return stale

    def _standing(self, since: dt.date) -> list[Standing]:
        """Completed jobs not yet superseded that reach into the refresh window: what
        telling a candidate takes, not their results (a year's summary is large)."""
        query = sql.SQL(
            "SELECT id, date_from, date_to, device_id, timezone, parameters,"
            " greatest(completed_at, figures_checked_at) FROM {jobs}"
            " WHERE status = 'completed' AND superseded_by IS NULL AND date_to >= %s"
            " ORDER BY queued_at"
        ).format(jobs=self._jobs)
        with self.jobs.connection() as conn:
            return [Standing(*row) for row in conn.execute(query, (since,)).fetchall()]

    @property
    def _jobs(self) -> sql.Identifier:
        return sql.Identifier(self.jobs.schema, "jobs")

    def _checked(self, job_id: uuid.UUID) -> None:
        query = sql.SQL("UPDATE {jobs} SET figures_checked_at = now() WHERE id = %s").format(
            jobs=self._jobs
        )
        with self.jobs.connection() as conn:
            conn.execute(query, (job_id,))

    def _supersede(self, old: Job) -> Job | None:
        """Create the job replacing `old` and name each other, in one transaction; None
        when `old` is no longer a standing completed job (another check replaced it)."""
        lock = sql.SQL(
            "SELECT 1 FROM {jobs} WHERE id = %(old)s AND status = 'completed'"
            " AND superseded_by IS NULL FOR UPDATE"
        ).format(jobs=self._jobs)
        insert = sql.SQL(
            "INSERT INTO {jobs} (date_from, date_to, device_id, timezone, parameters,"
            " idempotency_key, requester_source, requester_id, max_attempts, supersedes)"
            " VALUES (%(date_from)s, %(date_to)s, %(device_id)s, %(timezone)s,"
            " %(parameters)s, %(key)s, %(source)s, %(requester)s, %(max_attempts)s, %(old)s)"
            " RETURNING {columns}"
        ).format(jobs=self._jobs, columns=_COLUMNS)
        mark = sql.SQL(
            "UPDATE {jobs} SET superseded_by = %(new)s, updated_at = now() WHERE id = %(old)s"
        ).format(jobs=self._jobs)
        params = {
            "old": old.id,
            "date_from": old.date_from,
            "date_to": old.date_to,
            "device_id": old.device_id,
            "timezone": old.timezone,
            "parameters": Jsonb(old.parameters),
            "key": f"superseding:{old.id}",
            "source": old.requester_source,
            "requester": old.requester_id,
            "max_attempts": self.jobs.settings.job_max_attempts,
        }
        with self.jobs.connection() as conn, conn.transaction():
            if conn.execute(lock, params).fetchone() is None:
                return None
            with conn.cursor(row_factory=dict_row) as cursor:
                row = cursor.execute(insert, params).fetchone()
            assert row is not None
            new = Job.model_validate(row)
            conn.execute(mark, {"old": old.id, "new": new.id})
        assert new.status == JobStatus.QUEUED
        return new


_COLUMNS = sql.SQL(", ").join(sql.Identifier(name) for name in Job.model_fields)


def _engine_version() -> int:
    from shared.engine.assembly import ASSEMBLY_VERSION

    return ASSEMBLY_VERSION


def check_late_fixes(
    conn: Connection,
    database: DatabaseSettings,
    jobs: JobSettings,
    storage: StorageSettings,
    sink: EventSettings,
    timezone: str,
) -> RefreshReport:
    """One late-fix check on `conn` (`otel-worker refresh`), publishing to K_SINK when set.
    The refresh window ends today in `timezone` (HOME_TIMEZONE)."""
    store = JobStore(conn, jobs, schema=database.jobs_schema)
    source = f"{sink.event_source.rstrip('/')}/refresh"
    check = LateFixCheck(store, ranges_on(store, storage), jobs.refresh_days)
    publisher = publisher_of(sink)
    if publisher is None:
        return check.run(local_today(timezone), None, source)

    def queued(job: Job) -> None:
        publisher.publish(queued_event(job, source))
        store.mark_published(job.id)

    return check.run(local_today(timezone), publisher.publish, source, queued)


def ranges_on(store: JobStore, storage: StorageSettings) -> RangeComputation:
    """Range computation through the store's connection (points and kept days alike)."""
    return RangeComputation(
        connection=store.connection,
        days=DayStore(store.connection, store.schema),
        objects=ObjectStore(storage),
        max_csv_rows=storage.max_csv_rows,
        max_day_read_rows=storage.max_day_read_rows,
    )


def publisher_of(sink: EventSettings) -> events.Publisher | None:
    """The broker at K_SINK, or None when no sink is set."""
    if sink.k_sink is None:
        return None
    return events.Publisher(
        str(sink.k_sink), attempts=sink.publish_attempts, timeout=sink.publish_timeout_seconds
    )


def refresh_once(
    database: DatabaseSettings,
    jobs: JobSettings,
    storage: StorageSettings,
    sink: EventSettings,
    timezone: str,
) -> RefreshReport:
    """One late-fix check on a connection of its own (the dev supervisor's periodic run)."""
    from shared.db import connect

    with connect(database) as conn:
        return check_late_fixes(conn, database, jobs, storage, sink, timezone)
