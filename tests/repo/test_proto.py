"""The proto is wire-compatible with the Go original, and the committed stubs are fresh."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from google.protobuf.descriptor import FieldDescriptor

from shared.dev.stack import REPO_ROOT
from shared.rpc.distance.v1 import distance_pb2


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate", REPO_ROOT / "proto" / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The wire format of the original Go service, which clients depend on: (message, field,
# number, type, repeated?). docs/API.md describes the same fields.
T = FieldDescriptor
ORIGINAL = {
    "CalculateDistanceRequest": [("date", 1, T.TYPE_STRING), ("device_id", 2, T.TYPE_STRING)],
    "CalculateDistanceResponse": [
        ("job_id", 1, T.TYPE_STRING),
        ("status", 2, T.TYPE_STRING),
        ("queued_at", 3, T.TYPE_MESSAGE),
    ],
    "GetJobStatusRequest": [("job_id", 1, T.TYPE_STRING)],
    "GetJobStatusResponse": [
        ("job_id", 1, T.TYPE_STRING),
        ("status", 2, T.TYPE_STRING),
        ("queued_at", 3, T.TYPE_MESSAGE),
        ("started_at", 4, T.TYPE_MESSAGE),
        ("completed_at", 5, T.TYPE_MESSAGE),
        ("error_message", 6, T.TYPE_STRING),
        ("result", 7, T.TYPE_MESSAGE),
    ],
    "ListJobsRequest": [
        ("status", 1, T.TYPE_STRING),
        ("limit", 2, T.TYPE_INT32),
        ("offset", 3, T.TYPE_INT32),
        ("date", 4, T.TYPE_STRING),
        ("device_id", 5, T.TYPE_STRING),
    ],
    "ListJobsResponse": [
        ("jobs", 1, T.TYPE_MESSAGE),
        ("total_count", 2, T.TYPE_INT32),
        ("limit", 3, T.TYPE_INT32),
        ("offset", 4, T.TYPE_INT32),
    ],
    "JobSummary": [
        ("job_id", 1, T.TYPE_STRING),
        ("status", 2, T.TYPE_STRING),
        ("date", 3, T.TYPE_STRING),
        ("device_id", 4, T.TYPE_STRING),
        ("queued_at", 5, T.TYPE_MESSAGE),
        ("completed_at", 6, T.TYPE_MESSAGE),
    ],
    "JobResult": [
        ("csv_path", 1, T.TYPE_STRING),
        ("total_distance_km", 2, T.TYPE_DOUBLE),
        ("total_locations", 3, T.TYPE_INT32),
        ("max_distance_km", 4, T.TYPE_DOUBLE),
        ("min_distance_km", 5, T.TYPE_DOUBLE),
        ("date", 6, T.TYPE_STRING),
        ("device_id", 7, T.TYPE_STRING),
        ("processing_time_ms", 8, T.TYPE_INT64),
    ],
}
TIMESTAMPS = {"queued_at", "started_at", "completed_at"}


def test_package_and_service_match_the_original() -> None:
    file = distance_pb2.DESCRIPTOR
    assert file.package == "distance.v1"
    assert file.name == "distance/v1/distance.proto"
    service = file.services_by_name["DistanceService"]
    methods = [(m.name, m.input_type.name, m.output_type.name) for m in service.methods]
    # The original's three first and unchanged; additions only after them.
    assert methods == [
        ("CalculateDistanceFromHome", "CalculateDistanceRequest", "CalculateDistanceResponse"),
        ("GetJobStatus", "GetJobStatusRequest", "GetJobStatusResponse"),
        ("ListJobs", "ListJobsRequest", "ListJobsResponse"),
        ("CancelJob", "CancelJobRequest", "GetJobStatusResponse"),
    ]


def test_every_original_field_keeps_its_name_number_and_type() -> None:
    for message, fields in ORIGINAL.items():
        descriptor = distance_pb2.DESCRIPTOR.message_types_by_name[message]
        for name, number, kind in fields:
            field = descriptor.fields_by_name[name]
            assert (field.number, field.type) == (number, kind), f"{message}.{name}"
            assert field.is_repeated == (name == "jobs"), f"{message}.{name}"
            if name in TIMESTAMPS:
                assert field.message_type.full_name == "google.protobuf.Timestamp"
    jobs = distance_pb2.ListJobsResponse.DESCRIPTOR.fields_by_name["jobs"]
    assert jobs.is_repeated
    assert jobs.message_type.name == "JobSummary"


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    generated = _generator().generate(tmp_path)
    committed = REPO_ROOT / "shared" / "rpc"
    assert generated, "protoc produced nothing"
    for path in generated:
        twin = committed / path.relative_to(tmp_path)
        assert twin.exists(), f"{twin} missing: run `make proto`"
        assert twin.read_text() == path.read_text(), f"{twin} is stale: run `make proto`"
