"""How a job is shown to callers: the store's row as the public `JobView`.

Download links are signed fresh on every read (they expire), and only for completed
jobs, whose objects are known to exist.
"""

from __future__ import annotations

from cloudevents.http import CloudEvent

from shared import events
from shared.contracts import JobOutcome, JobView, Requester
from shared.jobs import Job, JobStatus
from shared.storage import ObjectStore, ResultKeys


def job_view(job: Job, objects: ObjectStore | None = None) -> JobView:
    """The public view of `job`; with `objects`, presigned links to a completed job's CSV
    and summary."""
    completed = job.status == JobStatus.COMPLETED
    processing_ms = None
    if completed and job.started_at and job.completed_at:
        processing_ms = round((job.completed_at - job.started_at).total_seconds() * 1000)
    links = objects is not None and completed
    result, timings = job.result, None
    if result is not None and "timings_ms" in result:
        # Stored with the result, shown beside it: the result is the engine's summary.
        timings = result["timings_ms"]
        result = {key: value for key, value in result.items() if key != "timings_ms"}
    return JobView(
        job_id=job.id,
        status=job.status.value,
        date=job.date_from,
        end_date=job.date_to,
        device_id=job.device_id,
        timezone=job.timezone,
        queued_at=job.queued_at,
        started_at=job.started_at,
        completed_at=job.completed_at,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        error_message=job.error_message,
        requester=Requester(source=job.requester_source, id=job.requester_id)
        if job.requester_source and job.requester_id
        else None,
        idempotency_key=job.idempotency_key,
        csv_key=job.csv_key,
        summary_key=job.summary_key,
        csv_bytes=job.csv_bytes,
        csv_sha256=job.csv_sha256,
        processing_time_ms=processing_ms,
        timings_ms=timings,
        result=result,
        csv=objects.presign(job.csv_key) if links and objects and job.csv_key else None,
        summary=objects.presign(job.summary_key) if links and objects and job.summary_key else None,
        gpx=objects.presign(ResultKeys(csv_key=job.csv_key, summary_key=job.summary_key).gpx_key)
        if links and objects and job.csv_key and job.summary_key and job.writes_gpx
        else None,
        superseded_by=job.superseded_by,
        supersedes=job.supersedes,
    )


_OUTCOME_TYPES = {
    JobStatus.COMPLETED: events.JOB_COMPLETED,
    JobStatus.FAILED: events.JOB_FAILED,
    JobStatus.CANCELLED: events.JOB_CANCELLED,
}


def outcome_event(job: Job, source: str, traceparent: str | None) -> CloudEvent:
    """The `job.completed`, `job.failed` or `job.cancelled` event of a finished job. A job
    finishes once, so its id names the job and the outcome: sent again (by compute, or by
    submit for a cancellation), it is recognisably the same event."""
    return events.new_event(
        _OUTCOME_TYPES[job.status],
        JobOutcome(job=job_view(job)),
        source=source,
        subject=str(job.id),
        traceparent=traceparent,
        event_id=f"{job.id}.{job.status.value}",
    )
