"""Result objects on a real S3 server: keys, uploads, presigned URLs, the compatibility copy."""

from __future__ import annotations

import datetime as dt
import io
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from pydantic import SecretStr

from shared import config
from shared.dev.stack import free_ports
from shared.storage import (
    CSV_TYPE,
    ObjectMissing,
    ObjectStore,
    StorageUnavailable,
    result_keys,
    sha256_of,
    short_id_of,
    stage_compat_copy,
)
from tests.conftest import S3Server

JOB = uuid.UUID("3f2b8c1e-0d4a-4b6e-9c2f-7a1e5d9b0c42")


def _settings(
    monkeypatch: pytest.MonkeyPatch, s3: S3Server, **extra: str
) -> config.StorageSettings:
    env = {
        "MINIO_ENDPOINT": s3.endpoint,
        "MINIO_ACCESS_KEY": s3.access_key,
        "MINIO_SECRET_KEY": s3.secret_key,
        "MINIO_REGION": s3.region,
        "MINIO_BUCKET": f"results-{uuid.uuid4().hex[:8]}",
        **extra,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return config.load(config.StorageSettings)


def _download(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_keys_derive_from_the_job_only() -> None:
    one_day = result_keys(JOB, 1, dt.date(2026, 1, 5), dt.date(2026, 1, 5), None)
    assert one_day.csv_key == f"jobs/{JOB}/attempt-1/distance_20260105_3f2b8c1e.csv"
    assert one_day.summary_key == f"jobs/{JOB}/attempt-1/distance_20260105_3f2b8c1e.summary.json"
    assert one_day.series_key == f"jobs/{JOB}/attempt-1/distance_20260105_3f2b8c1e.series.json"
    assert one_day.csv_name == "distance_20260105_3f2b8c1e.csv"
    ranged = result_keys(JOB, 2, dt.date(2026, 1, 5), dt.date(2026, 1, 11), "stu@phone:2")
    assert ranged.csv_name == "distance_20260105-20260111_stu-phone-2_3f2b8c1e.csv"
    # Another attempt writes beside, never over, the first one's objects.
    assert ranged.csv_key.startswith(f"jobs/{JOB}/attempt-2/")


def test_a_basename_leads_back_to_its_job() -> None:
    keys = result_keys(JOB, 1, dt.date(2026, 1, 5), dt.date(2026, 1, 6), "phone")
    assert short_id_of(keys.csv_name) == JOB.hex[:8]
    assert short_id_of("distance_20260105.csv") is None
    assert short_id_of("../../etc/passwd") is None


def test_upload_then_presigned_download_returns_the_bytes(
    monkeypatch: pytest.MonkeyPatch, s3: S3Server
) -> None:
    store = ObjectStore(_settings(monkeypatch, s3, PRESIGN_EXPIRY_SECONDS="600"))
    payload = b"timestamp,device_id\n" + b"2026-01-05T00:00:00-05:00,phone\n" * 1000
    store.upload("jobs/x/a.csv", io.BytesIO(payload), len(payload), CSV_TYPE)
    assert store.read("jobs/x/a.csv") == payload
    with pytest.raises(ObjectMissing):
        store.read("jobs/x/missing.csv")

    now = dt.datetime.now(dt.UTC)
    link = store.presign("jobs/x/a.csv", now=now)
    # Signed at the start of the current 10 s step (600 s / 60).
    lifetime = link.expires_at - now
    assert dt.timedelta(seconds=590) < lifetime <= dt.timedelta(seconds=600)
    assert _download(link.url) == (200, payload)


def test_a_link_is_signed_once_per_step_and_anew_after_it(
    monkeypatch: pytest.MonkeyPatch, s3: S3Server
) -> None:
    settings = _settings(monkeypatch, s3, PRESIGN_EXPIRY_SECONDS="3600")
    store = ObjectStore(settings)
    store.upload("jobs/y/b.csv", io.BytesIO(b"abc"), 3, CSV_TYPE)
    start = dt.datetime(2026, 11, 29, 8, 0, 0, tzinfo=dt.UTC)
    first = store.presign("jobs/y/b.csv", now=start)
    assert store.presign("jobs/y/b.csv", now=start + dt.timedelta(seconds=59.9)) == first
    assert first.expires_at == start + dt.timedelta(hours=1)
    later = store.presign("jobs/y/b.csv", now=start + dt.timedelta(seconds=60))
    assert later.url != first.url
    assert later.expires_at == start + dt.timedelta(seconds=3660)
    # Another key never shares a signature.
    assert store.presign("jobs/y/c.csv", now=start).url != first.url
    # A one-second expiry is signed exactly at the moment asked.
    short = ObjectStore(settings.model_copy(update={"presign_expiry_seconds": 1}))
    assert short.presign("jobs/y/b.csv", now=start + dt.timedelta(seconds=0.5)).expires_at == (
        start + dt.timedelta(seconds=1.5)
    )


def test_presigned_urls_are_signed_for_the_public_endpoint(
    monkeypatch: pytest.MonkeyPatch, s3: S3Server
) -> None:
    # The public name differs from the internal one; the host is part of the signature,
    # so the URL names the public host and only works when requested under that name.
    public = f"localhost:{s3.endpoint.rsplit(':', 1)[1]}"
    store = ObjectStore(_settings(monkeypatch, s3, MINIO_PUBLIC_ENDPOINT=f"http://{public}"))
    store.upload("k.csv", io.BytesIO(b"abc"), 3, CSV_TYPE)
    url = store.presign("k.csv").url
    assert urlsplit(url).netloc == public
    assert _download(url) == (200, b"abc")
    internal = url.replace(public, s3.endpoint)
    assert _download(internal)[0] == 403


def test_the_bucket_is_created_where_allowed_else_only_written_to(
    monkeypatch: pytest.MonkeyPatch, s3: S3Server
) -> None:
    settings = _settings(monkeypatch, s3)
    created = ObjectStore(settings)
    created.upload("k", io.BytesIO(b"x"), 1, CSV_TYPE)
    assert created.read("k") == b"x"
    # compute as deployed: an identity that may only write, into a bucket made for it.
    writer = settings.model_copy(
        update={
            "minio_access_key": SecretStr(s3.writer.access_key),
            "minio_secret_key": SecretStr(s3.writer.secret_key),
            "minio_create_bucket": False,
            "minio_bucket": f"made-{uuid.uuid4().hex[:8]}",
        }
    )
    s3.client().make_bucket(writer.minio_bucket)
    ObjectStore(writer).upload("jobs/k.csv", io.BytesIO(b"abc"), 3, CSV_TYPE)
    assert s3.client().get_object(writer.minio_bucket, "jobs/k.csv").read() == b"abc"
    # It may also remove what it wrote (a cancelled attempt's objects); a missing key is fine.
    ObjectStore(writer).remove(["jobs/k.csv", "jobs/never-written.csv"])
    assert list(s3.client().list_objects(writer.minio_bucket, recursive=True)) == []
    # A bucket that is missing fails the upload, naming it.
    missing = writer.model_copy(update={"minio_bucket": f"gone-{uuid.uuid4().hex[:8]}"})
    with pytest.raises(StorageUnavailable, match=f"uploading k: .*{missing.minio_bucket}"):
        ObjectStore(missing).upload("k", io.BytesIO(b"x"), 1, CSV_TYPE)


def test_first_uploads_racing_to_create_the_bucket_all_succeed(
    monkeypatch: pytest.MonkeyPatch, s3: S3Server
) -> None:
    """The first jobs on a fresh store each find the bucket missing and create it: the one
    that loses the race (BucketAlreadyOwnedByYou) must upload all the same, not fail."""
    settings = _settings(monkeypatch, s3)
    creators = 4
    for round_ in range(5):
        fresh = settings.model_copy(update={"minio_bucket": f"race-{uuid.uuid4().hex[:8]}"})
        stores = [ObjectStore(fresh) for _ in range(creators)]
        for store in stores:
            assert store.client is not None  # clients made before the start line
        start = threading.Barrier(creators)
        failures: list[BaseException] = []

        def upload(
            store: ObjectStore,
            index: int,
            start: threading.Barrier = start,
            failures: list[BaseException] = failures,
        ) -> None:
            start.wait()
            try:
                store.upload(f"k{index}", io.BytesIO(b"x"), 1, CSV_TYPE)
            except BaseException as exc:  # reported below, with the round
                failures.append(exc)

        threads = [
            threading.Thread(target=upload, args=(store, i)) for i, store in enumerate(stores)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert failures == [], f"round {round_}: {failures}"
        assert [stores[0].read(f"k{i}") for i in range(creators)] == [b"x"] * creators
    # Deterministically the losing side: the bucket exists by the time we ask to make it.
    late = ObjectStore(settings.model_copy(update={"minio_bucket": fresh.minio_bucket}))
    assert late._make_bucket(late.client, fresh.minio_bucket) is False


def test_objects_of_a_bucket_that_is_gone_are_missing_not_unavailable(
    monkeypatch: pytest.MonkeyPatch, s3: S3Server
) -> None:
    # (a bucket removed, or the dev stack's store wiped): status then answers 410, not 503
    store = ObjectStore(_settings(monkeypatch, s3, MINIO_CREATE_BUCKET="false"))
    with pytest.raises(ObjectMissing):
        store.read("jobs/x/distance_20240312_0000abcd.summary.json")


def test_an_unreachable_store_is_a_storage_error(
    monkeypatch: pytest.MonkeyPatch, s3: S3Server
) -> None:
    (port,) = free_ports(1)
    store = ObjectStore(_settings(monkeypatch, s3, MINIO_ENDPOINT=f"127.0.0.1:{port}"))
    with pytest.raises(StorageUnavailable, match="checking the bucket"):
        store.upload("k", io.BytesIO(b"x"), 1, CSV_TYPE)
    # Where the bucket is not ours to create, the upload is the first request.
    fixed = ObjectStore(store.settings.model_copy(update={"minio_create_bucket": False}))
    with pytest.raises(StorageUnavailable, match="uploading k: "):
        fixed.upload("k", io.BytesIO(b"x"), 1, CSV_TYPE)


def test_sha256_and_length_rewind_the_stream() -> None:
    stream = io.BytesIO(b"hello")
    digest, size = sha256_of(stream)
    assert size == 5
    assert digest == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert stream.read() == b"hello"


def test_compat_copy_is_never_seen_half_written(tmp_path: Path) -> None:
    target = tmp_path / "out" / "distance_20260105_3f2b8c1e.csv"
    big = b"x" * (8 << 20)
    seen: set[int] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if target.exists():
                seen.add(target.stat().st_size)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(3):
            stage_compat_copy(target.parent, target.name, io.BytesIO(big)).publish()
        # Staged but discarded (an attempt that did not complete its job): never seen.
        stage_compat_copy(target.parent, target.name, io.BytesIO(b"stale")).discard()
    finally:
        stop.set()
        watcher.join()
    assert target.read_bytes() == big
    assert seen <= {len(big)}
    assert [p.name for p in target.parent.iterdir()] == [target.name]
