"""Result objects in S3-compatible storage (MinIO in production).

Object keys derive from the job only (its id, the attempt, its days and a slug of the
device), never from raw input, so two jobs never collide. Each attempt has a folder of its
own: an attempt that outlived its lease and uploads after another one completed the job
cannot replace the objects the job names (they would no longer match its recorded size
and SHA-256); its own are orphans, removed by the bucket's lifecycle rule. The CSV basename
keeps the old `distance_*.csv` pattern and embeds the first 8 hex digits of the job id, so
a basename alone leads back to its job.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO
from uuid import UUID

import urllib3

from shared.config import StorageSettings
from shared.contracts import Download
from shared.errors import DependencyUnavailable, OtelWorkerError

if TYPE_CHECKING:
    from minio import Minio

log = logging.getLogger(__name__)

CSV_TYPE = "text/csv; charset=utf-8"
JSON_TYPE = "application/json"
GPX_TYPE = "application/gpx+xml"
_BASENAME = re.compile(
    r"^distance_(?P<days>\d{8}(?:-\d{8})?)(?:_(?P<device>[A-Za-z0-9-]+))?_(?P<short>[0-9a-f]{8})\.csv$"
)


class StorageUnavailable(DependencyUnavailable):
    """The object store could not be reached or refused the request (transient: retry)."""


class ObjectMissing(OtelWorkerError, LookupError):
    """No object at the key (expired by the lifecycle rule, or deleted): retrying won't help."""


# A bucket that is gone holds no objects either: what was stored is missing, not unreachable.
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NotFound", "NoSuchBucket"})


@dataclass(frozen=True)
class ResultKeys:
    """Where one job's objects live."""

    csv_key: str
    summary_key: str

    @property
    def series_key(self) -> str:
        """The report's chart data, beside the summary."""
        return self.summary_key.removesuffix(".summary.json") + ".series.json"

    @property
    def gpx_key(self) -> str:
        """The tracks as GPX, beside the summary."""
        return self.summary_key.removesuffix(".summary.json") + ".gpx"

    def every(self) -> list[str]:
        """All four keys: CSV, summary, chart data and GPX."""
        return [self.csv_key, self.summary_key, self.series_key, self.gpx_key]

    @property
    def csv_name(self) -> str:
        """The CSV's basename (what existing clients link to)."""
        return self.csv_key.rsplit("/", 1)[1]


def _slug(device_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", device_id).strip("-")[:40] or "device"


def result_keys(
    job_id: UUID, attempt: int, date_from: dt.date, date_to: dt.date, device_id: str | None
) -> ResultKeys:
    """The object keys of the CSV and JSON summary of a job's `attempt`."""
    days = date_from.strftime("%Y%m%d")
    if date_to != date_from:
        days += "-" + date_to.strftime("%Y%m%d")
    device = f"_{_slug(device_id)}" if device_id else ""
    stem = f"jobs/{job_id}/attempt-{attempt}/distance_{days}{device}_{job_id.hex[:8]}"
    return ResultKeys(csv_key=f"{stem}.csv", summary_key=f"{stem}.summary.json")


def short_id_of(basename: str) -> str | None:
    """The 8-hex job id prefix embedded in a CSV basename, or None if it is not one of ours."""
    match = _BASENAME.match(basename)
    return match["short"] if match else None


def sha256_of(stream: IO[bytes]) -> tuple[str, int]:
    """Hex digest and length of a seekable stream, read from the start; rewinds it."""
    stream.seek(0)
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(1 << 20):
        digest.update(chunk)
        size += len(chunk)
    stream.seek(0)
    return digest.hexdigest(), size


UPLOAD_CONNECTIONS = 4
"""Connections a client keeps to the store: a job's four objects go up at once."""


class ObjectStore:
    """Uploads results and signs download URLs. Clients are created on first use."""

    def __init__(self, settings: StorageSettings) -> None:
        self.settings = settings
        self._client: Minio | None = None
        self._signer: Minio | None = None
        self._bucket_checked = False
        # Uploads run side by side: the clients and the bucket check happen once.
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._signed = functools.lru_cache(maxsize=4096)(self._sign)

    def _make(self, endpoint: str, secure: bool) -> Minio:
        from minio import Minio

        # Bounded timeouts and retries: a dead store must surface as a retryable failure
        # within seconds, not hang the request until the broker gives up.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5, read=60),
            maxsize=UPLOAD_CONNECTIONS,
            retries=urllib3.Retry(
                total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
        )
        return Minio(
            endpoint,
            access_key=self.settings.minio_access_key.get_secret_value(),
            secret_key=self.settings.minio_secret_key.get_secret_value(),
            secure=secure,
            # An explicit region keeps signing local: no bucket-location round trip.
            region=self.settings.minio_region,
            http_client=http,
        )

    @property
    def client(self) -> Minio:
        """The client for the in-cluster endpoint."""
        with self._lock:
            if self._client is None:
                self._client = self._make(self.settings.minio_endpoint, self.settings.minio_secure)
            return self._client

    @property
    def signer(self) -> Minio:
        """A client for the public endpoint: the host is part of a SigV4 signature."""
        if self._signer is None:
            host, secure = self.settings.public_host
            self._signer = self._make(host, secure)
        return self._signer

    def uploader(self) -> ThreadPoolExecutor:
        """Threads that upload beside the caller (as many as the client keeps connections
        beyond the caller's), started on first use and kept: a job's objects go up side
        by side without starting threads per job."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(UPLOAD_CONNECTIONS - 1, thread_name_prefix="upload")
            return self._pool

    def _create_bucket(self) -> None:
        """Create the bucket when missing, once per process, where MINIO_CREATE_BUCKET
        allows it (development). Elsewhere nothing is checked: the identity then needs no
        right on the bucket itself, and a missing bucket fails the upload, naming it."""
        if self._bucket_checked or not self.settings.minio_create_bucket:
            return
        bucket = self.settings.minio_bucket
        client = self.client
        with self._lock, _translated("checking the bucket"):
            if self._bucket_checked:
                return
            if not client.bucket_exists(bucket) and self._make_bucket(client, bucket):
                log.info("created bucket", extra={"bucket": bucket})
            self._bucket_checked = True

    def _make_bucket(self, client: Minio, bucket: str) -> bool:
        """Create `bucket`: True if this call made it, False if another process made it
        between our check and our request (two first jobs on a fresh store race here)."""
        from minio.error import S3Error

        try:
            client.make_bucket(bucket)
        except S3Error as exc:
            # S3 and MinIO answer the owner BucketAlreadyOwnedByYou; some stores answer
            # BucketAlreadyExists for any owner, so that one counts only if we can reach it.
            if exc.code == "BucketAlreadyOwnedByYou" or (
                exc.code == "BucketAlreadyExists" and client.bucket_exists(bucket)
            ):
                return False
            raise
        return True

    def upload(self, key: str, stream: BinaryIO, length: int, content_type: str) -> None:
        """Store `length` bytes of `stream` at `key`. S3 makes the object visible whole or
        not at all, so a reader never sees a partial upload. Needs s3:PutObject alone
        (and s3:AbortMultipartUpload for objects over 16 MiB)."""
        self._create_bucket()
        with _translated(f"uploading {key}"):
            self.client.put_object(
                self.settings.minio_bucket,
                key,
                stream,
                length,
                content_type=content_type,
                part_size=16 * 1024 * 1024,
            )

    def remove(self, keys: list[str]) -> None:
        """Delete the objects at `keys` (those that exist). Needs s3:DeleteObject: compute
        removes only the objects of an attempt of a job that was cancelled under it."""
        from minio.deleteobjects import DeleteObject

        self._create_bucket()
        with _translated(f"removing {', '.join(keys)}"):
            errors = list(
                self.client.remove_objects(
                    self.settings.minio_bucket, [DeleteObject(key) for key in keys]
                )
            )
        if errors:
            raise StorageUnavailable(f"removing objects: {errors[0].message}")

    def read(self, key: str) -> bytes:
        """The whole object at `key` (small objects: summaries and chart data); raises
        `ObjectMissing` when there is none."""
        from minio.error import S3Error

        with _translated(f"reading {key}"):
            try:
                response = self.client.get_object(self.settings.minio_bucket, key)
            except S3Error as exc:
                if exc.code in _MISSING_CODES:
                    raise ObjectMissing(key) from None
                raise
            try:
                return bytes(response.read())
            finally:
                response.close()
                response.release_conn()

    def presign(self, key: str, now: dt.datetime | None = None) -> Download:
        """A GET URL for `key`, signed for the public endpoint, valid PRESIGN_EXPIRY_SECONDS
        from the start of the current signing step (at most 1/60 of the expiry, 60 s).

        Signing at step boundaries lets the clients polling a job get the same URL, signed
        once per step, instead of a new signature on every read."""
        now = now or dt.datetime.now(dt.UTC)
        expiry = self.settings.presign_expiry_seconds
        step = min(expiry // 60, 60)
        if not step:  # expiries under a minute: signed at the moment asked, nothing to reuse
            return self._sign(key, now)
        return self._signed(key, dt.datetime.fromtimestamp(now.timestamp() // step * step, dt.UTC))

    def _sign(self, key: str, signed_at: dt.datetime) -> Download:
        expires = dt.timedelta(seconds=self.settings.presign_expiry_seconds)
        url = self.signer.presigned_get_object(
            self.settings.minio_bucket, key, expires=expires, request_date=signed_at
        )
        return Download(url=url, expires_at=signed_at + expires)


@dataclass(frozen=True)
class StagedCopy:
    """A CSV written beside its name in a shared folder, not yet visible under it."""

    part: Path
    target: Path

    def publish(self) -> None:
        """Make it visible under its name, whole (a rename)."""
        os.replace(self.part, self.target)

    def discard(self) -> None:
        """Remove it unpublished."""
        self.part.unlink(missing_ok=True)


def stage_compat_copy(folder: Path, name: str, stream: IO[bytes]) -> StagedCopy:
    """Write the CSV, for callers reading a shared volume, to a temporary file in `folder`
    that `publish()` renames to `name`: a reader never sees a half-written CSV, and compute
    publishes it only once its attempt has completed the job (every attempt's copy has the
    same name, unlike its objects)."""
    folder.mkdir(parents=True, exist_ok=True)
    stream.seek(0)
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
    try:
        with os.fdopen(descriptor, "wb") as out:
            while chunk := stream.read(1 << 20):
                out.write(chunk)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    finally:
        stream.seek(0)
    return StagedCopy(Path(temporary), folder / name)


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    """Turn the SDK's and the network's errors into StorageUnavailable, naming the action."""
    from minio.error import MinioException, S3Error

    try:
        yield
    except S3Error as exc:
        # The code and message only: request and host ids mean nothing to a caller.
        where = f" (bucket {exc.bucket_name})" if exc.bucket_name else ""
        raise StorageUnavailable(
            f"{action}: the object store answered {exc.code}: {exc.message}{where}"
        ) from exc
    except (MinioException, OSError, urllib3.exceptions.HTTPError) as exc:
        raise StorageUnavailable(f"{action}: {exc}") from exc
