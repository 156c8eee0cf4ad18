"""Computing a queued job: claim, read, analyse, upload, finish, and say what happened.

Every outcome maps to the answer the broker needs: 2xx only once the result (or the
failure) is committed, 409 while another attempt holds the lease, 5xx when a dependency
is down so the broker retries, 400 for an event that can never succeed. A job is marked
completed only after both objects are uploaded, so completed implies the CSV exists.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import tempfile
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import psycopg
from cloudevents.http import CloudEvent
from pydantic import ValidationError

from shared import events, faults, telemetry
from shared.config import StorageSettings
from shared.contracts import DAYS_PER_EVENT, DayRequested
from shared.db import ConnectionSource, DatabaseUnavailable
from shared.engine.params import EngineParams
from shared.errors import OtelWorkerError, one_line
from shared.job_view import outcome_event
from shared.jobs import ClaimResult, Job, JobStatus, JobStore, LeaseLost
from shared.storage import (
    CSV_TYPE,
    GPX_TYPE,
    JSON_TYPE,
    ObjectStore,
    StagedCopy,
    StorageUnavailable,
    result_keys,
    sha256_of,
    stage_compat_copy,
)

if TYPE_CHECKING:
    from shared.engine import Analysis
    from shared.locations import TooManyDeviceRows
    from shared.ranges import RangeComputation, RangePlan

log = logging.getLogger(__name__)


class JobFailure(OtelWorkerError):
    """The job can never succeed as asked (too many points, bad parameters): fail it."""


class Deferred(OtelWorkerError):
    """The job's days were announced: it stays processing until its last day is in."""


class ReadFailed(OtelWorkerError):
    """Reading the fixes failed (no table, no right to it, a broken connection): the
    message is what the caller sees; another attempt may succeed once that is fixed."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


ANNOUNCE_THREADS = 4
"""Day events published side by side when a range job fans out (as many as the
publisher keeps connections to the broker)."""

ERROR_MESSAGE_LIMIT = 300
"""The most characters of a job's error_message."""


@dataclass(frozen=True)
class Outcome:
    """The HTTP status toward the broker, the event to reply with, and why."""

    status: int
    event: CloudEvent | None
    detail: str


@dataclass(frozen=True)
class Computation:
    """What compute needs: the jobs store, the points' database, the object store."""

    jobs: JobStore
    connection: ConnectionSource
    objects: ObjectStore
    storage: StorageSettings
    worker: str
    source: str
    lease_seconds: float
    publisher: events.Publisher | None = None
    """Where a range job's `day.requested` events go (the broker); None computes its days
    in the attempt that claimed the job."""

    def run(self, job_id: uuid.UUID) -> Outcome:
        """Handle one delivery of `job.queued` for `job_id`."""
        phases = telemetry.Phases()
        with phases.phase("claim", attributes={"job.id": str(job_id)}):
            claim = self.jobs.claim(job_id, self.worker, self.lease_seconds)
        job = claim.job
        if claim.result == ClaimResult.NOT_FOUND or job is None:
            return Outcome(HTTPStatus.BAD_REQUEST, None, f"job {job_id} not found")
        if claim.result == ClaimResult.BUSY:
            until = f"{job.lease_expires_at:%H:%M:%S%z}" if job.lease_expires_at else "?"
            return Outcome(
                HTTPStatus.CONFLICT, None, f"job {job_id} is being computed (lease until {until})"
            )
        if claim.result == ClaimResult.FINISHED:
            if job.status == JobStatus.CANCELLED and job.attempts:
                # An attempt killed before it saw the cancel may have left objects.
                self._remove_attempts(job, range(1, job.attempts + 1))
            # The outcome again: the reply that carried it may have been lost (the broker
            # gave up waiting, or the connection broke after the commit). Its id is the same
            # every time, so a consumer drops the repeats.
            event = outcome_event(job, self.source, telemetry.traceparent())
            return Outcome(HTTPStatus.OK, event, f"job {job_id} is already {job.status.value}")
        if claim.result == ClaimResult.EXHAUSTED:
            return self._finished(job)
        return self._attempt(job, phases)

    def _attempt(self, job: Job, phases: telemetry.Phases) -> Outcome:
        assert job.lease_token is not None
        token = job.lease_token
        started = time.monotonic()
        if job.attempts > 1:
            # An earlier attempt killed after uploading left objects no job names.
            self._remove_attempts(job, range(1, job.attempts))
        try:
            facts, copy = self._compute(job, phases)
        except LeaseLost as exc:
            # Cancelled (or taken over) while it computed: stopped before uploading anything.
            return Outcome(HTTPStatus.OK, None, str(exc))
        except Deferred as exc:
            return Outcome(HTTPStatus.OK, None, str(exc))
        except JobFailure as exc:
            reason = one_line(str(exc), ERROR_MESSAGE_LIMIT)
            return self._fenced(lambda: self.jobs.fail(job.id, token, reason))
        except ReadFailed as exc:
            log.warning("attempt failed reading the fixes", exc_info=exc.__cause__)
            return self._release(job, token, one_line(str(exc), ERROR_MESSAGE_LIMIT), exc.status)
        except (DatabaseUnavailable, StorageUnavailable, events.PublishError) as exc:
            log.warning("attempt failed, dependency down", extra={"error": str(exc)})
            return self._release(
                job, token, one_line(str(exc), ERROR_MESSAGE_LIMIT), HTTPStatus.SERVICE_UNAVAILABLE
            )
        except Exception as exc:
            # The traceback goes to the log; the caller gets a line that points there.
            log.exception("attempt failed unexpectedly")
            return self._release(
                job,
                token,
                f"internal error ({type(exc).__name__}) in compute; its log has the details",
                HTTPStatus.INTERNAL_SERVER_ERROR,
            )
        try:
            try:
                with telemetry.span("complete", attributes={"job.id": str(job.id)}):
                    completed = self.jobs.complete(
                        job.id, token, **facts, timings_ms=phases.rounded()
                    )
            except LeaseLost as exc:
                if exc.status == JobStatus.CANCELLED:
                    self._remove_attempts(job, [job.attempts])
                # A newer attempt owns the job, or nobody does: this one's work is dropped.
                outcome = Outcome(HTTPStatus.OK, None, str(exc))
            else:
                faults.kill_point("after_complete")
                outcome = self._finished(completed)
            if copy is not None and outcome.event is not None:
                # This attempt completed the job: its copy is the one to show.
                _publish(copy)
        finally:
            if copy is not None:
                copy.discard()  # a stale attempt's, or a failure's (nothing after a publish)
        telemetry.instruments().job_duration.record(time.monotonic() - started)
        return outcome

    def _remove_attempts(self, job: Job, attempts: Iterable[int]) -> None:
        """Remove what `attempts` of the job uploaded (this one's, for a job cancelled under
        it; earlier ones', which died); what cannot be removed now is left to the bucket's
        expiry rule (the job names none of it)."""
        sets = [result_keys(job.id, n, job.date_from, job.date_to, job.device_id) for n in attempts]
        try:
            self.objects.remove([key for keys in sets for key in keys.every()])
        except StorageUnavailable as exc:
            log.warning("could not remove an attempt's objects", extra={"error": str(exc)})

    def _release(self, job: Job, token: uuid.UUID, error: str, status: int) -> Outcome:
        try:
            released = self.jobs.release(job.id, token, error)
        except LeaseLost as exc:
            return Outcome(HTTPStatus.OK, None, str(exc))
        except DatabaseUnavailable:
            # The lease stays; once it expires a retried delivery (or the sweep) takes over.
            return Outcome(HTTPStatus.SERVICE_UNAVAILABLE, None, error)
        if released.status == JobStatus.FAILED:
            return self._finished(released)
        return Outcome(status, None, error)

    def _fenced(self, finish: Any) -> Outcome:
        try:
            job: Job = finish()
        except LeaseLost as exc:
            # A newer attempt owns the job; this one's work is dropped, nothing to retry.
            return Outcome(HTTPStatus.OK, None, str(exc))
        return self._finished(job)

    def _finished(self, job: Job) -> Outcome:
        telemetry.instruments().jobs.add(1, {"outcome": job.status.value})
        event = outcome_event(job, self.source, telemetry.traceparent())
        detail = f"job {job.id} {job.status.value}"
        if job.status != JobStatus.COMPLETED:
            detail += f": {job.error_message}"
        return Outcome(HTTPStatus.OK, event, detail)

    def _upload_json(self, key: str, document: bytes) -> None:
        self.objects.upload(key, io.BytesIO(document), len(document), JSON_TYPE)

    def _upload_gpx(self, key: str, analysis: Analysis) -> None:
        """The tracks as GPX beside the CSV, for mapping and fitness tools."""
        from shared.gpx import write_gpx

        with tempfile.TemporaryFile() as document:
            size = write_gpx(analysis, document)
            document.seek(0)
            self.objects.upload(key, document, size, GPX_TYPE)

    def _compute(
        self, job: Job, phases: telemetry.Phases
    ) -> tuple[dict[str, Any], StagedCopy | None]:
        """The job's results uploaded, as `complete`'s arguments, and the CSV's copy for
        CSV_OUTPUT_PATH written but not yet visible (None without that setting); each
        phase timed in `phases`."""
        from shared.engine import EngineParams, analyze, day_window, read_range
        from shared.export import write_csv
        from shared.locations import (
            PointLimit,
            TooManyDeviceRows,
            TooManyPoints,
            read_error_message,
            read_points,
            unknown_device,
        )
        from shared.report import series_json

        with phases.phase("plan"):
            try:
                params = EngineParams.model_validate(job.parameters)
            except ValidationError as exc:
                raise JobFailure(
                    f"the job's parameters are invalid: {events.describe(exc)}"
                ) from None
            if job.date_from == job.date_to:
                window = day_window(job.date_from, job.date_to, job.timezone)
                start, end = read_range(window, params)
        if job.date_from != job.date_to:
            return self._compute_range(job, params, phases), None
        metrics = telemetry.instruments()
        with phases.phase("read", attributes={"job.id": str(job.id)}):
            read_started = time.monotonic()
            note: str | None = None
            limit = PointLimit(
                _utc(window.start_us),
                _utc(window.end_us),
                self.storage.max_csv_rows,
                device_rows=self.storage.max_day_read_rows * job.days,
            )
            try:
                with self.connection() as conn:
                    points = read_points(conn, _utc(start), _utc(end), job.device_id, limit)
                    if job.device_id is not None and not len(points):
                        # A typo in the device id reads the same as a quiet day: say which
                        # it is. Only the rare empty read pays for this check.
                        known = unknown_device(conn, job.device_id, KNOWN_DEVICES_SHOWN)
                        if known is not None:
                            note = unknown_device_note(job.device_id, known)
            except TooManyPoints as exc:
                raise JobFailure(
                    f"{exc.count} points in the window exceed MAX_CSV_ROWS "
                    f"({self.storage.max_csv_rows}); ask for fewer days or one device"
                ) from None
            except TooManyDeviceRows as exc:
                raise JobFailure(
                    _too_many(exc, self.storage.max_day_read_rows, f"{job.days} day(s)")
                ) from None
            except psycopg.Error as exc:
                status = (
                    HTTPStatus.SERVICE_UNAVAILABLE
                    if isinstance(exc, psycopg.OperationalError)
                    else HTTPStatus.INTERNAL_SERVER_ERROR
                )
                raise ReadFailed(read_error_message(exc), status) from exc
            metrics.db_read.record(time.monotonic() - read_started)
        with phases.phase("engine", attributes={"fixes": len(points)}):
            analysis = analyze(points, window, params)
            summary = analysis.summary
            if note is not None:
                summary = summary.model_copy(update={"notes": [*summary.notes, note]})
            metrics.points.add(summary.points.read)
            for rule, count in summary.points.dropped.model_dump().items():
                if count:
                    metrics.dropped.add(count, {"rule": rule})
        keys = result_keys(job.id, job.attempts, job.date_from, job.date_to, job.device_id)
        with tempfile.TemporaryFile() as csv:
            with phases.phase("csv", attributes={"job.id": str(job.id)}):
                size = write_csv(analysis, csv)
                if size > self.storage.max_csv_bytes:
                    raise JobFailure(
                        f"the CSV would be {size} bytes, over MAX_CSV_BYTES "
                        f"({self.storage.max_csv_bytes}); ask for fewer days or one device"
                    )
                digest, size = sha256_of(csv)
            with phases.phase("uploads", attributes={"key": keys.csv_key}):
                assert job.lease_token is not None
                self.jobs.holds(job.id, job.lease_token)  # cancelled meanwhile: upload nothing
                # Side by side: each PUT mostly waits for the store's answer.
                faults.kill_point("before_upload")
                pool = self.objects.uploader()
                beside = [
                    pool.submit(lambda: self._upload_json(keys.series_key, series_json(analysis))),
                    pool.submit(self._upload_gpx, keys.gpx_key, analysis),
                    pool.submit(
                        lambda: self._upload_json(
                            keys.summary_key, summary.model_dump_json(indent=2).encode()
                        )
                    ),
                ]
                try:
                    self.objects.upload(keys.csv_key, csv, size, CSV_TYPE)
                finally:
                    # Every upload has ended before the attempt goes on (or fails).
                    wait(beside)
                for upload in beside:
                    upload.result()
                faults.kill_point("after_upload")
                metrics.csv_bytes.record(size)
                folder = self.storage.csv_output_path
                copy = None if folder is None else stage_compat_copy(folder, keys.csv_name, csv)
        facts = {
            "result": summary.model_dump(mode="json"),
            "csv_key": keys.csv_key,
            "summary_key": keys.summary_key,
            "csv_bytes": size,
            "csv_sha256": digest,
        }
        return facts, copy

    def _ranges(self) -> RangeComputation:
        from shared.day_results import DayStore
        from shared.ranges import RangeComputation

        return RangeComputation(
            connection=self.connection,
            days=DayStore(self.jobs.connection, self.jobs.schema),
            objects=self.objects,
            max_csv_rows=self.storage.max_csv_rows,
            max_day_read_rows=self.storage.max_day_read_rows,
        )

    def _plan(self, ranges: RangeComputation, job: Job, params: EngineParams) -> RangePlan:
        try:
            return ranges.plan(
                job.date_from, job.date_to, job.device_id, job.timezone, job.parameters, params
            )
        except psycopg.Error as exc:
            raise _read_failed(exc) from exc

    def _compute_range(
        self, job: Job, params: EngineParams, phases: telemetry.Phases, *, fan_out: bool = True
    ) -> dict[str, Any]:
        """A range job's results, device-day by device-day (see `shared.ranges`). With a
        broker to publish to, the days to compute are announced as `day.requested` events
        (`Deferred`: the last day's compute assembles the job); else computed here."""
        from shared.locations import TooManyDeviceRows
        from shared.ranges import upload_csv

        ranges = self._ranges()
        with phases.phase("plan", attributes={"job.id": str(job.id)}):
            plan = self._plan(ranges, job, params)
        fresh = plan.fresh()
        if fresh and fan_out and self.publisher is not None:
            announce = ranges.days.plan(job.id, plan.key, plan.holding, fresh)
            self._announce(job, announce)
            raise Deferred(f"job {job.id} waits for {len(fresh)} device-day(s)")
        with phases.phase("assembly", attributes={"job.id": str(job.id), "days": len(fresh)}):
            try:
                outcome = ranges.finish(plan)
            except psycopg.Error as exc:
                raise _read_failed(exc) from exc
            except TooManyDeviceRows as exc:
                raise JobFailure(_too_many(exc, self.storage.max_day_read_rows)) from None
        keys = result_keys(job.id, job.attempts, job.date_from, job.date_to, job.device_id)
        summary = outcome.summary
        with phases.phase("uploads", attributes={"key": keys.csv_key}):
            ranges.days.plan(job.id, plan.key, plan.cells, [])  # the days its result names
            assert job.lease_token is not None
            self.jobs.holds(job.id, job.lease_token)  # cancelled meanwhile: upload nothing more
            faults.kill_point("before_upload")
            digest, size = upload_csv(self.objects, keys.csv_key, outcome.csv)
            self._upload_json(keys.series_key, outcome.series)
            self._upload_json(keys.summary_key, summary.model_dump_json(indent=2).encode())
            faults.kill_point("after_upload")
        log.info(
            "range computed",
            extra={"reused_days": outcome.reused, "computed_days": outcome.computed},
        )
        return {
            "result": summary.model_dump(mode="json"),
            "csv_key": keys.csv_key,
            "summary_key": keys.summary_key,
            "csv_bytes": size,
            "csv_sha256": digest,
        }

    def _announce(self, job: Job, days: list[tuple[str, dt.date]]) -> None:
        """Publish `day.requested` events for `days`: a run of up to DAYS_PER_EVENT
        consecutive days of a device each, a few events at a time."""
        from shared.ranges import day_runs

        assert self.publisher is not None
        publisher, parent = self.publisher, telemetry.traceparent()

        def publish(run: tuple[str, dt.date, dt.date]) -> None:
            device_id, first, last = run
            data = DayRequested(
                job_id=job.id,
                device_id=device_id,
                day=first,
                last_day=None if last == first else last,
            )
            event = events.new_event(
                events.DAY_REQUESTED,
                data,
                source=self.source,
                subject=str(job.id),
                traceparent=parent,
            )
            publisher.publish(event)

        with ThreadPoolExecutor(ANNOUNCE_THREADS, thread_name_prefix="announce") as pool:
            list(pool.map(publish, day_runs(days, DAYS_PER_EVENT)))

    def run_day(
        self, job_id: uuid.UUID, device_id: str, day: dt.date, last_day: dt.date | None = None
    ) -> Outcome:
        """Handle one delivery of `day.requested`: compute and keep each device-day of the
        run whose own claim succeeds, and when the job's last day is in, assemble and
        complete the job (exactly once: the completion is fenced by the job's lease)."""
        from shared.locations import TooManyDeviceRows

        last = last_day or day
        max_attempts = self.jobs.settings.job_max_attempts
        ranges = self._ranges()
        what = f"{device_id} {day}" + (f"..{last}" if last != day else "") + f" of job {job_id}"
        claim = ranges.days.claim(job_id, device_id, (day, last), self.lease_seconds, max_attempts)
        job = self.jobs.get(job_id) if claim.claimed or claim.exhausted else None
        if job is None or job.finished:
            if claim.claimed:
                ranges.days.release(job_id, device_id, claim.claimed, "", 0)
            if claim.busy:
                return Outcome(HTTPStatus.CONFLICT, None, f"{what} is being computed")
            # A repeated event, or a cancelled job's: nothing to do, nothing to retry.
            return Outcome(HTTPStatus.OK, None, f"{what}: nothing left to compute")
        if claim.exhausted and job.lease_token is not None:
            token = job.lease_token
            reason = f"{device_id} {claim.exhausted[0]}: failed {max_attempts} attempts"
            return self._fenced(lambda: self.jobs.fail(job.id, token, reason))
        if not claim.claimed:
            return Outcome(HTTPStatus.CONFLICT, None, f"{what} is being computed")
        # A job the sweep requeued meanwhile still wants the days: its next attempt reuses
        # them, and assembles the job itself should these be the last.
        try:
            params = EngineParams.model_validate(job.parameters)
            # These device-days alone: their fingerprints now, and which kept ones hold.
            mine = {"date_from": day, "date_to": last, "device_id": device_id}
            plan = self._plan(ranges, job.model_copy(update=mine), params)
            fresh = [cell for cell in plan.fresh() if cell[1] in claim.claimed]
            ranges.compute_days(plan, fresh)
        except TooManyDeviceRows as exc:
            ranges.days.release(job_id, device_id, claim.claimed, str(exc), 0)
            reason = _too_many(exc, self.storage.max_day_read_rows)
            if job.lease_token is None:
                return Outcome(HTTPStatus.OK, None, reason)
            token = job.lease_token
            return self._fenced(lambda: self.jobs.fail(job.id, token, reason))
        except Exception as exc:
            status = HTTPStatus.SERVICE_UNAVAILABLE
            if not isinstance(exc, (DatabaseUnavailable, StorageUnavailable, ReadFailed)):
                log.exception("device-days failed unexpectedly")
                status = HTTPStatus.INTERNAL_SERVER_ERROR
            error = one_line(str(exc), ERROR_MESSAGE_LIMIT)
            ranges.days.release(job_id, device_id, claim.claimed, error, max_attempts)
            return Outcome(status, None, f"{what}: {error}")
        left = ranges.days.finish(job_id, device_id, claim.claimed)
        if claim.busy:  # delivered again later, when those are done or free
            return Outcome(HTTPStatus.CONFLICT, None, f"{what}: some days are being computed")
        if left != 0 or job.status != JobStatus.PROCESSING:
            if left and job.lease_token is not None:
                # Days are coming in: the job is alive, its lease is renewed, so the sweep
                # does not take it for dead while a long range computes.
                self.jobs.extend(job.id, job.lease_token, self.lease_seconds)
            return Outcome(HTTPStatus.OK, None, f"{what} done; {left} left")
        return self._assemble(job, params)

    def _assemble(self, job: Job, params: EngineParams) -> Outcome:
        """Complete a range job whose days are all in (the last day's compute does this)."""
        assert job.lease_token is not None
        token = job.lease_token
        phases = telemetry.Phases()
        try:
            facts = self._compute_range(job, params, phases, fan_out=False)
            # The phases before the assembly (the job's claim, the fan-out, the days
            # computed elsewhere) are what the database clocks beyond this attempt's own.
            completed = self.jobs.complete(
                job.id, token, **facts, timings_ms=phases.rounded(), rest="days"
            )
        except LeaseLost as exc:
            # Another compute assembled it first (its objects are these keys: kept), or the
            # job was cancelled (what this assembly uploaded goes) or taken over.
            if exc.status == JobStatus.CANCELLED:
                self._remove_attempts(job, [job.attempts])
            return Outcome(HTTPStatus.OK, None, str(exc))
        faults.kill_point("after_complete")
        return self._finished(completed)


KNOWN_DEVICES_SHOWN = 20
"""At most this many known device ids in the note about an unknown device."""


def unknown_device_note(device_id: str, known: list[str]) -> str:
    """The result's note for a device with no fix at all in public.locations (not merely
    none in the window), naming the devices that have fixes (`known`, one past the cap
    meaning there are more)."""
    if not known:
        return f"device {device_id!r} has no fixes at all: public.locations is empty"
    shown = ", ".join(known[:KNOWN_DEVICES_SHOWN])
    more = ", …" if len(known) > KNOWN_DEVICES_SHOWN else ""
    return (
        f"device {device_id!r} has no fixes at all in public.locations; "
        f"devices with fixes: {shown}{more}"
    )


def _too_many(exc: TooManyDeviceRows, per_day: int, days: str = "its days") -> str:
    """Why a read over MAX_DAY_READ_ROWS fails, naming the device, the count and `days`."""
    return (
        f"device {exc.device}: {exc.count} fixes to read for {days}, window and context, "
        f"exceed MAX_DAY_READ_ROWS ({per_day}) per device-day; ask for another window or "
        "have the data thinned"
    )


def _read_failed(exc: psycopg.Error) -> ReadFailed:
    status = (
        HTTPStatus.SERVICE_UNAVAILABLE
        if isinstance(exc, psycopg.OperationalError)
        else HTTPStatus.INTERNAL_SERVER_ERROR
    )
    from shared.locations import read_error_message

    return ReadFailed(read_error_message(exc), status)


def _publish(copy: StagedCopy) -> None:
    """Show the completed job's CSV copy; the job stays completed if that fails (its CSV is
    in the object store either way)."""
    try:
        copy.publish()
    except OSError as exc:
        log.warning(
            "could not publish the CSV copy", extra={"path": str(copy.target), "error": str(exc)}
        )


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _utc(us: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=us)
