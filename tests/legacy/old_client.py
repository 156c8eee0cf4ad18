"""A client as the existing Flask API has it: stubs generated from the original proto only.

Run by tests/system/test_grpc_e2e.py in its own process (the generated module would clash with
the current one in a shared descriptor pool). Prints one JSON document of what it saw.
"""

import json
import sys
import time

import grpc
from distance.v1 import distance_pb2, distance_pb2_grpc


def main() -> None:
    target, date, device = sys.argv[1:4]
    with grpc.insecure_channel(target) as channel:
        stub = distance_pb2_grpc.DistanceServiceStub(channel)
        queued = stub.CalculateDistanceFromHome(
            distance_pb2.CalculateDistanceRequest(date=date, device_id=device), timeout=30
        )
        deadline = time.monotonic() + 60
        while True:
            status = stub.GetJobStatus(
                distance_pb2.GetJobStatusRequest(job_id=queued.job_id), timeout=30
            )
            if status.status in ("completed", "failed") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        listed = stub.ListJobs(distance_pb2.ListJobsRequest(device_id=device, limit=0), timeout=30)
        try:
            stub.CalculateDistanceFromHome(
                distance_pb2.CalculateDistanceRequest(date="yesterday"), timeout=30
            )
            bad = "OK"
        except grpc.RpcError as exc:
            bad = exc.code().name
    result = status.result
    print(
        json.dumps(
            {
                "job_id": queued.job_id,
                "queued_status": queued.status,
                "queued_at": queued.queued_at.seconds,
                "status": status.status,
                "error": status.error_message,
                "completed_at": status.completed_at.seconds,
                "csv_path": result.csv_path,
                "total_distance_km": result.total_distance_km,
                "total_locations": result.total_locations,
                "max_distance_km": result.max_distance_km,
                "min_distance_km": result.min_distance_km,
                "date": result.date,
                "device_id": result.device_id,
                "processing_time_ms": result.processing_time_ms,
                "listed": [job.job_id for job in listed.jobs],
                "total_count": listed.total_count,
                "limit": listed.limit,
                "bad_date_code": bad,
            }
        )
    )


if __name__ == "__main__":
    main()
