import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CalculateDistanceRequest(_message.Message):
    __slots__ = ("date", "device_id", "end_date", "timezone", "idempotency_key")
    DATE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    END_DATE_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    date: str
    device_id: str
    end_date: str
    timezone: str
    idempotency_key: str
    def __init__(self, date: _Optional[str] = ..., device_id: _Optional[str] = ..., end_date: _Optional[str] = ..., timezone: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class CalculateDistanceResponse(_message.Message):
    __slots__ = ("job_id", "status", "queued_at", "created")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    status: str
    queued_at: _timestamp_pb2.Timestamp
    created: bool
    def __init__(self, job_id: _Optional[str] = ..., status: _Optional[str] = ..., queued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetJobStatusRequest(_message.Message):
    __slots__ = ("job_id", "wait_seconds")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    wait_seconds: float
    def __init__(self, job_id: _Optional[str] = ..., wait_seconds: _Optional[float] = ...) -> None: ...

class GetJobStatusResponse(_message.Message):
    __slots__ = ("job_id", "status", "queued_at", "started_at", "completed_at", "error_message", "result", "attempts", "max_attempts", "date", "end_date", "device_id", "timezone", "superseded_by", "supersedes")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    DATE_FIELD_NUMBER: _ClassVar[int]
    END_DATE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    SUPERSEDED_BY_FIELD_NUMBER: _ClassVar[int]
    SUPERSEDES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    status: str
    queued_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    completed_at: _timestamp_pb2.Timestamp
    error_message: str
    result: JobResult
    attempts: int
    max_attempts: int
    date: str
    end_date: str
    device_id: str
    timezone: str
    superseded_by: str
    supersedes: str
    def __init__(self, job_id: _Optional[str] = ..., status: _Optional[str] = ..., queued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., completed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error_message: _Optional[str] = ..., result: _Optional[_Union[JobResult, _Mapping]] = ..., attempts: _Optional[int] = ..., max_attempts: _Optional[int] = ..., date: _Optional[str] = ..., end_date: _Optional[str] = ..., device_id: _Optional[str] = ..., timezone: _Optional[str] = ..., superseded_by: _Optional[str] = ..., supersedes: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("status", "limit", "offset", "date", "device_id")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    status: str
    limit: int
    offset: int
    date: str
    device_id: str
    def __init__(self, status: _Optional[str] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ..., date: _Optional[str] = ..., device_id: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "total_count", "limit", "offset")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobSummary]
    total_count: int
    limit: int
    offset: int
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobSummary, _Mapping]]] = ..., total_count: _Optional[int] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class JobSummary(_message.Message):
    __slots__ = ("job_id", "status", "date", "device_id", "queued_at", "completed_at", "end_date", "attempts", "error_message")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DATE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUED_AT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    END_DATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    status: str
    date: str
    device_id: str
    queued_at: _timestamp_pb2.Timestamp
    completed_at: _timestamp_pb2.Timestamp
    end_date: str
    attempts: int
    error_message: str
    def __init__(self, job_id: _Optional[str] = ..., status: _Optional[str] = ..., date: _Optional[str] = ..., device_id: _Optional[str] = ..., queued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., completed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_date: _Optional[str] = ..., attempts: _Optional[int] = ..., error_message: _Optional[str] = ...) -> None: ...

class JobResult(_message.Message):
    __slots__ = ("csv_path", "total_distance_km", "total_locations", "max_distance_km", "min_distance_km", "date", "device_id", "processing_time_ms", "csv_url", "csv_url_expires_at", "summary_url", "end_date", "timezone", "metrics", "devices", "notes")
    CSV_PATH_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DISTANCE_KM_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LOCATIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_DISTANCE_KM_FIELD_NUMBER: _ClassVar[int]
    MIN_DISTANCE_KM_FIELD_NUMBER: _ClassVar[int]
    DATE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    CSV_URL_FIELD_NUMBER: _ClassVar[int]
    CSV_URL_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_URL_FIELD_NUMBER: _ClassVar[int]
    END_DATE_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    csv_path: str
    total_distance_km: float
    total_locations: int
    max_distance_km: float
    min_distance_km: float
    date: str
    device_id: str
    processing_time_ms: int
    csv_url: str
    csv_url_expires_at: _timestamp_pb2.Timestamp
    summary_url: str
    end_date: str
    timezone: str
    metrics: Metrics
    devices: _containers.RepeatedCompositeFieldContainer[DeviceMetrics]
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, csv_path: _Optional[str] = ..., total_distance_km: _Optional[float] = ..., total_locations: _Optional[int] = ..., max_distance_km: _Optional[float] = ..., min_distance_km: _Optional[float] = ..., date: _Optional[str] = ..., device_id: _Optional[str] = ..., processing_time_ms: _Optional[int] = ..., csv_url: _Optional[str] = ..., csv_url_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., summary_url: _Optional[str] = ..., end_date: _Optional[str] = ..., timezone: _Optional[str] = ..., metrics: _Optional[_Union[Metrics, _Mapping]] = ..., devices: _Optional[_Iterable[_Union[DeviceMetrics, _Mapping]]] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...

class Metrics(_message.Message):
    __slots__ = ("points_read", "points_used", "points_dropped", "points_accuracy_unknown", "path_km", "raw_path_km", "max_distance_km", "max_distance_at", "min_distance_km", "mean_distance_km", "median_distance_km", "time_at_home_s", "time_away_s", "time_unknown_s", "trips", "completeness", "stays", "places", "timeline", "path_km_low", "path_km_high")
    class PointsDroppedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    POINTS_READ_FIELD_NUMBER: _ClassVar[int]
    POINTS_USED_FIELD_NUMBER: _ClassVar[int]
    POINTS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    POINTS_ACCURACY_UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    PATH_KM_FIELD_NUMBER: _ClassVar[int]
    RAW_PATH_KM_FIELD_NUMBER: _ClassVar[int]
    MAX_DISTANCE_KM_FIELD_NUMBER: _ClassVar[int]
    MAX_DISTANCE_AT_FIELD_NUMBER: _ClassVar[int]
    MIN_DISTANCE_KM_FIELD_NUMBER: _ClassVar[int]
    MEAN_DISTANCE_KM_FIELD_NUMBER: _ClassVar[int]
    MEDIAN_DISTANCE_KM_FIELD_NUMBER: _ClassVar[int]
    TIME_AT_HOME_S_FIELD_NUMBER: _ClassVar[int]
    TIME_AWAY_S_FIELD_NUMBER: _ClassVar[int]
    TIME_UNKNOWN_S_FIELD_NUMBER: _ClassVar[int]
    TRIPS_FIELD_NUMBER: _ClassVar[int]
    COMPLETENESS_FIELD_NUMBER: _ClassVar[int]
    STAYS_FIELD_NUMBER: _ClassVar[int]
    PLACES_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_FIELD_NUMBER: _ClassVar[int]
    PATH_KM_LOW_FIELD_NUMBER: _ClassVar[int]
    PATH_KM_HIGH_FIELD_NUMBER: _ClassVar[int]
    points_read: int
    points_used: int
    points_dropped: _containers.ScalarMap[str, int]
    points_accuracy_unknown: int
    path_km: float
    raw_path_km: float
    max_distance_km: float
    max_distance_at: Place
    min_distance_km: float
    mean_distance_km: float
    median_distance_km: float
    time_at_home_s: float
    time_away_s: float
    time_unknown_s: float
    trips: _containers.RepeatedCompositeFieldContainer[Trip]
    completeness: Completeness
    stays: _containers.RepeatedCompositeFieldContainer[Stay]
    places: _containers.RepeatedCompositeFieldContainer[PlaceVisit]
    timeline: _containers.RepeatedCompositeFieldContainer[TimelineEntry]
    path_km_low: float
    path_km_high: float
    def __init__(self, points_read: _Optional[int] = ..., points_used: _Optional[int] = ..., points_dropped: _Optional[_Mapping[str, int]] = ..., points_accuracy_unknown: _Optional[int] = ..., path_km: _Optional[float] = ..., raw_path_km: _Optional[float] = ..., max_distance_km: _Optional[float] = ..., max_distance_at: _Optional[_Union[Place, _Mapping]] = ..., min_distance_km: _Optional[float] = ..., mean_distance_km: _Optional[float] = ..., median_distance_km: _Optional[float] = ..., time_at_home_s: _Optional[float] = ..., time_away_s: _Optional[float] = ..., time_unknown_s: _Optional[float] = ..., trips: _Optional[_Iterable[_Union[Trip, _Mapping]]] = ..., completeness: _Optional[_Union[Completeness, _Mapping]] = ..., stays: _Optional[_Iterable[_Union[Stay, _Mapping]]] = ..., places: _Optional[_Iterable[_Union[PlaceVisit, _Mapping]]] = ..., timeline: _Optional[_Iterable[_Union[TimelineEntry, _Mapping]]] = ..., path_km_low: _Optional[float] = ..., path_km_high: _Optional[float] = ...) -> None: ...

class DeviceMetrics(_message.Message):
    __slots__ = ("device_id", "metrics")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    metrics: Metrics
    def __init__(self, device_id: _Optional[str] = ..., metrics: _Optional[_Union[Metrics, _Mapping]] = ...) -> None: ...

class Place(_message.Message):
    __slots__ = ("time", "latitude", "longitude", "device_id")
    TIME_FIELD_NUMBER: _ClassVar[int]
    LATITUDE_FIELD_NUMBER: _ClassVar[int]
    LONGITUDE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    latitude: float
    longitude: float
    device_id: str
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., latitude: _Optional[float] = ..., longitude: _Optional[float] = ..., device_id: _Optional[str] = ...) -> None: ...

class Trip(_message.Message):
    __slots__ = ("id", "device_id", "start", "end", "duration_s", "max_distance_km", "path_km", "clipped_start", "clipped_end")
    ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    MAX_DISTANCE_KM_FIELD_NUMBER: _ClassVar[int]
    PATH_KM_FIELD_NUMBER: _ClassVar[int]
    CLIPPED_START_FIELD_NUMBER: _ClassVar[int]
    CLIPPED_END_FIELD_NUMBER: _ClassVar[int]
    id: int
    device_id: str
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    duration_s: float
    max_distance_km: float
    path_km: float
    clipped_start: bool
    clipped_end: bool
    def __init__(self, id: _Optional[int] = ..., device_id: _Optional[str] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duration_s: _Optional[float] = ..., max_distance_km: _Optional[float] = ..., path_km: _Optional[float] = ..., clipped_start: _Optional[bool] = ..., clipped_end: _Optional[bool] = ...) -> None: ...

class Completeness(_message.Message):
    __slots__ = ("coverage", "largest_gap_s", "largest_gap_start", "ingest_lag_median_s", "ingest_lag_max_s")
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    LARGEST_GAP_S_FIELD_NUMBER: _ClassVar[int]
    LARGEST_GAP_START_FIELD_NUMBER: _ClassVar[int]
    INGEST_LAG_MEDIAN_S_FIELD_NUMBER: _ClassVar[int]
    INGEST_LAG_MAX_S_FIELD_NUMBER: _ClassVar[int]
    coverage: float
    largest_gap_s: float
    largest_gap_start: _timestamp_pb2.Timestamp
    ingest_lag_median_s: float
    ingest_lag_max_s: float
    def __init__(self, coverage: _Optional[float] = ..., largest_gap_s: _Optional[float] = ..., largest_gap_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ingest_lag_median_s: _Optional[float] = ..., ingest_lag_max_s: _Optional[float] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class Stay(_message.Message):
    __slots__ = ("id", "device_id", "start", "end", "duration_s", "latitude", "longitude", "radius_m", "fixes", "place", "clipped_start", "clipped_end")
    ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    LATITUDE_FIELD_NUMBER: _ClassVar[int]
    LONGITUDE_FIELD_NUMBER: _ClassVar[int]
    RADIUS_M_FIELD_NUMBER: _ClassVar[int]
    FIXES_FIELD_NUMBER: _ClassVar[int]
    PLACE_FIELD_NUMBER: _ClassVar[int]
    CLIPPED_START_FIELD_NUMBER: _ClassVar[int]
    CLIPPED_END_FIELD_NUMBER: _ClassVar[int]
    id: int
    device_id: str
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    duration_s: float
    latitude: float
    longitude: float
    radius_m: float
    fixes: int
    place: str
    clipped_start: bool
    clipped_end: bool
    def __init__(self, id: _Optional[int] = ..., device_id: _Optional[str] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duration_s: _Optional[float] = ..., latitude: _Optional[float] = ..., longitude: _Optional[float] = ..., radius_m: _Optional[float] = ..., fixes: _Optional[int] = ..., place: _Optional[str] = ..., clipped_start: _Optional[bool] = ..., clipped_end: _Optional[bool] = ...) -> None: ...

class PlaceVisit(_message.Message):
    __slots__ = ("place", "kind", "latitude", "longitude", "visits", "total_s", "first_arrival", "last_departure")
    PLACE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LATITUDE_FIELD_NUMBER: _ClassVar[int]
    LONGITUDE_FIELD_NUMBER: _ClassVar[int]
    VISITS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_S_FIELD_NUMBER: _ClassVar[int]
    FIRST_ARRIVAL_FIELD_NUMBER: _ClassVar[int]
    LAST_DEPARTURE_FIELD_NUMBER: _ClassVar[int]
    place: str
    kind: str
    latitude: float
    longitude: float
    visits: int
    total_s: float
    first_arrival: _timestamp_pb2.Timestamp
    last_departure: _timestamp_pb2.Timestamp
    def __init__(self, place: _Optional[str] = ..., kind: _Optional[str] = ..., latitude: _Optional[float] = ..., longitude: _Optional[float] = ..., visits: _Optional[int] = ..., total_s: _Optional[float] = ..., first_arrival: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_departure: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TimelineEntry(_message.Message):
    __slots__ = ("kind", "device_id", "start", "end", "duration_s", "place", "stay_id", "path_km", "from_place", "to_place")
    KIND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    PLACE_FIELD_NUMBER: _ClassVar[int]
    STAY_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_KM_FIELD_NUMBER: _ClassVar[int]
    FROM_PLACE_FIELD_NUMBER: _ClassVar[int]
    TO_PLACE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    device_id: str
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    duration_s: float
    place: str
    stay_id: int
    path_km: float
    from_place: str
    to_place: str
    def __init__(self, kind: _Optional[str] = ..., device_id: _Optional[str] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duration_s: _Optional[float] = ..., place: _Optional[str] = ..., stay_id: _Optional[int] = ..., path_km: _Optional[float] = ..., from_place: _Optional[str] = ..., to_place: _Optional[str] = ...) -> None: ...
