"""The nightly day summaries: shortly after local midnight, yesterday is computed for every
device that reported and `day.summarized` is published per device with its headline
figures, for Home Assistant automations, notifiers and dashboards to subscribe to.

The days are computed and kept like a range job's device-days, under the key of the
current settings (so the range jobs and the late-fix check reuse them). Each device's
event has an id made of its day, key and fingerprint, and is recorded once sent: a second
run over the same data computes nothing and sends nothing, and a run after late fixes
sends the corrected figures under a new id. No device reported: no computation, no event.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from cloudevents.http import CloudEvent
from psycopg import sql
from psycopg.types.json import Jsonb

from shared import events
from shared.config import (
    AnalysisSettings,
    DatabaseSettings,
    EventSettings,
    JobSettings,
    StorageSettings,
)
from shared.contracts import DaySummarized, headline
from shared.day_results import scan_buckets
from shared.db import Connection, ConnectionSource
from shared.engine.params import EngineParams
from shared.ranges import RangeComputation


@dataclass
class NightlyReport:
    """What one nightly run did for its day."""

    day: dt.date
    reported: list[str] = field(default_factory=list)
    """The devices with fixes inside the day."""
    computed: int = 0
    """Device-days computed (the others were kept already and still hold)."""
    published: list[str] = field(default_factory=list)
    """Devices whose `day.summarized` was sent by this run."""
    publish_failures: list[tuple[str, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        """One human-readable line per action."""
        if not self.reported:
            return [f"{self.day}: no device reported; nothing computed, nothing published"]
        lines = [
            f"{self.day}: {len(self.reported)} device(s) reported"
            f" ({', '.join(self.reported)}); computed {self.computed} device-day(s)",
            f"published day.summarized for {len(self.published)} device(s)"
            + (f" ({', '.join(self.published)})" if self.published else ""),
        ]
        lines += [
            f"could not publish for {device}: {error}" for device, error in self.publish_failures
        ]
        return lines


def summary_event_id(device_id: str, day: dt.date, key: str, fingerprint: str) -> str:
    """The id of a device-day's `day.summarized`: the same for the same rows and settings."""
    digest = hashlib.sha256(f"{key}:{fingerprint}".encode()).hexdigest()[:16]
    return f"{day}.{device_id}.{digest}"


@dataclass(frozen=True)
class NightlySummaries:
    """The nightly run over the kept days (`ranges`) and the jobs schema."""

    ranges: RangeComputation
    connection: ConnectionSource
    """Lends a connection to the jobs schema."""
    schema: str

    def run(
        self,
        day: dt.date,
        timezone: str,
        params: EngineParams,
        publish: Callable[[CloudEvent], None] | None,
        source: str,
    ) -> NightlyReport:
        """Compute `day` in `timezone` for every device that reported and publish its
        figures (`publish` None: compute and keep only)."""
        from shared.engine import day_window

        report = NightlyReport(day)
        window = day_window(day, day, timezone)
        with self.ranges.connection() as conn:
            reported = scan_buckets(conn, _utc(window.start_us), _utc(window.end_us), None)
        report.reported = reported.devices()
        if not report.reported:
            return report
        parameters = params.model_dump(mode="json")
        plan = self.ranges.plan(day, day, None, timezone, parameters, params)
        outcome = self.ranges.finish(plan)
        report.computed = outcome.computed
        devices: dict[str, Any] = outcome.summary.model_dump(mode="json")["devices"]
        for device in report.reported:
            if device not in devices:
                continue
            fingerprint = plan.cells[(device, day)]
            event_id = summary_event_id(device, day, plan.key, fingerprint)
            if self._announced(plan.key, device, day) == event_id:
                continue
            data = DaySummarized(
                device_id=device, day=day, timezone=timezone, figures=headline(devices[device])
            )
            event = events.new_event(
                events.DAY_SUMMARIZED, data, source=source, subject=device, event_id=event_id
            )
            if publish is None:
                continue
            try:
                publish(event)
            except events.PublishError as exc:
                report.publish_failures.append((device, str(exc)))
                continue
            self._record(plan.key, device, day, (timezone, parameters, fingerprint, event_id))
            report.published.append(device)
        return report

    def _announced(self, key: str, device: str, day: dt.date) -> str | None:
        """The id of the device-day's last `day.summarized` sent, if any."""
        query = sql.SQL(
            "SELECT event_id FROM {table} WHERE key_hash = %s AND device_id = %s AND day = %s"
            " AND published_at IS NOT NULL"
        ).format(table=sql.Identifier(self.schema, "day_summaries"))
        with self.connection() as conn:
            row = conn.execute(query, (key, device, day)).fetchone()
        return str(row[0]) if row else None

    def _record(
        self, key: str, device: str, day: dt.date, summary: tuple[str, Any, str, str]
    ) -> None:
        """Record the device-day's `day.summarized` as sent: (time zone, parameters,
        fingerprint, event id)."""
        query = sql.SQL(
            "INSERT INTO {table} (key_hash, device_id, day, timezone, parameters, fingerprint,"
            " event_id, published_at) VALUES (%s, %s, %s, %s, %s, %s, %s, now())"
            " ON CONFLICT (key_hash, device_id, day) DO UPDATE SET"
            " fingerprint = excluded.fingerprint, event_id = excluded.event_id,"
            " published_at = excluded.published_at"
        ).format(table=sql.Identifier(self.schema, "day_summaries"))
        timezone, parameters, fingerprint, event_id = summary
        with self.connection() as conn:
            conn.execute(
                query, (key, device, day, timezone, Jsonb(parameters), fingerprint, event_id)
            )


def yesterday(timezone: str, now: dt.datetime | None = None) -> dt.date:
    """The local day before today in `timezone`."""
    return local_today(timezone, now) - dt.timedelta(days=1)


def local_today(timezone: str, now: dt.datetime | None = None) -> dt.date:
    """Today's date in `timezone` (at `now`, default the clock)."""
    return (now or dt.datetime.now(dt.UTC)).astimezone(ZoneInfo(timezone)).date()


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _utc(us: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=us)


def summarize_yesterday(
    conn: Connection,
    database: DatabaseSettings,
    jobs: JobSettings,
    storage: StorageSettings,
    sink: EventSettings,
    analysis: AnalysisSettings,
    day: dt.date | None = None,
) -> NightlyReport:
    """The nightly run on `conn` (`otel-worker nightly`): `day` (default yesterday in
    HOME_TIMEZONE) under the current settings, published to K_SINK when set."""
    from shared.jobs import JobStore
    from shared.supersession import publisher_of, ranges_on

    store = JobStore(conn, jobs, schema=database.jobs_schema)
    timezone = analysis.home_timezone
    nightly = NightlySummaries(ranges_on(store, storage), store.connection, store.schema)
    publisher = publisher_of(sink)
    return nightly.run(
        day or yesterday(timezone),
        timezone,
        analysis.engine_params(),
        publisher.publish if publisher else None,
        f"{sink.event_source.rstrip('/')}/nightly",
    )
