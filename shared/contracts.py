"""The public data contracts: event payloads and the JSON shape of a job.

These pydantic models are the single source of truth for what travels between the
functions and what callers see; their JSON Schemas are exported to `docs/events/`
(`make schemas`).
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from typing import Annotated, Any, Final, Literal
from uuid import UUID
from zoneinfo import available_timezones

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

# Matched whole (fullmatch): `$` alone would also take a trailing newline.
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DEVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:+-]{0,99}")

JobStatus = Literal["queued", "processing", "completed", "failed", "cancelled"]
JOB_STATUSES: tuple[JobStatus, ...] = ("queued", "processing", "completed", "failed", "cancelled")
FINISHED: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


INT32_MAX: Final = 2**31 - 1
"""The largest value of the proto's int32 fields (ListJobs' `limit` and `offset`)."""

EARLIEST_DATE: Final = dt.date(1970, 1, 1)
"""The first local day served: GPS fixes are later, and a window reaching below year 1
would crash the computation."""


def parse_local_date(value: object) -> dt.date:
    """A calendar date written exactly as YYYY-MM-DD (a real day: no 2026-02-30), from
    `EARLIEST_DATE` on."""
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        day = value
    elif not isinstance(value, str) or not _DATE.fullmatch(value):
        raise ValueError("must be a date written YYYY-MM-DD")
    else:
        try:
            day = dt.date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value} is not a calendar date") from None
    if day < EARLIEST_DATE:
        raise ValueError(f"{day} is before {EARLIEST_DATE}, the earliest day served")
    return day


def parse_device_id(value: object) -> str | None:
    """An OwnTracks device id (None for absent or empty: every device)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _DEVICE.fullmatch(value):
        raise ValueError(
            "must be 1-100 characters of letters, digits and . _ @ : + - "
            "(starting with a letter or digit)"
        )
    return value


@functools.cache
def _time_zones() -> frozenset[str]:
    # Read once per process, on first use (it lists a directory tree). It also holds the
    # system's `localtime` link and tzdata's `Factory` placeholder, which name no place.
    return frozenset(available_timezones() - {"localtime", "Factory"})


def check_time_zone(value: str) -> str:
    """`value` if it is an IANA time zone name (not `localtime`, `posix/...`, `right/...`
    or another file that only happens to lie in the zoneinfo tree); ValueError otherwise."""
    if value not in _time_zones():
        raise ValueError(f"unknown time zone {value!r}")
    return value


def check_no_nul(value: str) -> str:
    """`value` unless it holds a NUL character, which PostgreSQL's text cannot store: a
    request carrying one is bad input (400 / INVALID_ARGUMENT), never a database error that
    a broker would retry."""
    if "\0" in value:
        raise ValueError("must not contain a NUL character")
    return value


Text = Annotated[str, AfterValidator(check_no_nul)]
"""A string that can be stored: no NUL character."""

LocalDate = Annotated[
    dt.date,
    BeforeValidator(parse_local_date),
    Field(json_schema_extra={"type": "string", "format": "date"}),
]
DeviceId = Annotated[
    str | None,
    BeforeValidator(parse_device_id),
    Field(description="OwnTracks device id; empty or absent means every device"),
]
TimeZone = Annotated[
    str,
    AfterValidator(check_no_nul),
    AfterValidator(check_time_zone),
    Field(description="IANA time zone"),
]


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Requester(_Contract):
    """The CloudEvent that asked for a job, so the requester can match the outcome to it."""

    source: Text
    id: Text


MAX_IDEMPOTENCY_KEY: Final = 200
"""Longest idempotency key a caller may give (in the request or the Idempotency-Key header)."""


class DistanceRequested(_Contract):
    """Data of `distance.requested`: compute distance from home over local days."""

    date: LocalDate = Field(description="first local day, YYYY-MM-DD")
    end_date: LocalDate | None = Field(
        default=None, description="last local day (inclusive) of a range; absent = one day"
    )
    device_id: DeviceId = None
    timezone: TimeZone | None = Field(
        default=None, description="time zone of the days; absent = the home time zone"
    )
    idempotency_key: (
        Annotated[
            str, Field(min_length=1, max_length=MAX_IDEMPOTENCY_KEY), AfterValidator(check_no_nul)
        ]
        | None
    ) = Field(
        default=None,
        description="repeat requests with one key get one job; absent = the event's source+id",
    )

    # A field validator, not a model one: its error names end_date rather than no field.
    @field_validator("end_date")
    @classmethod
    def _ordered(cls, value: dt.date | None, info: ValidationInfo) -> dt.date | None:
        start = info.data.get("date")  # absent when date itself was invalid
        if value is not None and start is not None and value < start:
            raise ValueError(f"{value} is before date {start}")
        return value

    @property
    def last_date(self) -> dt.date:
        """The last local day of the request (the start day for one-day jobs)."""
        return self.end_date or self.date

    @property
    def days(self) -> int:
        """Number of local days asked for."""
        return (self.last_date - self.date).days + 1


class JobQueued(_Contract):
    """Data of `job.queued`: a job is ready to be computed."""

    job_id: UUID


DAYS_PER_EVENT: Final = 7
"""The most consecutive device-days one `day.requested` event asks for: one read, one
claim statement and one broker delivery for a week of a device, each day still claimed,
kept and counted on its own."""


class DayRequested(_Contract):
    """Data of `day.requested`: device-days of a range job are to be computed: `day` (to
    `last_day`, when given: at most DAYS_PER_EVENT days in all) of one device."""

    job_id: UUID
    device_id: Annotated[str, Field(min_length=1, max_length=100)]
    day: dt.date
    last_day: dt.date | None = None

    @model_validator(mode="after")
    def _ordered(self) -> DayRequested:
        if self.last_day is not None and not 0 <= (self.last_day - self.day).days < DAYS_PER_EVENT:
            raise ValueError(
                f"last_day must be day or one of the {DAYS_PER_EVENT - 1} days after it"
            )
        return self


class Download(_Contract):
    """A presigned link to one result object."""

    url: str
    expires_at: dt.datetime


class JobView(_Contract):
    """A job as callers see it (status API, `job.accepted`, outcome events)."""

    job_id: UUID
    status: JobStatus
    date: dt.date
    end_date: dt.date
    device_id: str | None
    timezone: str
    queued_at: dt.datetime
    started_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    attempts: int = 0
    max_attempts: int
    error_message: str | None = None
    requester: Requester | None = None
    idempotency_key: str
    csv_key: str | None = None
    summary_key: str | None = None
    csv_bytes: int | None = None
    csv_sha256: str | None = None
    processing_time_ms: int | None = None
    timings_ms: dict[str, float] | None = Field(
        default=None,
        description="where a completed job's processing time went, by phase, in milliseconds"
        " (they add up to processing_time_ms)",
    )
    result: dict[str, Any] | None = Field(
        default=None, description="the engine's summary (see FUNCTIONALITY.md)"
    )
    csv: Download | None = None
    summary: Download | None = None
    gpx: Download | None = None
    """The tracks as GPX 1.1 (`/download/{job_id}/gpx`)."""
    superseded_by: UUID | None = Field(
        default=None, description="the job that replaced this one after late fixes"
    )
    supersedes: UUID | None = Field(default=None, description="the job this one replaces")


class JobAccepted(_Contract):
    """Data of `job.accepted`, submit's reply: the job, and whether this request created it."""

    created: bool
    job: JobView


class JobOutcome(_Contract):
    """Data of `job.completed`, `job.failed` and `job.cancelled`."""

    job: JobView


class JobPage(_Contract):
    """One page of a job listing, newest first, with the count of every match."""

    jobs: list[JobView]
    total_count: int
    limit: int
    offset: int


class Headline(_Contract):
    """The figures a person reads first: path, farthest from home, time at home and away,
    trips and the fixes used (rounded to a metre and a second, so a change that moves no
    figure compares equal)."""

    path_km: float
    max_distance_km: float
    time_at_home_s: int
    time_away_s: int
    trips: int
    points_used: int


def headline(summary: dict[str, Any]) -> Headline:
    """The headline figures of a summary (or one device's metrics) as JSON."""
    return Headline(
        path_km=round(summary["path_km"], 3),
        max_distance_km=round(summary["max_distance_km"], 3),
        time_at_home_s=round(summary["time_at_home_s"]),
        time_away_s=round(summary["time_away_s"]),
        trips=len(summary["trips"]),
        points_used=summary["points"]["used"],
    )


class JobSuperseded(_Contract):
    """Data of `job.superseded`: late fixes moved a completed job's figures, and a new job
    for the same request replaces it."""

    old_job_id: UUID
    new_job_id: UUID
    date: dt.date
    end_date: dt.date
    device_id: str | None
    timezone: str
    requester: Requester | None = None
    old: Headline
    new: Headline = Field(description="the figures the new job computes from the kept days")


class DaySummarized(_Contract):
    """Data of `day.summarized`: the nightly figures of one device's local day."""

    device_id: str
    day: dt.date
    timezone: str
    figures: Headline
