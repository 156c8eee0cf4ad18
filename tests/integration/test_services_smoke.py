"""The test harness talks to real services: prove each one is what it claims to be."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import urllib.error
import urllib.request
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import psycopg
import pytest
from minio import Minio
from minio.error import S3Error

from tests.conftest import Database, S3Server


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def test_postgres_is_a_real_server_with_a_database_of_this_session(postgres: Database) -> None:
    with postgres.connect() as conn:
        version = conn.execute("select current_setting('server_version_num')::int").fetchone()
        name = conn.execute("select current_database()").fetchone()
        sessions = conn.execute(
            "select count(*) from pg_stat_activity where datname = current_database()"
        ).fetchone()
    assert version is not None
    assert version[0] >= 130000
    assert name == (postgres.dbname,)
    assert postgres.dbname.startswith("otel_worker_test_")
    assert sessions is not None
    assert sessions[0] >= 1


def test_query_through_pgbouncer_in_transaction_mode(pgbouncer: Database) -> None:
    with pgbouncer.connect() as conn:
        assert conn.execute("select 40 + 2").fetchone() == (42,)
        with conn.transaction():
            conn.execute("create temporary table t (x int) on commit drop")
            conn.execute("insert into t values (1), (2)")
            assert conn.execute("select sum(x) from t").fetchone() == (3,)
    # The admin console proves the bouncer, not PostgreSQL, answered on this port.
    admin = pgbouncer.dsn.rsplit("/", 1)[0] + "/pgbouncer"
    with psycopg.connect(admin, autocommit=True, prepare_threshold=None) as conn:
        conn.cursor().execute("show config")
        settings = {row[0]: row[1] for row in conn.execute("show config").fetchall()}
    assert settings["pool_mode"] == "transaction"


def test_s3_upload_presign_download_over_http(s3: S3Server) -> None:
    client = s3.client()
    bucket = "smoke-roundtrip"
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    payload = hashlib.sha256(b"otel-worker").digest() * 4096
    client.put_object(bucket, "dir/object.bin", io.BytesIO(payload), len(payload))

    url = client.presigned_get_object(bucket, "dir/object.bin", expires=dt.timedelta(minutes=5))
    status, body = _get(url)

    assert status == 200
    assert body == payload


def test_s3_rejects_tampered_edited_expired_and_anonymous_urls(s3: S3Server) -> None:
    client = s3.client()
    bucket = "smoke-signatures"
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    client.put_object(bucket, "secret.txt", io.BytesIO(b"private"), 7)
    url = client.presigned_get_object(bucket, "secret.txt", expires=dt.timedelta(minutes=5))
    assert _get(url)[0] == 200

    signature = parse_qs(urlsplit(url).query)["X-Amz-Signature"][0]
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    tampered = _with_query(url, **{"X-Amz-Signature": flipped})
    longer = _with_query(url, **{"X-Amz-Expires": "604800"})
    anonymous = urlunsplit(urlsplit(url)._replace(query=""))
    # Signed an hour ago for one second: expired whatever the clock skew allowance.
    expired = client.presigned_get_object(
        bucket,
        "secret.txt",
        expires=dt.timedelta(seconds=1),
        request_date=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1),
    )

    cases = {"tampered": tampered, "longer": longer, "anonymous": anonymous, "expired": expired}
    for name, bad in cases.items():
        status, body = _get(bad)
        assert status == 403, f"{name} URL got {status}"
        assert b"private" not in body


@pytest.mark.parametrize("wrong", ["secret", "key"])
def test_s3_refuses_a_wrong_identity(s3: S3Server, wrong: str) -> None:
    client = Minio(
        s3.endpoint,
        access_key=s3.access_key if wrong == "secret" else "someone-else",
        secret_key="not-the-secret" if wrong == "secret" else s3.secret_key,
        secure=False,
        region=s3.region,
    )
    with pytest.raises(S3Error) as info:
        client.list_buckets()
    assert info.value.code in {"SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied"}
