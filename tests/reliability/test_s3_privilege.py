"""S3 least privilege proven negatively, on the identities the functions are deployed with:
compute's (write only) can neither read nor list, status's (read and list) can neither
write, overwrite nor delete. The same operations by the tests' own identity succeed, so a
refusal is the policy's, not a broken request."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable

import pytest
from minio import Minio
from minio.error import S3Error

from shared.dev.stack import S3Identity
from tests.conftest import S3Server
from tests.reliability.conftest import Figures

REFUSED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
Operation = Callable[[Minio, str, str], object]


def _client(s3: S3Server, who: S3Identity | None) -> Minio:
    if who is None:
        return s3.client()
    return Minio(
        s3.endpoint,
        access_key=who.access_key,
        secret_key=who.secret_key,
        secure=False,
        region=s3.region,
    )


def _put(client: Minio, bucket: str, key: str) -> object:
    return client.put_object(bucket, key, io.BytesIO(b"overwritten"), 11)


def _get(client: Minio, bucket: str, key: str) -> object:
    response = client.get_object(bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def _list(client: Minio, bucket: str, key: str) -> object:
    return list(client.list_objects(bucket, prefix="jobs/", recursive=True))


def _delete(client: Minio, bucket: str, key: str) -> object:
    return client.remove_object(bucket, key)


FORBIDDEN: dict[str, list[tuple[str, Operation]]] = {
    "writer": [("get", _get), ("list", _list)],
    "reader": [("put", _put), ("overwrite", _put), ("delete", _delete)],
}


@pytest.mark.parametrize("who", ["writer", "reader"])
def test_an_identity_cannot_do_what_it_is_not_for(s3: S3Server, who: str, score: Figures) -> None:
    bucket = f"privilege-{uuid.uuid4().hex[:10]}"
    owner = s3.client()
    owner.make_bucket(bucket)
    key = "jobs/existing/result.csv"
    owner.put_object(bucket, key, io.BytesIO(b"original"), 8)
    identity = s3.writer if who == "writer" else s3.reader
    client = _client(s3, identity)
    refused = []
    for name, operation in FORBIDDEN[who]:
        target = key if name != "put" else f"jobs/new/{uuid.uuid4().hex}.csv"
        with pytest.raises(S3Error) as error:
            operation(client, bucket, target)
        assert error.value.code in REFUSED, (name, error.value.code)
        refused.append(name)
        operation(owner, bucket, target)  # the same request is fine for an identity allowed it
        if name == "delete":
            owner.put_object(bucket, key, io.BytesIO(b"original"), 8)
    assert _get(owner, bucket, key) == b"original"
    # And each may do its own job.
    if who == "writer":
        _put(client, bucket, f"jobs/own/{uuid.uuid4().hex}.csv")
    else:
        assert _list(client, bucket, key)
    score.note = f"refused: {', '.join(refused)}"
