"""What the status function answers, apart from HTTP routing: a listing's query parsed from
its parameters, a job found by id or by its CSV's basename, and what a job must be for its
report and downloads. Failures are `web.HttpError`s carrying the status a caller should see
and a message naming the parameter."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from shared.contracts import JOB_STATUSES, JobPage, parse_device_id, parse_local_date
from shared.job_view import job_view
from shared.jobs import MAX_LIST_OFFSET, Job, JobStatus, JobStore, effective_limit
from shared.storage import ObjectMissing, ObjectStore, ResultKeys, short_id_of
from shared.web import HttpError, parse_job_id

_WHOLE = re.compile(r"-?[0-9]+")
"""ASCII digits only: int() would also take "+5", "1_0", " 5" and non-ASCII digits."""
_SECONDS = re.compile(r"-?[0-9]{1,9}(\.[0-9]{1,6})?")
"""Plain decimal seconds: float() would also take "nan", "inf", "1e9" and "1_0"."""


@dataclass(frozen=True)
class ListQuery:
    """A job listing's filters and page, as `GET /jobs?...` gives them."""

    status: JobStatus | None = None
    date: dt.date | None = None
    device_id: str | None = None
    limit: int = 0
    offset: int = 0


def _whole(args: Mapping[str, str], name: str, most: int | None = None) -> int:
    raw = args.get(name, "0") or "0"
    if not _WHOLE.fullmatch(raw):
        raise HttpError(HTTPStatus.BAD_REQUEST, f"{name}: {raw!r} is not a whole number")
    value = int(raw)
    if value < 0:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"{name}: must not be negative (got {value})")
    if most is not None and value > most:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"{name}: must be at most {most} (got {raw})")
    return value


def parse_list_query(args: Mapping[str, str]) -> ListQuery:
    """The listing asked for by query parameters `status`, `date`, `device_id`, `limit` and
    `offset` (empty means unset); 400 naming the first bad one."""
    status = args.get("status") or None
    if status is not None and status not in JOB_STATUSES:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"status: must be one of {', '.join(JOB_STATUSES)}")
    date = args.get("date") or None
    try:
        day = parse_local_date(date) if date else None
    except ValueError as exc:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"date: {exc}") from None
    try:
        device_id = parse_device_id(args.get("device_id"))
    except ValueError as exc:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"device_id: {exc}") from None
    return ListQuery(
        status=JobStatus(status) if status else None,
        date=day,
        device_id=device_id,
        limit=_whole(args, "limit"),
        offset=_whole(args, "offset", most=MAX_LIST_OFFSET),
    )


def parse_wait(args: Mapping[str, str]) -> float:
    """The seconds `GET /jobs/{id}?wait=` asks to wait for the job to finish (0: answer at
    once; empty means 0); 400 naming `wait` for anything but plain decimal seconds of at
    least 0. A longer wait than status allows is cut to its limit, not refused."""
    raw = args.get("wait", "") or "0"
    if not _SECONDS.fullmatch(raw):
        raise HttpError(
            HTTPStatus.BAD_REQUEST, f"wait: {raw[:40]!r} is not a number of seconds (e.g. 10)"
        )
    seconds = float(raw)
    if seconds < 0:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"wait: must not be negative (got {raw})")
    return seconds


def list_page(jobs: JobStore, query: ListQuery) -> JobPage:
    """One page of the jobs matching `query`, newest first, with the count of every match
    and the limit the store applied."""
    page, total = jobs.list_jobs(
        status=query.status,
        date=query.date,
        device_id=query.device_id,
        limit=query.limit,
        offset=query.offset,
    )
    return JobPage(
        jobs=[job_view(j) for j in page],
        total_count=total,
        limit=effective_limit(query.limit),
        offset=query.offset,
    )


def existing(jobs: JobStore, job_id: uuid.UUID) -> Job:
    """The job `job_id`; 404 when there is none."""
    job = jobs.get(job_id)
    if job is None:
        raise HttpError(HTTPStatus.NOT_FOUND, f"job {job_id} not found")
    return job


def resolve(jobs: JobStore, name: str) -> Job:
    """A job by id, or by its CSV's basename (what old clients link to); 404 when none."""
    if name.endswith(".csv"):
        job = jobs.by_csv_name(name) if short_id_of(name) else None
        if job is None:
            raise HttpError(HTTPStatus.NOT_FOUND, f"no CSV named {name}")
        return job
    return existing(jobs, parse_job_id(name))


def report_series(job: Job, objects: ObjectStore) -> Any:
    """The chart data of a completed job's report; 409 while it is not completed, 410 when
    its objects are gone."""
    if job.status != JobStatus.COMPLETED:
        raise HttpError(
            HTTPStatus.CONFLICT,
            (
                f"job {job.id} failed: it has no report ({job.error_message})"
                if job.status == JobStatus.FAILED
                else f"job {job.id} is {job.status.value}: its report exists once it has completed"
            ),
            job_status=job.status.value,
        )
    if job.csv_key is None or job.summary_key is None:  # (a completed job always has both)
        raise HttpError(HTTPStatus.GONE, f"job {job.id} has no stored results")
    keys = ResultKeys(csv_key=job.csv_key, summary_key=job.summary_key)
    try:
        return json.loads(objects.read(keys.series_key))
    except ObjectMissing:
        raise HttpError(
            HTTPStatus.GONE,
            f"job {job.id}: its report's data is no longer stored (objects expire; "
            "submit the request again for a fresh result)",
        ) from None


def download_key(job: Job, *, summary: bool = False, gpx: bool = False) -> str:
    """The object key of a completed job's CSV (or summary, or GPX); 409 while it is not
    completed."""
    key = job.summary_key if summary else job.csv_key
    if gpx and not job.writes_gpx:
        raise HttpError(
            HTTPStatus.NOT_FOUND,
            f"job {job.id} covers {job.date_from}..{job.date_to}: a GPX file is written for "
            "one-day jobs; download the range's CSV, or a day of it as a one-day job",
        )
    if gpx and job.csv_key is not None and job.summary_key is not None:
        key = ResultKeys(csv_key=job.csv_key, summary_key=job.summary_key).gpx_key
    if job.status != JobStatus.COMPLETED or key is None:
        raise HttpError(
            HTTPStatus.CONFLICT,
            f"job {job.id} is {job.status.value}: its files exist once it has completed",
            job_status=job.status.value,
        )
    return key
